"""The hold, the daily budget and fair turns deciding together
(:mod:`claude_issue_solver.store.admission`), over a real state file and the real queue's task records, on
an injected clock.

``_claim`` is what ``TaskQueue.claim()`` becomes with admission wired in; ``_end`` what the pipeline does
when a run ends. The agent's output is the stream-json the real CLI printed for each case (see
``tests/test_limits_real_cli.py``), read by the real :func:`limits.classify`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from claude_issue_solver.limits import classify
from claude_issue_solver.store import admission, budget
from claude_issue_solver.store.fairness import FairnessLimits
from claude_issue_solver.store.queue import TaskQueue, TaskState
from claude_issue_solver.store.state import StateStore

NOW = 1_796_112_000.0  # 2026-12-01 08:00 UTC
MIDNIGHT = 1_796_169_600.0  # 2026-12-02 00:00 UTC


class World:
    """A queue over a real state file, and an API that refuses until ``lifts_at``."""

    def __init__(self, tmp_path: Path, limits: FairnessLimits, daily_budget: float | None = None) -> None:
        self.now = NOW
        self.store = StateStore(tmp_path / "state.json", clock=lambda: self.now)
        self.queue = TaskQueue(self.store, max_concurrent=limits.max_concurrent, clock=lambda: self.now)
        self.limits = limits
        self.daily_budget = daily_budget
        self.lifts_at = 0.0
        self.stated_reset: float | None = None  # what the CLI says (None: an API key's bare 429)
        self.requests_while_limited: list[float] = []
        self.started: list[tuple[float, str]] = []

    def submit(self, repo: str, count: int) -> None:
        for n in range(count):
            assert self.queue.submit(repo, len(self.queue.list()) + n + 1, f"issue {n}") is not None

    def claim(self) -> str | None:
        with self.store.transaction() as data:
            if data.get("paused"):
                return None
            task_id = admission.admit(data, limits=self.limits, daily_budget=self.daily_budget, now=self.now)
            if task_id is None:
                return None
            data["tasks"][task_id].update(state=TaskState.RUNNING.value, started_at=self.now)
            self.started.append((self.now, task_id))
            return task_id

    def claim_all(self) -> list[str]:
        claimed = []
        while (task_id := self.claim()) is not None:
            claimed.append(task_id)
        return claimed

    def agent_output(self, cost: float) -> str:
        if self.now < self.lifts_at:
            self.requests_while_limited.append(self.now)
            events: list[dict[str, object]] = [{"type": "system", "subtype": "init"}]
            if self.stated_reset is not None:
                events.append(
                    {"type": "rate_limit_event",
                     "rate_limit_info": {"status": "rejected", "resetsAt": self.stated_reset}}
                )  # fmt: skip
            text = "API Error: Request rejected (429) · Number of requests has exceeded your rate limit."
            events.append({"type": "result", "subtype": "success", "is_error": True, "api_error_status": 429,
                           "result": text, "total_cost_usd": 0})  # fmt: skip
        else:
            events = [{"type": "result", "subtype": "success", "is_error": False, "total_cost_usd": cost}]
        return "\n".join(json.dumps(e) for e in events)

    def end(self, task_id: str, cost: float = 0.1) -> None:
        """A run ends: classify it, record the hold and the spend, then finish or requeue the task."""
        out = self.agent_output(cost)
        verdict = classify(out, exit_code=0 if '"is_error": false' in out else 1, now=self.now)
        task = self.queue.get(task_id)
        with self.store.transaction() as data:
            admission.record_end(data, task_id, verdict, now=self.now)
            if verdict is None:
                data["budget"] = budget.record(
                    data.get("budget"), repo=task.repo, run_id=f"{task.id}:1", cost_usd=cost, now=self.now
                )
        if verdict is None:
            self.queue.finish(task_id, TaskState.COMPLETED)
        else:
            self.queue.requeue(task_id, "waiting for the Claude limit to reset")

    def hold_line(self) -> str | None:
        hold = admission.current_hold(self.store.read(), daily_budget=self.daily_budget, now=self.now)
        return hold.render(self.now) if hold else None

    def states(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for task in self.queue.list():
            counts[task.state.value] = counts.get(task.state.value, 0) + 1
        return counts


def _run_until(world: World, until: float, step: float, on_start: Callable[[str], None]) -> None:
    """Every ``step`` seconds: start what may start, and end each run at once (one API request each)."""
    while world.now <= until:
        for task_id in world.claim_all():
            on_start(task_id)
        world.now += step


def test_a_usage_limit_with_a_stated_reset_holds_the_queue_then_one_probe_then_all(tmp_path: Path) -> None:
    world = World(tmp_path, FairnessLimits(max_concurrent=1))
    world.submit("acme/widgets", 5)
    world.lifts_at = world.stated_reset = NOW + 1800

    _run_until(world, NOW + 3600, 60, world.end)

    # One request when the limit hit, one probe at the reset (which passed), then the rest of the queue.
    assert world.requests_while_limited == [NOW]
    assert world.started[0] == (NOW, world.started[0][1])
    assert [t for t, _ in world.started[1:]] == [NOW + 1800 + 60 * i for i in range(5)]
    assert world.states() == {"completed": 5}
    assert world.store.read()["hold"] is None


def test_an_unknown_reset_probes_with_a_growing_back_off(tmp_path: Path) -> None:
    world = World(tmp_path, FairnessLimits(max_concurrent=3))
    world.submit("acme/widgets", 3)
    world.submit("acme/gadgets", 2)
    world.lifts_at = NOW + 1500  # the API's own reset; the CLI states none

    started_while_held: list[str] = []

    def on_start(task_id: str) -> None:
        world.end(task_id)
        if world.store.read()["hold"] is not None:
            started_while_held.append(world.hold_line() or "")

    _run_until(world, NOW + 3600, 30, on_start)

    # Three started at once before anyone knew; then probes at +5 and +15 min (5, then 10 more)
    # were refused; the probe at +35 min (20 more) got through and the queue ran.
    assert world.requests_while_limited == [NOW, NOW, NOW, NOW + 300, NOW + 900]
    assert world.states() == {"completed": 5}
    assert started_while_held[-1].startswith("holding: Claude rate limit, reset time unknown, next try")
    later = [t for t, _ in world.started if t > NOW]
    # One task per probe; the probe that passed cleared the hold, and the next turn started the rest.
    assert later == [NOW + 300, NOW + 900, NOW + 2100, *[NOW + 2130] * 3, NOW + 2160]


def test_the_hold_is_shown_with_its_end(tmp_path: Path) -> None:
    world = World(tmp_path, FairnessLimits(max_concurrent=1))
    world.submit("acme/widgets", 2)
    world.lifts_at = world.stated_reset = NOW + 42 * 60
    (first,) = world.claim_all()
    world.end(first)
    assert world.hold_line() == "holding: Claude usage limit, resets 08:42 UTC (in 42 min)"
    world.now = NOW + 42 * 60
    (probe,) = world.claim_all()
    assert world.claim_all() == []
    assert world.hold_line() == f"holding: Claude usage limit; task {probe} is checking whether it has lifted"


def test_a_cancelled_probe_hands_the_probe_to_another_task(tmp_path: Path) -> None:
    world = World(tmp_path, FairnessLimits(max_concurrent=2))
    world.submit("acme/widgets", 3)
    world.lifts_at = world.stated_reset = NOW + 600
    (first, second) = world.claim_all()
    world.end(first)
    world.end(second)
    world.now = NOW + 600
    (probe,) = world.claim_all()
    # An operator cancels the probe before it ends (the daemon records no verdict for it).
    world.queue.finish(probe, TaskState.CANCELLED, error="cancelled")
    (again,) = world.claim_all()
    assert again != probe
    assert world.claim_all() == []


def test_a_daily_budget_runs_two_and_the_rest_on_the_next_day(tmp_path: Path) -> None:
    world = World(tmp_path, FairnessLimits(max_concurrent=1), daily_budget=1.00)
    world.submit("acme/widgets", 4)

    _run_until(world, NOW + 3600, 60, lambda task_id: world.end(task_id, cost=0.45))
    assert world.states() == {"completed": 2, "pending": 2}
    assert world.hold_line() == (
        "holding: daily budget reached ($0.90 of $1.00 spent today, too little left for another task), "
        "resumes 00:00 UTC (in 14 h 59 min)"
    )
    with world.store.transaction() as data:
        assert budget.check(data["budget"], 1.0, now=world.now).line() == "spent $0.90 of $1.00 today"

    world.now = MIDNIGHT
    _run_until(world, MIDNIGHT + 3600, 60, lambda task_id: world.end(task_id, cost=0.45))
    assert world.states() == {"completed": 4}
    assert [t >= MIDNIGHT for t, _ in world.started] == [False, False, True, True]
    rows = budget.usage(world.store.read()["budget"], now=world.now)
    assert [(r.day, r.runs) for r in rows] == [("2026-12-02", 2), ("2026-12-01", 2)]


@pytest.mark.parametrize("max_concurrent", [1, 3])
def test_fair_turns_through_admission(tmp_path: Path, max_concurrent: int) -> None:
    world = World(tmp_path, FairnessLimits(max_concurrent=max_concurrent, repo_max_per_hour=10))
    world.submit("acme/a", 30)
    world.submit("acme/b", 1)
    first = world.claim_all()
    if max_concurrent == 1:
        world.end(first[0])
        first += world.claim_all()
    repos = [world.queue.get(t).repo for t in first]
    assert "acme/b" in repos[: max(2, max_concurrent)]

    for task_id in first:
        if world.queue.get(task_id).state is TaskState.RUNNING:
            world.end(task_id)
    # The hourly cap: at most 10 starts of acme/a in any hour.
    _run_until(world, NOW + 3599, 1, world.end)
    a_starts = [t for t, task_id in world.started if world.queue.get(task_id).repo == "acme/a"]
    assert len(a_starts) == 10
    world.now = NOW + 3600
    assert world.claim_all()
