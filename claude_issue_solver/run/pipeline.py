"""The task pipeline, one for every backend and every kind of task: prepare -> run the agent -> the
repository's tests -> publish -> clean up.

The pipeline is the daemon's runner. It records each phase on the task *before* acting on it, so that
a daemon that died anywhere can pick the task up again (:meth:`Pipeline.resume`, which goes on with
the step :data:`claude_issue_solver.run.phases.RESUME` names) and every step after the agent is
idempotent: the commit is made only if there is something uncommitted, the push repeats harmlessly,
the pull request is found by its branch, the comment by its marker.

The phases are written once. What differs by kind of task (what to check before starting, the prompt
and the branch, what publishing means, the texts) is asked of the task's kind
(:func:`claude_issue_solver.run.kinds.kind_of`); the backend only gives mechanics, and what happens with
them (waiting, stopping, the summary, what counts as a change, removing) is
:mod:`claude_issue_solver.run.policy`. The budgets and Claude's limits are
:mod:`claude_issue_solver.run.run_limits`, the repository's tests
:mod:`claude_issue_solver.run.test_gate`; the services, the task's one comment and the endings are
:class:`claude_issue_solver.run.context.RunContext`.
"""

from __future__ import annotations

import logging

from claude_issue_solver.backends.base import BackendError, Workspace, WorkspaceLost
from claude_issue_solver.github.client import GitHubError
from claude_issue_solver.logs import TaskLog
from claude_issue_solver.run import followup, messages, phases
from claude_issue_solver.run.agent import AgentResult, parse_result
from claude_issue_solver.run.context import (
    AGENT,
    APPROVAL_NOTE,
    FINAL_COMMENT,
    NOT_SHOWN,
    RED_WITHOUT_PR,
    RunContext,
    RunSpec,
    agent_settings,
    task_comment,
)
from claude_issue_solver.run.kinds import kind_of
from claude_issue_solver.run.policy import ProcessExit, reconcile, wait_for_process
from claude_issue_solver.run.repo_settings import RepoSettingsError, load_plan
from claude_issue_solver.run.test_gate import Interrupted, TestReport
from claude_issue_solver.store.outcome import Outcome, TaskControl
from claude_issue_solver.store.queue import Task, TaskState

__all__ = [
    "AGENT",
    "APPROVAL_NOTE",
    "FINAL_COMMENT",
    "MAX_PROGRESS_INTERVAL",
    "NOT_SHOWN",
    "RED_WITHOUT_PR",
    "Pipeline",
    "RunSpec",
    "agent_settings",
    "task_comment",
]

log = logging.getLogger(__name__)

# Progress edits while the agent runs: the first after 30 s, then ever further apart (up to 10 minutes),
# so that a half-hour run costs about six comment edits, not one per turn.
FIRST_PROGRESS_EDIT = 30.0
MAX_PROGRESS_INTERVAL = 600.0
_TASK_FIELDS = ("result", "cost_usd", "num_turns", "session_id", "duration_ms")


class Pipeline(RunContext):
    # --- the daemon's Runner interface ------------------------------------------------------------

    def run(self, task: Task, control: TaskControl) -> Outcome | None:
        tlog = self.log_for(task)
        tlog.write(f"task {task.id}: {task.ref} ({task.title!r}), attempt {task.attempts}")
        if any(task.meta.get(key) is not None for key in ("phase", RED_WITHOUT_PR, FINAL_COMMENT)):
            # A retried task still holds its last run's ending: a crash before this run records its
            # own phase must not resume as that one (a red-tests ending would fail it again).
            task = self.queue.update(task.id, meta={"phase": None, RED_WITHOUT_PR: None, FINAL_COMMENT: None})
        kind = kind_of(task)
        try:
            issue = self.client.issue(task.repo, task.issue_number)
            if issue.get("state") != "open":
                if not kind.runs_on_closed(task, issue):
                    return self._closed(task, tlog)
                tlog.write(
                    f"the issue is closed ({issue.get('closed_at')}), but this request came after: running it"
                )
            begun = kind.begin(self, task, issue, tlog)
            if isinstance(begun, Outcome):
                return begun
            task = begun
            spec = self.spec(task, issue)
            tests = self._test_plan(task, spec, tlog) if kind.tests else None
            kind.started(self, task, tlog)
            self.comment(task, self.working(task, 0))
            task = self.queue.update(
                task.id,
                backend=self.backend.name,
                handle=self.backend.handle_for(task.id),
                branch=spec.branch,
                meta={"phase": "preparing", "branch_moved": None},
            )
            workspace = self.backend.prepare(spec.workspace, tlog)
            # Both for a backend that finds the workspace again from the task (Daytona's attach).
            self.queue.update(
                task.id, meta={"base_sha": workspace.base_sha, "from_default": workspace.from_default}
            )
        except RepoSettingsError as exc:  # the repository's file is at fault, not Claude: said so
            shown = messages.settings_failed_comment(
                task, str(exc), self.label, phrase=self.phrase, agent=self.agent
            )
            return self.fail(task, str(exc), tlog, comment=shown)
        except (GitHubError, BackendError) as exc:
            return self.setback(task, exc, tlog)
        return self._before_agent(task, workspace, spec, tests, control, tlog)

    def resume(self, task: Task, control: TaskControl) -> Outcome | None:
        tlog = self.log_for(task)
        phase = task.meta.get("phase")
        tlog.write(f"daemon restarted: resuming task {task.id} in phase {phase!r}")
        workspace = self.backend.attach(task)
        step = phases.resume_step(phase, has_workspace=workspace is not None)
        if step == phases.ENDED:
            return self._ended(task, tlog)
        if step == phases.LOST or workspace is None:
            self.cleanup(task, tlog)
            return self.lost(task, "the daemon stopped before its workspace was ready", tlog)
        try:
            spec = self.spec(task, self.client.issue(task.repo, task.issue_number))
        except GitHubError as exc:
            return self.setback(task, exc, tlog, cleanup=False)
        if step == phases.PUBLISH:
            return self._publish(task, workspace, spec, None, tlog)  # the task holds the result
        if step == phases.BEFORE_AGENT:
            return self._before_agent(task, workspace, spec, self.tests(task), control, tlog)
        if step == phases.VERIFY:
            return self._verify_and_publish(task, workspace, spec, None, control, tlog)
        return self._after_start(task, workspace, spec, control, tlog)

    def reconcile(self, live: list[Task]) -> None:
        removed = reconcile(self.backend, {t.id for t in live}, sleep=self.sleep)
        self.access.reconcile({t.id for t in live})
        for item in removed:
            log.info("removed leftover %s that no task owns", item)
        try:
            for ref in followup.forget_closed(self.backend, self.client, self.queue, live):
                log.info("removed the kept Claude sessions of %s", ref)
        except BackendError as exc:
            log.warning("could not look for the sessions of closed issues: %s", exc)

    def forget_sessions(self, repo: str, number: int) -> None:
        """The issue was closed (the watcher saw it): remove its kept Claude sessions, unless a task of
        it still runs (that run finds the issue closed and removes them itself). Never raises: it runs
        on the poller thread."""
        if not self.backend.keeps_dirs or self.queue.live_for(repo, number) is not None:
            return
        try:
            if self.backend.forget_kept(followup.session_key(repo, number)):
                log.info("removed the kept Claude sessions of %s#%s (the issue was closed)", repo, number)
        except (BackendError, OSError) as exc:
            log.warning("could not remove the kept Claude sessions of %s#%s: %s", repo, number, exc)

    # --- the phases -------------------------------------------------------------------------------

    def _before_agent(
        self,
        task: Task,
        workspace: Workspace,
        spec: RunSpec,
        tests: TestReport | None,
        control: TaskControl,
        tlog: TaskLog,
    ) -> Outcome | None:
        """The repository's setup and baseline tests (when it has tests), then the agent's start."""
        try:
            if tests is not None:
                self.gate.before_agent(task, workspace, tests, control, tlog, self.deadline(task))
            if not kind_of(task).agent:
                return self._publish(task, workspace, spec, None, tlog)
            self.queue.update(task.id, meta={"phase": "agent"})
            if self.backend.start_process(workspace, spec.agent, tlog):
                tlog.write(f"agent started in {workspace.handle}")
            else:
                tlog.write(f"the agent already runs in {workspace.handle} (started before a restart)")
            self.comment(task, self.working(task, 1))
        except Interrupted as exc:
            return self.interrupted(task, exc, tlog)
        except WorkspaceLost as exc:
            self.cleanup(task, tlog)
            return self.lost(task, str(exc), tlog)
        except (GitHubError, BackendError) as exc:
            return self.setback(task, exc, tlog)
        return self._after_start(task, workspace, spec, control, tlog)

    def _after_start(
        self, task: Task, workspace: Workspace, spec: RunSpec, control: TaskControl, tlog: TaskLog
    ) -> Outcome | None:
        progress = _ProgressEdits(self.clock())

        def tick() -> None:
            # Between polls while the agent runs: the place for a (throttled) progress edit.
            turns = tlog.progress.turns
            if progress.due(self.clock(), turns):
                try:
                    self.comment(task, self.working(task, 1, turns=turns))
                except GitHubError as exc:
                    tlog.write(f"could not update the progress comment: {exc}")

        try:
            exit_ = wait_for_process(
                self.backend,
                workspace,
                spec.agent.name,
                deadline=self.deadline(task),
                control=control,
                clock=self.clock,
                log=tlog,
                tick=tick,
            )
        except WorkspaceLost as exc:
            self.cleanup(task, tlog)
            return self.lost(task, str(exc), tlog)
        except BackendError as exc:
            return self.setback(task, exc, tlog)
        if exit_ is None:
            return None  # detached: the agent runs on, and the next daemon resumes the task
        again = kind_of(task).restart(task, exit_)
        if again is not None:  # once more in the same workspace (a follow-up's fresh session)
            why, meta = again
            tlog.write(why)
            task = self.queue.update(task.id, meta=meta)
            try:
                spec = self.spec(task, self.client.issue(task.repo, task.issue_number))
                self.backend.start_process(workspace, spec.agent, tlog)
            except (GitHubError, BackendError) as exc:
                return self.setback(task, exc, tlog)
            return self._after_start(task, workspace, spec, control, tlog)
        return self._conclude(task, workspace, spec, exit_, tlog, control)

    def _conclude(
        self,
        task: Task,
        workspace: Workspace,
        spec: RunSpec,
        exit_: ProcessExit,
        tlog: TaskLog,
        control: TaskControl,
    ) -> Outcome | None:
        if exit_.cancelled:
            return self.cancelled(task, tlog)
        unbooked = self.meter(task, tlog)
        if exit_.timed_out:
            reason = (
                f"it ran out of time: the agent was stopped after {self.config.task_timeout}s (TASK_TIMEOUT)"
            )
            if unbooked:  # a killed CLI reports no cost: the relay's figure goes into the budget instead
                self.run_limits.after_run(task, stdout="", exit_code=None, cost_usd=unbooked)
            return self.fail(task, reason, tlog, exit_.tail)
        result = parse_result(exit_.stdout, exit_code=exit_.exit_code, log_tail=exit_.tail)
        fields = result.to_task_fields()
        if result.cost_usd is None and unbooked:
            fields["cost_usd"] = unbooked  # the CLI said nothing of its spend; the API's answers did
        task = self.queue.update(task.id, **{k: fields.get(k) for k in _TASK_FIELDS})
        tlog.write(f"agent finished: exit code {exit_.exit_code}, ok={result.ok}, {fields}")
        end = self.run_limits.after_run(
            task,
            stdout=exit_.stdout,
            exit_code=exit_.exit_code,
            stderr=exit_.stderr,
            cost_usd=result.cost_usd if result.cost_usd is not None else unbooked,
        )
        if end.waits:
            tlog.write(end.wait_reason or "waiting for a Claude limit")
            self.cleanup(task, tlog)
            self.comment(task, end.comment or "")
            return Outcome(TaskState.PENDING, error=end.wait_reason)
        if not result.ok:
            return self.fail(task, end.failure or result.error or "the agent failed", tlog, exit_.tail)
        return self._verify_and_publish(task, workspace, spec, result, control, tlog)

    def _verify_and_publish(
        self,
        task: Task,
        workspace: Workspace,
        spec: RunSpec,
        result: AgentResult | None,
        control: TaskControl,
        tlog: TaskLog,
    ) -> Outcome | None:
        """The test rounds (when the repository has tests; fix rounds continue the session), then publish."""
        report = self.tests(task)
        if report is not None and report.plan.test:
            try:
                if not report.rounds and not self.changed(task, workspace):
                    tlog.write("the agent changed nothing: no test rounds")
                    return self._publish(task, workspace, spec, result, tlog)
                report = self.gate.after_agent(
                    task,
                    workspace,
                    report,
                    control,
                    tlog,
                    self.deadline(task),
                    spec.agent.stdin,
                    spec.agent.keep,
                )
            except Interrupted as exc:
                return self.interrupted(task, exc, tlog)
            except WorkspaceLost as exc:
                self.cleanup(task, tlog)
                return self.lost(task, str(exc), tlog)
            except BackendError as exc:
                return self.setback(task, exc, tlog)
            task = self.queue.get(task.id)
            if report.fixes:
                self.meter(task, tlog)  # the fix rounds' model calls too (each round booked its own cost)
                result = None  # the task holds the figures and the answer of all rounds
        return self._publish(task, workspace, spec, result, tlog)

    def _publish(
        self, task: Task, workspace: Workspace, spec: RunSpec, result: AgentResult | None, tlog: TaskLog
    ) -> Outcome:
        """What the task's kind makes of the work; ``publishing`` is recorded before anything is made
        public (``task`` keeps the phase it was in: the kind tells a resumed publish by it)."""
        if task.meta.get("phase") != "publishing":
            self.queue.update(task.id, meta={"phase": "publishing"})
        return kind_of(task).publish(self, task, workspace, spec, result, tlog)

    def _ended(self, task: Task, tlog: TaskLog) -> Outcome:
        """Resumed after "published" was recorded: the kind's own ending again, or the final comment
        (found by its marker: edited, never posted twice), then clean up."""
        ending = kind_of(task).resume_published(self, task, tlog)
        if ending is not None:
            return ending
        final = task.meta.get(FINAL_COMMENT)
        if isinstance(final, str):
            try:
                self.comment(task, final)
            except GitHubError as exc:
                tlog.write(f"could not write the final comment: {exc}")
        self.cleanup(task, tlog)
        return Outcome(TaskState.COMPLETED)

    # --- before the work ----------------------------------------------------------------------------

    def _test_plan(self, task: Task, spec: RunSpec, tlog: TaskLog) -> TestReport | None:
        """Read what the tests are (the repository's file on its default branch, the settings, a guess).

        Always anew for a run from the start (a requeued or retried task must not reuse an earlier
        attempt's rounds); a resumed task keeps the report it recorded.
        """
        plan = load_plan(self.client, task.repo, spec.workspace.default_branch, self.config)
        report = TestReport(plan)
        self.queue.update(task.id, meta={"tests": report.to_dict()})
        task.meta["tests"] = report.to_dict()
        if plan.test is None:
            tlog.write(f"tests: {plan.source}; the pull request will say it is not verified")
            # The agent still benefits from installed dependencies: setup runs (no baseline, no rounds).
            return report if plan.setup else None
        tlog.write(
            f"tests: {plan.test!r} from {plan.source}"
            + (f", setup {plan.setup!r}" if plan.setup else "")
            + f", {plan.timeout}s per run, up to {self.config.test_fix_rounds} fix round(s)"
        )
        return report

    def _closed(self, task: Task, tlog: TaskLog) -> Outcome:
        """The issue was closed before the work started: nothing to do (the kind may say so)."""
        if self.backend.forget_kept(followup.session_key(task.repo, task.issue_number)):
            tlog.write("removed the issue's kept Claude sessions (the issue is closed)")
        tlog.write("the issue was closed before the work started; nothing to do")
        text = kind_of(task).closed_comment(task, self.phrase)
        if text is not None:
            try:
                self.comment(task, text)
            except GitHubError as exc:
                tlog.write(f"could not answer the request: {exc}")
        return Outcome(TaskState.CANCELLED, error="the issue was closed")


class _ProgressEdits:
    """When the next progress edit is due: only when something changed, and ever less often."""

    def __init__(self, now: float) -> None:
        self.next_at = now + FIRST_PROGRESS_EDIT
        self.interval = FIRST_PROGRESS_EDIT
        self.turns = 0

    def due(self, now: float, turns: int) -> bool:
        if now < self.next_at or turns == self.turns:
            return False
        self.turns = turns
        self.interval = min(self.interval * 2, MAX_PROGRESS_INTERVAL)
        self.next_at = now + self.interval
        return True
