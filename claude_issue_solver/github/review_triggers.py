"""Review triggers (#22): what asks for a review of a pull request, turned into ``review`` tasks.

- a writer's ``@claude review`` (``TRIGGER_PHRASE`` followed by the word ``review``) in a comment on any
  pull request of a watched repository — ours, a person's, a fork's. Read from the repository-wide
  comment listing the follow-up triggers already read (:class:`TriggerWatcher`): no request more;
- the label ``REVIEW_LABEL`` applied to a pull request by a writer (its newest ``labeled`` event, once
  per labelling);
- with ``REVIEW_ON_OPEN``, a pull request a writer opened (or marked ready), once; drafts wait.

``TRIGGER_LABEL`` on a pull request stays ignored (the watcher skips pull requests for issues).

Each trigger is recorded (``followups.pending["review:owner/repo#N"]``) in the transaction that records
it as seen, and becomes a task in one more transaction (:func:`deliver`): a pending review of the pull
request takes it in, a running one lets it wait, none makes a new task. A second request with no new
commits makes a task that ends at once without a second review (:class:`ReviewKind`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from claude_issue_solver.config import Config
from claude_issue_solver.github.client import GitHubClient
from claude_issue_solver.github.trust import latest_labeling
from claude_issue_solver.store.queue import Task, TaskQueue, TaskState

__all__ = ["PREFIX", "ReviewTriggers", "asks_review", "deliver", "on_pull"]

log = logging.getLogger(__name__)

PREFIX = "review:"  # the pending triggers' key: "review:owner/repo#N" (never taken for a follow-up)
KIND = "review"


def asks_review(body: str | None, phrase: str) -> bool:
    """``@claude review`` (the phrase as a word, then the word "review"), case-insensitive."""
    pattern = rf"(?<![\w@./-]){re.escape(phrase)}[\s,:]+review\b"
    return re.search(pattern, body or "", re.IGNORECASE) is not None


def on_pull(comment: dict[str, Any]) -> bool:
    """Whether a conversation comment is on a pull request (GitHub's link to it says ``/pull/N``)."""
    return "/pull/" in (comment.get("html_url") or "")


def _number_at_end(url: str | None) -> int | None:
    tail = (url or "").rstrip("/").rsplit("/", 1)[-1]
    return int(tail) if tail.isdigit() else None


def key(repo: str, number: int) -> str:
    return f"{PREFIX}{repo}#{number}"


def deliver(queue: TaskQueue, repo: str, on_queued: Callable[[Task], None] | None = None) -> list[Task]:
    """Turn the recorded review triggers of ``repo`` into review tasks, each in one transaction."""
    made: list[Task] = []
    # The state as last read (parsed again only when it changed): every poll asks, few have any.
    pending = queue.store.snapshot().get("followups", {}).get("pending", {})
    for name in sorted(pending):
        if not name.startswith(PREFIX):
            continue
        owner_repo, _, number = name.removeprefix(PREFIX).rpartition("#")
        if owner_repo.lower() != repo.lower():
            continue
        task = _take(queue, owner_repo, int(number), name)
        if task is not None:
            made.append(task)
            log.info("%s#%s: review task %s", owner_repo, number, task.id)
            if on_queued is not None:
                on_queued(task)
    return made


def _take(queue: TaskQueue, repo: str, number: int, name: str) -> Task | None:
    with queue.store.transaction() as data:
        waiting = data.get("followups", {}).get("pending", {})
        triggers = list(waiting.get(name) or [])
        if not triggers:
            return None
        live = next(
            (
                t
                for t in data["tasks"].values()
                if t["repo"].lower() == repo.lower()
                and t["issue_number"] == number
                and t["state"] in (TaskState.PENDING.value, TaskState.RUNNING.value)
            ),
            None,
        )
        if live is not None and not (live["state"] == TaskState.PENDING.value and live.get("kind") == KIND):
            return None  # a review runs (or another task of this number): the request waits for its end
        created = live is None
        if live is None:
            title = triggers[0].get("title") or f"Review of {repo}#{number}"
            task = queue._new_task(data, repo, number, title, KIND, {"triggers": []})
            live = data["tasks"][task.id] = task.to_dict()
        meta = live.setdefault("meta", {})
        known = {t["id"] for t in meta.get("triggers", [])}
        meta["triggers"] = [*meta.get("triggers", []), *(t for t in triggers if t["id"] not in known)]
        del waiting[name]
        return Task.from_dict(live) if created else None


class ReviewTriggers:
    """The label and the opening of a pull request as review triggers (the watcher's listing shows
    every pull request that changed); the comment trigger is :meth:`from_comment`."""

    def __init__(
        self,
        config: Config,
        client: GitHubClient,
        queue: TaskQueue,
        *,
        trusted: Callable[[str, str], tuple[bool, str]],
    ) -> None:
        self.config = config
        self.client = client
        self.queue = queue
        self.trusted = trusted
        self.on_queued: Callable[[Task], None] | None = None

    def from_comment(self, repo: str, comment: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """A conversation comment asking for a review of its pull request, from a writer."""
        number = _number_at_end(comment.get("issue_url"))
        author = (comment.get("user") or {}).get("login", "")
        if number is None:
            return None
        ok, why = self.trusted(repo, author)
        if not ok:
            log.info("%s#%s: ignoring the review request by %s (%s)", repo, number, author, why)
            return None
        trigger = {
            "id": f"issues:{comment['id']}",
            "comment_id": int(comment["id"]),
            "where": "review_request",
            "pr_number": number,
            "author": author,
            "url": comment.get("html_url", ""),
            "body": comment.get("body") or "",
            "created_at": comment.get("created_at", ""),
        }
        return key(repo, number), trigger

    def consider_pull(self, repo: str, issue: dict[str, Any]) -> None:
        """A pull request the watcher's listing shows changed: the review label, or its opening."""
        number = int(issue["number"])
        if issue.get("state", "open") != "open":
            return
        labels = [(lb["name"] if isinstance(lb, dict) else str(lb)).lower() for lb in issue.get("labels", [])]
        book = self.queue.store.read().get("reviews", {})
        name = f"{repo}#{number}"
        found: list[tuple[str, dict[str, Any]]] = []
        marks: dict[str, Any] = {}
        if self.config.review_label.lower() in labels:
            labeled = latest_labeling(self.client.events(repo, number), self.config.review_label)
            if labeled is not None and labeled["at"] > (book.get("labels", {}).get(name) or ""):
                marks["labels"] = labeled["at"]
                ok, why = self.trusted(repo, labeled["actor"])
                if ok:
                    found.append(self._trigger(repo, issue, "label", labeled["actor"], labeled["at"]))
                else:
                    log.info("%s: ignoring the review label applied by %s (%s)", name, labeled["actor"], why)
        draft = bool(issue.get("draft")) or bool((issue.get("pull_request") or {}).get("draft"))
        if self.config.review_on_open and not draft and name not in book.get("opened", []):
            author = (issue.get("user") or {}).get("login", "")
            ok, _ = self.trusted(repo, author)
            marks["opened"] = True
            if ok:
                found.append(self._trigger(repo, issue, "opened", author, issue.get("created_at") or ""))
        if not marks:
            return
        with self.queue.store.transaction() as data:  # recorded as handled with its trigger, at once
            section = data.setdefault("reviews", {})
            if "labels" in marks:
                section.setdefault("labels", {})[name] = marks["labels"]
            if "opened" in marks:
                section["opened"] = [*section.get("opened", []), name][-2000:]
            pending = data.setdefault("followups", {}).setdefault("pending", {})
            for where, trigger in found:
                waiting = pending.setdefault(where, [])
                if trigger["id"] not in {t["id"] for t in waiting}:
                    waiting.append(trigger)
        deliver(self.queue, repo, self.on_queued)

    def _trigger(
        self, repo: str, issue: dict[str, Any], how: str, author: str, at: str
    ) -> tuple[str, dict[str, Any]]:
        number = int(issue["number"])
        return key(repo, number), {
            "id": f"{how}:{number}:{at}",
            "where": how,
            "pr_number": number,
            "author": author,
            "url": issue.get("html_url", ""),
            "body": "",
            "created_at": at,
            "title": issue.get("title") or "",
        }
