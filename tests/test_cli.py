"""The CLI: fast commands through CliRunner, the daemon's lifecycle through real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from claude_issue_solver.cli import main
from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.pidfile import daemon_status
from claude_issue_solver.queue import TaskQueue, TaskState
from claude_issue_solver.state import StateStore
from tests.github_fixtures import TOKEN
from tests.waiting import wait_until

COMMANDS = ["start", "stop", "restart", "status", "queue", "pause", "resume", "logs"]


def invoke(args: list[str], env: dict[str, str]) -> Result:
    result = CliRunner().invoke(main, args, env=env, catch_exceptions=False)
    return result


def expect(result: Result, code: int = 0) -> Result:
    assert result.exit_code == code, f"exit {result.exit_code}, expected {code}:\n{result.output}"
    return result


@pytest.fixture
def env(tmp_path: Path, state_dir: Path) -> dict[str, str]:
    return {"HOME": str(tmp_path), "STATE_DIR": str(state_dir), "GITHUB_REPOS": "acme/widgets"}


def test_help_reads_well() -> None:
    result = expect(invoke(["--help"], {}))
    for command in COMMANDS:
        assert command in result.output
    for command in COMMANDS:
        text = expect(invoke([command, "--help"], {})).output
        assert "Usage:" in text and len(text.splitlines()) > 3
    assert expect(invoke(["--version"], {})).output.startswith("claude-issue-solver, version")


def test_status_without_daemon_exits_3(env: dict[str, str]) -> None:
    result = expect(invoke(["status"], env), 3)
    assert "daemon: not running" in result.output
    payload = json.loads(expect(invoke(["status", "--json"], env), 3).output)
    assert payload["daemon"]["running"] is False


def test_status_masks_secrets(env: dict[str, str]) -> None:
    result = expect(invoke(["status", "--json"], {**env, "GITHUB_TOKEN": TOKEN}), 3)
    payload = json.loads(result.output)
    assert payload["config"]["GITHUB_TOKEN"] == "***"
    assert TOKEN not in result.output
    assert "GITHUB_TOKEN=***" in expect(invoke(["status"], {**env, "GITHUB_TOKEN": TOKEN}), 3).output


def test_queue_and_status_json_reflect_the_state(env: dict[str, str], state_dir: Path) -> None:
    queue = TaskQueue(StateStore(state_dir / "state.json"))
    first = queue.submit("acme/widgets", 1, "first")
    queue.submit("acme/widgets", 2, "second")
    queue.claim()
    done = queue.submit("acme/widgets", 3, "third")
    queue.finish(first.id, TaskState.COMPLETED, pr_url="http://pr/1")
    rows = json.loads(expect(invoke(["queue", "--json"], env)).output)
    assert [(r["issue_number"], r["state"]) for r in rows] == [(2, "pending"), (3, "pending")]
    rows = json.loads(expect(invoke(["queue", "--json", "--all"], env)).output)
    assert {r["ref"]: r["state"] for r in rows} == {
        "acme/widgets#1": "completed",
        "acme/widgets#2": "pending",
        "acme/widgets#3": "pending",
    }
    assert json.loads(expect(invoke(["queue", "--json", "--state", "completed"], env)).output)[0]["pr_url"]
    status = json.loads(expect(invoke(["status", "--json"], env), 3).output)
    assert status["counts"]["pending"] == 2 and status["counts"]["completed"] == 1
    text = expect(invoke(["queue"], env)).output
    assert done.id in text and "pending" in text


def test_pause_and_resume_without_daemon(env: dict[str, str], state_dir: Path) -> None:
    assert "paused" in expect(invoke(["pause"], env)).output
    assert "already paused" in expect(invoke(["pause"], env)).output
    assert json.loads(expect(invoke(["status", "--json"], env), 3).output)["paused"] is True
    assert "resumed" in expect(invoke(["resume"], env)).output
    assert TaskQueue(StateStore(state_dir / "state.json")).paused is False


def test_logs_of_unknown_task(env: dict[str, str]) -> None:
    result = expect(invoke(["logs", "acme/widgets#9"], env), 1)
    assert "no task matches" in result.output


# --- the daemon as a real process ------------------------------------------------------------------


@pytest.fixture
def daemon_env(github: FakeGitHub, tmp_path: Path, state_dir: Path) -> Iterator[dict[str, str]]:
    env_file = tmp_path / "solver.env"
    env_file.write_text(
        "\n".join(
            [
                f"GITHUB_TOKEN={TOKEN}",
                f"GITHUB_API_URL={github.api_url}",
                "GITHUB_REPOS=acme/widgets",
                f"STATE_DIR={state_dir}",
                "POLL_INTERVAL=1",
                "DOCKER_IMAGE=claude-issue-solver-never-used",
                "DOCKER_NETWORK=none",
            ]
        )
        + "\n"
    )
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "CLAUDE_ISSUE_SOLVER_ENV": str(env_file),
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    env.pop("GITHUB_TOKEN", None)
    yield env
    # never leave a daemon behind, whatever the test did
    status = daemon_status(state_dir / "daemon.pid")
    if status.running and status.pid:
        os.kill(status.pid, signal.SIGKILL)


def cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "claude_issue_solver", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def docker_available() -> bool:
    try:
        import docker

        docker.from_env().ping()
        return True
    except Exception:
        return False


needs_docker = pytest.mark.skipif(not docker_available(), reason="no Docker daemon answers")


@needs_docker
def test_start_status_stop(daemon_env: dict[str, str], state_dir: Path) -> None:
    started = cli(daemon_env, "start")
    assert started.returncode == 0, started.stderr + started.stdout
    pid = daemon_status(state_dir / "daemon.pid").pid
    assert pid and f"pid {pid}" in started.stdout
    status = cli(daemon_env, "status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["daemon"]["pid"] == pid
    again = cli(daemon_env, "start")
    assert again.returncode == 1 and "already running" in again.stderr
    stopped = cli(daemon_env, "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert not (state_dir / "daemon.pid").exists()
    assert cli(daemon_env, "status").returncode == 3
    assert cli(daemon_env, "stop").returncode == 3
    log = (state_dir / "logs" / "daemon.log").read_text()
    assert "received SIGTERM" in log and "daemon stopped" in log
    assert TOKEN not in log


@needs_docker
def test_stale_pidfile_after_kill_9_is_recovered(daemon_env: dict[str, str], state_dir: Path) -> None:
    assert cli(daemon_env, "start").returncode == 0
    pid = daemon_status(state_dir / "daemon.pid").pid
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not daemon_status(state_dir / "daemon.pid").running, what="the kill")
    status = cli(daemon_env, "status")
    assert status.returncode == 3 and f"stale pidfile from pid {pid}" in status.stdout
    restarted = cli(daemon_env, "start")
    assert restarted.returncode == 0, restarted.stderr
    assert daemon_status(state_dir / "daemon.pid").pid != pid
    assert cli(daemon_env, "restart").returncode == 0
    assert cli(daemon_env, "stop").returncode == 0


@needs_docker
def test_label_shows_in_queue_within_two_seconds(
    daemon_env: dict[str, str], github: FakeGitHub, state_dir: Path
) -> None:
    assert cli(daemon_env, "pause").returncode == 0  # keep the task queued: this test is about pickup
    assert cli(daemon_env, "start").returncode == 0
    issue = github.create_issue("acme/widgets", "Picked up quickly", user="maintainer")
    github.set_permission("acme/widgets", "maintainer", "write")
    labelled = time.monotonic()
    github.add_label("acme/widgets", issue["number"], "Claude", actor="maintainer")

    def queued() -> bool:
        rows = json.loads(cli(daemon_env, "queue", "--json").stdout)
        return any(r["issue_number"] == issue["number"] for r in rows)

    wait_until(queued, timeout=10, what="the task in `queue --json`")
    pickup = time.monotonic() - labelled
    print(f"pickup after labelling: {pickup:.2f}s")
    assert pickup < 4  # POLL_INTERVAL=1 plus a CLI process start; the figure goes in the closing note
    assert cli(daemon_env, "stop").returncode == 0


@needs_docker
def test_pause_takes_effect_on_a_running_daemon(daemon_env: dict[str, str], state_dir: Path) -> None:
    assert cli(daemon_env, "start").returncode == 0
    assert cli(daemon_env, "pause").returncode == 0
    status = json.loads(cli(daemon_env, "status", "--json").stdout)
    assert status["paused"] is True and status["daemon"]["running"] is True
    assert cli(daemon_env, "resume").returncode == 0
    assert cli(daemon_env, "stop").returncode == 0


def test_start_reports_docker_down(daemon_env: dict[str, str], tmp_path: Path) -> None:
    env = {**daemon_env, "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    result = cli(env, "start", "--foreground")
    assert result.returncode == 1
    assert "cannot reach the Docker daemon" in result.stderr
    assert "Traceback" not in result.stderr


def test_logs_show_the_daemon_log_and_a_task_log(env: dict[str, str], state_dir: Path) -> None:
    from claude_issue_solver.logs import TaskLog, task_log_path

    queue = TaskQueue(StateStore(state_dir / "state.json"))
    task = queue.submit("acme/widgets", 4, "four")
    log = TaskLog(task_log_path(state_dir / "logs", task.id))
    for n in range(5):
        log.write(f"step {n} with {TOKEN}")
    (state_dir / "logs" / "daemon.log").write_text("".join(f"daemon line {n}\n" for n in range(100)))
    out = expect(invoke(["logs", "acme/widgets#4", "-n", "2"], env)).output
    assert out.splitlines()[-1].endswith("step 4 with ***") and "step 2" not in out
    assert TOKEN not in out
    assert expect(invoke(["logs", task.id], env)).output.count("step") == 5
    out = expect(invoke(["logs", "-n", "3"], env)).output
    assert out.splitlines() == ["daemon line 97", "daemon line 98", "daemon line 99"]


def test_follow_yields_new_lines(tmp_path: Path) -> None:
    from claude_issue_solver.logs import follow

    path = tmp_path / "grows.log"
    path.write_text("old 1\nold 2\n")
    appended: list[str] = []

    def grow() -> None:  # the poll hook appends, as a live writer would
        if len(appended) < 3:
            appended.append(f"new {len(appended)}")
            with path.open("a") as handle:
                handle.write(appended[-1] + "\n")

    lines = []
    for line in follow(path, start_lines=1, poll=grow, keep_going=lambda: len(lines) < 4):
        lines.append(line.rstrip())
    assert lines == ["old 2", "new 0", "new 1", "new 2"]


def test_doctor_through_the_cli(github: FakeGitHub, tmp_path: Path, state_dir: Path) -> None:
    env = {
        "HOME": str(tmp_path),
        "STATE_DIR": str(state_dir),
        "GITHUB_API_URL": github.api_url,
        "GITHUB_REPOS": "acme/widgets",
        "GITHUB_TOKEN": "ghp_notavalidtoken0123456789abcdefABCDEF",
        "TRIGGER_LABEL": "no-such-label",
        "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock",
    }
    result = CliRunner().invoke(main, ["doctor"], env=env)
    assert result.exit_code == 1, result.output
    assert "✘" in result.output and "fix:" in result.output and "Traceback" not in result.output
    assert "ghp_notavalidtoken" not in result.output
    checks = json.loads(CliRunner().invoke(main, ["doctor", "--json"], env=env).output)
    failed = {c["name"] for c in checks if not c["ok"]}
    assert "Docker" in failed and "Claude credential" in failed
    assert all(c["fix"] for c in checks if not c["ok"])


def test_service_install_prints_a_unit(tmp_path: Path, env: dict[str, str]) -> None:
    env_file = tmp_path / "solver.env"
    env_file.write_text("GITHUB_REPOS=acme/widgets\n")
    result = expect(invoke(["--env-file", str(env_file), "service", "install", "--user", "--print"], env))
    assert "start --foreground" in result.output and f"EnvironmentFile=-{env_file}" in result.output
    assert "Restart=on-failure" in result.output
    missing = invoke(["service", "install", "--user", "--print"], {**env, "HOME": str(tmp_path / "nohome")})
    assert missing.exit_code == 2 and "no settings file" in missing.output


@pytest.mark.parametrize("args", [["start", "--foreground"], ["start"], ["pause"]])
def test_unusable_state_dir_is_one_line(tmp_path: Path, args: list[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    env = {
        "HOME": str(tmp_path),
        "STATE_DIR": str(blocker / "state"),
        "GITHUB_TOKEN": TOKEN,
        "GITHUB_REPOS": "a/b",
    }
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    where = blocker / "state"
    assert lines == [
        f"Error: cannot use STATE_DIR={where}: Not a directory; point STATE_DIR at a writable directory"
    ]
