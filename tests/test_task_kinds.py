"""The kinds of task behind one phase machine: crash and resume in every phase, for every kind.

A kind written only for the tests (:mod:`tests.fakes.note_kind`: the agent writes a note, the task
publishes it as a comment) plugs in through :func:`claude_issue_solver.run.kinds.register`, without
touching the pipeline, and goes through the same phases as an issue's run and a follow-up: the
repository's setup and baseline tests, the agent, a red test round and a fix round, publishing. The
daemon is "killed" (:class:`Crash`) in each phase in turn; a new pipeline over the same queue and
place resumes the task (as a restarted daemon) and it ends as an uninterrupted run would, with one
comment and one agent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from claude_issue_solver.github.trust import Approved
from claude_issue_solver.run import kinds
from claude_issue_solver.run.phases import PHASES, RESUME, resume_step
from claude_issue_solver.run.test_gate import PHASES as TEST_PHASES
from claude_issue_solver.store.outcome import TaskControl
from claude_issue_solver.store.queue import FOLLOWUP, Task, TaskState
from tests.fakes.memory_backend import Crash, Place, Process, result_line
from tests.fakes.note_kind import NOTE, NoAgentNoteKind, NoteKind
from tests.test_followup_pipeline import queue_followup, trigger
from tests.test_pipeline import REPO, SUMMARY, World
from tests.test_pipeline import world as world  # the fixture

SETTINGS = ".github/claude-issue-solver.yml"
# The backend operation a crash in each phase happens in (None: the first one in that phase).
CRASH_AT = {
    "preparing": "prepare",
    "setup": "poll_process",
    "baseline": "poll_process",
    "agent": "poll_process",
    "tests": "poll_process",
    "fixing": "poll_process",
    "publishing": None,
    "published": "remove",
}


@pytest.fixture(autouse=True)
def note_kinds() -> Iterator[None]:
    kinds.register("note", NoteKind())
    kinds.register("note-no-agent", NoAgentNoteKind())
    yield
    kinds.unregister("note")
    kinds.unregister("note-no-agent")


def test_every_phase_has_a_resume_step() -> None:
    assert set(RESUME) == {None, *PHASES} and set(TEST_PHASES) <= set(PHASES)
    assert resume_step("agent", has_workspace=False) == "lost"  # a workspace gone: run again
    assert resume_step("published", has_workspace=False) == "ended"  # public already: only finish


# --- the world: tests red after the agent, green after one fix round -----------------------------------


class Runs:
    """How often each process's script ran (a second agent would be a second run of it)."""

    def __init__(self) -> None:
        self.count: dict[str, int] = {}

    def script(self, name: str, body: Callable[[Place, Process], None]) -> Callable[[Place, Process], None]:
        def run(place: Place, process: Process) -> None:
            self.count[name] = self.count.get(name, 0) + 1
            body(place, process)

        return run


def red_then_fixed(world: World, path: str, first: dict[str, str], *, agent: bool = True) -> Runs:
    """Setup and tests that are green when ``path`` reads "good", and before the change (the baseline:
    the agent's change breaks them, so the gate asks for a fix); the agent writes ``first`` (with
    ``path`` "half"), the first fix round makes it good."""
    world.github.commit_files(REPO, "main", {SETTINGS: "setup: make deps\ntest: sh test.sh\n"}, message="s")
    runs = Runs()

    def test(place: Place, process: Process) -> None:
        ok = process.spec.name in ("setup", "baseline") or place.tree.get(path) == b"good\n"
        process.exit_code, process.stdout = (0, "3 passed\n") if ok else (1, "1 failed\n")

    def write(files: dict[str, str]) -> Callable[[Place, Process], None]:
        def run(place: Place, process: Process) -> None:
            place.tree.update({p: t.encode() for p, t in files.items()})
            process.exit_code, process.stdout = 0, result_line() + "\n"

        return run

    for name in ("setup", "baseline", "test-1", "test-2"):
        world.backend.agents[name] = runs.script(name, test)
    if agent:
        world.backend.agents["agent"] = runs.script("agent", write(first))
    world.backend.agents["fix-1"] = runs.script("fix-1", write({path: "good\n"}))
    return runs


def note_task(world: World, kind: str = "note") -> Task:
    issue = world.github.create_issue(REPO, "Write a note", "About the widget.", labels=["Claude"])
    submitted = world.queue.submit(REPO, issue["number"], "Write a note", kind=kind)
    assert submitted is not None
    claimed = world.queue.claim()
    assert claimed is not None and claimed.id == submitted.id
    return claimed


def manual_task(world: World) -> Task:
    """An issue without the label, queued by hand (``claude-issue-solver submit``), its text as it reads."""
    issue = world.github.create_issue(REPO, "Fix the widget", "It is broken.", user="maintainer")
    approved = Approved.as_read(issue, issue["updated_at"])
    submitted = world.queue.submit(
        REPO, issue["number"], "Fix the widget", kind="manual", meta={"approved": approved.to_meta()}
    )
    assert submitted is not None
    claimed = world.queue.claim()
    assert claimed is not None and claimed.id == submitted.id
    return claimed


def followup_task(world: World) -> Task:
    """An issue's first run (published, green) and a follow-up on its pull request."""
    world.github.commit_files(REPO, "main", {"calc.txt": "good\n"}, message="calc")
    world.backend.agents["agent"] = lambda place, process: (
        place.tree.update({"fix.txt": b"fixed\n", ".claude-pr-summary.md": SUMMARY.encode()}),
        setattr(process, "exit_code", 0),
        setattr(process, "stdout", result_line() + "\n"),
    )
    first = world.task()
    done = world.record(first, world.pipeline().run(first, TaskControl()))
    assert done.state is TaskState.COMPLETED and done.meta["pr_number"] == 2, done.error
    body = "@claude please also add more.txt"
    comment = world.github.add_comment(REPO, 2, body, user="maintainer")
    task = queue_followup(world, done, trigger("pr", body, comment))
    assert task.kind == FOLLOWUP
    return task


def make(world: World, kind: str) -> tuple[Task, Runs]:
    if kind in ("issue", "manual"):
        runs = red_then_fixed(world, "calc.txt", {"calc.txt": "half\n", ".claude-pr-summary.md": SUMMARY})
        return (world.task() if kind == "issue" else manual_task(world)), runs
    if kind == "followup":
        task = followup_task(world)
        return task, red_then_fixed(world, "calc.txt", {"calc.txt": "half\n", "more.txt": "more\n"})
    if kind == "note":
        return note_task(world), red_then_fixed(world, NOTE, {NOTE: "half\n"})
    runs = red_then_fixed(world, NOTE, {}, agent=False)
    sha, files = world.backend.remote["main"]
    world.backend.remote["main"] = (sha, {**files, NOTE: b"good\n"})  # the note is there already
    return note_task(world, kind), runs


def our_comments(world: World, task: Task) -> list[str]:
    return [
        c["body"]
        for number in {task.issue_number, *(pr["number"] for pr in world.github.pulls(REPO))}
        for c in world.github.comments(REPO, number)
        if f"task={task.id} " in c["body"]
    ]


def assert_done(world: World, kind: str, task: Task, runs: Runs) -> None:
    done = world.queue.get(task.id)
    assert done.state is TaskState.COMPLETED, done.error
    [comment] = our_comments(world, task)  # one comment, edited in place: never a second
    assert task.id not in world.backend.places  # removed
    assert runs.count.get("agent", 0) == (0 if kind == "note-no-agent" else 1)  # never a second agent
    assert runs.count.get("setup") == 1  # the crashed step was found again by its name, not re-run
    if kind == "note-no-agent":
        assert comment.startswith("📝 good") and "fix-1" not in runs.count  # green from the start
        return
    assert runs.count.get("fix-1") == 1 and done.meta["tests"]["verdict"] == "green"
    if kind.startswith("note"):
        assert comment.startswith("📝 good") and world.github.pulls(REPO) == []  # nothing pushed
        assert "commit_and_push" not in world.backend.calls
        return
    [pr] = world.github.pulls(REPO)
    assert comment.startswith("✅") and pr["draft"] is False
    assert world.github.repo(REPO).read_file(pr["head"]["ref"], "calc.txt") == "good\n"
    if kind == "followup":
        assert world.github.repo(REPO).read_file("claude/issue-1", "more.txt") == "more\n"


def finish(world: World, task: Task, outcome: Any) -> None:
    """What the daemon does with outcomes: a PENDING one (the run was lost) runs again from the start."""
    for _ in range(3):
        recorded = world.record(task, outcome)
        if recorded.state is not TaskState.PENDING:
            return
        again = world.queue.claim()
        assert again is not None and again.id == task.id
        outcome = world.pipeline().run(again, TaskControl())
    pytest.fail("the task never ended")


KINDS = ("issue", "manual", "followup", "note", "note-no-agent")


@pytest.mark.parametrize("kind", KINDS)
def test_an_uninterrupted_run_of_every_kind(world: World, kind: str) -> None:
    task, runs = make(world, kind)
    finish(world, task, world.pipeline().run(task, TaskControl()))
    assert_done(world, kind, task, runs)


def crash_in(world: World, task: Task, phase: str) -> None:
    """The daemon dies at the first backend call (of ``CRASH_AT[phase]``) once ``phase`` is recorded."""
    enter = world.backend._enter
    crashed: list[str] = []

    def dies(operation: str) -> None:
        wanted = CRASH_AT[phase]
        in_phase = not crashed and (wanted is None or operation == wanted)
        if in_phase and world.queue.get(task.id).meta.get("phase") == phase:
            crashed.append(operation)
            raise Crash(f"killed in phase {phase}, in {operation}")
        enter(operation)

    world.backend._enter = dies  # type: ignore[method-assign]


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("kind", KINDS)
def test_a_crash_in_every_phase_resumes_to_the_same_end(world: World, kind: str, phase: str) -> None:
    task, runs = make(world, kind)
    if kind == "note-no-agent" and phase in ("agent", "tests", "fixing"):
        pytest.skip("a kind without an agent has no agent phase and no test rounds")
    crash_in(world, task, phase)
    with pytest.raises(Crash):
        world.pipeline().run(task, TaskControl())
    recorded = world.queue.get(task.id)
    assert recorded.meta["phase"] == phase
    outcome = world.pipeline().resume(recorded, TaskControl())
    finish(world, task, outcome)
    assert_done(world, kind, task, runs)
    assert f"resuming task {task.id} in phase {phase!r}" in world.log_text(task)
