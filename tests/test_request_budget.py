"""The request budget: at most GITHUB_REQUESTS_PER_MINUTE in any minute, work first, and GitHub's
"wait" answers (secondary limits, x-poll-interval) honoured for the whole client. Time is injected."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from claude_issue_solver.config import Config
from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.github.client import GitHubClient, RateLimited, Transient
from claude_issue_solver.github.request_budget import POLL_SHARE, WINDOW, Priority, RequestBudget, Throttled
from claude_issue_solver.github.watcher import Watcher
from tests.github_fixtures import Clock

REPO = "acme/widgets"


def most_in_any_minute(times: list[float]) -> int:
    times = sorted(times)
    most, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - WINDOW:
            start += 1
        most = max(most, end - start + 1)
    return most


def budget_on(clock: Clock, per_minute: int) -> tuple[RequestBudget, list[float]]:
    sent: list[float] = []
    budget = RequestBudget(per_minute, clock=clock, sleep=clock.advance)
    original = budget.acquire

    def acquire(priority: Priority = Priority.WORK) -> None:
        original(priority)
        sent.append(clock())

    budget.acquire = acquire  # type: ignore[method-assign]
    return budget, sent


def test_polls_never_exceed_their_share_in_any_minute(clock: Clock) -> None:
    budget, sent = budget_on(clock, 500)
    for _ in range(2000):
        budget.acquire(Priority.POLL)
    assert most_in_any_minute(sent) == int(500 * POLL_SHARE)
    assert sent[-1] - sent[0] >= 4 * WINDOW  # 2,000 polls at 425 a minute take at least four minutes


def test_work_goes_first_while_polls_fill_their_share(clock: Clock) -> None:
    budget, sent = budget_on(clock, 100)
    for _ in range(int(100 * POLL_SHARE)):
        budget.acquire(Priority.POLL)
    start = clock()
    for _ in range(100 - int(100 * POLL_SHARE)):
        budget.acquire(Priority.WORK)  # the part of the window polls may not use
    assert clock() == start  # no wait at all
    budget.acquire(Priority.WORK)  # the window is full now: even work waits for the oldest to leave it
    assert clock() > start
    assert most_in_any_minute(sent) == 100


def test_a_pause_refuses_polls_and_holds_short_work(clock: Clock) -> None:
    budget = RequestBudget(500, clock=clock, sleep=clock.advance)
    budget.pause(clock() + 30, "rate limited by GitHub (HTTP 429)")
    with pytest.raises(Throttled):
        budget.acquire(Priority.POLL)
    with pytest.raises(Throttled):
        budget.acquire(Priority.POKE)
    start = clock()
    budget.acquire(Priority.WORK)  # 30 s: work waits for it
    assert clock() - start == pytest.approx(30)
    budget.pause(clock() + 3600, "API rate limit exceeded")
    with pytest.raises(Throttled):
        budget.acquire(Priority.WORK)  # an hour: refused, not held


@pytest.fixture
def client_for(gh_config: Callable[..., Config], clock: Clock) -> Callable[..., GitHubClient]:
    def make(**settings: str) -> GitHubClient:
        return GitHubClient(gh_config(**settings), clock=clock, sleep=clock.advance)

    return make


@pytest.mark.parametrize(
    ("status", "retry_after", "wait"),
    [(403, 90, 90), (429, 120, 120), (403, None, 60)],  # without Retry-After: wait at least a minute
)
def test_a_secondary_limit_pauses_the_whole_client(
    github: FakeGitHub,
    client_for: Callable[..., GitHubClient],
    clock: Clock,
    status: int,
    retry_after: int | None,
    wait: int,
) -> None:
    client = client_for()
    github.secondary_limit(f"/api/v3/repos/{REPO}", status=status, retry_after=retry_after)
    with pytest.raises(RateLimited) as raised:
        client.request(REPO, "GET", f"/repos/{REPO}/issues")
    assert raised.value.status == status
    assert client.budget.paused_until == clock() + wait
    github.reset_counts()
    with client.priority(Priority.POLL), pytest.raises(RateLimited) as refused:
        client.request("acme/gadgets", "GET", "/repos/acme/gadgets/issues")  # another repository
    assert refused.value.status is None and github.requests == []  # not sent at all
    clock.advance(wait)
    assert client.request("acme/gadgets", "GET", "/repos/acme/gadgets/issues").status == 200


def test_work_waits_out_a_short_pause_and_is_sent(
    github: FakeGitHub, client_for: Callable[..., GitHubClient], clock: Clock
) -> None:
    client = client_for()
    github.secondary_limit(f"/api/v3/repos/{REPO}/issues/1/comments", status=429, retry_after=20)
    github.create_issue(REPO, "x", user="maintainer")
    with pytest.raises(RateLimited):
        client.request(REPO, "POST", f"/repos/{REPO}/issues/1/comments", body={"body": "hi"})
    start = clock()
    client.request(REPO, "POST", f"/repos/{REPO}/issues/1/comments", body={"body": "hi"})
    assert clock() - start == pytest.approx(20)
    assert [c["body"] for c in github.comments(REPO, 1)] == ["hi"]


def test_a_work_request_s_secondary_limit_pauses_everyone_then_it_is_sent_again(
    github: FakeGitHub,
    client_for: Callable[..., GitHubClient],
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """PyGithub's own retry slept a secondary limit out in the one thread while every other thread went on
    sending: here the whole client pauses, and the work request (retried) goes again when it ends."""
    client = client_for()
    github.create_issue(REPO, "x", user="maintainer")
    github.secondary_limit(f"/api/v3/repos/{REPO}/issues/1/comments", status=403, retry_after=30)
    github.reset_counts()
    start = clock()
    client.request(REPO, "POST", f"/repos/{REPO}/issues/1/comments", body={"body": "hi"}, retry=True)
    # Every request of the client waited for it (the pause is over now, so it is read from the log).
    assert "rate limited by GitHub (HTTP 403) until 08:00:30Z: no request to GitHub until then" in caplog.text
    assert clock() - start == pytest.approx(30)  # on the client's clock, not a sleep inside urllib3
    assert [r.status for r in github.requests] == [403, 201]
    assert [c["body"] for c in github.comments(REPO, 1)] == ["hi"]


def test_a_long_limit_on_a_work_request_comes_back_at_once(
    github: FakeGitHub, client_for: Callable[..., GitHubClient], clock: Clock
) -> None:
    client = client_for()
    github.secondary_limit(f"/api/v3/repos/{REPO}", status=429, retry_after=900)
    start = clock()
    with pytest.raises(RateLimited) as raised:
        client.request(REPO, "GET", f"/repos/{REPO}/issues", retry=True)
    assert raised.value.status == 429 and raised.value.until == start + 900
    assert clock() == start and len(github.requests) == 1  # no wait, no second try: the pause holds
    assert client.budget.paused_until == start + 900


def test_retries_of_a_failing_github_take_budget_slots_and_back_off(
    github: FakeGitHub, client_for: Callable[..., GitHubClient], clock: Clock
) -> None:
    client = client_for()
    github.fail_next(f"/api/v3/repos/{REPO}/issues", 502, 2)
    github.reset_counts()
    start = clock()
    assert client.request(REPO, "GET", f"/repos/{REPO}/issues", retry=True).status == 200
    assert [r.status for r in github.requests] == [502, 502, 200]
    assert client.budget.counts[Priority.WORK] == 3  # each try is a request of the budget
    assert clock() - start == pytest.approx(1.0)  # none before the first retry, 1 s before the second

    github.fail_next(f"/api/v3/repos/{REPO}/issues", 502, 10)
    github.reset_counts()
    with pytest.raises(Transient) as raised:
        client.request(REPO, "GET", f"/repos/{REPO}/issues", retry=True)
    assert raised.value.status == 502 and "HTTP 502" in str(raised.value)  # GitHub's answer, named
    assert len(github.requests) == 4 and client.budget.counts[Priority.WORK] == 7


def test_a_retry_is_not_sent_while_github_asked_the_client_to_wait(
    github: FakeGitHub, client_for: Callable[..., GitHubClient], clock: Clock
) -> None:
    client = client_for()
    github.fail_next(f"/api/v3/repos/{REPO}/issues", 502, 2)
    github.reset_counts()

    def backoff(seconds: float) -> None:  # another thread met a long secondary limit meanwhile
        client.budget.pause(clock() + 900, "a secondary rate limit")
        clock.advance(seconds)

    client._sleep = backoff
    with pytest.raises(RateLimited) as raised:
        client.request(REPO, "GET", f"/repos/{REPO}/issues", retry=True)
    assert raised.value.status is None  # refused here, not sent
    assert [r.status for r in github.requests] == [502, 502]


def test_x_poll_interval_is_honoured_per_repository(
    github: FakeGitHub, watcher_for: Callable[..., Watcher], clock: Clock
) -> None:
    github.set_poll_interval(f"/api/v3/repos/{REPO}/issues", 300)
    watcher = watcher_for(POLL_INTERVAL="30")
    watcher()
    assert watcher.schedule.interval_for(REPO) == 300
    assert watcher.schedule.interval_for("acme/gadgets") == 30
    polled: list[str] = []
    for _ in range(630):  # ten minutes and a half in steps of a second
        clock.advance(1)
        for repo in watcher.schedule.due():
            watcher.schedule.polled(repo, 1)
            polled.append(repo)
    assert polled.count(REPO) == 2  # at 300 s and 600 s after the first poll, not every 30 s
    assert polled.count("acme/gadgets") == 22  # the first round at once, then every 30 s


def test_background_work_only_uses_what_polls_and_work_leave(clock: Clock) -> None:
    from claude_issue_solver.github.request_budget import BACKGROUND_SHARE

    budget, _ = budget_on(clock, 100)
    for _ in range(int(100 * BACKGROUND_SHARE)):
        budget.acquire(Priority.POLL)
    start = clock()
    budget.acquire(Priority.POLL)  # polls still have room ...
    assert clock() == start
    budget.acquire(Priority.BACKGROUND)  # ... background work waits until the window empties below its share
    assert clock() - start == pytest.approx(WINDOW)
    assert budget.counts[Priority.BACKGROUND] == 1
