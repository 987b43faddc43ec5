"""Which pending task may start now: the queue hold, the daily budget and fair turns, decided together.

Both functions work on the state document *inside* the caller's ``StateStore.transaction()``, so the
decision and what it records (the start time, the probe task, the hold) are one atomic change with the
claim itself::

    with store.transaction() as data:                       # TaskQueue.claim()
        if data.get("paused"):
            return None
        task_id = admission.admit(data, limits=self.limits, daily_budget=self.daily_budget, now=self.clock())
        if task_id is None:
            return None
        chosen = data["tasks"][task_id]                     # …mark it running as before

    with store.transaction() as data:                       # when a run ends, before finish()/requeue()
        admission.record_end(data, task.id, verdict, now=clock())

Recording the end *before* the task leaves ``running`` matters for the probe: :func:`admit` hands the probe
to another task as soon as the probing task is no longer running (so a cancelled or lost probe cannot
stall the queue), and it must find the renewed hold by then.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from claude_issue_solver.limits import Verdict
from claude_issue_solver.store import budget
from claude_issue_solver.store.fairness import FairnessLimits, note_start, pick, prune_starts
from claude_issue_solver.store.holds import QueueHold, budget_hold, on_task_end

__all__ = ["admit", "current_hold", "record_end"]


def current_hold(data: dict[str, Any], *, daily_budget: float | None, now: float) -> QueueHold | None:
    """The hold in force now (the stored one, and the daily budget's), for ``status`` and ``queue``.

    The budget counts each running task at the typical cost of a run, so that a task that would probably
    take the day over the budget does not start.
    """
    hold = QueueHold.from_dict(data.get("hold"))
    ledger = data.get("budget")
    running = sum(1 for t in (data.get("tasks") or {}).values() if t.get("state") == "running")
    check = budget.check(
        ledger,
        daily_budget,
        now=now,
        expected_run_cost=budget.typical_run_cost(ledger, now=now),
        running=running,
    )
    hold = budget_hold(check, now=now, current=hold)
    if hold is not None and hold.gate(now) == "open":
        return None
    return hold


def admit(
    data: dict[str, Any], *, limits: FairnessLimits, daily_budget: float | None, now: float
) -> str | None:
    """The id of the pending task to start now, or ``None``; records its start and any hold change.

    The caller marks the task running in the same transaction.
    """
    tasks: dict[str, dict[str, Any]] = data.get("tasks") or {}
    hold = current_hold(data, daily_budget=daily_budget, now=now)
    if hold is not None and hold.probe_task is not None:
        probe = tasks.get(hold.probe_task)
        if probe is None or probe.get("state") != "running":
            hold = replace(hold, probe_task=None)  # the probe ended without a word: let another try
    gate = "open" if hold is None else hold.gate(now)
    data["hold"] = hold.to_dict() if hold is not None else None
    if gate == "hold":
        return None

    pending = sorted(
        (t for t in tasks.values() if t.get("state") == "pending"), key=lambda t: t.get("seq", 0)
    )
    running = [t for t in tasks.values() if t.get("state") == "running"]
    starts = prune_starts(data.get("starts"), now=now)
    chosen = pick(pending, running, starts, limits, now=now, repo_of=lambda t: str(t["repo"]))
    if not chosen:
        return None
    task = chosen[0]
    if gate == "probe" and hold is not None:
        data["hold"] = hold.probing(str(task["id"])).to_dict()
    data["starts"] = note_start(starts, str(task["repo"]), now=now)
    return str(task["id"])


def record_end(data: dict[str, Any], task_id: str, verdict: Verdict, *, now: float) -> QueueHold | None:
    """Update ``data["hold"]`` for a run that ended with ``verdict``; returns the hold now in force."""
    hold = on_task_end(QueueHold.from_dict(data.get("hold")), task_id, verdict, now=now)
    data["hold"] = hold.to_dict() if hold is not None else None
    return hold
