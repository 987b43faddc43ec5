"""A full disk while tasks end (issue #19): ``STATE_DIR`` on a small tmpfs that the test fills up and
frees again. No task stays ``running`` once space returns, and nothing queued is lost.

Mounting needs root (CAP_SYS_ADMIN); where it is not permitted the tests say so and are skipped. The
daemon is stepped with ``run_once`` on an injected clock; its monitors are real threads.
"""

from __future__ import annotations

import errno
import os
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from claude_issue_solver.config import Config
from claude_issue_solver.daemon.loop import ORPHAN_CHECK_INTERVAL, RESUME_BACKOFF, Daemon, no_space
from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.github.client import GitHubClient
from claude_issue_solver.github.publisher import Publisher
from claude_issue_solver.run.pipeline import Pipeline
from claude_issue_solver.store.outcome import Outcome, TaskControl
from claude_issue_solver.store.queue import Task, TaskQueue, TaskState
from claude_issue_solver.store.state import StateError, StateStore
from tests.fakes.memory_backend import MemoryBackend, edits
from tests.github_fixtures import Clock
from tests.test_daemon import FakeClock, GatedRunner
from tests.waiting import wait_until

REPO = "acme/widgets"


class Disk:
    """A small tmpfs: ``fill`` takes every free byte, ``free`` gives it back."""

    def __init__(self, mount: Path) -> None:
        self.mount = mount
        self.filler = mount / "filler"

    def fill(self) -> None:
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (65536, 4096, 512, 1):  # to the last byte
                try:
                    while True:
                        os.write(fd, b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)
        probe = self.mount / "probe"
        with pytest.raises(OSError) as caught:
            probe.write_bytes(b"x" * 4096)
        probe.unlink(missing_ok=True)
        assert caught.value.errno == errno.ENOSPC

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)


@pytest.fixture
def disk() -> Iterator[Disk]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; run the tests as root to fill a disk for real")
    mount = Path(tempfile.mkdtemp(prefix="cis-full-disk-"))
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        mount.rmdir()
        pytest.skip(f"mounting a tmpfs is not permitted here: {proc.stderr.strip()}")
    try:
        yield Disk(mount)
    finally:
        if subprocess.run(["umount", str(mount)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=False)
        mount.rmdir()


@pytest.fixture
def state_dir(disk: Disk) -> Path:
    """Overrides the shared fixture: the configs and stores of these tests live on the small tmpfs."""
    path = disk.mount / "state"
    path.mkdir()
    return path


def states(queue: TaskQueue) -> dict[int, TaskState]:
    return {t.issue_number: t.state for t in queue.list()}


def test_an_end_that_cannot_be_written_is_written_when_space_returns(disk: Disk, store: StateStore) -> None:
    queue = TaskQueue(store, max_concurrent=1)
    runner = GatedRunner()
    tasks = [queue.submit(REPO, n, f"issue {n}") for n in (1, 2, 3)]
    clock = FakeClock()
    daemon = Daemon(queue, runner, clock=clock)
    daemon.run_once()
    runner.wait_started(1)
    first = tasks[0]
    assert first is not None

    disk.fill()
    runner.gates[first.id].set()
    wait_until(lambda: daemon.unrecorded == [first.id])
    for _ in range(3):  # cycles on a full disk: the end stays in memory, nothing else starts
        clock.now += ORPHAN_CHECK_INTERVAL
        daemon.run_once()
    assert daemon.unrecorded == [first.id]
    assert states(queue) == {1: TaskState.RUNNING, 2: TaskState.PENDING, 3: TaskState.PENDING}
    assert runner.resumed == []  # an end waiting to be written is not an orphan

    disk.free()
    daemon.run_once()
    assert daemon.unrecorded == []
    assert queue.get(first.id).state is TaskState.COMPLETED and queue.get(first.id).pr_url == f"pr/{first.id}"
    runner.wait_started(2)  # its slot is free: the next task started in the same cycle
    for gate in runner.gates.values():
        gate.set()
    wait_until(lambda: not daemon.active)
    daemon.run_once()
    runner.wait_started(3)
    runner.gates[tasks[2].id].set()  # type: ignore[union-attr]
    wait_until(lambda: not daemon.active)
    daemon.run_once()
    assert states(queue) == {1: TaskState.COMPLETED, 2: TaskState.COMPLETED, 3: TaskState.COMPLETED}


def test_a_claim_on_a_full_disk_starts_nothing_and_loses_nothing(disk: Disk, store: StateStore) -> None:
    queue = TaskQueue(store, max_concurrent=2)
    runner = GatedRunner()
    for n in (1, 2):
        queue.submit(REPO, n, f"issue {n}")
    daemon = Daemon(queue, runner, clock=FakeClock())
    disk.fill()
    daemon.run_once()  # the claim's write fails: logged, not raised
    assert runner.started == []
    assert states(queue) == {1: TaskState.PENDING, 2: TaskState.PENDING}
    disk.free()
    daemon.run_once()
    runner.wait_started(2)
    assert states(queue) == {1: TaskState.RUNNING, 2: TaskState.RUNNING}
    for gate in runner.gates.values():
        gate.set()
    wait_until(lambda: not daemon.active)
    daemon.run_once()
    assert states(queue) == {1: TaskState.COMPLETED, 2: TaskState.COMPLETED}


class DyingRunner(GatedRunner):
    """Its first run kills the monitor thread outright (nothing caught, nothing recorded); a disk-full
    error stops the second."""

    def __init__(self) -> None:
        super().__init__()
        self.plan: list[BaseException] = []

    def run(self, task: Task, control: TaskControl) -> Outcome | None:
        if self.plan:
            with self.lock:
                self.started.append(task.id)
            raise self.plan.pop(0)
        return super().run(task, control)


class ThreadDeath(BaseException):
    pass


def test_a_task_whose_monitor_died_is_found_and_resumed(store: StateStore) -> None:
    queue = TaskQueue(store, max_concurrent=1)
    runner = DyingRunner()
    runner.plan = [ThreadDeath("the monitor died")]
    task = queue.submit(REPO, 1, "one")
    assert task is not None
    clock = FakeClock()
    daemon = Daemon(queue, runner, clock=clock)
    hook = threading.excepthook
    threading.excepthook = lambda args: None  # the death is the test's doing; keep the output clean
    try:
        daemon.run_once()
        wait_until(lambda: not daemon.active)
    finally:
        threading.excepthook = hook
    daemon.run_once()  # within the check interval: not looked at yet
    assert queue.get(task.id).state is TaskState.RUNNING and runner.resumed == []
    clock.now += ORPHAN_CHECK_INTERVAL
    daemon.run_once()
    runner.wait_started(1)
    assert runner.resumed == [task.id]
    runner.gates[task.id].set()
    wait_until(lambda: not daemon.active)
    daemon.run_once()
    assert queue.get(task.id).state is TaskState.COMPLETED


def test_a_run_the_full_disk_stopped_is_resumed_with_back_off_not_failed(store: StateStore) -> None:
    queue = TaskQueue(store, max_concurrent=1)
    runner = DyingRunner()
    runner.plan = [StateError("cannot write the state file: No space left on device", errno=errno.ENOSPC)]
    task = queue.submit(REPO, 1, "one")
    assert task is not None
    clock = FakeClock()
    daemon = Daemon(queue, runner, clock=clock)
    daemon.run_once()
    wait_until(lambda: not daemon.active)
    clock.now += RESUME_BACKOFF[0] - 1
    daemon.run_once()
    assert queue.get(task.id).state is TaskState.RUNNING and runner.resumed == []
    clock.now += 1
    daemon.run_once()
    runner.wait_started(1)
    assert runner.resumed == [task.id]
    runner.gates[task.id].set()
    wait_until(lambda: not daemon.active)
    daemon.run_once()
    assert queue.get(task.id).state is TaskState.COMPLETED


def test_no_space_is_found_through_the_causes() -> None:
    assert no_space(OSError(errno.ENOSPC, "No space left on device"))
    assert no_space(StateError("x", errno=errno.EDQUOT))
    try:
        try:
            raise OSError(errno.ENOSPC, "full")
        except OSError:
            raise RuntimeError("wrapped") from None
    except RuntimeError as exc:
        assert no_space(exc)  # the context survives `from None`
    assert not no_space(OSError(errno.EACCES, "denied"))
    assert not no_space(ValueError("x"))


# --- the whole pipeline on the in-memory backend ------------------------------------------------------


@pytest.fixture
def config(gh_config: Callable[..., Config]) -> Config:
    return gh_config(GITHUB_REPOS=REPO, TASK_TIMEOUT="600", MAX_ATTEMPTS="2")


@pytest.mark.parametrize("fills_at", ["remove", "push"])
def test_the_disk_fills_as_a_pipeline_run_ends_and_the_task_still_finishes(
    disk: Disk, github: FakeGitHub, config: Config, fills_at: str
) -> None:
    """``remove``: the disk fills after the PR and the final comment, before the end is recorded: the
    end waits in memory. ``push``: it fills right after the push, so the pipeline's own writes fail: the
    run stops, stays ``running``, and is resumed at its recorded phase once there is room."""
    clock = Clock(start=1_900_000_000.0)
    queue = TaskQueue(StateStore(config.state_file), max_concurrent=1, clock=clock)
    backend = MemoryBackend()
    backend.agents["agent"] = edits({"fix.txt": "fixed\n"}, "Fix the widget\n\nDone.\n")
    pushes: list[str] = []

    def push(branch: str, files: dict[str, bytes], message: str) -> str:
        sha = github.commit_files(REPO, branch, files, message=message)
        pushes.append(branch)
        if fills_at == "push" and len(pushes) == 1:
            disk.fill()
        return sha

    remove = backend.remove
    filled: list[str] = []

    def remove_then_fill(task_id: str, log: object = None) -> list[str]:
        removed = remove(task_id, log)  # type: ignore[arg-type]
        if fills_at == "remove" and not filled:
            filled.append(task_id)
            disk.fill()
        return removed

    backend.on_push = push
    backend.remove = remove_then_fill  # type: ignore[method-assign]
    client = GitHubClient(config)
    pipeline = Pipeline(config, queue, backend, client, Publisher(client), clock=clock, sleep=lambda _: None)  # type: ignore[arg-type]
    numbers = [
        github.create_issue(REPO, title, "It is broken.", labels=["Claude"], user="maintainer")["number"]
        for title in ("Fix the widget", "Fix the gadget")
    ]
    first = queue.submit(REPO, numbers[0], "Fix the widget")
    second = queue.submit(REPO, numbers[1], "Fix the gadget")
    assert first is not None and second is not None
    daemon_clock = FakeClock()
    daemon = Daemon(queue, pipeline, clock=daemon_clock)

    daemon.run_once()
    wait_until(lambda: disk.filler.exists() and not daemon.active, timeout=30)
    for _ in range(3):  # the disk stays full a while: nothing is lost, nothing else starts
        daemon_clock.now += RESUME_BACKOFF[1]
        daemon.run_once()
        wait_until(lambda: not daemon.active, timeout=30)
    assert queue.get(first.id).state is TaskState.RUNNING
    assert queue.get(second.id).state is TaskState.PENDING
    if fills_at == "remove":
        assert daemon.unrecorded == [first.id]

    disk.free()
    deadline = daemon_clock.now + 4 * RESUME_BACKOFF[1]
    while queue.get(first.id).state is TaskState.RUNNING and daemon_clock.now < deadline:
        daemon_clock.now += ORPHAN_CHECK_INTERVAL
        daemon.run_once()
        wait_until(lambda: not daemon.active, timeout=30)
    done = queue.get(first.id)
    assert done.state is TaskState.COMPLETED, (done.state, done.error)
    pulls = [p for p in github.pulls(REPO) if p["head"]["ref"] == f"claude/issue-{numbers[0]}"]
    assert len(pulls) == 1  # resumed at its recorded phase: one PR, not two
    assert done.pr_url == pulls[0]["html_url"]
    ours = [c["body"] for c in github.comments(REPO, numbers[0]) if "claude-issue-solver:task=" in c["body"]]
    assert len(ours) == 1 and pulls[0]["html_url"] in ours[0]  # never "the agent changed nothing"
    daemon.run_once()  # the slot is free: the second task starts
    wait_until(lambda: queue.get(second.id).state is TaskState.COMPLETED, timeout=30)
    assert {t.id for t in queue.list()} == {first.id, second.id}
    assert not queue.list([TaskState.RUNNING, TaskState.PENDING])
