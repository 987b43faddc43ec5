"""The spend ledger and the daily budget: what Claude cost, per repository and UTC day, and whether a new
task may start.

The ledger is a plain JSON-able dict meant to live in the state file (``state["budget"]``) and to be
changed inside one ``StateStore.transaction()``, so it survives ``kill -9`` and restarts like the queue::

    with store.transaction() as data:
        data["budget"] = budget.record(data.get("budget"), repo=task.repo,
                                       run_id=f"{task.id}:{task.attempts}", cost_usd=cost, now=clock())

Every function takes the section (``None`` or a damaged one reads as empty) and returns a new one; none
mutates its argument. Shape::

    {"days": {"2026-12-01": {"acme/widgets": {"widgets-7-a1b2c3:1": 0.42, …}, …}, …}}

Amounts are kept per agent run (``run_id``), so recording the same run twice — a crash between recording
and finishing the task, a resumed task — replaces instead of adding. Days older than ``HISTORY_DAYS`` are
pruned on every write. Days are UTC days: the budget resets at 00:00 UTC for everyone, whatever the host's
zone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from claude_issue_solver.conventions import format_usd

__all__ = [
    "HISTORY_DAYS",
    "BudgetCheck",
    "RepoDay",
    "check",
    "day_of",
    "empty",
    "next_utc_midnight",
    "prune",
    "record",
    "run_of",
    "spent_on",
    "spent_today",
    "typical_run_cost",
    "usage",
]

HISTORY_DAYS = 31  # at least 30 full days besides today


def empty() -> dict[str, Any]:
    return {"days": {}}


def day_of(now: float) -> str:
    """The UTC day of an epoch time, as ``YYYY-MM-DD`` (the ledger's key)."""
    return datetime.fromtimestamp(now, UTC).date().isoformat()


def next_utc_midnight(now: float) -> float:
    today = datetime.fromtimestamp(now, UTC).date()
    return datetime.combine(today + timedelta(days=1), datetime.min.time(), UTC).timestamp()


def _clean(ledger: Mapping[str, Any] | None) -> dict[str, Any]:
    """A deep copy keeping only well-formed entries: a hand-edited or damaged section must not crash."""
    days: dict[str, dict[str, dict[str, float]]] = {}
    raw_days = ledger.get("days") if isinstance(ledger, Mapping) else None
    if not isinstance(raw_days, Mapping):
        return empty()
    for day, repos in raw_days.items():
        try:
            date.fromisoformat(str(day))
        except ValueError:
            continue
        if not isinstance(repos, Mapping):
            continue
        kept: dict[str, dict[str, float]] = {}
        for repo, runs in repos.items():
            if not isinstance(runs, Mapping):
                continue
            amounts = {
                str(run): float(cost)
                for run, cost in runs.items()
                if isinstance(cost, int | float) and not isinstance(cost, bool) and math.isfinite(cost)
            }
            if amounts:
                kept[str(repo)] = amounts
        if kept:
            days[str(day)] = kept
    return {"days": days}


def prune(ledger: Mapping[str, Any] | None, *, now: float, keep_days: int = HISTORY_DAYS) -> dict[str, Any]:
    """Drop the days more than ``keep_days`` before today (UTC)."""
    cleaned = _clean(ledger)
    oldest = (datetime.fromtimestamp(now, UTC).date() - timedelta(days=keep_days)).isoformat()
    cleaned["days"] = {day: repos for day, repos in cleaned["days"].items() if day >= oldest}
    return cleaned


def record(
    ledger: Mapping[str, Any] | None,
    *,
    repo: str,
    run_id: str,
    cost_usd: float | None,
    now: float,
) -> dict[str, Any]:
    """The ledger with one agent run's cost booked on today's UTC day (replacing an earlier booking of the
    same ``run_id`` on that day). A run with no known cost (``None``) books nothing."""
    updated = prune(ledger, now=now)
    if cost_usd is None or not math.isfinite(cost_usd) or cost_usd < 0:
        return updated
    day = updated["days"].setdefault(day_of(now), {})
    day.setdefault(repo, {})[run_id] = float(cost_usd)
    return updated


def spent_on(ledger: Mapping[str, Any] | None, day: str, *, repo: str | None = None) -> float:
    repos = _clean(ledger)["days"].get(day, {})
    return sum(sum(runs.values()) for name, runs in repos.items() if repo is None or name == repo)


def spent_today(ledger: Mapping[str, Any] | None, *, now: float, repo: str | None = None) -> float:
    return spent_on(ledger, day_of(now), repo=repo)


@dataclass(frozen=True)
class BudgetCheck:
    """May a new task start now? ``until`` is when it may (the next UTC midnight) if it may not."""

    allowed: bool
    spent: float
    budget: float | None
    until: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"allowed": self.allowed, "spent": self.spent, "budget": self.budget, "until": self.until}

    def line(self) -> str:
        """For ``status``: "spent $1.23 of $5.00 today" (or "spent $1.23 today" with no budget)."""
        if self.budget is None:
            return f"spent {format_usd(self.spent)} today"
        return f"spent {format_usd(self.spent)} of {format_usd(self.budget)} today"


def check(
    ledger: Mapping[str, Any] | None,
    daily_budget: float | None,
    *,
    now: float,
    expected_run_cost: float | None = None,
    running: int = 0,
) -> BudgetCheck:
    """Whether today's spend leaves room for a new task or follow-up. ``daily_budget`` None = unlimited.

    A run's cost is known only when it ends. Without an estimate a new task may start while anything is
    left. With ``expected_run_cost`` (e.g. :func:`typical_run_cost`) it may start only if today's spend
    plus that much for each of the ``running`` tasks and for the new one stays within the budget — so a
    task that would probably take the day over waits. Running tasks always finish.
    """
    spent = spent_today(ledger, now=now)
    if daily_budget is None:
        return BudgetCheck(True, spent, None, None)
    room = spent < daily_budget
    if room and expected_run_cost is not None:
        room = spent + expected_run_cost * (max(0, running) + 1) <= daily_budget
    if room:
        return BudgetCheck(True, spent, daily_budget, None)
    return BudgetCheck(False, spent, daily_budget, next_utc_midnight(now))


def run_of(run_id: str) -> str:
    """The run a ledger entry belongs to: ``task:n`` of ``task:n`` and of its fix rounds ``task:n:fix-k``
    (a test-fix round is part of its run, booked on its own so that a crash never books it twice)."""
    return ":".join(run_id.split(":")[:2])


def _per_run(runs: Mapping[str, float]) -> dict[str, float]:
    whole: dict[str, float] = {}
    for run_id, cost in runs.items():
        whole[run_of(run_id)] = whole.get(run_of(run_id), 0.0) + cost
    return whole


def typical_run_cost(ledger: Mapping[str, Any] | None, *, now: float, days: int = 7) -> float | None:
    """The mean cost of one run (its fix rounds included) over the last ``days`` UTC days (``None``
    before any run)."""
    oldest = (datetime.fromtimestamp(now, UTC).date() - timedelta(days=days - 1)).isoformat()
    costs = [
        cost
        for day, repos in _clean(ledger)["days"].items()
        if day >= oldest
        for runs in repos.values()
        for cost in _per_run(runs).values()
    ]
    return sum(costs) / len(costs) if costs else None


@dataclass(frozen=True)
class RepoDay:
    """One row of the ``usage`` report."""

    day: str
    repo: str
    cost_usd: float
    runs: int  # runs as the README counts them: a task's attempt, its test-fix rounds included
    fix_rounds: int = 0  # of those runs' test-fix rounds, booked that day

    def to_dict(self) -> dict[str, Any]:
        return {
            "day": self.day,
            "repo": self.repo,
            "cost_usd": round(self.cost_usd, 6),
            "runs": self.runs,
            "fix_rounds": self.fix_rounds,
        }


def usage(ledger: Mapping[str, Any] | None, *, now: float, days: int = 30) -> list[RepoDay]:
    """Spend per repository per UTC day for the last ``days`` days (today included), newest day first."""
    oldest = (datetime.fromtimestamp(now, UTC).date() - timedelta(days=days - 1)).isoformat()
    rows = [
        RepoDay(day, repo, sum(runs.values()), len(_per_run(runs)), sum(1 for r in runs if r != run_of(r)))
        for day, repos in _clean(ledger)["days"].items()
        if day >= oldest
        for repo, runs in repos.items()
    ]
    return sorted(rows, key=lambda r: (-_ordinal(r.day), -r.cost_usd, r.repo))


def _ordinal(day: str) -> int:
    return date.fromisoformat(day).toordinal()
