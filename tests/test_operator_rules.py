"""The operator's rules (APPEND_SYSTEM_PROMPT_FILE), MCP servers (MCP_CONFIG) and a repository's
AGENTS.md (#23): what reaches the agent's command line and prompt, and what doctor and start say."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from claude_issue_solver.github.client import GitHubClient
from claude_issue_solver.logs import REDACTOR
from claude_issue_solver.run import operator_rules
from claude_issue_solver.run.agent import AgentConfigError, AgentSettings, build_command, parse_extra_args
from claude_issue_solver.run.operator_rules import OperatorRulesError, load_mcp_config, read_rules
from claude_issue_solver.run.pipeline import agent_settings
from claude_issue_solver.run.repo_instructions import LIMIT, agents_md, with_agents_md
from claude_issue_solver.store.outcome import TaskControl
from claude_issue_solver.store.queue import TaskState
from tests.fakes.memory_backend import Place, Process, edits
from tests.test_cli import expect, invoke
from tests.test_pipeline import REPO, SUMMARY, World
from tests.test_pipeline import world as world  # the fixture

RULES = "Always write British English.\nNever touch the vendored directory."
MCP = {
    "mcpServers": {
        "docs": {"command": "docs-mcp", "args": ["--stdio"], "env": {"DOCS_TOKEN": "docs-secret-1234"}}
    }
}


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


# -- the files ------------------------------------------------------------------------------------------


def test_rules_follow_the_inline_text_and_reach_the_command_line(make_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rules = write(tmp_path / "rules.md", "\ufeff" + RULES + "\n\n")
    config = make_config(CLAUDE_APPEND_SYSTEM_PROMPT="Be brief.", APPEND_SYSTEM_PROMPT_FILE=str(rules))
    command = build_command(agent_settings(config))
    at = command.index("--append-system-prompt")
    assert command[at + 1] == f"Be brief.\n\n{RULES}"
    alone = make_config(APPEND_SYSTEM_PROMPT_FILE=str(rules))
    assert build_command(agent_settings(alone))[at + 1] == RULES


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "does not exist: create it, or unset the setting"),
        ("  \n", "is empty"),
        (b"\xff\xfe rules", "is not UTF-8 text"),
        ("x" * (operator_rules.RULES_LIMIT + 1), "is over 64 KiB"),
    ],
)
def test_a_rules_file_that_cannot_be_used_is_one_line(
    tmp_path: Path, content: str | bytes | None, says: str
) -> None:
    path = tmp_path / "rules.md"
    if content is not None:
        write(path, content)
    with pytest.raises(OperatorRulesError) as caught:
        read_rules(path)
    assert str(caught.value).startswith(f"APPEND_SYSTEM_PROMPT_FILE={path} ") and says in str(caught.value)
    assert "\n" not in str(caught.value)


def test_mcp_config_reaches_the_command_line_with_strict_and_its_secrets_are_redacted(
    make_config, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    path = write(tmp_path / "mcp.json", json.dumps(MCP, indent=2))
    command = build_command(agent_settings(make_config(MCP_CONFIG=str(path))))
    at = command.index("--mcp-config")
    assert json.loads(command[at + 1]) == MCP and "\n" not in command[at + 1]
    assert (
        command[at + 2] == "--strict-mcp-config"
    )  # only these servers, and the end of --mcp-config's values
    assert REDACTOR("the server said docs-secret-1234") == "the server said ***"
    # The setting and CLAUDE_EXTRA_ARGS cannot both name servers: one would be silently ignored.
    both = AgentSettings(mcp_config="{}", extra_args=parse_extra_args("--mcp-config other.json"))
    with pytest.raises(AgentConfigError, match="--mcp-config is given both"):
        build_command(both)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (
            "{not json",
            "is not valid JSON: Expecting property name enclosed in double quotes at line 1, column 2",
        ),
        ("[]", 'must be a JSON object with a non-empty "mcpServers" object'),
        ('{"mcpServers": {}}', 'non-empty "mcpServers"'),
        ('{"mcpServers": {"a": {"command": "x"}}, "servers": {}}', "unknown top-level key(s) servers"),
        ('{"mcpServers": {"a b": {"command": "x"}}}', "server 'a b': a name is 1-64 letters"),
        ('{"mcpServers": {"a": {"args": []}}}', "server 'a': a stdio server needs \"command\""),
        ('{"mcpServers": {"a": {"command": "x", "args": "-v"}}}', '"args" must be a list of strings'),
        ('{"mcpServers": {"a": {"type": "http"}}}', 'a http server needs "url"'),
        ('{"mcpServers": {"a": {"type": "ws", "url": "ws://x"}}}', '"type" must be one of stdio, http, sse'),
        ('{"mcpServers": {"a": {"command": "x", "env": {"K": 1}}}}', '"env" must be an object of strings'),
    ],
)
def test_a_malformed_mcp_config_names_the_problem(tmp_path: Path, text: str, says: str) -> None:
    path = write(tmp_path / "mcp.json", text)
    with pytest.raises(OperatorRulesError) as caught:
        load_mcp_config(path)
    assert str(caught.value).startswith(f"MCP_CONFIG={path}") and says in str(caught.value), str(caught.value)


# -- doctor and start -----------------------------------------------------------------------------------


def _doctor(config):  # type: ignore[no-untyped-def]
    from claude_issue_solver.cli.doctor.core import _Doctor

    return _Doctor(config, None, False)


def test_doctor_fails_a_malformed_mcp_config_with_the_fix(make_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = write(tmp_path / "mcp.json", '{"mcpServers": {"docs": {"command": "docs-mcp",}}}')
    outcome = _doctor(make_config(MCP_CONFIG=str(path))).mcp_servers()
    assert not outcome.ok and "is not valid JSON" in outcome.detail
    assert outcome.fix is not None and "unset MCP_CONFIG" in outcome.fix and '"mcpServers"' in outcome.fix


def test_doctor_says_a_remote_server_cannot_work_without_the_network(make_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    remote = {"mcpServers": {"web": {"type": "http", "url": "https://mcp.example.com/mcp"}}}
    path = write(tmp_path / "mcp.json", json.dumps(remote))
    blocked = _doctor(make_config(MCP_CONFIG=str(path))).mcp_servers()
    assert (
        not blocked.ok
        and "AGENT_EGRESS=relay-only" in blocked.detail
        and "AGENT_EGRESS=open" in str(blocked.fix)
    )
    assert _doctor(make_config(MCP_CONFIG=str(path), AGENT_EGRESS="open")).mcp_servers().ok
    fetched = {"mcpServers": {"fs": {"command": "npx", "args": ["-y", "some-mcp-server"]}}}
    write(path, json.dumps(fetched))
    noted = _doctor(make_config(MCP_CONFIG=str(path))).mcp_servers()
    assert noted.ok and "fetches packages" in noted.detail


def test_doctor_checks_the_rules_file(make_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    missing = _doctor(make_config(APPEND_SYSTEM_PROMPT_FILE=str(tmp_path / "nope.md"))).agent_rules()
    assert not missing.ok and "does not exist" in missing.detail
    rules = write(tmp_path / "rules.md", RULES)
    found = _doctor(make_config(APPEND_SYSTEM_PROMPT_FILE=str(rules))).agent_rules()
    assert found.ok and "2 line(s)" in found.detail


def test_start_refuses_a_bad_mcp_config_in_one_line(tmp_path: Path, state_dir: Path) -> None:
    path = write(tmp_path / "mcp.json", "{}")
    env = {
        "HOME": str(tmp_path),
        "STATE_DIR": str(state_dir),
        "GITHUB_REPOS": "acme/widgets",
        "GITHUB_TOKEN": "ghp_x",
        "GITHUB_API_URL": "http://127.0.0.1:9",
        "ANTHROPIC_API_KEY": "sk-ant-x",
        "DOCKER_IMAGE": "unused:latest",
        "MCP_CONFIG": str(path),
    }
    result = expect(invoke(["start", "--foreground"], env), 2)
    assert f"MCP_CONFIG={path} must be a JSON object" in result.output and "Traceback" not in result.output


# -- AGENTS.md ------------------------------------------------------------------------------------------


def _agent_input(world: World) -> list[Process]:
    seen: list[Process] = []
    write_fix = edits({"fix.txt": "fixed\n"}, SUMMARY)

    def agent(place: Place, process: Process) -> None:
        seen.append(process)
        write_fix(place, process)

    world.backend.agents["agent"] = agent
    return seen


def test_a_repository_with_agents_md_and_no_claude_md_gets_it_in_the_prompt(world: World) -> None:
    world.github.commit_files(REPO, "main", {"AGENTS.md": "# Agents\nRun `make check` before you finish.\n"})
    seen = _agent_input(world)
    task = world.task()
    outcome = world.pipeline().run(task, TaskControl())
    assert outcome is not None and outcome.state is TaskState.COMPLETED, outcome
    prompt = seen[0].spec.stdin.decode()
    assert "Run `make check` before you finish." in prompt
    begin = prompt.index("BEGIN REPOSITORY AGENTS.md ")
    assert begin > prompt.index("END UNTRUSTED ISSUE CONTENT")  # after the issue, in a block of its own
    boundary = prompt[begin:].splitlines()[0].removeprefix("BEGIN ")
    assert prompt.rstrip().endswith(f"END {boundary}")
    assert "untrusted" in prompt[prompt.index("keeps its instructions for coding agents") : begin]


@pytest.mark.parametrize("claude_md", ["CLAUDE.md", ".claude/CLAUDE.md"])
def test_a_repository_with_a_claude_md_keeps_to_it(world: World, claude_md: str) -> None:
    world.github.commit_files(REPO, "main", {"AGENTS.md": "agents text\n", claude_md: "claude text\n"})
    client = GitHubClient(world.config)
    assert agents_md(client, REPO, "main") is None


def test_agents_md_comes_from_the_default_branch_and_is_capped(world: World) -> None:
    client = GitHubClient(world.config)
    assert agents_md(client, REPO, "main") is None  # none at all: one listing, nothing more
    world.github.commit_files(REPO, "other", {"AGENTS.md": "on another branch\n"})
    assert agents_md(client, REPO, "main") is None
    world.github.commit_files(REPO, "main", {"AGENTS.md": "x" * (LIMIT + 100)})
    text = agents_md(client, REPO, "main")
    shown = with_agents_md("prompt", text, "main")
    assert "_(AGENTS.md was cut here: it was" in shown and shown.count("x") < LIMIT + 100


def test_the_rules_come_with_every_agent_run_fix_rounds_included(world: World, tmp_path: Path) -> None:
    """A fix round resumes the session with its own command line: the same rules and servers."""
    rules = write(tmp_path / "rules.md", RULES)
    mcp = write(tmp_path / "mcp.json", json.dumps(MCP))
    world.config = replace(world.config, append_system_prompt_file=rules, mcp_config=mcp)
    pipeline = world.pipeline()
    for command in (pipeline.command, list(pipeline.gate.agent_command)):
        assert command[command.index("--append-system-prompt") + 1] == RULES
        assert "--strict-mcp-config" in command
