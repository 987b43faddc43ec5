"""Operator experience against a real daemon: the progress comment, live logs, submit/cancel/retry."""

from __future__ import annotations

import queue as stdlib_queue
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from claude_issue_solver.app import build
from claude_issue_solver.config import Config
from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.run.pipeline import MAX_PROGRESS_INTERVAL, _ProgressEdits
from claude_issue_solver.store.queue import TaskState
from tests.e2e import CLIENT, labelled, our_comments, our_containers, start_daemon, tasks_of
from tests.waiting import wait_until

docker_tests = pytest.mark.skipif(CLIENT is None, reason="no Docker daemon answers")


def release(state_dir: Path) -> None:
    """Let a `wait`-scenario agent finish: it polls for this file in its worktree."""
    wait_until(lambda: (state_dir / "worktrees").exists() and any((state_dir / "worktrees").iterdir()))
    worktree = next((state_dir / "worktrees").iterdir())
    (worktree / ".fake-claude-release").write_text("go")


def comment_writes(github: FakeGitHub) -> tuple[int, int]:
    posts = [
        r
        for r in github.requests_to("/api/v3/repos/acme/widgets/issues/", "POST")
        if r.path.endswith("/comments")
    ]
    patches = github.requests_to("/api/v3/repos/acme/widgets/issues/comments/", "PATCH")
    return len(posts), len(patches)


def test_progress_edits_get_rarer() -> None:
    edits = _ProgressEdits(0.0)
    made = [t for t in range(0, 1800, 2) if edits.due(float(t), turns=t // 10)]
    assert 4 <= len(made) <= 7, made  # a half-hour run: a handful of edits, not hundreds
    assert made[0] >= 30 and edits.interval == MAX_PROGRESS_INTERVAL
    quiet = _ProgressEdits(0.0)
    assert not any(quiet.due(float(t), turns=0) for t in range(0, 600, 5))  # nothing new: no edit


@pytest.mark.docker
@docker_tests
def test_one_comment_edited_through_the_states(
    github: FakeGitHub, e2e_config: Callable[..., Config], state_dir: Path, no_leftover_containers: None
) -> None:
    issue = labelled(github, "Show progress", "wait")
    parts = build(e2e_config())
    parts.queue.pause()
    # The watcher queues it and says so (its poll runs on a poll thread, scheduled within the budget).
    wait_until(
        lambda: (parts.daemon.run_once(), our_comments(github, issue["number"]))[1], what="the queued comment"
    )
    bodies = [c["body"] for c in our_comments(github, issue["number"])]
    assert len(bodies) == 1 and bodies[0].startswith("🤖 Queued")
    parts.queue.resume()
    parts.daemon.run_once()
    wait_until(lambda: "- [x] workspace ready" in our_comments(github, issue["number"])[0]["body"])
    release(state_dir)
    wait_until(lambda: not parts.daemon.active and tasks_of(state_dir)[0].state is TaskState.COMPLETED)
    comments = our_comments(github, issue["number"])
    assert len(comments) == 1
    final = comments[0]["body"]
    assert "opened a pull request" in final and github.pulls("acme/widgets")[0]["html_url"] in final
    assert "3 turns" in final and "$0.01" in final
    posts, patches = comment_writes(github)
    assert posts == 1 and patches <= 4


@pytest.fixture
def running_daemon(process_env: dict[str, str]) -> dict[str, str]:
    started = start_daemon(process_env)
    assert started.returncode == 0, started.stderr
    return process_env


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "claude_issue_solver", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.docker
@docker_tests
def test_logs_follow_shows_events_as_they_happen(
    github: FakeGitHub, running_daemon: dict[str, str], state_dir: Path, no_leftover_containers: None
) -> None:
    labelled(github, "Follow me", "wait")
    wait_until(lambda: bool(tasks_of(state_dir)) and tasks_of(state_dir)[0].state is TaskState.RUNNING)
    task = tasks_of(state_dir)[0]
    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "claude_issue_solver",
            "logs",
            "-f",
            "-n",
            "100",
            f"acme/widgets#{task.issue_number}",
        ],
        env=running_daemon,
        stdout=subprocess.PIPE,
        text=True,
    )
    lines: stdlib_queue.Queue[str] = stdlib_queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in follower.stdout], daemon=True).start()

    def read_until(text: str) -> list[str]:
        seen = []
        while True:
            line = lines.get(timeout=60)
            seen.append(line)
            if text in line:
                return seen

    try:
        read_until("session started")  # the agent's init event, printed while it still waits
        release(state_dir)
        seen = read_until("result: success")
        assert any(line.split(" ", 2)[-1].startswith("tool: Write") for line in seen), seen
    finally:
        follower.terminate()
        follower.wait(10)
    assert cli(running_daemon, "stop").returncode == 0


@pytest.mark.docker
@docker_tests
def test_submit_cancel_retry(
    github: FakeGitHub, running_daemon: dict[str, str], state_dir: Path, no_leftover_containers: None
) -> None:
    issue = github.create_issue(
        "acme/widgets", "No label here", "FAKE_CLAUDE_SCENARIO=wait\n", user="maintainer"
    )
    ref = f"acme/widgets#{issue['number']}"
    submitted = cli(running_daemon, "submit", ref)
    assert submitted.returncode == 0 and "queued" in submitted.stdout, submitted.stderr
    again = cli(running_daemon, "submit", ref)
    assert again.returncode == 1 and "already has a live task" in again.stderr
    wait_until(lambda: bool(our_containers(state_dir)), what="the agent's container")
    cancelled = cli(running_daemon, "cancel", ref)
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout, cancelled.stdout + cancelled.stderr
    assert tasks_of(state_dir)[0].state is TaskState.CANCELLED
    wait_until(lambda: our_containers(state_dir) == [], what="the container to go")
    assert list((state_dir / "worktrees").iterdir()) == []
    assert "cancelled" in our_comments(github, issue["number"])[0]["body"]

    retried = cli(running_daemon, "retry", ref)
    assert retried.returncode == 0, retried.stderr
    wait_until(lambda: tasks_of(state_dir)[0].state is TaskState.RUNNING and bool(our_containers(state_dir)))
    release(state_dir)
    wait_until(lambda: tasks_of(state_dir)[0].state is TaskState.COMPLETED, what="the retried task")
    assert [p["head"]["ref"] for p in github.pulls("acme/widgets")] == [f"claude/issue-{issue['number']}"]
    assert len(our_comments(github, issue["number"])) == 1
    assert cli(running_daemon, "submit", "acme/widgets#999").returncode == 1
    assert cli(running_daemon, "submit", "not-a-ref").returncode == 2
    assert cli(running_daemon, "stop").returncode == 0
