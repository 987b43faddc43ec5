"""A relay that cannot work is said at ``start``, not at the first task (#18)."""

from __future__ import annotations

from pathlib import Path

import pytest

from claude_issue_solver.config import ConfigError, load_config
from claude_issue_solver.run.agent_access import AgentAccess, make_relay


class _Docker:
    relays = True

    def process_owner(self) -> None:
        return None


def test_a_state_dir_too_long_for_the_relays_sockets_is_a_configuration_error(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    config = load_config(
        environ={"HOME": str(tmp_path), "STATE_DIR": str(deep), "ANTHROPIC_API_KEY": "sk-ant-api03-x" * 3},
        cwd=tmp_path,
    )
    access = AgentAccess(config, _Docker(), make_relay(config, _Docker()))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="too long for the Claude relay's sockets"):
        access.check()


def test_a_short_state_dir_passes_and_no_credential_means_no_relay(tmp_path: Path) -> None:
    config = load_config(
        environ={
            "HOME": str(tmp_path),
            "STATE_DIR": str(tmp_path / "s"),
            "ANTHROPIC_API_KEY": "sk-ant-x" * 3,
        },
        cwd=tmp_path,
    )
    AgentAccess(config, _Docker(), make_relay(config, _Docker())).check()  # type: ignore[arg-type]
    bare = load_config(environ={"HOME": str(tmp_path), "STATE_DIR": str(tmp_path / "s")}, cwd=tmp_path)
    assert make_relay(bare, _Docker()) is None  # type: ignore[arg-type]
