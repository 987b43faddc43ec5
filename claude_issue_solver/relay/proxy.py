"""The relay itself: one asyncio loop serving every open task's socket, checking its token, swapping it for
the real credential and streaming the answer back (see the package's docstring)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import hmac
import logging
import os
import shutil
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from claude_issue_solver import limits
from claude_issue_solver.logs import REDACTOR
from claude_issue_solver.relay.base import (
    _CAPTURE_ERROR_BYTES,
    _CAPTURE_JSON_BYTES,
    _KEPT_CLOSED,
    _LIMIT_STATUSES,
    _NOT_FORWARDED_BACK,
    _NOT_FORWARDED_OUT,
    FORWARDER_NAME,
    OAUTH_BETA,
    SECRET_NAME,
    SOCKET_NAME,
    TOKEN_PREFIX,
    UNIX_PATH_MAX,
    ClaudeCredential,
    RelayBounds,
    RelayError,
    RelayGrant,
    _check_task_id,
    _load_secret,
    _private_dir,
    _write_file,
    forwarder_source,
)
from claude_issue_solver.relay.metering import LimitSeen, _error_message, _request_model, _SseMeter, _usage_of
from claude_issue_solver.relay.pricing import TaskUsage

log = logging.getLogger(__name__)


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
                # It works no more; its shape (cis-relay- and the HMAC) stays masked in every log.
                REDACTOR.discard(task.token)
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


def _error(status: int, kind: str, message: str) -> web.Response:
    """An answer shaped like the Messages API's own errors, so the CLI reports it as such."""
    payload = {"type": "error", "error": {"type": kind, "message": message}}
    return web.json_response(payload, status=status)


def _too_large(cap: int) -> web.Response:
    return _error(413, "request_too_large", f"the request body exceeds {cap} bytes (credential relay)")
