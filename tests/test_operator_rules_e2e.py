"""#23 for real: the real Claude Code CLI in Dockerfile.claude's image, through the daemon and its relay,
against the loopback Messages API, which records what reaches the model. The operator's rules are in
the system prompt, the repository's AGENTS.md in the prompt, and the CLI took MCP_CONFIG's servers and
only those (not the repository's own .mcp.json)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from claude_issue_solver.config import Config
from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.logs import task_log_path
from claude_issue_solver.store.queue import TaskState
from tests.e2e import CLAUDE_KEY, all_finished, drive, needs_docker, real_cli

pytestmark = [*needs_docker, pytest.mark.slow]

RULE = "Operator rule 7: name every new file in lower case."
AGENTS = "Agents: run `make lint` before you finish (from AGENTS.md)."


@pytest.fixture(autouse=True)
def _clean(no_leftover_containers: None) -> None:
    pass


def _texts(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(_texts(v) for v in value)
    if isinstance(value, dict):
        return "\n".join(_texts(v) for k, v in value.items() if k in ("text", "content"))
    return ""


@pytest.mark.timeout(900)
def test_rules_agents_md_and_mcp_servers_reach_the_real_cli(
    github: FakeGitHub, e2e_config: Callable[..., Config], claude_image: str, state_dir: Path, tmp_path: Path
) -> None:
    from tests.fakes.fake_anthropic import FakeAnthropic

    github.commit_files(
        "acme/widgets",
        "main",
        {
            "AGENTS.md": f"# For agents\n{AGENTS}\n",
            ".mcp.json": json.dumps({"mcpServers": {"repo-server": {"command": "repo-mcp"}}}),
        },
    )
    rules = tmp_path / "rules.md"
    rules.write_text(RULE + "\n")
    mcp = tmp_path / "mcp.json"
    mcp.write_text(json.dumps({"mcpServers": {"operator-docs": {"command": "operator-docs-mcp"}}}))
    github.create_issue(
        "acme/widgets", "Say hello", "Please add a HELLO.md.", labels=["Claude"], user="maintainer"
    )
    with FakeAnthropic(api_key=CLAUDE_KEY, files={"HELLO.md": "Hello\n"}) as api:
        config = e2e_config(
            **real_cli(claude_image, api.url), APPEND_SYSTEM_PROMPT_FILE=str(rules), MCP_CONFIG=str(mcp)
        )
        queue = drive(config, all_finished, timeout=300)
        calls = api.conversation_requests
    task = queue.list()[0]
    assert task.state is TaskState.COMPLETED, task.error
    assert calls, "the CLI never reached the loopback API"
    first = calls[0].body
    assert RULE in _texts(first["system"]), "the operator's rules are not in the system prompt"
    assert AGENTS in _texts(first["messages"]) and AGENTS not in _texts(first["system"])
    # The CLI read MCP_CONFIG (its server could not start: there is no such program in the image) and,
    # with --strict-mcp-config, not the repository's .mcp.json.
    log = task_log_path(config.log_dir, task.id).read_text()
    (started,) = [line for line in log.splitlines() if "session started" in line]
    assert "MCP servers: operator-docs (" in started and "repo-server" not in started, started
