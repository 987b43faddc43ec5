"""Prometheus metrics, in a registry of our own (never the process-wide default one).

Two kinds: what happens in this process is counted as it happens (webhook deliveries, GitHub requests,
task and agent durations, cost); what the state file already knows (tasks by state, the queue, the hold,
poll health, GitHub's rate limit) is read from it at each scrape, so ``/metrics`` is never stale and the
CLI's changes show up as well.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from claude_issue_solver.conventions import HIT, MISS, NOT_SAVED, SAVED, SAVING
from claude_issue_solver.github.poll_schedule import expected_interval, paused
from claude_issue_solver.store import admission, budget
from claude_issue_solver.store.queue import Task, TaskState
from claude_issue_solver.store.state import StateStore

PREFIX = "claude_issue_solver"
TASK_BUCKETS = (30, 60, 120, 300, 600, 900, 1800, 3600, 7200, float("inf"))


HEALTH_SLACK = 60.0  # a success after a success is written within a minute (watcher.HEALTH_FLUSH)


def poll_healthy(
    health: dict[str, Any],
    *,
    now: float,
    poll_interval: float,
    started_at: float,
    repo: str = "",
    schedule: dict[str, Any] | None = None,
) -> bool:
    """A repository is healthy when it polled successfully within three of its intervals (as the
    schedule stretched it, or slowed it for webhooks; a daemon younger than that gets the same grace),
    or waits because GitHub told it, or the whole client, to (a rate limit is not a fault)."""
    window = 3 * expected_interval(schedule, repo, poll_interval) + HEALTH_SLACK
    if health.get("rate_limited") or paused(schedule, now):
        return True
    last = float(health.get("last_success") or 0)
    return now - last <= window or (not health.get("last_error") and now - started_at <= window)


def setup_cache_lookup(task: Task) -> str | None:
    """``hit`` or ``miss`` for a task whose setup the cache was asked about (``meta.tests.cache``);
    None when it was not (no setup command, SETUP_CACHE off, a backend without a cache)."""
    tests = task.meta.get("tests")
    cache = tests.get("cache") if isinstance(tests, dict) else None
    state = cache.get("state") if isinstance(cache, dict) else None
    if state == HIT:
        return "hit"
    if state in (MISS, SAVING, SAVED, NOT_SAVED):
        return "miss"
    return None


class StateCollector(Collector):
    """Gauges read from the state file at scrape time."""

    def __init__(
        self,
        store: StateStore,
        *,
        repos: Callable[[], list[str]],
        poll_interval: float,
        daily_budget: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.repos = repos
        self.poll_interval = poll_interval
        self.daily_budget = daily_budget
        self.clock = clock
        self.started_at = clock()

    def describe(self) -> list[Any]:
        return []  # collected on demand: describing would read the state file at registration

    def collect(self) -> Iterator[GaugeMetricFamily]:
        data = self.store.read()
        now = self.clock()
        tasks = GaugeMetricFamily(
            f"{PREFIX}_tasks", "Tasks in the state file by state and kind", labels=["state", "kind"]
        )
        counts: dict[tuple[str, str], int] = {}
        for raw in (data.get("tasks") or {}).values():
            key = (str(raw.get("state")), str(raw.get("kind") or "issue"))
            counts[key] = counts.get(key, 0) + 1
        for state in TaskState:
            counts.setdefault((state.value, "issue"), 0)
        for (state, kind), count in sorted(counts.items()):
            tasks.add_metric([state, kind], count)
        yield tasks

        depth = sum(c for (s, _), c in counts.items() if s == TaskState.PENDING.value)
        yield GaugeMetricFamily(f"{PREFIX}_queue_depth", "Pending tasks waiting for a turn", value=depth)

        hold = admission.current_hold(data, daily_budget=self.daily_budget, now=now)
        holds = GaugeMetricFamily(
            f"{PREFIX}_queue_hold", "1 while the queue is held, by reason", labels=["reason"]
        )
        if hold is not None:
            holds.add_metric([hold.reason], 1)
        yield holds
        yield GaugeMetricFamily(
            f"{PREFIX}_paused", "1 while the queue is paused", value=1 if data.get("paused") else 0
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_cost_today_usd",
            "Claude spend recorded today (UTC)",
            value=budget.spent_today(data.get("budget"), now=now),
        )

        book = (data.get("watcher") or {}).get("repos") or {}
        healthy = GaugeMetricFamily(
            f"{PREFIX}_poll_healthy", "1 when the repository polls fine", labels=["repo"]
        )
        last = GaugeMetricFamily(
            f"{PREFIX}_poll_last_success_timestamp_seconds", "When the last poll succeeded", labels=["repo"]
        )
        failures = GaugeMetricFamily(f"{PREFIX}_poll_failures", "Failed polls in a row", labels=["repo"])
        remaining = GaugeMetricFamily(
            f"{PREFIX}_github_rate_limit_remaining", "GitHub's rate limit left, as last seen", labels=["repo"]
        )
        schedule = (data.get("watcher") or {}).get("schedule")
        for repo in self.repos():
            health = book.get(repo) or {}
            ok = poll_healthy(
                health,
                now=now,
                poll_interval=self.poll_interval,
                started_at=self.started_at,
                repo=repo,
                schedule=schedule,
            )
            healthy.add_metric([repo], 1 if ok else 0)
            last.add_metric([repo], float(health.get("last_success") or 0))
            failures.add_metric([repo], int(health.get("failures") or 0))
            if health.get("rate_remaining") is not None:
                remaining.add_metric([repo], int(health["rate_remaining"]))
        yield from (healthy, last, failures, remaining)

        hooks = data.get("webhooks") if isinstance(data.get("webhooks"), dict) else {}
        yield GaugeMetricFamily(
            f"{PREFIX}_webhook_signature_failures",
            "Deliveries refused for a missing or wrong signature (all time, as recorded)",
            value=int(hooks.get("signature_failures") or 0),
        )


class Metrics:
    """Everything ``/metrics`` shows. ``render()`` gives the text format."""

    def __init__(self, collector: StateCollector | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.deliveries = Counter(
            f"{PREFIX}_webhook_deliveries",
            "Webhook deliveries by result",
            ["result"],
            registry=self.registry,
        )
        for result in ("accepted", "ignored", "duplicate", "bad_signature", "malformed", "too_large"):
            self.deliveries.labels(result)
        self.listener_refused = Counter(
            f"{PREFIX}_listener_refused",
            "Requests the listener refused before any route saw them: bad_request (malformed, headers "
            "too large), deadline (not whole within the request deadline; the connection is closed)",
            ["reason"],
            registry=self.registry,
        )
        for reason in ("bad_request", "deadline"):
            self.listener_refused.labels(reason)
        self.listener_connections = Gauge(
            f"{PREFIX}_listener_connections", "Connections open to the listener now", registry=self.registry
        )
        self.github_requests = Counter(
            f"{PREFIX}_github_requests",
            "GitHub API requests by outcome: 304 (free), counted (2xx), error",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in ("304", "counted", "error"):
            self.github_requests.labels(outcome)
        self.task_duration = Histogram(
            f"{PREFIX}_task_duration_seconds",
            "From a task's start to its end",
            ["state"],
            buckets=TASK_BUCKETS,
            registry=self.registry,
        )
        self.agent_duration = Histogram(
            f"{PREFIX}_agent_duration_seconds",
            "How long the agent ran, as it reported",
            buckets=TASK_BUCKETS,
            registry=self.registry,
        )
        self.cost = Counter(
            f"{PREFIX}_cost_usd", "Claude spend of the runs this daemon finished", registry=self.registry
        )
        self.tasks_finished = Counter(
            f"{PREFIX}_tasks_finished",
            "Tasks this daemon saw end, by state",
            ["state"],
            registry=self.registry,
        )
        self.setup_cache = Counter(
            f"{PREFIX}_setup_cache_lookups",
            "The setup cache at the tasks this daemon saw end: hit (restored, setup not run) or miss "
            "(setup ran); the hit rate is hit / (hit + miss)",
            ["result"],
            registry=self.registry,
        )
        for result in ("hit", "miss"):
            self.setup_cache.labels(result)
        if collector is not None:
            self.registry.register(collector)

    def task_finished(self, task: Task) -> None:
        """Observe one finished task (as read back from the queue after it ended)."""
        self.tasks_finished.labels(task.state.value).inc()
        if task.started_at and task.finished_at:
            self.task_duration.labels(task.state.value).observe(max(0.0, task.finished_at - task.started_at))
        if task.duration_ms:
            self.agent_duration.observe(task.duration_ms / 1000)
        if task.cost_usd:
            self.cost.inc(task.cost_usd)
        looked = setup_cache_lookup(task)
        if looked is not None:
            self.setup_cache.labels(looked).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
