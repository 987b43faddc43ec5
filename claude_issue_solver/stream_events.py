"""The agent's stream-json events as readable task-log lines, and the figures they carry (turns).

A leaf module: the task log (:mod:`claude_issue_solver.logs`) reads the agent's output through it, and
nothing here knows the log, the agent's command line or the pipeline.
"""

from __future__ import annotations

import json
from typing import Any

from claude_issue_solver.conventions import format_usd

__all__ = ["StreamProgress", "as_float", "as_int", "as_str", "summarize_stream_event"]

_EVENT_TEXT_CHARS = 200
_TOOL_INPUT_CHARS = 120
_TOOL_INPUT_KEYS = (
    "file_path",
    "notebook_path",
    "command",
    "pattern",
    "path",
    "url",
    "query",
    "description",
    "prompt",
)


# JSON values as the CLI's output holds them, read leniently: a wrong type is None, never an error.


def as_int(value: object) -> int | None:
    # bool is an int subclass; a stray true/false must not read as 1/0.
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def as_float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def as_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _shorten(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _tool_use_line(block: dict[str, Any]) -> str:
    name = as_str(block.get("name")) or "?"
    tool_input = block.get("input")
    if not isinstance(tool_input, dict) or not tool_input:
        return f"tool: {name}"
    key = next((k for k in _TOOL_INPUT_KEYS if k in tool_input), next(iter(tool_input)))
    value = tool_input[key]
    shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return f"tool: {name} {key}={_shorten(shown, _TOOL_INPUT_CHARS)}"


def _tool_result_line(block: dict[str, Any]) -> str:
    content = block.get("content")
    if isinstance(content, str):
        size = len(content)
    elif isinstance(content, list):
        size = sum(
            len(item.get("text", "")) for item in content if isinstance(item, dict) and item.get("text")
        )
    else:
        size = 0
    status = "error" if block.get("is_error") else "ok"
    return f"tool result: {status}, {size} chars"


def _content_blocks(event: dict[str, Any]) -> list[dict[str, Any]]:
    message = event.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, list):
        return []
    return [block for block in content if isinstance(block, dict)]


def _summarize_system(event: dict[str, Any]) -> str | None:
    subtype = event.get("subtype")
    if subtype == "init":
        model = as_str(event.get("model")) or "unknown"
        cwd = as_str(event.get("cwd")) or "unknown"
        servers = event.get("mcp_servers")
        mcp = ""
        if isinstance(servers, list) and servers:  # MCP_CONFIG's servers: whether each one came up
            shown = [
                f"{as_str(s.get('name')) or '?'} ({as_str(s.get('status')) or '?'})"
                for s in servers[:10]
                if isinstance(s, dict)
            ]
            mcp = f"; MCP servers: {', '.join(shown)}"
        return f"session started (model {model}, cwd {cwd}){mcp}"
    if subtype == "api_retry":
        parts = []
        attempt, max_retries = as_int(event.get("attempt")), as_int(event.get("max_retries"))
        if attempt is not None:
            parts.append(f"attempt {attempt}" + (f"/{max_retries}" if max_retries is not None else ""))
        if (status := as_int(event.get("error_status"))) is not None:
            parts.append(f"status {status}")
        if error := as_str(event.get("error")):
            parts.append(_shorten(error, _EVENT_TEXT_CHARS))
        if (delay := as_int(event.get("retry_delay_ms"))) is not None:
            parts.append(f"next in {delay / 1000:.1f}s")
        return "API retry" + (f" ({', '.join(parts)})" if parts else "")
    return None


def _summarize_result(event: dict[str, Any]) -> str:
    subtype = as_str(event.get("subtype")) or "unknown"
    status = "error" if event.get("is_error") is True and subtype == "success" else subtype
    if (api_status := as_int(event.get("api_error_status"))) is not None:
        status += f" (API {api_status})"
    parts = [status]
    if (turns := as_int(event.get("num_turns"))) is not None:
        parts.append(f"{turns} turn" + ("" if turns == 1 else "s"))
    if (cost := as_float(event.get("total_cost_usd"))) is not None:
        parts.append(format_usd(cost))
    return "result: " + ", ".join(parts)


def summarize_stream_event(event: dict[str, Any]) -> str | None:
    """One short log line for a stream-json event, or None for events not worth a line."""
    if not isinstance(event, dict):
        return None
    kind = event.get("type")
    if kind == "system":
        return _summarize_system(event)
    if kind == "result":
        return _summarize_result(event)
    if kind == "assistant":
        lines = []
        for block in _content_blocks(event):
            if block.get("type") == "text" and (text := as_str(block.get("text"))) and text.strip():
                lines.append(f"claude: {_shorten(text, _EVENT_TEXT_CHARS)}")
            elif block.get("type") == "tool_use":
                lines.append(_tool_use_line(block))
        return " | ".join(lines) or None
    if kind == "user":
        lines = [_tool_result_line(b) for b in _content_blocks(event) if b.get("type") == "tool_result"]
        return " | ".join(lines) or None
    return None


class StreamProgress:
    """Reads the agent's output as it comes and turns stream-json events into readable log lines.

    It also keeps the figures a progress report needs (turns so far), so the daemon can tell how far
    along a run is without parsing the log again. Lines that are not JSON events (stderr, the plain
    ``json`` output format) pass through unchanged.
    """

    def __init__(self) -> None:
        self._messages: set[str] = set()
        self._anonymous = 0
        self.result: dict[str, Any] | None = None

    @property
    def turns(self) -> int:
        return len(self._messages) + self._anonymous

    def feed_line(self, line: str) -> str | None:
        """The log line for one line of output (None: nothing worth a line)."""
        stripped = line.strip()
        if not stripped.startswith("{"):
            return line.rstrip("\n") if stripped else None
        try:
            event = json.loads(stripped)
        except ValueError:
            return line.rstrip("\n")
        if not isinstance(event, dict) or "type" not in event:
            return line.rstrip("\n")
        if event["type"] == "assistant":
            # The CLI prints each content block of one model message as its own line: count messages.
            message_id = (event.get("message") or {}).get("id")
            if isinstance(message_id, str):
                self._messages.add(message_id)
            else:
                self._anonymous += 1
        elif event["type"] == "result":
            self.result = event
            if isinstance(event.get("num_turns"), int):
                self._messages = {str(n) for n in range(event["num_turns"])}
                self._anonymous = 0
        return summarize_stream_event(event)
