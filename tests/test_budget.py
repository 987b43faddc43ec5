"""The spend ledger and daily budget (:mod:`claude_issue_solver.store.budget`), on an injected clock, and kept
in a real state file across a process killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from claude_issue_solver.store import budget
from claude_issue_solver.store.holds import QueueHold
from claude_issue_solver.store.state import StateStore

DAY1 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC).timestamp()
MIDNIGHT = datetime(2026, 12, 2, 0, 0, tzinfo=UTC).timestamp()


def _book(ledger: dict | None, repo: str, run: str, cost: float | None, now: float = DAY1) -> dict:
    return budget.record(ledger, repo=repo, run_id=run, cost_usd=cost, now=now)


def test_spend_is_kept_per_repository_and_utc_day() -> None:
    ledger = _book(None, "acme/widgets", "w-1:1", 0.40)
    ledger = _book(ledger, "acme/widgets", "w-2:1", 0.10)
    ledger = _book(ledger, "acme/gadgets", "g-1:1", 1.25)
    ledger = _book(ledger, "acme/widgets", "w-3:1", 2.0, now=MIDNIGHT + 1)

    assert budget.spent_today(ledger, now=DAY1) == pytest.approx(1.75)
    assert budget.spent_today(ledger, now=DAY1, repo="acme/widgets") == pytest.approx(0.5)
    assert budget.spent_today(ledger, now=MIDNIGHT + 5) == 2.0
    assert budget.usage(ledger, now=MIDNIGHT + 5) == [
        budget.RepoDay("2026-12-02", "acme/widgets", 2.0, 1),
        budget.RepoDay("2026-12-01", "acme/gadgets", 1.25, 1),
        budget.RepoDay("2026-12-01", "acme/widgets", pytest.approx(0.5), 2),  # type: ignore[arg-type]
    ]
    assert json.loads(json.dumps(ledger)) == ledger


def test_recording_a_run_twice_replaces_it() -> None:
    ledger = _book(None, "acme/widgets", "w-1:1", 0.40)
    ledger = _book(ledger, "acme/widgets", "w-1:1", 0.45)  # the same run after a crash, say
    ledger = _book(ledger, "acme/widgets", "w-1:2", 0.05)  # its second attempt is a new run
    assert budget.spent_today(ledger, now=DAY1) == pytest.approx(0.50)


def test_unknown_or_invalid_costs_book_nothing_and_inputs_are_not_mutated() -> None:
    start = _book(None, "acme/widgets", "w-1:1", 0.40)
    snapshot = json.dumps(start)
    for cost in (None, float("nan"), float("inf"), -1.0):
        assert _book(start, "acme/widgets", "w-2:1", cost) == start
    _book(start, "acme/widgets", "w-3:1", 1.0)
    assert json.dumps(start) == snapshot


def test_thirty_days_of_history_are_kept_and_older_ones_pruned() -> None:
    ledger: dict | None = None
    for days_ago in range(40, -1, -1):
        ledger = _book(ledger, "acme/widgets", f"run-{days_ago}", 1.0, now=DAY1 - days_ago * 86400)
    assert ledger is not None
    kept = sorted(ledger["days"])
    assert len(kept) == budget.HISTORY_DAYS + 1  # today and the 31 days before
    assert kept[0] == (datetime(2026, 12, 1, tzinfo=UTC).date() - timedelta(days=31)).isoformat()
    assert len(budget.usage(ledger, now=DAY1, days=30)) == 30


def test_a_damaged_section_reads_as_what_is_still_valid() -> None:
    damaged = {
        "days": {"not-a-day": {"a/b": {"r": 1.0}}, "2026-12-01": {"a/b": {"r": "x", "s": 2.0}, "c/d": 3}}
    }
    assert budget.spent_today(damaged, now=DAY1) == 2.0
    for garbage in (None, [], "x", {"days": []}):
        assert budget.spent_today(garbage, now=DAY1) == 0.0  # type: ignore[arg-type]
        assert budget.record(garbage, repo="a/b", run_id="r", cost_usd=1.0, now=DAY1)["days"] == {  # type: ignore[arg-type]
            "2026-12-01": {"a/b": {"r": 1.0}}
        }


def test_may_a_task_start_and_until_when() -> None:
    ledger = _book(None, "acme/widgets", "w-1:1", 2.0)
    assert budget.check(ledger, None, now=DAY1) == budget.BudgetCheck(True, 2.0, None, None)
    assert budget.check(ledger, 5.0, now=DAY1).allowed
    ledger = _book(ledger, "acme/widgets", "w-2:1", 3.0)
    held = budget.check(ledger, 5.0, now=DAY1)
    assert held == budget.BudgetCheck(False, 5.0, 5.0, MIDNIGHT)
    assert held.line() == "spent $5.00 of $5.00 today"
    assert budget.check(ledger, None, now=DAY1).line() == "spent $5.00 today"
    # The next UTC day starts from nothing.
    assert budget.check(ledger, 5.0, now=MIDNIGHT).allowed
    assert budget.next_utc_midnight(MIDNIGHT) == MIDNIGHT + 86400
    assert budget.next_utc_midnight(MIDNIGHT - 0.001) == MIDNIGHT


def test_a_task_that_would_probably_exceed_the_budget_waits() -> None:
    ledger = _book(None, "acme/widgets", "w-1:1", 0.45)
    ledger = _book(ledger, "acme/gadgets", "g-1:1", 0.45)
    typical = budget.typical_run_cost(ledger, now=DAY1)
    assert typical == pytest.approx(0.45)
    # $0.10 left, a run costs about $0.45: the third waits for tomorrow.
    assert budget.check(ledger, 1.0, now=DAY1, expected_run_cost=typical) == budget.BudgetCheck(
        False,
        pytest.approx(0.9),
        1.0,
        MIDNIGHT,  # type: ignore[arg-type]
    )
    assert budget.check(ledger, 2.0, now=DAY1, expected_run_cost=typical).allowed
    # Each running task is counted at the typical cost too.
    assert not budget.check(ledger, 2.0, now=DAY1, expected_run_cost=typical, running=2).allowed
    assert budget.typical_run_cost(None, now=DAY1) is None
    assert budget.typical_run_cost(ledger, now=DAY1 + 8 * 86400) is None  # only the last week counts


def test_ledger_hold_and_starts_survive_kill_9_in_the_state_file(tmp_path: Path) -> None:
    """A writer process books two runs, a hold and a start through StateStore, and is SIGKILLed while
    holding the next change; a new process reads everything committed and nothing of the rest."""
    path = tmp_path / "state.json"
    script = textwrap.dedent(
        f"""
        import os, sys, time
        from pathlib import Path
        from claude_issue_solver.store import budget, fairness, holds
        from claude_issue_solver.store.state import StateStore
        store = StateStore(Path({str(path)!r}))
        for run, cost in (("w-1:1", 0.75), ("w-2:1", 0.5)):
            with store.transaction() as data:
                data["budget"] = budget.record(data.get("budget"), repo="acme/widgets", run_id=run,
                                               cost_usd=cost, now={DAY1})
        with store.transaction() as data:
            check = budget.check(data["budget"], 1.0, now={DAY1})
            data["hold"] = holds.budget_hold(check, now={DAY1}).to_dict()
            data["starts"] = fairness.note_start(data.get("starts"), "acme/widgets", now={DAY1})
        with store.transaction() as data:
            data["hold"] = None
            data["starts"] = {{}}
            data["budget"] = budget.record(data.get("budget"), repo="acme/widgets", run_id="w-3:1",
                                           cost_usd=9.0, now={DAY1})
            print("inside", flush=True)
            time.sleep(60)
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "ANTHROPIC_", "DAYTONA_"))}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "inside"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    data = StateStore(path).read()
    assert budget.spent_today(data.get("budget"), now=DAY1) == pytest.approx(1.25)
    assert budget.check(data.get("budget"), 1.0, now=DAY1).until == MIDNIGHT
    hold = QueueHold.from_dict(data["hold"])
    assert hold is not None and (hold.reason, hold.until) == ("daily_budget", MIDNIGHT)
    assert data["starts"] == {"acme/widgets": [DAY1]}
