"""Publishing a change: what an issue's run and a follow-up share (:class:`ChangeKind`).

The agent's changes are committed (never the summary file, never what
:mod:`claude_issue_solver.run.commit_scope` keeps out: what setup and the test runs made), pushed
fast-forward only (on top of a branch that moved meanwhile, never forced), and a pull request is
opened or updated, a draft while the repository's tests are red. Every step repeats harmlessly: a
resumed publish finds the commits pushed and the pull request by its branch. The kinds differ in a few
answers (:meth:`ChangeKind.no_changes_comment`, :meth:`ChangeKind.commit_subject`,
:meth:`ChangeKind.closed_pr`, :meth:`ChangeKind.published_comment`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from claude_issue_solver.backends.base import (
    BackendError,
    CannotRebase,
    PushRejected,
    PushRequest,
    RebaseConflict,
    Rebased,
    Workspace,
)
from claude_issue_solver.github import statuses
from claude_issue_solver.github.client import GitHubError
from claude_issue_solver.github.publisher import PullRequest
from claude_issue_solver.logs import REDACTOR, TaskLog
from claude_issue_solver.run import commit_scope, followup, messages
from claude_issue_solver.run.agent import AgentResult
from claude_issue_solver.run.context import FINAL_COMMENT, RED_WITHOUT_PR, RunContext, RunSpec
from claude_issue_solver.run.kinds import TaskKind
from claude_issue_solver.run.policy import has_changes, publish, take_summary, what_changed
from claude_issue_solver.run.prompt import SummaryError, parse_summary
from claude_issue_solver.store.outcome import Outcome
from claude_issue_solver.store.queue import Task, TaskState


class ChangeKind(TaskKind):
    """A kind whose work is a change to the repository, published as commits on a pull request."""

    # --- what the kinds answer ------------------------------------------------------------------

    def fallback_summary(self, run: RunContext, task: Task) -> str | None:
        """The summary when the agent wrote none (a follow-up keeps its PR's title and text)."""
        return None

    def no_changes_comment(self, task: Task, answer: str | None, figures: messages.RunFigures) -> str:
        raise NotImplementedError

    def commit_subject(self, task: Task, title: str, *, new_title: bool, phrase: str) -> str:
        return title

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
        """After the push: an ending without a pull request (None: open or update one)."""
        return None

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
        raise NotImplementedError

    def resume_published(self, run: RunContext, task: Task, tlog: TaskLog) -> Outcome | None:
        """Resumed after "published" was recorded: the red-tests comment ends a task FAILED again."""
        red = task.meta.get(RED_WITHOUT_PR)
        if isinstance(red, dict) and task.branch:
            figures = run.figures(task, red.get("duration_s"))
            return red_without_pr(run, task, task.branch, task.meta.get("tests") or {}, figures, tlog)
        return None

    # --- publishing (written once) --------------------------------------------------------------

    def publish(
        self,
        run: RunContext,
        task: Task,
        workspace: Workspace,
        spec: RunSpec,
        result: AgentResult | None,
        tlog: TaskLog,
    ) -> Outcome:
        # Resumed in "publishing": an earlier attempt may have pushed and opened the PR before a crash
        # (or a full disk) kept "published" from being recorded. Nothing is left to push then, and the
        # run must still end with its PR, not with "the agent changed nothing".
        again = task.meta.get("phase") == "publishing"
        try:
            taken = take_summary(run.backend, workspace)
            exclude = commit_scope.excluded(task.meta)  # the agent's change only: not what setup made
            changes = what_changed(
                run.backend, workspace, tlog, summary_found=taken is not None, exclude=exclude
            )
            summary = taken if taken is not None else task.meta.get("summary")
            if summary is None:
                summary = self.fallback_summary(run, task)
            # Recorded before anything is pushed: the file is gone now, a crash must not lose it.
            task = run.queue.update(task.id, meta={"phase": "publishing", "summary": summary})
            answer = result.result if result else task.result
            figures = run.figures(task, run.duration(task))
            left_out = messages.left_out_note(changes.left_out)
            if left_out:
                tlog.write(f"not committed: {', '.join(changes.left_out)}")
            if not has_changes(changes) and not (again and _pushed_before(run, task, spec.branch, tlog)):
                tlog.write("the agent changed nothing")
                nothing = self.no_changes_comment(task, answer, figures)
                run.comment(task, messages.with_note(task, nothing, left_out))
                run.cleanup(task, tlog)
                return Outcome(TaskState.COMPLETED)
            too_large = commit_scope.too_large(changes, run.config)
            if too_large and not again:
                return run.fail(task, f"nothing was pushed: {too_large}", tlog, changes.diffstat[-2000:])
            title, description = _summary(task, summary, tlog)
            tests = task.meta.get("tests")
            red = bool(tests) and tests.get("verdict") == "red"
            if red:
                title, description = (
                    messages.red_pr_title(title),
                    messages.red_pr_note(tests) + "\n\n" + description,
                )
            subject = self.commit_subject(task, title, new_title=taken is not None, phrase=run.phrase)
            request = PushRequest(
                branch=spec.branch,
                clone_url=spec.workspace.clone_url,
                # The agent's title goes to GitHub in the commit too: redacted like every other word of it.
                message=REDACTOR(messages.commit_message(subject, task)),
                author=(run.config.git_author_name, run.config.git_author_email),
                credential=spec.workspace.credential(),
                exclude=exclude,
            )
            pushed = publish(
                run.backend,
                workspace,
                request,
                repo=task.repo,
                log=tlog,
                on_rebased=lambda rebased: _record_rebase(run, task.id, rebased),
            )
            _post_status(run, task, spec, pushed.sha, tests, tlog)
            note = "\n\n".join(n for n in (_moved_note(run, task.id, spec.branch, tlog), left_out) if n)
            if red and _red_opens_no_pr(run, task, spec.branch, tlog):
                return red_without_pr(run, task, spec.branch, tests, figures, tlog, note)
            body = messages.pr_body(
                task,
                description,
                figures,
                messages.tests_report(tests, run.agent) if tests else "",
                left_out=changes.left_out,
            )
            runs = followup.history(run.queue, task, figures, run.agent)
            if runs:
                body = f"{body}\n{runs}\n"
            done = self.closed_pr(run, task, spec, pushed.sha, figures, tlog, note)
            if done is not None:
                run.cleanup(task, tlog)
                return done
            try:
                pr = run.publisher.open_or_update_pr(
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
                    task, spec.branch, changes.diffstat, reason, run.label, phrase=run.phrase, agent=run.agent
                )
                run.comment(task, messages.with_note(task, fallback, note))
                run.cleanup(task, tlog)
                return Outcome(TaskState.FAILED, error=f"changes pushed to {spec.branch}, but {reason}")
            tlog.write(f"pull request {'opened' if pr.created else 'updated'}: {pr.url}")
            draft = pr.draft
            if not pr.created and tests and tests.get("verdict") in ("green", "red") and pr.draft != red:
                draft = _draft_follows_tests(run, task, pr, red, tlog)
            done_body = self.published_comment(
                task, spec.branch, pushed.sha, pr, figures, red=red, draft=draft
            )
            done_body = messages.with_note(task, done_body, note)
            # The final comment is recorded with the phase: a daemon that dies before writing it
            # writes it when it resumes, instead of leaving "working…" on the issue for good.
            run.queue.update(
                task.id,
                pr_url=pr.url,
                meta={"phase": "published", "pr_number": pr.number, FINAL_COMMENT: done_body},
            )
            run.comment(task, done_body)
        except RebaseConflict as exc:
            return _conflicted(run, task, workspace, spec, request, exc, tlog)
        except (PushRejected, CannotRebase) as exc:
            reason = f"the push of branch {spec.branch} was rejected: {exc}"
            if isinstance(exc, CannotRebase) or exc.moved:
                # Never forced: whatever a person pushed meanwhile stays; asking again starts from it.
                reason += (
                    " (someone pushed to the branch while Claude worked; nothing of theirs was "
                    "overwritten: ask again to build on the new head)"
                )
            return run.fail(task, reason, tlog)
        except (GitHubError, BackendError) as exc:
            return run.setback(task, exc, tlog, cleanup=False)
        run.cleanup(task, tlog)
        return Outcome(TaskState.COMPLETED, fields={"pr_url": pr.url})


def _summary(task: Task, summary: str | None, tlog: TaskLog) -> tuple[str, str]:
    if summary:
        try:
            return parse_summary(summary)
        except SummaryError as exc:
            tlog.write(f"the summary file is unusable ({exc}); using a default title")
    return messages.default_pr_title(task), task.result or ""


def _post_status(run: RunContext, task: Task, spec: RunSpec, sha: str, tests: Any, tlog: TaskLog) -> None:
    """The tests' verdict as a commit status on the pushed head (best effort: the PR says it too)."""
    if not run.config.test_status or not isinstance(tests, dict):
        return
    url = f"{spec.workspace.clone_url.removesuffix('.git')}/issues/{task.issue_number}"
    try:
        posted = statuses.post(run.client, task.repo, sha, tests, url if url.startswith("http") else None)
    except GitHubError as exc:
        tlog.write(f"could not post the commit status {statuses.CONTEXT} on {sha[:12]}: {exc}")
        return
    if posted:
        tlog.write(f"commit status {statuses.CONTEXT} on {sha[:12]}: {posted[0]} ({posted[1]})")


def _pushed_before(run: RunContext, task: Task, branch: str, tlog: TaskLog) -> bool:
    """Whether the branch has an open PR already: pushed by the attempt a crash cut short."""
    pr = run.publisher.find_open_pr(task.repo, branch)
    if pr is not None:
        tlog.write(f"nothing left to push: {branch} was pushed before the interruption ({pr.url})")
    return pr is not None


def _draft_follows_tests(run: RunContext, task: Task, pr: PullRequest, red: bool, tlog: TaskLog) -> bool:
    """An open PR's draft state follows this run's verdict: green → ready for review, red → draft.
    Whether it is a draft afterwards.

    Best effort: its title and description already say how the tests went, so a GraphQL failure
    (a token without that right, GitHub down) is told in the task log and the task goes on.
    """
    change = "turned into a draft" if red else "marked ready for review"
    why = "the tests are red after this run" if red else "the tests pass now"
    try:
        draft = run.publisher.set_draft(task.repo, pr, red)
    except GitHubError as exc:
        tlog.write(f"pull request #{pr.number} could not be {change} ({why}): {exc}")
        return pr.draft
    tlog.write(f"pull request #{pr.number} {change}: {why}")
    return draft


# --- the tests are red and ON_RED_TESTS=comment ---------------------------------------------------------


def red_without_pr(
    run: RunContext,
    task: Task,
    branch: str,
    tests: dict[str, Any],
    figures: messages.RunFigures,
    tlog: TaskLog,
    note: str = "",
) -> Outcome:
    """ON_RED_TESTS=comment: the branch is pushed, the issue gets the report, no pull request.

    The ending is recorded before the comment (with the figures it shows), so a daemon that dies
    after it ends the resumed task FAILED too, with the same comment (:meth:`ChangeKind.resume_published`).
    """
    reason = (
        f"the tests are still red after {tests.get('fixes', 0)} fix round(s); "
        f"branch {branch} pushed, no pull request (ON_RED_TESTS=comment)"
    )
    tlog.write(reason)
    ending = {"error": reason, "duration_s": figures.duration_s}
    run.queue.update(task.id, meta={"phase": "published", RED_WITHOUT_PR: ending})
    try:
        report = messages.red_tests_comment(task, branch, tests, figures)
        run.comment(task, messages.with_note(task, report, note))
    except GitHubError as exc:  # the branch is pushed: failing is right, running again is not
        tlog.write(f"could not post the test report comment: {exc}")
    run.cleanup(task, tlog)
    return Outcome(TaskState.FAILED, error=reason)


def _red_opens_no_pr(run: RunContext, task: Task, branch: str, tlog: TaskLog) -> bool:
    """ON_RED_TESTS=comment: red work gets no pull request — unless the branch has an open one (a
    follow-up's, a retry's): the push has put the commits there already, so that one is updated
    and made a draft, as ON_RED_TESTS=draft would, rather than left saying nothing of them."""
    if run.config.on_red_tests != "comment":
        return False
    open_pr = run.publisher.find_open_pr(task.repo, branch)
    if open_pr is None:
        return True
    tlog.write(
        f"the tests are red, but pull request #{open_pr.number} is open on {branch} and has the new "
        "commits: updating it as a draft (ON_RED_TESTS=comment opens no new one)"
    )
    return False


# --- a branch that moved on GitHub while the agent worked ---------------------------------------------


def _record_rebase(run: RunContext, task_id: str, rebased: Rebased) -> None:
    """Recorded before the push that follows, so a resumed publish still tells the issue about it."""
    earlier = run.queue.get(task_id).meta.get("branch_moved") or []
    entry = {"onto": rebased.onto, "sha": rebased.sha, "new_commits": rebased.new_commits}
    entry["authors"] = list(rebased.authors)
    run.queue.update(task_id, meta={"branch_moved": [*earlier, entry], "base_sha": rebased.onto})


def _moved_note(run: RunContext, task_id: str, branch: str, tlog: TaskLog) -> str:
    """What the answer says when the commits were put on top of a moved branch ("" when not)."""
    moved = run.queue.get(task_id).meta.get("branch_moved") or []
    if not moved:
        return ""
    count = sum(int(m.get("new_commits") or 0) for m in moved)
    authors = list(dict.fromkeys(a for m in moved for a in m.get("authors") or []))
    by = f" by {', '.join(authors)}" if authors else ""
    tlog.write(
        f"the branch had moved ({count} new commit(s){by}); {run.agent.name}'s commit(s) were put on top"
    )
    return messages.branch_moved_note(branch, count, authors, run.agent)


def _conflicted(
    run: RunContext,
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
    runs = int(run.queue.get(task.id).meta.get("runs") or 1)
    side = f"{spec.branch}-{task.id}" + (f"-{runs}" if runs > 1 else "")
    tlog.write(f"{conflict}; pushing this run's commits to {side} instead")
    try:
        run.backend.commit_and_push(workspace, replace(request, branch=side), tlog)
    except (GitHubError, BackendError) as exc:
        if not isinstance(exc, PushRejected):
            return run.setback(task, exc, tlog, cleanup=False)
        reason = (
            f"the branch {spec.branch} moved and its changes conflict ({conflict}); "
            f"the push of {side} failed: {exc}"
        )
        return run.fail(task, reason, tlog)
    url = f"{spec.workspace.clone_url.removesuffix('.git')}/tree/{side}"
    reason = messages.branch_conflict_reason(spec.branch, conflict.paths, side, run.agent, run.phrase)
    shown = messages.branch_conflict_reason(
        spec.branch, conflict.paths, f"[{side}]({url})", run.agent, run.phrase
    )
    return run.fail(task, reason, tlog, shown=shown)
