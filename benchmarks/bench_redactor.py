"""What the log redactor costs per line after a long life: every minted token kept, or only live ones.

A daemon mints a relay token per task and a GitHub App installation token per installation and hour.
Until the redactor kept them only while they work, every log line and every body written to GitHub was
checked against all of them, sorted anew for each line. This replays ``--days`` of ``--tasks-per-day``
tasks and ``--installations`` installations through the real ``Redactor`` both ways:

- kept for ever: each token added with no end (what the daemon did);
- kept while live: relay tokens discarded as their task closes, installation tokens added with
  ``until`` = their expiry (what it does now; the shapes still mask them afterwards).

Also the old per-line sort over every token (as the redactor was). Reported: values kept, and
microseconds per redacted line (the median of ``--rounds`` timings of
``--lines`` lines). Pure CPU, no network, no files.

Usage: python benchmarks/bench_redactor.py [--days 365] [--tasks-per-day 50] [--installations 1]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import time
from collections.abc import Callable

from claude_issue_solver.logs import Redactor
from claude_issue_solver.relay.base import TOKEN_PREFIX

LINE = (
    "2026-12-07 12:00:00,000 INFO    monitor-widgets-7-a1b2c3 claude_issue_solver.run.pipeline: "
    "task widgets-7-a1b2c3: the agent ran `pytest -q tests/test_widget.py` and pushed claude/issue-7"
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


def replay(days: int, tasks_per_day: int, installations: int, *, live_only: bool) -> Redactor:
    clock = Clock()
    redactor = Redactor(["sk-ant-api03-a-configured-key", "a-configured-webhook-secret"], clock=clock)
    task = 0
    for _hour in range(days * 24):
        clock.now += 3600
        for installation in range(installations):
            token = "ghs_" + hashlib.sha256(f"{clock.now}:{installation}".encode()).hexdigest()[:36]
            redactor.add(token, until=clock.now + 3600 if live_only else None)
        for _ in range(tasks_per_day // 24 + (1 if _hour % 24 < tasks_per_day % 24 else 0)):
            task += 1
            relay = TOKEN_PREFIX + hashlib.sha256(f"task-{task}".encode()).hexdigest()
            redactor.add(relay)
            if live_only:
                redactor.discard(relay)  # the task's relay closes
    return redactor


def sorted_per_line(redactor: Redactor) -> Callable[[str], str]:
    """The redactor as it was: the whole set sorted for every line, then each value looked for."""
    values = set(redactor._ordered)

    def redact(text: str) -> str:
        for secret in sorted(values, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, "***")
        return text

    return redact


def per_line_us(redact: Callable[[str], str], lines: int, rounds: int) -> float:
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(lines):
            redact(LINE)
        timings.append((time.perf_counter() - started) / lines * 1e6)
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--tasks-per-day", type=int, default=50)
    parser.add_argument("--installations", type=int, default=1)
    parser.add_argument("--lines", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    every = replay(args.days, args.tasks_per_day, args.installations, live_only=False)
    live = replay(args.days, args.tasks_per_day, args.installations, live_only=True)
    rows = (
        ("before: every token, sorted per line", every, sorted_per_line(every)),
        ("every token, ordered once", every, every),
        ("now: live tokens only", live, live),
    )
    for name, redactor, redact in rows:
        cost = per_line_us(redact, args.lines, args.rounds)
        print(f"{name:>38}: {len(redactor):>6} values, {cost:9.1f} µs a line")


if __name__ == "__main__":
    main()
