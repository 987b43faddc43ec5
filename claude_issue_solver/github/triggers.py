"""Follow-up triggers: a trusted ``@claude`` comment on an issue we worked on, its pull request or a
line of that pull request becomes a follow-up task on the same issue.

Cheap: two conditional requests per repository per poll, the repository-wide listings of conversation
comments (issues and pull requests alike) and of review comments, each with ``since`` (the newest
``updated_at`` already read) and the last answer's ``ETag``. While nothing was written GitHub answers
``304``, which does not count against the rate limit; nothing is asked per issue or per pull request.
Review bodies are listed only per pull request: those of a pull request of ours are read when the
watcher's own listing (every issue and pull request updated since its last look) shows it moved
(:meth:`TriggerWatcher.note_pulls`), so an idle repository costs three conditional requests in all.

Safe: only comments written after the repository was first watched count, each at most once (its id
is recorded as seen in the same transaction that records the trigger, before anything is done about
it), so a restart or a crash never triggers twice; a comment whose ``updated_at`` is after its
``created_at`` was edited and is never a trigger, however long ago its id left the seen list. The
daemon's own comments (its login, or the hidden task marker every comment of ours carries) never
trigger. The commenter needs write,
maintain or admin permission (the watcher's cached check) or a place in ``TRUSTED_USERS``.

A recorded trigger waits in ``state["followups"]["pending"]`` until :meth:`TaskQueue.take_triggers`
turns it into the issue's follow-up task: at once when the issue has no live task, into the pending
follow-up when there is one, after the running task ended otherwise.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from typing import Any

from claude_issue_solver.config import Config
from claude_issue_solver.github import review_triggers
from claude_issue_solver.github.client import GitHubClient, GitHubError
from claude_issue_solver.github.markers import MARKER_PREFIX, is_test_request
from claude_issue_solver.store.queue import Task, TaskQueue

log = logging.getLogger(__name__)

SEEN_LIMIT = 2000  # comment ids remembered per repository: far more than arrive between two polls
TEST_KIND = "test"  # the kind of task `@claude test` queues (run/kinds/testrun.py)
LISTINGS = {"issues": "/issues/comments", "pulls": "/pulls/comments"}


def mentions(body: str | None, phrase: str) -> bool:
    """Whether ``body`` names ``phrase`` as a word (case-insensitive): "@claude," yes, "@claudette" no."""
    pattern = rf"(?<![\w@./-]){re.escape(phrase)}(?![\w-])"
    return re.search(pattern, body or "", re.IGNORECASE) is not None


def edited(comment: dict[str, Any]) -> bool:
    """Whether the comment was changed after it was written: an edit is never a new request, whatever
    the seen list (which forgets the oldest ids) still holds."""
    created, updated = comment.get("created_at") or "", comment.get("updated_at") or ""
    return bool(created) and updated > created


def _number_at_end(url: str | None) -> int | None:
    tail = (url or "").rstrip("/").rsplit("/", 1)[-1]
    return int(tail) if tail.isdigit() else None


class TriggerWatcher:
    """Finds follow-up triggers in one repository per call; the :class:`Watcher` calls it each poll."""

    def __init__(
        self,
        config: Config,
        client: GitHubClient,
        queue: TaskQueue,
        *,
        permission: Callable[[str, str], str],
        on_queued: Callable[[Task, list[dict[str, Any]]], None] | None = None,
    ) -> None:
        self.config = config
        self.client = client
        self.queue = queue
        self.permission = permission  # (repo, login) -> admin | maintain | write | ... (cached)
        self.on_queued = on_queued
        self.phrase = config.trigger_phrase
        self._own_login: str | None = None
        self._own_login_known = False
        self._noted: set[str] = set()
        self._lock = threading.Lock()
        # "@claude review" on any pull request, the review label, REVIEW_ON_OPEN (#22)
        self.reviews = review_triggers.ReviewTriggers(config, client, queue, trusted=self._trusted)

    def poll(self, repo: str) -> None:
        """Read both listings (conditionally), record new triggers, hand waiting ones to the queue."""
        for kind in LISTINGS:
            self._read_listing(repo, kind)
        self._read_reviews(repo)
        self.deliver(repo)

    def deliver(self, repo: str) -> None:
        """Turn waiting triggers into follow-up tasks where the issue allows it (no GitHub request)."""
        # The state as last read (parsed again only when it changed): every poll asks, few have any.
        pending = self.queue.store.snapshot().get("followups", {}).get("pending", {})
        for key in sorted(pending):
            owner_repo, _, number = key.rpartition("#")
            if owner_repo.lower() != repo.lower():
                continue
            title = self._title(repo, int(number))
            task, added = self.queue.take_triggers(owner_repo, int(number), title)
            if task is None or not added:
                continue
            who = ", ".join(f"@{t['author']}" for t in added)
            log.info("%s: follow-up task %s for %s (%d trigger(s))", key, task.id, who, len(added))
            if self.on_queued is not None:
                self.on_queued(task, added)
        review_triggers.deliver(self.queue, repo, self.reviews.on_queued)

    # --- one listing ----------------------------------------------------------------------------------

    def _read_listing(self, repo: str, kind: str) -> None:
        book = self.queue.store.read().get("followups", {}).get("repos", {}).get(repo, {})
        path = f"/repos/{repo}{LISTINGS[kind]}"
        if kind not in book.get("since", {}):
            # The first look ever: what is there already is history, not a request to us.
            first = self.client.request(
                repo, "GET", path, params={"sort": "updated", "direction": "desc", "per_page": 100}
            )
            comments = first.data or []
            newest = max((c.get("updated_at") or "" for c in comments), default="")
            self._save(repo, kind, since=newest, etag=None, seen=[f"{kind}:{c['id']}" for c in comments])
            # Then the conditional listing at once, so that the very next poll already gets its 304.
            book = self.queue.store.read()["followups"]["repos"][repo]
        since = book["since"][kind]
        params: dict[str, Any] = {"sort": "updated", "direction": "asc", "per_page": 100}
        if since:
            params["since"] = since
        etag = book.get("etags", {}).get(kind)
        first = self.client.request(
            repo, "GET", path, params=params, headers={"If-None-Match": etag} if etag else None
        )
        if first.status == 304:
            return
        seen = set(book.get("seen", []))
        baseline = book.get("baseline", {}).get(kind, "")
        newest = since
        new_seen: list[str] = []
        triggers: list[tuple[str, dict[str, Any]]] = []
        tests: list[tuple[int, dict[str, Any]]] = []  # `@claude test` on a pull request: (number, meta)
        routes = self._routes(repo)
        response = first
        while response is not None:
            for comment in response.data or []:
                newest = max(newest, comment.get("updated_at") or "")
                key = f"{kind}:{comment['id']}"
                if key in seen or (comment.get("created_at") or "") < baseline or edited(comment):
                    continue  # an edit (of a comment read already, or not), or a comment older than the watch
                seen.add(key)
                new_seen.append(key)
                test = self._test_request(repo, kind, comment)
                if test is not None:
                    tests.append(test)
                    continue
                found = self._trigger(repo, kind, comment, routes)
                if found is not None:
                    triggers.append(found)
            response = self.client.next_page(repo, response)
        # Recorded before anything is done about them: seen and waiting in one transaction.
        queued = self._save(
            repo,
            kind,
            since=newest,
            etag=first.headers.get("etag"),
            seen=new_seen,
            triggers=triggers,
            tests=tests,
        )
        for task in queued:
            log.info("%s: test run %s asked for by @%s", task.ref, task.id, task.meta.get("requester"))
            if self.on_queued is not None:
                self.on_queued(task, [])
        for _, trigger in triggers:
            self._react(repo, trigger)

    def note_pulls(self, data: dict[str, Any], repo: str, pulls: dict[int, str]) -> None:
        """Inside the watcher's transaction: which of our open pull requests its listing saw move.

        Review bodies have no repository-wide listing, but a review moves its pull request's
        ``updated_at``, and the watcher's listing of every issue and pull request updated since its last
        look already carries that. Recorded here, in the transaction that moves the watcher's ETag on, so
        that a crash before the reviews were read cannot hide them behind the next ``304``.
        """
        ours = self._routes_in(data, repo)["pulls"]
        entry = data.setdefault("followups", {}).setdefault("repos", {}).setdefault(repo, {})
        book = entry.setdefault("pulls", {})
        looked = book.setdefault("looked", {})
        changed = book.setdefault("changed", {})
        for number, updated_at in pulls.items():
            if number in ours and looked.get(str(number)) != updated_at:
                changed[str(number)] = updated_at

    def _read_reviews(self, repo: str) -> None:
        """The reviews of each pull request of ours that :meth:`note_pulls` saw move (none while idle)."""
        entry = self.queue.store.read().get("followups", {}).get("repos", {}).get(repo, {})
        changed = {int(k): v for k, v in entry.get("pulls", {}).get("changed", {}).items()}
        if not changed:
            return
        routes = self._routes(repo)
        seen = set(entry.get("seen", []))
        # Reviews older than the watch (an upgrade over open pull requests) are history.
        baseline = entry.get("baseline", {}).get("issues", "")
        new_seen: list[str] = []
        triggers: list[tuple[str, dict[str, Any]]] = []
        for number in sorted(changed):
            if number not in routes["pulls"]:
                continue
            for page in self.client.paginate(repo, f"/repos/{repo}/pulls/{number}/reviews"):
                for review in page.data or []:
                    key = f"reviews:{review['id']}"
                    if key in seen:
                        continue
                    seen.add(key)
                    new_seen.append(key)
                    if (review.get("submitted_at") or "") < baseline:
                        continue
                    found = self._review_trigger(repo, number, review, routes)
                    if found is not None:
                        triggers.append(found)
        with self.queue.store.transaction() as data:
            section = data.setdefault("followups", {})
            entry = section.setdefault("repos", {}).setdefault(repo, {})
            book = entry.setdefault("pulls", {})
            looked, still = book.setdefault("looked", {}), book.setdefault("changed", {})
            for number, updated_at in changed.items():
                looked[str(number)] = updated_at
                if still.get(str(number)) == updated_at:  # moved again meanwhile: read it next poll
                    del still[str(number)]
            entry["seen"] = [*entry.get("seen", []), *new_seen][-SEEN_LIMIT:]
            pending = section.setdefault("pending", {})
            for key, trigger in triggers:
                waiting = pending.setdefault(key, [])
                if trigger["id"] not in {t["id"] for t in waiting}:
                    waiting.append(trigger)

    def _review_trigger(
        self, repo: str, number: int, review: dict[str, Any], routes: dict[str, dict[int, int]]
    ) -> tuple[str, dict[str, Any]] | None:
        body = review.get("body") or ""
        author = (review.get("user") or {}).get("login", "")
        if MARKER_PREFIX in body or not mentions(body, self.phrase):
            return None
        if author and author.lower() == (self._own(repo) or "").lower():
            return None
        if not self._writer_or_noted(
            repo, number, author, f"{repo}:review:{review['id']}", f"{self.phrase} in a review"
        ):
            return None
        trigger = {
            "id": f"reviews:{review['id']}",
            "comment_id": int(review["id"]),
            "where": "review",
            "pr_number": number,
            "author": author,
            "url": review.get("html_url", ""),
            "body": body,
            "created_at": review.get("submitted_at", ""),
        }
        return f"{repo}#{routes['pulls'][number]}", trigger

    def _trigger(
        self, repo: str, kind: str, comment: dict[str, Any], routes: dict[str, dict[int, int]]
    ) -> tuple[str, dict[str, Any]] | None:
        body = comment.get("body") or ""
        author = (comment.get("user") or {}).get("login", "")
        if MARKER_PREFIX in body or (author and author.lower() == (self._own(repo) or "").lower()):
            return None  # ours: never a trigger, or the daemon would talk to itself
        if not mentions(body, self.phrase):
            return None
        if (
            kind == "issues"
            and review_triggers.on_pull(comment)
            and review_triggers.asks_review(body, self.phrase)
        ):
            return self.reviews.from_comment(repo, comment)  # on any pull request: a review task
        if kind == "issues":
            number = _number_at_end(comment.get("issue_url"))
            if number in routes["pulls"]:
                issue, where = routes["pulls"][number], "pr"
            elif number in routes["issues"]:
                issue, where = number, "issue"
            else:
                self._note(
                    f"{repo}#{number}:unknown",
                    "%s#%s: %s is not on an issue we worked on; ignoring it",
                    repo,
                    number,
                    self.phrase,
                )
                return None
        else:
            number = _number_at_end(comment.get("pull_request_url"))
            if number not in routes["pulls"]:
                self._note(
                    f"{repo}#{number}:unknown",
                    "%s#%s: a review comment on a pull request not ours",
                    repo,
                    number,
                )
                return None
            issue, where = routes["pulls"][number], "review_comment"
        if not self._writer_or_noted(repo, issue, author, f"{repo}:{comment['id']}:untrusted", self.phrase):
            return None
        trigger: dict[str, Any] = {
            "id": f"{kind}:{comment['id']}",
            "comment_id": int(comment["id"]),
            "where": where,
            "pr_number": number if where != "issue" else None,
            "author": author,
            "url": comment.get("html_url", ""),
            "body": body,
            "created_at": comment.get("created_at", ""),
        }
        if where == "review_comment":
            trigger.update(
                path=comment.get("path", ""),
                line=comment.get("line") or comment.get("original_line"),
                diff_hunk=comment.get("diff_hunk", ""),
                thread=int(comment.get("in_reply_to_id") or comment["id"]),
            )
        return f"{repo}#{issue}", trigger

    def _writer_or_noted(self, repo: str, number: int, author: str, key: str, what: str) -> bool:
        """Whether ``author`` may ask; when not, the log says once (per ``key``) that ``what`` was ignored."""
        trusted, why = self._trusted(repo, author)
        if not trusted:
            self._note(key, "%s#%s: ignoring %s by %s (%s)", repo, number, what, author, why)
        return trusted

    def _trusted(self, repo: str, login: str) -> tuple[bool, str]:
        if login.lower() in self.config.trusted_users:
            return True, "listed in TRUSTED_USERS"
        if not login:
            return False, "the author is unknown"
        try:
            permission = self.permission(repo, login)
        except GitHubError as exc:
            return False, f"its author's permission could not be read ({exc})"
        if permission in ("admin", "maintain", "write"):
            return True, f"{permission} permission"
        if permission == "unknown":  # the lookup failed (the watcher logged it): untrusted for now
            return False, f"the permission of {login} could not be read"
        return False, f"{login} has {permission} permission; write, maintain or admin is needed"

    def _routes(self, repo: str) -> dict[str, dict[int, int]]:
        return self._routes_in(self.queue.store.read(), repo)

    @staticmethod
    def _routes_in(data: dict[str, Any], repo: str) -> dict[str, dict[int, int]]:
        """Which issues we worked on, and which pull request belongs to which issue: what the tasks say,
        and what the queue kept of tasks that have left the history since (``routes``)."""
        kept = data.get("followups", {}).get("repos", {}).get(repo, {}).get("routes", {})
        issues = {int(n): int(n) for n in kept.get("issues", [])}
        pulls = {int(k): int(v) for k, v in kept.get("pulls", {}).items()}
        for task in data.get("tasks", {}).values():
            if task["repo"].lower() != repo.lower():
                continue
            issues[task["issue_number"]] = task["issue_number"]
            meta = task.get("meta") or {}
            for number in [*(meta.get("pr_numbers") or []), meta.get("pr_number")]:
                if number:
                    pulls[int(number)] = task["issue_number"]
        return {"issues": issues, "pulls": pulls}

    def worked_on(self, repo: str) -> set[int]:
        """The issues of ``repo`` we worked on."""
        return set(self._routes(repo)["issues"])

    def _title(self, repo: str, number: int) -> str:
        tasks = [
            t
            for t in self.queue.store.read()["tasks"].values()
            if t["repo"].lower() == repo.lower() and t["issue_number"] == number
        ]
        return max(tasks, key=lambda t: t["seq"])["title"] if tasks else f"{repo}#{number}"

    def own_login(self, repo: str) -> str | None:
        """The daemon's own login on GitHub (None for an App's installation token)."""
        return self._own(repo)

    def _own(self, repo: str) -> str | None:
        """The daemon's own login (one request per daemon; an App's installation token has none)."""
        if not self._own_login_known:
            try:
                self._own_login = (self.client.request(repo, "GET", "/user").data or {}).get("login")
            except GitHubError:
                self._own_login = None  # the marker on every comment of ours still tells them apart
            self._own_login_known = True
        return self._own_login

    def _react(self, repo: str, trigger: dict[str, Any]) -> None:
        if trigger["where"] == "review":
            return  # GitHub has no reactions on a review's body
        kind = "pulls" if trigger["where"] == "review_comment" else "issues"
        try:
            self.client.request(
                repo,
                "POST",
                f"/repos/{repo}/{kind}/comments/{trigger['comment_id']}/reactions",
                body={"content": "eyes"},
                retry=True,
            )
        except GitHubError as exc:
            log.warning("%s: could not react to %s: %s", repo, trigger["url"], exc)

    def _save(
        self,
        repo: str,
        kind: str,
        *,
        since: str,
        etag: str | None,
        seen: list[str],
        triggers: list[tuple[str, dict[str, Any]]] | None = None,
        tests: list[tuple[int, dict[str, Any]]] | None = None,
    ) -> list[Task]:
        titles = {number: self._title(repo, number) for number, _ in tests or []}
        queued: list[Task] = []
        with self.queue.store.transaction() as data:
            for number, meta in tests or []:  # queued with the comment recorded as seen: never twice
                task = self.queue.submit_in(data, repo, number, titles[number], TEST_KIND, meta)
                if task is None:
                    log.info(
                        "%s#%s: a task of it is live already; `%s test` not queued", repo, number, self.phrase
                    )
                else:
                    queued.append(task)
            section = data.setdefault("followups", {})
            book = section.setdefault("repos", {}).setdefault(repo, {})
            book.setdefault("since", {})[kind] = since
            book.setdefault("baseline", {}).setdefault(kind, since)
            if etag:
                book.setdefault("etags", {})[kind] = etag
            book["seen"] = [*book.get("seen", []), *seen][-SEEN_LIMIT:]
            pending = section.setdefault("pending", {})
            for key, trigger in triggers or []:
                waiting = pending.setdefault(key, [])
                if trigger["id"] not in {t["id"] for t in waiting}:
                    waiting.append(trigger)
        return queued

    def _test_request(
        self, repo: str, kind: str, comment: dict[str, Any]
    ) -> tuple[int, dict[str, Any]] | None:
        """``@claude test`` by a writer on any pull request (ours, a person's, a fork's): (number, meta)."""
        body = comment.get("body") or ""
        if kind != "issues" or MARKER_PREFIX in body or not is_test_request(body, self.phrase):
            return None
        if "/pull/" not in (comment.get("html_url") or ""):
            return None  # an issue's comment: a follow-up or nothing, as before
        author = (comment.get("user") or {}).get("login", "")
        if author and author.lower() == (self._own(repo) or "").lower():
            return None
        number = _number_at_end(comment.get("issue_url"))
        if number is None:
            return None
        if not self._writer_or_noted(
            repo, number, author, f"{repo}:{comment['id']}:untrusted", f"`{self.phrase} test`"
        ):
            return None
        meta = {
            "requester": author,
            "request_url": comment.get("html_url", ""),
            "request_id": comment.get("id"),
        }
        return number, meta

    def _note(self, key: str, message: str, *args: Any) -> None:
        with self._lock:
            if key in self._noted:
                return
            self._noted.add(key)
        log.info(message, *args)
