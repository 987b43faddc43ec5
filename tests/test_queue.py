from __future__ import annotations

import threading
from collections import Counter
from dataclasses import fields

import pytest

from claude_issue_solver.store.queue import QueueError, Task, TaskQueue, TaskState
from claude_issue_solver.store.state import StateStore


def test_one_live_task_per_issue(queue: TaskQueue) -> None:
    first = queue.submit("acme/widgets", 7, "Fix it")
    assert first is not None
    assert queue.submit("acme/widgets", 7, "Fix it again") is None
    assert queue.submit("ACME/Widgets", 7, "case variant of the repo") is None
    assert queue.submit("acme/gadgets", 7, "another repo, same number") is not None
    claimed = queue.claim()
    assert claimed is not None and claimed.id == first.id
    assert queue.submit("acme/widgets", 7, "while running") is None
    queue.finish(first.id, TaskState.COMPLETED, pr_url="http://example/pr/1")
    assert queue.submit("acme/widgets", 7, "after it finished") is not None


def test_claim_is_fifo_and_bounded(store: StateStore) -> None:
    queue = TaskQueue(store, max_concurrent=2)
    ids = [queue.submit("acme/widgets", n, f"issue {n}").id for n in range(1, 5)]
    first, second = queue.claim(), queue.claim()
    assert [first.id, second.id] == ids[:2]
    assert first.attempts == 1 and first.started_at is not None
    assert queue.claim() is None
    queue.finish(first.id, TaskState.FAILED, error="boom")
    assert queue.claim().id == ids[2]


def test_pause_and_resume(queue: TaskQueue) -> None:
    queue.submit("acme/widgets", 1, "one")
    assert queue.pause() is True
    assert queue.pause() is False
    assert queue.paused
    assert queue.claim() is None
    assert queue.resume() is True
    assert queue.claim() is not None


def test_bound_holds_under_contention(store: StateStore) -> None:
    queue = TaskQueue(store, max_concurrent=3)
    for n in range(200):
        queue.submit("acme/widgets", n, f"issue {n}")
    runs: Counter[str] = Counter()
    running = 0
    peak = 0
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        nonlocal running, peak
        try:
            while True:
                task = queue.claim()
                if task is None:
                    if not queue.list([TaskState.PENDING]):
                        return
                    continue
                with lock:
                    running += 1
                    peak = max(peak, running)
                    runs[task.id] += 1
                    # what the queue itself says is running must agree with the bound
                    assert len(queue.list([TaskState.RUNNING])) <= 3
                with lock:
                    running -= 1
                queue.finish(task.id, TaskState.COMPLETED)
        except BaseException as exc:  # surfaced below: a thread's assert would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors
    assert peak <= 3
    assert len(runs) == 200 and set(runs.values()) == {1}


def test_history_keeps_the_last_hundred(store: StateStore) -> None:
    clock = iter(range(1, 10_000))
    queue = TaskQueue(store, max_concurrent=500, clock=lambda: float(next(clock)))
    for n in range(130):
        task = queue.submit("acme/widgets", n, f"issue {n}")
        queue.claim()
        queue.finish(task.id, TaskState.COMPLETED)
    live = queue.submit("acme/widgets", 999, "still pending")
    tasks = queue.list()
    finished = [t for t in tasks if t.state is TaskState.COMPLETED]
    assert len(finished) == 100
    assert min(t.issue_number for t in finished) == 30  # the oldest went first
    assert live.id in {t.id for t in tasks}


def test_find_retry_and_cancel(queue: TaskQueue) -> None:
    task = queue.submit("acme/widgets", 5, "five")
    assert queue.find(task.id).id == task.id
    assert queue.find("acme/widgets#5").id == task.id
    with pytest.raises(QueueError, match="no task matches"):
        queue.find("acme/widgets#6")
    cancelled = queue.request_cancel(task.id)
    assert cancelled.state is TaskState.CANCELLED
    again = queue.retry(task.id)
    assert again.state is TaskState.PENDING and again.attempts == 0
    running = queue.claim()
    assert queue.request_cancel(running.id).cancel_requested
    with pytest.raises(QueueError, match="only a finished task"):
        queue.retry(running.id)


def test_update_refuses_identity_fields(queue: TaskQueue) -> None:
    task = queue.submit("acme/widgets", 5, "five")
    updated = queue.update(task.id, title="five, edited", meta={"labels": ["bug"]})
    assert updated.title == "five, edited" and updated.meta == {"labels": ["bug"]}
    with pytest.raises(QueueError):
        queue.update(task.id, issue_number=6)


def test_a_task_as_a_dict_is_a_copy_of_every_field(queue: TaskQueue) -> None:
    task = queue.submit("acme/widgets", 5, "five", meta={"labels": ["Claude"], "new_comments": [{"id": 1}]})
    data = task.to_dict()
    assert list(data) == [f.name for f in fields(Task)]
    assert data["state"] == "pending" and type(data["state"]) is str
    data["meta"]["labels"].append("bug")
    data["meta"]["new_comments"][0]["id"] = 2
    assert task.meta == {"labels": ["Claude"], "new_comments": [{"id": 1}]}
    assert Task.from_dict(task.to_dict()) == task
