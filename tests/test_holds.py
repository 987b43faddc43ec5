"""The queue hold (:mod:`claude_issue_solver.store.holds`): its gate, its renewal after a probe, its rendering
and its JSON form, on an injected clock."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from claude_issue_solver.limits import BudgetExhausted, LimitHit, Transient
from claude_issue_solver.store.budget import BudgetCheck
from claude_issue_solver.store.holds import QueueHold, budget_hold, format_wait, on_task_end

NOW = datetime(2026, 12, 1, 12, 18, tzinfo=UTC).timestamp()
ONE_PM = datetime(2026, 12, 1, 13, 0, tzinfo=UTC).timestamp()
MIDNIGHT = datetime(2026, 12, 2, 0, 0, tzinfo=UTC).timestamp()

USAGE = LimitHit("usage", ONE_PM, "You've hit your session limit · resets 1pm (UTC)", "rate_limit_event")
RATE_UNKNOWN = LimitHit("rate", None, "API Error: Request rejected (429) · slow down", "api_error_status")


def test_a_usage_limit_holds_until_its_reset_then_lets_one_probe_through() -> None:
    hold = on_task_end(None, "t1", USAGE, now=NOW)
    assert hold == QueueHold("usage_limit", ONE_PM, NOW, True, 1, USAGE.message)
    assert hold.render(NOW) == "holding: Claude usage limit, resets 13:00 UTC (in 42 min)"
    assert hold.gate(NOW) == "hold"
    assert hold.gate(ONE_PM - 1) == "hold"

    assert hold.gate(ONE_PM) == "probe"
    probing = hold.probing("t2")
    assert probing.gate(ONE_PM + 5) == "hold"  # the others wait for the probe's outcome
    assert probing.render(ONE_PM + 5) == (
        "holding: Claude usage limit; task t2 is checking whether it has lifted"
    )
    # Another task that was still running ends normally: the hold stays.
    assert on_task_end(probing, "t0", None, now=ONE_PM + 6) == probing
    # The probe got through: the queue runs again.
    assert on_task_end(probing, "t2", None, now=ONE_PM + 60) is None


def test_an_unknown_reset_backs_off_more_after_each_failed_probe() -> None:
    now = NOW
    hold = None
    waits = []
    for _ in range(6):
        hold = on_task_end(hold, "probe", RATE_UNKNOWN, now=now)
        assert hold is not None and hold.known_reset is False
        waits.append(hold.until - now)
        now = hold.until
        assert hold.gate(now) == "probe"
        hold = hold.probing("probe")
    assert waits == [300, 600, 1200, 2400, 3600, 3600]

    first = on_task_end(None, "t", RATE_UNKNOWN, now=NOW)
    assert first is not None
    assert (
        first.render(NOW) == "holding: Claude rate limit, reset time unknown, next try 12:23 UTC (in 5 min)"
    )


def test_a_limit_met_again_by_a_task_that_was_already_running_does_not_shorten_the_hold() -> None:
    hold = on_task_end(None, "t1", USAGE, now=NOW)
    again = on_task_end(hold, "t2", RATE_UNKNOWN, now=NOW + 10)
    assert again is not None and again.until == ONE_PM


def test_overload_holds_briefly_with_its_own_back_off() -> None:
    overload = Transient("overloaded", 529, "API Error: 529 Overloaded.")
    hold = on_task_end(None, "t1", overload, now=NOW)
    assert hold is not None and (hold.reason, hold.until - NOW, hold.known_reset) == ("overloaded", 60, False)
    hold = on_task_end(hold.probing("t2"), "t2", overload, now=hold.until)
    assert hold is not None and hold.failures == 2 and hold.until - hold.since == 120
    assert (
        hold.render(hold.since)
        == "holding: Claude API overloaded, reset time unknown, next try 12:21 UTC (in 2 min)"
    )
    # A usage limit after overload starts its own count.
    assert on_task_end(hold, "t3", RATE_UNKNOWN, now=hold.since).failures == 1  # type: ignore[union-attr]


def test_a_budget_stop_of_one_task_does_not_hold_the_queue() -> None:
    assert on_task_end(None, "t1", BudgetExhausted(0.5, "stopped"), now=NOW) is None


def test_a_reset_time_already_past_counts_as_unknown() -> None:
    stale = LimitHit("usage", NOW - 60, "resets 12:17pm (UTC)", "text")
    hold = on_task_end(None, "t1", stale, now=NOW)
    assert hold is not None and hold.known_reset is False and hold.until == NOW + 300


def test_the_daily_budget_holds_until_utc_midnight_without_a_probe() -> None:
    check = BudgetCheck(False, 5.12, 5.0, MIDNIGHT)
    hold = budget_hold(check, now=NOW)
    assert hold == QueueHold("daily_budget", MIDNIGHT, NOW, True, 1, "$5.12 of $5.00 spent today")
    assert hold.render(NOW) == (
        "holding: daily budget reached ($5.12 of $5.00 spent today), resumes 00:00 UTC (in 11 h 42 min)"
    )
    assert hold.gate(MIDNIGHT - 1) == "hold"
    assert hold.gate(MIDNIGHT) == "open"
    # Allowed again: the budget hold goes; a limit hold is not the budget's to lift.
    assert budget_hold(BudgetCheck(True, 0.0, 5.0, None), now=MIDNIGHT, current=hold) is None
    limit = on_task_end(None, "t", USAGE, now=NOW)
    assert budget_hold(BudgetCheck(True, 1.0, 5.0, None), now=NOW, current=limit) == limit
    # Both hold: the longer one wins.
    assert budget_hold(check, now=NOW, current=limit) == hold
    late = QueueHold("usage_limit", MIDNIGHT + 3600, NOW)
    assert budget_hold(check, now=NOW, current=late) == late


def test_json_round_trip_and_damaged_entries() -> None:
    hold = on_task_end(None, "t1", USAGE, now=NOW).probing("t9")  # type: ignore[union-attr]
    data = json.loads(json.dumps(hold.to_dict()))
    assert QueueHold.from_dict(data) == hold
    damaged_entries = [
        None,
        {},
        [],
        {"reason": "bored", "until": 1, "since": 1},
        {"reason": "usage_limit", "until": "x"},
        {"reason": "rate_limit", "until": True, "since": 1.0},
    ]
    for damaged in damaged_entries:
        assert QueueHold.from_dict(damaged) is None  # type: ignore[arg-type]
    loose = QueueHold.from_dict(
        {"reason": "rate_limit", "until": 5, "since": 1, "failures": "x", "message": 3}
    )
    assert loose == QueueHold("rate_limit", 5.0, 1.0, True, 1, None, None)


def test_format_wait() -> None:
    assert format_wait(NOW + 30, NOW) == "12:18 UTC (in 30 s)"
    assert format_wait(NOW + 3 * 3600, NOW) == "15:18 UTC (in 3 h)"
    assert format_wait(NOW - 5, NOW) == "12:17 UTC (now)"
    assert format_wait(MIDNIGHT + 3 * 86400, NOW) == "Dec 5 00:00 UTC (in 3 days)"
    assert format_wait(MIDNIGHT + 86400, MIDNIGHT) == "Dec 3 00:00 UTC (in 24 h)"
