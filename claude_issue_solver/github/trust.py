"""Whose words reach the agent: write permission, the text a writer approved, comments by writers.

- **Write permission** (:class:`Permissions`): ``admin``, ``maintain`` or ``write`` on the repository
  (GitHub's collaborator-permission endpoint), or a place in ``TRUSTED_USERS``. Answers are cached in
  the state file for an hour. A lookup that fails (404 for a bot or an App, a 5xx, a rate limit) makes
  that login untrusted *for now*: the failure is cached for :data:`FAILED_PERMISSION_TTL` (then asked
  again), logged once, and never raised, so one login never stops a repository's poll.
- **The approved text** (:func:`approve`): a writer's label approves the issue's title and body as they
  read when the label was applied; a writer's later edit approves its own text. An edit by anyone else
  after that is never given to the agent. Title changes come from the issue's ``renamed`` events (REST),
  body changes from its edit history (GraphQL ``userContentEdits``: each revision's whole text, its
  editor and time). When that history cannot be read and the issue changed after the label, or the
  approved revision is gone from it, there is no approved text: a writer is asked to apply the label
  again.
- **Comments** (:func:`writers_comments`): only those whose author has write permission (the same
  cached check), written before the task started, none of ours.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from claude_issue_solver.config import Config
from claude_issue_solver.conventions import cut_with_note
from claude_issue_solver.github.client import GitHubClient, GitHubError
from claude_issue_solver.github.markers import marked_task
from claude_issue_solver.store.state import StateStore

log = logging.getLogger(__name__)

WRITE_PERMISSIONS = ("admin", "maintain", "write")
PERMISSION_TTL = 3600.0  # a permission GitHub answered is asked again after an hour
FAILED_PERMISSION_TTL = 300.0  # a lookup that failed is tried again after five minutes
UNKNOWN = "unknown"  # the permission of a login whose lookup failed: untrusted for now
# GitHub keeps at most 65536 characters of an issue's body; the approved copy in the state file (and the
# prompt built from it) is cut there too, so a task never holds more than GitHub could.
MAX_BODY_CHARS = 65536


def content_hash(title: str, body: str | None) -> str:
    return hashlib.sha256(f"{title}\0{body or ''}".encode()).hexdigest()[:16]


def github_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Permissions:
    """``login``'s permission on ``repo``, cached in the state file (``watcher.permissions``) that every
    part of the daemon shares. Never raises: a failed lookup is :data:`UNKNOWN` for a while."""

    def __init__(
        self,
        config: Config,
        client: GitHubClient,
        store: StateStore,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.client = client
        self.store = store
        self.clock = clock
        self._lock = threading.Lock()
        self._failing: set[str] = set()  # cache keys whose failure was logged (until a lookup succeeds)

    def get(self, repo: str, login: str, permissions: dict[str, Any] | None = None) -> str:
        """``permissions`` is a caller's own view of the cache (a poll's), updated in place."""
        if permissions is None:
            permissions = self.store.read().get("watcher", {}).get("permissions", {})
        cache_key = f"{repo}:{login}".lower()
        cached = permissions.get(cache_key)
        now = self.clock()
        if cached:
            ttl = FAILED_PERMISSION_TTL if cached.get("permission") == UNKNOWN else PERMISSION_TTL
            if now - float(cached.get("checked_at") or 0) < ttl:
                return str(cached["permission"])
        try:
            permission = self.client.permission(repo, login)
            entry: dict[str, Any] = {"permission": permission, "checked_at": now}
            with self._lock:
                self._failing.discard(cache_key)
        except GitHubError as exc:
            permission = UNKNOWN
            entry = {"permission": UNKNOWN, "checked_at": now, "error": exc.reason}
            with self._lock:
                first = cache_key not in self._failing
                self._failing.add(cache_key)
            if first:
                log.warning(
                    "%s: the permission of %s could not be read (%s); untrusted for now, asked again in %d s",
                    repo,
                    login,
                    exc.reason,
                    FAILED_PERMISSION_TTL,
                )
        permissions[cache_key] = entry  # later questions of this caller about the same login ask no more
        with self.store.transaction() as data:
            data.setdefault("watcher", {}).setdefault("permissions", {})[cache_key] = entry
        return permission

    def writer(self, repo: str, login: str, permissions: dict[str, Any] | None = None) -> tuple[bool, str]:
        """Whether ``login`` may write to ``repo`` (or is listed in ``TRUSTED_USERS``), and why."""
        if not login:
            return False, "the author is unknown"
        if login.lower() in self.config.trusted_users:
            return True, "listed in TRUSTED_USERS"
        permission = self.get(repo, login, permissions)
        if permission in WRITE_PERMISSIONS:
            return True, f"{permission} permission"
        if permission == UNKNOWN:
            return False, f"the permission of {login} could not be read; untrusted for now"
        return False, f"{login} has {permission} permission; write, maintain or admin is needed"


# --- the approved text ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Approved:
    """The title and body a writer approved, kept with the task (``meta["approved"]``)."""

    title: str
    body: str
    hash: str  # content_hash(title, body) of the approved text
    label_at: str  # when the label that approved it was applied
    labeler: str
    at: str  # when the text was last approved: the label, or a writer's later edit
    by: str  # who approved it last
    source: str  # "label": the text as it read then; "history": found in the issue's edit history

    def to_meta(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_meta(cls, meta: Any) -> Approved | None:
        if not isinstance(meta, dict):
            return None
        try:
            return cls(**{k: str(meta[k]) for k in cls.__dataclass_fields__})
        except KeyError:
            return None

    @classmethod
    def as_read(cls, issue: dict[str, Any], at: str, *, by: str = "", source: str = "operator") -> Approved:
        """The issue's text as read now, approved by whoever queues it (an operator on the host: ``by``
        empty, no label)."""
        title, body = issue.get("title") or "", capped(issue.get("body"))
        return cls(title, body, content_hash(title, body), at, by, at, by, source)

    def differs(self, issue: dict[str, Any]) -> bool:
        """Whether the issue's live text is not the approved one."""
        return content_hash(issue.get("title") or "", capped(issue.get("body"))) != self.hash


@dataclass(frozen=True)
class Approval:
    approved: Approved | None  # None: what the label approved cannot be told (ask for the label again)
    why: str


def capped(body: str | None) -> str:
    return cut_with_note(body or "", MAX_BODY_CHARS, "The issue's text")


def approve(
    client: GitHubClient,
    writer: Callable[[str], bool],
    repo: str,
    issue: dict[str, Any],
    labeled: dict[str, str],
    events: Iterable[dict[str, Any]],
    *,
    everyone: bool = False,
) -> Approval:
    """The text the labelling ``labeled`` (``actor``, ``at``) approved, with every later edit by a writer
    (``writer(login)``); ``everyone``: every edit counts as approved (``ALLOW_UNTRUSTED_LABELERS``)."""
    number = int(issue["number"])
    live_title, live_body = issue.get("title") or "", issue.get("body") or ""
    label_at, labeler = labeled["at"], labeled["actor"]

    def made(title: str, body: str, at: str, by: str, source: str) -> Approval:
        body = capped(body)
        approved = Approved(title, body, content_hash(title, body), label_at, labeler, at, by, source)
        return Approval(approved, f"approved by {by} at {at}")

    if everyone:
        return made(live_title, live_body, label_at, labeler, "label")
    title, title_at, title_by = _approved_title(live_title, label_at, labeler, events, writer)
    try:
        history = client.issue_edits(repo, number)
    except GitHubError as exc:
        if (github_time(issue.get("updated_at")) or datetime.max.replace(tzinfo=UTC)) <= _time(label_at):
            # Nothing at all happened to the issue after the label: the text read now is the one approved.
            return made(title, live_body, label_at, labeler, "label")
        return Approval(
            None,
            "the issue changed after the label was applied, and its edit history could not be read "
            f"({exc.reason})",
        )
    found = _approved_body(history, live_body, label_at, labeler, writer)
    if found is None:
        return Approval(None, "the text the label approved is no longer in the issue's edit history")
    body, body_at, body_by, source = found
    at, by = max((title_at, title_by), (body_at, body_by), key=lambda pair: _time(pair[0]))
    return made(title, body, at, by, source)


def _time(value: str) -> datetime:
    return github_time(value) or datetime.min.replace(tzinfo=UTC)


def _approved_title(
    live: str, label_at: str, labeler: str, events: Iterable[dict[str, Any]], writer: Callable[[str], bool]
) -> tuple[str, str, str]:
    """The title as the label found it (the ``from`` of the first rename at or after it), then each
    rename by a writer; (title, approved at, approved by)."""
    renames = sorted(
        (e for e in events if e.get("event") == "renamed" and isinstance(e.get("rename"), dict)),
        key=lambda e: _time(e.get("created_at") or ""),
    )
    after = [e for e in renames if _time(e.get("created_at") or "") >= _time(label_at)]
    title, at, by = (
        (str(after[0]["rename"].get("from") or ""), label_at, labeler) if after else (live, label_at, labeler)
    )
    for event in after:
        actor = (event.get("actor") or {}).get("login", "")
        if writer(actor):
            title, at, by = str(event["rename"].get("to") or ""), event.get("created_at") or at, actor
    return title, at, by


def _approved_body(
    history: dict[str, Any], live: str, label_at: str, labeler: str, writer: Callable[[str], bool]
) -> tuple[str, str, str, str] | None:
    """The body as the label found it, then each edit by a writer: (body, at, by, source), or None when
    the revision the label approved cannot be found."""
    edits = history.get("userContentEdits") or {}
    nodes = sorted(edits.get("nodes") or [], key=lambda n: _time(n.get("editedAt") or ""))
    if not nodes:
        if history.get("lastEditedAt"):
            return None  # edited, yet no revision listed: nothing to tell the approved one by
        return live, label_at, labeler, "label"  # never edited: the text is as it was created
    created = _time(history.get("createdAt") or "")
    labelled = _time(label_at)

    def before_label(node: dict[str, Any]) -> bool:
        # The revision as created may carry the label's very second (an issue opened with the label).
        at = _time(node.get("editedAt") or "")
        return at < labelled or at == created

    before = [n for n in nodes if before_label(n)]
    after = [n for n in nodes if not before_label(n)]
    body: str | None = None
    at, by, source = label_at, labeler, "history"
    if before:
        body = before[-1].get("diff")  # None: that revision was deleted from the history
    elif int(edits.get("totalCount") or 0) > len(nodes):
        body = None  # the revision the label saw is older than the newest hundred
    for node in after:
        editor = (node.get("editor") or {}).get("login", "")
        if node.get("diff") is not None and editor and writer(editor):
            body, at, by = str(node["diff"]), node.get("editedAt") or at, editor
    if body is None:
        return None
    return body, at, by, source


def latest_labeling(events: Iterable[dict[str, Any]], label: str) -> dict[str, str] | None:
    """The newest ``labeled`` event of ``label`` (case-insensitive): its ``actor`` and ``at``."""
    latest = None
    for event in events:
        if event.get("event") != "labeled":
            continue
        if (event.get("label") or {}).get("name", "").lower() != label.lower():
            continue
        at = event.get("created_at") or ""
        if latest is None or at >= latest["at"]:
            latest = {"actor": (event.get("actor") or {}).get("login", ""), "at": at}
    return latest


# --- comments -------------------------------------------------------------------------------------


def writers_comments(
    permissions: Permissions, repo: str, comments: Iterable[dict[str, Any]], *, before: str | None
) -> list[dict[str, Any]]:
    """The comments that may reach a prompt: by a writer, written before ``before`` (ISO), none of ours."""
    limit = github_time(before) if before else None
    cache: dict[str, bool] = {}
    kept = []
    for comment in comments:
        if marked_task(comment.get("body")):
            continue  # our own progress comments
        written = github_time(comment.get("created_at"))
        if limit is not None and (written is None or written > limit):
            continue
        author = (comment.get("user") or {}).get("login", "")
        if author.lower() not in cache:
            cache[author.lower()] = permissions.writer(repo, author)[0]
        if cache[author.lower()]:
            kept.append(comment)
    return kept
