"""Shared fixtures: a private state directory and a config built from explicit settings."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from claude_issue_solver.config import Config, load_config
from claude_issue_solver.queue import TaskQueue
from claude_issue_solver.state import StateStore

# Child processes started by tests import the package from this checkout even when it is not installed.
ROOT = Path(__file__).resolve().parents[1]
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.fixture
def make_config(state_dir: Path, tmp_path: Path) -> Callable[..., Config]:
    def make(**settings: str) -> Config:
        env = {"HOME": str(tmp_path), "STATE_DIR": str(state_dir), **settings}
        return load_config(environ=env, cwd=tmp_path)

    return make


@pytest.fixture
def store(state_dir: Path) -> StateStore:
    return StateStore(state_dir / "state.json")


@pytest.fixture
def queue(store: StateStore) -> TaskQueue:
    return TaskQueue(store, max_concurrent=3)


def python() -> str:
    return sys.executable


pytest_plugins = ["tests.github_fixtures", "tests.docker_fixtures", "tests.e2e"]
