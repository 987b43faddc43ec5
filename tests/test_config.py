from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from claude_issue_solver.cli import main
from claude_issue_solver.config import SETTINGS, ConfigError, load_config

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
