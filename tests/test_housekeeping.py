"""What keeps ``STATE_DIR`` bounded (issue #19): task logs pruned with the task history, ``daemon.out``
rotated, mirrors compacted at most once per interval (real git, an injected clock)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from claude_issue_solver.daemon.housekeeping import (
    Housekeeper,
    MirrorCompactor,
    find_mirrors,
    prune_task_logs,
)
from claude_issue_solver.daemon.supervise import start_background, stop
from claude_issue_solver.logs import DAEMON_OUT, TaskLog, rotate_output, task_log_path
from claude_issue_solver.store.queue import TaskQueue, TaskState
from claude_issue_solver.store.state import StateStore
from tests.test_daemon import FakeClock
from tests.test_supervise import child
from tests.waiting import wait_until

NOW = 1_900_000_000.0
HOUR = 3600.0


# --- task logs ----------------------------------------------------------------------------------------


def test_task_logs_go_with_their_tasks_from_the_history(state_dir: Path) -> None:
    store = StateStore(state_dir / "state.json")
    queue = TaskQueue(store, max_concurrent=5, history_limit=2, clock=lambda: NOW)
    log_dir = state_dir / "logs"
    tasks = [queue.submit("acme/widgets", n, f"issue {n}") for n in range(1, 6)]
    for task in tasks:
        assert task is not None
        TaskLog(task_log_path(log_dir, task.id)).write("worked")
        os.utime(task_log_path(log_dir, task.id), (NOW - 2 * HOUR, NOW - 2 * HOUR))
    for task in tasks[:4]:  # four finish; the history keeps two of them, the fifth is still pending
        assert task is not None
        claimed = queue.claim()
        assert claimed is not None
        queue.finish(claimed.id, TaskState.COMPLETED)
    young = task_log_path(log_dir, "widgets-99-abcdef")  # a log whose task this state never had...
    TaskLog(young).write("just made")  # ...but only a minute old: kept, it may be a task being submitted
    os.utime(young, (NOW - 60, NOW - 60))
    (log_dir / "tasks" / "notes.txt").write_text("not a task log")

    housekeeper = Housekeeper(store, state_dir, log_dir, wall=lambda: NOW)
    removed = housekeeper.prune_logs()

    kept = {t.id for t in queue.list()}
    assert len(kept) == 3  # two finished in the history, one pending
    assert removed == sorted({t.id for t in tasks if t is not None} - kept)
    left = sorted(p.name for p in (log_dir / "tasks").iterdir())
    assert left == sorted([*(f"{k}.log" for k in kept), young.name, "notes.txt"])
    assert housekeeper.prune_logs() == []  # nothing more to do


def test_pruning_a_missing_log_directory_is_nothing(tmp_path: Path) -> None:
    assert prune_task_logs(tmp_path / "absent", [], now=NOW) == []


# --- daemon.out ---------------------------------------------------------------------------------------


def test_daemon_out_rotates_and_a_writer_goes_on_at_the_new_start(tmp_path: Path) -> None:
    out = tmp_path / DAEMON_OUT
    with open(out, "ab") as writer:  # as the daemon's stdout: opened once, for appending
        writer.write(b"first " * 100)
        writer.flush()
        assert not rotate_output(out, max_bytes=1000)  # not over the size yet
        writer.write(b"more " * 100)
        writer.flush()
        assert rotate_output(out, max_bytes=1000)
        writer.write(b"after\n")
        writer.flush()
        assert out.read_bytes() == b"after\n"  # not a hole of 1100 zero bytes then "after"
        assert (tmp_path / f"{DAEMON_OUT}.1").read_bytes() == b"first " * 100 + b"more " * 100
        writer.write(b"x" * 2000)
        writer.flush()
        assert rotate_output(out, max_bytes=1000, backups=2)
    assert (tmp_path / f"{DAEMON_OUT}.2").read_bytes().startswith(b"first ")
    assert (tmp_path / f"{DAEMON_OUT}.1").read_bytes().startswith(b"after\n")
    assert out.read_bytes() == b""
    assert not rotate_output(tmp_path / "missing")


def test_start_rotates_a_grown_daemon_out(tmp_path: Path) -> None:
    out = tmp_path / "logs" / DAEMON_OUT
    out.parent.mkdir()
    with open(out, "wb") as handle:
        handle.truncate(10 * 1024 * 1024 + 1)  # just over: sparse, cheap to make
    started = start_background(
        child('print("second start", flush=True)\nreadiness.ready()\nsignal.sigwait([signal.SIGTERM])'),
        output=out,
        timeout=30,
    )
    try:
        assert (tmp_path / "logs" / f"{DAEMON_OUT}.1").stat().st_size == 10 * 1024 * 1024 + 1
        assert out.stat().st_size < 1024
    finally:
        stop(started.pid, timeout=5, force=True)
    assert "second start" in out.read_text()


# --- mirrors ------------------------------------------------------------------------------------------


def git(*args: str, cwd: Path) -> str:
    proc = subprocess.run(
        ["git", "-c", "user.name=S", "-c", "user.email=s@example.com", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, f"git {' '.join(args)}: {proc.stderr}"
    return proc.stdout


class Mirror:
    """A bare mirror under ``state/mirrors`` that the test fills with packs (as many fetches leave)."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "state" / "mirrors" / "acme" / "widgets.git"
        self.path.mkdir(parents=True)
        git("init", "-q", "--bare", "-b", "main", str(self.path), cwd=tmp_path)
        git("config", "gc.autoPackLimit", "3", cwd=self.path)  # the mirror's own config is honoured
        git("config", "receive.autoGc", "false", cwd=self.path)  # only the compactor compacts here
        self.seed = tmp_path / "seed"
        git("init", "-q", "-b", "main", str(self.seed), cwd=tmp_path)
        self.commits = 0

    def add_packs(self, count: int) -> None:
        for _ in range(count):
            self.commits += 1
            (self.seed / f"file{self.commits}.txt").write_text(f"{self.commits}\n")
            git("add", "-A", cwd=self.seed)
            git("commit", "-qm", f"c{self.commits}", cwd=self.seed)
            git("push", "-q", str(self.path), "main", cwd=self.seed)
            git("repack", "-q", cwd=self.path)  # the new loose objects into a pack of their own

    def packs(self) -> int:
        return len(list((self.path / "objects" / "pack").glob("*.pack")))


@pytest.fixture
def mirror(tmp_path: Path) -> Mirror:
    return Mirror(tmp_path)


def test_a_mirror_is_compacted_at_most_once_per_interval(mirror: Mirror) -> None:
    mirror.add_packs(5)
    assert mirror.packs() == 5
    clock = FakeClock()
    compactor = MirrorCompactor(mirror.path.parents[1], interval=HOUR, clock=clock)
    assert compactor.run() == [mirror.path]
    assert mirror.packs() == 1  # in the foreground: done when run() returns, nothing detached

    mirror.add_packs(4)
    clock.now = HOUR - 1
    assert compactor.run() == []  # not due yet
    assert mirror.packs() == 5
    clock.now = HOUR
    assert compactor.run() == [mirror.path]
    assert mirror.packs() == 1
    assert git("rev-list", "--count", "main", cwd=mirror.path).strip() == "9"  # nothing lost


def test_a_tidy_mirror_costs_one_cheap_command(mirror: Mirror) -> None:
    mirror.add_packs(2)
    compactor = MirrorCompactor(mirror.path.parents[1], clock=FakeClock())
    assert compactor.run() == [mirror.path]
    assert mirror.packs() == 2  # under the threshold: --auto leaves it as it is


def test_a_mirror_a_task_holds_is_compacted_later_without_waiting(mirror: Mirror) -> None:
    mirror.add_packs(5)
    clock = FakeClock()
    compactor = MirrorCompactor(mirror.path.parents[1], interval=HOUR, clock=clock, lock_wait=0.1)
    # Another process holds the lock, as the backend does around a fetch (flock: per open file).
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from claude_issue_solver.backends import git as gitops; from pathlib import Path\n"
            f"lock = gitops.mirror_lock(Path({str(mirror.path)!r})); lock.acquire()\n"
            "print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        assert compactor.run() == []
        assert mirror.packs() == 5
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)
    assert compactor.run() == [mirror.path]  # the next round, not a whole interval later
    assert mirror.packs() == 1


def test_only_mirrors_are_found(tmp_path: Path) -> None:
    root = tmp_path / "mirrors"
    (root / "acme" / "half.git").mkdir(parents=True)  # no HEAD: a crash while it was made
    (root / "acme" / "widgets.git").mkdir()
    (root / "acme" / "widgets.git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / "acme" / "widgets.git.lock").write_text("")
    (root / "stray.txt").write_text("")
    assert find_mirrors(root) == [root / "acme" / "widgets.git"]
    assert find_mirrors(tmp_path / "absent") == []


@pytest.fixture
def housekeeper(state_dir: Path) -> Iterator[Housekeeper]:
    made = Housekeeper(StateStore(state_dir / "state.json"), state_dir, state_dir / "logs", interval=3600)
    yield made
    made.stop()


def test_the_service_runs_a_round_at_start_and_stops(housekeeper: Housekeeper, state_dir: Path) -> None:
    out = state_dir / "logs" / DAEMON_OUT
    out.parent.mkdir(parents=True)
    with open(out, "wb") as handle:
        handle.truncate(10 * 1024 * 1024 + 1)
    housekeeper.start()
    wait_until(lambda: (state_dir / "logs" / f"{DAEMON_OUT}.1").exists(), what="daemon.out rotated")
    housekeeper.stop()
    assert housekeeper._thread is None
