"""The daemon's HTTP listener: ``POST`` webhooks, ``GET /metrics``, ``GET /healthz``.

Served by werkzeug's threaded WSGI server (``werkzeug.serving.make_server``) in a thread of its own:
a well-kept, pure-Python server that binds at construction (so a port in use is an error at ``start``),
answers each request in its own thread (a slow client never blocks another, nor the dispatcher), and
stops with ``shutdown()``. The traffic is a few requests a second at most; no extra process is needed.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from claude_issue_solver.metrics import Metrics
from claude_issue_solver.webhooks import WebhookReceiver

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
Health = Callable[[], tuple[bool, str]]


class ListenerError(Exception):
    """The listener cannot bind its address (in use, not ours, not a valid host)."""


class _Quiet(logging.Filter):
    # werkzeug logs every request at INFO; a webhook flood must not flood the daemon's log.
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


_QUIET = _Quiet()


class _Handler(WSGIRequestHandler):
    # A client that opens a connection and sends nothing must not hold a thread for ever.
    timeout = 10


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
    ) -> None:
        self.metrics = metrics
        self.health = health
        self.webhooks = webhooks
        self.webhook_path = webhook_path
        logging.getLogger("werkzeug").addFilter(_QUIET)  # the same filter once, however many listeners
        # Bound here, and handed to werkzeug as a file descriptor: werkzeug's own bind prints to stderr
        # and exits on a port in use, and a refusal at ``start`` must be one line and exit code 2.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            bound = socket.create_server((host, port), family=family)
        except OSError as exc:
            reason = (exc.strerror or str(exc)).split(" (while attempting")[0]
            msg = f"LISTEN_ADDRESS={host}:{port} cannot be bound: {reason}"
            raise ListenerError(msg) from None
        with bound:
            self._server: BaseWSGIServer = make_server(
                host, port, self._app, threaded=True, request_handler=_Handler, fd=bound.fileno()
            )
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None
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
        return int(self._server.socket.getsockname()[1])

    @property
    def address(self) -> str:
        host = self._server.socket.getsockname()[0]
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="listener", daemon=True)
        self._thread.start()
        log.info("listening on http://%s (%s)", self.address, ", ".join(self._routes()))

    def stop(self) -> None:
        """Stop serving and close the socket; safe to call twice."""
        if self._thread is not None and self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()
        if self.webhooks is not None:
            self.webhooks.flush()

    def _routes(self) -> list[str]:
        routes = ["/metrics", "/healthz"]
        if self.webhooks is not None:
            routes.insert(0, f"POST {self.webhook_path}")
        return routes

    # --- the WSGI application ----------------------------------------------------------------------

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        try:
            response = self._route(request)
        except Exception:  # one bad request must not take the listener down
            log.exception("the listener failed on %s %s", request.method, request.path)
            response = Response("internal error\n", 500, mimetype="text/plain")
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
        limit = self.webhooks.max_bytes
        request.max_content_length = limit
        try:
            body = request.get_data(cache=False)  # refuses a declared or streamed body over the limit
        except RequestEntityTooLarge:
            answer = self.webhooks.too_large()
        else:
            answer = self.webhooks.handle(request.headers, body)
        return _text(answer.status, answer.message + "\n")


def _text(status: int, text: str) -> Response:
    return Response(text, status, mimetype="text/plain")
