"""Claude limits as a wait, the spend ledger and fair turns, through the daemon.

``LimitAwareRunner`` is the pipeline reduced to the hook the lead adds to it (see ``run_limits``): the
agent's output is the stream-json the real Claude Code 2.1.197 prints for each case (written down in
``tests/test_limits_real_cli.py``), read by the real ``parse_result`` and ``RunLimits.after_run``; the
daemon (``Daemon.run_once``) claims, runs the monitors and requeues; the state file is real; the clock
is injected. The API key's reset time comes from a real request to the loopback Messages API.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from claude_issue_solver.config import Config
from claude_issue_solver.daemon.loop import Daemon, Outcome, TaskControl
from claude_issue_solver.run import messages
from claude_issue_solver.run.agent import parse_result
from claude_issue_solver.run.run_limits import RunLimits
from claude_issue_solver.store import admission, budget
from claude_issue_solver.store.queue import Task, TaskQueue, TaskState
from claude_issue_solver.store.state import StateStore
from tests.fakes.fake_anthropic import FakeAnthropic
from tests.waiting import wait_until

NOW = 1_796_112_000.0  # 2026-12-01 08:00 UTC
MIDNIGHT = 1_796_169_600.0  # 2026-12-02 00:00 UTC
API_KEY = "sk-ant-test-key"


# -- what the real CLI prints ------------------------------------------------------------------------


def _lines(*events: dict[str, object]) -> str:
    return "\n".join(json.dumps(e) for e in events)


INIT = {"type": "system", "subtype": "init", "session_id": "s-1", "model": "claude-sonnet-4-5"}


def success(cost: float) -> tuple[str, int]:
    return _lines(INIT, {"type": "result", "subtype": "success", "is_error": False, "num_turns": 3,
                         "result": "Done.", "session_id": "s-1", "total_cost_usd": cost}), 0  # fmt: skip


def api_key_429() -> tuple[str, int]:
    """An API key's 429: no reset time anywhere."""
    text = "API Error: Request rejected (429) · Number of requests has exceeded your rate limit."
    return _lines(
        INIT,
        {"type": "assistant", "error": "rate_limit",
         "message": {"model": "<synthetic>", "role": "assistant",
                     "content": [{"type": "text", "text": text}]}},
        {"type": "result", "subtype": "success", "is_error": True, "api_error_status": 429, "result": text,
         "session_id": "s-1", "total_cost_usd": 0},
    ), 1  # fmt: skip


def subscription_limit(resets_at: float) -> tuple[str, int]:
    """A claude.ai login's usage limit: a rejected rate_limit_event with its reset time."""
    text = "You've hit your session limit · resets 10am (UTC)"
    return _lines(
        INIT,
        {"type": "rate_limit_event", "rate_limit_info": {"status": "rejected", "resetsAt": resets_at,
                                                         "rateLimitType": "five_hour"}},
        {"type": "result", "subtype": "success", "is_error": True, "result": text, "session_id": "s-1",
         "total_cost_usd": 0},
    ), 1  # fmt: skip


def overloaded() -> tuple[str, int]:
    text = "API Error: Repeated 529 Overloaded errors"
    return _lines(INIT, {"type": "result", "subtype": "success", "is_error": True, "api_error_status": 529,
                         "result": text, "total_cost_usd": 0}), 1  # fmt: skip


def budget_stop(spent: float) -> tuple[str, int]:
    errors = [f"Reached maximum budget (${spent})"]
    return _lines(INIT, {"type": "result", "subtype": "error_max_budget_usd", "is_error": True,
                         "errors": errors, "total_cost_usd": spent}), 1  # fmt: skip


# -- the world ---------------------------------------------------------------------------------------


class LimitAwareRunner:
    """What the pipeline does after an agent run, with the hook of ``run_limits`` (see the module doc)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.lock = threading.Lock()
        self.comments: dict[str, str] = {}
        self.runs: list[tuple[float, str]] = []

    def run(self, task: Task, control: TaskControl) -> Outcome | None:
        stdout, code = self.world.agent(task)
        with self.lock:
            self.runs.append((self.world.now, task.id))
        result = parse_result(stdout, exit_code=code)
        self.world.queue.update(task.id, cost_usd=result.cost_usd)
        # -- the hook, as the pipeline's _conclude() has it --
        end = self.world.limits.after_run(task, stdout=stdout, exit_code=code, cost_usd=result.cost_usd)
        if end.waits:
            self._comment(task, end.comment or "")
            return Outcome(TaskState.PENDING, error=end.wait_reason)
        if not result.ok:
            reason = end.failure or result.error or "the agent failed"
            self._comment(task, messages.failed_comment(task, reason, "Claude"))
            return Outcome(TaskState.FAILED, error=reason)
        self._comment(task, "✅ done")
        return Outcome(TaskState.COMPLETED)

    def _comment(self, task: Task, body: str) -> None:
        with self.lock:
            self.comments[task.id] = body

    resume = run

    def reconcile(self, live: list[Task]) -> None:
        return None


class World:
    def __init__(
        self, tmp_path: Path, *, max_concurrent: int = 1, daily_budget: float | None = None, **config: object
    ) -> None:
        self.now = NOW
        self.store = StateStore(tmp_path / "state.json", clock=lambda: self.now)
        settings = Config(state_dir=tmp_path, max_concurrent=max_concurrent, daily_budget_usd=daily_budget,
                          **config)  # type: ignore[arg-type]  # fmt: skip
        self.config = settings
        self.queue = TaskQueue.for_config(self.store, settings, clock=lambda: self.now)
        self.limits = RunLimits(self.queue, settings, clock=lambda: self.now)
        self.agent: Callable[[Task], tuple[str, int]] = lambda task: success(0.1)
        self.runner = LimitAwareRunner(self)
        self.daemon = Daemon(self.queue, self.runner, clock=lambda: self.now)

    def submit(self, repo: str, count: int) -> list[Task]:
        first = len(self.queue.list())
        return [self.queue.submit(repo, first + n + 1, f"issue {first + n + 1}") for n in range(count)]  # type: ignore[misc]

    def cycle(self) -> None:
        """One daemon cycle, and every run it started ended and recorded."""
        self.daemon.run_once()
        wait_until(lambda: not self.daemon.active, 10, "the runs to end")

    def run_until(self, until: float, step: float) -> None:
        while self.now <= until:
            self.cycle()
            self.now += step

    def states(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for task in self.queue.list():
            counts[task.state.value] = counts.get(task.state.value, 0) + 1
        return counts

    def hold_line(self) -> str | None:
        hold = admission.current_hold(
            self.store.read(), daily_budget=self.config.daily_budget_usd, now=self.now
        )
        return hold.render(self.now) if hold else None


def _scripted(world: World, limited_until: float, limited: Callable[[], tuple[str, int]]) -> list[float]:
    """The agent is refused until ``limited_until``; returns the times it was refused."""
    refused: list[float] = []

    def agent(task: Task) -> tuple[str, int]:
        if world.now < limited_until:
            refused.append(world.now)
            return limited()
        return success(0.1)

    world.agent = agent
    return refused


# -- limits are a wait -------------------------------------------------------------------------------


def test_five_issues_and_a_usage_limit_no_failure_comment_one_probe_then_all_five(tmp_path: Path) -> None:
    world = World(tmp_path, max_concurrent=1)
    tasks = world.submit("acme/widgets", 5)
    reset = NOW + 1800
    refused = _scripted(world, reset, lambda: subscription_limit(reset))

    world.cycle()
    first = world.queue.get(tasks[0].id)
    assert first.state is TaskState.PENDING and first.attempts == 0  # the run did not use an attempt
    assert first.error == "waiting for the Claude usage limit to reset (until 08:30 UTC); no attempt used"
    comment = world.runner.comments[first.id]
    assert comment.startswith("⏳ Claude's usage limit was reached, so the work on this issue is paused")
    assert "starts again when the limit resets, at 08:30 UTC (in 30 min)" in comment
    assert "❌" not in comment
    assert world.hold_line() == "holding: Claude usage limit, resets 08:30 UTC (in 30 min)"

    world.run_until(NOW + 3600, 60)

    assert refused == [NOW]  # the queue held: no other task met the limit, and the probe passed
    assert world.states() == {"completed": 5}
    assert not any("❌" in c for c in world.runner.comments.values())
    starts = [t for t, _ in world.runner.runs]
    # The event's resetsAt wins over the text: the held task is the probe, at 08:30, and no other task
    # starts before it (MAX_CONCURRENT=1 keeps them after its end). Not "in a later cycle": a run this
    # short can end before the same cycle's next claim, which then starts the next task at once -- how
    # often depends on the machine's load, so the test does not count cycles.
    assert starts[:2] == [NOW, reset] and len(starts) == 6
    assert world.runner.runs[1][1] == tasks[0].id
    assert all(t >= reset for t in starts[2:])
    assert world.store.read()["hold"] is None
    assert all(t.attempts == 1 for t in world.queue.list())


def test_an_api_keys_429_asks_the_api_once_for_the_reset(tmp_path: Path) -> None:
    with FakeAnthropic(api_key=API_KEY) as api:
        api.limits.rate_limit(retry_after=600)
        world = World(tmp_path, max_concurrent=3, anthropic_api_key=API_KEY, anthropic_base_url=api.url)
        world.submit("acme/widgets", 3)
        together = threading.Barrier(3)

        def agent(task: Task) -> tuple[str, int]:
            together.wait(10)  # the three runs end at the same moment
            return api_key_429()

        world.agent = agent

        world.cycle()  # three runs met the limit at once

        probes = [r for r in api.requests if r.kind == "limited"]
        # The first to record its end asked the API; the others found the hold in force and did not.
        assert len(probes) == 1
        assert probes[0].headers.get("x-api-key") == API_KEY
        assert world.hold_line() == "holding: Claude rate limit, resets 08:10 UTC (in 10 min)"
        assert world.states() == {"pending": 3}
        assert {t.attempts for t in world.queue.list()} == {0}
        comments = world.runner.comments.values()
        assert all("starts again when the limit resets, at 08:10 UTC" in c for c in comments)


def test_no_answer_about_the_reset_backs_off_and_says_so(tmp_path: Path) -> None:
    # An API key, but the API cannot be reached for the probe (nothing listens on this port).
    world = World(tmp_path, anthropic_api_key=API_KEY, anthropic_base_url="http://127.0.0.1:9")
    (task,) = world.submit("acme/widgets", 1)
    refused = _scripted(world, NOW + 1000, api_key_429)

    world.cycle()
    assert (
        world.hold_line() == "holding: Claude rate limit, reset time unknown, next try 08:05 UTC (in 5 min)"
    )
    assert "Claude did not say when the limit resets" in world.runner.comments[task.id]

    world.run_until(NOW + 2400, 60)
    # Probes after 5 and 10 more minutes were refused too; the one 20 minutes later (+35 min) passed.
    assert refused == [NOW, NOW + 300, NOW + 900]
    assert [t for t, _ in world.runner.runs] == [NOW, NOW + 300, NOW + 900, NOW + 2100]
    assert world.states() == {"completed": 1}
    assert world.queue.get(task.id).attempts == 1


def test_an_overloaded_api_is_retried_later_not_failed(tmp_path: Path) -> None:
    world = World(tmp_path)
    (task,) = world.submit("acme/widgets", 1)
    _scripted(world, NOW + 30, overloaded)
    world.cycle()
    assert world.queue.get(task.id).state is TaskState.PENDING
    assert (
        world.hold_line()
        == "holding: Claude API overloaded, reset time unknown, next try 08:01 UTC (in 1 min)"
    )
    world.run_until(NOW + 120, 60)
    assert world.states() == {"completed": 1}


def test_a_limit_never_uses_up_the_attempts(tmp_path: Path) -> None:
    world = World(tmp_path, max_attempts=1)
    (task,) = world.submit("acme/widgets", 1)
    refused = _scripted(world, NOW + 3 * 3600, lambda: subscription_limit(world.now + 600))
    world.run_until(NOW + 4 * 3600, 60)
    assert len(refused) > 5
    assert world.queue.get(task.id).state is TaskState.COMPLETED


def test_recording_the_same_runs_end_twice_refunds_one_attempt(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.submit("acme/widgets", 1)
    task = world.queue.claim()
    assert task is not None and task.attempts == 1
    stdout, code = subscription_limit(NOW + 600)
    for _ in range(2):  # a daemon that died after recording and resumed the task records it again
        assert world.limits.after_run(task, stdout=stdout, exit_code=code, cost_usd=0.0).waits
    assert world.queue.get(task.id).attempts == 0


# -- budgets -----------------------------------------------------------------------------------------


def test_a_run_stopped_at_its_budget_fails_saying_what_it_spent(tmp_path: Path) -> None:
    world = World(tmp_path, claude_max_budget_usd=0.5)
    (task,) = world.submit("acme/widgets", 1)
    world.agent = lambda task: budget_stop(0.5213)
    world.cycle()
    done = world.queue.get(task.id)
    assert done.state is TaskState.FAILED
    assert done.error == (
        "Claude Code stopped at its spending limit of $0.50 per run (CLAUDE_MAX_BUDGET_USD) "
        "after spending $0.52"
    )
    assert "❌" in world.runner.comments[task.id]
    assert budget.spent_today(world.store.read()["budget"], now=world.now) == pytest.approx(0.5213)


def test_every_run_is_booked_once_per_run(tmp_path: Path) -> None:
    world = World(tmp_path)
    (task,) = world.submit("acme/widgets", 1)
    claimed = world.queue.claim()
    assert claimed is not None
    stdout, code = success(0.25)
    world.limits.after_run(claimed, stdout=stdout, exit_code=code, cost_usd=0.25)
    world.limits.after_run(claimed, stdout=stdout, exit_code=code, cost_usd=0.25)  # recorded again
    ledger = world.store.read()["budget"]
    assert ledger == {"days": {"2026-12-01": {"acme/widgets": {f"{task.id}:1": 0.25}}}}


def test_a_daily_budget_runs_two_and_the_rest_on_the_next_day(tmp_path: Path) -> None:
    world = World(tmp_path, daily_budget=1.0)
    world.submit("acme/widgets", 2)
    world.submit("acme/gadgets", 2)
    world.agent = lambda task: success(0.45)

    world.run_until(NOW + 3600, 60)
    assert world.states() == {"completed": 2, "pending": 2}
    assert world.hold_line() == (
        "holding: daily budget reached ($0.90 of $1.00 spent today, too little left for another task), "
        "resumes 00:00 UTC (in 14 h 59 min)"
    )

    world.now = MIDNIGHT
    world.run_until(MIDNIGHT + 600, 60)
    assert world.states() == {"completed": 4}
    rows = budget.usage(world.store.read()["budget"], now=world.now)
    assert {(r.day, r.repo, round(r.cost_usd, 2)) for r in rows} == {
        ("2026-12-02", "acme/widgets", 0.45), ("2026-12-02", "acme/gadgets", 0.45),
        ("2026-12-01", "acme/widgets", 0.45), ("2026-12-01", "acme/gadgets", 0.45),
    }  # fmt: skip


# -- fair turns --------------------------------------------------------------------------------------


class Gated:
    """A runner whose runs end only when the test says so."""

    def __init__(self) -> None:
        self.started: list[Task] = []
        self.release = threading.Event()

    def run(self, task: Task, control: TaskControl) -> Outcome | None:
        self.started.append(task)
        self.release.wait(10)
        return Outcome(TaskState.COMPLETED)

    resume = run

    def reconcile(self, live: list[Task]) -> None:
        return None


def test_one_busy_repository_does_not_starve_another(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json")
    queue = TaskQueue.for_config(store, Config(state_dir=tmp_path, max_concurrent=3), clock=lambda: NOW)
    for n in range(30):
        queue.submit("acme/busy", n + 1, f"busy {n + 1}")
    queue.submit("acme/quiet", 1, "the only one")
    runner = Gated()
    daemon = Daemon(queue, runner)
    try:
        daemon.run_once()
        assert [t.repo for t in runner.started] == ["acme/busy", "acme/quiet", "acme/busy"]
    finally:
        runner.release.set()
        wait_until(lambda: not daemon.active, 10, "the runs to end")


def test_repository_caps_hold_back_one_repository_only(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json")
    config = Config(state_dir=tmp_path, max_concurrent=3, repo_max_concurrent=1)
    queue = TaskQueue.for_config(store, config, clock=lambda: NOW)
    for n in range(5):
        queue.submit("acme/busy", n + 1, f"busy {n + 1}")
    runner = Gated()
    daemon = Daemon(queue, runner)
    try:
        daemon.run_once()
        assert len(runner.started) == 1  # REPO_MAX_CONCURRENT=1, though MAX_CONCURRENT allows three
        queue.submit("acme/quiet", 1, "another repository")
        daemon.run_once()
        assert [t.repo for t in runner.started] == ["acme/busy", "acme/quiet"]
    finally:
        runner.release.set()
        wait_until(lambda: not daemon.active, 10, "the runs to end")
