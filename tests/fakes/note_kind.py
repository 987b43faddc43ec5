"""A kind of task written only for the tests: the agent writes a note, the task publishes it as a comment.

It shows what a new kind must implement (:class:`claude_issue_solver.run.kinds.TaskKind`): the run's plan
(branch and prompt), what publishing means (here: read a file, write the task's one comment; nothing is
pushed), and the texts. Everything else — the phases recorded before acting, resume, the budgets, the
Claude limits, the test gate, the comment edited in place — is the pipeline's and is not written here.
"""

from __future__ import annotations

from claude_issue_solver.run.kinds import Plan, TaskKind, Words
from claude_issue_solver.run.messages import Agent, marker
from claude_issue_solver.store.outcome import Outcome
from claude_issue_solver.store.queue import TaskState

NOTE = "NOTE.md"
NAME = "note"


class NoteKind(TaskKind):
    name = NAME

    def plan(self, run, task, context, default_branch):  # type: ignore[no-untyped-def]
        prompt = f"Write {NOTE} about issue #{context.number}: {context.title}"
        return Plan(f"note/issue-{task.issue_number}", prompt)

    def publish(self, run, task, workspace, spec, result, tlog):  # type: ignore[no-untyped-def]
        data = run.backend.read_file(workspace, NOTE, 64 * 1024)
        text = "📝 " + (data.decode() if data else "(no note)").strip() + "\n\n" + marker(task.id)
        # Recorded with the phase, like every kind's final comment: a resume writes it again.
        run.queue.update(task.id, meta={"phase": "published", "final_comment": text})
        run.comment(task, text)
        run.cleanup(task, tlog)
        return Outcome(TaskState.COMPLETED)

    def words(self, task, label, phrase):  # type: ignore[no-untyped-def]
        return Words("this note", "this note", "a note", f"Run `claude-issue-solver retry {task.id}`.")

    def working_comment(self, task, done: int, *, turns: int | None, agent: Agent) -> str:
        return f"🤖 {agent.name} is writing a note ({done} of 2 steps)\n\n{marker(task.id)}"


class NoAgentNoteKind(NoteKind):
    """The same without an agent (as a test run of a pull request will be): prepare, then publish."""

    agent = False
