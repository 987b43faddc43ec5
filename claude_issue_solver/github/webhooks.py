"""GitHub webhook deliveries: verified, deduplicated, and turned into "look at this repository now".

A delivery is only a hint. It never creates a task itself: it asks the watcher to poll the repository
at once, through the same trust checks and the same state as the regular poll. So a delivery that is
lost, forged (and refused), replayed or out of order changes nothing the next poll would not.

What is checked, in order: the body's size (413), the ``X-Hub-Signature-256`` HMAC-SHA256 of the raw
body with ``WEBHOOK_SECRET`` in constant time (401), the ``X-GitHub-Delivery`` id (a GUID at GitHub;
missing, over ``MAX_DELIVERY_ID`` characters or not a token: 400), the JSON (400), then whether it was
seen before (200 and ignored): by its delivery id (GitHub's "redeliver") *or* by the digest of its body.
A captured signed delivery replayed under fresh ids is the same body, so it pokes once, however many
ids it comes with; two real events never have the same body (it carries the issue's ``updated_at``).

The last ``SEEN_LIMIT`` ids and digests are kept in the state file, so a replay after a restart is a
no-op too; they are written in batches, at most once every ``FLUSH_INTERVAL`` (and at stop), never in
the request's path more than once a second: a flood of valid deliveries cannot turn into a flood of
state writes, and a crash loses at most the last second's history (a replay of those pokes once more).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from claude_issue_solver.github.poll_schedule import APP, owner_source, repo_source
from claude_issue_solver.store.state import StateStore

log = logging.getLogger(__name__)

SEEN_LIMIT = 2000
FLUSH_INTERVAL = 1.0  # a flood of deliveries, forged or replayed, writes the state file at most once a second
RETRY_INTERVAL = 30.0  # after a failed write (a full disk): what was noted is kept, and tried again
MAX_DELIVERY_ID = 64  # GitHub's are GUIDs (36 characters)
_DELIVERY_ID = re.compile(r"[A-Za-z0-9._:-]+")

# The events (and actions) that can change what the watcher would find; anything else is acknowledged
# and ignored. Installation events refresh the list of repositories an App watches.
RELEVANT: dict[str, frozenset[str] | None] = {
    "issues": frozenset({"labeled", "unlabeled", "edited", "closed", "reopened"}),
    "issue_comment": frozenset({"created"}),
    "pull_request_review": frozenset({"submitted"}),
    "pull_request_review_comment": frozenset({"created"}),
    "installation": None,
    "installation_repositories": None,
}
INSTALLATION_EVENTS = ("installation", "installation_repositories")


@dataclass(frozen=True)
class Answer:
    """The HTTP answer to one delivery; ``result`` is its label in the metrics."""

    status: int
    result: str
    message: str


def signature(secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub sends for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_ok(secret: str, body: bytes, header: str | None) -> bool:
    if not header:
        return False
    return hmac.compare_digest(signature(secret, body).encode(), header.strip().encode())


class WebhookReceiver:
    """Handle one delivery at a time (any thread): :meth:`handle` returns the answer to send.

    ``on_repository(full_name)`` is called for a relevant delivery about a repository;
    ``on_installation()`` for installation events. Both must be quick (the daemon only sets a flag).
    ``on_sources(sources)`` is told, for every relevant delivery, what it shows to be delivering: its
    repository, its owner (an organisation's hook), or every repository of a GitHub App (see
    :func:`delivery_sources`); the poll schedule slows their polls to a safety net.
    """

    def __init__(
        self,
        store: StateStore,
        secret: str,
        *,
        max_bytes: int,
        on_repository: Callable[[str], None],
        on_installation: Callable[[], None] | None = None,
        on_result: Callable[[str], None] | None = None,
        on_sources: Callable[[tuple[str, ...]], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.secret = secret
        self.max_bytes = max_bytes
        self.on_repository = on_repository
        self.on_installation = on_installation
        self.on_result = on_result
        self.on_sources = on_sources
        self.clock = clock
        self._lock = threading.Lock()
        # What was seen (ids and body digests, oldest first), read from the state file at first use.
        self._seen: dict[str, None] | None = None
        self._bodies: dict[str, None] = {}
        # What is not written yet.
        self._new_seen: list[str] = []
        self._new_bodies: list[str] = []
        self._unflushed_deliveries = 0
        self._last_delivery: dict[str, Any] | None = None
        self._unflushed_failures = 0
        self._last_failure: dict[str, Any] | None = None
        self._last_flush = 0.0
        self._timer: threading.Timer | None = None

    def handle(self, headers: Mapping[str, str], body: bytes) -> Answer:
        answer = self._handle(headers, body)
        if self.on_result is not None:
            self.on_result(answer.result)
        return answer

    def too_large(self) -> Answer:
        """The answer to a body refused before it was read (its declared length is over the cap)."""
        answer = Answer(413, "too_large", f"the body is over {self.max_bytes} bytes")
        if self.on_result is not None:
            self.on_result(answer.result)
        return answer

    def _handle(self, headers: Mapping[str, str], body: bytes) -> Answer:
        if len(body) > self.max_bytes:
            return Answer(413, "too_large", f"the body is over {self.max_bytes} bytes")
        event = headers.get("X-GitHub-Event", "")
        delivery = headers.get("X-GitHub-Delivery", "")
        if not signature_ok(self.secret, body, headers.get("X-Hub-Signature-256")):
            self._note_signature_failure(event, delivery)
            return Answer(401, "bad_signature", "missing or wrong X-Hub-Signature-256")
        if not delivery:
            return Answer(400, "malformed", "no X-GitHub-Delivery header")
        if len(delivery) > MAX_DELIVERY_ID or not _DELIVERY_ID.fullmatch(delivery):
            return Answer(
                400, "malformed", f"X-GitHub-Delivery is not an id of at most {MAX_DELIVERY_ID} characters"
            )
        try:
            if headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
                # A hook set up with that content type sends the JSON as the form field ``payload``.
                body = parse_qs(body.decode(), strict_parsing=True)["payload"][0].encode()
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError, KeyError):
            return Answer(400, "malformed", "the body is not JSON (nor a form with a payload field)")
        if not isinstance(payload, dict):
            return Answer(400, "malformed", "the body is not a JSON object")
        repo = ((payload.get("repository") or {}).get("full_name")) or ""
        action = str(payload.get("action") or "")
        # The event is a header the signature does not cover: the same body under another event is
        # another delivery (a handful at most: one per event name).
        digest = hashlib.sha256(event.encode() + b"\n" + body).hexdigest()[:32]
        if not self._first_time(delivery, digest, event, action, repo):
            return Answer(200, "duplicate", "already handled")
        if event not in RELEVANT:
            return Answer(202, "ignored", f"event {event!r} is not one we act on")
        if self.on_sources is not None:  # a hook subscribed to this event delivers it: any action shows that
            self.on_sources(delivery_sources(headers, payload))
        actions = RELEVANT[event]
        if actions is not None and action not in actions:
            return Answer(202, "ignored", f"{event}.{action} is not one we act on")
        if event in INSTALLATION_EVENTS:
            if self.on_installation is not None:
                self.on_installation()
            return Answer(202, "accepted", "the installation's repositories will be listed again")
        if not repo:
            return Answer(202, "ignored", "no repository in the payload")
        log.debug("webhook %s %s.%s for %s: polling it now", delivery, event, action, repo)
        self.on_repository(repo)
        return Answer(202, "accepted", f"{repo} will be polled now")

    def _first_time(self, delivery: str, digest: str, event: str, action: str, repo: str) -> bool:
        """Note the delivery; False when its id or its body was seen before (a redelivery or a replay)."""
        with self._lock:
            if self._seen is None:
                self._load()
            assert self._seen is not None
            if delivery in self._seen or digest in self._bodies:
                return False
            for book, new, key in (
                (self._seen, self._new_seen, delivery),
                (self._bodies, self._new_bodies, digest),
            ):
                book[key] = None
                new.append(key)
                while len(book) > SEEN_LIMIT:
                    del book[next(iter(book))]
                del new[:-SEEN_LIMIT]
            self._unflushed_deliveries += 1
            self._last_delivery = {
                "id": delivery,
                "event": f"{event}.{action}" if action else event,
                "repo": repo,
                "at": self.clock(),
            }
        self._flush_soon()
        return True

    def _load(self) -> None:
        book = _section(self.store.read())
        self._seen = dict.fromkeys(_strings(book.get("seen"))[-SEEN_LIMIT:])
        self._bodies = dict.fromkeys(_strings(book.get("bodies"))[-SEEN_LIMIT:])

    def _note_signature_failure(self, event: str, delivery: str) -> None:
        with self._lock:
            self._unflushed_failures += 1
            self._last_failure = {"at": self.clock(), "event": event, "id": delivery[:MAX_DELIVERY_ID]}
        self._flush_soon()

    def _flush_soon(self) -> None:
        """Write now if the last write is a ``FLUSH_INTERVAL`` old, else when it will be (one timer)."""
        with self._lock:
            if self._timer is not None:  # a write is due already: it takes this along
                return
            wait = self._last_flush + FLUSH_INTERVAL - self.clock()
            if wait > 0:
                self._start_timer(wait)
                return
        self.flush()

    def _start_timer(self, wait: float) -> None:
        self._timer = threading.Timer(wait, self.flush)
        self._timer.daemon = True
        self._timer.start()

    def flush(self) -> None:
        """Write what was noted since the last write (the listener calls it at stop); never raises."""
        with self._lock:
            seen, bodies, self._new_seen, self._new_bodies = self._new_seen, self._new_bodies, [], []
            deliveries, last = self._unflushed_deliveries, self._last_delivery
            failures, last_failure = self._unflushed_failures, self._last_failure
            self._unflushed_deliveries, self._last_delivery = 0, None
            self._unflushed_failures, self._last_failure = 0, None
            self._last_flush = self.clock()
            if self._timer is not None:
                self._timer.cancel()  # this write takes what it was due for (a no-op from the timer itself)
                self._timer = None
        if not (seen or deliveries or failures):
            return
        try:
            with self.store.transaction() as data:
                book = _section(data)
                for key, new in (("seen", seen), ("bodies", bodies)):
                    kept = _strings(book.get(key))  # absent, or damaged by hand: start the history again
                    known = set(kept)
                    book[key] = [*kept, *(item for item in new if item not in known)][-SEEN_LIMIT:]
                if deliveries:
                    book["last_delivery"] = last
                    book["deliveries"] = int(book.get("deliveries") or 0) + deliveries
                if failures:
                    book["signature_failures"] = int(book.get("signature_failures") or 0) + failures
                    book["last_signature_failure"] = last_failure
        except Exception as exc:  # a full disk, a lock held too long: keep it all for the next write
            log.warning("the webhook history could not be written (tried again later): %s", exc)
            with self._lock:
                self._new_seen[:0], self._new_bodies[:0] = seen, bodies
                self._unflushed_deliveries += deliveries
                self._last_delivery = self._last_delivery or last
                self._unflushed_failures += failures
                self._last_failure = self._last_failure or last_failure
                if self._timer is None:
                    self._start_timer(RETRY_INTERVAL)
            return
        if failures:
            log.warning("%d webhook deliveries with a missing or wrong signature were refused", failures)


def delivery_sources(headers: Mapping[str, str], payload: dict[str, Any]) -> tuple[str, ...]:
    """What a signed delivery shows to be delivering. A GitHub App's hook (the payload carries
    ``installation``, as GitHub documents for deliveries to an App) covers every repository the App
    watches; an organisation's hook (``X-GitHub-Hook-Installation-Target-Type: organization``) every
    repository of that owner; any other only its repository."""
    sources: list[str] = []
    repo = str(((payload.get("repository") or {}).get("full_name")) or "")
    if repo:
        sources.append(repo_source(repo))
    if isinstance(payload.get("installation"), dict):
        sources.append(APP)
    elif headers.get("X-GitHub-Hook-Installation-Target-Type", "").lower() == "organization":
        owner = str(((payload.get("organization") or {}).get("login")) or repo.partition("/")[0])
        if owner:
            sources.append(owner_source(owner))
    return tuple(sources)


def _strings(value: Any) -> list[str]:
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


def _section(data: dict[str, Any]) -> dict[str, Any]:
    book = data.get("webhooks")
    if not isinstance(book, dict):
        book = data["webhooks"] = {}
    return book
