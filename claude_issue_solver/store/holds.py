"""Why the whole queue holds, until when, and what lets it go again.

A :class:`QueueHold` is a small JSON-able value meant for the state file (``state["hold"]``, ``None`` when
the queue runs freely), read and written inside one ``StateStore.transaction()`` so that it survives
``kill -9``. The dispatcher asks :meth:`QueueHold.gate` before it starts a task:

- ``"hold"``: start nothing (running tasks go on);
- ``"probe"``: the reset time has passed; start exactly *one* task and record it with
  :meth:`QueueHold.probing`, so that a limit that has not really reset costs one request, not one per
  queued task;
- ``"open"``: the hold is over; drop it.

When a task ends, :func:`on_task_end` turns what :func:`claude_issue_solver.limits.classify` said into the
next hold: a limit or overload (re)starts one, growing the back-off when no reset time was given; the
probe's ordinary end clears it. A daily-budget hold (:func:`budget_hold`) simply ends at UTC midnight.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from claude_issue_solver.conventions import format_usd
from claude_issue_solver.limits import LimitHit, Transient, Verdict, unknown_reset_backoff
from claude_issue_solver.store.budget import BudgetCheck

__all__ = ["Gate", "HoldReason", "QueueHold", "budget_hold", "format_wait", "on_task_end"]

HoldReason = Literal["usage_limit", "rate_limit", "overloaded", "daily_budget"]
Gate = Literal["hold", "probe", "open"]

_LABELS: dict[str, str] = {
    "usage_limit": "Claude usage limit",
    "rate_limit": "Claude rate limit",
    "overloaded": "Claude API overloaded",
    "daily_budget": "daily budget reached",
}


@dataclass(frozen=True)
class QueueHold:
    reason: HoldReason
    until: float
    since: float
    known_reset: bool = True  # False: `until` is a back-off guess, not a time anyone stated
    failures: int = 1  # limits met in a row; grows the back-off
    message: str | None = None  # what Claude (or the budget) said, for `status`
    probe_task: str | None = None  # the one task let through after `until` to test the limit

    # -- state file ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> QueueHold | None:
        """The hold a state file holds; ``None`` for none, and for a damaged entry (logged by the caller)."""
        if not isinstance(data, Mapping) or data.get("reason") not in get_args(HoldReason):
            return None
        until, since = data.get("until"), data.get("since")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (until, since)):
            return None
        failures = data.get("failures")
        probe = data.get("probe_task")
        message = data.get("message")
        return cls(
            reason=data["reason"],
            until=float(until),  # type: ignore[arg-type]
            since=float(since),  # type: ignore[arg-type]
            known_reset=bool(data.get("known_reset", True)),
            failures=failures if isinstance(failures, int) and not isinstance(failures, bool) else 1,
            message=message if isinstance(message, str) else None,
            probe_task=probe if isinstance(probe, str) else None,
        )

    # -- the dispatcher's questions ------------------------------------------------------------------

    def gate(self, now: float) -> Gate:
        if now < self.until:
            return "hold"
        if self.reason == "daily_budget":
            return "open"  # a new day: nothing to test
        return "probe" if self.probe_task is None else "hold"

    def probing(self, task_id: str) -> QueueHold:
        return replace(self, probe_task=task_id)

    # -- for people ----------------------------------------------------------------------------------

    def render(self, now: float) -> str:
        """One line for ``status`` and ``queue``."""
        label = _LABELS[self.reason]
        if self.reason == "daily_budget":
            detail = f" ({self.message})" if self.message else ""
            return f"holding: {label}{detail}, resumes {format_wait(self.until, now)}"
        if now >= self.until:
            if self.probe_task:
                return f"holding: {label}; task {self.probe_task} is checking whether it has lifted"
            return f"holding: {label}; the next task will check whether it has lifted"
        if self.known_reset:
            return f"holding: {label}, resets {format_wait(self.until, now)}"
        return f"holding: {label}, reset time unknown, next try {format_wait(self.until, now)}"


def format_wait(when: float, now: float) -> str:
    """ "13:00 UTC (in 42 min)"; with the date too when it is a day or more away."""
    moment = datetime.fromtimestamp(when, UTC)
    clock = f"{moment:%H:%M} UTC" if when - now < 86400 else f"{moment:%b} {moment.day} {moment:%H:%M} UTC"
    return f"{clock} ({_in(when - now)})"


def _in(seconds: float) -> str:
    if seconds <= 0:
        return "now"
    if seconds < 60:
        return f"in {math.ceil(seconds)} s"
    minutes = math.ceil(seconds / 60)
    if minutes < 60:
        return f"in {minutes} min"
    hours, rest = divmod(minutes, 60)
    if hours < 48:
        return f"in {hours} h {rest} min" if rest else f"in {hours} h"
    return f"in {round(hours / 24)} days"


def _escalation(previous: QueueHold | None, reason: HoldReason) -> int:
    if previous is None or previous.reason == "daily_budget":
        return 1
    transient = reason == "overloaded"
    return previous.failures + 1 if (previous.reason == "overloaded") == transient else 1


def on_task_end(hold: QueueHold | None, task_id: str, verdict: Verdict, *, now: float) -> QueueHold | None:
    """The queue's hold after a task ended with ``verdict`` (from :func:`limits.classify`).

    A limit starts (or, after a probe, renews) a hold: until the stated reset, or after a growing back-off
    when none was stated. Overload holds briefly, with its own shorter back-off. Any other end of the
    probe task clears the hold (the API answered it); other tasks' ends leave the hold as it is.
    """
    if isinstance(verdict, LimitHit | Transient):
        reason: HoldReason
        if isinstance(verdict, Transient):
            reason = "overloaded"
        else:
            reason = "usage_limit" if verdict.kind == "usage" else "rate_limit"
        resets_at = verdict.resets_at if isinstance(verdict, LimitHit) else None
        known = resets_at is not None and resets_at > now
        concurrent = (
            hold is not None
            and hold.reason != "daily_budget"
            and (hold.reason == "overloaded") == (reason == "overloaded")
            and now < hold.until
            and hold.probe_task != task_id
        )
        if concurrent and hold is not None:
            # Tasks that were already running meet the same limit: that is no failed probe, so the
            # back-off does not grow; only a stated reset later than the hold's end extends it.
            if known and resets_at is not None and resets_at > hold.until:
                return replace(hold, until=float(resets_at), known_reset=True, message=verdict.message)
            return hold
        failures = _escalation(hold, reason)
        until = (
            resets_at if known else now + unknown_reset_backoff(failures, transient=reason == "overloaded")
        )
        return QueueHold(reason, float(until), now, known, failures, verdict.message)  # type: ignore[arg-type]
    if hold is not None and hold.probe_task == task_id:
        return None
    return hold


def budget_hold(check: BudgetCheck, *, now: float, current: QueueHold | None = None) -> QueueHold | None:
    """The hold a daily-budget check calls for, or ``current`` if the budget allows a start.

    A limit hold already in force is kept when it lasts longer than the budget's (both must lift).
    """
    if check.allowed or check.until is None or check.budget is None:
        if current is not None and current.reason == "daily_budget":
            return None
        return current
    if current is not None and current.reason != "daily_budget" and current.until >= check.until:
        return current
    message = f"{format_usd(check.spent)} of {format_usd(check.budget)} spent today"
    if check.spent < check.budget:
        message += ", too little left for another task"
    return QueueHold("daily_budget", check.until, now, True, 1, message)
