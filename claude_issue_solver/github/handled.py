"""What GitHub says was already done for a labelled issue: GitHub, not the state file, is the record.

The state file is one daemon's memory. It can be empty (a new ``STATE_DIR``: moving a host install into
the container, a lost disk) or older than what happened (a backup put back). Either way the labelled
issues it does not remember would run again — a second run, a second comment, a second bill — although
what the earlier run did is on GitHub for all to see. So before a labelling becomes a task, when the
state cannot vouch for the issue, the watcher asks GitHub (:func:`already_done`) whether a run of ours
already *ended* for that labelling:

- **our final comment**, found by its hidden marker (:func:`claude_issue_solver.github.markers.marked_task`),
  written by us, created at or after the labelling. A task's one comment is created "queued" when the
  task is, and edited into its final text at the end: created after the labelling means "for this
  labelling"; a final opening (✅ 💬 ❌ ⏹️ ⚠️, not 🤖 or ⏳) means the run ended. A failure (❌) and a
  cancellation (⏹️) are ends too: their comment asks for the label again to retry, and a fresh daemon
  does not retry on its own (``claude-issue-solver retry`` does);
- or **our pull request** from the issue's branch (``claude/issue-N``), open or merged, created at or
  after the labelling: the run got that far even if its comment is gone (deleted by a person) or was
  never finished.

A run that was queued or working when the earlier daemon went (its comment still 🤖 or ⏳) did not end:
it runs. A label re-applied after the end (unlabel, label: a newer ``labeled`` event) is a new
labelling, which nothing of ours follows yet: it runs. A follow-up trigger written after the fresh
start runs too: what is found here is recorded as a route (the issue, its pull request), which is how
the trigger watcher knows the issue is ours.

**When GitHub is asked** (:func:`vouches`): never on a poll where nothing is about to be queued; for a
labelling about to be queued only when the state has no record of the issue (a new ``STATE_DIR``), or
when GitHub lists more comments on it than the state last saw — the state is behind: every run of ours
adds its comment, so a restored old state file, whose record predates runs it never saw, always shows
fewer. A daemon that watched all along saw every comment and queues a re-applied label with no extra
request. The watcher's per-issue record (``handled_label_at``) is not pruned with the 100-task history,
so an issue whose tasks aged out is still vouched for. The look costs two requests (the issue's comments
since the labelling, the branch's pull requests) once per labelling; what it found is recorded in the
watcher's record (``handled_label_at``, ``handled_on_github``), so it is never asked again for that
labelling. A failed look raises (:class:`~claude_issue_solver.github.client.GitHubError`): the watcher keeps
that to the one issue (looked at again later, the rest of the poll goes on); nothing is queued on a
guess.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from claude_issue_solver.conventions import branch_for
from claude_issue_solver.github.client import GitHubClient
from claude_issue_solver.github.markers import marked_task
from claude_issue_solver.github.publisher import pulls_from
from claude_issue_solver.store.queue import keep_route
from claude_issue_solver.store.state import StateStore

log = logging.getLogger(__name__)

# How a comment of ours opens while its task is not over: queued or working (🤖), waiting out a limit (⏳).
IN_PROGRESS = ("🤖", "⏳")
# What a final comment's opening says about the end.
ENDS = {"❌": "failed", "⏹️": "cancelled", "⚠️": "ended without a pull request"}


@dataclass(frozen=True)
class Handled:
    """A run of ours that ended after the labelling, as GitHub shows it."""

    label_at: str  # the labelling it answered
    by: str  # "comment" or "pull request": what shows it
    at: str  # when: the comment's last edit, or the pull request's creation
    outcome: str  # "completed", "failed", "cancelled", ... or the pull request's state
    url: str
    task: str | None = None  # the task id in our comment's marker
    pr_number: int | None = None  # our pull request from the issue's branch, open or merged

    def book(self) -> dict[str, Any]:
        """What the watcher records for the issue: this labelling is handled, and by what."""
        return {"handled_label_at": self.label_at, "handled_on_github": asdict(self)}


def vouches(book: dict[str, Any] | None, issue: dict[str, Any]) -> bool:
    """Whether the state's record of ``issue`` (the watcher's per-issue ``book``) is known to be current:
    there is one, and it saw as many comments as GitHub lists now (a run of ours always adds one)."""
    if not book:
        return False
    return int(book.get("comments") or 0) == int(issue.get("comments") or 0)


def comment_outcome(body: str | None) -> str | None:
    """How the run a comment of ours reports ended; None while it had not (or when it is not ours)."""
    if marked_task(body) is None:
        return None
    text = (body or "").lstrip()
    if text.startswith(IN_PROGRESS):
        return None
    for opening, outcome in ENDS.items():
        if text.startswith(opening):
            return outcome
    return "completed"


def already_done(
    client: GitHubClient,
    store: StateStore,
    repo: str,
    issue: dict[str, Any],
    book: dict[str, Any] | None,
    label_at: str,
    *,
    own_login: Callable[[str], str | None] = lambda repo: None,
) -> Handled | None:
    """What GitHub shows was done for the labelling at ``label_at``, when the state cannot vouch for the
    issue; None when it can, or when GitHub shows nothing ended since (the labelling should run).

    What is found is remembered as a route (issue and pull request are ours) in the state; the caller
    records :meth:`Handled.book` in its per-issue record.
    """
    if vouches(book, issue):
        return None
    number = int(issue["number"])
    found = find(client, repo, number, label_at, own_login=own_login)
    if found is None:
        log.debug("%s#%s: nothing of ours on GitHub ended since the label (%s)", repo, number, label_at)
        return None
    with store.transaction() as data:
        keep_route(data, repo, number, [found.pr_number] if found.pr_number else [])
    log.info(
        "%s#%s: already handled on GitHub since the label (%s): our %s (%s, %s); not running it again",
        repo,
        number,
        label_at,
        found.by,
        found.outcome,
        found.url,
    )
    return found


def find(
    client: GitHubClient,
    repo: str,
    number: int,
    label_at: str,
    *,
    own_login: Callable[[str], str | None] = lambda repo: None,
) -> Handled | None:
    """Our final comment or our pull request for issue ``number`` since ``label_at`` (two requests)."""
    pull = _our_pull(client, repo, number, label_at)
    own = own_login(repo)
    ended: dict[str, Any] | None = None
    # `since` filters by the last edit: a task's comment edited into its end after the label is listed.
    for comment in client.comments(repo, number, since=label_at):
        if (comment.get("created_at") or "") < label_at or not _ours(comment, own):
            continue
        if comment_outcome(comment.get("body")) is not None:
            ended = comment  # the newest wins
    if ended is not None:
        return Handled(
            label_at=label_at,
            by="comment",
            at=str(ended.get("updated_at") or ended.get("created_at") or ""),
            outcome=comment_outcome(ended.get("body")) or "completed",
            url=str(ended.get("html_url") or ""),
            task=marked_task(ended.get("body")),
            pr_number=int(pull["number"]) if pull else None,
        )
    if pull is not None:
        return Handled(
            label_at=label_at,
            by="pull request",
            at=str(pull.get("created_at") or ""),
            outcome="merged" if pull.get("merged_at") else "open",
            url=str(pull.get("html_url") or ""),
            pr_number=int(pull["number"]),
        )
    return None


def _our_pull(client: GitHubClient, repo: str, number: int, label_at: str) -> dict[str, Any] | None:
    """Our newest pull request from the issue's branch, open or merged, created since the labelling."""
    ours = [
        p
        for p in pulls_from(client, repo, branch_for(number))
        if (p.get("state") == "open" or p.get("merged_at")) and (p.get("created_at") or "") >= label_at
    ]
    return max(ours, key=lambda p: int(p["number"])) if ours else None


def _ours(comment: dict[str, Any], own: str | None) -> bool:
    """Written by us: the daemon's login when known; else (an App's token has none, or ``GET /user``
    failed) a bot, or an author GitHub calls a collaborator, member or owner of the repository — as the
    daemon's token user is. An outsider who copies our marker into a comment does not make an issue look
    handled (a collaborator could simply remove the label)."""
    user = comment.get("user") or {}
    if own:
        return str(user.get("login") or "").lower() == own.lower()
    return user.get("type") == "Bot" or comment.get("author_association") in TRUSTED_AUTHORS


TRUSTED_AUTHORS = ("OWNER", "MEMBER", "COLLABORATOR")
