"""Webhook pickup and a bounded delivery load, against a real daemon process on loopback.

The daemon runs as its own process (``start --foreground``) at ``POLL_INTERVAL=600`` on the Docker
backend with the fake agent image, watching the loopback GitHub that this process serves. So only a
webhook can make it look at the repository within the benchmark's time.

1. Pickup: label an issue, POST a signed ``issues.labeled`` delivery, time until the task is running
   (the state file says so). Median and p95 over ``--runs``.
2. Load: ``--deliveries`` deliveries (a quarter forged: a wrong signature) at up to ``--rate`` a second
   from this process, while labelled issues keep arriving. Checks: every valid delivery recorded once,
   no forged one recorded, every refusal counted; and the pickup while under load, beside the idle one.
   Each valid delivery has a body of its own, as GitHub's do (the same body again is a replay).
3. Slow clients: ``--slow`` connections that each send a byte of a request every second and never
   finish, while pickups are timed again (the listener's pool is 4 threads).

Usage: python benchmarks/bench_webhooks.py [--runs 20] [--deliveries 1000] [--rate 100] [--slow 200]
Bounded: every loop has a count and a deadline; only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import docker
import requests

from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.demo_world.images import fake_agent_image
from claude_issue_solver.github.webhooks import signature
from claude_issue_solver.store.queue import TaskQueue, TaskState
from claude_issue_solver.store.state import StateStore

TOKEN = "ghp_benchmarktoken0123456789abcdefABCD"
SECRET = "bench-webhook-secret-0123456789"
REPO = "bench/hooks"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_EDITS = itertools.count()


def labeled_delivery(number: int, *, forged: bool = False) -> tuple[dict[str, str], bytes, str]:
    # A distinct updated_at per delivery, as GitHub's payloads have: an identical body is a replay.
    updated = f"2025-01-01T00:00:00.{next(_EDITS):06d}Z"
    body = json.dumps(
        {
            "action": "labeled",
            "issue": {"number": number, "updated_at": updated},
            "label": {"name": "Claude"},
            "repository": {"full_name": REPO},
            "sender": {"login": "maintainer"},
        }
    ).encode()
    delivery = str(uuid.uuid4())
    headers = {
        "X-GitHub-Event": "issues",
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": signature("guessed" if forged else SECRET, body),
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/bench",
    }
    return headers, body, delivery


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Bench:
    def __init__(self, root: Path, github: FakeGitHub, port: int) -> None:
        self.root = root
        self.github = github
        self.url = f"http://127.0.0.1:{port}"
        self.queue = TaskQueue(StateStore(root / "state" / "state.json"))
        self.session = requests.Session()
        self.lock = threading.Lock()
        self.answered = 0.0  # seconds until the last pickup's delivery was answered

    def post(self, headers: dict[str, str], body: bytes) -> int:
        return self.session.post(self.url + "/webhook", data=body, headers=headers, timeout=10).status_code

    def pickup(self, session: requests.Session | None = None) -> float:
        """Label an issue, deliver the event, return seconds until its task is running (or later)."""
        with self.lock:
            issue = self.github.create_issue(
                REPO, "bench", "FAKE_CLAUDE_SCENARIO=noop\n", labels=["Claude"], user="maintainer"
            )
        headers, body, _ = labeled_delivery(issue["number"])
        started = time.monotonic()
        status = (session or self.session).post(self.url + "/webhook", data=body, headers=headers, timeout=10)
        assert status.status_code == 202, status.text
        self.answered = time.monotonic() - started
        deadline = started + 30
        while time.monotonic() < deadline:
            task = self.queue.store.read()
            for raw in (task.get("tasks") or {}).values():
                if raw["issue_number"] == issue["number"] and raw["state"] != TaskState.PENDING.value:
                    return time.monotonic() - started
            time.sleep(0.005)
        raise SystemExit(f"issue #{issue['number']} was not picked up within 30 s")

    def settle(self) -> None:
        deadline = time.monotonic() + 120
        while any(t.state.live for t in self.queue.list()):
            if time.monotonic() > deadline:
                raise SystemExit("tasks did not finish within 120 s")
            time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--deliveries", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--slow", type=int, default=200)
    args = parser.parse_args()
    image = fake_agent_image(docker.from_env())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        github = FakeGitHub(root / "gh", tokens=(TOKEN,)).start()
        github.create_repo(REPO, {"README.md": "# hooks\n"})
        github.set_permission(REPO, "maintainer", "write")
        port = free_port()
        settings = {
            "GITHUB_TOKEN": TOKEN,
            "GITHUB_API_URL": github.api_url,
            "GITHUB_REPOS": REPO,
            "STATE_DIR": str(root / "state"),
            "POLL_INTERVAL": "600",
            "MAX_CONCURRENT": "3",
            "DOCKER_IMAGE": image,
            "DOCKER_NETWORK": "none",
            "ANTHROPIC_API_KEY": "sk-ant-api03-benchkey0123456789",
            "LISTEN_ADDRESS": f"127.0.0.1:{port}",
            "WEBHOOK_SECRET": SECRET,
        }
        env_file = root / "bench.env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        env = {"PATH": os.environ["PATH"], "HOME": tmp, "CLAUDE_ISSUE_SOLVER_ENV": str(env_file)}
        daemon = subprocess.Popen(
            [sys.executable, "-m", "claude_issue_solver", "start", "--foreground"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(root / "daemon.err", "w"),  # noqa: SIM115 - closed with the process
        )
        bench = Bench(root, github, port)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if requests.get(bench.url + "/healthz", timeout=1).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise SystemExit("the daemon did not come up:\n" + (root / "daemon.err").read_text())
                time.sleep(0.05)
            idle = []
            for _ in range(args.runs):
                idle.append(bench.pickup())
                bench.settle()
            report("pickup, idle", idle)
            load(bench, args, root)
            bench.settle()
            slow_clients(bench, port, args)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(60)
            github.stop()


def load(bench: Bench, args: argparse.Namespace, root: Path) -> None:
    before = bench.queue.store.read().get("webhooks") or {}
    failures_before = int(before.get("signature_failures") or 0)
    valid: list[str] = []
    forged: list[str] = []
    answers: dict[int, int] = {}
    under_load: list[float] = []
    stop = threading.Event()

    def label_while_loaded() -> None:
        session = requests.Session()
        while not stop.is_set() and len(under_load) < args.runs:
            under_load.append(bench.pickup(session))
            stop.wait(0.5)

    labeller = threading.Thread(target=label_while_loaded, daemon=True)
    started = time.monotonic()
    labeller.start()
    for i in range(args.deliveries):
        due = started + i / args.rate
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        is_forged = i % 4 == 3
        # Valid deliveries name an unchanged issue: the repository is polled (a 304), nothing queued.
        headers, body, delivery = labeled_delivery(1, forged=is_forged)
        status = bench.post(headers, body)
        answers[status] = answers.get(status, 0) + 1
        (forged if is_forged else valid).append(delivery)
    elapsed = time.monotonic() - started
    stop.set()
    labeller.join(60)
    bench.settle()
    time.sleep(1.5)  # the refusals of the last second are written a second later (by design)
    book: dict[str, Any] = bench.queue.store.read().get("webhooks") or {}
    seen = set(book.get("seen") or [])
    lost = [d for d in valid if d not in seen]
    acted = [d for d in forged if d in seen]
    refused = int(book.get("signature_failures") or 0) - failures_before
    print(
        f"load: {args.deliveries} deliveries in {elapsed:.1f} s ({args.deliveries / elapsed:.0f}/s), "
        f"answers {dict(sorted(answers.items()))}"
    )
    print(
        f"  valid {len(valid)}: lost {len(lost)}; "
        f"forged {len(forged)}: acted on {len(acted)}, refused {refused}"
    )
    report("pickup, under load", under_load)
    if lost or acted or refused != len(forged):
        raise SystemExit("FAILED: a valid delivery was lost or a forged one acted on")


def slow_clients(bench: Bench, port: int, args: argparse.Namespace) -> None:
    """``--slow`` clients trickling a byte a second each (at most 60 s), pickups timed meanwhile."""
    line = b"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 4096
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(args.slow)]
    stop = threading.Event()

    def trickle() -> None:
        deadline = time.monotonic() + 60
        for position in itertools.count():
            if stop.is_set() or time.monotonic() > deadline:
                return
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.send(line[position % len(line) : position % len(line) + 1])
            stop.wait(1.0)

    trickler = threading.Thread(target=trickle, daemon=True)
    began = time.monotonic()
    trickler.start()
    try:
        time.sleep(2)  # the clients have begun their requests
        times: list[float] = []
        answers: list[float] = []
        while len(times) < args.runs and time.monotonic() - began < 8:  # inside the 10 s deadline
            times.append(bench.pickup())
            answers.append(bench.answered)
            bench.settle()
        report(f"answer, {args.slow} slow clients open", answers)
        report(f"pickup, {args.slow} slow clients open", times)
        if max(answers) > 1.0:
            raise SystemExit("FAILED: a signed delivery behind slow clients was answered after 1 s")
    finally:
        stop.set()
        trickler.join(5)
        for sock in socks:
            sock.close()


def report(what: str, values: list[float]) -> None:
    if not values:
        print(f"{what}: no runs")
        return
    print(
        f"{what}: n={len(values)} median {statistics.median(values) * 1000:.0f} ms, "
        f"p95 {percentile(values, 0.95) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
