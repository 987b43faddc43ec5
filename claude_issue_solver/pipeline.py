"""The task pipeline, one for every backend: prepare -> run the agent -> collect -> publish -> clean up.

The pipeline is the daemon's runner. It records each phase on the task *before* acting on it, so that
a daemon that died anywhere can pick the task up again (:meth:`Pipeline.resume`) and every step after
the agent is idempotent: the commit is made only if there is something uncommitted, the push repeats
harmlessly, the pull request is found by its branch, the comment by its marker.

The backend only gives mechanics; what happens with them (waiting, stopping, the summary, what counts
as a change, publishing, removing) is :mod:`claude_issue_solver.run_policy`, called from here.

Phases (``task.meta["phase"]``): ``preparing`` -> [``setup`` -> ``baseline``] -> ``agent`` ->
[``tests`` <-> ``fixing``] -> ``publishing`` -> ``published``; the bracketed ones are the repository's
tests (:mod:`claude_issue_solver.test_gate`), when it has a test command (``setup`` alone when it has
only a setup command).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from claude_issue_solver import commit_scope, followup, messages, operator_rules, repo_instructions, statuses
from claude_issue_solver.agent import (
    AgentResult,
    AgentSettings,
    build_command,
    parse_extra_args,
    parse_result,
)
from claude_issue_solver.agent_access import AgentAccess, add_metered, make_relay
from claude_issue_solver.backends.base import (
    Backend,
    BackendError,
    CannotRebase,
    ProcessSpec,
    PushRejected,
    PushRequest,
    RebaseConflict,
    Rebased,
    Workspace,
    WorkspaceLost,
    WorkspaceSpec,
)
from claude_issue_solver.config import Config
from claude_issue_solver.conventions import branch_for
from claude_issue_solver.github import GitHubClient, GitHubError, Transient
from claude_issue_solver.logs import REDACTOR, TaskLog, task_log_path
from claude_issue_solver.outcome import Outcome, TaskControl
from claude_issue_solver.prompt import (
    IssueComment,
    IssueContext,
    SummaryError,
    build_followup_prompt,
    build_prompt,
    followup_context,
    parse_summary,
)
from claude_issue_solver.publisher import Publisher, PullRequest
from claude_issue_solver.queue import FOLLOWUP, ISSUE, QueueError, Task, TaskQueue, TaskState
from claude_issue_solver.repo_settings import RepoSettingsError, load_plan
from claude_issue_solver.run_limits import RunLimits
from claude_issue_solver.run_policy import (
    ProcessExit,
    has_changes,
    publish,
    reconcile,
    remove_workspace,
    take_summary,
    wait_for_process,
    what_changed,
)
from claude_issue_solver.test_gate import PHASES as TEST_PHASES
from claude_issue_solver.test_gate import Interrupted, TestGate, TestReport, checklist
from claude_issue_solver.trust import Approved, Permissions, approve, iso, latest_labeling, writers_comments

log = logging.getLogger(__name__)

# Progress edits while the agent runs: the first after 30 s, then ever further apart (up to 10 minutes),
# so that a half-hour run costs about six comment edits, not one per turn.
FIRST_PROGRESS_EDIT = 30.0
MAX_PROGRESS_INTERVAL = 600.0
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


class Pipeline:
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
            progress=self._test_progress,
            after_run=self.run_limits.after_run,
            setup_cache=config.setup_cache,
        )

    # --- the daemon's Runner interface ------------------------------------------------------------

    def run(self, task: Task, control: TaskControl) -> Outcome | None:
        tlog = self._log(task)
        tlog.write(f"task {task.id}: {task.ref} ({task.title!r}), attempt {task.attempts}")
        if any(task.meta.get(key) is not None for key in ("phase", RED_WITHOUT_PR, FINAL_COMMENT)):
            # A retried task still holds its last run's ending: a crash before this run records its
            # own phase must not resume as that one (a red-tests ending would fail it again).
            task = self.queue.update(task.id, meta={"phase": None, RED_WITHOUT_PR: None, FINAL_COMMENT: None})
        try:
            issue = self.client.issue(task.repo, task.issue_number)
            if issue.get("state") != "open":
                if not followup.asked_after_closing(task, issue):
                    return self._closed(task, tlog)
                tlog.write(
                    f"the issue is closed ({issue.get('closed_at')}), but this request came after: running it"
                )
            if task.kind == "issue" and self.config.trigger_label.lower() not in _labels(issue):
                tlog.write(f"the {self.config.trigger_label!r} label was removed; nothing to do")
                return Outcome(TaskState.CANCELLED, error="the trigger label was removed")
            if task.kind == FOLLOWUP:
                # A new run (a retry, a lost workspace) starts over: resume again, choose the branch again.
                reset = {"agent_process": None, "fresh_session": None, "followup_branch": None}
                task = self.queue.update(task.id, meta=reset)
            else:
                approved = self._approved(task, issue, tlog)
                if isinstance(approved, Outcome):
                    return approved
                task = approved
            spec = self._spec(task, issue)
            tests = self._test_plan(task, spec, tlog)
            if task.kind == FOLLOWUP:
                tlog.write(followup.session_line(self.queue.get(task.id), keeps_dirs=self.backend.keeps_dirs))
            self._comment(task, self._working(task, 0))
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
                task, str(exc), self._label, phrase=self._phrase, agent=self.agent
            )
            return self._fail(task, str(exc), tlog, comment=shown)
        except (GitHubError, BackendError) as exc:
            return self._setback(task, exc, tlog)
        return self._before_agent(task, workspace, spec, tests, control, tlog)

    def _approved(self, task: Task, issue: dict[str, Any], tlog: TaskLog) -> Task | Outcome:
        """The text this run works on: the one a writer approved (kept with the task by the watcher).

        When the issue reads differently now, the task's comments say so (:data:`APPROVAL_NOTE`). A task
        queued by a version that kept no approved text looks for it in the issue's history; when it
        cannot be told, a writer is asked to apply the label again and the task is cancelled.
        """
        approved = Approved.from_meta(task.meta.get("approved"))
        if approved is None and task.kind != ISSUE:  # queued by hand by an older version: the operator's
            approved = Approved.as_read(issue, iso(self.clock()))
            task = self.queue.update(
                task.id, meta={"approved": approved.to_meta(), "body_hash": approved.hash}
            )
        if approved is None:
            events = self.client.events(task.repo, task.issue_number)
            labeled = latest_labeling(events, self._label)
            approval = (
                approve(
                    self.client,
                    lambda login: self.permissions.writer(task.repo, login)[0],
                    task.repo,
                    issue,
                    labeled,
                    events,
                    everyone=self.config.allow_untrusted_labelers,
                )
                if labeled is not None
                else None
            )
            if approval is None or approval.approved is None:
                why = approval.why if approval is not None else "the label's event cannot be found"
                tlog.write(f"no approved text: {why}; asking for the label to be applied again")
                labeler, at = (labeled or {}).get("actor", "?"), (labeled or {}).get("at", "")
                marker_id = messages.approval_marker(task.issue_number, at or task.id)
                text = messages.relabel_comment(labeler, why, self._label, marker_id)
                self.publisher.upsert_comment(task.repo, task.issue_number, marker_id, text)
                return Outcome(TaskState.CANCELLED, error=f"no approved text: {why}")
            approved = approval.approved
            task = self.queue.update(
                task.id,
                title=approved.title,
                meta={"approved": approved.to_meta(), "body_hash": approved.hash},
            )
        note = (
            messages.approval_note(approved.to_meta(), self._label, self.agent)
            if approved.differs(issue)
            else None
        )
        if note:
            tlog.write(
                f"the issue reads differently from the text approved by {approved.by} at {approved.at}: "
                "working on the approved text"
            )
        if task.meta.get(APPROVAL_NOTE) != note:
            task = self.queue.update(task.id, meta={APPROVAL_NOTE: note})
        return task

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
                self.gate.before_agent(task, workspace, tests, control, tlog, self._deadline(task))
            self.queue.update(task.id, meta={"phase": "agent"})
            if self.backend.start_process(workspace, spec.agent, tlog):
                tlog.write(f"agent started in {workspace.handle}")
            else:
                tlog.write(f"the agent already runs in {workspace.handle} (started before a restart)")
            self._comment(task, self._working(task, 1))
        except Interrupted as exc:
            return self._interrupted(task, exc, tlog)
        except WorkspaceLost as exc:
            self._cleanup(task, tlog)
            return self._lost(task, str(exc), tlog)
        except (GitHubError, BackendError) as exc:
            return self._setback(task, exc, tlog)
        return self._after_start(task, workspace, spec, control, tlog)

    def resume(self, task: Task, control: TaskControl) -> Outcome | None:
        tlog = self._log(task)
        phase = task.meta.get("phase")
        tlog.write(f"daemon restarted: resuming task {task.id} in phase {phase!r}")
        workspace = self.backend.attach(task)
        if phase == "published":
            red = task.meta.get(RED_WITHOUT_PR)
            if isinstance(red, dict) and task.branch:  # the red-tests comment ends a task FAILED
                figures = self._figures(task, red.get("duration_s"))
                return self._red_without_pr(task, task.branch, task.meta.get("tests") or {}, figures, tlog)
            final = task.meta.get(FINAL_COMMENT)
            if isinstance(final, str):
                try:
                    self._comment(task, final)  # found by its marker: edited, never posted twice
                except GitHubError as exc:
                    tlog.write(f"could not write the final comment: {exc}")
            self._cleanup(task, tlog)
            return Outcome(TaskState.COMPLETED)
        if workspace is None or phase in (None, "preparing"):
            self._cleanup(task, tlog)
            return self._lost(task, "the daemon stopped before its workspace was ready", tlog)
        try:
            issue = self.client.issue(task.repo, task.issue_number)
            spec = self._spec(task, issue)
        except GitHubError as exc:
            return self._setback(task, exc, tlog, cleanup=False)
        if phase == "publishing":
            return self._publish(task, workspace, spec, None, tlog)  # the task holds the result
        if phase in TEST_PHASES[:2]:  # setup / baseline: finish them, then start the agent
            return self._before_agent(task, workspace, spec, self._tests(task), control, tlog)
        if phase in TEST_PHASES[2:]:  # tests / fixing: the agent ran; go on with the rounds
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

    # --- after the agent started ------------------------------------------------------------------

    def _after_start(
        self, task: Task, workspace: Workspace, spec: RunSpec, control: TaskControl, tlog: TaskLog
    ) -> Outcome | None:
        deadline = self._deadline(task)
        progress = _ProgressEdits(self.clock())

        def tick() -> None:
            # Between polls while the agent runs: the place for a (throttled) progress edit.
            turns = tlog.progress.turns
            if progress.due(self.clock(), turns):
                try:
                    self._comment(task, self._working(task, 1, turns=turns))
                except GitHubError as exc:
                    tlog.write(f"could not update the progress comment: {exc}")

        try:
            exit_ = wait_for_process(
                self.backend,
                workspace,
                spec.agent.name,
                deadline=deadline,
                control=control,
                clock=self.clock,
                log=tlog,
                tick=tick,
            )
        except WorkspaceLost as exc:
            self._cleanup(task, tlog)
            return self._lost(task, str(exc), tlog)
        except BackendError as exc:
            return self._setback(task, exc, tlog)
        if exit_ is None:
            return None  # detached: the agent runs on, and the next daemon resumes the task
        if followup.could_not_resume(task, exit_):
            return self._start_fresh(task, workspace, control, tlog)
        return self._conclude(task, workspace, spec, exit_, tlog, control)

    def _start_fresh(
        self, task: Task, workspace: Workspace, control: TaskControl, tlog: TaskLog
    ) -> Outcome | None:
        """The previous session could not be resumed: a fresh one, told what the old one knew."""
        tlog.write(
            f"session {task.meta.get('resumed_session')} could not be resumed; "
            "starting a fresh session with the issue, the previous summary and the request"
        )
        task = self.queue.update(task.id, meta={"fresh_session": True, "agent_process": followup.FRESH_AGENT})
        try:
            spec = self._spec(task, self.client.issue(task.repo, task.issue_number))
            self.backend.start_process(workspace, spec.agent, tlog)
        except (GitHubError, BackendError) as exc:
            return self._setback(task, exc, tlog)
        return self._after_start(task, workspace, spec, control, tlog)

    def _conclude(
        self,
        task: Task,
        workspace: Workspace,
        spec: RunSpec,
        exit_: ProcessExit,
        tlog: TaskLog,
        control: TaskControl | None = None,
    ) -> Outcome | None:
        if exit_.cancelled:
            tlog.write("cancelled by an operator")
            self._cleanup(task, tlog)
            self._comment(task, messages.cancelled_comment(task, self._label, phrase=self._phrase))
            return Outcome(TaskState.CANCELLED, error="cancelled by an operator")
        unbooked = self._meter(task, tlog)
        if exit_.timed_out:
            reason = (
                f"it ran out of time: the agent was stopped after {self.config.task_timeout}s (TASK_TIMEOUT)"
            )
            if unbooked:  # a killed CLI reports no cost: the relay's figure goes into the budget instead
                self.run_limits.after_run(task, stdout="", exit_code=None, cost_usd=unbooked)
            return self._fail(task, reason, tlog, exit_.tail)
        result = parse_result(exit_.stdout, exit_code=exit_.exit_code, log_tail=exit_.tail)
        fields = result.to_task_fields()
        if result.cost_usd is None and unbooked:
            fields["cost_usd"] = unbooked  # the CLI said nothing of its spend; the API's answers did
        task = self.queue.update(task.id, **_task_fields(fields))
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
            self._cleanup(task, tlog)
            self._comment(task, end.comment or "")
            return Outcome(TaskState.PENDING, error=end.wait_reason)
        if not result.ok:
            return self._fail(task, end.failure or result.error or "the agent failed", tlog, exit_.tail)
        return self._verify_and_publish(task, workspace, spec, result, control or TaskControl(), tlog)

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
        report = self._tests(task)
        if report is not None and report.plan.test:
            try:
                if not report.rounds and not self._changed(task, workspace):
                    tlog.write("the agent changed nothing: no test rounds")
                    return self._publish(task, workspace, spec, result, tlog)
                report = self.gate.after_agent(
                    task,
                    workspace,
                    report,
                    control,
                    tlog,
                    self._deadline(task),
                    spec.agent.stdin,
                    spec.agent.keep,
                )
            except Interrupted as exc:
                return self._interrupted(task, exc, tlog)
            except WorkspaceLost as exc:
                self._cleanup(task, tlog)
                return self._lost(task, str(exc), tlog)
            except BackendError as exc:
                return self._setback(task, exc, tlog)
            task = self.queue.get(task.id)
            if report.fixes:
                self._meter(task, tlog)  # the fix rounds' model calls too (each round booked its own cost)
                result = None  # the task holds the figures and the answer of all rounds
        return self._publish(task, workspace, spec, result, tlog)

    def _pushed_before(self, task: Task, branch: str, tlog: TaskLog) -> bool:
        """Whether the branch has an open PR already: pushed by the attempt a crash cut short."""
        pr = self.publisher.find_open_pr(task.repo, branch)
        if pr is not None:
            tlog.write(f"nothing left to push: {branch} was pushed before the interruption ({pr.url})")
        return pr is not None

    def _publish(
        self, task: Task, workspace: Workspace, spec: RunSpec, result: AgentResult | None, tlog: TaskLog
    ) -> Outcome:
        # Resumed in "publishing": an earlier attempt may have pushed and opened the PR before a crash
        # (or a full disk) kept "published" from being recorded. Nothing is left to push then, and the
        # run must still end with its PR, not with "the agent changed nothing".
        again = task.meta.get("phase") == "publishing"
        try:
            taken = take_summary(self.backend, workspace)
            exclude = commit_scope.excluded(task.meta)  # the agent's change only: not what setup made
            changes = what_changed(
                self.backend, workspace, tlog, summary_found=taken is not None, exclude=exclude
            )
            summary = taken if taken is not None else task.meta.get("summary")
            if summary is None and task.kind == FOLLOWUP:
                summary = followup.previous_summary(self.queue, task)  # the PR keeps its title and text
            # Recorded before anything is pushed: the file is gone now, a crash must not lose it.
            task = self.queue.update(task.id, meta={"phase": "publishing", "summary": summary})
            answer = result.result if result else task.result
            figures = self._figures(task, self._duration(task))
            left_out = messages.left_out_note(changes.left_out)
            if left_out:
                tlog.write(f"not committed: {', '.join(changes.left_out)}")
            if not has_changes(changes) and not (again and self._pushed_before(task, spec.branch, tlog)):
                tlog.write("the agent changed nothing")
                if task.kind == FOLLOWUP:
                    nothing = messages.followup_no_changes_comment(task, answer, figures)
                else:
                    nothing = messages.no_changes_comment(task, answer, figures)
                self._comment(task, messages.with_note(task, nothing, left_out))
                self._cleanup(task, tlog)
                return Outcome(TaskState.COMPLETED)
            too_large = commit_scope.too_large(changes, self.config)
            if too_large and not again:
                return self._fail(task, f"nothing was pushed: {too_large}", tlog, changes.diffstat[-2000:])
            title, description = self._summary(task, summary, tlog)
            tests = task.meta.get("tests")
            red = bool(tests) and tests.get("verdict") == "red"
            if red:
                title, description = (
                    messages.red_pr_title(title),
                    messages.red_pr_note(tests) + "\n\n" + description,
                )
            request = PushRequest(
                branch=spec.branch,
                clone_url=spec.workspace.clone_url,
                # The agent's title goes to GitHub in the commit too: redacted like every other word of it.
                message=REDACTOR(
                    messages.commit_message(
                        messages.followup_commit_subject(task, self.config.trigger_phrase)
                        if task.kind == FOLLOWUP and taken is None  # no new title: say what was asked
                        else title,
                        task,
                    )
                ),
                author=(self.config.git_author_name, self.config.git_author_email),
                credential=spec.workspace.credential(),
                exclude=exclude,
            )
            pushed = publish(
                self.backend,
                workspace,
                request,
                repo=task.repo,
                log=tlog,
                on_rebased=lambda rebased: self._record_rebase(task.id, rebased),
            )
            self._post_status(task, spec, pushed.sha, tests, tlog)
            note = "\n\n".join(n for n in (self._moved_note(task.id, spec.branch, tlog), left_out) if n)
            if red and self._red_opens_no_pr(task, spec.branch, tlog):
                return self._red_without_pr(task, spec.branch, tests, figures, tlog, note)
            body = messages.pr_body(
                task,
                description,
                figures,
                messages.tests_report(tests, self.agent) if tests else "",
                left_out=changes.left_out,
            )
            runs = followup.history(self.queue, task, figures, self.agent)
            if runs:
                body = f"{body}\n{runs}\n"
            if task.kind == FOLLOWUP:
                done = self._publish_followup(task, spec, pushed.sha, title, body, figures, tlog, note)
                if done is not None:
                    self._cleanup(task, tlog)
                    return done
            try:
                pr = self.publisher.open_or_update_pr(
                    task.repo,
                    branch=spec.branch,
                    base=spec.workspace.default_branch,
                    title=title,
                    body=body,
                    draft=red,
                )
            except GitHubError as exc:
                reason = f"GitHub refused the pull request ({exc})"
                tlog.write(reason)
                fallback = messages.pr_fallback_comment(
                    task,
                    spec.branch,
                    changes.diffstat,
                    reason,
                    self._label,
                    phrase=self._phrase,
                    agent=self.agent,
                )
                self._comment(task, messages.with_note(task, fallback, note))
                self._cleanup(task, tlog)
                return Outcome(TaskState.FAILED, error=f"changes pushed to {spec.branch}, but {reason}")
            tlog.write(f"pull request {'opened' if pr.created else 'updated'}: {pr.url}")
            draft = pr.draft
            if not pr.created and tests and tests.get("verdict") in ("green", "red") and pr.draft != red:
                draft = self._draft_follows_tests(task, pr, red, tlog)
            if task.kind == FOLLOWUP:
                done_body = messages.followup_pushed_comment(
                    task, spec.branch, pushed.sha, pr.url, figures, red=red, draft=draft
                )
            else:
                done_body = messages.pr_opened_comment(
                    task, pr.url, figures, updated=not pr.created, red=red, draft=draft
                )
            done_body = messages.with_note(task, done_body, note)
            # The final comment is recorded with the phase: a daemon that dies before writing it
            # writes it when it resumes, instead of leaving "working…" on the issue for good.
            self.queue.update(
                task.id,
                pr_url=pr.url,
                meta={"phase": "published", "pr_number": pr.number, FINAL_COMMENT: done_body},
            )
            self._comment(task, done_body)
        except RebaseConflict as exc:
            return self._conflicted(task, workspace, spec, request, exc, tlog)
        except (PushRejected, CannotRebase) as exc:
            reason = f"the push of branch {spec.branch} was rejected: {exc}"
            if isinstance(exc, CannotRebase) or exc.moved:
                # Never forced: whatever a person pushed meanwhile stays; asking again starts from it.
                reason += (
                    " (someone pushed to the branch while Claude worked; nothing of theirs was "
                    "overwritten: ask again to build on the new head)"
                )
            return self._fail(task, reason, tlog)
        except (GitHubError, BackendError) as exc:
            return self._setback(task, exc, tlog, cleanup=False)
        self._cleanup(task, tlog)
        return Outcome(TaskState.COMPLETED, fields={"pr_url": pr.url})

    # --- a branch that moved on GitHub while the agent worked ---------------------------------------

    def _record_rebase(self, task_id: str, rebased: Rebased) -> None:
        """Recorded before the push that follows, so a resumed publish still tells the issue about it."""
        earlier = self.queue.get(task_id).meta.get("branch_moved") or []
        entry = {"onto": rebased.onto, "sha": rebased.sha, "new_commits": rebased.new_commits}
        entry["authors"] = list(rebased.authors)
        self.queue.update(task_id, meta={"branch_moved": [*earlier, entry], "base_sha": rebased.onto})

    def _moved_note(self, task_id: str, branch: str, tlog: TaskLog) -> str:
        """What the answer says when the commits were put on top of a moved branch ("" when not)."""
        moved = self.queue.get(task_id).meta.get("branch_moved") or []
        if not moved:
            return ""
        count = sum(int(m.get("new_commits") or 0) for m in moved)
        authors = list(dict.fromkeys(a for m in moved for a in m.get("authors") or []))
        by = f" by {', '.join(authors)}" if authors else ""
        tlog.write(
            f"the branch had moved ({count} new commit(s){by}); {self.agent.name}'s commit(s) were put on top"
        )
        return messages.branch_moved_note(branch, count, authors, self.agent)

    def _conflicted(
        self,
        task: Task,
        workspace: Workspace,
        spec: RunSpec,
        request: PushRequest,
        conflict: RebaseConflict,
        tlog: TaskLog,
    ) -> Outcome:
        """The branch moved and the changes conflict: the person's commits stay as they are, Claude's go
        to a new branch of this task's own, and the task fails saying where they are."""
        # New by its name: the task id, and the run after the first (meta.runs counts every claim, a
        # retry's too); a resumed publish of the same run pushes the same commits there again, harmlessly.
        runs = int(self.queue.get(task.id).meta.get("runs") or 1)
        side = f"{spec.branch}-{task.id}" + (f"-{runs}" if runs > 1 else "")
        tlog.write(f"{conflict}; pushing this run's commits to {side} instead")
        try:
            self.backend.commit_and_push(workspace, replace(request, branch=side), tlog)
        except (GitHubError, BackendError) as exc:
            if not isinstance(exc, PushRejected):
                return self._setback(task, exc, tlog, cleanup=False)
            reason = (
                f"the branch {spec.branch} moved and its changes conflict ({conflict}); "
                f"the push of {side} failed: {exc}"
            )
            return self._fail(task, reason, tlog)
        url = f"{spec.workspace.clone_url.removesuffix('.git')}/tree/{side}"
        phrase = self.config.trigger_phrase
        reason = messages.branch_conflict_reason(spec.branch, conflict.paths, side, self.agent, phrase)
        shown = messages.branch_conflict_reason(
            spec.branch, conflict.paths, f"[{side}]({url})", self.agent, phrase
        )
        return self._fail(task, reason, tlog, shown=shown)

    # --- the repository's tests (test_gate does the steps) ------------------------------------------

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

    @staticmethod
    def _tests(task: Task) -> TestReport | None:
        data = task.meta.get("tests")
        return TestReport.from_dict(data) if isinstance(data, dict) and data.get("plan") else None

    def _working(self, task: Task, done: int, *, turns: int | None = None) -> str:
        """The progress comment: with the tests' steps when the repository has tests (a follow-up's
        too), else the plain checklist of an issue's run or a follow-up's."""
        report = self._tests(task)
        if report is not None and report.plan.test:
            items = checklist(report, agent_done=False, current="agent" if done else None)
            return messages.checklist_comment(task, items, turns=turns, agent=self.agent)
        if task.kind == FOLLOWUP:
            return messages.followup_working_comment(task, min(done, 2), turns=turns, agent=self.agent)
        return messages.working_comment(task, done, turns=turns, agent=self.agent)

    def _test_progress(self, task: Task, report: TestReport, agent_done: bool, current: str | None) -> None:
        task.meta["tests"] = report.to_dict()
        try:
            items = checklist(report, agent_done=agent_done, current=current)
            self._comment(task, messages.checklist_comment(task, items, agent=self.agent))
        except GitHubError as exc:
            log.warning("could not update the progress comment of %s: %s", task.ref, exc)

    def _closed(self, task: Task, tlog: TaskLog) -> Outcome:
        """The issue was closed before the work started: nothing to do (a follow-up's asker is told)."""
        if self.backend.forget_kept(followup.session_key(task.repo, task.issue_number)):
            tlog.write("removed the issue's kept Claude sessions (the issue is closed)")
        tlog.write("the issue was closed before the work started; nothing to do")
        if task.kind == FOLLOWUP:
            try:
                self._comment(task, messages.followup_closed_comment(task, phrase=self._phrase))
            except GitHubError as exc:
                tlog.write(f"could not answer the request: {exc}")
        return Outcome(TaskState.CANCELLED, error="the issue was closed")

    def _interrupted(self, task: Task, exc: Interrupted, tlog: TaskLog) -> Outcome | None:
        if not exc.cancelled:
            return None  # detached: the step runs on, and the next daemon resumes the task
        tlog.write("cancelled by an operator")
        self._cleanup(task, tlog)
        self._comment(task, messages.cancelled_comment(task, self._label, phrase=self._phrase))
        return Outcome(TaskState.CANCELLED, error="cancelled by an operator")

    def _red_without_pr(
        self,
        task: Task,
        branch: str,
        tests: dict[str, Any],
        figures: messages.RunFigures,
        tlog: TaskLog,
        note: str = "",
    ) -> Outcome:
        """ON_RED_TESTS=comment: the branch is pushed, the issue gets the report, no pull request.

        The ending is recorded before the comment (with the figures it shows), so a daemon that dies
        after it ends the resumed task FAILED too, with the same comment (:meth:`resume`).
        """
        reason = (
            f"the tests are still red after {tests.get('fixes', 0)} fix round(s); "
            f"branch {branch} pushed, no pull request (ON_RED_TESTS=comment)"
        )
        tlog.write(reason)
        ending = {"error": reason, "duration_s": figures.duration_s}
        self.queue.update(task.id, meta={"phase": "published", RED_WITHOUT_PR: ending})
        try:
            report = messages.red_tests_comment(task, branch, tests, figures)
            self._comment(task, messages.with_note(task, report, note))
        except GitHubError as exc:  # the branch is pushed: failing is right, running again is not
            tlog.write(f"could not post the test report comment: {exc}")
        self._cleanup(task, tlog)
        return Outcome(TaskState.FAILED, error=reason)

    def _red_opens_no_pr(self, task: Task, branch: str, tlog: TaskLog) -> bool:
        """ON_RED_TESTS=comment: red work gets no pull request — unless the branch has an open one (a
        follow-up's, a retry's): the push has put the commits there already, so that one is updated
        and made a draft, as ON_RED_TESTS=draft would, rather than left saying nothing of them."""
        if self.config.on_red_tests != "comment":
            return False
        open_pr = self.publisher.find_open_pr(task.repo, branch)
        if open_pr is None:
            return True
        tlog.write(
            f"the tests are red, but pull request #{open_pr.number} is open on {branch} and has the new "
            "commits: updating it as a draft (ON_RED_TESTS=comment opens no new one)"
        )
        return False

    def _figures(self, task: Task, duration_s: float | None) -> messages.RunFigures:
        figures = messages.RunFigures.of(task, duration_s, self.agent)
        if task.kind == FOLLOWUP and figures.cost_usd is not None:
            figures = replace(figures, issue_total_usd=self._issue_total(task))
        return figures

    def _draft_follows_tests(self, task: Task, pr: PullRequest, red: bool, tlog: TaskLog) -> bool:
        """An open PR's draft state follows this run's verdict: green → ready for review, red → draft.
        Whether it is a draft afterwards.

        Best effort: its title and description already say how the tests went, so a GraphQL failure
        (a token without that right, GitHub down) is told in the task log and the task goes on.
        """
        change = "turned into a draft" if red else "marked ready for review"
        why = "the tests are red after this run" if red else "the tests pass now"
        try:
            draft = self.publisher.set_draft(task.repo, pr, red)
        except GitHubError as exc:
            tlog.write(f"pull request #{pr.number} could not be {change} ({why}): {exc}")
            return pr.draft
        tlog.write(f"pull request #{pr.number} {change}: {why}")
        return draft

    def _changed(self, task: Task, workspace: Workspace) -> bool:
        return has_changes(
            self.backend.changes(workspace, commit_scope.excluded(self.queue.get(task.id).meta))
        )

    def _post_status(self, task: Task, spec: RunSpec, sha: str, tests: Any, tlog: TaskLog) -> None:
        """The tests' verdict as a commit status on the pushed head (best effort: the PR says it too)."""
        if not self.config.test_status or not isinstance(tests, dict):
            return
        url = f"{spec.workspace.clone_url.removesuffix('.git')}/issues/{task.issue_number}"
        try:
            posted = statuses.post(
                self.client, task.repo, sha, tests, url if url.startswith("http") else None
            )
        except GitHubError as exc:
            tlog.write(f"could not post the commit status {statuses.CONTEXT} on {sha[:12]}: {exc}")
            return
        if posted:
            tlog.write(f"commit status {statuses.CONTEXT} on {sha[:12]}: {posted[0]} ({posted[1]})")

    def _deadline(self, task: Task) -> float:
        return (task.started_at or self.clock()) + self.config.task_timeout

    # --- endings ----------------------------------------------------------------------------------

    def _fail(
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
        self._cleanup(task, tlog)
        try:
            self._comment(
                task,
                comment
                or messages.failed_comment(
                    task, shown or reason, self._label, tail, phrase=self._phrase, agent=self.agent
                ),
            )
        except GitHubError as exc:
            tlog.write(f"could not post the failure comment: {exc}")
        return Outcome(TaskState.FAILED, error=reason)

    def _lost(self, task: Task, reason: str, tlog: TaskLog) -> Outcome:
        """The run is gone (its container vanished, the daemon died early): run again or give up."""
        if task.attempts < self.config.max_attempts:
            tlog.write(f"{reason}; queueing it again (attempt {task.attempts} of {self.config.max_attempts})")
            self.queue.update(task.id, meta={"phase": None})
            return Outcome(TaskState.PENDING, error=reason)
        return self._fail(task, f"{reason}, and it already ran {task.attempts} times", tlog)

    def _setback(self, task: Task, exc: Exception, tlog: TaskLog, *, cleanup: bool = True) -> Outcome:
        """A failure on the way: a passing one (GitHub 5xx, a rate limit) is retried, others fail."""
        passing = isinstance(exc, Transient) or getattr(exc, "retryable", False)
        if passing and task.attempts < self.config.max_attempts:
            tlog.write(f"{exc}; will try again")
            if cleanup:
                self._cleanup(task, tlog)
                self.queue.update(task.id, meta={"phase": None})
            return Outcome(TaskState.PENDING, error=str(exc))
        return self._fail(task, str(exc), tlog)

    # --- helpers ----------------------------------------------------------------------------------

    @property
    def _label(self) -> str:
        return self.config.trigger_label

    @property
    def _phrase(self) -> str:
        return self.config.trigger_phrase

    def _log(self, task: Task) -> TaskLog:
        return TaskLog(task_log_path(self.config.log_dir, task.id), clock=self.clock)

    def _meter(self, task: Task, tlog: TaskLog) -> float | None:
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

    def _cleanup(self, task: Task, tlog: TaskLog) -> None:
        remove_workspace(self.backend, task.id, tlog, sleep=self.sleep)
        self.access.close(task.id)  # the task's relay token dies with it

    def _issue_total(self, task: Task) -> float:
        """What every recorded run of the task's issue cost, this one included (the queue keeps the last
        100 finished tasks, so a long-lived issue's oldest runs may be missing)."""
        return sum(
            t.cost_usd or 0.0
            for t in self.queue.list()
            if t.repo == task.repo and t.issue_number == task.issue_number and t.id != task.id
        ) + (task.cost_usd or 0.0)

    def _duration(self, task: Task) -> float | None:
        return None if task.started_at is None else self.clock() - task.started_at

    def announce(self, task: Task) -> None:
        """Say on the issue that the task is queued (the comment every later state edits)."""
        try:
            self._comment(task, messages.queued_comment(task, agent=self.agent), only_while_pending=True)
        except GitHubError as exc:
            log.warning("could not post the queued comment for %s: %s", task.ref, exc)

    def _comment(self, task: Task, body: str, *, only_while_pending: bool = False) -> None:
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
            if task.kind == FOLLOWUP:
                followup.answer(self.publisher, self.queue, task, body)  # where the request was made
            else:
                task_comment(self.publisher, self.queue, task, body)

    def _publish_followup(
        self,
        task: Task,
        spec: RunSpec,
        sha: str,
        title: str,
        body: str,
        figures: messages.RunFigures,
        tlog: TaskLog,
        note: str = "",
    ) -> Outcome | None:
        """A follow-up whose pull request was closed unmerged: the branch got the commits, no PR is
        opened or reopened (a person closed it). None: carry on as for any run (open or update it)."""
        found = followup.plan(self.publisher, task)
        if not found.pr_closed or found.pr is None:
            return None
        tlog.write(f"pull request #{found.pr.number} is closed: pushed {spec.branch}, opening none")
        self.queue.update(
            task.id, pr_url=found.pr.url, meta={"phase": "published", "pr_number": found.pr.number}
        )
        body = messages.followup_pushed_comment(task, spec.branch, sha, found.pr.url, figures, pr_closed=True)
        self._comment(task, messages.with_note(task, body, note))
        return Outcome(TaskState.COMPLETED, fields={"pr_url": found.pr.url})

    def _spec(self, task: Task, issue: dict[str, Any]) -> RunSpec:
        """What the run needs. The prompt holds the text a writer approved (never the live issue's, which
        anyone who can edit it may have changed since) and the comments of writers written before the
        task started."""
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
        approved = self._approved_text(task)
        context = IssueContext(
            repo=task.repo,
            number=task.issue_number,
            title=approved.title if approved else NOT_SHOWN,
            body=approved.body if approved else NOT_SHOWN,
            labels=tuple(_labels_cased(issue)),
            author=(issue.get("user") or {}).get("login", ""),
            comments=tuple(comments),
            url=issue.get("html_url", ""),
        )
        repo = task.repo
        branch = branch_for(task.issue_number)
        argv = list(self.command)
        if task.kind == FOLLOWUP:
            branch, prompt, argv = self._followup_run(task, context, info["default_branch"])
        else:
            prompt = build_prompt(context, template_dir=self.config.prompt_template_dir)
        if "--resume" not in argv:  # a new session: the repository's AGENTS.md when it has no CLAUDE.md
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
                branch=branch,
                credential=lambda: self.client.git_credential(repo),
            ),
            agent=self.access.agent(
                task.id,
                name=task.meta.get("agent_process") or AGENT,
                argv=argv,
                stdin=prompt.encode(),
                keep=followup.keep_for(task),  # every run keeps the issue's sessions for the next
            ),
        )

    def _approved_text(self, task: Task) -> Approved | None:
        """The approved text of the task's issue: the task's own; for a follow-up, the newest an earlier
        run of the issue kept (none: the prompt shows no issue text)."""
        own = Approved.from_meta(task.meta.get("approved"))
        if own is not None or task.kind != FOLLOWUP:
            return own
        for earlier in reversed(followup.earlier_runs(self.queue, task)):
            found = Approved.from_meta(earlier.meta.get("approved"))
            if found is not None:
                return found
        return None

    def _followup_run(
        self, task: Task, context: IssueContext, default_branch: str
    ) -> tuple[str, str, list[str]]:
        """A follow-up's branch, prompt and argv: resume the previous session unless that failed."""
        found = followup.plan(self.publisher, task)
        resumable = self.backend.keeps_dirs and not task.meta.get("fresh_session")
        session = followup.previous_session(self.queue, task) if resumable else None
        # After a failed resume, the session that failed stays on record (the log names it).
        failed = task.meta.get("resumed_session") if task.meta.get("fresh_session") else None
        wanted = {"followup_branch": found.branch, "resumed_session": failed or session}
        if any(task.meta.get(k) != v for k, v in wanted.items()):
            self.queue.update(task.id, meta=wanted)
            task.meta.update(wanted)
        prompt = build_followup_prompt(
            context,
            followup.requests_of(task),
            branch=found.branch,
            default_branch=default_branch,
            pull_request=found.describe(),
            pr_title=found.pr.title if found.pr is not None else "",
            context="" if session else followup_context(context, followup.previous_summary(self.queue, task)),
            template_dir=self.config.prompt_template_dir,
        )
        return found.branch, prompt, [*self.command, *followup.resume_args(session)]

    def _summary(self, task: Task, summary: str | None, tlog: TaskLog) -> tuple[str, str]:
        if summary:
            try:
                return parse_summary(summary)
            except SummaryError as exc:
                tlog.write(f"the summary file is unusable ({exc}); using a default title")
        return messages.default_pr_title(task), task.result or ""


def task_comment(publisher: Publisher, queue: TaskQueue, task: Task, body: str) -> None:
    """Write the task's one comment (create it, or edit it in place) and remember its id on the task."""
    comment_id = task.meta.get("comment_id")
    new_id = publisher.upsert_comment(task.repo, task.issue_number, task.id, body, comment_id)
    if new_id != comment_id:
        task.meta["comment_id"] = new_id
        queue.update(task.id, meta={"comment_id": new_id})


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


def _labels_cased(issue: dict[str, Any]) -> list[str]:
    return [label["name"] if isinstance(label, dict) else str(label) for label in issue.get("labels", [])]


def _labels(issue: dict[str, Any]) -> list[str]:
    return [name.lower() for name in _labels_cased(issue)]


_TASK_FIELDS = ("result", "cost_usd", "num_turns", "session_id", "duration_ms")


def _task_fields(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: fields.get(k) for k in _TASK_FIELDS}
