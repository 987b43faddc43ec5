"""The daemon's HTTP listener: ``POST`` webhooks, ``GET /metrics``, ``GET /healthz``.

Served by waitress (Pylons' pure-Python WSGI server) in a thread of its own. waitress reads every
connection in one selector loop (the ``listener`` thread) and hands only a *complete* request to a
bounded pool of ``WORKERS`` threads, so a client that trickles its request a byte at a time holds a
socket, never a thread, and a signed delivery behind a crowd of such clients is read and answered at
once. On top of waitress's own limits (connections, header and body sizes, idle connections) the
listener closes a connection whose request is not whole ``REQUEST_DEADLINE`` seconds after it began,
however steadily it trickles: waitress's ``channel_timeout`` counts only silence.

Nothing the server does is written to stderr (``daemon.out``): waitress's own records go through the
daemon's logger (the rotated ``daemon.log``), each message at most once a minute; a refused request and
each request served are logged at DEBUG only.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask, ThreadedTaskDispatcher
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wrappers import Request, Response

from claude_issue_solver.daemon.metrics import Metrics
from claude_issue_solver.github.webhooks import WebhookReceiver

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
Health = Callable[[], tuple[bool, str]]

# GitHub gives up on a delivery it could not hand over in 10 s: a request (headers and body) must be
# whole within as long from the connection (or from its first byte, on a kept-alive connection).
REQUEST_DEADLINE = 10
WORKERS = 4  # threads that answer complete requests; reading them costs no thread
MAX_CONNECTIONS = 1000  # open at once, and at most half the process's file limit
MAX_HEADER_BYTES = 32 * 1024  # GitHub's headers are under 2 kB
MAX_BODY_BYTES = 64 * 1024  # for the routes that take no body (/metrics, /healthz)
LOG_REPEAT_INTERVAL = 60.0  # the same message of the server's at most once a minute


class ListenerError(Exception):
    """The listener cannot bind its address (in use, not ours, not a valid host)."""


class _ToDaemonLog(logging.Handler):
    """waitress's own records (a connection limit reached, a worker's exception) into our logger.

    Each message at most once a ``LOG_REPEAT_INTERVAL``: a flood never floods the daemon's log.
    """

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self._last: dict[str, float] = {}
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        key = str(record.msg)[:200]
        now = time.monotonic()
        with self._guard:
            if now - self._last.get(key, -LOG_REPEAT_INTERVAL) < LOG_REPEAT_INTERVAL:
                return
            if len(self._last) > 256:
                self._last.clear()
            self._last[key] = now
        record.name = f"{log.name}.server"
        log.handle(record)


def _route_server_log() -> None:
    """Once per process, however many listeners: waitress logs to the daemon's log, never stderr."""
    server_log = logging.getLogger("waitress")
    if not any(isinstance(handler, _ToDaemonLog) for handler in server_log.handlers):
        server_log.addHandler(_ToDaemonLog())
    server_log.setLevel(logging.INFO)
    server_log.propagate = False  # without a handler, Python's last resort would print to stderr


class _Refusal(ErrorTask):
    """waitress's answer to a request its parser refused (400, 413, 431...), reported to the listener."""

    def execute(self) -> None:
        server = self.channel.server
        if isinstance(server, _Server):
            server.on_refused(self.request)
        super().execute()


class _Channel(HTTPChannel):
    """One connection; remembers when its unfinished request began (``None`` between requests)."""

    error_task_class = _Refusal

    def __init__(self, server: Any, sock: socket.socket, addr: Any, adj: Adjustments, map: Any = None):
        super().__init__(server, sock, addr, adj, map)
        self.request_began: float | None = time.monotonic()  # a client that sends nothing counts too

    def received(self, data: bytes) -> bool:
        if self.request_began is None and data:
            self.request_began = time.monotonic()
        result = bool(super().received(data))
        if self.request is None:  # whole (and handed to a worker), or nothing begun: no clock running
            self.request_began = None
        return result


class _Server(TcpWSGIServer):
    """waitress's TCP server on a socket we bound, with the whole-request deadline."""

    channel_class = _Channel

    def __init__(
        self,
        app: Callable[..., Any],
        sock: socket.socket,
        *,
        adj: Adjustments,
        dispatcher: ThreadedTaskDispatcher,
        socket_map: dict[int, Any],
        deadline: float,
        on_refused: Callable[[Any], None],
        on_late: Callable[[Any], None],
    ) -> None:
        self.deadline = deadline
        self.on_refused = on_refused
        self.on_late = on_late
        sockinfo = (sock.family, sock.type, sock.proto, sock.getsockname())
        super().__init__(
            app, socket_map, _sock=sock, dispatcher=dispatcher, adj=adj, bind_socket=False, sockinfo=sockinfo
        )

    def maintenance(self, now: float) -> None:
        """Close what waited too long (the loop thread calls it every ``cleanup_interval``).

        A request not whole ``deadline`` seconds after it began (however steadily it trickles), and a
        kept-alive connection silent for ``channel_timeout``; never one whose response is being made.
        """
        cutoff = time.monotonic() - self.deadline
        idle = now - self.adj.channel_timeout
        for channel in list(self.active_channels.values()):
            if channel.requests or channel.will_close:
                continue
            began = getattr(channel, "request_began", None)
            if began is not None and began < cutoff:
                channel.will_close = True  # closed by the loop at its next turn
                self.on_late(channel.addr)
            elif began is None and channel.last_activity < idle:
                channel.will_close = True


class Listener:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        metrics: Metrics,
        health: Health,
        webhooks: WebhookReceiver | None = None,
        webhook_path: str = "/webhook",
        request_deadline: int = REQUEST_DEADLINE,
        workers: int = WORKERS,
    ) -> None:
        self.metrics = metrics
        self.health = health
        self.webhooks = webhooks
        self.webhook_path = webhook_path
        self.workers = workers
        _route_server_log()
        # Bound here, so that a port in use is one readable line at ``start`` (exit code 2).
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            bound = socket.create_server((host, port), family=family, backlog=1024)
        except OSError as exc:
            reason = (exc.strerror or str(exc)).split(" (while attempting")[0]
            msg = f"LISTEN_ADDRESS={host}:{port} cannot be bound: {reason}"
            raise ListenerError(msg) from None
        body_limit = webhooks.max_bytes if webhooks is not None else MAX_BODY_BYTES
        adj = Adjustments(
            threads=workers,
            connection_limit=_connection_limit(),
            channel_timeout=request_deadline,  # a kept-alive connection that sends nothing
            cleanup_interval=1,  # look for connections past their deadline every second
            asyncore_use_poll=True,  # select() stops at 1024 descriptors
            max_request_header_size=MAX_HEADER_BYTES,
            max_request_body_size=max(body_limit, MAX_BODY_BYTES),
            ident="claude-issue-solver",
        )
        self._map: dict[int, Any] = {}
        self._dispatcher = ThreadedTaskDispatcher()
        self._server = _Server(
            self._app,
            bound,
            adj=adj,
            dispatcher=self._dispatcher,
            socket_map=self._map,
            deadline=request_deadline,
            on_refused=self._refused,
            on_late=self._late,
        )
        self._sockname = bound.getsockname()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        metrics.listener_connections.set_function(self.connections)
        if host not in LOOPBACK_HOSTS:
            log.warning(
                "the listener binds %s:%s, reachable from other machines: put it behind a reverse proxy "
                "or tunnel that forwards only %s, never /metrics",
                host,
                port,
                webhook_path,
            )

    @property
    def port(self) -> int:
        return int(self._sockname[1])

    @property
    def address(self) -> str:
        host = self._sockname[0]
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def connections(self) -> int:
        """Connections open now (read, being answered or kept alive)."""
        return len(self._server.active_channels)

    def start(self) -> None:
        self._dispatcher.set_thread_count(self.workers)
        self._thread = threading.Thread(target=self._serve, name="listener", daemon=True)
        self._thread.start()
        log.info("listening on http://%s (%s)", self.address, ", ".join(self._routes()))

    def stop(self) -> None:
        """Stop serving, close every connection and the socket; safe to call twice, never raises."""
        self._stopping.set()
        if self._thread is not None and self._thread.is_alive():
            with contextlib.suppress(OSError):
                self._server.pull_trigger()  # the loop wakes, sees the flag and closes everything
            self._thread.join(5)
        if self._thread is None or not self._thread.is_alive():
            self._close_all()  # never started (a refused start), or already done by the loop
        self._dispatcher.shutdown(timeout=5)
        if self.webhooks is not None:
            self.webhooks.flush()

    def _serve(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    wasyncore.loop(timeout=1, map=self._map, use_poll=True, count=1)
                except Exception:  # the listener must outlive one bad turn
                    log.exception("the listener's loop failed; it goes on")
                    self._stopping.wait(1)
        finally:
            self._close_all()

    def _close_all(self) -> None:
        for dispatcher in list(self._map.values()):
            with contextlib.suppress(Exception):
                if isinstance(dispatcher, HTTPChannel):
                    dispatcher.handle_close()
                else:
                    dispatcher.close()
        self._map.clear()

    def _routes(self) -> list[str]:
        routes = ["/metrics", "/healthz"]
        if self.webhooks is not None:
            routes.insert(0, f"POST {self.webhook_path}")
        return routes

    # --- what the server reports --------------------------------------------------------------------

    def _refused(self, request: Any) -> None:
        """A request waitress's parser refused (a worker thread); nothing of the client's text is logged."""
        error = request.error
        path = getattr(request, "path", "") or ""
        if error.code == 413 and self.webhooks is not None and path == self.webhook_path:
            self.webhooks.too_large()  # counted with the deliveries it would have been
        else:
            self.metrics.listener_refused.labels("bad_request").inc()
        log.debug("refused a request: %s %s", error.code, error.reason)

    def _late(self, addr: Any) -> None:
        """A connection whose request was not whole in time (the loop thread)."""
        self.metrics.listener_refused.labels("deadline").inc()
        log.debug("closed a connection from %s: its request was not whole in time", addr)

    # --- the WSGI application ----------------------------------------------------------------------

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        try:
            response = self._route(request)
        except Exception:  # one bad request must not take the listener down
            log.exception("the listener failed on %s %r", request.method, request.path[:200])
            response = Response("internal error\n", 500, mimetype="text/plain")
        log.debug("%s %r -> %d", request.method, request.path[:200], response.status_code)
        return response(environ, start_response)

    def _route(self, request: Request) -> Response:
        path = request.path
        if self.webhooks is not None and path == self.webhook_path:
            if request.method != "POST":
                return _text(405, "POST only\n")
            return self._webhook(request)
        if request.method not in ("GET", "HEAD"):
            return _text(405, "GET only\n")
        if path == "/metrics":
            return Response(
                self.metrics.render(), 200, content_type="text/plain; version=0.0.4; charset=utf-8"
            )
        if path == "/healthz":
            ok, reason = self.health()
            return _text(200 if ok else 503, reason + "\n")
        return _text(404, "not found\n")

    def _webhook(self, request: Request) -> Response:
        assert self.webhooks is not None
        request.max_content_length = self.webhooks.max_bytes
        try:
            body = request.get_data(cache=False)  # whole already: waitress read it before calling us
        except RequestEntityTooLarge:
            answer = self.webhooks.too_large()
        else:
            answer = self.webhooks.handle(request.headers, body)
        return _text(answer.status, answer.message + "\n")


def _connection_limit() -> int:
    """At most ``MAX_CONNECTIONS``, and half the descriptors the process may open (systemd: 1024)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(64, min(MAX_CONNECTIONS, soft // 2))


def _text(status: int, text: str) -> Response:
    return Response(text, status, mimetype="text/plain")
