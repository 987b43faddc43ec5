"""A later run asked for by a trusted ``@claude`` comment (``task.kind == "followup"``, #11).

It works on the issue's branch as GitHub has it now (or the next round's, once that one's pull request
was merged), resumes the issue's previous Claude session (a fresh one when that cannot be resumed),
answers where it was asked, and pushes to the branch of the pull request; a pull request closed
without merging is not reopened. It runs on a closed issue when it was asked after the closing. The
policy is :mod:`claude_issue_solver.run.followup`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from claude_issue_solver.github.publisher import PullRequest
from claude_issue_solver.github.trust import Approved
from claude_issue_solver.logs import TaskLog
from claude_issue_solver.run import followup, messages
from claude_issue_solver.run.context import RunContext, RunSpec
from claude_issue_solver.run.kinds import Plan, Words
from claude_issue_solver.run.kinds.change import ChangeKind
from claude_issue_solver.run.policy import ProcessExit
from claude_issue_solver.run.prompt import IssueContext, build_followup_prompt, followup_context
from claude_issue_solver.store.outcome import Outcome
from claude_issue_solver.store.queue import Task, TaskQueue, TaskState


class FollowUpKind(ChangeKind):
    name = "followup"

    # --- before the work ------------------------------------------------------------------------

    def runs_on_closed(self, task: Task, issue: dict[str, Any]) -> bool:
        return followup.asked_after(task, issue)

    def begin(self, run: RunContext, task: Task, issue: dict[str, Any], tlog: TaskLog) -> Task | Outcome:
        # A new run (a retry, a lost workspace) starts over: resume again, choose the branch again.
        return run.queue.update(
            task.id, meta={"agent_process": None, "fresh_session": None, "followup_branch": None}
        )

    def started(self, run: RunContext, task: Task, tlog: TaskLog) -> None:
        tlog.write(followup.session_line(run.queue.get(task.id), keeps_dirs=run.backend.keeps_dirs))

    def closed_comment(self, task: Task, phrase: str) -> str | None:
        return messages.followup_closed_comment(task, phrase=phrase)

    # --- the run --------------------------------------------------------------------------------

    def approved_text(self, queue: TaskQueue, task: Task) -> Approved | None:
        """The task's own, else the newest an earlier run of the issue kept (none: no issue text)."""
        own = Approved.from_meta(task.meta.get("approved"))
        if own is not None:
            return own
        for earlier in reversed(followup.earlier_runs(queue, task)):
            found = Approved.from_meta(earlier.meta.get("approved"))
            if found is not None:
                return found
        return None

    def plan(self, run: RunContext, task: Task, context: IssueContext, default_branch: str) -> Plan:
        """The branch and the prompt; resume the previous session unless that failed."""
        found = followup.plan(run.publisher, task)
        resumable = run.backend.keeps_dirs and not task.meta.get("fresh_session")
        session = followup.previous_session(run.queue, task) if resumable else None
        # After a failed resume, the session that failed stays on record (the log names it).
        failed = task.meta.get("resumed_session") if task.meta.get("fresh_session") else None
        wanted = {"followup_branch": found.branch, "resumed_session": failed or session}
        if any(task.meta.get(k) != v for k, v in wanted.items()):
            run.queue.update(task.id, meta=wanted)
            task.meta.update(wanted)
        summary = followup.previous_summary(run.queue, task)
        prompt = build_followup_prompt(
            context,
            followup.requests_of(task),
            branch=found.branch,
            default_branch=default_branch,
            pull_request=found.describe(),
            pr_title=found.pr.title if found.pr is not None else "",
            context="" if session else followup_context(context, summary),
            template_dir=run.config.prompt_template_dir,
        )
        return Plan(found.branch, prompt, tuple(followup.resume_args(session)))

    def restart(self, task: Task, exit_: ProcessExit) -> tuple[str, dict[str, Any]] | None:
        if not followup.could_not_resume(task, exit_):
            return None
        why = (
            f"session {task.meta.get('resumed_session')} could not be resumed; "
            "starting a fresh session with the issue, the previous summary and the request"
        )
        return why, {"fresh_session": True, "agent_process": followup.FRESH_AGENT}

    # --- publishing -----------------------------------------------------------------------------

    def fallback_summary(self, run: RunContext, task: Task) -> str | None:
        return followup.previous_summary(run.queue, task)  # the PR keeps its title and text

    def no_changes_comment(self, task: Task, answer: str | None, figures: messages.RunFigures) -> str:
        return messages.followup_no_changes_comment(task, answer, figures)

    def commit_subject(self, task: Task, title: str, *, new_title: bool, phrase: str) -> str:
        # No new title (the PR keeps the first run's): the commit says what was asked.
        return title if new_title else messages.followup_commit_subject(task, phrase)

    def closed_pr(
        self,
        run: RunContext,
        task: Task,
        spec: RunSpec,
        sha: str,
        figures: messages.RunFigures,
        tlog: TaskLog,
        note: str,
    ) -> Outcome | None:
        """The pull request was closed unmerged: the branch got the commits, no PR is opened or
        reopened (a person closed it)."""
        found = followup.plan(run.publisher, task)
        if not found.pr_closed or found.pr is None:
            return None
        tlog.write(f"pull request #{found.pr.number} is closed: pushed {spec.branch}, opening none")
        run.queue.update(
            task.id, pr_url=found.pr.url, meta={"phase": "published", "pr_number": found.pr.number}
        )
        body = messages.followup_pushed_comment(task, spec.branch, sha, found.pr.url, figures, pr_closed=True)
        run.comment(task, messages.with_note(task, body, note))
        return Outcome(TaskState.COMPLETED, fields={"pr_url": found.pr.url})

    def published_comment(
        self,
        task: Task,
        branch: str,
        sha: str,
        pr: PullRequest,
        figures: messages.RunFigures,
        *,
        red: bool,
        draft: bool,
    ) -> str:
        return messages.followup_pushed_comment(task, branch, sha, pr.url, figures, red=red, draft=draft)

    # --- the texts ------------------------------------------------------------------------------

    def words(self, task: Task, label: str, phrase: str) -> Words:
        retry = (
            f"To ask again, write a new comment that mentions `{phrase}` with the request, or run "
            f"`claude-issue-solver retry {task.id}` on the host to retry this follow-up."
        )
        asked = messages.asked_by(task)
        return Words(
            subject="this follow-up",
            finish=f"the follow-up {asked} asked for",
            working=f"the request of {asked}",
            retry=retry,
        )

    def working_comment(self, task: Task, done: int, *, turns: int | None, agent: messages.Agent) -> str:
        return messages.followup_working_comment(task, min(done, 2), turns=turns, agent=agent)

    def figures(self, run: RunContext, task: Task, figures: messages.RunFigures) -> messages.RunFigures:
        if figures.cost_usd is None:
            return figures
        return replace(figures, issue_total_usd=run.issue_total(task))

    def write_comment(self, run: RunContext, task: Task, body: str) -> None:
        followup.answer(run.publisher, run.queue, task, body)  # where the request was made

    def trigger(self, task: Task) -> str:
        triggers = task.meta.get("triggers") or []
        if not triggers:
            return super().trigger(task)
        more = f" (+{len(triggers) - 1})" if len(triggers) > 1 else ""
        return f"@{triggers[0].get('author', '?')} {triggers[0].get('url', '')}{more}"

    def history_trigger(self, task: Task) -> str:
        return followup.trigger_text(task)
