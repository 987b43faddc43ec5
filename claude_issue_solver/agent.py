"""The Claude Code CLI command line, and parsing what it prints.

The command never carries the prompt: ``-p`` without a prompt argument reads it from stdin, and options
such as ``--allowedTools`` take several values and would swallow a trailing prompt. Feeding stdin also
keeps issue text out of any argv or shell string.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "OUTPUT_FORMATS",
    "AgentConfigError",
    "AgentError",
    "AgentResult",
    "AgentSettings",
    "build_command",
    "parse_extra_args",
    "parse_result",
    "summarize_stream_event",
]

OUTPUT_FORMATS = ("json", "stream-json")

# Options we always set ourselves; a second copy in CLAUDE_EXTRA_ARGS would change how the run is fed or
# how its output is read.
_RESERVED_OPTIONS = {
    "-p": "the daemon always runs Claude Code headless with -p",
    "--print": "the daemon always runs Claude Code headless with -p",
    "--output-format": "set the output format through the agent settings instead",
    "--input-format": "the prompt is sent on stdin as plain text",
}
# Options that have their own setting: giving both would leave one silently ignored.
_SETTING_OPTIONS = {
    "--max-turns": "max_turns",
    "--model": "model",
    "--append-system-prompt": "append_system_prompt",
    "--max-budget-usd": "max_budget_usd",
}
# Flags that take no value, so a bare word right after one of them is a positional argument (a prompt).
_BOOLEAN_FLAGS = frozenset(
    {
        "--verbose",
        "--dangerously-skip-permissions",
        "--allow-dangerously-skip-permissions",
        "-c",
        "--continue",
        "--fork-session",
        "--strict-mcp-config",
        "--include-partial-messages",
        "--replay-user-messages",
        "--ide",
        "--disable-slash-commands",
    }
)

_TAIL_LINES = 20
_TAIL_CHARS = 4000
_EVENT_TEXT_CHARS = 200
_TOOL_INPUT_CHARS = 120
# Which tool input says most about a call, in order; Write's content would only be noise in a log.
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


class AgentError(Exception):
    """Base class for errors raised by this module."""


class AgentConfigError(AgentError, ValueError):
    """The agent settings or CLAUDE_EXTRA_ARGS cannot make a valid command line."""


@dataclass(frozen=True)
class AgentSettings:
    max_turns: int | None = None
    model: str | None = None
    append_system_prompt: str | None = None
    max_budget_usd: float | None = None  # CLAUDE_MAX_BUDGET_USD: the CLI stops the run at this spend
    extra_args: tuple[str, ...] = ()
    output_format: str = "json"


def _option_name(token: str) -> str:
    # "--output-format=json" is the same option as "--output-format json".
    return token.split("=", 1)[0] if token.startswith("--") else token


def _check_extra_args(extra_args: Iterable[str]) -> tuple[str, ...]:
    args = tuple(extra_args)
    # A bare word is a value when it follows an option that takes values (several, for --allowedTools),
    # and a positional prompt at the start, after a flag, or after "--opt=value".
    bare_word_is_prompt = True
    for token in args:
        if not isinstance(token, str):
            msg = f"extra Claude Code argument {token!r} is not a string"
            raise AgentConfigError(msg)
        name = _option_name(token)
        if name in _RESERVED_OPTIONS:
            msg = f"extra Claude Code argument {token!r} is not allowed: {_RESERVED_OPTIONS[name]}"
            raise AgentConfigError(msg)
        if token == "--":
            msg = (
                "extra Claude Code arguments must not contain '--': whatever follows it is a prompt, "
                "and the prompt is always sent on stdin"
            )
            raise AgentConfigError(msg)
        if not token.startswith("-") and bare_word_is_prompt:
            msg = (
                f"extra Claude Code argument {token!r} looks like a prompt (a bare word not after an "
                "option that takes a value); the prompt is always sent on stdin"
            )
            raise AgentConfigError(msg)
        if token.startswith("-"):
            bare_word_is_prompt = "=" in token or token in _BOOLEAN_FLAGS
    return args


def parse_extra_args(text: str | None) -> tuple[str, ...]:
    """Split the CLAUDE_EXTRA_ARGS config value the way a POSIX shell would, and check it."""
    if text is None or not text.strip():
        return ()
    try:
        args = shlex.split(text)
    except ValueError as exc:
        msg = f"CLAUDE_EXTRA_ARGS is not valid shell syntax ({exc}): {text!r}"
        raise AgentConfigError(msg) from exc
    return _check_extra_args(args)


def build_command(settings: AgentSettings, executable: str = "claude") -> list[str]:
    """The argv for one headless run. The prompt goes on stdin, never here."""
    if settings.output_format not in OUTPUT_FORMATS:
        msg = f"unknown Claude Code output format {settings.output_format!r}; use one of {OUTPUT_FORMATS}"
        raise AgentConfigError(msg)
    extra = _check_extra_args(settings.extra_args)
    extra_names = {_option_name(token) for token in extra}
    for option, field_name in _SETTING_OPTIONS.items():
        if option in extra_names and getattr(settings, field_name) is not None:
            msg = f"{option} is given both as the {field_name} setting and in the extra Claude Code arguments"
            raise AgentConfigError(msg)

    command = [executable, "-p", "--output-format", settings.output_format]
    # stream-json refuses to run without --verbose.
    if settings.output_format == "stream-json" and "--verbose" not in extra_names:
        command.append("--verbose")
    command.append("--dangerously-skip-permissions")
    if settings.max_turns is not None:
        if isinstance(settings.max_turns, bool) or not isinstance(settings.max_turns, int):
            msg = f"max_turns must be an integer, not {settings.max_turns!r}"
            raise AgentConfigError(msg)
        if settings.max_turns < 1:
            msg = f"max_turns must be at least 1, not {settings.max_turns}"
            raise AgentConfigError(msg)
        command += ["--max-turns", str(settings.max_turns)]
    if settings.model is not None:
        if not settings.model.strip():
            msg = "model must not be empty; leave it unset to use Claude Code's default"
            raise AgentConfigError(msg)
        command += ["--model", settings.model]
    if settings.append_system_prompt:
        command += ["--append-system-prompt", settings.append_system_prompt]
    if settings.max_budget_usd is not None:
        budget = settings.max_budget_usd
        if isinstance(budget, bool) or not isinstance(budget, int | float) or not budget > 0:
            msg = f"max_budget_usd must be a positive amount of US dollars, not {budget!r}"
            raise AgentConfigError(msg)
        command += ["--max-budget-usd", f"{budget:g}"]
    command += extra
    return command


@dataclass
class AgentResult:
    ok: bool
    subtype: str | None
    result: str | None
    error: str | None
    cost_usd: float | None
    num_turns: int | None
    session_id: str | None
    duration_ms: int | None
    api_error_status: int | None
    raw: dict[str, Any] | None

    def to_task_fields(self) -> dict[str, Any]:
        """The part of a result a task record keeps."""
        return {
            "result": self.result,
            "cost_usd": self.cost_usd,
            "num_turns": self.num_turns,
            "session_id": self.session_id,
            "duration_ms": self.duration_ms,
        }


def _as_int(value: object) -> int | None:
    # bool is an int subclass; a stray true/false must not read as 1/0.
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _as_float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _as_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _is_result(value: object) -> bool:
    return isinstance(value, dict) and value.get("type") == "result"


def _find_result(stdout: str) -> tuple[dict[str, Any] | None, str | None]:
    """The last result message in any of the three output shapes, and a session id seen on the way."""
    session_id: str | None = None

    def scan(messages: Iterable[object]) -> dict[str, Any] | None:
        nonlocal session_id
        found: dict[str, Any] | None = None
        for message in messages:
            if not isinstance(message, dict):
                continue
            session_id = _as_str(message.get("session_id")) or session_id
            if _is_result(message):
                found = message
        return found

    text = stdout.strip()
    if not text:
        return None, None
    try:
        whole = json.loads(text)
    except ValueError:
        whole = None
    else:
        if isinstance(whole, dict):
            return scan([whole]), session_id
        if isinstance(whole, list):
            return scan(whole), session_id

    # NDJSON from stream-json, or one object surrounded by noise lines; a truncated line just fails to parse.
    messages: list[object] = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith(("{", "[")):
            continue
        try:
            parsed = json.loads(line)
        except ValueError:
            continue
        if isinstance(parsed, list):
            messages.extend(parsed)
        else:
            messages.append(parsed)
    return scan(messages), session_id


def _tail(text: str) -> str:
    lines = [line.rstrip() for line in text.strip().splitlines()]
    tail = "\n".join(lines[-_TAIL_LINES:])
    if len(tail) > _TAIL_CHARS:
        tail = "…" + tail[-_TAIL_CHARS:]
    return tail


def _no_result_error(stdout: str, exit_code: int | None, log_tail: str) -> str:
    code = "unknown" if exit_code is None else str(exit_code)
    tail = _tail(log_tail) or _tail(stdout)
    if not tail:
        return f"Claude Code produced no result (exit code {code}) and no output"
    return f"Claude Code produced no result (exit code {code}); last output: {tail}"


def _joined_errors(errors: object) -> str:
    if isinstance(errors, list):
        parts = [str(item).strip() for item in errors if str(item).strip()]
        return "; ".join(parts)
    if isinstance(errors, str):
        return errors.strip()
    return ""


def _failure_message(message: dict[str, Any], subtype: str | None, exit_code: int | None) -> str:
    result_text = (_as_str(message.get("result")) or "").strip()
    errors = _joined_errors(message.get("errors"))
    api_status = _as_int(message.get("api_error_status"))
    if api_status is not None:
        detail = result_text or errors or "no details"
        return f"Claude Code reported an API error ({api_status}): {detail}"
    if subtype == "error_max_turns":
        match = re.search(r"\((\d+)\)", errors)
        limit = match.group(1) if match else None
        if limit is None and (turns := _as_int(message.get("num_turns"))) is not None:
            limit = str(turns)
        suffix = f" ({limit})" if limit else ""
        return f"Claude Code stopped after reaching the maximum number of turns{suffix}"
    if subtype == "error_max_budget_usd":
        cost = _as_float(message.get("total_cost_usd"))
        spent = f" after spending ${cost:.2f}" if cost is not None else ""
        detail = f": {errors}" if errors else ""
        return f"Claude Code stopped after reaching its spending limit{spent}{detail}"
    if subtype == "error_during_execution":
        return f"Claude Code failed during execution: {errors or result_text or 'no details'}"
    detail = result_text or errors
    if subtype and subtype != "success":
        return f"Claude Code failed ({subtype}): {detail or 'no details'}"
    if detail:
        return f"Claude Code reported an error: {detail}"
    code = "" if exit_code is None else f" (exit code {exit_code})"
    return f"Claude Code reported an error without details{code}"


def parse_result(stdout: str, *, exit_code: int | None = None, log_tail: str = "") -> AgentResult:
    """Read what ``claude -p`` printed. Never raises: anything unreadable becomes ``ok=False``."""
    # Callers hand over whatever a container produced; a None here must not turn into a traceback.
    stdout = stdout if isinstance(stdout, str) else ""
    log_tail = log_tail if isinstance(log_tail, str) else ""
    try:
        message, seen_session = _find_result(stdout)
    except RecursionError:  # pathologically nested JSON
        message, seen_session = None, None
    if message is None:
        return AgentResult(
            ok=False,
            subtype=None,
            result=None,
            error=_no_result_error(stdout, exit_code, log_tail),
            cost_usd=None,
            num_turns=None,
            session_id=seen_session,
            duration_ms=None,
            api_error_status=None,
            raw=None,
        )

    subtype = _as_str(message.get("subtype"))
    is_error = message.get("is_error")
    if isinstance(is_error, bool):
        # is_error decides: an auth failure still says subtype "success". An error subtype is never
        # success either, whatever is_error says.
        ok = not is_error and not (subtype or "").startswith("error")
    else:
        # A result without is_error: require both the subtype and a clean exit before calling it a success.
        ok = subtype == "success" and exit_code in (None, 0)
    cost = _as_float(message.get("total_cost_usd"))
    if cost is None:
        cost = _as_float(message.get("cost_usd"))  # older CLI versions
    return AgentResult(
        ok=ok,
        subtype=subtype,
        result=_as_str(message.get("result")),
        error=None if ok else _failure_message(message, subtype, exit_code),
        cost_usd=cost,
        num_turns=_as_int(message.get("num_turns")),
        session_id=_as_str(message.get("session_id")) or seen_session,
        duration_ms=_as_int(message.get("duration_ms")),
        api_error_status=_as_int(message.get("api_error_status")),
        raw=message,
    )


def _shorten(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _format_cost(cost: float) -> str:
    return f"${cost:.2f}" if cost >= 1 else f"${cost:.3g}"


def _tool_use_line(block: dict[str, Any]) -> str:
    name = _as_str(block.get("name")) or "?"
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
        model = _as_str(event.get("model")) or "unknown"
        cwd = _as_str(event.get("cwd")) or "unknown"
        return f"session started (model {model}, cwd {cwd})"
    if subtype == "api_retry":
        parts = []
        attempt, max_retries = _as_int(event.get("attempt")), _as_int(event.get("max_retries"))
        if attempt is not None:
            parts.append(f"attempt {attempt}" + (f"/{max_retries}" if max_retries is not None else ""))
        if (status := _as_int(event.get("error_status"))) is not None:
            parts.append(f"status {status}")
        if error := _as_str(event.get("error")):
            parts.append(_shorten(error, _EVENT_TEXT_CHARS))
        if (delay := _as_int(event.get("retry_delay_ms"))) is not None:
            parts.append(f"next in {delay / 1000:.1f}s")
        return "API retry" + (f" ({', '.join(parts)})" if parts else "")
    return None


def _summarize_result(event: dict[str, Any]) -> str:
    subtype = _as_str(event.get("subtype")) or "unknown"
    status = "error" if event.get("is_error") is True and subtype == "success" else subtype
    if (api_status := _as_int(event.get("api_error_status"))) is not None:
        status += f" (API {api_status})"
    parts = [status]
    if (turns := _as_int(event.get("num_turns"))) is not None:
        parts.append(f"{turns} turn" + ("" if turns == 1 else "s"))
    if (cost := _as_float(event.get("total_cost_usd"))) is not None:
        parts.append(_format_cost(cost))
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
            if block.get("type") == "text" and (text := _as_str(block.get("text"))) and text.strip():
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
