"""HTTP plumbing shared by the loopback fakes (GitHub, Daytona): a threaded HTTP/1.1 server whose
``stop`` can cut idle keep-alive connections, and a handler base that keeps answers fast."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, BinaryIO, Generic, Protocol, Self, TypeVar

_log = logging.getLogger(__name__)


class LoopbackServer(ThreadingHTTPServer):
    """Remembers open connections so a fake's ``stop()`` can cut the keep-alives clients pool."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, fake: Any, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self.fake = fake
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def track(self, conn: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(conn)

    def untrack(self, conn: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(conn)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up (timeouts in tests, ``stop()``) are normal here: log, don't print."""
        _log.debug(
            "%s: connection from %s ended abruptly", type(self.fake).__name__, client_address, exc_info=True
        )

    def close_connections(self) -> None:
        with self._connections_lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class LoopbackHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive (PyGithub, urllib3 and httpx pool connections; git sends
    ``Expect: 100-continue`` and chunked bodies, which only HTTP/1.1 servers handle)."""

    protocol_version = "HTTP/1.1"
    server: LoopbackServer
    timeout = 120  # idle keep-alive connections are closed after this many seconds

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle's algorithm and the client's
        # delayed ACK add ~40 ms to every answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("%s: " + format, type(self.server.fake).__name__, *args)

    def read_body(self) -> bytes:
        """The request body, by Content-Length or chunked (git sends chunked pushes past its buffer)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return read_chunked(self.rfile)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def dispatch(self) -> None:
        raise NotImplementedError

    def do_GET(self) -> None:
        self.dispatch()

    def do_POST(self) -> None:
        self.dispatch()

    def do_PATCH(self) -> None:
        self.dispatch()

    def do_PUT(self) -> None:
        self.dispatch()

    def do_DELETE(self) -> None:
        self.dispatch()


def read_chunked(stream: BinaryIO) -> bytes:
    """Decode a ``Transfer-Encoding: chunked`` body."""
    out = bytearray()
    while True:
        line = stream.readline(65537)
        if not line:
            raise ConnectionError("connection closed inside a chunked body")
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while stream.readline(65537) not in (b"\r\n", b"\n", b""):
                pass  # skip trailers
            return bytes(out)
        chunk = stream.read(size)
        if len(chunk) != size:
            raise ConnectionError("connection closed inside a chunk")
        out += chunk
        stream.readline(3)  # the CRLF closing the chunk


class _Recorded(Protocol):
    method: str
    path: str


RequestT = TypeVar("RequestT", bound=_Recorded)


class LoopbackFake(Generic[RequestT]):
    """Lifecycle and request log of a fake served by a :class:`LoopbackServer` in a daemon thread.

    Subclasses set ``self._server``, ``self._lock`` and ``self._requests`` in their constructor and may
    extend :meth:`stop`.
    """

    _server: LoopbackServer
    _thread: threading.Thread | None = None
    _lock: threading.Lock | threading.RLock
    _requests: list[RequestT]

    @property
    def requests(self) -> list[RequestT]:
        """A snapshot of the requests answered so far (oldest first)."""
        with self._lock:
            return list(self._requests)

    def requests_to(self, path_prefix: str, method: str | None = None) -> list[RequestT]:
        """Recorded requests whose path starts with ``path_prefix`` (and with ``method`` if given)."""
        return [
            r
            for r in self.requests
            if r.path.startswith(path_prefix) and (method is None or r.method == method)
        ]

    def start(self) -> Self:
        """Serve in a daemon thread; returns self so ``fake = FakeX(path).start()`` reads well."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever, name=type(self).__name__, kwargs={"poll_interval": 0.05}
            )
            self._thread.daemon = True
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and cut open keep-alive connections, so clients see the server go away."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._server.close_connections()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
