"""A review of a pull request (``task.kind == "review"``, #22): one structured review with inline
comments, incremental on new commits, never a duplicate.

``task.issue_number`` is the pull request's number (ours, a person's, a fork's). The workspace is the
pull request's head as GitHub keeps it for every pull request (``refs/pull/N/head``, fetched into the
host's mirror as ``refs/remotes/pulls/N/head``): nothing is pushed and no branch is made on
GitHub; the repository's tests are not run around it (:attr:`ReviewKind.tests`). The agent answers
with structured output (``--json-schema``), checked again by :mod:`claude_issue_solver.run.review`,
and publishing posts ONE review (``event: COMMENT``) with every inline comment
(:mod:`claude_issue_solver.github.reviews`).

Never a duplicate: before a run, a pull request whose head is the one our last review looked at ends
at once ("nothing new"); a finding posted by an earlier review (its hidden marker) is not posted
again; a resumed publish finds the task's review by its marker before posting one.
"""

from __future__ import annotations

import json
from typing import Any

from claude_issue_solver.backends.base import Workspace
from claude_issue_solver.conventions import format_usd
from claude_issue_solver.github import reviews
from claude_issue_solver.github.client import GitHubError
from claude_issue_solver.github.markers import marker
from claude_issue_solver.github.trust import Approved
from claude_issue_solver.logs import TaskLog
from claude_issue_solver.run import review
from claude_issue_solver.run.agent import AgentResult, parse_result
from claude_issue_solver.run.context import FINAL_COMMENT, RunContext, RunSpec
from claude_issue_solver.run.kinds import Plan, TaskKind, Words
from claude_issue_solver.run.messages import Agent
from claude_issue_solver.run.policy import OUTPUT_BOUNDS
from claude_issue_solver.run.prompt import IssueContext
from claude_issue_solver.store.outcome import Outcome
from claude_issue_solver.store.queue import Task, TaskQueue, TaskState

__all__ = ["REVIEW", "ReviewKind", "pull_branch"]

REVIEW = "review"
# The edit tools are taken away: the agent reads and runs, and changes nothing.
READ_ONLY = ("--disallowedTools", "Edit", "Write", "NotebookEdit")


def pull_branch(number: int) -> str:
    """The workspace's branch: the pull request's head as GitHub keeps it (a fork's too)."""
    return f"pull/{number}/head"


class ReviewKind(TaskKind):
    name = REVIEW
    tests = False  # a review runs no test rounds and no fix rounds: it changes nothing

    # --- before the work ------------------------------------------------------------------------

    def begin(self, run: RunContext, task: Task, issue: dict[str, Any], tlog: TaskLog) -> Task | Outcome:
        """The head to review and the last one reviewed; nothing new since: done, no second review."""
        found = reviews.pull(run.client, task.repo, task.issue_number)
        seen = reviews.our_reviews(run.client, task.repo, task.issue_number)
        since = seen.last_head
        if since is not None and since == found.head_sha:
            tlog.write(f"the last review already looked at {found.head_sha[:12]}: nothing new to review")
            text = (
                f"🤖 Nothing new to review: the last review already looked at `{found.head_sha[:12]}`, "
                f"the head of this pull request. Push new commits and ask again.\n\n{marker(task.id)}"
            )
            run.queue.update(
                task.id, meta={"phase": "published", FINAL_COMMENT: text, "review_skipped": True}
            )
            run.comment(task, text)
            return Outcome(TaskState.COMPLETED)
        tlog.write(
            f"reviewing {found.head_label} at {found.head_sha[:12]}"
            + (f", the commits since {since[:12]}" if since else "")
        )
        return run.queue.update(
            task.id,
            meta={"review_head": found.head_sha, "review_since": since, "review_output": None},
        )

    def approved_text(self, queue: TaskQueue, task: Task) -> Approved | None:
        return None  # the pull request's words go into the prompt's untrusted blocks (plan)

    # --- the run --------------------------------------------------------------------------------

    def plan(self, run: RunContext, task: Task, context: IssueContext, default_branch: str) -> Plan:
        found = reviews.pull(run.client, task.repo, task.issue_number)
        diff = reviews.unified_diff(reviews.files(run.client, task.repo, task.issue_number))
        since = task.meta.get("review_since")
        commits = reviews.commits_since(run.client, task.repo, task.issue_number, since) if since else []
        triggers = task.meta.get("triggers") or []
        prompt = review.build_prompt(
            repo=task.repo,
            number=task.issue_number,
            url=found.url,
            title=found.title,
            description=found.body,
            author=found.author,
            head=found.head_sha,
            diff=diff,
            request="\n\n".join(t.get("body") or "" for t in triggers),
            requested_by=", @".join(t.get("author") or "?" for t in triggers),
            since=since,
            commits=commits,
            template=run.config.review_prompt,
        )
        schema = json.dumps(review.SCHEMA, separators=(",", ":"))
        return Plan(pull_branch(task.issue_number), prompt, ("--json-schema", schema, *READ_ONLY))

    # --- publishing -----------------------------------------------------------------------------

    def publish(
        self,
        run: RunContext,
        task: Task,
        workspace: Workspace,
        spec: RunSpec,
        result: AgentResult | None,
        tlog: TaskLog,
    ) -> Outcome:
        output = self._output(run, task, workspace, spec, result)
        try:
            summary, findings = review.check(output)
        except review.ReviewError as exc:
            return run.fail(task, str(exc), tlog)
        repo, number = task.repo, task.issue_number
        head = workspace.base_sha or str(task.meta.get("review_head") or "")
        try:
            seen = reviews.our_reviews(run.client, repo, number)
            posted = seen.by_task.get(task.id)  # a resumed publish: posted before the daemon died
            if posted is None:
                diff = reviews.unified_diff(reviews.files(run.client, repo, number))
                placed = review.place(findings, diff, seen.findings)
                cost = format_usd(task.cost_usd) if task.cost_usd and run.agent.spends_money else None
                body = review.review_body(
                    task.id,
                    summary,
                    placed,
                    head=head,
                    since=task.meta.get("review_since"),
                    cost=cost,
                    agent_name=run.agent.name,
                )
                posted, moved = reviews.post_review(
                    run.client,
                    repo,
                    number,
                    commit_id=head,
                    body=body,
                    comments=review.comments(placed),
                    moved="**GitHub refused these as inline comments:**",
                )
                tlog.write(
                    f"review posted: {len(placed.inline)} inline comment(s)"
                    + (" (moved into the body: GitHub refused them)" if moved else "")
                    + f", {len(placed.in_body)} in the body, {len(placed.repeated)} already raised"
                )
            else:
                tlog.write("the review was posted before a restart: not posting it again")
        except GitHubError as exc:
            return run.setback(task, exc, tlog)
        url = posted.get("html_url") or ""
        text = f"🤖 Reviewed `{head[:12]}`: {url}\n\n{marker(task.id)}"
        run.queue.update(
            task.id,
            meta={"phase": "published", FINAL_COMMENT: text, "review_url": url, "reviewed_head": head},
        )
        run.comment(task, text)
        run.cleanup(task, tlog)
        return Outcome(TaskState.COMPLETED)

    @staticmethod
    def _output(
        run: RunContext, task: Task, workspace: Workspace, spec: RunSpec, result: AgentResult | None
    ) -> Any:
        """The structured output: the run's, else the one recorded, else read again from the agent's
        output in the workspace (a publish resumed before it was recorded)."""
        if result is None and task.meta.get("review_output") is not None:
            return task.meta["review_output"]
        if result is None:
            out = run.backend.output(workspace, spec.agent.name, OUTPUT_BOUNDS)
            result = parse_result(out.stdout)
        output = (result.raw or {}).get("structured_output")
        run.queue.update(task.id, meta={"review_output": output})
        return output

    # --- the texts ------------------------------------------------------------------------------

    def words(self, task: Task, label: str, phrase: str) -> Words:
        retry = (
            f"To ask again, write `{phrase} review` in a comment on this pull request, or run "
            f"`claude-issue-solver retry {task.id}` on the host."
        )
        return Words(
            subject="this review",
            finish="the review of this pull request",
            working="a review of this pull request",
            retry=retry,
        )

    def working_comment(self, task: Task, done: int, *, turns: int | None, agent: Agent) -> str:
        steps = ["checked out the pull request's head", "reviewing the change", "posting the review"]
        lines = [
            f"🤖 {agent.name} is reviewing this pull request" + (f" ({turns} turns so far)" if turns else "")
        ]
        lines += ["", *(f"- [{'x' if i < done else ' '}] {s}" for i, s in enumerate(steps))]
        return "\n".join(lines) + f"\n\n{marker(task.id)}"

    def trigger(self, task: Task) -> str:
        triggers = task.meta.get("triggers") or []
        if not triggers:
            return "review"
        first = triggers[0]
        how = {"label": "review label", "opened": "opened"}.get(first.get("where", ""), "review request")
        return f"{how} by @{first.get('author', '?')} {first.get('url', '')}".rstrip()

    def history_trigger(self, task: Task) -> str:
        return self.trigger(task)
