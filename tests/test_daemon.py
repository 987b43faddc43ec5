from __future__ import annotations

import logging
import signal
import threading
import time

import pytest

from claude_issue_solver.daemon.loop import Daemon, Outcome, TaskControl
from claude_issue_solver.store.queue import Task, TaskQueue, TaskState
from claude_issue_solver.store.state import StateStore
from tests.waiting import wait_until


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class GatedRunner:
    """A runner whose tasks finish only when the test opens their gate."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.gates: dict[str, threading.Event] = {}
        self.started: list[str] = []
        self.resumed: list[str] = []
        self.changed = threading.Condition()
        self.outcomes: dict[str, Outcome] = {}
        self.reconciled: list[set[str]] = []

    def _work(self, task: Task, control: TaskControl) -> Outcome | None:
        gate = self.gates.setdefault(task.id, threading.Event())
        with self.changed:
            self.changed.notify_all()
        while not gate.wait(0.01):
            if control.detach.is_set():
                return None
            if control.cancel.is_set():
                return Outcome(TaskState.CANCELLED, error="cancelled")
        return self.outcomes.get(task.id, Outcome(TaskState.COMPLETED, fields={"pr_url": f"pr/{task.id}"}))

    def run(self, task: Task, control: TaskControl) -> Outcome | None:
        with self.lock:
            self.started.append(task.id)
        return self._work(task, control)

    def resume(self, task: Task, control: TaskControl) -> Outcome | None:
        with self.lock:
            self.resumed.append(task.id)
        return self._work(task, control)

    def reconcile(self, live: list[Task]) -> None:
        self.reconciled.append({t.id for t in live})

    def wait_started(self, count: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.gates) >= count, timeout=10)


def test_poll_follows_the_injected_clock(queue: TaskQueue) -> None:
    polls: list[float] = []
    clock = FakeClock()
    daemon = Daemon(
        queue, GatedRunner(), watcher=lambda: polls.append(clock.now), poll_interval=60, clock=clock
    )
    daemon.run_once()
    clock.now = 59
    daemon.run_once()
    clock.now = 60
    daemon.run_once()
    clock.now = 150
    daemon.run_once()
    assert polls == [0, 60, 150]


def test_dispatch_respects_the_bound_and_records_outcomes(store: StateStore) -> None:
    queue = TaskQueue(store, max_concurrent=3)
    runner = GatedRunner()
    tasks = [queue.submit("acme/widgets", n, f"issue {n}") for n in range(1, 7)]
    daemon = Daemon(queue, runner, poll_interval=60)
    daemon.run_once()
    runner.wait_started(3)
    assert len(queue.list([TaskState.RUNNING])) == 3
    assert runner.started == [t.id for t in tasks[:3]]
    runner.outcomes[tasks[1].id] = Outcome(TaskState.FAILED, error="it broke")
    runner.gates[tasks[0].id].set()
    runner.gates[tasks[1].id].set()
    wait_until(lambda: len(daemon.active) == 1)
    daemon.run_once()
    runner.wait_started(5)
    assert len(queue.list([TaskState.RUNNING])) == 3
    done = {t.id: t for t in queue.list()}
    assert done[tasks[0].id].state is TaskState.COMPLETED and done[tasks[0].id].pr_url == f"pr/{tasks[0].id}"
    assert done[tasks[1].id].state is TaskState.FAILED and done[tasks[1].id].error == "it broke"
    for gate in runner.gates.values():
        gate.set()
    wait_until(lambda: not daemon.active)
    daemon.run_once()
    for gate in runner.gates.values():
        gate.set()
    wait_until(
        lambda: all(t.state is TaskState.COMPLETED or t.error for t in queue.list()) and not daemon.active
    )
    daemon.run_once()
    wait_until(lambda: not queue.list([TaskState.PENDING, TaskState.RUNNING]))
    assert sorted(runner.started) == sorted(t.id for t in tasks)


def test_pause_stops_new_work_but_not_running_work(queue: TaskQueue) -> None:
    runner = GatedRunner()
    first = queue.submit("acme/widgets", 1, "one")
    daemon = Daemon(queue, runner)
    daemon.run_once()
    runner.wait_started(1)
    queue.pause()
    queue.submit("acme/widgets", 2, "two")
    runner.gates[first.id].set()
    wait_until(lambda: queue.get(first.id).state is TaskState.COMPLETED)
    daemon.run_once()
    assert queue.list([TaskState.RUNNING]) == []
    queue.resume()
    daemon.run_once()
    assert len(queue.list([TaskState.RUNNING])) == 1


def test_no_task_starts_while_github_asks_the_daemon_to_wait(
    queue: TaskQueue, caplog: pytest.LogCaptureFixture
) -> None:
    runner = GatedRunner()
    task = queue.submit("acme/widgets", 1, "one")
    held: list[str | None] = ["GitHub asked for no requests until 08:15:00Z (a secondary rate limit)"]
    daemon = Daemon(queue, runner, held=lambda: held[0])
    caplog.set_level(logging.INFO, logger="claude_issue_solver.daemon.loop")
    daemon.run_once()
    daemon.run_once()
    assert queue.get(task.id).state is TaskState.PENDING and runner.started == []
    said = [r.getMessage() for r in caplog.records]
    assert said.count(f"no task starts until then: {held[0]}") == 1  # once, not every cycle
    held[0] = None
    daemon.run_once()
    runner.wait_started(1)
    assert runner.started == [task.id] and "tasks start again" in [r.getMessage() for r in caplog.records]
    runner.gates[task.id].set()
    wait_until(lambda: queue.get(task.id).state is TaskState.COMPLETED)


def test_runner_crash_fails_the_task_not_the_daemon(queue: TaskQueue) -> None:
    class Exploding(GatedRunner):
        def run(self, task: Task, control: TaskControl) -> Outcome | None:
            raise RuntimeError("kaboom")

    task = queue.submit("acme/widgets", 1, "one")
    daemon = Daemon(queue, Exploding())
    daemon.run_once()
    wait_until(lambda: queue.get(task.id).state is TaskState.FAILED)
    assert "kaboom" in queue.get(task.id).error


def test_watcher_crash_is_not_fatal(queue: TaskQueue) -> None:
    def broken() -> None:
        raise ConnectionError("github is down")

    daemon = Daemon(queue, GatedRunner(), watcher=broken)
    daemon.run_once()  # no exception


def test_running_tasks_resume_after_restart(queue: TaskQueue) -> None:
    task = queue.submit("acme/widgets", 1, "one")
    queue.claim()  # what a previous daemon left behind
    runner = GatedRunner()
    daemon = Daemon(queue, runner)
    daemon.run_once()
    runner.wait_started(1)
    assert runner.resumed == [task.id] and runner.started == []
    assert runner.reconciled == [{task.id}]
    runner.gates[task.id].set()
    wait_until(lambda: queue.get(task.id).state is TaskState.COMPLETED)


def test_requeue_outcome(queue: TaskQueue) -> None:
    runner = GatedRunner()
    task = queue.submit("acme/widgets", 1, "one")
    runner.outcomes[task.id] = Outcome(TaskState.PENDING, error="container vanished")
    daemon = Daemon(queue, runner)
    daemon.run_once()
    runner.wait_started(1)
    runner.gates[task.id].set()
    wait_until(lambda: queue.get(task.id).state is TaskState.PENDING)
    assert queue.get(task.id).error == "container vanished"


def test_cancel_request_reaches_the_runner(queue: TaskQueue) -> None:
    runner = GatedRunner()
    task = queue.submit("acme/widgets", 1, "one")
    daemon = Daemon(queue, runner)
    daemon.run_once()
    runner.wait_started(1)
    queue.request_cancel(task.id)
    daemon.run_once()
    wait_until(lambda: queue.get(task.id).state is TaskState.CANCELLED)


def test_first_signal_stops_cleanly_leaving_work_running(queue: TaskQueue) -> None:
    runner = GatedRunner()
    task = queue.submit("acme/widgets", 1, "one")
    daemon = Daemon(queue, runner, watcher=lambda: None, poll_interval=3600)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(daemon.run()))
    thread.start()
    runner.wait_started(1)
    started = time.monotonic()
    daemon.handle_signal(signal.SIGTERM)
    thread.join(10)
    assert not thread.is_alive() and result == [0]
    assert time.monotonic() - started < 5
    assert queue.get(task.id).state is TaskState.RUNNING  # recorded as running: resumed at the next start
