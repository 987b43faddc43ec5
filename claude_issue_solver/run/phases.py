"""The phases of a run and what a resumed task goes on with: the resume logic as one table.

Every phase is recorded on the task (``task.meta["phase"]``) *before* the step it names acts, so a
daemon that died anywhere finds the task in one of these and goes on with the step :data:`RESUME`
names. The pipeline (:meth:`claude_issue_solver.run.pipeline.Pipeline.resume`) only looks the step up; the
same table serves every kind of task.

    preparing -> [setup -> baseline] -> agent -> [tests <-> fixing] -> publishing -> published

The bracketed phases are the repository's tests (:mod:`claude_issue_solver.run.test_gate`), when it has a
test command (``setup`` alone when it has only a setup command); ``agent`` is skipped by a kind that
runs no agent.
"""

from __future__ import annotations

from claude_issue_solver.run.test_gate import BASELINE, SETUP

__all__ = [
    "AFTER_START",
    "BEFORE_AGENT",
    "ENDED",
    "LOST",
    "PHASES",
    "PUBLISH",
    "RESUME",
    "VERIFY",
    "resume_step",
]

PHASES = ("preparing", SETUP, BASELINE, "agent", "tests", "fixing", "publishing", "published")

# The steps a resumed task goes on with (the pipeline's methods of those names).
LOST = "lost"  # run it again from the start (or give up after MAX_ATTEMPTS)
BEFORE_AGENT = "before_agent"  # finish the setup and the baseline tests, then start the agent
AFTER_START = "after_start"  # find the agent by its name and wait for it (never a second start)
VERIFY = "verify"  # the agent ran: go on with the test rounds, then publish
PUBLISH = "publish"  # every step of publishing repeats harmlessly
ENDED = "ended"  # public already: write the final comment again, clean up

RESUME: dict[str | None, str] = {
    None: LOST,  # claimed, nothing recorded yet
    "preparing": LOST,  # the workspace may be half made
    SETUP: BEFORE_AGENT,
    BASELINE: BEFORE_AGENT,
    "agent": AFTER_START,
    "tests": VERIFY,
    "fixing": VERIFY,
    "publishing": PUBLISH,
    "published": ENDED,
}


def resume_step(phase: str | None, *, has_workspace: bool) -> str:
    """The step a task recorded in ``phase`` goes on with; a lost workspace runs it again, unless the
    work is public already."""
    step = RESUME.get(phase, AFTER_START)
    if not has_workspace and step != ENDED:
        return LOST
    return step
