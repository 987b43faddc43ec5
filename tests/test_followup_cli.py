"""The operator's view of follow-ups (#11): `queue` shows each task's kind and trigger, `logs` whether
the session was resumed, and `retry` of a follow-up retries that follow-up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from claude_issue_solver.logs import TaskLog, task_log_path
from claude_issue_solver.store.queue import FOLLOWUP, Task, TaskQueue, TaskState
from claude_issue_solver.store.state import StateStore
from tests.test_cli import expect, invoke

URL = "https://github.com/acme/widgets/pull/2#issuecomment-77"


@pytest.fixture
def env(tmp_path: Path, state_dir: Path) -> dict[str, str]:
    return {"HOME": str(tmp_path), "STATE_DIR": str(state_dir), "GITHUB_REPOS": "acme/widgets"}


def followup(state_dir: Path) -> tuple[TaskQueue, Task]:
    queue = TaskQueue(StateStore(state_dir / "state.json"))
    first = queue.submit("acme/widgets", 1, "Crash", meta={"labeler": "maintainer"})
    assert first is not None
    queue.claim()
    queue.finish(first.id, TaskState.COMPLETED, pr_url="https://github.com/acme/widgets/pull/2")
    trigger = {
        "id": "issues:77",
        "comment_id": 77,
        "where": "pr",
        "pr_number": 2,
        "author": "alice",
        "url": URL,
        "body": "@claude more",
        "created_at": "2026-11-01T00:00:00Z",
    }
    with queue.store.transaction() as data:
        data.setdefault("followups", {}).setdefault("pending", {})["acme/widgets#1"] = [trigger]
    task, _ = queue.take_triggers("acme/widgets", 1, "Crash")
    assert task is not None
    return queue, task


def test_queue_shows_kind_and_trigger(env: dict[str, str], state_dir: Path) -> None:
    followup(state_dir)
    rows = json.loads(expect(invoke(["queue", "--json", "--all"], env)).output)
    assert [(r["kind"], r["trigger"]) for r in rows] == [
        ("issue", "label by @maintainer"),
        ("followup", f"@alice {URL}"),
    ]
    text = expect(invoke(["queue", "--all"], env)).output
    assert "followup" in text and "@alice" in text


def test_logs_say_whether_the_session_was_resumed(env: dict[str, str], state_dir: Path) -> None:
    _, task = followup(state_dir)
    log = TaskLog(task_log_path(state_dir / "logs", task.id))
    log.write("follow-up for @alice on claude/issue-1: resuming session 5e1f")
    assert "resuming session 5e1f" in expect(invoke(["logs", task.id], env)).output


def test_retry_of_a_follow_up_retries_that_follow_up(env: dict[str, str], state_dir: Path) -> None:
    queue, task = followup(state_dir)
    queue.claim()
    queue.finish(task.id, TaskState.FAILED, error="boom")
    expect(invoke(["retry", task.id], env))
    again = queue.get(task.id)
    assert again.state is TaskState.PENDING and again.kind == FOLLOWUP
    assert [t["url"] for t in again.meta["triggers"]] == [URL]
