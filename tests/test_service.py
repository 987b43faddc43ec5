"""The systemd unit: rendering for user and system mode, installing it, and systemd's own verdict on it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import claude_issue_solver
from claude_issue_solver.cli.service import (
    UNIT_NAME,
    ServiceError,
    enable_instructions,
    install,
    render_unit,
    unit_path,
    unit_template,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def env_file(tmp_path: Path) -> Path:
    path = tmp_path / "solver.env"
    path.write_text("GITHUB_REPOS=acme/widgets\n")
    return path


def lines(text: str) -> list[str]:
    """The unit's settings, without its comments."""
    return [line for line in text.splitlines() if not line.startswith("#")]


def keys(text: str) -> set[str]:
    return {line.split("=", 1)[0] for line in lines(text) if "=" in line}


def test_user_unit(env_file: Path) -> None:
    unit = render_unit(user_mode=True, env_file=env_file)
    assert (
        f"ExecStart={sys.executable} -m claude_issue_solver --env-file {env_file} start --foreground"
        in lines(unit)
    )
    for line in (
        "Type=simple",
        f"EnvironmentFile=-{env_file}",
        f"WorkingDirectory={env_file.parent}",
        "Restart=on-failure",
        "RestartSec=10",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=30",
        "NoNewPrivileges=true",
        "WantedBy=default.target",
    ):
        assert line in lines(unit), line
    assert any(line.startswith("Documentation=") for line in lines(unit))
    # A user manager can do neither of these: no User=, no namespace-based hardening, no system targets.
    assert not keys(unit) & {"User", "ProtectSystem", "Wants", "After", "PrivateTmp"}
    assert "@" not in "\n".join(lines(unit))


def test_system_unit(env_file: Path) -> None:
    unit = render_unit(user_mode=False, env_file=env_file, run_as="alice", working_dir=Path("/srv"))
    for line in (
        "User=alice",
        "WorkingDirectory=/srv",
        "After=network-online.target docker.service",
        "ProtectSystem=full",
        "WantedBy=multi-user.target",
        f"EnvironmentFile=-{env_file}",
        "Restart=on-failure",
    ):
        assert line in lines(unit), line
    assert "PrivateTmp" not in keys(unit)


def test_exec_start_is_quoted_for_systemd(tmp_path: Path) -> None:
    unit = render_unit(
        user_mode=True,
        env_file=tmp_path / "my $HOME 100%.env",
        executable=["/opt/my tools/python", "-m", "claude_issue_solver"],
    )
    # Quotes keep words together; % and $ would otherwise be expanded by systemd.
    expected = (
        'ExecStart="/opt/my tools/python" -m claude_issue_solver '
        f'--env-file "{tmp_path}/my $$HOME 100%%.env" start --foreground'
    )
    assert expected in lines(unit)
    assert f"EnvironmentFile=-{tmp_path}/my $HOME 100%%.env" in lines(unit)


def test_refusals(tmp_path: Path, env_file: Path) -> None:
    with pytest.raises(ServiceError, match="does not exist"):
        install(user_mode=True, env_file=tmp_path / "missing.env", home=tmp_path)
    assert not unit_path(True, home=tmp_path).exists()
    with pytest.raises(ServiceError, match="absolute"):
        render_unit(user_mode=True, env_file=env_file, executable=["python3", "-m", "claude_issue_solver"])
    with pytest.raises(ServiceError, match="system units only"):
        render_unit(user_mode=True, env_file=env_file, run_as="alice")
    with pytest.raises(ServiceError, match="User="):
        render_unit(user_mode=False, env_file=env_file, run_as="alice; rm -rf /")


def test_unit_paths(tmp_path: Path) -> None:
    assert unit_path(True, home=tmp_path) == tmp_path / ".config/systemd/user/claude-issue-solver.service"
    assert unit_path(False) == Path("/etc/systemd/system/claude-issue-solver.service")


def test_install_user_unit_writes_it_and_replaces_it(tmp_path: Path, env_file: Path) -> None:
    home = tmp_path / "home"
    path = install(user_mode=True, env_file=env_file, home=home)
    assert path == home / ".config" / "systemd" / "user" / UNIT_NAME
    assert path.read_text() == render_unit(user_mode=True, env_file=env_file)
    assert path.stat().st_mode & 0o777 == 0o644
    path.write_text("stale\n")
    assert install(user_mode=True, env_file=env_file, home=home) == path
    assert path.read_text() == render_unit(user_mode=True, env_file=env_file)
    assert [p.name for p in path.parent.iterdir()] == [UNIT_NAME]  # no temporary files left


def test_template_ships_in_the_package() -> None:
    packaged = Path(claude_issue_solver.__file__).parent / "data" / UNIT_NAME
    assert packaged.is_file()
    assert packaged.read_text() == (ROOT / "contrib" / UNIT_NAME).read_text() == unit_template()


def test_enable_instructions() -> None:
    user = enable_instructions(True)
    assert "systemctl --user daemon-reload && systemctl --user enable --now claude-issue-solver" in user
    assert "journalctl --user -u claude-issue-solver" in user and "loginctl enable-linger" in user
    system = enable_instructions(False)
    assert "systemctl daemon-reload && systemctl enable --now claude-issue-solver" in system
    assert "--user" not in system and "journalctl -u claude-issue-solver" in system


@pytest.mark.parametrize("user_mode", [True, False], ids=["user", "system"])
def test_systemd_accepts_the_unit(tmp_path: Path, user_mode: bool) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package: systemd)")
    odd = tmp_path / "odd dir 100%"
    odd.mkdir()
    env_file = odd / "solver $settings.env"
    env_file.write_text("GITHUB_REPOS=acme/widgets\n")
    python = odd / "py thon"
    python.symlink_to(sys.executable)  # an executable whose path needs quoting, which verify checks exists
    path = install(
        user_mode=user_mode,
        env_file=env_file,
        dest=tmp_path / "units" / UNIT_NAME,
        executable=[str(python), "-m", "claude_issue_solver"],
        run_as=None if user_mode else "root",
    )
    # System scope for both: a user-scope verify needs a running user manager, which CI lacks.
    proc = subprocess.run(
        [analyze, "verify", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0"},
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert not [line for line in output.splitlines() if UNIT_NAME in line or str(path) in line], output
