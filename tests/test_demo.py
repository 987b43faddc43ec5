"""`claude-issue-solver demo`: the whole loop against the loopback GitHub and real Docker containers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest

from claude_issue_solver.backends.base import LABEL_TASK
from claude_issue_solver.demo import STAND_IN_NOTICE, run_demo

# A fixed HOME and no Claude credential: the scripted stand-in, whatever the developer's shell holds.
NO_CREDENTIAL = {"HOME": "/nonexistent", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
PR_URL = re.compile(r"^URL: +(http://127\.0\.0\.1:\d+/demo/calculator/pull/\d+)$", re.MULTILINE)


def containers_mounting(client: object, path: Path) -> list[str]:
    listed = client.api.containers(all=True, filters={"label": [LABEL_TASK]})  # type: ignore[attr-defined]
    return [c["Id"] for c in listed if str(path) in json.dumps(c.get("Mounts", []))]


def assert_stand_in_report(text: str) -> None:
    assert text.splitlines()[0] == STAND_IN_NOTICE
    assert PR_URL.search(text), text
    assert "Branch: claude/issue-1 -> main" in text
    assert "\nFixes #1\n" in text
    assert "git diff main...claude/issue-1" in text and "+++ b/CLAUDE_FIX.md" in text
    assert "Comment on issue #1 by claude-bot:" in text
    assert f"Claude opened a pull request for this issue: {PR_URL.search(text).group(1)}" in text  # type: ignore[union-attr]
    assert "Traceback" not in text


@pytest.mark.docker
def test_demo_with_the_stand_in_agent(
    docker_client: object, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    out = StringIO()
    code = run_demo(tmp_path, out=out, environ=NO_CREDENTIAL, timeout=120)
    err = capfd.readouterr().err
    assert code == 0, out.getvalue() + err
    assert_stand_in_report(out.getvalue())
    assert "daemon running" in err and "Traceback" not in err
    assert containers_mounting(docker_client, tmp_path) == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.docker
def test_keep_leaves_the_state_and_the_bare_repository(docker_client: object, tmp_path: Path) -> None:
    out = StringIO()
    assert run_demo(tmp_path, out=out, environ=NO_CREDENTIAL, keep=True, timeout=120) == 0, out.getvalue()
    bare = tmp_path / "github" / "demo" / "calculator.git"
    assert f"bare repository at {bare}" in out.getvalue()
    branches = subprocess.run(
        ["git", f"--git-dir={bare}", "branch", "--list", "claude/*"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "claude/issue-1" in branches.stdout
    assert (tmp_path / "state" / "state.json").is_file()
    assert containers_mounting(docker_client, tmp_path) == []


def test_docker_unreachable_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    out = StringIO()
    code = run_demo(tmp_path, out=out, environ={"ANTHROPIC_API_KEY": "sk-ant-api03-notused0123456789"})
    assert code == 1
    lines = out.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("demo failed: Docker is not reachable") and "start it" in lines[0]
    assert "Traceback" not in capfd.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.docker
def test_demo_in_a_fresh_process(docker_client: object, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN")}
    env["TMPDIR"] = str(tmp_path)  # the demo's own temporary directory lands here, where we can look
    proc = subprocess.run(
        [sys.executable, "-c", "from claude_issue_solver.demo import run_demo; raise SystemExit(run_demo())"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_stand_in_report(proc.stdout)
    assert "daemon stopped" in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.glob("claude-issue-solver-demo-*")) == []
    assert containers_mounting(docker_client, tmp_path) == []


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_demo_with_a_credential_runs_the_real_cli(claude_image: str, tmp_path: Path) -> None:
    """With a key, no stand-in: Dockerfile.claude's image and the real `claude`, here on a loopback API."""
    from tests.fakes.fake_anthropic import FakeAnthropic

    key = "sk-ant-api03-demotestkey0123456789"
    with FakeAnthropic(api_key=key, files={"NOTES.md": "subtract must subtract\n"}) as api:
        environ = {
            "ANTHROPIC_API_KEY": key,
            "ANTHROPIC_BASE_URL": api.url,
            "CLAUDE_CODE_MAX_RETRIES": "0",
            "DOCKER_IMAGE": claude_image,
            "DOCKER_NETWORK": "host",  # the loopback API is on the host's 127.0.0.1
        }
        out = StringIO()
        code = run_demo(tmp_path, out=out, environ=environ, timeout=600)
        prompts = json.dumps([r.body for r in api.conversation_requests])
    text = out.getvalue()
    assert code == 0, text
    assert STAND_IN_NOTICE not in text and "the real claude CLI" in text
    assert "subtract() adds instead of subtracting" in prompts and "FAKE_CLAUDE_SCENARIO" not in prompts
    assert "+++ b/NOTES.md" in text and "\nFixes #1\n" in text
    assert list(tmp_path.iterdir()) == []
