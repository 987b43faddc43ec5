"""What every check of ``doctor`` shares: its result, its settings, and the helpers that word a failure."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlsplit

if TYPE_CHECKING:
    pass


PASS_MARK = "✔"
FAIL_MARK = "✘"
VERSION_TIMEOUT = 60  # seconds for `claude --version` in the agent image (it starts in well under one)
LABEL_COLOR = "d97757"
LABEL_DESCRIPTION = "Ask Claude to solve this issue"
APP_PERMISSIONS = ("contents", "issues", "pull_requests")
TOKEN_GRANTS = "Contents, Issues and Pull requests: Read and write (Metadata: Read)"
ANTHROPIC_API_URL = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"
ANTHROPIC_TIMEOUT = 15  # seconds for GET /v1/models, which answers in well under one
CONSOLE_KEYS_URL = "https://console.anthropic.com/settings/keys"
# `claude setup-token` prints sk-ant-oat01- and a long base64url tail.
_OAUTH_TOKEN_RE = re.compile(r"^sk-ant-oat\d+-[A-Za-z0-9_-]{40,}$")
_VERSION_RE = re.compile(r"\b(\d+\.\d+\.\d+)\b")
_PINNED_RE = re.compile(r"^ARG CLAUDE_CODE_VERSION=(\S+)", re.MULTILINE)
_ROLES = (
    ("admin", "admin"),
    ("maintain", "maintain"),
    ("push", "write"),
    ("triage", "triage"),
    ("pull", "read"),
)


@dataclass(frozen=True)
class Check:
    """One line of the report. ``fix`` says what to do; every failed check has one."""

    name: str
    ok: bool
    detail: str
    fix: str | None = None


class _Outcome(NamedTuple):
    ok: bool
    detail: str
    fix: str | None = None


def _passed(detail: str) -> _Outcome:
    return _Outcome(True, detail)


def _failed(detail: str, fix: str) -> _Outcome:
    return _Outcome(False, detail, fix)


# --- helpers --------------------------------------------------------------------------------------------


def _web_url(api_url: str) -> str:
    """Where people sign in: github.com for the public API, the server itself for Enterprise Server."""
    if urlsplit(api_url).hostname == "api.github.com":
        return "https://github.com"
    return api_url.removesuffix("/api/v3")


def _user_name() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return str(os.getuid())


def _pygithub_error(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    data = getattr(exc, "data", None)
    message = data.get("message") if isinstance(data, Mapping) else None
    return f"HTTP {status}" + (f" ({message})" if message else "")


def _network_reason(exc: BaseException) -> str:
    """The root cause of a requests/urllib3 connection error, in a few words instead of its repr chain."""
    import socket

    import requests

    seen: set[int] = set()
    current: BaseException | None = exc
    deepest = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        deepest = current
        reason = getattr(current, "reason", None)
        args_cause = current.args[0] if current.args and isinstance(current.args[0], BaseException) else None
        current = current.__cause__ or (reason if isinstance(reason, BaseException) else None) or args_cause
    if isinstance(deepest, socket.gaierror):
        return "the host name does not resolve"
    if isinstance(exc, requests.exceptions.SSLError):
        return f"TLS failed ({deepest})"
    if isinstance(deepest, OSError) and deepest.strerror:
        return deepest.strerror
    return str(deepest) or type(deepest).__name__


def _api_error_message(response: Any) -> str:
    """`` (<type>: <message>)`` from the API's error body, or "" when it has none."""
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        return ""
    if not isinstance(error, Mapping):
        return ""
    parts = [str(error[k]) for k in ("type", "message") if error.get(k)]
    text = ": ".join(parts)
    if len(text) > 200:  # a gateway's message can be a page long
        text = text[:199] + "…"
    return f" ({text})" if text else ""


def _pinned_version() -> str | None:
    from claude_issue_solver.backends.base import agent_dockerfile

    try:
        found = _PINNED_RE.search(agent_dockerfile().read_text())
    except OSError:
        return None
    return found.group(1) if found else None
