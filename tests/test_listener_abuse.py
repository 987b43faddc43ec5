"""The listener under abuse, over real sockets on 127.0.0.1 (no Docker needed).

Slow clients that trickle a byte at a time, a request past the whole-request deadline, oversized
delivery ids and headers, captured deliveries replayed under fresh ids, malformed request lines: the
pool stays bounded, a signed delivery is still answered at once, the state file is written a bounded
number of times, and nothing reaches stderr (``daemon.out``).
"""

from __future__ import annotations

import select
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from claude_issue_solver.daemon.listener import Listener
from claude_issue_solver.daemon.metrics import Metrics
from claude_issue_solver.github.webhooks import WebhookReceiver
from claude_issue_solver.store.state import StateStore
from tests.test_webhooks import SECRET, delivery
from tests.waiting import wait_until


class CountingStore(StateStore):
    """The real store, counting its writes of the state file."""

    writes = 0

    def _write(self, payload: bytes) -> None:
        self.writes += 1
        super()._write(payload)


class Served:
    def __init__(self, store: CountingStore, **options: int) -> None:
        self.store = store
        self.poked: list[str] = []
        self.metrics = Metrics()
        self.receiver = WebhookReceiver(
            store,
            SECRET,
            max_bytes=65536,
            on_repository=self.poked.append,
            on_result=lambda result: self.metrics.deliveries.labels(result).inc(),
        )
        self.listener = Listener(
            "127.0.0.1",
            0,
            metrics=self.metrics,
            health=lambda: (True, "ok"),
            webhooks=self.receiver,
            **options,  # type: ignore[arg-type]
        )
        self.url = f"http://127.0.0.1:{self.listener.port}"

    def post(self, headers: dict[str, str], body: bytes, session: requests.Session | None = None) -> int:
        send = session.post if session is not None else requests.post
        return send(self.url + "/webhook", data=body, headers=headers, timeout=10).status_code

    def refused(self, reason: str) -> float:
        return self.metrics.listener_refused.labels(reason)._value.get()


@pytest.fixture
def serve(state_dir: Path) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(**options: int) -> Served:
        served = Served(CountingStore(state_dir / "state.json"), **options)
        served.listener.start()
        started.append(served)
        return served

    yield start
    for served in started:
        served.listener.stop()


class Tricklers:
    """``count`` clients that each send one byte of a request every ``every`` seconds, never finishing."""

    REQUEST = (
        b"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nX-GitHub-Event: issues\r\n" + b"X-Pad: " + b"a" * 4096
    )

    def __init__(self, port: int, count: int, every: float) -> None:
        self.socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]
        self.every = every
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._run, name="tricklers", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + 30  # bounded whatever the test does
        position = 0
        while not self.stop.is_set() and time.monotonic() < deadline:
            byte = self.REQUEST[position % len(self.REQUEST) : position % len(self.REQUEST) + 1]
            for sock in self.socks:
                try:
                    sock.send(byte)
                except OSError:
                    continue
            position += 1
            self.sent = position
            self.stop.wait(self.every)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for sock in self.socks:
            sock.close()


def test_two_hundred_slow_clients_do_not_delay_a_signed_delivery(serve: Callable[..., Served]) -> None:
    before = threading.active_count()
    served = serve()
    slow = Tricklers(served.listener.port, 200, every=0.5)
    try:
        wait_until(lambda: served.listener.connections() >= 200, 10, "the 200 slow clients to be accepted")
        wait_until(lambda: slow.sent >= 3, 10, "each slow client to have sent a few bytes")
        headers, body = delivery()
        sent = time.monotonic()
        assert served.post(headers, body) == 202
        answered = time.monotonic() - sent
        assert answered < 1.0, f"the signed delivery took {answered:.2f} s"
        assert served.poked == ["acme/widgets"]
        # 200 connections open, and the threads are the pool, the loop and the tricklers: not one each.
        assert served.listener.connections() >= 200
        workers = [t for t in threading.enumerate() if t.name.startswith("waitress-")]
        assert len(workers) == served.listener.workers == 4
        assert threading.active_count() <= before + served.listener.workers + 3  # loop, tricklers, a timer
        assert served.refused("deadline") == 0  # still inside their 10 s
    finally:
        slow.close()
    wait_until(lambda: served.listener.connections() == 0, 10, "the closed clients to be gone")


def test_a_request_trickled_past_the_deadline_is_closed(serve: Callable[..., Served]) -> None:
    served = serve(request_deadline=2)
    silent = socket.create_connection(("127.0.0.1", served.listener.port), timeout=5)
    trickler = socket.create_connection(("127.0.0.1", served.listener.port), timeout=5)
    trickler.setblocking(False)
    began = time.monotonic()
    closed_after = None
    request = Tricklers.REQUEST
    for i in range(60):  # a byte every 0.2 s for at most 12 s: never silent, never whole
        try:
            trickler.send(request[i : i + 1])
            if trickler.recv(1024) == b"":
                closed_after = time.monotonic() - began
                break
        except BlockingIOError:
            pass
        except OSError:  # reset: closed as well
            closed_after = time.monotonic() - began
            break
        # The client's pace: the next byte in 0.2 s, unless the server closes the connection before.
        select.select([trickler], [], [], 0.2)
    trickler.close()
    assert closed_after is not None, "the trickling request was never cut"
    assert 2.0 <= closed_after <= 4.5
    silent.settimeout(5)
    assert silent.recv(1024) == b""  # one that sent nothing is closed as well
    silent.close()
    assert served.refused("deadline") >= 1
    # A whole request is answered as before.
    assert requests.get(served.url + "/healthz", timeout=5).text == "ok\n"


def test_an_oversized_delivery_id_or_header_is_refused(serve: Callable[..., Served]) -> None:
    served = serve()
    headers, body = delivery()
    assert served.post({**headers, "X-GitHub-Delivery": "a" * 10_240}, body) == 400
    assert served.post({**headers, "X-GitHub-Delivery": "../../etc passwd"}, body) == 400
    assert served.post({**headers, "X-Pad": "b" * 100_000}, body) == 431  # over the header limit
    served.receiver.flush()
    assert served.poked == [] and served.store.writes == 0
    assert served.refused("bad_request") == 1
    assert served.metrics.deliveries.labels("malformed")._value.get() == 2
    assert served.post(headers, body) == 202  # the same delivery with its real id


def test_replays_under_fresh_ids_poke_once_and_write_once(serve: Callable[..., Served]) -> None:
    served = serve()
    headers, body = delivery()
    session = requests.Session()
    answers: dict[int, int] = {}
    for _ in range(1000):
        status = served.post({**headers, "X-GitHub-Delivery": str(uuid.uuid4())}, body, session)
        answers[status] = answers.get(status, 0) + 1
    served.listener.stop()  # flushes
    assert answers == {202: 1, 200: 999}
    assert served.poked == ["acme/widgets"]
    assert served.store.writes == 1
    book = served.store.read()["webhooks"]
    assert book["deliveries"] == 1 and len(book["seen"]) == 1 and len(book["bodies"]) == 1


def test_a_burst_of_real_deliveries_writes_at_most_once_a_second(serve: Callable[..., Served]) -> None:
    served = serve()
    session = requests.Session()
    ids = []
    started = time.monotonic()
    for number in range(1000):
        headers, body = delivery(issue={"number": number})
        ids.append(headers["X-GitHub-Delivery"])
        assert served.post(headers, body, session) == 202
    elapsed = time.monotonic() - started
    served.listener.stop()
    assert served.poked == ["acme/widgets"] * 1000  # every real delivery pokes
    assert served.store.writes <= elapsed / 1.0 + 2  # once a second, plus the last at stop
    book = served.store.read()["webhooks"]
    assert book["seen"] == ids and book["deliveries"] == 1000  # nothing lost by batching


SERVE = """
import logging, sys
from pathlib import Path
from claude_issue_solver.daemon.listener import Listener
from claude_issue_solver.logs import setup_logging
from claude_issue_solver.daemon.metrics import Metrics

setup_logging(Path(sys.argv[1]), level="DEBUG")
listener = Listener("127.0.0.1", 0, metrics=Metrics(), health=lambda: (True, "ok"), request_deadline=1)
listener.start()
for _ in range(3):  # a record of the server's own, three times: once in the log
    logging.getLogger("waitress.queue").warning("Task queue depth is %d", 7)
print(listener.port, flush=True)
sys.stdin.read()
listener.stop()
"""


def test_malformed_requests_never_reach_stderr(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(log_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None and process.stdin is not None
        port = int(process.stdout.readline())
        for raw in (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # TLS spoken to plain HTTP
            b"NONSENSE\r\n\r\n",
            b"G\x00T /evil-line HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nBroken header line\r\n\r\n",
        ):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(raw)
                reply = sock.recv(1024)
                assert b" 400 " in reply.split(b"\r\n")[0], reply
        # A line waitress takes: a path with a terminal escape in it is logged escaped, never raw.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /\x1b[31mred HTTP/1.1\r\n\r\n")
            assert b" 404 " in sock.recv(1024).split(b"\r\n")[0]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # and never the rest: cut at the deadline
            assert sock.recv(1024) == b""
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        _, err = process.communicate(b"", timeout=30)
    finally:
        process.kill()
        process.wait(10)
    assert process.returncode == 0
    assert err == b""
    text = (log_dir / "daemon.log").read_text()
    assert text.count("refused a request: 400 Bad Request") == 4
    assert "its request was not whole in time" in text
    assert text.count("Task queue depth is 7") == 1
    assert "evil-line" not in text and "\x1b" not in text and "GET '/\\x1b[31mred' -> 404" in text
    assert "GET '/healthz' -> 200" in text  # the request log, at DEBUG
