"""The first run on a labelled issue (``task.kind == "issue"``): a branch ``claude/issue-N`` and a pull
request that fixes the issue; and the same for an issue queued by hand (``"manual"``, no label needed).

It runs only while the issue is open and labelled, and only on the text a person with write access
approved (kept with the task by the watcher, :mod:`claude_issue_solver.github.trust`); when the issue reads
differently now, every comment of the task says so. Its comment is on the issue; asking again is
applying the label again.
"""

from __future__ import annotations

from typing import Any

from claude_issue_solver.conventions import branch_for
from claude_issue_solver.github.publisher import PullRequest
from claude_issue_solver.github.trust import Approved, approve, iso, latest_labeling
from claude_issue_solver.logs import TaskLog
from claude_issue_solver.run import messages
from claude_issue_solver.run.context import APPROVAL_NOTE, RunContext, labels
from claude_issue_solver.run.kinds import Plan, Words
from claude_issue_solver.run.kinds.change import ChangeKind
from claude_issue_solver.run.prompt import IssueContext, build_prompt
from claude_issue_solver.store.outcome import Outcome
from claude_issue_solver.store.queue import Task, TaskState


class IssueKind(ChangeKind):
    name = "issue"

    def begin(self, run: RunContext, task: Task, issue: dict[str, Any], tlog: TaskLog) -> Task | Outcome:
        if run.label.lower() not in labels(issue):
            tlog.write(f"the {run.label!r} label was removed; nothing to do")
            return Outcome(TaskState.CANCELLED, error="the trigger label was removed")
        return approved(run, task, issue, tlog)

    def plan(self, run: RunContext, task: Task, context: IssueContext, default_branch: str) -> Plan:
        prompt = build_prompt(context, template_dir=run.config.prompt_template_dir)
        return Plan(branch_for(task.issue_number), prompt)

    def words(self, task: Task, label: str, phrase: str) -> Words:
        retry = (
            f"To try again, remove and re-apply the `{label}` label, or run "
            f"`claude-issue-solver retry {task.id}` on the host."
        )
        return Words(subject="this issue", finish="this issue", working="this issue", retry=retry)

    def working_comment(self, task: Task, done: int, *, turns: int | None, agent: messages.Agent) -> str:
        return messages.working_comment(task, done, turns=turns, agent=agent)

    def no_changes_comment(self, task: Task, answer: str | None, figures: messages.RunFigures) -> str:
        return messages.no_changes_comment(task, answer, figures)

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
        return messages.pr_opened_comment(task, pr.url, figures, updated=not pr.created, red=red, draft=draft)


class ManualKind(IssueKind):
    """An issue queued by hand (``claude-issue-solver submit``): the operator approved its text as it read
    then, and no label is needed; otherwise an issue's run."""

    name = "manual"

    def begin(self, run: RunContext, task: Task, issue: dict[str, Any], tlog: TaskLog) -> Task | Outcome:
        if Approved.from_meta(task.meta.get("approved")) is None:  # queued by an older version: as it reads
            found = Approved.as_read(issue, iso(run.clock()))
            task = run.queue.update(task.id, meta={"approved": found.to_meta(), "body_hash": found.hash})
        return approved(run, task, issue, tlog)


def approved(run: RunContext, task: Task, issue: dict[str, Any], tlog: TaskLog) -> Task | Outcome:
    """The text this run works on: the one a writer approved (kept with the task by the watcher).

    When the issue reads differently now, the task's comments say so (:data:`APPROVAL_NOTE`). A task
    queued by a version that kept no approved text looks for it in the issue's history; when it
    cannot be told, a writer is asked to apply the label again and the task is cancelled.
    """
    found = Approved.from_meta(task.meta.get("approved"))
    if found is None:
        events = run.client.events(task.repo, task.issue_number)
        labeled = latest_labeling(events, run.label)
        approval = (
            approve(
                run.client,
                lambda login: run.permissions.writer(task.repo, login)[0],
                task.repo,
                issue,
                labeled,
                events,
                everyone=run.config.allow_untrusted_labelers,
            )
            if labeled is not None
            else None
        )
        if approval is None or approval.approved is None:
            why = approval.why if approval is not None else "the label's event cannot be found"
            tlog.write(f"no approved text: {why}; asking for the label to be applied again")
            labeler, at = (labeled or {}).get("actor", "?"), (labeled or {}).get("at", "")
            marker_id = messages.approval_marker(task.issue_number, at or task.id)
            text = messages.relabel_comment(labeler, why, run.label, marker_id)
            run.publisher.upsert_comment(task.repo, task.issue_number, marker_id, text)
            return Outcome(TaskState.CANCELLED, error=f"no approved text: {why}")
        found = approval.approved
        task = run.queue.update(
            task.id,
            title=found.title,
            meta={"approved": found.to_meta(), "body_hash": found.hash},
        )
    note = messages.approval_note(found.to_meta(), run.label, run.agent) if found.differs(issue) else None
    if note:
        tlog.write(
            f"the issue reads differently from the text approved by {found.by} at {found.at}: "
            "working on the approved text"
        )
    if task.meta.get(APPROVAL_NOTE) != note:
        task = run.queue.update(task.id, meta={APPROVAL_NOTE: note})
    return task
