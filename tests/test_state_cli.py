"""An unreadable state file, met by the real CLI in a subprocess: one readable line, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from claude_issue_solver.store.state import SCHEMA_VERSION

ROOT = Path(__file__).resolve().parents[1]
NOT_RUNNING = 3  # what `status` exits with when no daemon runs


@pytest.fixture
def env(tmp_path: Path, state_dir: Path) -> dict[str, str]:
    """Only what the CLI needs: no settings file, credential or home directory of the person testing."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "STATE_DIR": str(state_dir),
        "GITHUB_REPOS": "acme/widgets",
        "PYTHONPATH": str(ROOT),
    }


def cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "claude_issue_solver", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def shown(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def test_queue_meets_bytes_that_are_not_utf8(env: dict[str, str], state_dir: Path, tmp_path: Path) -> None:
    content = b'{"schema": 1, "tasks": {"\xff\xfe\x00": {}}}'
    (state_dir / "state.json").write_bytes(content)
    result = cli(env, tmp_path, "queue")
    assert result.returncode == 0, shown(result)
    assert "Traceback" not in result.stderr + result.stdout
    (line,) = result.stderr.splitlines()  # the one line telling what happened to the file
    (moved,) = state_dir.glob("state.json.corrupt-*")
    assert "is not UTF-8" in line and str(moved) in line and "the queue starts empty" in line
    assert moved.read_bytes() == content
    # it is recorded: later commands show the notice and go on working
    status = cli(env, tmp_path, "status")
    assert status.returncode == NOT_RUNNING, shown(status)
    assert "Traceback" not in status.stderr and status.stderr == "", shown(status)
    (notice,) = (n for n in status.stdout.splitlines() if n.startswith("NOTICE"))
    assert str(moved) in notice
    paused = cli(env, tmp_path, "pause")
    assert paused.returncode == 0 and paused.stderr == "", shown(paused)
    assert "PAUSED" in cli(env, tmp_path, "status").stdout
    assert len(list(state_dir.glob("state.json.corrupt-*"))) == 1


@pytest.mark.parametrize(
    "content",
    [b"", b'{"schema": 1, "tasks": {"widgets-1', b"[1, 2, 3]", b'{"schema": 1, "tasks": "none"}'],
    ids=["empty", "truncated", "a list", "tasks not an object"],
)
def test_status_shows_the_notice(
    env: dict[str, str], state_dir: Path, tmp_path: Path, content: bytes
) -> None:
    (state_dir / "state.json").write_bytes(content)
    result = cli(env, tmp_path, "status", "--json")
    assert result.returncode == NOT_RUNNING, shown(result)
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1, shown(result)
    (moved,) = state_dir.glob("state.json.corrupt-*")
    assert moved.read_bytes() == content
    (notice,) = json.loads(result.stdout)["notices"]
    assert str(moved) in notice["message"]
    again = cli(env, tmp_path, "queue", "--json")
    assert again.returncode == 0 and again.stderr == "", shown(again)
    assert json.loads(again.stdout) == []


def test_a_newer_schema_is_refused_untouched(env: dict[str, str], state_dir: Path, tmp_path: Path) -> None:
    content = json.dumps({"schema": SCHEMA_VERSION + 1, "tasks": {}})
    (state_dir / "state.json").write_text(content)
    result = cli(env, tmp_path, "queue")
    assert result.returncode == 1, shown(result)
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: ") and "newer than this version understands" in line
    assert (state_dir / "state.json").read_text() == content
    assert not list(state_dir.glob("state.json.corrupt-*"))
