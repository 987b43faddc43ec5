"""The CLI: fast commands through CliRunner, the daemon's lifecycle through real processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from claude_issue_solver.cli.main import main
from claude_issue_solver.daemon.pidfile import daemon_status
from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.store.queue import TaskQueue, TaskState
from claude_issue_solver.store.state import StateStore
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
    # A routine stop is information: a WARNING there would teach people to ignore warnings.
    (received,) = [line for line in log.splitlines() if "received SIGTERM" in line]
    assert " INFO " in received, received
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


ALL_STATE_COMMANDS = [
    ["start", "--foreground"],
    ["start"],
    ["restart"],
    ["stop"],
    ["status"],
    ["status", "--check"],
    ["queue"],
    ["pause"],
    ["resume"],
    ["logs"],
    ["logs", "-f"],
    ["submit", "a/b#1"],
    ["cancel", "a/b#1"],
    ["retry", "a/b#1"],
]


@pytest.mark.parametrize("args", ALL_STATE_COMMANDS, ids=" ".join)
def test_unusable_state_dir_is_one_line_and_exit_2(tmp_path: Path, args: list[str]) -> None:
    """Exit 2, not 1: the systemd unit stops restarting only on 2 (RestartPreventExitStatus)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    env = {
        "HOME": str(tmp_path),
        "STATE_DIR": str(blocker / "state"),
        "GITHUB_TOKEN": TOKEN,
        "GITHUB_REPOS": "a/b",
        "GITHUB_API_URL": "http://127.0.0.1:9/api/v3",
    }
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [
        f"Error: cannot use STATE_DIR={blocker / 'state'}: {blocker} is not a directory; "
        "point STATE_DIR at a writable directory"
    ]


def test_unusable_state_dir_through_a_background_start(daemon_env: dict[str, str], tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    for args in (["start"], ["start", "--foreground"]):
        result = cli({**daemon_env, "STATE_DIR": str(blocker)}, *args)
        assert result.returncode == 2, result.stderr
        assert result.stderr.splitlines() == [
            f"Error: cannot use STATE_DIR={blocker}: {blocker} is not a directory; "
            "point STATE_DIR at a writable directory"
        ]


def test_a_state_dir_without_write_permission_is_exit_2(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root may write anywhere")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    env = {"HOME": str(tmp_path), "STATE_DIR": str(locked / "state"), "GITHUB_REPOS": "a/b"}
    result = CliRunner().invoke(main, ["pause"], env=env)
    assert result.exit_code == 2 and "cannot use STATE_DIR" in result.output, result.output


# --- health: the start-up check, status --check, a restart polls at once ------------------------------


def write_settings(env: dict[str, str], **changes: str) -> None:
    path = Path(env["CLAUDE_ISSUE_SOLVER_ENV"])
    settings = dict(line.split("=", 1) for line in path.read_text().splitlines() if line)
    settings.update(changes)
    path.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


@needs_docker
@pytest.mark.parametrize("args", [["start"], ["start", "--foreground"]], ids=" ".join)
def test_start_refuses_a_rejected_token(daemon_env: dict[str, str], state_dir: Path, args: list[str]) -> None:
    write_settings(daemon_env, GITHUB_TOKEN="ghp_rejectedtoken0123456789abcdefABCD")
    result = cli(daemon_env, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "daemon started" not in result.stdout
    assert last_line(result.stderr) == (
        "Error: cannot start: acme/widgets: GitHub rejected the credential (HTTP 401: Bad credentials)"
    )
    if args == ["start"]:
        assert result.stderr.count("\n") == 1  # one line, nothing else
    assert "Traceback" not in result.stderr and "ghp_rejected" not in result.stderr
    assert not daemon_status(state_dir / "daemon.pid").running


@needs_docker
def test_start_refuses_a_missing_repo_and_no_permission(
    daemon_env: dict[str, str], github: FakeGitHub, state_dir: Path
) -> None:
    write_settings(daemon_env, GITHUB_REPOS="acme/widgets,acme/no-such-repo")
    result = cli(daemon_env, "start")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        "Error: cannot start: acme/no-such-repo: not found, or the credential cannot see it "
        "(HTTP 404: Not Found)"
    ]
    write_settings(daemon_env, GITHUB_REPOS="acme/widgets")
    github.fail_next(
        "/api/v3/repos/acme/widgets/issues", 403, body={"message": "Resource not accessible by integration"}
    )
    result = cli(daemon_env, "start")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        "Error: cannot start: acme/widgets: the credential lacks permission "
        "(HTTP 403: Resource not accessible by integration)"
    ]
    assert not daemon_status(state_dir / "daemon.pid").running


@needs_docker
def test_transient_trouble_starts_with_a_warning_and_shows_as_degraded(
    daemon_env: dict[str, str], github: FakeGitHub
) -> None:
    write_settings(daemon_env, POLL_INTERVAL="30")  # the back-off after one failure: 15 to 30 s
    github.fail_next("/api/v3/repos/acme/widgets/issues", 502)
    started = cli(daemon_env, "start")
    assert started.returncode == 0, started.stderr
    assert "daemon started" in started.stdout
    assert started.stderr.splitlines() == [
        "warning: acme/widgets: GitHub is failing (HTTP 502: Bad Gateway); starting anyway, "
        "retrying with back-off"
    ]
    check = cli(daemon_env, "status", "--check")
    assert check.returncode == 4, check.stdout + check.stderr
    degraded = (
        r"health: degraded — acme/widgets since \d\d:\d\dZ: GitHub is failing \(HTTP 502: Bad Gateway\)"
    )
    assert re.fullmatch(degraded + "\n", check.stdout), check.stdout
    assert re.search(degraded, cli(daemon_env, "status").stdout)
    payload = json.loads(cli(daemon_env, "status", "--json").stdout)
    assert payload["health"]["status"] == "degraded"
    assert [p["repo"] for p in payload["health"]["problems"]] == ["acme/widgets"]
    assert "HTTP 502" in payload["health"]["problems"][0]["reason"]
    # GitHub is back: a restart looks at once instead of waiting out the back-off, and clears the error
    restarted = cli(daemon_env, "restart")
    assert restarted.returncode == 0 and restarted.stderr == "", restarted.stderr
    check = cli(daemon_env, "status", "--check")
    assert (check.returncode, check.stdout) == (0, "health: healthy\n")
    payload = json.loads(cli(daemon_env, "status", "--json").stdout)
    assert payload["health"] == {"status": "healthy", "summary": "healthy", "problems": []}
    assert payload["repos"]["acme/widgets"]["last_error"] is None
    assert cli(daemon_env, "stop").returncode == 0
    stopped = cli(daemon_env, "status", "--check")
    assert (stopped.returncode, stopped.stdout) == (3, "health: not running\n")


@needs_docker
def test_unreachable_github_starts_with_one_readable_warning(daemon_env: dict[str, str]) -> None:
    write_settings(daemon_env, GITHUB_API_URL="http://127.0.0.1:9/api/v3")
    started = cli(daemon_env, "start")
    assert started.returncode == 0, started.stderr
    assert started.stderr.splitlines() == [
        "warning: acme/widgets: cannot reach GitHub at 127.0.0.1:9: connection refused (check "
        "GITHUB_API_URL); starting anyway, retrying with back-off"
    ]
    check = cli(daemon_env, "status", "--check")
    assert check.returncode == 4 and "cannot reach GitHub at 127.0.0.1:9" in check.stdout
    assert cli(daemon_env, "stop").returncode == 0


@needs_docker
def test_a_restart_polls_at_once_and_clears_the_old_error(
    daemon_env: dict[str, str], github: FakeGitHub, state_dir: Path
) -> None:
    """A back-off recorded by an earlier daemon (say, before GITHUB_API_URL was fixed) is not waited out."""
    far = time.time() + 3600
    with StateStore(state_dir / "state.json").transaction() as data:
        data["watcher"] = {
            "repos": {
                "acme/widgets": {
                    "last_error": "cannot reach GitHub at github.invalid: the host name does not resolve",
                    "last_error_at": time.time() - 60,
                    "failing_since": time.time() - 600,
                    "failures": 6,
                    "backoff_until": far,
                }
            }
        }
    assert cli(daemon_env, "pause").returncode == 0  # keep the task queued: this is about the poll
    github.create_issue("acme/widgets", "Waiting since before the fix", labels=["Claude"], user="maintainer")
    started = cli(daemon_env, "start")
    assert started.returncode == 0 and started.stderr == "", started.stderr
    check = cli(daemon_env, "status", "--check")
    assert (check.returncode, check.stdout) == (0, "health: healthy\n")
    wait_until(lambda: bool(TaskQueue(StateStore(state_dir / "state.json")).list()), 10, "the issue queued")
    health = StateStore(state_dir / "state.json").read()["watcher"]["repos"]["acme/widgets"]
    assert health["last_error"] is None and health["backoff_until"] is None and health["failures"] == 0
    assert cli(daemon_env, "stop").returncode == 0


def test_status_shows_health_at_a_glance(env: dict[str, str], state_dir: Path) -> None:
    now = time.time()
    with StateStore(state_dir / "state.json").transaction() as data:
        data["watcher"] = {
            "repos": {
                "acme/widgets": {
                    "last_error": "GitHub rejected the credential (HTTP 401: Bad credentials)",
                    "failing_since": now - 60,
                    "last_error_at": now,
                }
            }
        }
    text = expect(invoke(["status"], env), 3).output
    assert "health: not running\n" in text  # not running outranks a stale error
    result = expect(invoke(["status", "--check"], env), 3)
    assert result.output == "health: not running\n"
    payload = json.loads(expect(invoke(["status", "--json"], env), 3).output)
    assert payload["health"]["status"] == "not running"
    assert payload["health"]["problems"] == [
        {
            "repo": "acme/widgets",
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 60)),
            "reason": "GitHub rejected the credential (HTTP 401: Bad credentials)",
        }
    ]


def test_health_line_of_a_running_but_degraded_daemon() -> None:
    from claude_issue_solver.cli.render import health_line, health_payload
    from claude_issue_solver.daemon.pidfile import DaemonStatus

    now = time.mktime((2026, 12, 1, 10, 30, 0, 0, 0, 0)) - time.timezone
    running = DaemonStatus(running=True, pid=42, stale=False)
    repos = {
        "acme/widgets": {
            "last_error": "GitHub rejected the credential (HTTP 401)",
            "failing_since": now - 1680,
        },
        "acme/gadgets": {"last_error": None, "last_success": now},
        "acme/old": {"last_error": "GitHub is failing (HTTP 502)", "failing_since": now - 86400},
    }
    health = health_payload(running, repos, ["acme/widgets", "acme/gadgets", "acme/old"], now)
    assert health["status"] == "degraded"
    assert health_line(health) == (
        "health: degraded — acme/widgets since 10:02Z: GitHub rejected the credential (HTTP 401); "
        "acme/old since 2026-11-30 10:30Z: GitHub is failing (HTTP 502)"
    )
    assert health_payload(running, {"acme/gadgets": repos["acme/gadgets"]}, ["acme/gadgets"], now) == {
        "status": "healthy",
        "summary": "healthy",
        "problems": [],
    }


# --- commands that talk to GitHub themselves ----------------------------------------------------------


def test_submit_against_an_unreachable_github_is_one_line(
    daemon_env: dict[str, str], state_dir: Path
) -> None:
    write_settings(daemon_env, GITHUB_API_URL="http://127.0.0.1:9/api/v3")
    result = cli(daemon_env, "submit", "acme/widgets#1")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "Error: cannot read acme/widgets#1: GET /repos/acme/widgets/issues/1: cannot reach GitHub at "
        "127.0.0.1:9: connection refused (check GITHUB_API_URL)"
    ]
    # cancel's comment on the issue is best effort: one readable warning, and the cancel is done
    task = TaskQueue(StateStore(state_dir / "state.json")).submit("acme/widgets", 1, "one")
    result = cli(daemon_env, "cancel", "acme/widgets#1")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "warning: could not comment on acme/widgets#1: GET /repos/acme/widgets/issues/1/comments: "
        "cannot reach GitHub at 127.0.0.1:9: connection refused (check GITHUB_API_URL)"
    ]
    assert f"cancelled {task.id}" in result.stdout
    retried = cli(daemon_env, "retry", "acme/widgets#1")  # retry queues only; it does not call GitHub
    assert retried.returncode == 0 and retried.stderr == "", retried.stderr


def test_submit_with_a_rejected_token_is_one_line(daemon_env: dict[str, str], github: FakeGitHub) -> None:
    github.create_issue("acme/widgets", "Exists", user="maintainer")
    write_settings(daemon_env, GITHUB_TOKEN="ghp_rejectedtoken0123456789abcdefABCD")
    result = cli(daemon_env, "submit", "acme/widgets#1")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "Error: cannot read acme/widgets#1: GET /repos/acme/widgets/issues/1: GitHub rejected the "
        "credential (HTTP 401: Bad credentials)"
    ]


@needs_docker
def test_a_start_that_does_not_come_up_in_time_is_stopped(
    daemon_env: dict[str, str], github: FakeGitHub, state_dir: Path
) -> None:
    github.set_delay("/api/v3/repos/acme/widgets/issues", 20)  # the start-up check hangs
    result = cli(daemon_env, "start", "--wait", "1")
    assert result.returncode == 1
    assert re.fullmatch(
        r"Error: the daemon did not come up within 1s \(pid \d+\), so it was stopped; see .*daemon\.log",
        last_line(result.stderr),
    ), result.stderr
    assert not daemon_status(state_dir / "daemon.pid").running
    github.set_delay("/api/v3/repos/acme/widgets/issues", 0)
    assert cli(daemon_env, "start").returncode == 0  # nothing half-started stands in the way
    assert cli(daemon_env, "stop").returncode == 0


@needs_docker
def test_ctrl_c_while_start_waits_stops_the_half_started_daemon_in_one_line(
    daemon_env: dict[str, str], github: FakeGitHub, state_dir: Path
) -> None:
    github.set_delay("/api/v3/repos/acme/widgets/issues", 20)  # the start-up check hangs
    starting = subprocess.Popen(
        [sys.executable, "-m", "claude_issue_solver", "start"],
        env=daemon_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The background daemon holds the pidfile's lock while its start-up check hangs.
        wait_until(lambda: daemon_status(state_dir / "daemon.pid").running, 30, "the pidfile lock")
        starting.send_signal(signal.SIGINT)
        _, stderr = starting.communicate(timeout=30)
    finally:
        if starting.poll() is None:
            starting.kill()
            starting.wait()
    assert starting.returncode == 130
    assert re.fullmatch(
        r"Error: interrupted: the daemon that was starting \(pid \d+\) was stopped", stderr.strip()
    ), stderr
    assert not daemon_status(state_dir / "daemon.pid").running
    github.set_delay("/api/v3/repos/acme/widgets/issues", 0)


@needs_docker
def test_stop_waits_for_a_daemon_that_is_still_starting(
    daemon_env: dict[str, str], github: FakeGitHub, state_dir: Path
) -> None:
    github.set_delay("/api/v3/repos/acme/widgets/issues", 2)  # the start-up check takes a while
    starting = subprocess.Popen(
        [sys.executable, "-m", "claude_issue_solver", "start", "--foreground"],
        env=daemon_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: daemon_status(state_dir / "daemon.pid").running, 30, "the pidfile lock")
        assert daemon_status(state_dir / "daemon.pid").pid is None  # locked, not ready yet
        stopped = cli(daemon_env, "stop")
        assert stopped.returncode == 0 and "daemon stopped" in stopped.stdout, stopped.stderr
        assert starting.wait(30) == 0
    finally:
        if starting.poll() is None:
            starting.kill()
            starting.wait()
