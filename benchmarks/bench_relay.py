"""What the credential relay costs: added latency per streamed request, and the per-task overhead.

Upstream is the loopback Messages API of the tests (``tests/fakes/fake_anthropic.py``) on 127.0.0.1.

1. Latency: ``--requests`` streamed ``POST /v1/messages`` on one kept-alive connection each way, timed
   from sending to the last byte of the event stream:
   - direct: TCP to the loopback API (the baseline);
   - relay: the task's Unix socket, the relay, then the API (what the daemon adds);
   - relay+forwarder: TCP to the node forwarder, the socket, the relay, the API (the container's path).
   p50/p95 of each, and the added p50/p95 over the baseline.
2. Concurrency: ``--concurrency`` clients at once through the relay, each sending ``--requests /
   concurrency`` requests; requests per second and p95.
3. Per task: ``open`` + the first request on a new connection + ``close``, over ``--tasks`` tasks, and the
   daemon's RSS before and after (memory stays flat as tasks come and go).

Usage: python benchmarks/bench_relay.py [--requests 200] [--concurrency 20] [--tasks 200]
Bounded: every loop has a count; only 127.0.0.1 and Unix sockets in a temporary directory are used.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from claude_issue_solver.relay import FORWARDER_NAME, ClaudeCredential, Relay

KEY = "sk-ant-api03-bench-0123456789abcdef"
BODY = json.dumps(
    {
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 1000,
        "stream": True,
        "messages": [{"role": "user", "content": "hello " * 2000}],  # ~12 KB, a short conversation
        "tools": [{"name": "Write", "input_schema": {"type": "object"}}],
    }
)


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=30)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self.path))
        self.sock = sock


def one_request(connection: http.client.HTTPConnection, key: str) -> float:
    started = time.perf_counter()
    connection.request(
        "POST", "/v1/messages?beta=true", BODY, {"x-api-key": key, "content-type": "application/json"}
    )
    response = connection.getresponse()
    body = response.read()
    elapsed = time.perf_counter() - started
    if response.status != 200 or b"message_stop" not in body:
        msg = f"unexpected answer {response.status}: {body[:200]!r}"
        raise RuntimeError(msg)
    return elapsed


def series(make: Callable[[], http.client.HTTPConnection], key: str, count: int) -> list[float]:
    connection = make()
    try:
        for _ in range(5):  # warm-up: connections, code paths
            one_request(connection, key)
        return [one_request(connection, key) for _ in range(count)]
    finally:
        connection.close()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(value: float) -> str:
    return f"{value * 1000:.2f} ms"


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--tasks", type=int, default=200)
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.fakes import fake_anthropic
    from tests.fakes.fake_anthropic import FakeAnthropic

    # The fake writes its headers and body in two sends; with Nagle on, each answer waits ~40 ms for a
    # delayed ACK, which would drown what the relay adds. Benchmark-only: the tests keep the fake as is.
    fake_anthropic._Handler.disable_nagle_algorithm = True

    node = shutil.which("node")
    base = Path(tempfile.mkdtemp(prefix="rlb-", dir="/tmp"))
    with FakeAnthropic(api_key=KEY) as api:
        relay = Relay(base / "relay", api.url, ClaudeCredential(api_key=KEY))
        relay.start()
        try:
            grant = relay.open("bench-1")
            direct = series(
                lambda: http.client.HTTPConnection("127.0.0.1", api.port, timeout=30), KEY, args.requests
            )
            relayed = series(lambda: UnixHTTPConnection(grant.socket), grant.token, args.requests)
            rows = [("direct (TCP to the API)", direct), ("relay (Unix socket)", relayed)]
            forwarder = None
            if node is not None:
                port = free_port()
                script = str(grant.directory / FORWARDER_NAME)
                command = [
                    node,
                    script,
                    "--port",
                    str(port),
                    "--socket",
                    str(grant.socket),
                    "--",
                    "sleep",
                    "600",
                ]
                forwarder = subprocess.Popen(command)
                deadline = time.monotonic() + 10
                while True:
                    try:
                        socket.create_connection(("127.0.0.1", port), timeout=1).close()
                        break
                    except OSError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.02)
                forwarded = series(
                    lambda: http.client.HTTPConnection("127.0.0.1", port, timeout=30),
                    grant.token,
                    args.requests,
                )
                rows.append(("relay + node forwarder (TCP)", forwarded))
            print(f"1. latency of one streamed request ({args.requests} requests, {len(BODY)} bytes sent)")
            for name, values in rows:
                print(f"   {name:32} p50 {ms(pct(values, 0.5)):>10}   p95 {ms(pct(values, 0.95)):>10}")
            for name, values in rows[1:]:
                added50 = pct(values, 0.5) - pct(direct, 0.5)
                added95 = pct(values, 0.95) - pct(direct, 0.95)
                print(f"   added by {name:23} p50 {ms(added50):>10}   p95 {ms(added95):>10}")
            if forwarder is not None:
                forwarder.terminate()
                forwarder.wait(timeout=10)

            # 2. concurrency
            per_client = max(1, args.requests // args.concurrency)
            times: list[float] = []
            lock = threading.Lock()

            def client() -> None:
                got = series(lambda: UnixHTTPConnection(grant.socket), grant.token, per_client)
                with lock:
                    times.extend(got)

            started = time.perf_counter()
            threads = [threading.Thread(target=client) for _ in range(args.concurrency)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wall = time.perf_counter() - started
            total = args.concurrency * (per_client + 5)
            print(f"2. {args.concurrency} concurrent clients through the relay, {total} requests")
            print(f"   {total / wall:.0f} requests/s, p50 {ms(pct(times, 0.5))}, p95 {ms(pct(times, 0.95))}")

            # 3. per task
            before = rss_kib()
            opens, firsts, closes = [], [], []
            for n in range(args.tasks):
                task_id = f"bench-task-{n}"
                t0 = time.perf_counter()
                task = relay.open(task_id)
                t1 = time.perf_counter()
                connection = UnixHTTPConnection(task.socket)
                one_request(connection, task.token)
                connection.close()
                t2 = time.perf_counter()
                relay.close(task_id)
                relay.forget(task_id)
                with api._state.lock:  # the fake records every request it saw: not the relay's memory
                    api._state.requests.clear()
                t3 = time.perf_counter()
                opens.append(t1 - t0)
                firsts.append(t2 - t1)
                closes.append(t3 - t2)
            after = rss_kib()
            whole = [a + b + c for a, b, c in zip(opens, firsts, closes, strict=True)]
            print(f"3. per task ({args.tasks} tasks): open + first request on a new connection + close")
            print(f"   open  p50 {ms(pct(opens, 0.5)):>10}   p95 {ms(pct(opens, 0.95)):>10}")
            print(f"   first p50 {ms(pct(firsts, 0.5)):>10}   p95 {ms(pct(firsts, 0.95)):>10}")
            print(f"   close p50 {ms(pct(closes, 0.5)):>10}   p95 {ms(pct(closes, 0.95)):>10}")
            print(f"   all   p50 {ms(pct(whole, 0.5)):>10}   p95 {ms(pct(whole, 0.95)):>10}")
            print(f"   RSS before {before} KiB, after {after} KiB ({after - before:+d} KiB)")
            print(f"   metered cost of the benchmark task: ${relay.usage('bench-1').cost_usd:.4f}")
        finally:
            relay.stop()
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
