"""Day two as a new user finds it (#23): the Daytona SDK as an extra, `doctor --build`'s progress, why a
task waits, what `usage` counts as a run, `retry` of a completed task."""

from __future__ import annotations

import json
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from claude_issue_solver import backends
from claude_issue_solver.backends.base import BackendError
from claude_issue_solver.config import Config, ConfigError
from claude_issue_solver.store import budget
from claude_issue_solver.store.queue import QueueError, TaskQueue, TaskState
from claude_issue_solver.store.state import StateStore
from tests.conftest import ROOT
from tests.test_cli import expect, invoke

# -- the Daytona SDK is an optional extra ----------------------------------------------------------------


def test_the_daytona_sdk_is_an_extra_not_a_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.lower().startswith("daytona")]
    assert [d for d in project["optional-dependencies"]["daytona"] if d.startswith("daytona>=")]
    # What the daemon itself uses directly is listed directly (the relay: aiohttp; the listener: waitress).
    names = {d.split(">")[0].split("=")[0].lower() for d in project["dependencies"]}
    assert {"aiohttp", "waitress", "docker"} <= names


@pytest.fixture
def without_daytona(monkeypatch: pytest.MonkeyPatch) -> None:
    """As after `pip install claude-issue-solver` without the extra: `import daytona` fails."""
    monkeypatch.setitem(sys.modules, "daytona", None)  # type: ignore[arg-type]
    monkeypatch.delitem(sys.modules, "claude_issue_solver.backends.daytona", raising=False)
    # `from claude_issue_solver.backends import daytona` takes the package's attribute when an earlier
    # test imported the module: that goes too.
    monkeypatch.delattr(backends, "daytona", raising=False)


def test_backend_daytona_without_its_sdk_is_one_line_naming_the_extra(make_config, without_daytona) -> None:  # type: ignore[no-untyped-def]
    from claude_issue_solver.app import make_backend

    config = make_config(BACKEND="daytona", DAYTONA_API_KEY="dtn-key")
    with pytest.raises(ConfigError) as caught:
        make_backend(config)
    assert str(caught.value) == (
        "BACKEND=daytona needs the Daytona SDK, an optional extra: pip install 'claude-issue-solver[daytona]'"
    )


def test_start_with_daytona_but_no_sdk_refuses_in_one_line(
    tmp_path: Path, state_dir: Path, without_daytona: None
) -> None:
    env = {
        "HOME": str(tmp_path),
        "STATE_DIR": str(state_dir),
        "GITHUB_REPOS": "acme/widgets",
        "GITHUB_TOKEN": "ghp_x",
        "BACKEND": "daytona",
        "DAYTONA_API_KEY": "dtn-key",
        "ANTHROPIC_API_KEY": "sk-ant-x",
    }
    for command in (["start", "--foreground"], ["daytona", "snapshot"]):
        result = invoke(command, env)
        assert result.exit_code == 2, result.output
        assert result.output.strip().endswith("pip install 'claude-issue-solver[daytona]'"), result.output
        assert "Traceback" not in result.output


def test_doctor_names_the_extra_when_the_sdk_is_missing(make_config, without_daytona) -> None:  # type: ignore[no-untyped-def]
    from claude_issue_solver.cli.doctor.core import _Doctor

    doctor = _Doctor(make_config(BACKEND="daytona", DAYTONA_API_KEY="dtn-key"), None, False)
    outcome = doctor.daytona()
    assert not outcome.ok
    assert "pip install 'claude-issue-solver[daytona]'" in str(outcome.fix)


# -- doctor --build shows progress -----------------------------------------------------------------------


class _Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, line: str) -> None:
        self.lines.append(line)


@pytest.mark.docker
def test_an_image_build_reports_each_step_as_it_starts(
    docker_client, fake_image: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Dockerfile.claude on the busybox image fails at its first RUN (no apt there): the steps before it
    were reported while the build ran, and the failure still carries the build's tail."""
    from claude_issue_solver.backends.docker_images import AgentImages

    images = AgentImages(
        lambda: docker_client, tmp_path, base_image=fake_image, configured=None, network="none"
    )
    log = _Lines()
    with pytest.raises(BackendError) as caught:
        images.build_agent_image(fake_image, log)  # type: ignore[arg-type]
    steps = [line for line in log.lines if line.startswith("build: Step ")]
    assert steps and steps[0].startswith("build: Step 1/"), log.lines
    assert log.lines[0].startswith("building the agent image")
    assert "failed" in str(caught.value)


def test_doctor_build_sends_its_progress_to_stderr(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    """The CLI hands `doctor --build` a progress callback writing to stderr (stdout stays the report)."""
    import claude_issue_solver.cli.doctor as doctor

    seen: dict[str, object] = {}

    def fake_diagnose(env_file, *, build, progress):  # type: ignore[no-untyped-def]
        seen["build"] = build
        progress("[   3s] build: Step 2/9 : RUN apt-get update")
        return []

    monkeypatch.setattr(doctor, "diagnose", fake_diagnose)
    from click.testing import CliRunner

    from claude_issue_solver.cli import main

    result = CliRunner().invoke(main, ["doctor", "--build"], env=env)
    assert seen["build"] is True
    assert "Step 2/9" in result.stderr and "Step 2/9" not in result.stdout


@pytest.fixture
def env(tmp_path: Path, state_dir: Path) -> dict[str, str]:
    return {"HOME": str(tmp_path), "STATE_DIR": str(state_dir), "GITHUB_REPOS": "acme/widgets"}


# -- queue says why a pending task waits -----------------------------------------------------------------


def test_queue_says_a_task_waits_for_the_pause_for_every_slot_or_for_the_daemon(
    env: dict[str, str], state_dir: Path
) -> None:
    queue = TaskQueue(StateStore(state_dir / "state.json"), max_concurrent=1)
    queue.submit("acme/widgets", 1, "one")
    queue.submit("acme/widgets", 2, "two")

    def waiting() -> dict[int, str | None]:
        rows = json.loads(expect(invoke(["queue", "--json"], {**env, "MAX_CONCURRENT": "1"})).output)
        return {r["issue_number"]: r["waiting"] for r in rows if r["state"] == "pending"}

    assert waiting() == {
        1: "the daemon is not running: `start` runs it",
        2: "the daemon is not running: `start` runs it",
    }
    assert queue.pause()
    assert set(waiting().values()) == {"the queue is paused: `resume` lets tasks start again"}
    text = expect(invoke(["queue"], {**env, "MAX_CONCURRENT": "1"})).output
    assert "the queue is paused" in text
    queue.resume()
    running = queue.claim()
    assert running is not None
    assert waiting() == {2: "MAX_CONCURRENT=1: 1 tasks run"}


def test_queue_says_tasks_wait_for_a_long_pause_github_asked_for(gh_config: Callable[..., Config]) -> None:
    from claude_issue_solver.cli.render import queue_waits

    config = gh_config(GITHUB_REPOS="acme/widgets")
    now = 1_900_000_000.0  # 2030-03-17 17:46:40Z
    schedule = {"paused_until": now + 900, "paused_why": "rate limited by GitHub (HTTP 403)"}
    state: dict[str, Any] = {"tasks": {}, "watcher": {"schedule": schedule}}
    paused, _ = queue_waits(config, state, daemon_running=True, now=now)
    assert paused == "GitHub asked for no requests until 18:01Z (rate limited by GitHub (HTTP 403))"
    schedule["paused_until"] = now + 60  # short: work waits it out in the client, tasks still start
    assert queue_waits(config, state, daemon_running=True, now=now)[0] is None
    schedule["paused_until"] = now + 900
    assert queue_waits(config, state, daemon_running=False, now=now)[0] is None  # no daemon: it says so
    state["paused"] = True  # the operator's pause is the one to lift first
    assert queue_waits(config, state, daemon_running=True, now=now)[0] == (
        "the queue is paused: `resume` lets tasks start again"
    )


# -- usage: a fix round is part of its run ---------------------------------------------------------------


def test_usage_counts_a_run_with_its_fix_rounds_as_one_run() -> None:
    now = time.time()
    ledger = None
    for run_id, cost in [
        ("widgets-1-aaaaaa:1", 0.40),
        ("widgets-1-aaaaaa:1:fix-1", 0.10),
        ("widgets-1-aaaaaa:1:fix-2", 0.05),
        ("widgets-2-bbbbbb:1", 0.30),
    ]:
        ledger = budget.record(ledger, repo="acme/widgets", run_id=run_id, cost_usd=cost, now=now)
    (row,) = budget.usage(ledger, now=now)
    assert (row.runs, row.fix_rounds, round(row.cost_usd, 2)) == (2, 2, 0.85)
    assert row.to_dict()["fix_rounds"] == 2
    # The typical run, for the budget's estimate, is a whole run: (0.40 + 0.10 + 0.05 + 0.30) / 2.
    typical = budget.typical_run_cost(ledger, now=now)
    assert typical is not None and round(typical, 3) == 0.425


# -- retry of a completed task asks for --force ----------------------------------------------------------


def test_retry_of_a_completed_task_asks_for_force(env: dict[str, str], state_dir: Path) -> None:
    queue = TaskQueue(StateStore(state_dir / "state.json"))
    task = queue.submit("acme/widgets", 1, "one")
    assert task is not None and queue.claim() is not None
    queue.finish(task.id, TaskState.COMPLETED, pr_url="https://github.com/acme/widgets/pull/2")
    with pytest.raises(QueueError, match="retry --force"):
        queue.retry(task.id)
    refused = invoke(["retry", "acme/widgets#1"], env)
    assert refused.exit_code != 0
    assert "completed (https://github.com/acme/widgets/pull/2)" in refused.output
    assert "retry --force" in refused.output and "Traceback" not in refused.output
    assert queue.get(task.id).state is TaskState.COMPLETED
    expect(invoke(["retry", "--force", "acme/widgets#1"], env))
    assert queue.get(task.id).state is TaskState.PENDING
