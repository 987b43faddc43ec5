"""What a task asks for: the seam between the phase machine (written once) and the kinds of task.

The pipeline (:mod:`claude_issue_solver.run.pipeline`) runs every task through the same phases, records
each before acting, resumes from each, keeps the budgets, the Claude limits, the test gate and the one
comment per task. What differs by kind is asked of the task's :class:`TaskKind`:

- **before the work**: whether it runs on a closed issue (:meth:`TaskKind.runs_on_closed`), what it
  checks and records before a workspace is made (:meth:`TaskKind.begin`: the approved text of a
  labelled issue, a follow-up's fresh start);
- **the run**: the issue text the prompt may show (:meth:`TaskKind.approved_text`), the branch, the
  prompt and the CLI's extra arguments (:meth:`TaskKind.plan`), whether an agent runs at all
  (:attr:`TaskKind.agent`), and whether a failed agent is started once more (:meth:`TaskKind.restart`);
- **publishing**: what the work ends in (:meth:`TaskKind.publish`: a pull request, commits on one,
  a comment);
- **the texts**: what its comments call the work and how to ask again (:meth:`TaskKind.words`), the
  progress checklist, where its one comment lives (:meth:`TaskKind.write_comment`), what ``queue`` and
  ``status`` show as its trigger.

A kind is chosen once, here: :func:`kind_of` maps ``task.kind`` to its implementation, imported only
when first asked for (``status`` imports none). :func:`register` adds one (the tests plug in a kind of
their own this way, without touching the pipeline).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from claude_issue_solver.backends.base import Workspace
    from claude_issue_solver.github.trust import Approved
    from claude_issue_solver.logs import TaskLog
    from claude_issue_solver.run.agent import AgentResult
    from claude_issue_solver.run.context import RunContext, RunSpec
    from claude_issue_solver.run.messages import Agent, RunFigures
    from claude_issue_solver.run.policy import ProcessExit
    from claude_issue_solver.run.prompt import IssueContext
    from claude_issue_solver.store.outcome import Outcome
    from claude_issue_solver.store.queue import Task, TaskQueue

__all__ = ["KINDS", "Plan", "TaskKind", "Words", "kind_of", "register"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Words:
    """What a kind's comments call its work."""

    subject: str  # "the work on {subject} was cancelled": "this issue", "this follow-up"
    finish: str  # "could not finish {finish}": "this issue", "the follow-up @alice asked for"
    working: str  # "is working on {working}": "this issue", "the request of @alice"
    retry: str  # how to ask again, a sentence or two


@dataclass(frozen=True)
class Plan:
    """The run a kind asks for: the branch the workspace is on, the prompt, the CLI's extra arguments."""

    branch: str
    prompt: str
    extra_args: tuple[str, ...] = ()
    start: str | None = None  # a ref of the remote the workspace starts at (``refs/pull/7/head``)


class TaskKind:
    """One kind of task. Subclasses answer the questions below; the defaults are an issue's."""

    name: str = ""
    agent: bool = True  # whether an agent runs (False: prepare, then publish straight away)
    tests: bool = True  # whether the repository's tests run around the agent (False: a review)

    # --- before the work -------------------------------------------------------------------------

    def runs_on_closed(self, task: Task, issue: dict[str, Any]) -> bool:
        """Whether the task still runs although its issue is closed."""
        return False

    def begin(self, run: RunContext, task: Task, issue: dict[str, Any], tlog: TaskLog) -> Task | Outcome:
        """Checks and records before a new run makes its workspace; an Outcome ends the task there."""
        return task

    def started(self, run: RunContext, task: Task, tlog: TaskLog) -> None:
        """Once the run's plan is made (before the workspace): what the task log says about it."""

    def closed_comment(self, task: Task, phrase: str) -> str | None:
        """What the task's comment says when its issue was closed before it started (None: nothing)."""
        return None

    # --- the run ---------------------------------------------------------------------------------

    def approved_text(self, queue: TaskQueue, task: Task) -> Approved | None:
        """The issue text the prompt may show (None: it shows none)."""
        from claude_issue_solver.github.trust import Approved

        return Approved.from_meta(task.meta.get("approved"))

    def plan(self, run: RunContext, task: Task, context: IssueContext, default_branch: str) -> Plan:
        raise NotImplementedError

    def restart(self, task: Task, exit_: ProcessExit) -> tuple[str, dict[str, Any]] | None:
        """Whether a finished agent is started once more in the same workspace: what the task log says
        and what is recorded on the task first (the plan is then made again from it)."""
        return None

    # --- publishing ------------------------------------------------------------------------------

    def publish(
        self,
        run: RunContext,
        task: Task,
        workspace: Workspace,
        spec: RunSpec,
        result: AgentResult | None,
        tlog: TaskLog,
    ) -> Outcome:
        """What the work ends in. Recorded as phase ``publishing`` before, ``published`` once it is
        public (with the final comment in ``meta["final_comment"]`` to write again on a resume)."""
        raise NotImplementedError

    def resume_published(self, run: RunContext, task: Task, tlog: TaskLog) -> Outcome | None:
        """Resumed after "published" was recorded: an ending of the kind's own to repeat (None: the
        task completed; its final comment is written again)."""
        return None

    # --- the texts -------------------------------------------------------------------------------

    def words(self, task: Task, label: str, phrase: str) -> Words:
        raise NotImplementedError

    def working_comment(self, task: Task, done: int, *, turns: int | None, agent: Agent) -> str:
        """The progress comment when the repository has no tests (``done`` steps ticked)."""
        raise NotImplementedError

    def checklist(self, task: Task, items: list[tuple[bool, str]]) -> list[tuple[bool, str]]:
        """The progress comment's items when the repository has tests (setup, baseline, agent, rounds)."""
        return items

    def figures(self, run: RunContext, task: Task, figures: RunFigures) -> RunFigures:
        """The figures its texts show (a follow-up adds what the issue cost so far)."""
        return figures

    def write_comment(self, run: RunContext, task: Task, body: str) -> None:
        """Write the task's one comment, created once and edited in place (default: on the issue)."""
        from claude_issue_solver.run.context import task_comment

        task_comment(run.publisher, run.queue, task, body)

    def trigger(self, task: Task) -> str:
        """What ``queue``/``status`` show as what started the task."""
        labeler = task.meta.get("labeler")
        return f"label by @{labeler}" if labeler else "label"

    def history_trigger(self, task: Task) -> str:
        """The trigger column of a pull request's run history."""
        return "label"


# The kinds a task may name, by ``task.kind``: "module:Class", imported when first asked for.
KINDS: dict[str, str] = {
    "issue": "claude_issue_solver.run.kinds.issue:IssueKind",
    "followup": "claude_issue_solver.run.kinds.followup:FollowUpKind",
    "manual": "claude_issue_solver.run.kinds.issue:ManualKind",
    "test": "claude_issue_solver.run.kinds.testrun:TestRunKind",
    "review": "claude_issue_solver.run.kinds.review:ReviewKind",
}
_loaded: dict[str, TaskKind] = {}


def register(name: str, kind: TaskKind | str) -> None:
    """Add (or replace) the kind of tasks with ``task.kind == name``: an instance or "module:Class"."""
    _loaded.pop(name, None)
    if isinstance(kind, TaskKind):
        _loaded[name] = kind
        KINDS[name] = f"{type(kind).__module__}:{type(kind).__qualname__}"
    else:
        KINDS[name] = kind


def unregister(name: str) -> None:
    KINDS.pop(name, None)
    _loaded.pop(name, None)


def kind_named(name: str) -> TaskKind:
    found = _loaded.get(name)
    if found is not None:
        return found
    where = KINDS.get(name)
    if where is None:
        log.warning("unknown kind of task %r (from a newer version?): run as an issue queued by hand", name)
        return kind_named("manual")
    module, _, cls = where.partition(":")
    made: TaskKind = getattr(importlib.import_module(module), cls)()
    _loaded[name] = made
    return made


def kind_of(task: Task) -> TaskKind:
    """The kind a task is: the one place a kind is chosen."""
    return kind_named(task.kind)
