"""Recognise Claude usage limits, rate limits, overload and budget stops in what a CLI run left behind.

:func:`classify` reads one finished run of ``claude -p`` (its stdout in any output format, its exit code
and stderr) and says whether it ended on something that is a *wait*, not a failure:

- :class:`LimitHit` — Claude's usage limit (a subscription window) or the API's rate limit: the task goes
  back to the queue and the queue holds until ``resets_at`` (``None``: the run did not say; ask the API
  with :func:`probe_reset` or back off with :func:`unknown_reset_backoff`);
- :class:`Transient` — ``529 overloaded`` or another 5xx: retry later with back-off;
- :class:`BudgetExhausted` — the run stopped at ``--max-budget-usd`` (``error_max_budget_usd``): a failure of
  its own kind, reported with what was spent;
- ``None`` — none of these (a success, or an ordinary failure for the pipeline to handle).

What Claude Code 2.1.197 really prints (see ``tests/test_limits_real_cli.py``): with an API key a 429 gives
exit 1, an ``assistant`` line with ``"error": "rate_limit"`` (model ``<synthetic>``, text ``API Error:
Request rejected (429) · …``) and a result with ``is_error: true`` and ``api_error_status: 429`` — and no
reset time anywhere. Only claude.ai subscribers get a ``rate_limit_event`` (``rate_limit_info.status``
``"rejected"``, ``resetsAt`` in epoch seconds) and texts such as ``You've hit your session limit · resets
1pm (Europe/Paris)``. Texts are read only where the CLI speaks for itself (an error result, a synthetic or
errored assistant message, stderr, non-JSON stdout of a failed run), never in the agent's own words: an
issue *about* usage limits must not look like one.

Everything about time takes ``now`` (epoch seconds) so that callers inject their clock.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Literal

from claude_issue_solver.conventions import format_usd
from claude_issue_solver.stream_events import as_int

__all__ = [
    "DEFAULT_PROBE_MODEL",
    "BudgetExhausted",
    "LimitHit",
    "Probe",
    "Transient",
    "Verdict",
    "classify",
    "parse_reset_text",
    "probe_reset",
    "reset_from_headers",
    "unknown_reset_backoff",
]

# A growing back-off when nothing says when a limit resets: 5, 10, 20, 40 minutes, then hourly.
BACKOFF_FIRST_S = 300.0
BACKOFF_MAX_S = 3600.0
# Transient API trouble (529/5xx) is retried sooner: 1, 2, 4, 8 minutes, at most 15.
TRANSIENT_FIRST_S = 60.0
TRANSIENT_MAX_S = 900.0
DEFAULT_PROBE_MODEL = "claude-haiku-4-5"
_MINUTE = 60.0


@dataclass(frozen=True)
class LimitHit:
    """Claude refused the run because of a usage limit (``usage``) or the API's rate limit (``rate``)."""

    kind: Literal["usage", "rate"]
    resets_at: float | None
    message: str
    source: str  # the signal that said so: rate_limit_event | api_error_status | assistant_error | text


@dataclass(frozen=True)
class Transient:
    """The API was overloaded (529) or failed (5xx): not the task's fault, worth a retry after a pause."""

    kind: Literal["overloaded", "server"]
    status: int | None
    message: str


@dataclass(frozen=True)
class BudgetExhausted:
    """The run stopped at its ``--max-budget-usd`` cap."""

    spent: float | None
    message: str


Verdict = LimitHit | Transient | BudgetExhausted | None


# -- reading the run ---------------------------------------------------------------------------------


def _events(stdout: str | Iterable[str] | Mapping[str, Any] | None) -> tuple[list[dict[str, Any]], list[str]]:
    """The JSON objects of any output format, and the lines that were not JSON."""
    if stdout is None:
        return [], []
    if isinstance(stdout, Mapping):
        return [dict(stdout)], []
    lines = stdout.splitlines() if isinstance(stdout, str) else [str(line) for line in stdout]
    text = "\n".join(lines).strip()
    if text.startswith(("{", "[")):
        try:
            whole = json.loads(text)
        except ValueError:
            pass
        else:
            items = whole if isinstance(whole, list) else [whole]
            return [item for item in items if isinstance(item, dict)], []
    events: list[dict[str, Any]] = []
    plain: list[str] = []
    for line in lines:
        stripped = line.strip()
        if not stripped:
            continue
        try:
            parsed = json.loads(stripped) if stripped.startswith(("{", "[")) else None
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            events.append(parsed)
        elif isinstance(parsed, list):
            events.extend(item for item in parsed if isinstance(item, dict))
        else:
            plain.append(stripped)
    return events, plain


def _int(value: object) -> int | None:
    """As the CLI's other integers, and a header's digits too (``retry-after: 120``)."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return as_int(value)


def _float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _texts_of(message: object) -> list[str]:
    if not isinstance(message, dict):
        return []
    content = message.get("content")
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        return []
    return [b["text"] for b in content if isinstance(b, dict) and isinstance(b.get("text"), str)]


def _result_texts(result: dict[str, Any]) -> list[str]:
    texts = [result["result"]] if isinstance(result.get("result"), str) else []
    errors = result.get("errors")
    if isinstance(errors, list):
        texts.extend(str(e) for e in errors)
    elif isinstance(errors, str):
        texts.append(errors)
    return texts


def classify(
    stdout: str | Iterable[str] | Mapping[str, Any] | None,
    *,
    exit_code: int | None,
    stderr: str = "",
    now: float,
    default_tz: tzinfo = UTC,
) -> Verdict:
    """What the run's end means for the queue (see the module docstring). Never raises."""
    events, plain = _events(stdout)
    results = [e for e in events if e.get("type") == "result"]
    result = results[-1] if results else None
    failed = (result is not None and (result.get("is_error") is True or _is_error_subtype(result))) or (
        exit_code not in (None, 0)
    )
    if result is not None and not failed:
        return None  # the run finished: whatever it met on the way, it got past it

    if result is not None and result.get("subtype") == "error_max_budget_usd":
        spent = _float(result.get("total_cost_usd"))
        shown = f"{format_usd(spent)}" if spent is not None else "an unknown amount"
        return BudgetExhausted(spent, f"Claude Code stopped at its spending limit after {shown}")

    # Claude's own words about the failure: never the agent's text of a normal turn.
    voiced: list[str] = []
    assistant_error: str | None = None
    for event in events:
        if event.get("type") != "assistant":
            continue
        message = event.get("message") if isinstance(event.get("message"), dict) else {}
        error = event.get("error")
        if isinstance(error, str) or message.get("model") == "<synthetic>":
            voiced.extend(_texts_of(message))
            if isinstance(error, str):
                assistant_error = error
    if result is not None:
        voiced.extend(_result_texts(result))
    voiced.extend(plain)
    if stderr:
        voiced.extend(line.strip() for line in stderr.splitlines() if line.strip())

    rejected = _rejected_event(events)
    text_hit = _usage_text(voiced, now=now, default_tz=default_tz)
    status = _int(result.get("api_error_status")) if result is not None else None
    summary = _first_line(voiced) or "Claude's API refused the request"

    if rejected is not None:
        resets_at, limit_type = rejected
        if resets_at is None and text_hit is not None:
            resets_at = text_hit[0]
        shown = text_hit[1] if text_hit is not None else f"Claude usage limit reached ({limit_type})"
        return LimitHit("usage", resets_at, shown, "rate_limit_event")
    if text_hit is not None:
        return LimitHit("usage", text_hit[0], text_hit[1], "text")
    if status == 429:
        return LimitHit("rate", _retry_hint(voiced, now), summary, "api_error_status")
    if assistant_error == "rate_limit":
        return LimitHit("rate", _retry_hint(voiced, now), summary, "assistant_error")
    if status == 529 or assistant_error == "overloaded" or _mentions_overload(voiced):
        return Transient("overloaded", status or 529, summary)
    if status is not None and 500 <= status <= 599:
        return Transient("server", status, summary)
    if assistant_error == "server_error":
        return Transient("server", status, summary)
    return None


def _is_error_subtype(result: dict[str, Any]) -> bool:
    subtype = result.get("subtype")
    return isinstance(subtype, str) and subtype.startswith("error")


def _first_line(texts: list[str]) -> str | None:
    for text in texts:
        for line in text.splitlines():
            if line.strip():
                return line.strip()[:300]
    return None


def _rejected_event(events: list[dict[str, Any]]) -> tuple[float | None, str] | None:
    """The last ``rate_limit_event`` if it rejected the run: (resetsAt, rateLimitType)."""
    found: tuple[float | None, str] | None = None
    for event in events:
        if event.get("type") != "rate_limit_event":
            continue
        info = event.get("rate_limit_info")
        if not isinstance(info, dict):
            continue
        if info.get("status") == "rejected":
            resets = _float(info.get("resetsAt"))
            found = (resets, str(info.get("rateLimitType") or "unknown window"))
        else:
            # "allowed"/"allowed_warning" after a rejection: the window moved on (overage kicked in).
            found = None
    return found


_OVERLOAD = re.compile(r"\boverloaded(?:_error)?\b|\(529\)", re.IGNORECASE)


def _mentions_overload(texts: list[str]) -> bool:
    return any(_OVERLOAD.search(text) for text in texts)


_RETRY_IN = re.compile(
    r"\b(?:retry|try again)\s+(?:in|after)\s+(\d+)\s*(s|sec|seconds?|m|min|minutes?)\b", re.I
)


def _retry_hint(texts: list[str], now: float) -> float | None:
    for text in texts:
        match = _RETRY_IN.search(text)
        if match:
            amount = int(match.group(1))
            return now + amount * (60 if match.group(2).lower().startswith("m") else 1)
    return None


# -- the usage-limit texts -------------------------------------------------------------------------

# "You've hit your limit · resets 1pm (Europe/Paris)", "You've hit your session limit · resets 12:50am
# (America/Los_Angeles)", "You've hit your weekly limit · resets Jan 30, 11:30am (Asia/Calcutta)",
# older "Claude AI usage limit reached|1760000400" and "Claude usage limit reached. Your limit will reset
# at 9am (America/Chicago)". Warnings ("Approaching …", "You've used 90% of …") are not hits.
_HIT = re.compile(
    r"you[\u2019']ve (?:hit|reached) your\b[^·\n]*?\blimit\b"
    r"|usage limit reached|\blimit reached\b[^\n]*\breset",
    re.IGNORECASE,
)
_EPOCH = re.compile(r"limit reached\|(\d{9,11})\b", re.IGNORECASE)
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_RESET_AT = re.compile(
    r"\bresets?\s+(?:at\s+|on\s+)?"
    r"(?:(?P<month>jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?\s+(?P<day>\d{1,2}),?\s+"
    r"(?:(?P<year>\d{4}),?\s+)?(?:at\s+)?)?"
    r"(?P<hour>\d{1,2})(?::(?P<minute>\d{2}))?\s*(?P<ampm>[ap]\.?m\.?)?"
    r"(?:\s*\((?P<zone>[A-Za-z_+\-]+(?:/[A-Za-z0-9_+\-]+)*)\))?",
    re.IGNORECASE,
)
_RESET_IN = re.compile(r"\bresets?\s+in\s+(?:(?P<h>\d+)\s*h(?:ours?|r)?)?\s*(?:(?P<m>\d+)\s*m(?:in)?)?", re.I)


def _usage_text(texts: list[str], *, now: float, default_tz: tzinfo) -> tuple[float | None, str] | None:
    for text in texts:
        if not _HIT.search(text):
            continue
        line = next((ln.strip() for ln in text.splitlines() if _HIT.search(ln)), text.strip())[:300]
        return parse_reset_text(text, now=now, default_tz=default_tz), line
    return None


def parse_reset_text(text: str, *, now: float, default_tz: tzinfo = UTC) -> float | None:
    """The reset time a limit message states, as epoch seconds; ``None`` when it states none.

    The CLI prints the reset to the minute, dropping the seconds, so the time returned is the end of the
    stated minute: waiting until then never probes a limit that has not reset yet, and "resets 10am" read
    at 10:00:30 is not taken for tomorrow's 10am. A time without a date is the next such minute that has
    not ended by ``now``; a date without a year is this year's, or
    next year's when that is already well past. A time with no zone is read in ``default_tz`` (the CLI
    prints the zone it runs in, and the agent's container runs in UTC). An unknown zone gives ``None``:
    better to probe than to wait for the wrong hour.
    """
    epoch = _EPOCH.search(text)
    if epoch:
        return float(epoch.group(1))
    relative = _RESET_IN.search(text)
    if relative and (relative.group("h") or relative.group("m")):
        return now + int(relative.group("h") or 0) * 3600 + int(relative.group("m") or 0) * 60
    for match in _RESET_AT.finditer(text):
        if match.group("ampm") is None and match.group("minute") is None:
            continue  # "resets 5" is no time
        zone = _zone(match.group("zone"), default_tz)
        if zone is None:
            return None
        hour, minute = int(match.group("hour")), int(match.group("minute") or 0)
        ampm = (match.group("ampm") or "").lower().replace(".", "")
        if ampm:
            if not 1 <= hour <= 12:
                continue
            hour = hour % 12 + (12 if ampm == "pm" else 0)
        if hour > 23 or minute > 59:
            continue
        local_now = datetime.fromtimestamp(now, zone)
        if match.group("month"):
            month = _MONTHS.index(match.group("month").lower()[:3]) + 1
            day = int(match.group("day"))
            year = int(match.group("year") or local_now.year)
            try:
                when = datetime(year, month, day, hour, minute, tzinfo=zone)
            except ValueError:
                continue
            if match.group("year") is None and when < local_now - timedelta(days=1):
                when = when.replace(year=year + 1)
            return when.timestamp() + _MINUTE
        when = local_now.replace(hour=hour, minute=minute, second=0, microsecond=0)
        if when.timestamp() + _MINUTE <= now:
            when = (when.replace(tzinfo=None) + timedelta(days=1)).replace(tzinfo=zone)
        return when.timestamp() + _MINUTE
    return None


def _zone(name: str | None, default: tzinfo) -> tzinfo | None:
    if not name:
        return default
    if name.upper() in ("UTC", "GMT", "Z"):
        return UTC
    # Imported here: the queue (and so every CLI command) imports this module, and only a reset text
    # naming a zone needs the zone database.
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


# -- the API's own reset headers -------------------------------------------------------------------

_RESET_HEADERS = tuple(
    f"anthropic-ratelimit-{bucket}-reset"
    for bucket in ("requests", "tokens", "input-tokens", "output-tokens")
)


def reset_from_headers(headers: Mapping[str, str], *, now: float) -> float | None:
    """When the API says a rate limit lets requests through again, from a response's headers.

    ``retry-after`` (seconds, or an HTTP date) is the API's own answer on a 429 and wins. Otherwise the
    latest ``anthropic-ratelimit-*-reset`` (RFC 3339) among the buckets whose ``-remaining`` is 0, and
    failing that the latest of them all: the request was refused, so some bucket is empty. ``None`` when
    the headers say nothing usable.
    """
    lower = {str(k).lower(): str(v).strip() for k, v in headers.items()}
    retry_after = lower.get("retry-after")
    if retry_after:
        if retry_after.replace(".", "", 1).isdigit():
            return now + float(retry_after)
        from email.utils import parsedate_to_datetime  # only for the rare HTTP-date form

        try:
            return parsedate_to_datetime(retry_after).timestamp()
        except (TypeError, ValueError, IndexError):
            pass
    unified = _int(lower.get("anthropic-ratelimit-unified-reset"))
    if unified is not None and lower.get("anthropic-ratelimit-unified-status") == "rejected":
        return float(unified)
    resets: list[tuple[bool, float]] = []
    for name in _RESET_HEADERS:
        value = lower.get(name)
        if not value:
            continue
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            continue
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        empty = lower.get(name.replace("-reset", "-remaining")) == "0"
        resets.append((empty, when.timestamp()))
    if not resets:
        return None
    empties = [t for empty, t in resets if empty]
    return max(empties or [t for _, t in resets])


@dataclass(frozen=True)
class Probe:
    """What one cheap request to the Messages API said: ``status`` 200 means the limit is gone."""

    status: int
    resets_at: float | None

    @property
    def limited(self) -> bool:
        return self.status == 429

    @property
    def transient(self) -> bool:
        return self.status == 529 or 500 <= self.status <= 599


def probe_reset(
    base_url: str,
    api_key: str,
    *,
    now: float,
    model: str = DEFAULT_PROBE_MODEL,
    timeout: float = 15.0,
    bearer: bool = False,
) -> Probe:
    """Ask the Messages API itself whether the rate limit still holds, and until when.

    One ``max_tokens: 1`` request of one word — the same quota check Claude Code makes — because the
    Messages API documents its ``retry-after`` and ``anthropic-ratelimit-*`` headers on message requests,
    while ``GET /v1/models`` is not documented to carry them. A refused request costs nothing; an answered
    one a handful of tokens. ``bearer`` sends the key as ``Authorization: Bearer`` (``ANTHROPIC_AUTH_TOKEN``).
    Network failures raise ``requests.RequestException``; the caller backs off as for an unknown reset.
    """
    import requests  # only the daemon's limit handling needs it; `status` must not pay for the import

    headers = {"anthropic-version": "2023-06-01", "content-type": "application/json"}
    if bearer:
        headers["authorization"] = f"Bearer {api_key}"
    else:
        headers["x-api-key"] = api_key
    body = {"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": "quota"}]}
    response = requests.post(
        f"{base_url.rstrip('/')}/v1/messages", json=body, headers=headers, timeout=timeout
    )
    resets = reset_from_headers(response.headers, now=now) if response.status_code != 200 else None
    return Probe(response.status_code, resets)


def unknown_reset_backoff(failures: int, *, transient: bool = False) -> float:
    """Seconds to hold after the ``failures``-th limit in a row (1, 2, …) whose reset nobody stated."""
    first, cap = (TRANSIENT_FIRST_S, TRANSIENT_MAX_S) if transient else (BACKOFF_FIRST_S, BACKOFF_MAX_S)
    return min(cap, first * 2 ** max(0, failures - 1))
