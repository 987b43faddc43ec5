"""GitHub webhook deliveries: verified, deduplicated, and turned into "look at this repository now".

A delivery is only a hint. It never creates a task itself: it asks the watcher to poll the repository
at once, through the same trust checks and the same state as the regular poll. So a delivery that is
lost, forged (and refused), replayed or out of order changes nothing the next poll would not.

What is checked, in order: the body's size (413), the ``X-Hub-Signature-256`` HMAC-SHA256 of the raw
body with ``WEBHOOK_SECRET`` in constant time (401), the JSON (400), the ``X-GitHub-Delivery`` id (a
replay is answered 200 and ignored). Each delivery id is remembered in the state file (the last
``SEEN_LIMIT``), so a replay after a restart is a no-op too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from claude_issue_solver.state import StateStore

log = logging.getLogger(__name__)

SEEN_LIMIT = 2000
FAILURE_FLUSH_INTERVAL = 1.0  # a flood of forged deliveries writes the state file at most once a second

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
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.secret = secret
        self.max_bytes = max_bytes
        self.on_repository = on_repository
        self.on_installation = on_installation
        self.on_result = on_result
        self.clock = clock
        self._lock = threading.Lock()
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
        try:
            if headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
                # A hook set up with that content type sends the JSON as the form field ``payload``.
                body = parse_qs(body.decode(), strict_parsing=True)["payload"][0].encode()
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError, KeyError):
            return Answer(400, "malformed", "the body is not JSON (nor a form with a payload field)")
        if not isinstance(payload, dict):
            return Answer(400, "malformed", "the body is not a JSON object")
        if not delivery:
            return Answer(400, "malformed", "no X-GitHub-Delivery header")
        repo = ((payload.get("repository") or {}).get("full_name")) or ""
        action = str(payload.get("action") or "")
        if not self._first_time(delivery, event, action, repo):
            return Answer(200, "duplicate", "already handled")
        if event not in RELEVANT:
            return Answer(202, "ignored", f"event {event!r} is not one we act on")
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

    def _first_time(self, delivery: str, event: str, action: str, repo: str) -> bool:
        """Record the delivery; False when its id was handled before (a redelivery or a replay)."""
        with self.store.transaction() as data:
            book = _section(data)
            seen = book.get("seen")
            if not isinstance(seen, list):  # absent, or damaged by hand: start the history again
                seen = book["seen"] = []
            if delivery in seen:
                return False
            seen.append(delivery)
            del seen[:-SEEN_LIMIT]
            book["last_delivery"] = {
                "id": delivery,
                "event": f"{event}.{action}" if action else event,
                "repo": repo,
                "at": self.clock(),
            }
            book["deliveries"] = int(book.get("deliveries") or 0) + 1
        return True

    def _note_signature_failure(self, event: str, delivery: str) -> None:
        now = self.clock()
        with self._lock:
            self._unflushed_failures += 1
            self._last_failure = {"at": now, "event": event, "id": delivery[:64]}
            if now - self._last_flush < FAILURE_FLUSH_INTERVAL:
                if self._timer is None:  # the last of a burst is written a moment later
                    self._timer = threading.Timer(FAILURE_FLUSH_INTERVAL, self.flush)
                    self._timer.daemon = True
                    self._timer.start()
                return
        self.flush()

    def flush(self) -> None:
        """Write the signature failures counted since the last write (the daemon calls it at stop)."""
        with self._lock:
            count, last = self._unflushed_failures, self._last_failure
            self._unflushed_failures, self._last_flush = 0, self.clock()
            self._timer = None
        if not count:
            return
        with self.store.transaction() as data:
            book = _section(data)
            book["signature_failures"] = int(book.get("signature_failures") or 0) + count
            book["last_signature_failure"] = last
        log.warning("%d webhook deliveries with a missing or wrong signature were refused", count)


def _section(data: dict[str, Any]) -> dict[str, Any]:
    book = data.get("webhooks")
    if not isinstance(book, dict):
        book = data["webhooks"] = {}
    return book
