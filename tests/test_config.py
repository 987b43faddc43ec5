from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from dotenv import dotenv_values

from claude_issue_solver.cli.main import main
from claude_issue_solver.config import SETTINGS, Config, ConfigError, Setting, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_defaults(tmp_path: Path) -> None:
    config = load_config(environ={"HOME": str(tmp_path)}, cwd=tmp_path)
    assert config.github_api_url == "https://api.github.com"
    assert config.trigger_label == "Claude"
    assert config.poll_interval == 60
    assert config.max_concurrent == 3
    assert config.backend == "docker"
    assert config.task_timeout == 3600
    assert config.state_dir == tmp_path / ".local" / "state" / "claude-issue-solver"


@pytest.mark.parametrize(
    ("text", "value"),
    [("none", None), ("OFF", None), ("unlimited", None), ("5", 5.0), ("12.50", 12.5), ("$3", 3.0),
     (" $ 0.25 ", 0.25)],
)  # fmt: skip
def test_budgets_are_dollars_or_no_cap(tmp_path: Path, text: str, value: float | None) -> None:
    environ = {"HOME": str(tmp_path), "DAILY_BUDGET_USD": text, "CLAUDE_MAX_BUDGET_USD": text}
    config = load_config(environ=environ, cwd=tmp_path)
    assert config.daily_budget_usd == value
    assert config.claude_max_budget_usd == value


def test_repository_caps(tmp_path: Path) -> None:
    config = load_config(environ={"HOME": str(tmp_path)}, cwd=tmp_path)
    assert (config.repo_max_concurrent, config.repo_max_per_hour, config.daily_budget_usd) == (
        None,
        None,
        None,
    )
    environ = {"HOME": str(tmp_path), "REPO_MAX_CONCURRENT": "2", "REPO_MAX_PER_HOUR": "10"}
    config = load_config(environ=environ, cwd=tmp_path)
    assert (config.repo_max_concurrent, config.repo_max_per_hour) == (2, 10)


def test_xdg_state_home(tmp_path: Path) -> None:
    config = load_config(environ={"HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "x")}, cwd=tmp_path)
    assert config.state_dir == tmp_path / "x" / "claude-issue-solver"


def test_env_file_and_environment_precedence(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "POLL_INTERVAL=5\nGITHUB_REPOS=acme/widgets, acme/gadgets\nMAX_CONCURRENT=2\n"
    )
    config = load_config(environ={"HOME": str(tmp_path), "MAX_CONCURRENT": "7"}, cwd=tmp_path)
    assert config.poll_interval == 5
    assert config.github_repos == ("acme/widgets", "acme/gadgets")
    assert config.max_concurrent == 7  # the environment wins over the file


def test_named_env_file(tmp_path: Path) -> None:
    named = tmp_path / "solver.env"
    named.write_text("TRIGGER_LABEL=ai-fix\n")
    assert load_config(named, environ={"HOME": str(tmp_path)}, cwd=tmp_path).trigger_label == "ai-fix"
    env = {"HOME": str(tmp_path), "CLAUDE_ISSUE_SOLVER_ENV": str(named)}
    assert load_config(environ=env, cwd=tmp_path).trigger_label == "ai-fix"
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.env", environ={"HOME": str(tmp_path)}, cwd=tmp_path)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("POLL_INTERVAL", "soon", "POLL_INTERVAL='soon' is not valid: expected an integer >= 1"),
        ("POLL_INTERVAL", "0", "expected an integer >= 1"),
        ("MAX_CONCURRENT", "0", "MAX_CONCURRENT='0' is not valid: expected an integer >= 1"),
        ("TASK_TIMEOUT", "1h", "TASK_TIMEOUT='1h' is not valid"),
        ("GITHUB_REPOS", "acme", "GITHUB_REPOS='acme' is not valid: expected comma-separated owner/name"),
        ("GITHUB_REPOS", "acme/widgets,-bad/x", "expected comma-separated owner/name"),
        ("BACKEND", "kubernetes", "BACKEND='kubernetes' is not valid: expected docker or daytona"),
        ("GITHUB_API_URL", "api.github.com", "expected an http:// or https:// URL"),
        ("LOG_LEVEL", "LOUD", "expected DEBUG or INFO"),
        ("ALLOW_UNTRUSTED_LABELERS", "maybe", "expected true or false"),
        ("DOCKER_MEMORY", "lots", "expected a size such as 4g"),
        ("DOCKER_CPUS", "-1", "expected a number > 0"),
        (
            "DAILY_BUDGET_USD",
            "five",
            "DAILY_BUDGET_USD='five' is not valid: expected an amount of US",
        ),
        ("DAILY_BUDGET_USD", "0", "expected an amount of US dollars > 0"),
        ("CLAUDE_MAX_BUDGET_USD", "-1", "CLAUDE_MAX_BUDGET_USD='-1' is not valid: expected an amount"),
        ("CLAUDE_MAX_BUDGET_USD", "nan", "expected an amount of US dollars"),
        ("REPO_MAX_CONCURRENT", "0", "REPO_MAX_CONCURRENT='0' is not valid: expected an integer >= 1"),
        ("REPO_MAX_PER_HOUR", "ten", "expected an integer >= 1 (blank or none: no cap)"),
    ],
)
def test_bad_values_name_the_key_and_form(tmp_path: Path, key: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ={"HOME": str(tmp_path), key: value}, cwd=tmp_path)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_token_is_reported_for_the_daemon(tmp_path: Path) -> None:
    config = load_config(environ={"HOME": str(tmp_path), "GITHUB_REPOS": "acme/widgets"}, cwd=tmp_path)
    with pytest.raises(ConfigError, match="GITHUB_TOKEN is not set"):
        config.require_daemon_settings()
    config = load_config(environ={"HOME": str(tmp_path), "GITHUB_TOKEN": "x" * 20}, cwd=tmp_path)
    with pytest.raises(ConfigError, match="GITHUB_REPOS is not set"):
        config.require_daemon_settings()


def test_secrets_are_masked(tmp_path: Path) -> None:
    token = "ghp_" + "a" * 36
    config = load_config(
        environ={"HOME": str(tmp_path), "GITHUB_TOKEN": token, "ANTHROPIC_API_KEY": "sk-ant-xyz123"}
    )
    shown = config.redacted()
    assert shown["GITHUB_TOKEN"] == "***"
    assert shown["ANTHROPIC_API_KEY"] == "***"
    assert token not in repr(shown)
    assert set(config.secrets()) == {token, "sk-ant-xyz123"}


def test_every_key_is_documented_in_env_example() -> None:
    text = (ROOT / ".env.example").read_text()
    missing = [s.key for s in SETTINGS if f"{s.key}=" not in text]
    assert missing == []


@pytest.mark.parametrize(
    "env",
    [
        {"MAX_CONCURRENT": "0"},
        {"POLL_INTERVAL": "abc"},
        {"BACKEND": "podman"},
        {"GITHUB_REPOS": "not-a-repo"},
        {"GITHUB_TOKEN": ""},
    ],
)
def test_cli_reports_bad_config_in_one_line_with_exit_2(tmp_path: Path, env: dict[str, str]) -> None:
    base = {
        "HOME": str(tmp_path),
        "STATE_DIR": str(tmp_path / "s"),
        "GITHUB_TOKEN": "t" * 20,
        "GITHUB_REPOS": "a/b",
    }
    result = CliRunner().invoke(main, ["start", "--foreground"], env={**base, **env})
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output


# --- a blank key means its default ------------------------------------------------------------------------


def defaults(tmp_path: Path) -> Config:
    return load_config(environ={"HOME": str(tmp_path)}, cwd=tmp_path)


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.key)
@pytest.mark.parametrize("where", ["file", "environment"])
def test_every_blank_key_means_its_default(tmp_path: Path, setting: Setting, where: str) -> None:
    key = setting.key
    env = {"HOME": str(tmp_path)}
    if where == "file":
        (tmp_path / ".env").write_text(f"{key}=\n")
    else:
        env[key] = "  "
    config = load_config(environ=env, cwd=tmp_path)
    field = key.lower()
    assert getattr(config, field) == getattr(defaults(tmp_path), field)


def test_a_copy_of_env_example_gives_the_defaults(tmp_path: Path) -> None:
    example = ROOT / ".env.example"
    (tmp_path / ".env").write_text(example.read_text())
    config = load_config(environ={"HOME": str(tmp_path)}, cwd=tmp_path)
    assert config.state_dir == tmp_path / ".local" / "state" / "claude-issue-solver"
    # Every key the example sets is one we know, and every value it gives is the default.
    keys = {s.key for s in SETTINGS}
    listed = dotenv_values(example, interpolate=False)
    assert set(listed) <= keys, set(listed) - keys
    differs = {
        key
        for key in listed
        if getattr(config, key.lower()) != getattr(defaults(tmp_path), key.lower()) and key != "GITHUB_REPOS"
    }
    assert differs == set()
    assert config.settings_file == tmp_path / ".env"


def test_a_blank_variable_does_not_hide_the_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("TRIGGER_LABEL=ai-fix\nPOLL_INTERVAL=5\n")
    env = {"HOME": str(tmp_path), "TRIGGER_LABEL": "", "POLL_INTERVAL": "9"}
    config = load_config(environ=env, cwd=tmp_path)
    assert (config.trigger_label, config.poll_interval) == ("ai-fix", 9)


def test_blank_home_falls_back_to_the_users_home(tmp_path: Path) -> None:
    config = load_config(environ={"HOME": "", "XDG_STATE_HOME": ""}, cwd=tmp_path)
    assert config.state_dir.is_absolute()
    assert config.state_dir == Path("~/.local/state/claude-issue-solver").expanduser()


# --- every problem at once ----------------------------------------------------------------------------------


def test_every_bad_key_is_reported_at_once(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "POLL_INTERVAL": "soon", "BACKEND": "podman", "GITHUB_TOKEN": "x"}
    (tmp_path / ".env").write_text("MAX_CONCURRENT=0\nDOCKER_MEMORY=lots\n")
    with pytest.raises(ConfigError) as info:
        load_config(environ=env, cwd=tmp_path)
    problems = info.value.problems
    assert [p.split("=")[0] for p in problems] == [
        "POLL_INTERVAL",
        "MAX_CONCURRENT",
        "BACKEND",
        "DOCKER_MEMORY",
    ]
    assert str(info.value).splitlines() == ["4 configuration problems:", *(f"  {p}" for p in problems)]


def test_unparsable_lines_are_reported_without_their_content(tmp_path: Path) -> None:
    secret = "ghp_secretinabrokenline0123456789abcdef"
    env_file = tmp_path / "solver.env"
    env_file.write_text(f'GITHUB_REPOS=acme/widgets\nGITHUB_TOKEN="{secret}\n')
    with pytest.raises(ConfigError) as info:
        load_config(env_file, environ={"HOME": str(tmp_path)}, cwd=tmp_path)
    assert info.value.problems == (
        f"{env_file}, line 2: cannot be parsed: expected KEY=value (quotes closed)",
    )
    assert secret not in str(info.value)


def test_every_missing_daemon_setting_is_reported_at_once(tmp_path: Path) -> None:
    config = load_config(environ={"HOME": str(tmp_path), "BACKEND": "daytona"}, cwd=tmp_path)
    with pytest.raises(ConfigError) as info:
        config.require_daemon_settings()
    assert [p.split(" ")[0] for p in info.value.problems] == [
        "GITHUB_TOKEN",
        "GITHUB_REPOS",
        "DAYTONA_API_KEY",
    ]


def test_cli_lists_every_bad_key_with_exit_2(tmp_path: Path) -> None:
    env = {
        "HOME": str(tmp_path),
        "STATE_DIR": str(tmp_path / "s"),
        "GITHUB_TOKEN": "t" * 20,
        "GITHUB_REPOS": "a/b",
        "POLL_INTERVAL": "soon",
        "MAX_CONCURRENT": "0",
    }
    result = CliRunner().invoke(main, ["status"], env=env)
    assert result.exit_code == 2, result.output
    assert "POLL_INTERVAL='soon' is not valid" in result.output
    assert "MAX_CONCURRENT='0' is not valid" in result.output
    assert "Traceback" not in result.output


# --- which settings file was read -----------------------------------------------------------------------


def test_settings_file_is_recorded(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    assert load_config(environ=env, cwd=tmp_path).settings_file is None
    (tmp_path / ".env").write_text("POLL_INTERVAL=5\n")
    assert load_config(environ=env, cwd=tmp_path).settings_file == tmp_path / ".env"
    named = tmp_path / "named.env"
    named.write_text("POLL_INTERVAL=6\n")
    assert load_config(named, environ=env, cwd=tmp_path).settings_file == named
    from_variable = load_config(environ={**env, "CLAUDE_ISSUE_SOLVER_ENV": str(named)}, cwd=tmp_path)
    assert from_variable.settings_file == named


def run_cli(args: list[str], cwd: Path, home: Path) -> subprocess.CompletedProcess[str]:
    """The real command in a child process, with a scrubbed environment and a HOME of its own."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_STATE_HOME": str(home / "state"),
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.run(
        [sys.executable, "-m", "claude_issue_solver", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_status_says_which_settings_file_it_read(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    elsewhere = tmp_path / "elsewhere"
    checkout.mkdir()
    elsewhere.mkdir()
    # A fresh copy of the example, as a new user makes it: blank keys everywhere.
    (checkout / ".env").write_text((ROOT / ".env.example").read_text())

    here = run_cli(["status"], checkout, tmp_path / "home")
    assert here.returncode == 3, here.stdout + here.stderr  # not running, and no configuration error
    assert f"settings: {checkout / '.env'} (the environment wins over it)" in here.stdout.splitlines()

    there = run_cli(["status"], elsewhere, tmp_path / "home")
    assert there.returncode == 3, there.stdout + there.stderr
    expected = (
        "settings: none found (looked for --env-file, $CLAUDE_ISSUE_SOLVER_ENV, "
        f"./.env in {elsewhere}); using the environment only"
    )
    assert expected in there.stdout.splitlines()

    as_json = run_cli(
        ["--env-file", str(checkout / ".env"), "status", "--json"], elsewhere, tmp_path / "home"
    )
    payload = json.loads(as_json.stdout)
    assert payload["settings_file"] == str(checkout / ".env")
    assert (
        json.loads(run_cli(["status", "--json"], elsewhere, tmp_path / "home").stdout)["settings_file"]
        is None
    )
