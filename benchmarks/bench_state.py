"""Queue operations on a grown state file: 1,000 pending tasks and 100 finished ones.

Each operation runs through the real ``TaskQueue`` over the real ``StateStore`` (filelock, atomic
replace, fsync) in a private directory. Two shapes are measured:

- *warm*: one long-lived queue doing operation after operation, as the daemon does;
- *cold*: a new ``StateStore`` per operation, as each CLI command (``submit``, ``cancel``, …) is.

A cycle of operations keeps the state at its size (a submit and a retry add a live task, a finish and
a cancel take one away; history stays pruned at 100). Last, ``status --json`` and ``queue --json`` run
through the real CLI as subprocesses with a scrubbed environment.
Usage: python benchmarks/bench_state.py [--runs 40] [--tasks 1000] [--history 100]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from claude_issue_solver.store.queue import Task, TaskQueue, TaskState
from claude_issue_solver.store.state import StateStore

REPO = "bench/widgets"
RESULT = "Fixed the off-by-one in the pager and added a regression test. " * 12  # ~750 characters


def seed(store: StateStore, tasks: int, history: int) -> None:
    """A realistic grown state in one transaction (what weeks of polling leave behind)."""
    now = time.time()
    with store.transaction() as data:
        for n in range(1, tasks + history + 1):
            finished = n <= history
            task = Task(
                id=f"widgets-{n}-{n:06x}",
                repo=REPO,
                issue_number=n,
                title=f"Issue {n}: the pager shows one row too many when the terminal is resized",
                state=TaskState.COMPLETED if finished else TaskState.PENDING,
                seq=n,
                attempts=1 if finished else 0,
                created_at=now - 10_000 + n,
                started_at=now - 9_000 + n if finished else None,
                finished_at=now - 8_000 + n if finished else None,
                backend="docker",
                handle=f"claude-issue-solver-widgets-{n}-{n:06x}" if finished else None,
                branch=f"claude/issue-{n}",
                pr_url=f"https://github.com/{REPO}/pull/{n}" if finished else None,
                result=RESULT if finished else None,
                cost_usd=0.42 if finished else None,
                num_turns=17 if finished else None,
                session_id="0f8fad5b-d9cb-469f-a165-70867728950e" if finished else None,
                duration_ms=123_456 if finished else None,
                meta={
                    "labels": ["Claude", "bug"],
                    "author": "alice",
                    "labeler": "alice",
                    "comment_id": 1_000_000 + n,
                    "phase": "done" if finished else "queued",
                },
            )
            data["tasks"][task.id] = task.to_dict()
            data["watcher"].setdefault("issues", {})[f"{REPO}#{n}"] = {
                "fingerprint": f"{n:040x}",
                "comments": 2,
                "handled_label_at": "2026-11-21T10:00:00Z",
            }
        data["next_seq"] = tasks + history + 1


def cycle(queue: TaskQueue, n: int, timed: Callable[[str, Callable[[], Any]], Any]) -> None:
    """One round of every operation; leaves as many live and finished tasks as it found."""
    timed("submit", lambda: queue.submit(REPO, 100_000 + n, f"new issue {n}", meta={"labels": ["Claude"]}))
    claimed = timed("claim", queue.claim)
    timed("update", lambda: queue.update(claimed.id, meta={"phase": "agent", "progress": n}))
    timed("requeue", lambda: queue.requeue(claimed.id, "the container vanished"))
    claimed = timed("claim", queue.claim)
    timed("finish", lambda: queue.finish(claimed.id, TaskState.COMPLETED, result=RESULT))
    finished = queue.list([TaskState.COMPLETED])[0]
    retried = timed("retry", lambda: queue.retry(finished.id))
    timed("cancel", lambda: queue.request_cancel(retried.id))
    timed("list", queue.list)
    timed("find", lambda: queue.find(f"{REPO}#{100_000 + n}"))
    timed("pause", queue.pause)
    timed("resume", queue.resume)


def measure(path: Path, runs: int, *, cold: bool) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall-clock and CPU milliseconds per operation (CPU time shows what a busy machine adds)."""
    samples: dict[str, list[float]] = defaultdict(list)
    cpu: dict[str, list[float]] = defaultdict(list)
    warm_queue = TaskQueue(StateStore(path), max_concurrent=10_000)

    def timed(name: str, operation: Callable[[], Any]) -> Any:
        began, began_cpu = time.perf_counter(), time.process_time()
        result = operation()
        samples[name].append((time.perf_counter() - began) * 1000)
        cpu[name].append((time.process_time() - began_cpu) * 1000)
        return result

    for n in range(runs):
        if cold:
            queue = TaskQueue(StateStore(path), max_concurrent=10_000)

            def fresh(name: str, operation: Callable[[], Any], queue: TaskQueue = queue) -> Any:
                queue.store = StateStore(path)  # what one CLI process has: no memory of the file
                return timed(name, operation)

            cycle(queue, runs + n, fresh)
        else:
            cycle(warm_queue, n, timed)
    return samples, cpu


def cli_times(state_dir: Path, home: Path, runs: int) -> dict[str, list[float]]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "STATE_DIR": str(state_dir),
        "GITHUB_REPOS": REPO,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    samples: dict[str, list[float]] = defaultdict(list)
    for command in (["--version"], ["status", "--json"], ["queue", "--json"], ["queue", "--all", "--json"]):
        for _ in range(runs):
            began = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "claude_issue_solver", *command],
                env=env,
                cwd=home,
                capture_output=True,
                stdin=subprocess.DEVNULL,
                check=False,
            )
            samples[" ".join(command)].append((time.perf_counter() - began) * 1000)
            if done.returncode not in (0, 3):  # status exits 3 when no daemon runs
                sys.exit(f"{command} failed ({done.returncode}): {done.stderr.decode()[-500:]}")
    return samples


def report(title: str, samples: dict[str, list[float]], cpu: dict[str, list[float]] | None = None) -> None:
    print(title)
    for name, values in samples.items():
        ordered = sorted(values)
        p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
        spent = f"   cpu median {statistics.median(cpu[name]):5.1f} ms" if cpu else ""
        print(
            f"  {name:<22} median {statistics.median(values):7.1f} ms   p95 {p95:7.1f} ms   "
            f"max {ordered[-1]:7.1f} ms{spent}   (n={len(values)})"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--cli-runs", type=int, default=10)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--history", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        state_dir = home / "state"
        state_dir.mkdir()
        path = state_dir / "state.json"
        seed(StateStore(path), args.tasks, args.history)
        size = path.stat().st_size
        print(f"state: {args.tasks} live + {args.history} finished tasks, {size / 1024:.0f} KiB on disk")
        print(
            f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cpus"
        )
        report("warm (one long-lived queue, as in the daemon):", *measure(path, args.runs, cold=False))
        report("cold (a new store per operation, as in a CLI command):", *measure(path, args.runs, cold=True))
        report("through the CLI (a subprocess each):", cli_times(state_dir, home, args.cli_runs))
        tasks = TaskQueue(StateStore(path)).list()
        live = sum(1 for t in tasks if t.state.live)
        print(f"state after: {live} live + {len(tasks) - live} finished tasks")


if __name__ == "__main__":
    main()
