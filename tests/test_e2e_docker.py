"""End to end on the Docker backend: the loopback GitHub, the real daemon and pipeline, real containers
running the fake `claude`, real git over HTTP. One task per scenario, driven through Daemon.run_once()."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from claude_issue_solver.app import build
from claude_issue_solver.config import Config
from claude_issue_solver.daemon.pidfile import daemon_status
from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.run.prompt import IssueContext, build_prompt
from claude_issue_solver.store.queue import TaskQueue, TaskState
from claude_issue_solver.store.state import StateStore
from tests.e2e import (
    CLAUDE_KEY,
    all_finished,
    assert_clean,
    drive,
    labelled,
    needs_docker,
    our_comments,
    our_containers,
    real_cli,
    start_daemon,
    tasks_of,
)
from tests.github_fixtures import TOKEN
from tests.waiting import wait_until

pytestmark = needs_docker


@pytest.fixture(autouse=True)
def _clean(no_leftover_containers: None) -> None:
    pass


def test_issue_to_pull_request(
    github: FakeGitHub, e2e_config: Callable[..., Config], state_dir: Path
) -> None:
    issue = labelled(github, "Add a fix file", "edit")
    queue = drive(e2e_config(), all_finished)
    task = queue.list()[0]
    assert task.state is TaskState.COMPLETED, task.error
    repo = github.repo("acme/widgets")
    assert "CLAUDE_FIX.md" in repo.git("ls-tree", "--name-only", "claude/issue-1")
    assert ".claude-pr-summary.md" not in repo.git("ls-tree", "--name-only", "claude/issue-1")
    author = repo.git("log", "-1", "--format=%an <%ae>", "claude/issue-1").strip()
    assert author == "Claude Issue Solver <claude-issue-solver@users.noreply.github.com>"
    pulls = github.pulls("acme/widgets")
    assert len(pulls) == 1 and pulls[0]["head"]["ref"] == "claude/issue-1"
    assert pulls[0]["body"].rstrip().endswith(f"Fixes #{issue['number']}")
    assert pulls[0]["title"] == "Fix issue from fake agent"
    comments = our_comments(github, issue["number"])
    assert len(comments) == 1 and pulls[0]["html_url"] in comments[0]["body"]
    assert task.pr_url == pulls[0]["html_url"]
    assert task.cost_usd == pytest.approx(0.0123) and task.num_turns == 3 and task.session_id
    assert_clean(state_dir)


@pytest.mark.parametrize(
    ("scenario", "state", "says"),
    [
        ("noop", TaskState.COMPLETED, "made no changes"),
        ("invalid-key", TaskState.FAILED, "Invalid API key"),
        ("garbage", TaskState.FAILED, "exit code 2"),
        ("max-turns", TaskState.FAILED, "maximum number of turns"),
    ],
)
def test_scenarios_end_in_the_right_comment(
    github: FakeGitHub,
    e2e_config: Callable[..., Config],
    state_dir: Path,
    scenario: str,
    state: TaskState,
    says: str,
) -> None:
    issue = labelled(github, f"Scenario {scenario}", scenario)
    queue = drive(e2e_config(), all_finished)
    task = queue.list()[0]
    assert task.state is state, task.error
    comments = our_comments(github, issue["number"])
    assert len(comments) == 1 and says in comments[0]["body"], comments
    assert github.pulls("acme/widgets") == []
    assert_clean(state_dir)


def test_timeout_kills_the_container(
    github: FakeGitHub, e2e_config: Callable[..., Config], state_dir: Path
) -> None:
    issue = labelled(github, "Never ends", "hang")
    queue = drive(e2e_config(TASK_TIMEOUT="3"), all_finished)
    task = queue.list()[0]
    assert task.state is TaskState.FAILED and "TASK_TIMEOUT" in task.error
    assert "ran out of time" in our_comments(github, issue["number"])[0]["body"]
    assert_clean(state_dir)


def test_push_rejected(github: FakeGitHub, e2e_config: Callable[..., Config], state_dir: Path) -> None:
    issue = labelled(github, "Rejected", "edit")
    github.reject_pushes("acme/widgets", "protected branch hook declined")
    queue = drive(e2e_config(), all_finished)
    task = queue.list()[0]
    assert task.state is TaskState.FAILED and "rejected" in task.error
    body = our_comments(github, issue["number"])[0]["body"]
    assert "push of branch claude/issue-1 was rejected" in body and "retry" in body
    assert_clean(state_dir)


def test_pr_refused_falls_back_to_a_comment(
    github: FakeGitHub, e2e_config: Callable[..., Config], state_dir: Path
) -> None:
    issue = labelled(github, "No PRs allowed", "edit")
    github.refuse_pull_creation("acme/widgets", 403, "Resource not accessible by integration")
    queue = drive(e2e_config(), all_finished)
    task = queue.list()[0]
    assert task.state is TaskState.FAILED
    body = our_comments(github, issue["number"])[0]["body"]
    assert "`claude/issue-1`" in body and "CLAUDE_FIX.md" in body
    assert github.repo("acme/widgets").branch_sha("claude/issue-1")
    assert_clean(state_dir)


def test_rerun_continues_the_same_branch(github: FakeGitHub, e2e_config: Callable[..., Config]) -> None:
    issue = labelled(github, "Twice", "edit")
    drive(e2e_config(), all_finished)
    first = github.repo("acme/widgets").branch_sha("claude/issue-1")
    github.remove_label("acme/widgets", issue["number"], "Claude", actor="maintainer")
    github.add_label("acme/widgets", issue["number"], "Claude", actor="maintainer")
    queue = drive(e2e_config(), lambda q: len(q.list()) == 2 and all_finished(q))
    assert [t.state for t in queue.list()] == [TaskState.COMPLETED, TaskState.COMPLETED]
    repo = github.repo("acme/widgets")
    assert repo.git("rev-parse", "claude/issue-1~1").strip() == first  # built on the first run's commit
    assert len(github.pulls("acme/widgets")) == 1
    assert repo.read_file("claude/issue-1", "CLAUDE_FIX.md").count("\n") == 2


def test_hostile_body_arrives_byte_for_byte(github: FakeGitHub, e2e_config: Callable[..., Config]) -> None:
    body = "quotes ' \" `whoami` $(rm -rf /) ${HOME} \\n \t; | & > < *\nnon-ASCII: héllo wörld 你好 🚀\n"
    body += ("x" * 99 + "\n") * 10_000  # ~1 MB, NUL-free
    issue = labelled(github, "Hostile $(id)", "noop", body)
    queue = drive(e2e_config(), all_finished)
    task = queue.list()[0]
    assert task.state is TaskState.COMPLETED, task.error
    # What runs is the text the maintainer's label approved (#19), cut at GitHub's own 65,536 characters
    # (the fake takes a longer body; GitHub would not): the hostile start arrives byte for byte.
    approved = task.meta["approved"]["body"]
    assert approved.startswith(body[:200]) and len(approved) < 70_000
    context = IssueContext(
        repo="acme/widgets",
        number=issue["number"],
        title=issue["title"],
        body=approved,
        labels=("Claude",),
        author="maintainer",
        url=issue["html_url"],
    )
    expected = hashlib.sha256(build_prompt(context).encode()).hexdigest()
    assert f"prompt-sha256={expected}" in task.result


def test_concurrency_bound_with_six_issues(
    github: FakeGitHub, e2e_config: Callable[..., Config], state_dir: Path
) -> None:
    for n in range(6):
        labelled(github, f"Issue {n}", "edit")
    peak = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            running = [c for c in our_containers(state_dir) if c.status in ("created", "running")]
            peak = max(peak, len(running))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        queue = drive(
            e2e_config(MAX_CONCURRENT="3"), lambda q: len(q.list()) == 6 and all_finished(q), timeout=180
        )
    finally:
        stop.set()
        watcher.join()
    assert [t.state for t in queue.list()] == [TaskState.COMPLETED] * 6
    assert 1 <= peak <= 3
    assert len(github.pulls("acme/widgets")) == 6
    assert_clean(state_dir)


def test_no_github_token_anywhere(
    github: FakeGitHub, e2e_config: Callable[..., Config], state_dir: Path
) -> None:
    labelled(github, "Secrets", "wait")
    config = e2e_config()
    parts = build(config)
    wait_until(lambda: (parts.daemon.run_once(), our_containers(state_dir))[1], what="the agent's container")
    container = our_containers(state_dir)[0]
    inspected = json.dumps(container.attrs)
    assert TOKEN not in inspected
    env = container.attrs["Config"]["Env"]
    # The Claude key stays with the daemon's relay (#18): the container holds a task token and no network.
    assert CLAUDE_KEY not in inspected
    assert any(v.startswith("ANTHROPIC_API_KEY=cis-relay-") for v in env), env
    assert "ANTHROPIC_BASE_URL=http://127.0.0.1:47800" in env
    assert container.attrs["HostConfig"]["NetworkMode"] == "none"
    assert container.attrs["Config"]["User"] not in ("", "0", "root", "0:0")
    assert container.attrs["HostConfig"]["CapDrop"] == ["ALL"]
    assert not container.attrs["HostConfig"]["Privileged"]
    worktree = next((state_dir / "worktrees").iterdir())
    (worktree / ".fake-claude-release").write_text("go")
    queue = drive(config, all_finished, parts=parts)
    assert queue.list()[0].state is TaskState.COMPLETED
    for path in state_dir.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


# --- crash recovery with a real daemon process -------------------------------------------------------


@pytest.mark.parametrize("finish_while_down", [False, True])
def test_kill_9_mid_task_then_restart(
    github: FakeGitHub, process_env: dict[str, str], state_dir: Path, finish_while_down: bool
) -> None:
    issue = labelled(github, "Survive a crash", "wait")
    assert start_daemon(process_env).returncode == 0
    wait_until(lambda: bool(our_containers(state_dir)), what="the agent's container")
    wait_until(lambda: (state_dir / "worktrees").exists() and any((state_dir / "worktrees").iterdir()))
    pid = daemon_status(state_dir / "daemon.pid").pid
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not daemon_status(state_dir / "daemon.pid").running, what="the daemon to die")
    worktree = next((state_dir / "worktrees").iterdir())
    (worktree / ".fake-claude-release").write_text("go")
    if finish_while_down:
        container = our_containers(state_dir)[0]
        assert container.wait(timeout=60)["StatusCode"] == 0
    assert tasks_of(state_dir)[0].state is TaskState.RUNNING
    started = start_daemon(process_env)
    assert started.returncode == 0, started.stderr
    wait_until(lambda: all(not t.state.live for t in tasks_of(state_dir)), what="the task to finish")
    task = tasks_of(state_dir)[0]
    assert task.state is TaskState.COMPLETED, task.error
    assert task.attempts == 1
    assert len(github.pulls("acme/widgets")) == 1
    assert len(our_comments(github, issue["number"])) == 1
    wait_until(lambda: our_containers(state_dir) == [], what="cleanup")
    assert list((state_dir / "worktrees").iterdir()) == []
    subprocess.run(
        [sys.executable, "-m", "claude_issue_solver", "stop"], env=process_env, timeout=60, check=True
    )


# --- the real Claude Code CLI ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_real_cli_through_the_daemon(
    github: FakeGitHub, e2e_config: Callable[..., Config], claude_image: str, state_dir: Path
) -> None:
    """Dockerfile.claude's image, the real `claude`, a loopback Messages API: the daemon opens the PR."""
    from tests.fakes.fake_anthropic import FakeAnthropic

    issue = github.create_issue(
        "acme/widgets", "Say hello", "Please add a HELLO.md.", labels=["Claude"], user="maintainer"
    )
    with FakeAnthropic(api_key=CLAUDE_KEY, files={"HELLO.md": "Hello from the real CLI\n"}) as api:
        config = e2e_config(
            **real_cli(claude_image, api.url),
        )
        assert ("CLAUDE_CODE_MAX_RETRIES", "0") in config.agent_env
        queue = drive(config, all_finished, timeout=300)
        assert api.conversation_requests, "the CLI never reached the loopback API"
    task = queue.list()[0]
    assert task.state is TaskState.COMPLETED, task.error
    assert task.session_id and task.num_turns
    repo = github.repo("acme/widgets")
    assert repo.read_file("claude/issue-1", "HELLO.md") == "Hello from the real CLI\n"
    pulls = github.pulls("acme/widgets")
    assert len(pulls) == 1 and pulls[0]["body"].rstrip().endswith(f"Fixes #{issue['number']}")
    assert pulls[0]["html_url"] in our_comments(github, issue["number"])[0]["body"]
    assert_clean(state_dir)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_git_reads_work_inside_the_agent_container(
    github: FakeGitHub, e2e_config: Callable[..., Config], claude_image: str, state_dir: Path
) -> None:
    """With the real image, git status/log inside the container see the worktree, with no credential."""
    from claude_issue_solver.app import docker_settings
    from claude_issue_solver.backends.base import ProcessSpec, WorkspaceSpec
    from claude_issue_solver.backends.docker import DockerBackend
    from claude_issue_solver.logs import TaskLog
    from claude_issue_solver.run.policy import wait_for_process
    from claude_issue_solver.store.outcome import TaskControl

    config = e2e_config(DOCKER_IMAGE=claude_image)
    backend = DockerBackend(docker_settings(config))
    repo = github.repo("acme/widgets")
    queue = TaskQueue(StateStore(config.state_file))
    task = queue.submit("acme/widgets", 1, "git check")
    client = build(config).daemon.runner.client  # type: ignore[attr-defined]
    spec = WorkspaceSpec(
        task_id=task.id,
        repo="acme/widgets",
        issue_number=1,
        clone_url=repo.clone_url,
        default_branch="main",
        branch="claude/issue-1",
        credential=lambda: client.git_credential("acme/widgets"),
    )
    check = ProcessSpec(
        name="agent",
        argv=("sh", "-c", "git status --short --branch && git log --oneline -1 && git config --list"),
        env={},
    )
    log = TaskLog(state_dir / "git-check.log")
    workspace = backend.prepare(spec, log)
    try:
        backend.start_process(workspace, check, log)
        exit_ = wait_for_process(
            backend,
            workspace,
            "agent",
            deadline=time.time() + 60,
            control=TaskControl(),
            clock=time.time,
            log=log,
        )
        assert exit_ is not None and exit_.exit_code == 0, exit_
        assert "## claude/issue-1" in exit_.stdout
        assert TOKEN not in exit_.stdout and "credential" not in exit_.stdout
    finally:
        backend.remove(task.id, log)


def test_pause_holds_new_work_on_a_running_daemon(
    github: FakeGitHub, process_env: dict[str, str], state_dir: Path
) -> None:
    cli = [sys.executable, "-m", "claude_issue_solver"]
    assert start_daemon(process_env).returncode == 0
    subprocess.run([*cli, "pause"], env=process_env, timeout=60, check=True)
    labelled(github, "Held", "noop")
    wait_until(lambda: bool(tasks_of(state_dir)), what="the task to be queued")
    # Two more polls after it was queued: the dispatcher had turns enough to start it, and did not.
    polls = len(github.requests_to("/api/v3/repos/acme/widgets/issues"))
    wait_until(lambda: len(github.requests_to("/api/v3/repos/acme/widgets/issues")) >= polls + 2)
    assert tasks_of(state_dir)[0].state is TaskState.PENDING
    resumed_at = time.monotonic()
    subprocess.run([*cli, "resume"], env=process_env, timeout=60, check=True)
    wait_until(lambda: tasks_of(state_dir)[0].state is not TaskState.PENDING, timeout=10, what="dispatch")
    assert time.monotonic() - resumed_at < 5
    wait_until(lambda: not tasks_of(state_dir)[0].state.live, what="the task to finish")
    subprocess.run([*cli, "stop"], env=process_env, timeout=60, check=True)
