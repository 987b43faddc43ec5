"""What every phase of a run and every kind of task share: the services, the one comment, the endings.

:class:`RunContext` is the base of :class:`claude_issue_solver.run.pipeline.Pipeline` and what a
:class:`claude_issue_solver.run.kinds.TaskKind` is handed: the queue, the backend, GitHub, the agent's
access, the limits; the task's one comment (edited in place, never posted twice); how a run ends
(:meth:`RunContext.fail`, :meth:`RunContext.lost`, :meth:`RunContext.setback`, a cancel); the
relay's metering; and the run's spec (the workspace and the agent's process, with the prompt the
task's kind writes).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from claude_issue_solver.backends.base import Backend, ProcessSpec, Workspace, WorkspaceSpec
from claude_issue_solver.config import Config
from claude_issue_solver.github.client import GitHubClient, GitHubError, RateLimited, Transient
from claude_issue_solver.github.publisher import Publisher
from claude_issue_solver.github.trust import Permissions, iso, writers_comments
from claude_issue_solver.logs import REDACTOR, TaskLog, task_log_path
from claude_issue_solver.run import commit_scope, followup, messages, operator_rules, repo_instructions
from claude_issue_solver.run.agent import AgentSettings, build_command, parse_extra_args
from claude_issue_solver.run.agent_access import AgentAccess, add_metered, make_relay
from claude_issue_solver.run.kinds import kind_of
from claude_issue_solver.run.policy import has_changes, remove_workspace
from claude_issue_solver.run.prompt import IssueComment, IssueContext
from claude_issue_solver.run.run_limits import RunLimits
from claude_issue_solver.run.test_gate import Interrupted, TestGate, TestReport, checklist
from claude_issue_solver.store.outcome import Outcome
from claude_issue_solver.store.queue import QueueError, Task, TaskQueue, TaskState

log = logging.getLogger(__name__)

AGENT = "agent"  # the agent's process name in its workspace
RED_WITHOUT_PR = "red_without_pr"  # meta: ON_RED_TESTS=comment ended the run (its reason and figures)
FINAL_COMMENT = "final_comment"  # meta: the comment a published task ends with (written again on resume)
APPROVAL_NOTE = "approval_note"  # meta: the issue changed after its text was approved (every comment says so)
NOT_SHOWN = "(not shown: no version of the issue's text approved by a person with write access is on record)"


@dataclass(frozen=True)
class RunSpec:
    """What a task's run needs: where its workspace comes from, and the agent's process."""

    workspace: WorkspaceSpec
    agent: ProcessSpec

    @property
    def task_id(self) -> str:
        return self.workspace.task_id

    @property
    def branch(self) -> str:
        return self.workspace.branch


def agent_settings(config: Config) -> AgentSettings:
    added = operator_rules.load(config)  # the operator's rules and MCP servers (read now)
    REDACTOR.add(*added.secrets)
    return AgentSettings(
        max_turns=config.claude_max_turns,
        model=config.claude_model,
        append_system_prompt=added.system_prompt,
        max_budget_usd=config.claude_max_budget_usd,
        extra_args=parse_extra_args(config.claude_extra_args),
        output_format="stream-json",  # events as they happen: live task logs and progress
        mcp_config=added.mcp_config,
    )


class RunContext:
    def __init__(
        self,
        config: Config,
        queue: TaskQueue,
        backend: Backend[Any],
        client: GitHubClient,
        publisher: Publisher,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        access: AgentAccess | None = None,
    ) -> None:
        self.config = config
        self.queue = queue
        self.backend = backend
        self.client = client
        self.publisher = publisher
        self.clock = clock
        self.sleep = sleep
        self.command = build_command(agent_settings(config))
        # Whatever the agent writes may end up on GitHub: every secret in force is redacted there.
        REDACTOR.add(*config.secrets())
        self.access = access or AgentAccess(config, backend, make_relay(config, backend))
        self.run_limits = RunLimits(queue, config, clock=clock, reset_seen=self.access.reset_seen)
        self.agent = messages.agent_for(config.claude_model)  # who the PR and the comment name
        # Whose words reach the prompt: the watcher's cached permission checks, shared through the state.
        self.permissions = Permissions(config, client, queue.store, clock=clock)
        self._comment_locks = tuple(threading.Lock() for _ in range(64))  # striped by task id
        self.gate = TestGate(
            backend,
            queue,
            fix_rounds=config.test_fix_rounds,
            agent_command=self.command,
            access=self.access,
            clock=clock,
            progress=self.test_progress,
            after_run=self.run_limits.after_run,
            setup_cache=config.setup_cache,
        )

    @property
    def label(self) -> str:
        return self.config.trigger_label

    @property
    def phrase(self) -> str:
        return self.config.trigger_phrase

    # --- the task's one comment -------------------------------------------------------------------

    def announce(self, task: Task) -> None:
        """Say on the issue that the task is queued (the comment every later state edits)."""
        try:
            self.comment(task, messages.queued_comment(task, agent=self.agent), only_while_pending=True)
        except GitHubError as exc:
            log.warning("could not post the queued comment for %s: %s", task.ref, exc)

    def comment(self, task: Task, body: str, *, only_while_pending: bool = False) -> None:
        """Write the task's one comment. The poller thread announces a task while the dispatcher may
        already run it (a webhook wakes it at once): one lock per task, and the comment's id as the
        other thread recorded it, or both would find no comment and post one each; and a "queued"
        that comes late must not overwrite "working"."""
        with self._comment_locks[hash(task.id) % len(self._comment_locks)]:
            try:
                recorded = self.queue.get(task.id)
            except QueueError:
                recorded = None
            if recorded is not None:
                for key in ("comment_id", "answer_id", APPROVAL_NOTE):
                    if recorded.meta.get(key) is not None:
                        task.meta[key] = recorded.meta[key]
                if only_while_pending and recorded.state is not TaskState.PENDING:
                    return
            if task.meta.get(APPROVAL_NOTE):
                body = messages.with_note(task, body, str(task.meta[APPROVAL_NOTE]))
            kind_of(task).write_comment(self, task, body)

    def working(self, task: Task, done: int, *, turns: int | None = None) -> str:
        """The progress comment: with the tests' steps when the repository has tests, else the kind's
        plain checklist."""
        report = self.tests(task)
        if report is not None and report.plan.test:
            items = checklist(report, agent_done=False, current="agent" if done else None)
            items = kind_of(task).checklist(task, items)
            return messages.checklist_comment(task, items, turns=turns, agent=self.agent)
        return kind_of(task).working_comment(task, done, turns=turns, agent=self.agent)

    def test_progress(self, task: Task, report: TestReport, agent_done: bool, current: str | None) -> None:
        task.meta["tests"] = report.to_dict()
        try:
            items = kind_of(task).checklist(task, checklist(report, agent_done=agent_done, current=current))
            self.comment(task, messages.checklist_comment(task, items, agent=self.agent))
        except GitHubError as exc:
            log.warning("could not update the progress comment of %s: %s", task.ref, exc)

    @staticmethod
    def tests(task: Task) -> TestReport | None:
        data = task.meta.get("tests")
        return TestReport.from_dict(data) if isinstance(data, dict) and data.get("plan") else None

    # --- endings ----------------------------------------------------------------------------------

    def fail(
        self,
        task: Task,
        reason: str,
        tlog: TaskLog,
        tail: str = "",
        *,
        shown: str | None = None,
        comment: str | None = None,
    ) -> Outcome:
        """The task failed for ``reason``; the comment says ``shown`` when given (the reason with links),
        or is ``comment`` (a failure that is not the agent's)."""
        tlog.write(f"failed: {reason}")
        self.cleanup(task, tlog)
        try:
            self.comment(
                task,
                comment
                or messages.failed_comment(
                    task, shown or reason, self.label, tail, phrase=self.phrase, agent=self.agent
                ),
            )
        except GitHubError as exc:
            tlog.write(f"could not post the failure comment: {exc}")
        return Outcome(TaskState.FAILED, error=reason)

    def lost(self, task: Task, reason: str, tlog: TaskLog) -> Outcome:
        """The run is gone (its container vanished, the daemon died early): run again or give up."""
        if task.attempts < self.config.max_attempts:
            tlog.write(f"{reason}; queueing it again (attempt {task.attempts} of {self.config.max_attempts})")
            self.queue.update(task.id, meta={"phase": None})
            return Outcome(TaskState.PENDING, error=reason)
        return self.fail(task, f"{reason}, and it already ran {task.attempts} times", tlog)

    def setback(self, task: Task, exc: Exception, tlog: TaskLog, *, cleanup: bool = True) -> Outcome:
        """A failure on the way: a passing one (GitHub 5xx, a rate limit) is retried, others fail.

        GitHub's rate limit (a pause longer than work waits for) is the daemon's, not the task's: the
        task goes back in line without spending an attempt, and no task starts until the pause is over
        (the daemon asks :meth:`GitHubClient.holds_work`)."""
        limited = isinstance(exc, RateLimited)
        passing = limited or isinstance(exc, Transient) or getattr(exc, "retryable", False)
        if limited:
            task = self.queue.update(task.id, attempts=max(0, task.attempts - 1))
        if passing and task.attempts < self.config.max_attempts:
            tlog.write(f"{exc}; will try again" + (" (not counted as an attempt)" if limited else ""))
            if cleanup:
                self.cleanup(task, tlog)
                self.queue.update(task.id, meta={"phase": None})
            return Outcome(TaskState.PENDING, error=str(exc))
        return self.fail(task, str(exc), tlog)

    def cancelled(self, task: Task, tlog: TaskLog) -> Outcome:
        tlog.write("cancelled by an operator")
        self.cleanup(task, tlog)
        self.comment(task, messages.cancelled_comment(task, self.label, phrase=self.phrase))
        return Outcome(TaskState.CANCELLED, error="cancelled by an operator")

    def interrupted(self, task: Task, exc: Interrupted, tlog: TaskLog) -> Outcome | None:
        if not exc.cancelled:
            return None  # detached: the step runs on, and the next daemon resumes the task
        return self.cancelled(task, tlog)

    # --- helpers ----------------------------------------------------------------------------------

    def log_for(self, task: Task) -> TaskLog:
        return TaskLog(task_log_path(self.config.log_dir, task.id), clock=self.clock)

    def meter(self, task: Task, tlog: TaskLog) -> float | None:
        """Add what the relay metered since the last look to the task's figures (``meta["metered"]``,
        over all its runs); returns the cost of it (the run that just ended, when the CLI cannot say)."""
        added = self.access.take_metered(task.id)
        if added is None:
            return None
        metered = add_metered(task.meta.get("metered"), added)
        self.queue.update(task.id, meta={"metered": metered})
        task.meta["metered"] = metered
        tlog.write(
            f"relay: {added['requests']} model call(s), {added['input_tokens']} input and "
            f"{added['output_tokens']} output tokens, ${added['cost_usd']:.4f} metered"
        )
        return float(added["cost_usd"])

    def cleanup(self, task: Task, tlog: TaskLog) -> None:
        remove_workspace(self.backend, task.id, tlog, sleep=self.sleep)
        self.access.close(task.id)  # the task's relay token dies with it

    def figures(self, task: Task, duration_s: float | None) -> messages.RunFigures:
        return kind_of(task).figures(self, task, messages.RunFigures.of(task, duration_s, self.agent))

    def issue_total(self, task: Task) -> float:
        """What every recorded run of the task's issue cost, this one included (the queue keeps the last
        100 finished tasks, so a long-lived issue's oldest runs may be missing)."""
        return sum(
            t.cost_usd or 0.0
            for t in self.queue.list()
            if t.repo == task.repo and t.issue_number == task.issue_number and t.id != task.id
        ) + (task.cost_usd or 0.0)

    def duration(self, task: Task) -> float | None:
        return None if task.started_at is None else self.clock() - task.started_at

    def deadline(self, task: Task) -> float:
        return (task.started_at or self.clock()) + self.config.task_timeout

    def changed(self, task: Task, workspace: Workspace) -> bool:
        """Whether the agent changed anything (what setup and the test runs made does not count)."""
        return has_changes(
            self.backend.changes(workspace, commit_scope.excluded(self.queue.get(task.id).meta))
        )

    # --- the run's spec -----------------------------------------------------------------------------

    def spec(self, task: Task, issue: dict[str, Any]) -> RunSpec:
        """What the run needs. The prompt holds the text a writer approved (never the live issue's, which
        anyone who can edit it may have changed since) and the comments of writers written before the
        task started; the task's kind writes it."""
        kind = kind_of(task)
        info = self.client.repo_info(task.repo)
        started = iso(task.started_at if task.started_at is not None else self.clock())
        comments = [
            IssueComment(
                author=(c.get("user") or {}).get("login", ""),
                body=c.get("body") or "",
                created_at=c.get("created_at", ""),
            )
            for c in writers_comments(
                self.permissions,
                task.repo,
                self.client.comments(task.repo, task.issue_number),
                before=started,
            )
        ]
        approved = kind.approved_text(self.queue, task)
        context = IssueContext(
            repo=task.repo,
            number=task.issue_number,
            title=approved.title if approved else NOT_SHOWN,
            body=approved.body if approved else NOT_SHOWN,
            labels=tuple(labels_cased(issue)),
            author=(issue.get("user") or {}).get("login", ""),
            comments=tuple(comments),
            url=issue.get("html_url", ""),
        )
        repo = task.repo
        plan = kind.plan(self, task, context, info["default_branch"])
        prompt = plan.prompt
        if "--resume" not in plan.extra_args:  # a new session: the repository's AGENTS.md, if no CLAUDE.md
            ref = info["default_branch"]
            prompt = repo_instructions.with_agents_md(
                prompt, repo_instructions.agents_md(self.client, repo, ref), ref
            )
        return RunSpec(
            workspace=WorkspaceSpec(
                task_id=task.id,
                repo=repo,
                issue_number=task.issue_number,
                clone_url=info["clone_url"],
                default_branch=info["default_branch"],
                branch=plan.branch,
                credential=lambda: self.client.git_credential(repo),
                start_ref=plan.start,
            ),
            agent=self.access.agent(
                task.id,
                name=task.meta.get("agent_process") or AGENT,
                argv=[*self.command, *plan.extra_args],
                stdin=prompt.encode(),
                keep=followup.keep_for(task),  # every run keeps the issue's sessions for the next
            ),
        )


def task_comment(publisher: Publisher, queue: TaskQueue, task: Task, body: str) -> None:
    """Write the task's one comment (create it, or edit it in place) and remember its id on the task."""
    comment_id = task.meta.get("comment_id")
    new_id = publisher.upsert_comment(task.repo, task.issue_number, task.id, body, comment_id)
    if new_id != comment_id:
        task.meta["comment_id"] = new_id
        queue.update(task.id, meta={"comment_id": new_id})


def labels_cased(issue: dict[str, Any]) -> list[str]:
    return [label["name"] if isinstance(label, dict) else str(label) for label in issue.get("labels", [])]


def labels(issue: dict[str, Any]) -> list[str]:
    return [name.lower() for name in labels_cased(issue)]


__all__ = [
    "AGENT",
    "APPROVAL_NOTE",
    "FINAL_COMMENT",
    "NOT_SHOWN",
    "RED_WITHOUT_PR",
    "RunContext",
    "RunSpec",
    "agent_settings",
    "labels",
    "labels_cased",
    "task_comment",
]
