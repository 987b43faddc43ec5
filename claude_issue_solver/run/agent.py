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

from claude_issue_solver.conventions import RESULT_LIMIT, cut_with_note, format_usd
from claude_issue_solver.stream_events import as_float, as_int, as_str

__all__ = [
    "OUTPUT_FORMATS",
    "AgentConfigError",
    "AgentError",
    "AgentResult",
    "AgentSettings",
    "build_command",
    "parse_extra_args",
    "parse_result",
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
    "--mcp-config": "mcp_config",
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
# Which tool input says most about a call, in order; Write's content would only be noise in a log.


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
    # MCP_CONFIG's JSON (operator_rules): given with --strict-mcp-config, so only these servers run.
    mcp_config: str | None = None


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
    if settings.mcp_config:
        # --mcp-config takes several values: the flag right after it ends them.
        command += ["--mcp-config", settings.mcp_config, "--strict-mcp-config"]
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
            session_id = as_str(message.get("session_id")) or session_id
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
    found = scan(messages)
    if found is None:
        # The daemon keeps only the end of a long output: a `--verbose` JSON array (one line) whose
        # start was left out no longer parses, but its last element, the result, still does.
        found = scan(_trailing_result(text))
    return found, session_id


_RESULT_START = re.compile(r'\{\s*"type"\s*:\s*"result"')


def _trailing_result(text: str) -> list[object]:
    """The last ``{"type": "result", ...}`` object in ``text`` that parses on its own, if any."""
    decoder = json.JSONDecoder()
    for match in reversed(list(_RESULT_START.finditer(text))):
        try:
            value, _end = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        return [value]
    return []


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
    result_text = _kept_result((as_str(message.get("result")) or "").strip()) or ""
    errors = cut_with_note(_joined_errors(message.get("errors")), RESULT_LIMIT, "The errors")
    api_status = as_int(message.get("api_error_status"))
    if api_status is not None:
        detail = result_text or errors or "no details"
        return f"Claude Code reported an API error ({api_status}): {detail}"
    if subtype == "error_max_turns":
        match = re.search(r"\((\d+)\)", errors)
        limit = match.group(1) if match else None
        if limit is None and (turns := as_int(message.get("num_turns"))) is not None:
            limit = str(turns)
        suffix = f" ({limit})" if limit else ""
        return f"Claude Code stopped after reaching the maximum number of turns{suffix}"
    if subtype == "error_max_budget_usd":
        cost = as_float(message.get("total_cost_usd"))
        spent = f" after spending {format_usd(cost)}" if cost is not None else ""
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


def _kept_result(text: str | None) -> str | None:
    # The answer is kept on the task (the state file) and quoted in comments: never megabytes of it.
    return None if text is None else cut_with_note(text, RESULT_LIMIT, "Claude's answer")


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

    subtype = as_str(message.get("subtype"))
    is_error = message.get("is_error")
    if isinstance(is_error, bool):
        # is_error decides: an auth failure still says subtype "success". An error subtype is never
        # success either, whatever is_error says.
        ok = not is_error and not (subtype or "").startswith("error")
    else:
        # A result without is_error: require both the subtype and a clean exit before calling it a success.
        ok = subtype == "success" and exit_code in (None, 0)
    cost = as_float(message.get("total_cost_usd"))
    if cost is None:
        cost = as_float(message.get("cost_usd"))  # older CLI versions
    return AgentResult(
        ok=ok,
        subtype=subtype,
        result=_kept_result(as_str(message.get("result"))),
        error=None if ok else _failure_message(message, subtype, exit_code),
        cost_usd=cost,
        num_turns=as_int(message.get("num_turns")),
        session_id=as_str(message.get("session_id")) or seen_session,
        duration_ms=as_int(message.get("duration_ms")),
        api_error_status=as_int(message.get("api_error_status")),
        raw=message,
    )
