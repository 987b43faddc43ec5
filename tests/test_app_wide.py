"""App-wide watching: with a GitHub App and no GITHUB_REPOS, every repository of every installation."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from claude_issue_solver.cli.main import main
from claude_issue_solver.config import Config
from claude_issue_solver.daemon.loop import Daemon, Outcome
from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.github.client import GitHubClient
from claude_issue_solver.github.watcher import ALL_REPOS, APP_REPOS_REFRESH, Watcher
from claude_issue_solver.store.queue import Task, TaskQueue
from tests.github_fixtures import Clock
from tests.test_github_app import app_config


class Idle:
    def run(self, task: Task, control: object) -> Outcome | None:
        return None

    resume = run

    def reconcile(self, live: list[Task]) -> None:
        pass


@pytest.fixture
def app_wide(github: FakeGitHub, tmp_path: Path, make_config: Callable[..., Config]) -> Config:
    github.create_repo("acme/gizmos", {"README.md": "# gizmos\n"})
    github.create_repo("other/elsewhere", {"README.md": "# not ours\n"})
    github.set_permission("acme/gizmos", "maintainer", "write")
    config = app_config(github, tmp_path, make_config)
    config = make_config(
        GITHUB_APP_ID="4242",
        GITHUB_APP_PRIVATE_KEY_PATH=str(config.github_app_private_key_path),
        GITHUB_API_URL=github.api_url,
        GITHUB_REPOS="*",
    )
    github.install_app(4242, "acme")  # every repository of the account: three
    return config


def test_an_installation_with_three_repositories_is_watched_whole(
    github: FakeGitHub, app_wide: Config, queue: TaskQueue
) -> None:
    assert app_wide.app_wide and app_wide.github_repos == ()
    app_wide.require_daemon_settings()
    clock = Clock(time.time())  # installation tokens expire in real time
    watcher = Watcher(app_wide, GitHubClient(app_wide, clock=clock), queue, clock=clock)
    checks = watcher.check_all()
    assert [c.repo for c in checks] == ["acme/gadgets", "acme/gizmos", "acme/widgets"]
    assert all(c.ok for c in checks), checks
    for repo in ("acme/widgets", "acme/gadgets", "acme/gizmos"):
        github.create_issue(repo, f"Work in {repo}", labels=["Claude"], user="maintainer")
    watcher()
    assert sorted(t.repo for t in queue.list()) == ["acme/gadgets", "acme/gizmos", "acme/widgets"]

    github.reset_counts()
    watcher()  # idle: one conditional request per repository, no new listing of installations
    listings = [r for r in github.requests if r.path.endswith("/issues")]
    assert sorted(r.path for r in listings) == [
        f"/api/v3/repos/acme/{n}/issues" for n in ("gadgets", "gizmos", "widgets")
    ]
    assert all(r.status == 304 for r in listings)
    assert not [r for r in github.requests if "/installation" in r.path]
    clock.advance(APP_REPOS_REFRESH)
    watcher()
    assert len([r for r in github.requests if r.path == "/api/v3/app/installations"]) == 1


def test_an_installation_event_adds_the_new_repositories_at_once(
    github: FakeGitHub, app_wide: Config, queue: TaskQueue
) -> None:
    clock = Clock(time.time())
    watcher = Watcher(app_wide, GitHubClient(app_wide, clock=clock), queue, clock=clock)
    daemon = Daemon(queue, Idle(), watcher=watcher, poll_interval=600, poll_one=watcher.poll_now)
    daemon.run_once()
    queue.pause()
    github.set_permission("other/elsewhere", "maintainer", "write")
    github.create_issue("other/elsewhere", "Newly reachable", labels=["Claude"], user="maintainer")
    github.install_app(4242, "other")
    daemon.poke(ALL_REPOS)  # what an installation / installation_repositories delivery does
    daemon.run_once()
    assert "other/elsewhere" in watcher.repos
    assert [t.repo for t in queue.list()] == ["other/elsewhere"]
    listed = queue.store.read()["watcher"]["app_repos"]["repos"]
    assert listed == ["acme/gadgets", "acme/gizmos", "acme/widgets", "other/elsewhere"]


def test_status_lists_the_app_s_repositories(
    github: FakeGitHub, app_wide: Config, queue: TaskQueue, tmp_path: Path, state_dir: Path
) -> None:
    clock = Clock(time.time())
    Watcher(app_wide, GitHubClient(app_wide, clock=clock), queue, clock=clock).check_all()
    env = {
        "HOME": str(tmp_path),
        "STATE_DIR": str(state_dir),
        "GITHUB_APP_ID": "4242",
        "GITHUB_APP_PRIVATE_KEY_PATH": str(app_wide.github_app_private_key_path),
    }
    result = CliRunner().invoke(main, ["status", "--json"], env=env)
    payload = json.loads(result.output)
    assert payload["app_wide"] is True
    assert list(payload["repos"]) == ["acme/gadgets", "acme/gizmos", "acme/widgets"]
    text = CliRunner().invoke(main, ["status"], env=env).output
    assert "every one the GitHub App is installed on" in text and "acme/gizmos" in text


def test_an_app_the_listing_refuses_stops_the_start(
    github: FakeGitHub, app_wide: Config, queue: TaskQueue
) -> None:
    github.fail_next("/api/v3/app/installations", 401)
    watcher = Watcher(app_wide, GitHubClient(app_wide), queue)
    (check,) = watcher.check_all()
    assert check.refused and "rejected the credential" in (check.error or "")


def test_doctor_checks_every_repository_the_app_is_installed_on(github: FakeGitHub, app_wide: Config) -> None:
    from claude_issue_solver.cli.doctor import run_checks

    checks = {c.name: c for c in run_checks(app_wide)}
    assert checks["configuration"].ok
    assert "every repository the GitHub App is installed on" in checks["configuration"].detail
    listed = checks["GitHub App installations"]
    assert listed.ok and listed.detail == "installed on 3: acme/gadgets, acme/gizmos, acme/widgets"
    for repo in ("acme/gadgets", "acme/gizmos", "acme/widgets"):
        assert checks[f"repository {repo}"].ok, checks[f"repository {repo}"]
