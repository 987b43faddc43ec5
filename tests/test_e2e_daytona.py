"""End to end on the Daytona backend: the loopback GitHub, the loopback Daytona driven by the real SDK,
the real daemon and pipeline, the fake `claude` running in the sandbox, real git over HTTP.

One task per scenario, driven through Daemon.run_once(); crash recovery runs the daemon as a real
process and kills it with SIGKILL mid-task.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from claude_issue_solver.app import build
from claude_issue_solver.config import Config
from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.store.queue import TaskState
from tests.e2e import all_finished, drive, labelled, our_comments, tasks_of
from tests.fakes.fake_daytona import Egress, FakeDaytona, RecordedRequest
from tests.github_fixtures import TOKEN
from tests.waiting import wait_until

CLAUDE_KEY = "sk-ant-api03-daytonaE2EKey0123456789"
POLL = 0.05
_ID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeDaytona]:
    with FakeDaytona(tmp_path / "daytona") as made:
        yield made


def settings(github: FakeGitHub, fake: FakeDaytona, **overrides: str) -> dict[str, str]:
    return {
        "GITHUB_TOKEN": TOKEN,
        "GITHUB_API_URL": github.api_url,
        "GITHUB_REPOS": "acme/widgets",
        "BACKEND": "daytona",
        "DAYTONA_API_KEY": fake.api_key,
        "DAYTONA_API_URL": fake.api_url,
        "DAYTONA_TARGET": "us",
        "ANTHROPIC_API_KEY": CLAUDE_KEY,
        "TASK_TIMEOUT": "120",
        "DAYTONA_POLL_INTERVAL": str(POLL),
        **overrides,
    }


@pytest.fixture
def e2e_config(
    make_config: Callable[..., Config], github: FakeGitHub, fake: FakeDaytona
) -> Callable[..., Config]:
    def make(**overrides: str) -> Config:
        return make_config(**settings(github, fake, **overrides))

    return make


def request_counts(requests: list[RecordedRequest]) -> collections.Counter[str]:
    """Requests by kind: ids replaced by placeholders, the toolbox's sandbox prefix cut."""
    counts: collections.Counter[str] = collections.Counter()
    for request in requests:
        path = _ID_RE.sub("{id}", request.path)
        path = re.sub(r"/session/[^/]+", "/session/{sid}", path).replace("/toolbox/{id}", "toolbox")
        counts[f"{request.method} {path}"] += 1
    return counts


def print_counts(title: str, requests: list[RecordedRequest]) -> None:
    counts = request_counts(requests)
    print(f"\n{title}: {len(requests)} Daytona requests")
    for kind, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        print(f"  {count:3d}  {kind}")


# --- one task per scenario ----------------------------------------------------------------------------


def test_issue_to_pull_request(
    github: FakeGitHub, fake: FakeDaytona, e2e_config: Callable[..., Config]
) -> None:
    issue = labelled(github, "Add a fix file", "edit")
    queue = drive(e2e_config(), all_finished)
    task = queue.list()[0]
    assert task.state is TaskState.COMPLETED, task.error
    assert task.backend == "daytona" and task.handle == f"claude-issue-solver-{task.id}"
    repo = github.repo("acme/widgets")
    files = repo.git("ls-tree", "--name-only", "claude/issue-1").split()
    assert "CLAUDE_FIX.md" in files and ".claude-pr-summary.md" not in files
    author = repo.git("log", "-1", "--format=%an <%ae>", "claude/issue-1").strip()
    assert author == "Claude Issue Solver <claude-issue-solver@users.noreply.github.com>"
    pulls = github.pulls("acme/widgets")
    assert len(pulls) == 1 and pulls[0]["head"]["ref"] == "claude/issue-1"
    assert pulls[0]["title"] == "Fix issue from fake agent"
    assert pulls[0]["body"].rstrip().endswith(f"Fixes #{issue['number']}")
    comments = our_comments(github, issue["number"])
    assert len(comments) == 1 and pulls[0]["html_url"] in comments[0]["body"]
    assert task.pr_url == pulls[0]["html_url"]
    assert task.cost_usd == pytest.approx(0.0123) and task.num_turns == 3
    assert fake.sandboxes == {} and len(fake.deleted) == 1

    # Cloning and pushing need the network: they ran with the sandbox open, whatever ran narrowed between.
    git_calls = [
        (what, egress) for what, egress in fake.egress_log(fake.deleted[0]) if what.startswith("git-")
    ]
    assert [what for what, _ in git_calls] == ["git-clone", "git-push"]
    assert all(egress.open for _, egress in git_calls), git_calls
    # AGENT_EGRESS=relay-only (the default): the agent ran with the sandbox narrowed to the Claude API.
    agent = f"session:claude-issue-solver-{task.id}-agent"
    assert (agent, Egress(domains="api.anthropic.com")) in fake.egress_log(fake.deleted[0])

    sandbox_requests = fake.requests_for(fake.deleted[0])
    print_counts("one task, issue to pull request", sandbox_requests)
    counts = request_counts(sandbox_requests)
    polls = counts["GET toolbox/process/session/{sid}/command/{id}"]
    # At most two egress changes: narrowed before the agent (AGENT_EGRESS=relay-only), opened before the push.
    egress_changes = counts["POST /api/sandbox/{id}/network-settings"]
    assert egress_changes == 2, counts
    # Everything else but the polls is a fixed handful: creating, cloning, starting, collecting (with the
    # listing of nested repositories that are never committed, #18), pushing.
    assert len(sandbox_requests) - polls - egress_changes <= 22, counts


@pytest.mark.parametrize(
    ("scenario", "state", "says"),
    [
        ("noop", TaskState.COMPLETED, "made no changes"),
        ("invalid-key", TaskState.FAILED, "Invalid API key"),
    ],
)
def test_scenarios_end_in_the_right_comment(
    github: FakeGitHub,
    fake: FakeDaytona,
    e2e_config: Callable[..., Config],
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
    assert fake.sandboxes == {}


def test_timeout_stops_the_agent(
    github: FakeGitHub, fake: FakeDaytona, e2e_config: Callable[..., Config]
) -> None:
    issue = labelled(github, "Never ends", "hang")
    queue = drive(e2e_config(TASK_TIMEOUT="2"), all_finished)
    task = queue.list()[0]
    assert task.state is TaskState.FAILED and "TASK_TIMEOUT" in (task.error or "")
    assert "ran out of time" in our_comments(github, issue["number"])[0]["body"]
    assert fake.sandboxes == {}


def test_push_rejected(github: FakeGitHub, fake: FakeDaytona, e2e_config: Callable[..., Config]) -> None:
    issue = labelled(github, "Rejected", "edit")
    github.reject_pushes("acme/widgets", "protected branch hook declined")
    queue = drive(e2e_config(), all_finished)
    task = queue.list()[0]
    assert task.state is TaskState.FAILED and "rejected" in (task.error or "")
    body = our_comments(github, issue["number"])[0]["body"]
    assert "push of branch claude/issue-1 was rejected" in body
    assert TOKEN not in body
    assert fake.sandboxes == {}


def test_daytona_outage_mid_wait_only_delays_it(
    github: FakeGitHub, fake: FakeDaytona, e2e_config: Callable[..., Config]
) -> None:
    labelled(github, "Bumpy", "wait")
    config = e2e_config()
    parts = build(config)
    wait_until(lambda: (parts.daemon.run_once(), agent_files(fake))[1], what="the agent to start")
    task_dir = agent_files(fake)
    assert task_dir is not None
    (sandbox_id,) = fake.sandboxes
    fake.fail_next(f"/toolbox/{sandbox_id}/process/session/", 503, count=2, method="GET")
    fake.fail_next(f"/toolbox/{sandbox_id}/process/session/", 429, count=2, method="GET")
    (task_dir.parent / "repo" / ".fake-claude-release").write_text("go")
    drive(config, all_finished, parts=parts)
    task = parts.queue.list()[0]
    assert task.state is TaskState.COMPLETED, task.error
    assert task.attempts == 1
    assert len(github.pulls("acme/widgets")) == 1
    assert sorted(r.status for r in fake.requests_for(sandbox_id) if r.status >= 400) == [429] * 2 + [503] * 2
    wait_until(lambda: fake.sandboxes == {}, what="the sandbox to be deleted")


# --- crash recovery with a real daemon process -------------------------------------------------------


@pytest.fixture
def daemon_env(github: FakeGitHub, fake: FakeDaytona, tmp_path: Path, state_dir: Path) -> dict[str, str]:
    env_file = tmp_path / "solver.env"
    values = settings(github, fake, STATE_DIR=str(state_dir), POLL_INTERVAL="1", DAYTONA_POLL_INTERVAL="0.1")
    env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return {**os.environ, "HOME": str(tmp_path), "CLAUDE_ISSUE_SOLVER_ENV": str(env_file)}


@pytest.fixture
def daemons(tmp_path: Path, daemon_env: dict[str, str]) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        out = open(tmp_path / f"daemon-{len(started)}.out", "wb")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(
            [sys.executable, "-m", "claude_issue_solver", "start", "--foreground"],
            env=daemon_env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def agent_files(fake: FakeDaytona) -> Path | None:
    """The task directory of the only sandbox, once its agent has written its first output."""
    for sandbox in fake.sandboxes.values():
        found = next(Path(sandbox["dir"]).rglob(".claude-issue-solver/agent.out"), None)
        if found is not None and found.stat().st_size > 0:
            return found.parent
    return None


@pytest.mark.parametrize("finish_while_down", [False, True])
def test_kill_9_mid_task_then_restart(
    github: FakeGitHub,
    fake: FakeDaytona,
    state_dir: Path,
    daemons: Callable[[], subprocess.Popen[bytes]],
    finish_while_down: bool,
) -> None:
    issue = labelled(github, "Survive a crash", "wait")
    first = daemons()
    wait_until(lambda: agent_files(fake) is not None, what="the agent to run in a sandbox")
    task_dir = agent_files(fake)
    assert task_dir is not None
    assert tasks_of(state_dir)[0].state is TaskState.RUNNING
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)

    (task_dir.parent / "repo" / ".fake-claude-release").write_text("go")
    if finish_while_down:
        wait_until(
            lambda: (task_dir / "agent.exit").exists(), what="the agent to finish while no daemon runs"
        )
    second = daemons()
    wait_until(lambda: all(not t.state.live for t in tasks_of(state_dir)), what="the task to finish")
    task = tasks_of(state_dir)[0]
    assert task.state is TaskState.COMPLETED, task.error
    assert task.attempts == 1
    assert len(github.pulls("acme/widgets")) == 1
    assert len(our_comments(github, issue["number"])) == 1
    wait_until(lambda: fake.sandboxes == {}, what="the sandbox to be deleted")
    assert len(fake.deleted) == 1
    print_counts("one task across a SIGKILL and a restart", fake.requests_for(fake.deleted[0]))
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=30) == 0


def test_cli_snapshot_and_a_rejected_key_at_start(
    github: FakeGitHub, fake: FakeDaytona, tmp_path: Path, state_dir: Path
) -> None:
    from click.testing import CliRunner

    from claude_issue_solver.cli.main import main

    env = {"HOME": str(tmp_path), "STATE_DIR": str(state_dir), **settings(github, fake)}
    made = CliRunner().invoke(main, ["daytona", "snapshot", "--name", "cis-cli-snapshot"], env=env)
    assert made.exit_code == 0, made.output
    assert "snapshot cis-cli-snapshot is ready" in made.output
    assert "cis-cli-snapshot" in fake.snapshots
    again = CliRunner().invoke(main, ["daytona", "snapshot", "--name", "cis-cli-snapshot"], env=env)
    assert again.exit_code == 1 and "already exists" in again.output and "Traceback" not in again.output

    bad = {**env, "DAYTONA_API_KEY": "dtn-wrong-key-0123456789"}
    started = subprocess.run(
        [sys.executable, "-m", "claude_issue_solver", "start", "--foreground"],
        env={**os.environ, **bad},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 1
    assert "Daytona rejected DAYTONA_API_KEY" in started.stderr and "Traceback" not in started.stderr
    assert "dtn-wrong-key" not in started.stderr
