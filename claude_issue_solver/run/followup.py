"""The follow-up run (#11): the policy of the ``followup`` kind
(:mod:`claude_issue_solver.run.kinds.followup`), and the Claude sessions every run of an issue keeps.

- **Which branch**: the issue's branch ``claude/issue-N`` as it is on GitHub now (a human's commits
  kept; the push is fast-forward only). Once that branch's pull request was merged, the next follow-up
  works on ``claude/issue-N-2`` (then ``-3``) from the default branch and opens a new pull request:
  a merged branch is done, and one branch never gets a second pull request. A pull request closed
  without merging is not reopened: the branch gets the commits and the answer says so.
- **The same session**: every run of an issue keeps its Claude Code configuration directory
  (``KeptDir``, ``CLAUDE_CONFIG_DIR``: Docker mounts it, Daytona carries it in and out of the sandbox;
  the working directory path is the same each run; the next run gets back the session transcripts
  only, never the settings, hooks or instructions a run left there: :data:`SESSION_FILES`), and a
  follow-up passes ``--resume <the previous run's session id>``. When the CLI cannot resume ("No
  conversation found", or no result at all), a fresh session is started in the same workspace with the
  issue, the previous summary and the request, and the task log says so.
- **The answer**: one comment where the (first) trigger was, edited in place: on the issue, on the
  pull request, or a reply in the review comment's thread.
- **A closed issue**: a request written after the issue was closed runs all the same: the person
  asked knowing it was closed, and merging our pull request ("Fixes #N") is what closes it, so a
  request on the merged PR is the usual way to ask for more (the next round's branch and PR). A
  request the issue was closed after (while it waited) is not run; the answer says how to ask again.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from claude_issue_solver.backends.base import KeptDir
from claude_issue_solver.conventions import branch_for
from claude_issue_solver.github.client import GitHubError
from claude_issue_solver.github.publisher import Publisher, PullState
from claude_issue_solver.github.trust import github_time
from claude_issue_solver.run import messages
from claude_issue_solver.run.kinds import kind_of
from claude_issue_solver.run.policy import ProcessExit
from claude_issue_solver.run.prompt import FollowUpRequest
from claude_issue_solver.store.queue import FINISHED, Task, TaskQueue, TaskState

SESSION_ENV = "CLAUDE_CONFIG_DIR"
FRESH_AGENT = "agent-fresh"  # the process of a fresh session after a resume failed (same workspace)
NO_CONVERSATION = "No conversation found"
# What of the kept configuration directory the next run gets back: the session transcripts, which is
# all `--resume <id>` reads (checked with the real CLI). Never settings.json (hooks), CLAUDE.md, agents/,
# commands/, plugins/, projects/*/memory/ or links an earlier (possibly injected) run left there.
SESSION_FILES = ("projects/*/*.jsonl",)
_READABLE = re.compile(r"[^a-z0-9]+")
_KEY_HASH = 16  # hex digits of sha256 in a key
# The keys of versions before the hash: "<owner>-<name>-<n>", ambiguous (acme-corp/widgets#5 and
# acme/corp-widgets#5 shared one). Never used again; removed at start-up (forget_closed).
_LEGACY_KEY = re.compile(r"^[a-z0-9][a-z0-9_.-]*-[0-9]{1,9}$")


def session_key(repo: str, number: int) -> str:
    """The kept directory of an issue's Claude sessions (the same for every run of the issue).

    A readable part for operators and a hash of the exact repository (its full name, lower-cased as
    GitHub compares them) and issue: ``acme-corp/widgets#5`` and ``acme/corp-widgets#5`` read alike
    but never share a directory. A renamed repository starts with no sessions.
    """
    name = repo.lower()
    digest = hashlib.sha256(f"{name}#{number}".encode()).hexdigest()[:_KEY_HASH]
    readable = _READABLE.sub("-", name).strip("-")[:60].strip("-") or "repo"
    return f"{readable}-{number}-{digest}"


def is_legacy_key(key: str) -> bool:
    """A kept directory named the way versions before the hash named it."""
    return bool(_LEGACY_KEY.match(key))


def keep_for(task: Task) -> KeptDir:
    return KeptDir(session_key(task.repo, task.issue_number), SESSION_ENV, only=SESSION_FILES)


def earlier_runs(queue: TaskQueue, task: Task) -> list[Task]:
    """The issue's finished runs before this one, oldest first."""
    return [
        t
        for t in queue.list(FINISHED)
        if t.repo.lower() == task.repo.lower() and t.issue_number == task.issue_number and t.seq < task.seq
    ]


def previous_session(queue: TaskQueue, task: Task) -> str | None:
    ids = [t.session_id for t in earlier_runs(queue, task) if t.session_id]
    return ids[-1] if ids else None


def previous_summary(queue: TaskQueue, task: Task) -> str | None:
    summaries = [t.meta.get("summary") for t in earlier_runs(queue, task) if t.meta.get("summary")]
    return summaries[-1] if summaries else None


def requests_of(task: Task) -> tuple[FollowUpRequest, ...]:
    return tuple(
        FollowUpRequest(
            author=t.get("author", ""),
            body=t.get("body", ""),
            where=t.get("where", "issue"),
            url=t.get("url", ""),
            path=t.get("path", ""),
            line=t.get("line"),
            diff_hunk=t.get("diff_hunk", ""),
        )
        for t in task.meta.get("triggers", [])
    )


@dataclass(frozen=True)
class Plan:
    branch: str
    pr: PullState | None  # the newest pull request from that branch, any state

    @property
    def pr_closed(self) -> bool:
        return self.pr is not None and self.pr.state == "closed" and not self.pr.merged

    def describe(self) -> str:
        if self.pr is None:
            return "There is no pull request for this branch yet; one is opened for you afterwards."
        if self.pr_closed:
            return (
                f"Its pull request #{self.pr.number} ({self.pr.url}) was closed without merging; the new "
                "commits go to the branch all the same."
            )
        return f"Its pull request is #{self.pr.number} ({self.pr.url}), {self.pr.state}."


def plan(publisher: Publisher, task: Task) -> Plan:
    """The branch this follow-up works on (see the module docstring), kept once chosen."""
    chosen = task.meta.get("followup_branch")
    if chosen:
        return Plan(chosen, publisher.find_pr(task.repo, chosen))
    base = branch_for(task.issue_number)
    branch, round_ = base, 1
    while True:
        pr = publisher.find_pr(task.repo, branch)
        if pr is None or not pr.merged:
            return Plan(branch, pr)
        round_ += 1
        branch = f"{base}-{round_}"


def session_line(task: Task, *, keeps_dirs: bool = True) -> str:
    """What the task log says about the session: resumed (and which), or fresh (and why)."""
    triggers = ", ".join(
        f"@{t.get('author', '?')} ({t.get('url', '')})" for t in task.meta.get("triggers", [])
    )
    branch = task.meta.get("followup_branch")
    if task.meta.get("resumed_session") and not task.meta.get("fresh_session"):
        session = f"resuming session {task.meta['resumed_session']}"
    elif task.meta.get("fresh_session"):
        session = f"a fresh session (session {task.meta.get('resumed_session')} could not be resumed)"
    elif not keeps_dirs:
        session = "a fresh session (this backend keeps no Claude sessions between runs)"
    else:
        session = "a fresh session (no earlier session of this issue is known)"
    return f"follow-up for {triggers or 'a retry'} on {branch}: {session}"


def forget_closed(backend: Any, client: Any, queue: TaskQueue, live: list[Task]) -> list[str]:
    """Remove the kept sessions of closed issues (at start-up: one request per issue with sessions).

    A run that finds its issue closed removes them too; this catches issues closed with no run after.
    Directories under an older version's key (:func:`is_legacy_key`) are removed whatever their issue's
    state: no run finds them any more, and they may hold what an earlier run planted.
    """
    busy = {session_key(t.repo, t.issue_number) for t in live}
    # A container started by the older version may still have its directory mounted: left for now.
    busy |= {f"{t.repo.replace('/', '-').lower()}-{t.issue_number}" for t in live}
    issues = {session_key(t.repo, t.issue_number): (t.repo, t.issue_number) for t in queue.list()}
    removed = []
    for key in sorted(backend.kept_keys() - busy):
        if is_legacy_key(key):
            if backend.forget_kept(key):
                removed.append(f"{key} (a key of an older version: no run reads it)")
            continue
        if key not in issues:
            continue  # no task of ours names it any more: keep it rather than guess
        repo, number = issues[key]
        try:
            state = client.issue(repo, number).get("state")
        except GitHubError:
            continue  # GitHub is not answering: the next start-up looks again
        if state != "open" and backend.forget_kept(key):
            removed.append(f"{repo}#{number} (the issue is closed)")
    return removed


def asked_after_closing(task: Task, issue: dict[str, Any]) -> bool:
    """Whether the task runs on its closed issue: for a follow-up, whether its newest request was
    written after the issue was closed (see :func:`asked_after`); never for an issue's run."""
    return kind_of(task).runs_on_closed(task, issue)


def asked_after(task: Task, issue: dict[str, Any]) -> bool:
    """Whether the newest request of a follow-up was written after its (closed) issue was closed.

    Both times are GitHub's (one-second resolution): a request in the same second as the closing
    (GitHub's "Close with comment") is not after it.
    """
    closed = github_time(issue.get("closed_at"))
    asked = [github_time(t.get("created_at")) for t in task.meta.get("triggers", [])]
    newest = max((a for a in asked if a is not None), default=None)
    return closed is not None and newest is not None and newest > closed


def resume_args(session_id: str | None) -> list[str]:
    return ["--resume", session_id] if session_id else []


def could_not_resume(task: Task, exit_: ProcessExit) -> bool:
    """A follow-up that asked to resume and got no conversation (the CLI's own words, or no result)."""
    if not task.meta.get("resumed_session") or task.meta.get("fresh_session"):
        return False
    if exit_.cancelled or exit_.timed_out or exit_.exit_code == 0:
        return False
    output = f"{exit_.stdout}\n{exit_.stderr}"
    return NO_CONVERSATION in output or '"type":"result"' not in output.replace(" ", "")


def answer(publisher: Publisher, queue: TaskQueue, task: Task, body: str) -> None:
    """The follow-up's one answer, where its first trigger was; edited in place on every later state."""
    triggers = task.meta.get("triggers") or [{}]
    first: dict[str, Any] = triggers[0]
    known = task.meta.get("answer_id")
    if first.get("where") == "review_comment":
        new_id = publisher.upsert_review_reply(
            task.repo, int(first["pr_number"]), int(first["thread"]), task.id, body, known
        )
    else:
        on_pr = first.get("where") in ("pr", "review")  # a review's body has no thread: the PR's conversation
        number = int(first["pr_number"]) if on_pr else task.issue_number
        new_id = publisher.upsert_comment(task.repo, number, task.id, body, known)
    if new_id != known:
        task.meta["answer_id"] = new_id
        queue.update(task.id, meta={"answer_id": new_id})


def trigger_text(task: Task) -> str:
    """A follow-up's trigger in a pull request's run history: who asked, and where."""
    where = {"issue": "the issue", "pr": "the PR", "review": "a review", "review_comment": "a review line"}
    parts = [
        f"@{t.get('author', '?')} on [{where.get(t.get('where', ''), 'GitHub')}]({t.get('url', '')})"
        for t in task.meta.get("triggers", [])
    ]
    return ", ".join(parts) or "follow-up"


def history(queue: TaskQueue, task: Task, now: messages.RunFigures, agent: messages.Agent) -> str:
    """The run history for the PR description: the issue's completed runs, then this one. Empty while
    the issue had a single run (the PR's own figures say it all)."""
    earlier = [t for t in earlier_runs(queue, task) if t.state is TaskState.COMPLETED]
    if not earlier:
        return ""
    rows = [
        messages.RunRow(
            kind_of(t).history_trigger(t),
            messages.RunFigures.of(
                t,
                (t.finished_at - t.started_at) if t.finished_at and t.started_at else None,
                agent,
            ),
            t.id,
        )
        for t in earlier
    ]
    rows.append(messages.RunRow(kind_of(task).history_trigger(task), now, task.id))
    return messages.run_history(rows)
