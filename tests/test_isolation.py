"""The suite is isolated from the person running it: no ./.env, HOME, XDG_* dir or exported credential.

The first tests check what a test sees (they pass trivially on a clean machine); the last one runs them
again in a child pytest from a directory holding a `.env` full of nonsense, with credentials, daemon
settings and git's repository variables exported, as on a developer's machine. Without the isolation
fixture in conftest.py those tests fail there.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from claude_issue_solver.config import SETTINGS, load_config
from tests.conftest import ROOT, XDG_HOMES, Isolation, is_scrubbed

HOSTILE_VALUE = "nonsense-from-the-user"
# Each of these would change what a test sees: settings, credentials, which .env, git's repository.
EXPORTED = {
    "GITHUB_TOKEN": f"ghp_{HOSTILE_VALUE}",
    "ANTHROPIC_API_KEY": f"sk-ant-{HOSTILE_VALUE}",
    "CLAUDE_CODE_OAUTH_TOKEN": HOSTILE_VALUE,
    "DAYTONA_API_KEY": HOSTILE_VALUE,
    "GITHUB_API_URL": HOSTILE_VALUE,
    "STATE_DIR": f"/{HOSTILE_VALUE}",
    "POLL_INTERVAL": HOSTILE_VALUE,
    "DISABLE_TELEMETRY": HOSTILE_VALUE,
    "GIT_DIR": f"/{HOSTILE_VALUE}",
    "FAKE_CLAUDE_SCENARIO": HOSTILE_VALUE,
}
# The tests of this file that the hostile run repeats.
CHECKS = (
    "test_no_user_variable_is_left",
    "test_cwd_home_and_xdg_dirs_are_the_tests_own",
    "test_settings_load_as_defaults",
    "test_a_child_process_inherits_the_isolation",
    "test_the_cli_reads_no_user_settings",
)


def test_no_user_variable_is_left() -> None:
    # The XDG_*_HOME dirs are set again, to the test's own (checked below).
    assert [name for name in os.environ if is_scrubbed(name) and name not in XDG_HOMES] == []
    for setting in SETTINGS:
        assert setting.key not in os.environ


def test_cwd_home_and_xdg_dirs_are_the_tests_own(isolated: Isolation) -> None:
    assert Path.cwd() == isolated.cwd
    assert list(isolated.cwd.iterdir()) == []
    assert os.environ["HOME"] == str(isolated.home) == str(Path.home())
    base = isolated.cwd.parent
    for name in XDG_HOMES:
        assert Path(os.environ[name]).parent == base
    assert not [name for name in os.environ if name.startswith("XDG_") and name not in XDG_HOMES]
    assert not ROOT.is_relative_to(base) and not base.is_relative_to(ROOT)


def test_settings_load_as_defaults(isolated: Isolation) -> None:
    config = load_config()
    assert config.github_token is None and config.anthropic_api_key is None
    assert config.daytona_api_key is None and config.claude_code_oauth_token is None
    assert config.github_api_url == "https://api.github.com"
    assert config.poll_interval == 60
    assert config.state_dir.is_relative_to(isolated.cwd.parent)
    assert config.agent_env == ()


def test_a_child_process_inherits_the_isolation(isolated: Isolation) -> None:
    script = "import json, os; print(json.dumps({'cwd': os.getcwd(), 'env': dict(os.environ)}))"
    seen = json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True, check=True).stdout)
    assert seen["cwd"] == str(isolated.cwd)
    assert seen["env"]["HOME"] == str(isolated.home)
    assert [name for name in seen["env"] if is_scrubbed(name) and name not in XDG_HOMES] == []


def test_the_cli_reads_no_user_settings() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "claude_issue_solver", "status", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    # 3 is "the daemon is not running"; a setting read from the user's files would make it 2.
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert HOSTILE_VALUE not in proc.stdout + proc.stderr


def test_the_checks_pass_in_a_hostile_environment(tmp_path: Path) -> None:
    """A `.env` of nonsense for every key in the working directory, credentials exported: still clean."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / ".env").write_text("".join(f"{s.key}={HOSTILE_VALUE}\n" for s in SETTINGS))
    named_env = tmp_path / "named.env"
    named_env.write_text(f"GITHUB_REPOS={HOSTILE_VALUE}\n")
    home = tmp_path / "user-home"
    (home / ".config").mkdir(parents=True)
    env = {
        **os.environ,
        **EXPORTED,
        "CLAUDE_ISSUE_SOLVER_ENV": str(named_env),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_STATE_HOME": f"/{HOSTILE_VALUE}",
        "XDG_CONFIG_DIRS": f"/{HOSTILE_VALUE}",
    }
    this_file = Path(__file__).resolve()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-W",
            "error",  # the user's .env once caused 40 warnings
            *(f"{this_file}::{name}" for name in CHECKS),
        ],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        stdin=subprocess.DEVNULL,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert re.search(rf"\b{len(CHECKS)} passed\b", output), output
    assert "skipped" not in output and "warning" not in output.lower(), output
    # The child left the user's files alone.
    assert sorted(p.name for p in checkout.iterdir()) == [".env"]
    assert list((home / ".config").iterdir()) == []
