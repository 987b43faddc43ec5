"""How the watcher takes in one labelled issue: who labelled it (a writer?), the text their label approved,
whether GitHub shows it was already answered, and queueing it -- each issue on its own, so that one
issue's failure never stops a repository's poll (see :class:`claude_issue_solver.github.watcher.Watcher`,
which this is a part of)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from claude_issue_solver.github import handled, markers
from claude_issue_solver.github.client import (
    GitHubError,
    RateLimited,
)
from claude_issue_solver.github.publisher import Publisher
from claude_issue_solver.github.trust import (
    FAILED_PERMISSION_TTL,
    UNKNOWN,
    Approved,
    approve,
    content_hash,
    latest_labeling,
)
from claude_issue_solver.store.queue import ISSUE, Task, TaskState

log = logging.getLogger(__name__)

__all__ = ["ISSUE_RETRY", "IssueIntake", "reason_of"]

ISSUE_RETRY = FAILED_PERMISSION_TTL  # an issue whose look failed is looked at again after this long


@dataclass(frozen=True)
class IssueIntake:
    """The per-issue part of the watcher (a mixin: it uses the watcher's config, client, queue and state)."""

    def _consider_safely(
        self, repo: str, issue: dict[str, Any], watcher_book: dict[str, Any], out: dict[str, dict[str, Any]]
    ) -> None:
        """:meth:`_consider`, with whatever goes wrong contained to that issue: it is looked at again
        after :data:`ISSUE_RETRY` (:meth:`_retry_issues`) and the poll goes on. A rate limit is the
        repository's, not the issue's: the whole poll backs off."""
        key = f"{repo}#{issue.get('number')}"
        try:
            self._consider(repo, issue, watcher_book, out)
        except RateLimited:
            raise
        except Exception as exc:
            reason = reason_of(exc)
            change = out.setdefault(key, {})
            # What was done before the failure stays recorded; the fingerprint goes, so it is looked at again.
            change.update(fingerprint=None, retry_at=self.clock() + ISSUE_RETRY, last_error=reason)
            with self._lock:
                first = f"{key}:error:{reason}" not in self._warned
                self._warned.add(f"{key}:error:{reason}")
            if first:
                log.warning(
                    "%s: %s; the repository's other issues go on, this one is looked at again in %d s",
                    key,
                    reason,
                    ISSUE_RETRY,
                    exc_info=None if isinstance(exc, GitHubError) else exc,
                )

    def _retry_issues(self, repo: str) -> None:
        """Look again at the issues of ``repo`` whose last look failed and whose wait is over."""
        now = self.clock()
        waiting = self.queue.store.snapshot().get("watcher", {}).get("issues", {})
        if not any((entry.get("retry_at") or now + 1) <= now for entry in waiting.values()):
            return  # the usual case: nothing to look at again, and nothing parsed for it
        book: dict[str, Any] = self.queue.store.read().get("watcher", {})
        due = sorted(
            key
            for key, entry in book.get("issues", {}).items()
            if key.rpartition("#")[0].lower() == repo.lower() and (entry.get("retry_at") or now + 1) <= now
        )
        changes: dict[str, dict[str, Any]] = {}
        for key in due:
            try:
                issue = self.client.issue(repo, int(key.rpartition("#")[2]))
            except RateLimited:
                raise
            except GitHubError as exc:
                changes[key] = {"retry_at": now + ISSUE_RETRY, "last_error": exc.reason}
                continue
            self._consider_safely(repo, issue, book, changes)
            changes.setdefault(key, {}).setdefault("retry_at", None)  # nothing to do for it any more
        self._update_issue_book(changes)

    def _consider(
        self, repo: str, issue: dict[str, Any], watcher_book: dict[str, Any], out: dict[str, dict[str, Any]]
    ) -> None:
        """Decide what one listed issue means; bookkeeping changes go to ``out`` (saved per page)."""
        number = int(issue["number"])
        key = f"{repo}#{number}"
        if "pull_request" in issue:
            self.triggers.reviews.consider_pull(repo, issue)  # the review label, REVIEW_ON_OPEN (#22)
            return
        if issue.get("state", "open") != "open":
            return
        if issue.get("locked"):
            self._note_once(key + ":locked", "%s is locked; skipping it", key)
            return
        labels = [
            label["name"] if isinstance(label, dict) else str(label) for label in issue.get("labels", [])
        ]
        if self.label not in (name.lower() for name in labels):
            return
        book = watcher_book.get("issues", {}).get(key, {})
        title, body = issue.get("title") or "", issue.get("body") or ""
        digest = content_hash(title, body)
        # updated_at has one-second resolution: two changes in one second must not look like none.
        fingerprint = content_hash(
            f"{issue.get('updated_at')}|{sorted(labels)}|{issue.get('comments')}", digest
        )
        if book.get("fingerprint") == fingerprint:
            return  # nothing new since we last looked
        meta = {
            "labels": labels,
            "author": (issue.get("user") or {}).get("login", ""),
            "url": issue.get("html_url", ""),
        }
        changes: dict[str, Any] = {
            "updated_at": issue.get("updated_at"),
            "hash": digest,
            "fingerprint": fingerprint,
            "retry_at": None,
            "last_error": None,
        }
        out[key] = changes  # recorded even when a later step fails (see _consider_safely)
        permissions = watcher_book.setdefault("permissions", {})
        live = self.queue.live_for(repo, number)
        if live is not None:
            if live.state is TaskState.PENDING and live.kind == ISSUE and book.get("hash") != digest:
                self._refresh_pending(repo, issue, live, meta, permissions)
        else:
            events = self.client.events(repo, number)
            labeled = latest_labeling(events, self.label)
            if labeled is None:
                self._note_once(
                    key + ":nolabel", "%s carries the label but has no labeled event; skipping", key
                )
            elif labeled["at"] > (book.get("handled_label_at") or ""):
                trusted, why = self._trusted(repo, labeled["actor"], permissions)
                # GitHub is the record: a labelling an earlier daemon already answered is not run again.
                done = self._handled(repo, issue, book, labeled["at"]) if trusted else None
                if done is not None:
                    changes.update(done.book())
                elif trusted:
                    self._queue_approved(repo, issue, labeled, events, meta, changes, permissions, why)
                else:
                    changes["untrusted_label"] = {"actor": labeled["actor"], "at": labeled["at"], "why": why}
                    actor = labeled["actor"]
                    if actor and self.permissions.get(repo, actor, permissions) == UNKNOWN:
                        # Untrusted for now only: looked at again once the failed lookup may be retried.
                        changes.update(fingerprint=None, retry_at=self.clock() + ISSUE_RETRY)
                    self._note_once(
                        f"{key}:untrusted:{labeled['at']}",
                        "%s: ignoring the label applied by %s (%s)",
                        key,
                        labeled["actor"],
                        why,
                    )
        if int(issue.get("comments") or 0) != book.get("comments", 0):
            changes["comments"] = int(issue.get("comments") or 0)
            changes["new_comments"] = self._new_trusted_comments(repo, number, book, permissions)

    def _handled(
        self, repo: str, issue: dict[str, Any], book: dict[str, Any], label_at: str
    ) -> handled.Handled | None:
        return handled.already_done(
            self.client, self.queue.store, repo, issue, book, label_at, own_login=self.triggers.own_login
        )

    def _writer(self, repo: str, permissions: dict[str, Any]) -> Callable[[str], bool]:
        return lambda login: self.permissions.writer(repo, login, permissions)[0]

    def _queue_approved(
        self,
        repo: str,
        issue: dict[str, Any],
        labeled: dict[str, str],
        events: list[dict[str, Any]],
        meta: dict[str, Any],
        changes: dict[str, Any],
        permissions: dict[str, Any],
        why: str,
    ) -> None:
        """A writer's label: queue the text it approved, or ask for the label again when that cannot be
        told (the issue changed since and its edit history does not say how)."""
        number = int(issue["number"])
        key = f"{repo}#{number}"
        approval = approve(
            self.client,
            self._writer(repo, permissions),
            repo,
            issue,
            labeled,
            events,
            everyone=self.config.allow_untrusted_labelers,
        )
        if approval.approved is None:
            marker_id = markers.approval_marker(number, labeled["at"])
            text = markers.relabel_comment(
                labeled["actor"], approval.why, self.config.trigger_label, marker_id
            )
            Publisher(self.client).upsert_comment(repo, number, marker_id, text)  # found again by its marker
            changes["handled_label_at"] = labeled["at"]
            changes["unapproved"] = {"at": labeled["at"], "why": approval.why}
            log.warning("%s: not queued: %s; asked for the label to be applied again", key, approval.why)
            return
        approved = approval.approved
        task = self.queue.submit(
            repo,
            number,
            approved.title,
            meta={
                **meta,
                "labeler": labeled["actor"],
                "approved": approved.to_meta(),
                "body_hash": approved.hash,
            },
        )
        changes["handled_label_at"] = labeled["at"]
        if task is not None:
            edited = " (an older version: the issue was changed since by people without write access)"
            log.info(
                "%s: queued task %s (label by %s, %s)%s",
                key,
                task.id,
                labeled["actor"],
                why,
                edited if approved.differs(issue) else "",
            )
            if self.on_queued is not None:
                self.on_queued(task)

    def _refresh_pending(
        self, repo: str, issue: dict[str, Any], live: Task, meta: dict[str, Any], permissions: dict[str, Any]
    ) -> None:
        """A pending task's issue was edited: a writer's edit is the new approved text; anyone else's is
        never given to the agent (the task keeps the text approved before)."""
        key = f"{repo}#{issue['number']}"
        before = Approved.from_meta(live.meta.get("approved"))
        if before is None:  # queued by an older version: the run finds the approved text itself
            self.queue.update(live.id, meta=meta)
            return
        approval = approve(
            self.client,
            self._writer(repo, permissions),
            repo,
            issue,
            {"actor": before.labeler, "at": before.label_at},
            self.client.events(repo, int(issue["number"])),
            everyone=self.config.allow_untrusted_labelers,
        )
        now = approval.approved
        if now is not None and now.hash != before.hash:
            self.queue.update(
                live.id, title=now.title, meta={**meta, "approved": now.to_meta(), "body_hash": now.hash}
            )
            log.info("%s was edited by %s; refreshed pending task %s", key, now.by, live.id)
            return
        self.queue.update(live.id, meta=meta)
        if (now or before).differs(issue):
            log.info(
                "%s was edited, not by a person with write access: pending task %s keeps the text approved "
                "by %s",
                key,
                live.id,
                before.by,
            )

    def _trusted(self, repo: str, login: str, permissions: dict[str, Any]) -> tuple[bool, str]:
        """Whether the labeler may start work; ``permissions`` is this poll's view of the cache."""
        if self.config.allow_untrusted_labelers:
            return True, "ALLOW_UNTRUSTED_LABELERS=true"
        if not login:
            return False, "the labeler is unknown"
        return self.permissions.writer(repo, login, permissions)

    def cached_permission(self, repo: str, login: str, permissions: dict[str, Any] | None = None) -> str:
        """``login``'s permission on ``repo``, asked of GitHub at most once an hour (cached in the state);
        ``permissions`` is a poll's own view of the cache, when it has one. A lookup that failed is
        ``unknown`` (untrusted) for a few minutes, then asked again; never raises."""
        return self.permissions.get(repo, login, permissions)

    def _new_trusted_comments(
        self, repo: str, number: int, book: dict[str, Any], permissions: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """Comments since the last look, by authors with write access only (kept for follow-up work)."""
        known = list(book.get("new_comments") or [])
        seen = {c["id"] for c in known}
        for comment in self.client.comments(repo, number, since=book.get("comments_since")):
            if comment.get("id") in seen or "claude-issue-solver:" in (comment.get("body") or ""):
                continue  # already kept, or our own progress comments
            author = (comment.get("user") or {}).get("login", "")
            if not self.permissions.writer(repo, author, permissions)[0]:
                continue
            known.append(
                {
                    "id": comment["id"],
                    "author": (comment.get("user") or {}).get("login", ""),
                    "created_at": comment.get("created_at", ""),
                }
            )
        return known[-50:]

    # --- bookkeeping in the state file ----------------------------------------------------------------


def reason_of(exc: Exception) -> str:
    if isinstance(exc, GitHubError):
        return exc.reason
    return f"internal error: {type(exc).__name__}: {exc}"
