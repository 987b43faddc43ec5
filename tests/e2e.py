"""Helpers and fixtures for end-to-end tests through the daemon on the Docker backend (a pytest plugin)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from claude_issue_solver.app import Parts, build
from claude_issue_solver.backends.base import LABEL_TASK
from claude_issue_solver.config import Config
from claude_issue_solver.daemon.pidfile import daemon_status
from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.store.queue import Task, TaskQueue
from claude_issue_solver.store.state import StateStore
from tests.github_fixtures import TOKEN
from tests.waiting import wait_until

try:
    CLIENT = docker.from_env()
    CLIENT.ping()
except Exception:  # pragma: no cover - depends on the machine
    CLIENT = None

needs_docker = [pytest.mark.docker, pytest.mark.skipif(CLIENT is None, reason="no Docker daemon answers")]

CLAUDE_KEY = "sk-ant-api03-testkeyXYZ0123456789"


@pytest.fixture
def agent_image(fake_image: str) -> str:
    return fake_image


@pytest.fixture
def e2e_config(
    gh_config: Callable[..., Config], agent_image: str, github: FakeGitHub
) -> Callable[..., Config]:
    def make(**settings: str) -> Config:
        base = {
            "GITHUB_REPOS": "acme/widgets",
            "DOCKER_IMAGE": agent_image,
            "DOCKER_NETWORK": "none",
            "ANTHROPIC_API_KEY": CLAUDE_KEY,
            "TASK_TIMEOUT": "120",
        }
        return gh_config(**{**base, **settings})

    return make


@pytest.fixture
def no_leftover_containers(state_dir: Path) -> Iterator[None]:
    yield
    from claude_issue_solver.backends.base import LABEL_OWNER

    # The low-level listing carries the mounts: no inspect of another test's container (another
    # pytest-xdist worker's) to race its removal.
    for listed in CLIENT.api.containers(all=True, filters={"label": [LABEL_OWNER]}):
        if str(state_dir) in json.dumps(listed.get("Mounts", [])):
            with contextlib.suppress(docker.errors.NotFound):
                CLIENT.api.remove_container(listed["Id"], force=True)
    # The setup cache's images of this test's daemon (a green setup is saved); never another owner's.
    from claude_issue_solver.backends.base import owner_of
    from claude_issue_solver.backends.docker_setup_cache import LABEL_SETUP_KEY

    owner = owner_of(state_dir.expanduser().resolve())
    for image in CLIENT.images.list(filters={"label": [f"{LABEL_OWNER}={owner}", LABEL_SETUP_KEY]}):
        with contextlib.suppress(docker.errors.NotFound):
            CLIENT.images.remove(image.id, force=True)


def our_containers(state_dir: Path) -> list:
    # The low-level listing carries the mounts, so there is no inspect to race a removal.
    listed = CLIENT.api.containers(all=True, filters={"label": [LABEL_TASK]})
    ids = [c["Id"] for c in listed if str(state_dir) in json.dumps(c.get("Mounts", []))]
    found = []
    for container_id in ids:
        with contextlib.suppress(docker.errors.NotFound):  # removed since the listing
            found.append(CLIENT.containers.get(container_id))
    return found


def drive(
    config: Config, until: Callable[[TaskQueue], bool], timeout: float = 90, parts: Parts | None = None
) -> TaskQueue:
    """Run the daemon's cycle until the condition holds (one daemon per state dir, as the pidfile
    ensures in real life: pass ``parts`` to keep driving a daemon a test already started)."""
    parts = parts or build(config)
    wait_until(lambda: (parts.daemon.run_once(), until(parts.queue))[1], timeout, "the tasks", interval=0.05)
    wait_until(lambda: not parts.daemon.active, 10, "the monitors to finish")
    return parts.queue


def real_cli(image: str, api_url: str) -> dict[str, str]:
    """Settings for the real Claude Code CLI in ``image`` against the loopback Messages API at ``api_url``."""
    return {
        "DOCKER_IMAGE": image,
        "DOCKER_NETWORK": "host",  # the loopback API is on the host's 127.0.0.1
        "ANTHROPIC_BASE_URL": api_url,
        "CLAUDE_CODE_MAX_RETRIES": "0",  # a refused request is the test's answer, not a reason to wait
    }


def all_finished(queue: TaskQueue) -> bool:
    tasks = queue.list()
    return bool(tasks) and all(not t.state.live for t in tasks)


def labelled(github: FakeGitHub, title: str, scenario: str, body: str = "") -> dict:
    text = f"{body}\n\nFAKE_CLAUDE_SCENARIO={scenario}\n"
    return github.create_issue("acme/widgets", title, text, labels=["Claude"], user="maintainer")


def our_comments(github: FakeGitHub, number: int) -> list[dict]:
    return [c for c in github.comments("acme/widgets", number) if "claude-issue-solver:task=" in c["body"]]


def assert_clean(state_dir: Path) -> None:
    assert our_containers(state_dir) == []
    worktrees = state_dir / "worktrees"
    assert not worktrees.exists() or list(worktrees.iterdir()) == []


def start_daemon(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "claude_issue_solver", "start"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def process_env(
    github: FakeGitHub, agent_image: str, tmp_path: Path, state_dir: Path
) -> Iterator[dict[str, str]]:
    env_file = tmp_path / "solver.env"
    settings = {
        "GITHUB_TOKEN": TOKEN,
        "GITHUB_API_URL": github.api_url,
        "GITHUB_REPOS": "acme/widgets",
        "STATE_DIR": str(state_dir),
        "POLL_INTERVAL": "1",
        "DOCKER_IMAGE": agent_image,
        "DOCKER_NETWORK": "none",
        "ANTHROPIC_API_KEY": CLAUDE_KEY,
    }
    env_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    env = {**os.environ, "HOME": str(tmp_path), "CLAUDE_ISSUE_SOLVER_ENV": str(env_file)}
    yield env
    status = daemon_status(state_dir / "daemon.pid")
    if status.running and status.pid:
        os.kill(status.pid, signal.SIGKILL)


def tasks_of(state_dir: Path) -> list[Task]:
    return TaskQueue(StateStore(state_dir / "state.json")).list()
