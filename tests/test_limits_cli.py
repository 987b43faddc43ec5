"""What an operator sees of budgets and holds (``status``, ``queue``, ``usage``) through real CLI
processes, and that the ledger and the hold survive a daemon killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from claude_issue_solver.daemon.pidfile import daemon_status
from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.store import budget
from claude_issue_solver.store.holds import QueueHold
from claude_issue_solver.store.queue import TaskQueue, TaskState
from claude_issue_solver.store.state import StateStore
from tests.test_cli import cli, daemon_env, needs_docker
from tests.waiting import wait_until

__all__ = ["daemon_env"]  # the fixture, shared with test_cli


def _env(tmp_path: Path, state_dir: Path, **settings: str) -> dict[str, str]:
    scrubbed = {
        k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "ANTHROPIC_", "DAYTONA_"))
    }
    return {
        **scrubbed,
        "HOME": str(tmp_path),
        "STATE_DIR": str(state_dir),
        "GITHUB_REPOS": "acme/widgets,acme/gadgets",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        **settings,
    }


def _book(store: StateStore, now: float) -> None:
    with store.transaction() as data:
        ledger = data.get("budget")
        for days_ago, repo, run, cost in [
            (0, "acme/widgets", "widgets-1-aaaaaa:1", 0.40),
            (0, "acme/widgets", "widgets-2-bbbbbb:1", 0.35),
            (0, "acme/gadgets", "gadgets-1-cccccc:1", 0.05),
            (2, "acme/gadgets", "gadgets-2-dddddd:1", 1.25),
            (40, "acme/gadgets", "gadgets-3-eeeeee:1", 9.99),  # older than the 31 days kept
        ]:
            ledger = budget.record(ledger, repo=repo, run_id=run, cost_usd=cost, now=now - days_ago * 86400)
        data["budget"] = ledger


def test_usage_shows_spend_per_repository_and_day(tmp_path: Path, state_dir: Path) -> None:
    now = time.time()
    _book(StateStore(state_dir / "state.json"), now)
    env = _env(tmp_path, state_dir, DAILY_BUDGET_USD="5")

    shown = cli(env, "usage")
    assert shown.returncode == 0, shown.stderr
    today, before = budget.day_of(now), budget.day_of(now - 2 * 86400)
    lines = shown.stdout.splitlines()
    assert lines[0] == "spent $0.80 of $5.00 today"
    assert any(line.split() == [today, "acme/widgets", "2", "$0.75"] for line in lines)
    assert any(line.split() == [today, "acme/gadgets", "1", "$0.05"] for line in lines)
    assert any(line.split() == [before, "acme/gadgets", "1", "$1.25"] for line in lines)
    assert lines[-1] == "total: $2.05"
    assert "9.99" not in shown.stdout

    payload = json.loads(cli(env, "usage", "--json", "--days", "1").stdout)
    assert payload["daily_budget_usd"] == 5.0 and payload["spent_today_usd"] == 0.8
    assert [(r["repo"], r["runs"], r["cost_usd"]) for r in payload["rows"]] == [
        ("acme/widgets", 2, 0.75),
        ("acme/gadgets", 1, 0.05),
    ]

    refused = cli(env, "usage", "--days", "0")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    bad = cli({**env, "DAILY_BUDGET_USD": "lots"}, "usage")
    assert bad.returncode == 2
    expected = "DAILY_BUDGET_USD='lots' is not valid: expected an amount of US dollars > 0, e.g. 5 or 12.50"
    assert bad.stderr.strip().endswith(expected + " (blank or none: no cap)")


def test_status_and_queue_show_the_spend_and_the_hold(tmp_path: Path, state_dir: Path) -> None:
    now = time.time()
    store = StateStore(state_dir / "state.json")
    _book(store, now)
    queue = TaskQueue(store)
    waiting = queue.submit("acme/widgets", 7, "waits for the limit")
    assert waiting is not None
    with store.transaction() as data:
        hold = QueueHold("usage_limit", now + 41.5 * 60, now, True, 1, "You've hit your session limit")
        data["hold"] = hold.to_dict()
    env = _env(tmp_path, state_dir, DAILY_BUDGET_USD="5")
    reset = time.strftime("%H:%M", time.gmtime(now + 41.5 * 60))

    status = cli(env, "status")
    assert status.returncode == 3  # no daemon runs
    assert f"holding: Claude usage limit, resets {reset} UTC (in 42 min)\n" in status.stdout
    assert "budget: spent $0.80 of $5.00 today\n" in status.stdout
    payload = json.loads(cli(env, "status", "--json").stdout)
    assert payload["budget"] == {"spent_today_usd": 0.8, "daily_budget_usd": 5.0,
                                 "line": "spent $0.80 of $5.00 today"}  # fmt: skip
    assert payload["hold"]["reason"] == "usage_limit" and payload["hold"]["known_reset"] is True
    assert payload["hold"]["line"].startswith("holding: Claude usage limit, resets")

    listed = cli(env, "queue")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith(f"holding: Claude usage limit, resets {reset} UTC")
    rows = json.loads(cli(env, "queue", "--json").stdout)
    assert rows[0]["id"] == waiting.id and rows[0]["waiting"].startswith("holding: Claude usage limit")

    # The day's budget spent: the hold says so, and until when.
    with store.transaction() as data:
        data["hold"] = None
    over = json.loads(cli({**env, "DAILY_BUDGET_USD": "0.80"}, "status", "--json").stdout)
    assert over["hold"]["reason"] == "daily_budget"
    line = over["hold"]["line"]
    assert line.startswith("holding: daily budget reached ($0.80 of $0.80 spent today), resumes 00:00 UTC")
    assert over["budget"]["line"] == "spent $0.80 of $0.80 today"


@needs_docker
def test_budget_and_hold_survive_kill_9_and_restart(
    daemon_env: dict[str, str], github: FakeGitHub, state_dir: Path
) -> None:
    """A daemon holding its queue (the day's budget spent) is SIGKILLed; the next one holds on."""
    now = time.time()
    store = StateStore(state_dir / "state.json")
    _book(store, now)
    env = {**daemon_env, "DAILY_BUDGET_USD": "0.50"}
    assert cli(env, "start").returncode == 0
    issue = github.create_issue("acme/widgets", "Waits for tomorrow", user="maintainer")
    github.set_permission("acme/widgets", "maintainer", "write")
    github.add_label("acme/widgets", issue["number"], "Claude", actor="maintainer")

    def queued() -> list[dict[str, object]]:
        return [
            r for r in json.loads(cli(env, "queue", "--json").stdout) if r["issue_number"] == issue["number"]
        ]

    wait_until(queued, timeout=20, what="the labelled issue queued")
    _polls_pass(store, 2)  # the dispatcher (every second) had its chances
    (row,) = queued()
    assert row["state"] == "pending" and row["attempts"] == 0
    assert row["waiting"].startswith("holding: daily budget reached ($0.80 of $0.50 spent today)")

    pid = daemon_status(state_dir / "daemon.pid").pid
    assert pid
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not daemon_status(state_dir / "daemon.pid").running, what="the kill")
    data = store.read()
    assert budget.spent_today(data["budget"], now=time.time()) == 0.8
    assert data["hold"]["reason"] == "daily_budget"

    assert cli(env, "start").returncode == 0
    _polls_pass(store, 2)
    status = cli(env, "status")
    assert "budget: spent $0.80 of $0.50 today" in status.stdout
    assert "holding: daily budget reached" in status.stdout
    task = TaskQueue(store).find(f"acme/widgets#{issue['number']}")
    assert task.state is TaskState.PENDING and task.attempts == 0
    assert cli(env, "stop").returncode == 0


def _polls_pass(store: StateStore, count: int) -> None:
    """Wait until the watcher polled ``count`` more times (POLL_INTERVAL=1; the dispatcher runs every s)."""

    def last() -> object:
        return store.read().get("watcher", {}).get("repos", {}).get("acme/widgets", {}).get("last_success")

    for _ in range(count):
        before = last()
        wait_until(lambda before=before: last() != before, timeout=20, what="the next poll")


def test_queue_says_which_repository_cap_holds_a_task_back(tmp_path: Path, state_dir: Path) -> None:
    store = StateStore(state_dir / "state.json")
    queue = TaskQueue(store, max_concurrent=5, repo_max_concurrent=1, repo_max_per_hour=2)
    for n in range(3):
        queue.submit("acme/widgets", n + 1, f"widget {n + 1}")
    queue.submit("acme/gadgets", 1, "gadget")
    first = queue.claim()
    assert first is not None and first.repo == "acme/widgets"
    queue.finish(first.id, TaskState.COMPLETED)
    second = queue.claim()  # the gadget's turn
    assert second is not None and second.repo == "acme/gadgets"
    third = queue.claim()
    assert third is not None and third.repo == "acme/widgets"
    env = _env(tmp_path, state_dir, REPO_MAX_CONCURRENT="1", REPO_MAX_PER_HOUR="2", MAX_CONCURRENT="5")

    rows = {
        r["issue_number"]: r
        for r in json.loads(cli(env, "queue", "--json").stdout)
        if r["repo"] == "acme/widgets"
    }
    assert rows[3]["state"] == "pending"
    assert rows[3]["waiting"] == "REPO_MAX_CONCURRENT=1: 1 of its tasks run"
    queue.finish(third.id, TaskState.COMPLETED)
    rows = {r["issue_number"]: r for r in json.loads(cli(env, "queue", "--json").stdout)}
    assert rows[3]["waiting"].startswith("REPO_MAX_PER_HOUR=2: next start ")
    assert rows[3]["waiting"].endswith("(in 1 h)")
    text = cli(env, "queue").stdout
    assert "REPO_MAX_PER_HOUR=2: next start" in text
    assert queue.claim() is None  # the cap holds it back indeed
