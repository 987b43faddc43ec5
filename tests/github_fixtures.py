"""Fixtures for tests against the loopback GitHub (imported by conftest)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from claude_issue_solver.config import Config
from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.github.client import GitHubClient
from claude_issue_solver.github.watcher import Watcher
from claude_issue_solver.store.queue import TaskQueue

TOKEN = "ghp_loopbacktoken0123456789abcdefABCDEF"


class Clock:
    """A wall clock that moves only when told to."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def ticking_clock(start: datetime | None = None) -> Callable[[], datetime]:
    """GitHub's timestamps have one-second resolution; a clock that ticks a second per reading keeps
    every change distinct without the test waiting for real seconds to pass."""
    ticks = itertools.count()
    base = start or datetime(2026, 11, 1, tzinfo=UTC)
    return lambda: base + timedelta(seconds=next(ticks))


@pytest.fixture
def github(tmp_path: Path) -> Iterator[FakeGitHub]:
    fake = FakeGitHub(tmp_path / "github", tokens=(TOKEN,), clock=ticking_clock())
    fake.start()
    fake.create_repo("acme/widgets", {"README.md": "# widgets\n"})
    fake.create_repo("acme/gadgets", {"README.md": "# gadgets\n"})
    fake.set_permission("acme/widgets", "maintainer", "write")
    fake.set_permission("acme/gadgets", "maintainer", "write")
    fake.set_permission("acme/widgets", "drive-by", "read")
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def gh_config(github: FakeGitHub, make_config: Callable[..., Config]) -> Callable[..., Config]:
    def make(**settings: str) -> Config:
        base = {
            "GITHUB_TOKEN": TOKEN,
            "GITHUB_API_URL": github.api_url,
            "GITHUB_REPOS": "acme/widgets,acme/gadgets",
        }
        return make_config(**{**base, **settings})

    return make


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def watcher_for(queue: TaskQueue, clock: Clock, gh_config: Callable[..., Config]) -> Callable[..., Watcher]:
    def make(**settings: str) -> Watcher:
        config = gh_config(**settings)
        return Watcher(config, GitHubClient(config, clock=clock), queue, clock=clock, jitter=lambda: 0.5)

    return make
