"""Pre-warming for real (#23): the daemon as a process, real containers, the loopback GitHub. Started with
no issue, it runs the repository's setup (which takes seconds) and caches it; the first task, labelled
afterwards, restores it instead of running setup, and its pull request says so."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.store.queue import TaskState
from tests.e2e import labelled, needs_docker, start_daemon, tasks_of
from tests.waiting import wait_until

pytestmark = needs_docker

SETUP = "sleep 2 && mkdir -p deps && echo installed > deps/marker"


def _prewarmed(state_dir: Path) -> dict:
    try:
        data = json.loads((state_dir / "state.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return (data.get("prewarm") or {}).get("acme/widgets") or {}


def test_a_prewarmed_setup_is_restored_by_the_first_task(
    github: FakeGitHub, process_env: dict[str, str], state_dir: Path, no_leftover_containers: None
) -> None:
    github.commit_files(
        "acme/widgets",
        "main",
        {".github/claude-issue-solver.yml": f"setup: {SETUP}\ntest: test -f deps/marker\n"},
        message="settings",
    )
    env_file = Path(process_env["CLAUDE_ISSUE_SOLVER_ENV"])
    env_file.write_text(env_file.read_text() + "PREWARM_INTERVAL=5\n")
    assert start_daemon(process_env).returncode == 0
    wait_until(lambda: _prewarmed(state_dir).get("cached") is True, timeout=120, what="the pre-warm")
    warmed = _prewarmed(state_dir)
    assert warmed["result"] == "warmed" and warmed["took"] >= 2, warmed
    status = subprocess.run(
        [sys.executable, "-m", "claude_issue_solver", "status", "--json"],
        env=process_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    shown = json.loads(status.stdout)["prewarm"]["repos"]["acme/widgets"]
    assert shown["cached"] is True and shown["warmed_at"]

    before_the_issue = time.time()
    labelled(github, "Add a fix file", "edit")
    wait_until(lambda: any(not t.state.live for t in tasks_of(state_dir)), timeout=120, what="the task")
    subprocess.run(
        [sys.executable, "-m", "claude_issue_solver", "stop"], env=process_env, timeout=60, check=True
    )
    task = tasks_of(state_dir)[0]
    assert task.state is TaskState.COMPLETED, task.error
    tests = task.meta["tests"]
    assert tests["cache"]["state"] == "hit", tests
    assert tests["setup"]["cached"] and tests["setup"]["duration_s"] < 2  # restored: `sleep 2` never ran
    # The setup ran before the issue existed (the loopback GitHub keeps a clock of its own: ours here).
    assert warmed["warmed_at"] < before_the_issue <= task.created_at
    body = github.pulls("acme/widgets")[0]["body"]
    assert "restored" in body.lower() and "cache" in body.lower(), body
