"""Tests for the Claude Code command line and result parsing, using the output shapes from FACTS.md."""

from __future__ import annotations

import json
import os
import pathlib
import stat
import subprocess
import sys

import pytest

from claude_issue_solver.run.agent import (
    AgentConfigError,
    AgentResult,
    AgentSettings,
    build_command,
    parse_extra_args,
    parse_result,
)
from claude_issue_solver.stream_events import summarize_stream_event

SESSION = "3f1c9a52-7d44-4e1b-9a35-1d2f0c8b6e77"

SUCCESS = {
    "type": "result",
    "subtype": "success",
    "is_error": False,
    "duration_ms": 5123,
    "duration_api_ms": 4800,
    "num_turns": 3,
    "result": "Done.",
    "stop_reason": "end_turn",
    "session_id": SESSION,
    "total_cost_usd": 0.018,
    "usage": {"input_tokens": 10, "output_tokens": 20},
    "modelUsage": {},
    "permission_denials": [],
    "terminal_reason": "completed",
    "uuid": "0b6a0c1e-1111-2222-3333-444455556666",
}

AUTH_FAILURE = {
    "type": "result",
    "subtype": "success",
    "is_error": True,
    "api_error_status": 401,
    "duration_ms": 412,
    "num_turns": 1,
    "result": "Invalid API key · Fix external API key",
    "session_id": SESSION,
    "total_cost_usd": 0,
}


def _error_result(subtype: str, errors: list[str], **extra: object) -> dict[str, object]:
    # Failure subtypes carry "errors" and no "result" key at all.
    return {
        "type": "result",
        "subtype": subtype,
        "is_error": True,
        "duration_ms": 900,
        "num_turns": 2,
        "session_id": SESSION,
        "total_cost_usd": 0.25,
        "errors": errors,
        **extra,
    }


INIT = {
    "type": "system",
    "subtype": "init",
    "cwd": "/workspace",
    "session_id": SESSION,
    "tools": ["Bash", "Read", "Write"],
    "model": "claude-sonnet-4-5",
    "permissionMode": "bypassPermissions",
}
ASSISTANT_TEXT = {
    "type": "assistant",
    "message": {"role": "assistant", "content": [{"type": "text", "text": "I'll look at the code."}]},
    "session_id": SESSION,
}
ASSISTANT_WRITE = {
    "type": "assistant",
    "message": {
        "role": "assistant",
        "content": [
            {
                "type": "tool_use",
                "id": "toolu_1",
                "name": "Write",
                "input": {"file_path": "/workspace/hello.txt", "content": "hello\n" * 500},
            }
        ],
    },
    "session_id": SESSION,
}
USER_TOOL_RESULT = {
    "type": "user",
    "message": {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "File created successfully"}
        ],
    },
    "session_id": SESSION,
}


# --- build_command ---------------------------------------------------------------------------------


def test_build_command_defaults() -> None:
    assert build_command(AgentSettings()) == [
        "claude",
        "-p",
        "--output-format",
        "json",
        "--dangerously-skip-permissions",
    ]


def test_build_command_all_options_in_order() -> None:
    settings = AgentSettings(
        max_turns=30,
        model="claude-sonnet-4-5",
        append_system_prompt="Be brief.\nNever push.",
        extra_args=("--allowedTools", "Bash", "Edit", "--max-budget-usd", "2"),
    )
    assert build_command(settings, executable="/opt/claude/bin/claude") == [
        "/opt/claude/bin/claude",
        "-p",
        "--output-format",
        "json",
        "--dangerously-skip-permissions",
        "--max-turns",
        "30",
        "--model",
        "claude-sonnet-4-5",
        "--append-system-prompt",
        "Be brief.\nNever push.",
        "--allowedTools",
        "Bash",
        "Edit",
        "--max-budget-usd",
        "2",
    ]


def test_stream_json_adds_verbose_once() -> None:
    command = build_command(AgentSettings(output_format="stream-json"))
    assert command[:5] == ["claude", "-p", "--output-format", "stream-json", "--verbose"]
    again = build_command(AgentSettings(output_format="stream-json", extra_args=("--verbose",)))
    assert again.count("--verbose") == 1


@pytest.mark.parametrize(
    "extra",
    [
        ("-p",),
        ("--print",),
        ("--output-format", "text"),
        ("--output-format=text",),
        ("--input-format", "stream-json"),
        ("fix the bug",),
        ("--verbose", "fix the bug"),
        ("--max-budget-usd=3", "fix the bug"),
        ("--allowedTools", "Bash", "--", "fix the bug"),
    ],
)
def test_conflicting_extra_args_are_rejected(extra: tuple[str, ...]) -> None:
    with pytest.raises(AgentConfigError, match=r"not allowed|prompt"):
        build_command(AgentSettings(extra_args=extra))


def test_extra_args_may_not_duplicate_a_setting() -> None:
    with pytest.raises(AgentConfigError, match="--max-turns"):
        build_command(AgentSettings(max_turns=5, extra_args=("--max-turns", "9")))
    # Without the setting, the extra argument is the only one and is fine.
    assert "9" in build_command(AgentSettings(extra_args=("--max-turns", "9")))


@pytest.mark.parametrize(
    "settings",
    [
        AgentSettings(output_format="text"),
        AgentSettings(max_turns=0),
        AgentSettings(model="  "),
    ],
)
def test_invalid_settings_are_rejected(settings: AgentSettings) -> None:
    with pytest.raises(AgentConfigError):
        build_command(settings)


def test_parse_extra_args() -> None:
    assert parse_extra_args("") == ()
    assert parse_extra_args("   ") == ()
    assert parse_extra_args("--allowedTools 'Bash(git diff:*)' Edit --model \"opus\"") == (
        "--allowedTools",
        "Bash(git diff:*)",
        "Edit",
        "--model",
        "opus",
    )


def test_parse_extra_args_unbalanced_quotes() -> None:
    with pytest.raises(AgentConfigError, match="CLAUDE_EXTRA_ARGS is not valid shell syntax"):
        parse_extra_args("--allowedTools 'Bash")


def test_parse_extra_args_checks_conflicts() -> None:
    with pytest.raises(AgentConfigError, match="--output-format"):
        parse_extra_args("--output-format text")


# --- parse_result ----------------------------------------------------------------------------------


def test_success() -> None:
    result = parse_result(json.dumps(SUCCESS), exit_code=0)
    assert result.ok
    assert result.error is None
    assert result.subtype == "success"
    assert result.result == "Done."
    assert result.cost_usd == pytest.approx(0.018)
    assert result.num_turns == 3
    assert result.session_id == SESSION
    assert result.duration_ms == 5123
    assert result.api_error_status is None
    assert result.raw == SUCCESS
    assert result.to_task_fields() == {
        "result": "Done.",
        "cost_usd": pytest.approx(0.018),
        "num_turns": 3,
        "session_id": SESSION,
        "duration_ms": 5123,
    }


def test_auth_failure_with_subtype_success_is_an_error() -> None:
    result = parse_result(json.dumps(AUTH_FAILURE), exit_code=1)
    assert not result.ok
    assert result.subtype == "success"
    assert result.api_error_status == 401
    assert result.error == "Claude Code reported an API error (401): Invalid API key · Fix external API key"


def test_max_turns() -> None:
    stdout = json.dumps(_error_result("error_max_turns", ["Reached maximum number of turns (30)"]))
    result = parse_result(stdout, exit_code=1)
    assert not result.ok
    assert result.result is None
    assert result.subtype == "error_max_turns"
    assert result.error == "Claude Code stopped after reaching the maximum number of turns (30)"
    assert result.cost_usd == pytest.approx(0.25)


def test_during_execution() -> None:
    stdout = json.dumps(_error_result("error_during_execution", ["Tool crashed", "Aborted"]))
    result = parse_result(stdout, exit_code=1)
    assert not result.ok
    assert result.error == "Claude Code failed during execution: Tool crashed; Aborted"


def test_max_budget() -> None:
    stdout = json.dumps(_error_result("error_max_budget_usd", ["Reached maximum budget ($0.25)"]))
    result = parse_result(stdout, exit_code=1)
    assert not result.ok
    assert result.error is not None
    assert "spending limit" in result.error
    assert "Reached maximum budget ($0.25)" in result.error


def test_error_subtype_is_never_success_even_if_is_error_is_false() -> None:
    message = _error_result("error_max_turns", ["Reached maximum number of turns (1)"], is_error=False)
    assert not parse_result(json.dumps(message), exit_code=0).ok


def test_verbose_array_takes_last_result() -> None:
    stale = dict(SUCCESS, result="stale", num_turns=1)
    stdout = json.dumps([INIT, ASSISTANT_TEXT, stale, ASSISTANT_WRITE, USER_TOOL_RESULT, SUCCESS])
    result = parse_result(stdout, exit_code=0)
    assert result.ok
    assert result.result == "Done."
    assert result.num_turns == 3


def test_stream_json_with_noise_lines() -> None:
    lines = [
        "npm WARN something noisy",
        json.dumps(INIT),
        json.dumps({"type": "rate_limit_event", "rate_limit_info": {}}),
        json.dumps(ASSISTANT_TEXT),
        "{not json at all",
        json.dumps({"type": "stream_event", "event": {"type": "content_block_delta"}}),
        json.dumps(ASSISTANT_WRITE),
        json.dumps(USER_TOOL_RESULT),
        json.dumps({"type": "brand_new_type", "x": 1}),
        json.dumps(SUCCESS),
        "",
        "trailing noise",
    ]
    result = parse_result("\n".join(lines), exit_code=0)
    assert result.ok
    assert result.result == "Done."
    assert result.session_id == SESSION


def test_stream_json_auth_failure_is_an_error() -> None:
    stdout = "\n".join(json.dumps(m) for m in (INIT, AUTH_FAILURE))
    result = parse_result(stdout, exit_code=1)
    assert not result.ok
    assert result.api_error_status == 401


def test_stream_without_result_keeps_session_id() -> None:
    stdout = "\n".join(json.dumps(m) for m in (INIT, ASSISTANT_TEXT))
    result = parse_result(stdout, exit_code=137)
    assert not result.ok
    assert result.session_id == SESSION
    assert "exit code 137" in (result.error or "")


def test_garbage() -> None:
    result = parse_result("Segmentation fault (core dumped)\n", exit_code=139)
    assert not result.ok
    assert result.raw is None
    assert result.error == (
        "Claude Code produced no result (exit code 139); last output: Segmentation fault (core dumped)"
    )


def test_empty_stdout_with_exit_137_uses_log_tail() -> None:
    log = "\n".join(f"log line {i}" for i in range(100))
    result = parse_result("", exit_code=137, log_tail=log)
    assert not result.ok
    assert result.error is not None
    assert result.error.startswith("Claude Code produced no result (exit code 137); last output: ")
    assert "log line 99" in result.error
    assert "log line 80" in result.error
    assert "log line 79" not in result.error


def test_resume_failure_on_stderr() -> None:
    result = parse_result("", exit_code=1, log_tail="No conversation found with session ID: abc\n")
    assert not result.ok
    assert "No conversation found with session ID" in (result.error or "")


def test_empty_everything() -> None:
    result = parse_result("")
    assert not result.ok
    assert result.error == "Claude Code produced no result (exit code unknown) and no output"


def test_truncated_json() -> None:
    stdout = json.dumps(SUCCESS)[:-40]
    result = parse_result(stdout, exit_code=137)
    assert not result.ok
    assert "exit code 137" in (result.error or "")


@pytest.mark.parametrize(
    "stdout",
    [
        "null",
        "42",
        '"result"',
        "[]",
        "[1, 2, 3]",
        '{"type": "result"}',
        '{"type": "result", "is_error": "yes", "num_turns": "three", "total_cost_usd": true}',
        '{"type": "assistant"}',
        "[" * 100_000,
        "\x00\x01\x02",
    ],
)
def test_never_raises(stdout: str) -> None:
    result = parse_result(stdout, exit_code=1)
    assert isinstance(result, AgentResult)
    assert not result.ok
    assert result.error


def test_wrong_field_types_are_dropped() -> None:
    message = dict(SUCCESS, num_turns="3", total_cost_usd=True, session_id=7, duration_ms=1.5)
    result = parse_result(json.dumps(message), exit_code=0)
    assert result.ok
    assert (result.num_turns, result.cost_usd, result.session_id, result.duration_ms) == (None,) * 4


# --- summarize_stream_event ------------------------------------------------------------------------


def test_summaries() -> None:
    assert summarize_stream_event(INIT) == "session started (model claude-sonnet-4-5, cwd /workspace)"
    assert summarize_stream_event(ASSISTANT_TEXT) == "claude: I'll look at the code."
    assert summarize_stream_event(ASSISTANT_WRITE) == "tool: Write file_path=/workspace/hello.txt"
    assert summarize_stream_event(USER_TOOL_RESULT) == "tool result: ok, 25 chars"
    assert summarize_stream_event(SUCCESS) == "result: success, 3 turns, $0.02"
    assert summarize_stream_event(AUTH_FAILURE) == "result: error (API 401), 1 turn, $0.00"


def test_summary_truncates_long_text_and_inputs() -> None:
    text = {"type": "assistant", "message": {"content": [{"type": "text", "text": "x" * 1000}]}}
    line = summarize_stream_event(text)
    assert line is not None
    assert line.startswith("claude: xxx")
    assert len(line) <= len("claude: ") + 200

    bash = {
        "type": "assistant",
        "message": {
            "content": [{"type": "tool_use", "name": "Bash", "input": {"command": "echo hi\n" * 100}}]
        },
    }
    line = summarize_stream_event(bash)
    assert line is not None
    assert line.startswith("tool: Bash command=echo hi echo hi")
    assert "\n" not in line
    assert len(line) < 200


def test_summary_tool_error_result_with_list_content() -> None:
    event = {
        "type": "user",
        "message": {
            "content": [
                {"type": "tool_result", "is_error": True, "content": [{"type": "text", "text": "boom"}]},
            ]
        },
    }
    assert summarize_stream_event(event) == "tool result: error, 4 chars"


def test_summary_api_retry() -> None:
    event = {
        "type": "system",
        "subtype": "api_retry",
        "attempt": 2,
        "max_retries": 10,
        "retry_delay_ms": 1500,
        "error_status": 529,
        "error": "overloaded_error",
    }
    expected = "API retry (attempt 2/10, status 529, overloaded_error, next in 1.5s)"
    assert summarize_stream_event(event) == expected
    assert summarize_stream_event({"type": "system", "subtype": "api_retry"}) == "API retry"


@pytest.mark.parametrize(
    "event",
    [
        {"type": "rate_limit_event"},
        {"type": "stream_event", "event": {}},
        {"type": "something_new"},
        {"type": "system", "subtype": "compact_boundary"},
        {"type": "user", "message": {"content": "the prompt"}},
        {"type": "assistant", "message": {"content": [{"type": "thinking", "thinking": "hmm"}]}},
        {"type": "assistant", "message": "not a dict"},
        {},
    ],
)
def test_summary_ignores_unknown_events(event: dict[str, object]) -> None:
    assert summarize_stream_event(event) is None


# --- a fake claude executable ----------------------------------------------------------------------

FAKE_CLAUDE = """\
import json, os, sys

data = sys.stdin.buffer.read()
with open(os.environ["FAKE_CLAUDE_RECORD"], "wb") as fh:
    fh.write(data)
with open(os.environ["FAKE_CLAUDE_ARGV"], "w", encoding="utf-8") as fh:
    json.dump(sys.argv[1:], fh)
result = {
    "type": "result", "subtype": "success", "is_error": False, "num_turns": 1,
    "result": "read %d bytes" % len(data), "session_id": "fake-session", "total_cost_usd": 0.001,
    "duration_ms": 5,
}
sys.stdout.write(json.dumps(result) + "\\n")
"""


def test_fake_claude_reads_prompt_on_stdin(tmp_path: pathlib.Path) -> None:
    executable = tmp_path / "claude"
    executable.write_text(f"#!{sys.executable}\n{FAKE_CLAUDE}", encoding="utf-8")
    executable.chmod(executable.stat().st_mode | stat.S_IXUSR)
    record, argv_file = tmp_path / "stdin.bin", tmp_path / "argv.json"

    prompt = 'Fix "it"; $(rm -rf /) `whoami` \\n 修正してください 🐛\n--model evil\n-p\n'
    prompt_bytes = prompt.encode("utf-8")
    settings = AgentSettings(max_turns=3, extra_args=("--allowedTools", "Bash", "Edit"))
    command = build_command(settings, executable=str(executable))
    completed = subprocess.run(
        command,
        input=prompt_bytes,
        capture_output=True,
        env={**os.environ, "FAKE_CLAUDE_RECORD": str(record), "FAKE_CLAUDE_ARGV": str(argv_file)},
        timeout=60,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr.decode()
    assert record.read_bytes() == prompt_bytes
    argv = json.loads(argv_file.read_text(encoding="utf-8"))
    assert argv == command[1:]
    assert all(prompt not in arg and "whoami" not in arg for arg in argv)
    result = parse_result(completed.stdout.decode(), exit_code=completed.returncode)
    assert result.ok
    assert result.result == f"read {len(prompt_bytes)} bytes"
    assert result.session_id == "fake-session"


def test_max_budget_usd_becomes_the_cli_option() -> None:
    command = build_command(AgentSettings(max_budget_usd=2.5))
    assert command[command.index("--max-budget-usd") + 1] == "2.5"
    assert "--max-budget-usd" not in build_command(AgentSettings())


def test_max_budget_usd_may_not_also_be_an_extra_argument() -> None:
    with pytest.raises(AgentConfigError, match="--max-budget-usd"):
        build_command(AgentSettings(max_budget_usd=1.0, extra_args=("--max-budget-usd", "3")))
    with pytest.raises(AgentConfigError, match="max_budget_usd"):
        build_command(AgentSettings(max_budget_usd=0))
