"""What the operator adds to every agent run: rules appended to its system prompt and MCP servers.

- ``APPEND_SYSTEM_PROMPT_FILE``: a UTF-8 text file whose text is appended to Claude Code's system prompt
  on every run (the first run and each test-fix round), after ``CLAUDE_APPEND_SYSTEM_PROMPT`` when both
  are set. It goes to the CLI as ``--append-system-prompt TEXT``, so it reaches a container or a Daytona
  sandbox the same way, with no file to place there.
- ``MCP_CONFIG``: a JSON file of MCP servers (``{"mcpServers": {name: {...}}}``, the format of
  ``claude --mcp-config`` and of a project's ``.mcp.json``). It is given as ``--mcp-config <its JSON>
  --strict-mcp-config``: only these servers, never a ``.mcp.json`` the repository (or the agent) wrote.
  As a command-line value it is read-only for the agent: nothing in the place can change it for this run
  or the next. The servers run *inside* the place, as the agent's user, with the agent's network
  (:data:`AGENT_EGRESS`): under ``relay-only`` that is no network at all but the Claude relay, so a
  remote server (``"type": "http"``/``"sse"``) cannot be reached and a stdio server works only when it
  needs nothing from the network (installed in the agent's image, not fetched by ``npx``/``uvx``).

Both files are read when the daemon starts (a change needs a restart) and checked by ``doctor``; a
problem is one line naming the file, the place in it and the fix (:class:`OperatorRulesError`, a
:class:`ConfigError`). We put nothing of ours into either; the values of the servers' ``env`` and
``headers`` are treated as secrets (redacted from logs and from anything posted to GitHub).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from claude_issue_solver.config import Config, ConfigError

__all__ = [
    "MCP_LIMIT",
    "RULES_LIMIT",
    "McpServer",
    "OperatorAdditions",
    "OperatorRulesError",
    "load",
    "load_mcp_config",
    "reach_problems",
    "read_rules",
]

# One argv string may be 128 KiB on Linux (MAX_ARG_STRLEN); and every run pays for the prompt.
RULES_LIMIT = 64 * 1024
MCP_LIMIT = 64 * 1024
REMOTE_TYPES = ("http", "sse")
LOCAL_TYPES = ("stdio",)
# Launchers that download the server at its first start: they need the network the agent may not have.
FETCHING_LAUNCHERS = ("npx", "uvx", "pipx", "bunx", "pnpm", "yarn")
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class OperatorRulesError(ConfigError):
    """APPEND_SYSTEM_PROMPT_FILE or MCP_CONFIG cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class McpServer:
    name: str
    kind: str  # stdio | http | sse
    command: str | None = None  # stdio
    url: str | None = None  # http, sse

    def describe(self) -> str:
        return f"{self.name} ({self.kind}: {self.command or self.url})"


@dataclass(frozen=True)
class OperatorAdditions:
    system_prompt: str | None = None  # CLAUDE_APPEND_SYSTEM_PROMPT, then the file's text
    mcp_config: str | None = None  # the MCP_CONFIG file's JSON, compact
    servers: tuple[McpServer, ...] = ()
    secrets: tuple[str, ...] = ()  # the servers' env and header values: redacted everywhere


def read_rules(path: Path) -> str:
    """The rules file's text; OperatorRulesError when it is missing, unreadable, not UTF-8, empty or
    over :data:`RULES_LIMIT`."""
    where = f"APPEND_SYSTEM_PROMPT_FILE={path}"
    data = _read(path, where, RULES_LIMIT)
    try:
        text = data.decode("utf-8").lstrip("\ufeff").strip()
    except UnicodeDecodeError as exc:
        msg = f"{where} is not UTF-8 text ({exc.reason} at byte {exc.start}): save it as UTF-8"
        raise OperatorRulesError(msg) from None
    if not text:
        msg = f"{where} is empty: write the rules into it, or unset APPEND_SYSTEM_PROMPT_FILE"
        raise OperatorRulesError(msg)
    return text


def load_mcp_config(path: Path) -> tuple[str, tuple[McpServer, ...], tuple[str, ...]]:
    """The MCP_CONFIG file as compact JSON, its servers and the secret values in it; every problem is
    one OperatorRulesError line naming where in the file it is."""
    where = f"MCP_CONFIG={path}"
    data = _read(path, where, MCP_LIMIT)
    try:
        doc = json.loads(data.decode("utf-8").lstrip("\ufeff"))
    except UnicodeDecodeError as exc:
        msg = f"{where} is not UTF-8 text ({exc.reason} at byte {exc.start}): save it as UTF-8"
        raise OperatorRulesError(msg) from None
    except json.JSONDecodeError as exc:
        msg = f"{where} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        raise OperatorRulesError(msg) from None
    example = '{"mcpServers": {"docs": {"command": "docs-mcp", "args": ["--stdio"]}}}'
    if not isinstance(doc, dict) or not isinstance(doc.get("mcpServers"), dict) or not doc["mcpServers"]:
        msg = f'{where} must be a JSON object with a non-empty "mcpServers" object, e.g. {example}'
        raise OperatorRulesError(msg)
    unknown = sorted(set(doc) - {"mcpServers"})
    if unknown:
        msg = f'{where}: unknown top-level key(s) {", ".join(unknown)}: only "mcpServers" is read'
        raise OperatorRulesError(msg)
    servers: list[McpServer] = []
    secrets: list[str] = []
    for name, spec in doc["mcpServers"].items():
        servers.append(_server(where, name, spec, secrets))
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False), tuple(servers), tuple(secrets)


def _server(where: str, name: str, spec: Any, secrets: list[str]) -> McpServer:
    at = f"{where}: server {name!r}"
    if not _NAME.match(name):
        msg = f"{at}: a name is 1-64 letters, digits, '-' or '_'"
        raise OperatorRulesError(msg)
    if not isinstance(spec, dict):
        msg = f'{at} must be an object with "command" (a stdio server) or "type" and "url"'
        raise OperatorRulesError(msg)
    kind = spec.get("type", "stdio")
    if kind not in (*LOCAL_TYPES, *REMOTE_TYPES):
        msg = f'{at}: "type" must be one of {", ".join((*LOCAL_TYPES, *REMOTE_TYPES))}, not {kind!r}'
        raise OperatorRulesError(msg)
    for key in ("env", "headers"):
        values = spec.get(key)
        if values is None:
            continue
        if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
            msg = f'{at}: "{key}" must be an object of strings'
            raise OperatorRulesError(msg)
        secrets.extend(v for v in values.values() if len(v) >= 8)  # short ones ("1", "true") are not secrets
    if kind in REMOTE_TYPES:
        url = spec.get("url")
        if not isinstance(url, str) or not re.match(r"^https?://\S+$", url):
            msg = f'{at}: a {kind} server needs "url": an http:// or https:// URL'
            raise OperatorRulesError(msg)
        return McpServer(name, kind, url=url)
    command = spec.get("command")
    if not isinstance(command, str) or not command.strip():
        msg = f'{at}: a stdio server needs "command": the program to run inside the agent\'s place'
        raise OperatorRulesError(msg)
    args = spec.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        msg = f'{at}: "args" must be a list of strings'
        raise OperatorRulesError(msg)
    return McpServer(name, "stdio", command=command)


def _read(path: Path, where: str, limit: int) -> bytes:
    try:
        with path.expanduser().open("rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        msg = f"{where} does not exist: create it, or unset the setting"
        raise OperatorRulesError(msg) from None
    except IsADirectoryError:
        msg = f"{where} is a directory: name a file"
        raise OperatorRulesError(msg) from None
    except OSError as exc:
        msg = f"{where} cannot be read: {exc.strerror or exc}"
        raise OperatorRulesError(msg) from None
    if len(data) > limit:
        msg = f"{where} is over {limit // 1024} KiB: keep it shorter (every run pays for it)"
        raise OperatorRulesError(msg)
    return data


def load(config: Config) -> OperatorAdditions:
    """Everything the operator adds to the agent's runs, read now; OperatorRulesError on a bad file."""
    parts = [config.claude_append_system_prompt] if config.claude_append_system_prompt else []
    if config.append_system_prompt_file is not None:
        parts.append(read_rules(config.append_system_prompt_file))
    mcp, servers, secrets = (None, (), ())
    if config.mcp_config is not None:
        mcp, servers, secrets = load_mcp_config(config.mcp_config)
    return OperatorAdditions("\n\n".join(parts) or None, mcp, servers, secrets)


def reach_problems(servers: tuple[McpServer, ...], egress: str) -> tuple[list[str], list[str]]:
    """(what cannot work, what may not work) for these servers under ``AGENT_EGRESS=egress``."""
    if egress != "relay-only":
        return [], []
    cannot = [
        f"{s.describe()} is remote, and under AGENT_EGRESS=relay-only the agent reaches nothing but Claude"
        for s in servers
        if s.kind in REMOTE_TYPES
    ]
    may_not = [
        f"{s.describe()} starts with {Path(s.command or '').name}, which fetches packages: with no network "
        "it works only if the server is already in the agent's image"
        for s in servers
        if s.kind == "stdio"
        and Path((s.command or "").split()[0] if s.command else "").name in FETCHING_LAUNCHERS
    ]
    return cannot, may_not
