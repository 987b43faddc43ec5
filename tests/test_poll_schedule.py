"""The poll schedule: polls spread evenly, stretched to fit the request budget, slowed to a safety net
while webhook deliveries arrive. The clock is injected; the last tests run the real watcher against the
loopback GitHub."""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from claude_issue_solver.cli.render import polling_payload
from claude_issue_solver.config import Config
from claude_issue_solver.daemon.loop import Daemon
from claude_issue_solver.daemon.metrics import poll_healthy
from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.github.client import GitHubClient
from claude_issue_solver.github.poll_schedule import (
    APP,
    PLAN_MARGIN,
    PollSchedule,
    owner_source,
    repo_source,
    status_line,
)
from claude_issue_solver.github.request_budget import POLL_SHARE
from claude_issue_solver.github.watcher import Watcher
from claude_issue_solver.github.webhooks import WebhookReceiver, delivery_sources
from claude_issue_solver.store.queue import Task, TaskQueue
from tests.github_fixtures import TOKEN, Clock
from tests.test_request_budget import most_in_any_minute
from tests.test_webhooks import SECRET, delivery
from tests.waiting import wait_until


def repos(n: int, owner: str = "org") -> list[str]:
    return [f"{owner}/repo-{i:04d}" for i in range(n)]


def run(schedule: PollSchedule, clock: Clock, seconds: float, step: float = 0.1) -> list[tuple[float, str]]:
    """Drive the schedule for ``seconds``; every poll it hands out costs one request."""
    polled: list[tuple[float, str]] = []
    for _ in range(round(seconds / step)):
        clock.advance(step)
        for repo in schedule.due():
            schedule.polled(repo, 1)
            polled.append((clock(), repo))
    return polled


def test_200_repositories_at_30_s_fit_the_default_budget_evenly(clock: Clock) -> None:
    schedule = PollSchedule(interval=30, webhook_interval=1800, per_minute=500, clock=clock)
    schedule.set_repos(repos(200))
    polled = run(schedule, clock, 600)
    assert most_in_any_minute([t for t, _ in polled]) <= 500 * POLL_SHARE  # the polls' share of 500
    per_repo = Counter(r for _, r in polled)
    assert set(per_repo.values()) <= {19, 20, 21}  # every repository every 30 s: 600 s / 30
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(polled)]
    assert max(gaps) <= 30 / 200 + 0.11  # one poll every 0.15 s, never a burst and a silence
    described = schedule.describe()
    assert not described["stretched"] and described["interval"] == pytest.approx(30)
    assert status_line(described) == "polling 200 repositories every 30 s"


def test_1000_repositories_stretch_the_interval_and_say_so(clock: Clock) -> None:
    schedule = PollSchedule(interval=30, webhook_interval=1800, per_minute=500, clock=clock)
    schedule.set_repos(repos(1000))
    polled = run(schedule, clock, 600)
    assert most_in_any_minute([t for t, _ in polled]) <= 500 * POLL_SHARE
    first = {}
    second = {}
    for t, repo in polled:
        (second if repo in first and repo not in second else first).setdefault(repo, t)
    gaps = {second[r] - first[r] for r in second}
    planned = 1000 / (500 * POLL_SHARE * PLAN_MARGIN) * 60  # 1,000 at 412 a minute: 146 s
    assert max(gaps) - min(gaps) < 0.5 and min(gaps) == pytest.approx(planned, rel=0.02)
    described = schedule.describe()
    assert described["stretched"]
    assert status_line(described) == (
        "polling 1,000 repositories every 2.4 min to stay within 500 requests/min (POLL_INTERVAL=30)"
    )


def test_polls_that_cost_more_stretch_further(clock: Clock) -> None:
    schedule = PollSchedule(interval=30, webhook_interval=1800, per_minute=500, clock=clock)
    schedule.set_repos(repos(1000))
    for _ in range(100):
        schedule.polled("org/repo-0000", 3)  # three requests a poll, as before the listings were cut
    planned = 1000 / (500 * POLL_SHARE * PLAN_MARGIN) * 60
    assert schedule.describe()["interval"] == pytest.approx(planned * 3, rel=0.02)


def test_webhook_deliveries_make_polling_a_safety_net_until_they_stop(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    schedule = PollSchedule(interval=30, webhook_interval=1800, per_minute=500, app=True, clock=clock)
    schedule.set_repos(repos(200))
    before = len(run(schedule, clock, 600))
    schedule.delivery([repo_source("org/repo-0007"), APP])  # a GitHub App's delivery covers all
    during = len(run(schedule, clock, 600))
    assert before >= 10 * during  # 4,000 polls in ten minutes, then 200 / 1800 s: about 67
    assert schedule.describe()["webhook_repos"] == 200
    assert status_line(schedule.describe()) == (
        "polling 200 repositories with webhook deliveries every 30 min (a safety net)"
    )
    assert "webhook deliveries arrive for every repository of the GitHub App" in caplog.text
    run(schedule, clock, 1210)  # 30 minutes without a delivery
    assert schedule.describe()["webhook_repos"] == 0
    assert "no webhook delivery for every repository of the GitHub App in 30 min" in caplog.text
    assert len(run(schedule, clock, 600)) >= 0.99 * before


def test_a_repository_hook_covers_its_repository_and_an_organisation_hook_its_owner(clock: Clock) -> None:
    schedule = PollSchedule(interval=30, webhook_interval=1800, per_minute=500, clock=clock)
    schedule.set_repos([*repos(3, "org"), *repos(2, "other")])
    schedule.delivery([repo_source("other/repo-0001")])
    assert [schedule.covered(r) for r in schedule.repos] == [False, False, False, False, True]
    schedule.delivery([owner_source("org")])
    assert [schedule.covered(r) for r in schedule.repos] == [True, True, True, False, True]
    # No App here: an App's source covers nothing.
    schedule.delivery([APP])
    assert not schedule.covered("other/repo-0000")


def test_delivery_sources_are_read_as_github_sends_them() -> None:
    headers, _ = delivery(repo="org/a")
    assert delivery_sources(headers, {"repository": {"full_name": "org/a"}}) == ("repo:org/a",)
    app = {"repository": {"full_name": "org/a"}, "installation": {"id": 7}}
    assert delivery_sources(headers, app) == ("repo:org/a", APP)
    org = {"repository": {"full_name": "org/a"}, "organization": {"login": "Org"}}
    assert delivery_sources({**headers, "X-GitHub-Hook-Installation-Target-Type": "organization"}, org) == (
        "repo:org/a",
        "owner:org",
    )


def test_a_ring_that_fell_behind_starts_again_without_a_burst(clock: Clock) -> None:
    schedule = PollSchedule(interval=30, webhook_interval=1800, per_minute=500, clock=clock)
    schedule.set_repos(repos(200))
    run(schedule, clock, 60)
    clock.advance(600)  # the client was paused for ten minutes
    assert len(schedule.due()) == 1


def test_a_safety_net_that_grows_polls_at_its_new_pace(clock: Clock) -> None:
    """One repository's hook first (a safety net of one: its next poll 30 min away), then the organisation's
    hook: the net's next slot comes at the pace of 200 members, not 30 min later (the safety net once
    polled nothing at all after this)."""
    schedule = PollSchedule(interval=30, webhook_interval=1800, per_minute=500, clock=clock)
    schedule.set_repos(repos(200))
    run(schedule, clock, 60)
    schedule.delivery([repo_source("org/repo-0066")])
    run(schedule, clock, 20)
    schedule.delivery([owner_source("org")])
    polled = run(schedule, clock, 300)
    assert schedule.describe()["webhook_repos"] == 200
    assert len(polled) == pytest.approx(300 / (1800 / 200), abs=2)  # one every 9 s


def test_health_allows_the_stretched_and_the_safety_net_intervals(clock: Clock) -> None:
    schedule = PollSchedule(interval=30, webhook_interval=1800, per_minute=500, clock=clock)
    schedule.set_repos(repos(1000))
    described = schedule.describe()
    health = {"last_success": clock() - 400}  # older than 3 x 30 s + 60, younger than 3 x 146 s
    assert poll_healthy(health, now=clock(), poll_interval=30, started_at=0, repo="org/repo-0001") is False
    assert poll_healthy(
        health, now=clock(), poll_interval=30, started_at=0, repo="org/repo-0001", schedule=described
    )
    paused = {**described, "paused_until": clock() + 60}
    assert poll_healthy({"last_success": 0}, now=clock(), poll_interval=30, started_at=0, schedule=paused)
    payload = polling_payload({"watcher": {"schedule": {**paused, "paused_why": "HTTP 429"}}}, clock())
    assert payload is not None and "no request to GitHub until" in payload["line"]


# --- the real watcher, the loopback GitHub, and a webhook ------------------------------------------------


class Idle:
    def run(self, task: Task, control: object) -> None:
        return None

    resume = run

    def reconcile(self, live: list[Task]) -> None:
        pass


@pytest.fixture
def org(github: FakeGitHub) -> list[str]:
    names = repos(18, "acme")
    for name in names:
        github.create_repo(name, {"README.md": "# r\n"})
        github.set_permission(name, "maintainer", "write")
    return ["acme/widgets", "acme/gadgets", *names]


def drive(
    daemon: Daemon,
    watcher: Watcher,
    clock: Clock,
    seconds: float,
    samples: list[tuple[float, int]],
    github: FakeGitHub,
    until: Callable[[], bool] | None = None,
) -> float:
    """Step the daemon on the injected clock, each poll finished before the clock moves on."""
    start = clock()
    while clock() - start < seconds:
        clock.advance(0.5)
        daemon.run_once()
        wait_until(lambda: not watcher._in_flight, 10, "the scheduled polls")
        samples.append((clock(), len(github.requests)))
        if until is not None and until():
            break
    return clock() - start


def test_the_daemon_keeps_to_the_budget_and_still_picks_up_a_label(
    github: FakeGitHub,
    org: list[str],
    make_config: Callable[..., Config],
    queue: TaskQueue,
    clock: Clock,
    tmp_path: Path,
) -> None:
    config = make_config(
        GITHUB_TOKEN=TOKEN,
        GITHUB_API_URL=github.api_url,
        GITHUB_REPOS=",".join(org),
        POLL_INTERVAL="5",
        GITHUB_REQUESTS_PER_MINUTE="25",  # about 20 polls a minute for 20 repositories: every 58 s, not 5
        WEBHOOK_POLL_INTERVAL="1800",
    )
    client = GitHubClient(config, clock=clock, sleep=clock.advance)
    watcher = Watcher(config, client, queue, clock=clock, jitter=lambda: 0.5)
    watcher.check_all()
    watcher.poll_all()  # the first look at each (its baselines), as the daemon's start does
    daemon = Daemon(
        queue,
        Idle(),
        watcher=watcher.poll_due,
        poll_interval=5,
        clock=clock,
        poll_one=watcher.poll_now,
        next_poll_in=watcher.next_poll_in,
    )
    daemon.startup()
    github.reset_counts()
    samples: list[tuple[float, int]] = []
    try:
        drive(daemon, watcher, clock, 240, samples, github)
        times = [
            t for (t, n), (_, before) in zip(samples[1:], samples, strict=False) for _ in range(n - before)
        ]
        assert most_in_any_minute(times) <= 25
        assert len(github.requests) >= 3 * 20  # and every repository was polled, about once a minute
        planned = 20 / (25 * POLL_SHARE * PLAN_MARGIN) * 60
        assert queue.store.read()["watcher"]["schedule"]["interval"] == pytest.approx(planned, rel=0.05)

        github.create_issue("acme/repo-0009", "Picked up by polling", labels=["Claude"], user="maintainer")
        took = drive(daemon, watcher, clock, 120, samples, github, until=lambda: bool(queue.list()))
        # Within the stretched interval, plus the poll's own work (the events, the labeller's permission,
        # what GitHub holds of ours: eight requests) at this tiny budget's pace.
        assert [t.repo for t in queue.list()] == ["acme/repo-0009"] and took <= planned + 30

        # Webhook deliveries (a GitHub App's would cover all; here each repository's own hook).
        receiver = WebhookReceiver(
            queue.store,
            SECRET,
            max_bytes=1 << 20,
            on_repository=daemon.poke,
            on_sources=watcher.schedule.delivery,
        )
        for name in org:
            headers, body = delivery(action="edited", repo=name)
            assert receiver.handle(headers, body).status == 202
        daemon.run_once()  # the pokes: each repository polled at once
        wait_until(lambda: not daemon._poked, 10, "the pokes")
        github.reset_counts()
        drive(daemon, watcher, clock, 600, samples, github)
        idle_with_hooks = len(github.requests)
        assert idle_with_hooks <= 20  # the safety net: each repository once in 30 min at most
        assert "webhook deliveries every 30 min" in polling_payload(queue.store.read(), clock())["line"]
    finally:
        watcher.close()
