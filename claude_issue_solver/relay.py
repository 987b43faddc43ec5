"""The Claude credential relay: a Messages-API proxy that keeps the real credential in the daemon.

A task's containers never hold the operator's ``ANTHROPIC_API_KEY`` / ``CLAUDE_CODE_OAUTH_TOKEN``. They get
a per-task token instead and reach the API through a Unix socket the daemon listens on; the relay checks
the token, swaps it for the real credential, streams the answer back unbuffered, and meters what the
task spent (tokens and dollars, from the answers' ``usage``) and the limits the API announced.

    relay = Relay(state_dir / "relay", "https://api.anthropic.com", ClaudeCredential(api_key=key))
    relay.start()
    grant = relay.open(task_id)   # grant.directory -> bind-mount at /relay; grant.env -> the container
    ...                           # the container runs: node /relay/relay-forward.js --port 47800
    ...                           #   --socket /relay/relay.sock -- claude -p ...
    relay.usage(task_id).cost_usd
    relay.close(task_id)          # the token dies; the socket and its directory go
    relay.stop()

Layout under ``directory`` (0700, the daemon's): ``secret`` (0600, made once: tokens are
HMAC-SHA256(secret, task id), so a restarted daemon accepts the token of a container still running) and
one directory per open task, ``<key>/`` (0711: the container's user may pass through it, not list or
write it) holding ``relay.sock`` (0600, owned by ``socket_owner`` when given: the agent's uid) and a
copy of ``relay-forward.js``, the in-container forwarder (TCP 127.0.0.1:<port> -> the socket).

Served by aiohttp (already installed with the Daytona SDK): one asyncio loop in one thread serves every
task's socket and every connection, streams both ways, and bounds idle connections, bodies and writes
(:class:`RelayBounds`). Requests are answered in the loop; callers use the thread-safe methods below.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import shutil
import socket
import stat
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from claude_issue_solver import limits
from claude_issue_solver.logs import REDACTOR

__all__ = [
    "CONTAINER_DIR",
    "FORWARDER_NAME",
    "FORWARDER_PORT",
    "SOCKET_NAME",
    "UNIX_PATH_MAX",
    "ClaudeCredential",
    "LimitSeen",
    "ModelUsage",
    "Price",
    "Relay",
    "RelayBounds",
    "RelayError",
    "RelayGrant",
    "TaskUsage",
    "cost_usd",
    "forwarded_command",
    "price_for",
    "stop_all",
]

log = logging.getLogger(__name__)

CONTAINER_DIR = "/relay"  # where the backend mounts a task's relay directory
SOCKET_NAME = "relay.sock"
FORWARDER_NAME = "relay-forward.js"
FORWARDER_PORT = 47800  # the forwarder's fixed port in the container: ANTHROPIC_BASE_URL names it
SECRET_NAME = "secret"
TOKEN_PREFIX = "cis-relay-"  # an opaque token, recognisable in a log or a leaked file
OAUTH_BETA = "oauth-2025-04-20"  # what the Messages API asks of OAuth callers (the CLI sends it too)
_TASK_ID = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")
UNIX_PATH_MAX = 107  # sun_path is 108 bytes with the NUL
# How many closed tasks' figures are kept for a late ``usage()`` call (oldest dropped first).
_KEPT_CLOSED = 1000
# RFC 9110 hop-by-hop headers, plus what the relay sets itself on each leg.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_NOT_FORWARDED_OUT = _HOP_BY_HOP | {"host", "content-length", "x-api-key", "authorization", "expect"}
_NOT_FORWARDED_BACK = _HOP_BY_HOP | {"content-length"}
_LIMIT_STATUSES = (429, 529)
_CAPTURE_ERROR_BYTES = 64 * 1024  # an error body is read this far for its message
_CAPTURE_JSON_BYTES = 16 * 1024 * 1024  # a non-streamed message body, for its usage


class RelayError(Exception):
    """The relay cannot do what was asked (not started, a bad task id, a socket path too long...)."""


# -- what the operator configured and what a task gets ------------------------------------------------


@dataclass(frozen=True)
class ClaudeCredential:
    """The operator's Claude credential: an API key, or an OAuth token from ``claude setup-token``.

    With both, the API key is used (as the CLI itself does when it sees both)."""

    api_key: str | None = None
    oauth_token: str | None = None

    def __post_init__(self) -> None:
        if not (self.api_key or self.oauth_token):
            msg = "the relay needs a Claude credential: ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN"
            raise RelayError(msg)

    @property
    def is_oauth(self) -> bool:
        return not self.api_key

    @property
    def env_name(self) -> str:
        """The variable a container's CLI reads its (relay) credential from."""
        return "CLAUDE_CODE_OAUTH_TOKEN" if self.is_oauth else "ANTHROPIC_API_KEY"

    def __repr__(self) -> str:  # never print the values
        return f"ClaudeCredential({'oauth' if self.is_oauth else 'api_key'})"


@dataclass(frozen=True)
class RelayGrant:
    """What one task's containers get: a directory to mount at ``/relay`` and the env to set.

    ``env`` holds the token only; the backend adds ``ANTHROPIC_BASE_URL=http://127.0.0.1:<port>`` (it
    chooses the forwarder's port) and starts the command through :func:`forwarded_command`."""

    task_id: str
    directory: Path
    token: str
    env: dict[str, str]

    @property
    def socket(self) -> Path:
        return self.directory / SOCKET_NAME

    def __repr__(self) -> str:
        return f"RelayGrant(task_id={self.task_id!r}, directory={str(self.directory)!r})"


def forwarded_command(
    argv: list[str], *, port: int = FORWARDER_PORT, node: str = "node", mount: str = CONTAINER_DIR
) -> list[str]:
    """``argv`` started through the forwarder copied into the task's relay directory (mounted at
    ``mount``): the command starts once 127.0.0.1:``port`` listens, and its exit code is the result."""
    return [
        node,
        f"{mount}/{FORWARDER_NAME}",
        "--port",
        str(port),
        "--socket",
        f"{mount}/{SOCKET_NAME}",
        "--",
        *argv,
    ]


@dataclass(frozen=True)
class RelayBounds:
    """How long and how much the relay waits for or accepts (the defaults suit the real CLI)."""

    max_body_bytes: int = 32 * 1024 * 1024  # the Messages API's own request limit
    idle_timeout_s: float = 30.0  # a connection that sends nothing (or stops mid-headers) is closed
    body_timeout_s: float = 60.0  # the whole request body must arrive within this
    write_timeout_s: float = 120.0  # a client that stops reading the answer is dropped
    connect_timeout_s: float = 15.0  # to the upstream API
    read_timeout_s: float = 600.0  # upstream silence (the CLI's own default API timeout is 600 s)
    max_connections: int = 256  # to the upstream API, all tasks together


# -- metering -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Price:
    """Dollars per million tokens (and per web search request)."""

    input: float
    output: float
    cache_write_5m: float
    cache_write_1h: float
    cache_read: float
    web_search: float = 0.01


# The table Claude Code 2.1.197 prices its runs with (its modelUsage/total_cost_usd), so the relay's
# figure equals the CLI's. Matched in this order on the lower-cased model id, as the CLI matches.
_SONNET = Price(3, 15, 3.75, 6, 0.3)
_OPUS_4 = Price(15, 75, 18.75, 30, 1.5)
_OPUS_45 = Price(5, 25, 6.25, 10, 0.5)
_OPUS_FAST = Price(30, 150, 37.5, 60, 3)  # "speed": "fast" on Opus 4.6/4.7
_TIER_10 = Price(10, 50, 12.5, 20, 1)
_HAIKU_45 = Price(1, 5, 1.25, 2, 0.1)
_HAIKU_35 = Price(0.8, 4, 1, 1.6, 0.08)
_FAMILIES: tuple[tuple[str, re.Pattern[str], Price], ...] = tuple(
    (name, re.compile(pattern), price)
    for name, pattern, price in (
        ("claude-fable-5", r"claude-fable-5", _TIER_10),
        ("claude-mythos-5", r"claude-mythos-5", _TIER_10),
        ("claude-opus-4-8", r"claude-opus-4-8", _OPUS_45),
        ("claude-opus-4-7", r"claude-opus-4-7", _OPUS_45),
        ("claude-opus-4-6", r"claude-opus-4-6", _OPUS_45),
        ("claude-opus-4-5", r"claude-opus-4-5", _OPUS_45),
        ("claude-opus-4-1", r"claude-opus-4-1", _OPUS_4),
        ("claude-opus-4-0", r"claude-opus-4(?!-\d(?!\d))", _OPUS_4),
        ("claude-sonnet-5", r"claude-sonnet-5", _SONNET),
        ("claude-sonnet-4-6", r"claude-sonnet-4-6", _SONNET),
        ("claude-sonnet-4-5", r"claude-sonnet-4-5", _SONNET),
        ("claude-sonnet-4-0", r"claude-sonnet-4(?!-\d(?!\d))", _SONNET),
        ("claude-haiku-4-5", r"claude-haiku-4-5", _HAIKU_45),
        ("claude-3-7-sonnet", r"claude-3-7-sonnet", _SONNET),
        ("claude-3-5-sonnet", r"claude-3-5-sonnet", _SONNET),
        ("claude-3-5-haiku", r"claude-3-5-haiku", _HAIKU_35),
    )
)
# A model the table does not know is priced as the CLI does without a better guess: Opus 4.5's rates.
_FALLBACK = ("unknown", _OPUS_45)


def price_for(model: str, *, speed: str | None = None) -> tuple[str, Price, bool]:
    """(family, price, known) for a model id (``claude-sonnet-4-5-20250929``, ``us.anthropic.…``)."""
    lowered = model.lower()
    for name, pattern, price in _FAMILIES:
        if pattern.search(lowered):
            if speed == "fast" and name in ("claude-opus-4-6", "claude-opus-4-7"):
                return name, _OPUS_FAST, True
            if speed == "fast" and name == "claude-opus-4-8":
                return name, _TIER_10, True
            return name, price, True
    return _FALLBACK[0], _FALLBACK[1], False


def _num(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return int(value)


def cost_usd(model: str, usage: Mapping[str, Any]) -> float:
    """What one answer's ``usage`` costs, the way Claude Code computes it: input, output, cache reads,
    cache writes (the 1-hour part at its own rate when ``cache_creation`` says so) and web searches."""
    _, price, _ = price_for(model, speed=usage.get("speed") if isinstance(usage.get("speed"), str) else None)
    written = _num(usage.get("cache_creation_input_tokens"))
    breakdown = usage.get("cache_creation")
    hour = 0
    if isinstance(breakdown, dict):
        hour = min(_num(breakdown.get("ephemeral_1h_input_tokens")), written)
    server = usage.get("server_tool_use")
    searches = _num(server.get("web_search_requests")) if isinstance(server, dict) else 0
    return (
        _num(usage.get("input_tokens")) / 1e6 * price.input
        + _num(usage.get("output_tokens")) / 1e6 * price.output
        + _num(usage.get("cache_read_input_tokens")) / 1e6 * price.cache_read
        + hour / 1e6 * price.cache_write_1h
        + (written - hour) / 1e6 * price.cache_write_5m
        + searches * price.web_search
    )


@dataclass
class ModelUsage:
    """What one model's answers used, summed over a task's requests."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    web_search_requests: int = 0
    cost_usd: float = 0.0
    priced: bool = True  # False: the price table does not know the model (Opus 4.5 rates were used)

    def add(self, usage: Mapping[str, Any], cost: float) -> None:
        self.requests += 1
        self.input_tokens += _num(usage.get("input_tokens"))
        self.output_tokens += _num(usage.get("output_tokens"))
        self.cache_creation_input_tokens += _num(usage.get("cache_creation_input_tokens"))
        self.cache_read_input_tokens += _num(usage.get("cache_read_input_tokens"))
        server = usage.get("server_tool_use")
        self.web_search_requests += _num(server.get("web_search_requests")) if isinstance(server, dict) else 0
        self.cost_usd += cost


@dataclass
class TaskUsage(ModelUsage):
    """A task's metered use since it was opened: totals, and ``models`` (per model id).

    ``requests`` counts metered answers (model calls that returned usage); ``refused`` the model calls the
    API answered with an error status (429, 529, 4xx...), which cost nothing."""

    refused: int = 0
    models: dict[str, ModelUsage] = field(default_factory=dict)

    def record(self, model: str, usage: Mapping[str, Any]) -> float:
        speed = usage.get("speed")
        cost = cost_usd(model, usage)
        self.add(usage, cost)
        per_model = self.models.setdefault(model, ModelUsage())
        per_model.add(usage, cost)
        per_model.priced = price_for(model, speed=speed if isinstance(speed, str) else None)[2]
        self.priced = self.priced and per_model.priced
        return cost


@dataclass(frozen=True)
class LimitSeen:
    """The latest rate/usage-limit (429) or overload (529) answer the API gave, and when it lifts.

    ``reset_at`` (epoch seconds) comes from ``retry-after``, ``anthropic-ratelimit-unified-reset`` (a
    subscription's usage limit) or the latest ``anthropic-ratelimit-*-reset`` of an empty bucket; None
    when the answer said nothing. ``transient`` marks a 529 (overloaded: retry soon, not a limit)."""

    status: int
    reset_at: float | None
    seen_at: float
    transient: bool = False
    task_id: str | None = None
    message: str = ""


class _SseMeter:
    """Reads ``usage`` out of a Messages API event stream as it passes, without holding the stream.

    Only the current line is kept (bounded); data lines are decoded only for ``message_start`` and
    ``message_delta`` events. ``message_delta``'s usage is cumulative: its fields replace the start's."""

    _MAX_LINE = 1024 * 1024  # longer lines are skipped (content deltas; usage events are small)

    def __init__(self) -> None:
        self._partial = b""
        self._skipping = False
        self._event = b""
        self._data: list[bytes] = []
        self.model: str | None = None
        self.usage: dict[str, Any] = {}
        self.seen = False

    def feed(self, chunk: bytes) -> None:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                rest = chunk[start:]
                if self._skipping or len(self._partial) + len(rest) > self._MAX_LINE:
                    self._partial, self._skipping = b"", True
                else:
                    self._partial += rest
                return
            line = chunk[start:end]
            start = end + 1
            if self._skipping:
                self._skipping = False
                continue
            if self._partial:
                line, self._partial = self._partial + line, b""
            self._line(line.rstrip(b"\r"))

    def _line(self, line: bytes) -> None:
        if not line:
            self._dispatch()
        elif line.startswith(b"event:"):
            self._event = line[6:].strip()
        elif line.startswith(b"data:") and self._event in (b"message_start", b"message_delta", b""):
            self._data.append(line[5:].lstrip(b" "))

    def _dispatch(self) -> None:
        data, self._data, self._event = self._data, [], b""
        if not data:
            return
        try:
            event = json.loads(b"\n".join(data))
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        if event.get("type") == "message_start" and isinstance(event.get("message"), dict):
            message = event["message"]
            self.seen = True
            if isinstance(message.get("model"), str):
                self.model = message["model"]
            if isinstance(message.get("usage"), dict):
                self.usage.update(message["usage"])
        elif event.get("type") == "message_delta" and isinstance(event.get("usage"), dict):
            self.seen = True
            # Cumulative counts; a null (unknown) field does not erase what the start said.
            self.usage.update({k: v for k, v in event["usage"].items() if v is not None})


# -- the relay --------------------------------------------------------------------------------------


@dataclass
class _Open:
    task_id: str
    token: str
    directory: Path
    site: web.SockSite
    usage: TaskUsage
    inflight: set[asyncio.Task[Any]] = field(default_factory=set)


_RUNNING: weakref.WeakSet[Relay] = weakref.WeakSet()  # started and not stopped, for stop_all()


def stop_all() -> None:
    """Stop every relay of this process (a test's end, an embedding program's exit); never raises."""
    for relay in list(_RUNNING):
        relay.stop()


class Relay:
    """One relay per daemon; tasks are opened and closed as their containers come and go."""

    def __init__(
        self,
        directory: Path,
        upstream: str,
        credential: ClaudeCredential,
        *,
        clock: Callable[[], float] = time.time,
        socket_owner: tuple[int, int] | None = None,
        bounds: RelayBounds | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.upstream = URL(upstream.rstrip("/"))
        if self.upstream.scheme not in ("http", "https") or not self.upstream.host:
            msg = f"the relay's upstream must be an http(s) URL, not {upstream!r}"
            raise RelayError(msg)
        self._credential = credential
        REDACTOR.add(*(v for v in (credential.api_key, credential.oauth_token) if v))
        self._clock = clock
        self._owner = socket_owner
        self.bounds = bounds or RelayBounds()
        self._lock = threading.Lock()  # guards the dicts below, read by callers and the loop
        self._open: dict[str, _Open] = {}
        self._by_socket: dict[str, str] = {}
        self._closed: dict[str, TaskUsage] = {}
        self._last_limit: LimitSeen | None = None
        self._last_ok: float | None = None
        self._secret: bytes | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ops = threading.Lock()  # one open/close/start/stop at a time

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        with self._ops:
            if self._loop is not None:
                return
            _private_dir(self.directory, 0o700)
            self._secret = _load_secret(self.directory / SECRET_NAME)
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="claude-relay", daemon=True)
            thread.start()
            self._loop, self._thread = loop, thread
            try:
                self._call(self._setup())
            except BaseException:
                self._teardown()
                raise
            _RUNNING.add(self)
            log.info("credential relay started in %s (upstream %s)", self.directory, self.upstream)

    def stop(self) -> None:
        """Close every listener and connection; safe to call twice, never raises. Task directories stay
        (running containers keep their mount): a restarted relay's ``open`` binds the socket again."""
        with self._ops:
            if self._loop is None:
                return
            try:
                self._call(self._shutdown(), timeout=10)
            except Exception as exc:  # stop must not raise: it runs on the way out
                log.warning("credential relay did not stop cleanly: %s", exc)
            self._teardown()
            _RUNNING.discard(self)
            log.info("credential relay stopped")

    def _teardown(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        self._runner = self._session = None
        with self._lock:
            for task in self._open.values():
                self._keep_closed(task)
            self._open.clear()
            self._by_socket.clear()
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=10)
        if loop is not None and not loop.is_running():
            loop.close()

    def __enter__(self) -> Relay:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _setup(self) -> None:
        app = web.Application(client_max_size=self.bounds.max_body_bytes)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(
            app,
            access_log=None,  # a request line per model call would flood the daemon's log
            keepalive_timeout=self.bounds.idle_timeout_s,
            shutdown_timeout=1.0,
            handle_signals=False,
        )
        await runner.setup()
        self._runner = runner
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.bounds.max_connections),
            timeout=aiohttp.ClientTimeout(
                total=None, connect=self.bounds.connect_timeout_s, sock_read=self.bounds.read_timeout_s
            ),
            auto_decompress=False,  # bytes pass through as the API sent them
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=True,  # HTTPS_PROXY/NO_PROXY as the daemon's other HTTP clients (requests) honour them
        )

    async def _shutdown(self) -> None:
        with self._lock:
            tasks = list(self._open.values())
        for task in tasks:
            await self._unlisten(task)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _call(self, coro: Any, timeout: float = 30) -> Any:
        if self._loop is None:
            coro.close()
            msg = "the credential relay is not started"
            raise RelayError(msg)
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # -- tasks ---------------------------------------------------------------------------------------

    def token(self, task_id: str) -> str:
        """The task's token: the same for the same secret, so it survives a daemon restart."""
        if self._secret is None:
            msg = "the credential relay is not started"
            raise RelayError(msg)
        _check_task_id(task_id)
        digest = hmac.new(self._secret, task_id.encode(), hashlib.sha256).hexdigest()
        return TOKEN_PREFIX + digest

    def task_directory(self, task_id: str) -> Path:
        """``<directory>/<key>``: a short key (socket paths are limited to 107 bytes), not secret."""
        _check_task_id(task_id)
        return self.directory / hashlib.sha256(task_id.encode()).hexdigest()[:16]

    def open(self, task_id: str) -> RelayGrant:
        """Listen for the task (idempotent: the same directory and token each time). After a daemon
        restart this binds the socket again in the directory a running container has mounted. A task
        opened again after ``close`` starts a new meter."""
        with self._ops:
            if self._loop is None:
                msg = "the credential relay is not started"
                raise RelayError(msg)
            token = self.token(task_id)
            REDACTOR.add(token)
            directory = self.task_directory(task_id)
            with self._lock:
                current = self._open.get(task_id)
            if current is not None and (directory / SOCKET_NAME).exists():
                return self._grant(current)
            if current is not None:  # its socket was removed under us: listen again
                self._call(self._unlisten(current))
            sock = self._bind(directory)
            try:
                site = self._call(self._listen(sock))
            except BaseException:
                sock.close()
                raise
            with self._lock:
                usage = current.usage if current is not None else TaskUsage()
                self._closed.pop(task_id, None)
                task = _Open(task_id, token, directory, site, usage)
                self._open[task_id] = task
                self._by_socket[str(directory / SOCKET_NAME)] = task_id
            log.info("credential relay opened for task %s (%s)", task_id, directory.name)
            return self._grant(task)

    def close(self, task_id: str) -> None:
        """The task's token stops working at once, in-flight requests are cut, and its socket and
        directory are removed. Its metered usage stays readable (``usage``) until it is opened again or
        ``forget`` is called. Unknown or closed tasks: nothing to do."""
        with self._ops:
            with self._lock:
                task = self._open.pop(task_id, None)
                if task is not None:
                    self._by_socket.pop(str(task.directory / SOCKET_NAME), None)
                    self._keep_closed(task)
            if task is not None and self._loop is not None:
                try:
                    self._call(self._unlisten(task), timeout=10)
                except Exception as exc:
                    log.warning("credential relay: closing task %s: %s", task_id, exc)
            directory = task.directory if task is not None else self.task_directory(task_id)
            shutil.rmtree(directory, ignore_errors=True)
            if task is not None:
                log.info("credential relay closed for task %s", task_id)

    def forget(self, task_id: str) -> None:
        """Drop a closed task's kept figures."""
        with self._lock:
            self._closed.pop(task_id, None)

    def sweep(self, keep: Iterable[str]) -> list[Path]:
        """Remove task directories left by an earlier daemon for tasks not in ``keep`` nor open (after a
        restart, once the running tasks are known). Returns what was removed."""
        wanted = {self.task_directory(t).name for t in keep}
        with self._lock:
            wanted |= {t.directory.name for t in self._open.values()}
        removed = []
        if not self.directory.is_dir():
            return removed
        for entry in self.directory.iterdir():
            if entry.is_dir() and not entry.is_symlink() and entry.name not in wanted:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
        return removed

    def open_tasks(self) -> list[str]:
        with self._lock:
            return sorted(self._open)

    def tokens(self) -> list[str]:
        """The tokens of the open tasks (all also registered with the log redactor)."""
        with self._lock:
            return [t.token for t in self._open.values()]

    def usage(self, task_id: str) -> TaskUsage:
        """A snapshot of what the task used since it was opened (zeros for a task the relay never saw)."""
        with self._lock:
            task = self._open.get(task_id)
            usage = task.usage if task is not None else self._closed.get(task_id)
            return copy.deepcopy(usage) if usage is not None else TaskUsage()

    def last_limit(self) -> LimitSeen | None:
        with self._lock:
            return self._last_limit

    def last_ok(self) -> float | None:
        """When (the injected clock) a model call last got a successful answer: after ``last_limit``'s
        ``seen_at``, the limit is over."""
        with self._lock:
            return self._last_ok

    # -- internals: sockets --------------------------------------------------------------------------

    def _grant(self, task: _Open) -> RelayGrant:
        return RelayGrant(task.task_id, task.directory, task.token, {self._credential.env_name: task.token})

    def _bind(self, directory: Path) -> socket.socket:
        path = directory / SOCKET_NAME
        if len(os.fsencode(path)) > UNIX_PATH_MAX:
            msg = f"the relay socket path {path} is over {UNIX_PATH_MAX} bytes: use a shorter STATE_DIR"
            raise RelayError(msg)
        # 0711: the container's user passes through to the socket; it can neither list nor write here.
        _private_dir(directory, 0o711)
        forwarder = directory / FORWARDER_NAME
        _write_file(forwarder, forwarder_source(), 0o644)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a socket left by a stopped daemon
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
            os.chmod(path, 0o600)
            if self._owner is not None:
                os.chown(path, *self._owner)
            sock.listen(128)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            msg = f"cannot listen on {path}: {exc.strerror or exc}"
            raise RelayError(msg) from None
        return sock

    async def _listen(self, sock: socket.socket) -> web.SockSite:
        assert self._runner is not None
        site = web.SockSite(self._runner, sock)
        await site.start()
        return site

    async def _unlisten(self, task: _Open) -> None:
        for running in list(task.inflight):
            running.cancel()
        with contextlib.suppress(Exception):
            await task.site.stop()
        with contextlib.suppress(FileNotFoundError):
            (task.directory / SOCKET_NAME).unlink()

    def _keep_closed(self, task: _Open) -> None:
        # Called with self._lock held.
        self._closed.pop(task.task_id, None)
        self._closed[task.task_id] = task.usage
        while len(self._closed) > _KEPT_CLOSED:
            self._closed.pop(next(iter(self._closed)))

    # -- internals: requests -------------------------------------------------------------------------

    def _task_of(self, request: web.Request) -> _Open | None:
        transport = request.transport
        where = transport.get_extra_info("sockname") if transport is not None else None
        with self._lock:
            task_id = self._by_socket.get(where) if isinstance(where, str) else None
            return self._open.get(task_id) if task_id is not None else None

    def _authorized(self, request: web.Request, task: _Open) -> bool:
        given = request.headers.get("x-api-key", "")
        if not given:
            scheme, _, value = request.headers.get("authorization", "").partition(" ")
            given = value.strip() if scheme.lower() == "bearer" else ""
        return hmac.compare_digest(given.encode(), task.token.encode())

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        task = self._task_of(request)
        # The CLI's start-up connectivity probe (HEAD /) carries no credential: it is forwarded bare.
        probe = request.method == "HEAD" and request.path == "/"
        if task is None or not (probe or self._authorized(request, task)):
            why = "invalid x-api-key" if task is not None else "the relay has no open task on this socket"
            return _error(401, "authentication_error", f"{why} (credential relay)")
        running = asyncio.current_task()
        if running is not None:
            task.inflight.add(running)
        try:
            return await self._forward(request, task, bare=probe)
        finally:
            if running is not None:
                task.inflight.discard(running)

    async def _read_body(self, request: web.Request) -> bytes | web.Response:
        declared = request.content_length
        if declared is not None and declared > self.bounds.max_body_bytes:
            return _too_large(self.bounds.max_body_bytes)
        try:
            async with asyncio.timeout(self.bounds.body_timeout_s):
                return await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _too_large(self.bounds.max_body_bytes)
        except TimeoutError:
            return _error(408, "timeout_error", "the request body did not arrive in time (credential relay)")

    def _outgoing_headers(self, request: web.Request, *, bare: bool) -> dict[str, str]:
        named = {v.strip().lower() for v in request.headers.getall("connection", []) for v in v.split(",")}
        headers: dict[str, str] = {}
        for name, value in request.headers.items():
            lower = name.lower()
            if lower in _NOT_FORWARDED_OUT or lower in named:
                continue
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        # Uncompressed answers: the meter reads them as they pass, and the container's side is loopback.
        headers["Accept-Encoding"] = "identity"
        if bare:
            return headers
        credential = self._credential
        if credential.api_key:
            headers["x-api-key"] = credential.api_key
        else:
            headers["Authorization"] = f"Bearer {credential.oauth_token}"
            key = next((k for k in headers if k.lower() == "anthropic-beta"), None)
            betas = [b.strip() for b in headers.pop(key, "").split(",") if b.strip()] if key else []
            if OAUTH_BETA not in betas:
                betas.insert(0, OAUTH_BETA)
            headers[key or "anthropic-beta"] = ",".join(betas)
        return headers

    async def _forward(self, request: web.Request, task: _Open, *, bare: bool) -> web.StreamResponse:
        body = await self._read_body(request)
        if isinstance(body, web.Response):
            return body
        assert self._session is not None
        # The path and query exactly as the CLI sent them, below the upstream's own path (a gateway's).
        url = URL(str(self.upstream).rstrip("/") + request.raw_path, encoded=True)
        metered = request.method == "POST" and request.path == "/v1/messages"
        try:
            upstream = await self._session.request(
                request.method,
                url,
                headers=self._outgoing_headers(request, bare=bare),
                data=body or None,
                allow_redirects=False,
                skip_auto_headers=("User-Agent", "Content-Type"),
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("credential relay: the Claude API did not answer: %s", type(exc).__name__)
            why = f"the credential relay could not reach the Claude API ({type(exc).__name__})"
            return _error(502, "api_error", why)
        async with upstream:
            return await self._stream_back(request, task, upstream, metered, body)

    async def _stream_back(
        self,
        request: web.Request,
        task: _Open,
        upstream: aiohttp.ClientResponse,
        metered: bool,
        body: bytes,
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        named = {v.strip().lower() for v in upstream.headers.getall("connection", []) for v in v.split(",")}
        for name, value in upstream.headers.items():
            if name.lower() not in _NOT_FORWARDED_BACK and name.lower() not in named:
                response.headers.add(name, value)
        if upstream.content_length is not None and "content-encoding" not in upstream.headers:
            response.content_length = upstream.content_length
        ok = 200 <= upstream.status < 300
        limited = upstream.status in _LIMIT_STATUSES
        content_type = upstream.headers.get("content-type", "")
        sse = _SseMeter() if metered and ok and content_type.startswith("text/event-stream") else None
        captured = bytearray()
        capture = 0
        if metered and ok and sse is None and "content-encoding" not in upstream.headers:
            capture = _CAPTURE_JSON_BYTES
        elif limited:
            capture = _CAPTURE_ERROR_BYTES
        accounted = False

        def account() -> None:
            nonlocal accounted
            if not accounted:
                accounted = True
                self._account(task, request, upstream, metered, ok, limited, sse, bytes(captured), body)

        # Recorded before the client can hold the whole answer (before its last byte): a caller that
        # reads ``usage`` once the CLI has exited sees every request the CLI saw answered.
        expected, sent = upstream.content_length, 0
        try:
            async with asyncio.timeout(self.bounds.write_timeout_s):
                await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                if sse is not None:
                    sse.feed(chunk)
                elif capture and len(captured) < capture:
                    captured += chunk[: capture - len(captured)]
                sent += len(chunk)
                if expected is not None and sent >= expected:
                    account()
                async with asyncio.timeout(self.bounds.write_timeout_s):
                    await response.write(chunk)
            account()
            async with asyncio.timeout(self.bounds.write_timeout_s):
                await response.write_eof()
        finally:
            account()  # what the API answered counts even when the client went away mid-stream
        return response

    def _account(
        self,
        task: _Open,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        metered: bool,
        ok: bool,
        limited: bool,
        sse: _SseMeter | None,
        captured: bytes,
        body: bytes,
    ) -> None:
        now = self._clock()
        if limited:
            seen = LimitSeen(
                status=upstream.status,
                reset_at=limits.reset_from_headers(dict(upstream.headers), now=now),
                seen_at=now,
                transient=upstream.status != 429,
                task_id=task.task_id,
                message=_error_message(captured),
            )
            log.warning(
                "credential relay: the Claude API answered %s for task %s (resets at %s)",
                seen.status,
                task.task_id,
                seen.reset_at,
            )
            with self._lock:
                self._last_limit = seen
        if not metered:
            return
        if not ok:
            with self._lock:
                task.usage.refused += 1
            return
        model, usage = _usage_of(sse, captured)
        if usage is None:
            return
        if not model:
            model = _request_model(body)
        with self._lock:
            task.usage.record(model, usage)
            self._last_ok = now


# -- helpers ------------------------------------------------------------------------------------------


def _usage_of(sse: _SseMeter | None, captured: bytes) -> tuple[str | None, dict[str, Any] | None]:
    if sse is not None:
        return (sse.model, sse.usage) if sse.seen else (None, None)
    try:
        message = json.loads(captured)
    except ValueError:
        return None, None
    if not isinstance(message, dict) or not isinstance(message.get("usage"), dict):
        return None, None
    model = message.get("model")
    return (model if isinstance(model, str) else None), message["usage"]


def _request_model(body: bytes) -> str:
    try:
        parsed = json.loads(body)
    except ValueError:
        return "unknown"
    model = parsed.get("model") if isinstance(parsed, dict) else None
    return model if isinstance(model, str) else "unknown"


def _error_message(captured: bytes) -> str:
    try:
        parsed = json.loads(captured)
    except ValueError:
        return captured[:200].decode(errors="replace")
    error = parsed.get("error") if isinstance(parsed, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) else ""


def _error(status: int, kind: str, message: str) -> web.Response:
    """An answer shaped like the Messages API's own errors, so the CLI reports it as such."""
    payload = {"type": "error", "error": {"type": kind, "message": message}}
    return web.json_response(payload, status=status)


def _too_large(cap: int) -> web.Response:
    return _error(413, "request_too_large", f"the request body exceeds {cap} bytes (credential relay)")


def _check_task_id(task_id: str) -> None:
    if not _TASK_ID.match(task_id):
        msg = f"not a task id the relay accepts (letters, digits, '_', '.', '-'): {task_id!r}"
        raise RelayError(msg)


def _private_dir(path: Path, mode: int) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True, mode=mode)
        if path.is_symlink() or not path.is_dir():
            msg = f"{path} is not a directory"
            raise RelayError(msg)
        os.chmod(path, mode)  # mkdir's mode passes through the umask, and an old one may differ
    except OSError as exc:
        msg = f"cannot prepare the relay directory {path}: {exc.strerror or exc}"
        raise RelayError(msg) from None


def _write_file(path: Path, data: bytes, mode: int) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(temporary, mode)
    os.replace(temporary, path)


def _load_secret(path: Path) -> bytes:
    """The HMAC secret: created once (0600), then read back by every later daemon."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode):
            msg = f"{path} is not a regular file"
            raise RelayError(msg) from None
        if info.st_mode & 0o077:
            os.chmod(path, 0o600)
        value = path.read_bytes().strip()
        if len(value) < 32:
            msg = f"the relay secret {path} is damaged (too short): remove it (running tasks' tokens change)"
            raise RelayError(msg) from None
        return value
    value = secrets.token_hex(32).encode()
    with os.fdopen(fd, "wb") as handle:
        handle.write(value + b"\n")
        handle.flush()
        os.fsync(handle.fileno())
    return value


def forwarder_source() -> bytes:
    """The in-container forwarder (``data/relay-forward.js``)."""
    return resources.files("claude_issue_solver").joinpath("data", FORWARDER_NAME).read_bytes()
