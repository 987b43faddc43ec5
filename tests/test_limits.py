"""Unit tests of :mod:`claude_issue_solver.limits`: one per signal the CLI can give, the reset texts, the
API's headers and the probe (against the loopback Messages API).

The stream-json shapes below are the ones Claude Code 2.1.197 printed against ``FakeAnthropic`` (see
``tests/test_limits_real_cli.py``, which checks them against the real CLI), trimmed to the keys read.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from claude_issue_solver.limits import (
    BudgetExhausted,
    LimitHit,
    Transient,
    classify,
    parse_reset_text,
    probe_reset,
    reset_from_headers,
    unknown_reset_backoff,
)
from tests.fakes.fake_anthropic import FakeAnthropic

# Tuesday 1 December 2026, 10:00 UTC.
NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC).timestamp()

MINUTE = 60
INIT = {"type": "system", "subtype": "init", "session_id": "s1", "model": "claude-opus-4-8"}


def _synthetic(text: str, error: str) -> dict[str, object]:
    return {
        "type": "assistant",
        "message": {"model": "<synthetic>", "role": "assistant", "content": [{"type": "text", "text": text}]},
        "error": error,
    }


def _result(**fields: object) -> dict[str, object]:
    return {"type": "result", "subtype": "success", "is_error": False, "total_cost_usd": 0.01, **fields}


def _ndjson(*events: dict[str, object]) -> str:
    return "\n".join(json.dumps(e) for e in events) + "\n"


def _at(text: str, now: float = NOW) -> datetime:
    """The start of the minute a text says its limit resets in (the parser returns the minute's end)."""
    value = parse_reset_text(text, now=now)
    assert value is not None, text
    return datetime.fromtimestamp(value - MINUTE, UTC)


# -- one test per signal ---------------------------------------------------------------------------


def test_rate_limit_event_rejected_gives_a_usage_limit_with_its_reset() -> None:
    text = "You've hit your session limit · resets 11:41am (UTC)"
    out = _ndjson(
        INIT,
        {
            "type": "rate_limit_event",
            "rate_limit_info": {"status": "rejected", "resetsAt": 1796125275, "rateLimitType": "five_hour"},
        },
        _synthetic(text, "rate_limit"),
        _result(is_error=True, api_error_status=429, result=text, total_cost_usd=0),
    )
    verdict = classify(out, exit_code=1, now=NOW)
    assert verdict == LimitHit("usage", 1796125275.0, text, "rate_limit_event")


def test_rate_limit_event_without_reset_takes_the_texts_time() -> None:
    out = _ndjson(
        {"type": "rate_limit_event", "rate_limit_info": {"status": "rejected", "rateLimitType": "seven_day"}},
        _result(
            is_error=True, api_error_status=429, result="You've hit your weekly limit · resets 3pm (UTC)"
        ),
    )
    verdict = classify(out, exit_code=1, now=NOW)
    assert isinstance(verdict, LimitHit)
    assert verdict.kind == "usage"
    assert verdict.resets_at == datetime(2026, 12, 1, 15, 1, tzinfo=UTC).timestamp()


def test_allowed_rate_limit_events_are_not_limits() -> None:
    out = _ndjson(
        {"type": "rate_limit_event", "rate_limit_info": {"status": "allowed_warning", "resetsAt": NOW + 60}},
        _result(result="Done."),
    )
    assert classify(out, exit_code=0, now=NOW) is None


def test_a_successful_run_is_never_a_limit_whatever_it_met() -> None:
    # Overage let the run go on after a rejection; and the agent may talk about usage limits itself.
    out = _ndjson(
        {"type": "rate_limit_event", "rate_limit_info": {"status": "rejected", "resetsAt": NOW + 60}},
        {
            "type": "assistant",
            "message": {
                "model": "claude-opus-4-8",
                "content": [{"type": "text", "text": "usage limit reached"}],
            },
        },
        _result(result="Fixed the 'You've hit your limit · resets 1pm' banner."),
    )
    assert classify(out, exit_code=0, now=NOW) is None


def test_api_error_status_429_with_an_api_key_is_a_rate_limit_without_a_reset() -> None:
    text = "API Error: Request rejected (429) · Number of requests has exceeded your per-minute rate limit."
    out = _ndjson(
        INIT, _synthetic(text, "rate_limit"), _result(is_error=True, api_error_status=429, result=text)
    )
    assert classify(out, exit_code=1, now=NOW) == LimitHit("rate", None, text, "api_error_status")


def test_the_json_output_format_result_alone_is_enough() -> None:
    result = _result(
        is_error=True, api_error_status=429, result="API Error: Request rejected (429) · slow down"
    )
    assert classify(json.dumps(result), exit_code=1, now=NOW) == LimitHit(
        "rate", None, "API Error: Request rejected (429) · slow down", "api_error_status"
    )
    # An already parsed result, and the --verbose JSON array, read the same.
    assert classify(result, exit_code=1, now=NOW) == classify(
        json.dumps([INIT, result]), exit_code=1, now=NOW
    )


def test_assistant_rate_limit_error_without_a_result() -> None:
    # The container was killed after the assistant line: no result, only the synthetic message.
    out = _ndjson(
        INIT, _synthetic("API Error: Request rejected (429) · try again in 30 seconds", "rate_limit")
    )
    verdict = classify(out, exit_code=137, now=NOW)
    assert verdict == LimitHit(
        "rate", NOW + 30, "API Error: Request rejected (429) · try again in 30 seconds", "assistant_error"
    )


def test_usage_limit_text_on_stdout_with_exit_1() -> None:
    # `claude -p` in text mode prints the message alone and exits 1.
    verdict = classify("You've hit your limit · resets 1pm (Europe/Lisbon)\n", exit_code=1, now=NOW)
    assert isinstance(verdict, LimitHit)
    assert (verdict.kind, verdict.source) == ("usage", "text")
    assert verdict.message == "You've hit your limit · resets 1pm (Europe/Lisbon)"
    # Lisbon is on UTC in December; the CLI drops the seconds, so the hold lasts to the minute's end.
    assert verdict.resets_at == datetime(2026, 12, 1, 13, 1, tzinfo=UTC).timestamp()


def test_usage_limit_text_on_stderr_with_exit_1() -> None:
    verdict = classify("", exit_code=1, stderr="Error: Claude AI usage limit reached|1796126400\n", now=NOW)
    assert verdict == LimitHit(
        "usage", 1796126400.0, "Error: Claude AI usage limit reached|1796126400", "text"
    )


def test_limit_text_of_a_successful_exit_without_result_still_counts() -> None:
    # Some wrappers lose the exit code (exit 0) but the CLI's own line is there and no result.
    text = "Claude usage limit reached. Your limit will reset at 9am (America/Chicago)."
    verdict = classify(text, exit_code=0, now=NOW)
    assert isinstance(verdict, LimitHit)
    # 9am in Chicago (UTC-6) is 15:00 UTC, still ahead today.
    assert verdict.resets_at == datetime(2026, 12, 1, 15, 1, tzinfo=UTC).timestamp()


def test_warnings_are_not_limits() -> None:
    for text in (
        "Approaching usage limit · resets 2am",
        "You've used 91% of your session limit · resets 1pm",
    ):
        assert classify(text, exit_code=1, now=NOW) is None, text


def test_529_is_transient_overload() -> None:
    text = (
        "API Error: 529 Overloaded. This is a server-side issue, usually temporary — try again in a moment."
    )
    out = _ndjson(
        INIT, _synthetic(text, "server_error"), _result(is_error=True, api_error_status=529, result=text)
    )
    assert classify(out, exit_code=1, now=NOW) == Transient("overloaded", 529, text)


def test_5xx_is_a_transient_server_error() -> None:
    text = "API Error: 500 Internal server error. This is a server-side issue, usually temporary."
    out = _ndjson(
        INIT, _synthetic(text, "server_error"), _result(is_error=True, api_error_status=503, result=text)
    )
    assert classify(out, exit_code=1, now=NOW) == Transient("server", 503, text)


def test_max_budget_is_budget_exhausted_with_what_was_spent() -> None:
    out = _ndjson(
        INIT,
        {"type": "result", "subtype": "error_max_budget_usd", "is_error": True, "total_cost_usd": 0.5123,
         "errors": ["Reached maximum budget ($0.5)"]},
    )  # fmt: skip
    verdict = classify(out, exit_code=1, now=NOW)
    assert verdict == BudgetExhausted(0.5123, "Claude Code stopped at its spending limit after $0.51")


def test_ordinary_failures_are_none() -> None:
    auth = _result(is_error=True, api_error_status=401, result="Invalid API key · Fix external API key")
    assert classify(json.dumps(auth), exit_code=1, now=NOW) is None
    turns = {
        "type": "result",
        "subtype": "error_max_turns",
        "is_error": True,
        "errors": ["Reached max turns (1)"],
    }
    assert classify(json.dumps(turns), exit_code=1, now=NOW) is None
    assert classify("No conversation found with session ID: x", exit_code=1, now=NOW) is None
    assert classify("", exit_code=None, now=NOW) is None
    assert classify(None, exit_code=1, stderr="Segmentation fault", now=NOW) is None
    assert classify("{truncated", exit_code=1, now=NOW) is None


# -- reset texts -------------------------------------------------------------------------------------


def test_a_time_without_a_date_is_the_next_such_time() -> None:
    assert _at("resets 1pm (UTC)") == datetime(2026, 12, 1, 13, 0, tzinfo=UTC)
    # 9am has passed today: tomorrow's.
    assert _at("resets 9am (UTC)") == datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
    # "10am" read during 10:00 is this minute (its seconds were dropped), not tomorrow's 10am.
    assert _at("resets 10am (UTC)") == datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    assert _at("resets 10am (UTC)", now=NOW + 59) == datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    assert _at("resets 10am (UTC)", now=NOW + 60) == datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
    assert _at("resets 12:50am (America/Los_Angeles)") == datetime(2026, 12, 2, 8, 50, tzinfo=UTC)
    assert _at("resets 12pm (Europe/Paris)") == datetime(2026, 12, 1, 11, 0, tzinfo=UTC)
    assert _at("Limits will reset at 9:30 PM.") == datetime(2026, 12, 1, 21, 30, tzinfo=UTC)


def test_a_dated_reset_and_the_year_turn() -> None:
    assert _at("resets Jan 30, 11:30am (Asia/Calcutta)") == datetime(2027, 1, 30, 6, 0, tzinfo=UTC)
    assert _at("resets Dec 3, 8pm (UTC)") == datetime(2026, 12, 3, 20, 0, tzinfo=UTC)
    assert _at("resets Feb 2, 2027, 1pm (UTC)") == datetime(2027, 2, 2, 13, 0, tzinfo=UTC)


def test_relative_and_epoch_resets() -> None:
    assert parse_reset_text("resets in 2h 5m", now=NOW) == NOW + 2 * 3600 + 300
    assert parse_reset_text("Claude AI usage limit reached|1760000400", now=NOW) == 1760000400.0


def test_reset_texts_that_say_no_time() -> None:
    assert parse_reset_text("You've hit your limit", now=NOW) is None
    assert parse_reset_text("resets 1pm (Mars/Olympus_Mons)", now=NOW) is None
    assert parse_reset_text("resets 25pm (UTC)", now=NOW) is None


def test_a_zoneless_time_uses_the_given_zone() -> None:
    value = parse_reset_text("resets 1pm", now=NOW, default_tz=ZoneInfo("America/New_York"))
    assert value == datetime(2026, 12, 1, 18, 1, tzinfo=UTC).timestamp()


# -- headers, the probe, the back-off ----------------------------------------------------------------


def test_retry_after_wins_over_the_bucket_resets() -> None:
    headers = {"Retry-After": "120", "anthropic-ratelimit-requests-reset": "2026-12-01T11:00:00Z"}
    assert reset_from_headers(headers, now=NOW) == NOW + 120
    assert reset_from_headers({"retry-after": "Tue, 01 Dec 2026 10:05:00 GMT"}, now=NOW) == NOW + 300


def test_the_empty_bucket_says_when() -> None:
    headers = {
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": "2026-12-01T10:01:00Z",
        "anthropic-ratelimit-tokens-remaining": "39000",
        "anthropic-ratelimit-tokens-reset": "2026-12-01T10:00:30Z",
        "anthropic-ratelimit-output-tokens-remaining": "0",
        "anthropic-ratelimit-output-tokens-reset": "2026-12-01T10:00:45+00:00",
    }
    assert reset_from_headers(headers, now=NOW) == NOW + 60
    del (
        headers["anthropic-ratelimit-requests-remaining"],
        headers["anthropic-ratelimit-output-tokens-remaining"],
    )
    assert reset_from_headers(headers, now=NOW) == NOW + 60  # none empty: the latest
    unified = {
        "anthropic-ratelimit-unified-status": "rejected",
        "anthropic-ratelimit-unified-reset": "1796126400",
    }
    assert reset_from_headers(unified, now=NOW) == 1796126400.0
    assert reset_from_headers({"content-type": "application/json"}, now=NOW) is None


def test_probe_reads_the_reset_from_a_refused_request_and_sees_the_limit_lift() -> None:
    with FakeAnthropic(api_key="sk-test") as api:
        api.limits.rate_limit(retry_after=90)
        probe = probe_reset(api.url, "sk-test", now=NOW)
        assert probe.limited and not probe.transient
        assert probe.resets_at == NOW + 90

        api.limits.rate_limit(retry_after=None, resets_at=NOW + 600)
        assert probe_reset(api.url, "sk-test", now=NOW).resets_at == NOW + 600

        api.limits.overloaded()
        probe = probe_reset(api.url, "sk-test", now=NOW)
        assert probe.transient and probe.resets_at is None

        api.limits.clear()
        probe = probe_reset(api.url, "sk-test", now=NOW, model="claude-sonnet-4-5")
        assert (probe.status, probe.limited, probe.resets_at) == (200, False, None)

        calls = api.model_calls
        assert [c.kind for c in calls] == ["limited", "limited", "limited", "auxiliary"]
        assert all(c.body["max_tokens"] == 1 for c in calls)
        assert calls[-1].body["model"] == "claude-sonnet-4-5"
        assert calls[0].headers["x-api-key"] == "sk-test"
        assert calls[0].headers["anthropic-version"] == "2023-06-01"


def test_probe_with_a_bearer_token() -> None:
    with FakeAnthropic(api_key="tok-test") as api:
        assert probe_reset(api.url, "tok-test", now=NOW, bearer=True).status == 200
        assert api.model_calls[0].headers["authorization"] == "Bearer tok-test"
        assert probe_reset(api.url, "wrong", now=NOW).status == 401


@pytest.mark.parametrize(
    ("failures", "transient", "seconds"),
    [(1, False, 300), (2, False, 600), (3, False, 1200), (4, False, 2400), (5, False, 3600), (9, False, 3600),
     (1, True, 60), (2, True, 120), (5, True, 900), (0, False, 300)],
)  # fmt: skip
def test_backoff_grows_from_a_few_minutes_and_is_capped(
    failures: int, transient: bool, seconds: float
) -> None:
    assert unknown_reset_backoff(failures, transient=transient) == seconds
