"""What the relay reads from the answers it streams: their usage (server-sent events or one JSON body),
their errors, and the limits the API announced."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LimitSeen:
    """The latest rate/usage-limit (429) or overload (529) answer the API gave, and when it lifts.

    ``reset_at`` (epoch seconds) comes from ``retry-after``, ``anthropic-ratelimit-unified-reset`` (a
    subscription's usage limit) or the latest ``anthropic-ratelimit-*-reset`` of an empty bucket; None
    when the answer said nothing. ``transient`` marks a 529 (overloaded: retry soon, not a limit)."""

    status: int
    reset_at: float | None
    seen_at: float
    transient: bool = False
    task_id: str | None = None
    message: str = ""


class _SseMeter:
    """Reads ``usage`` out of a Messages API event stream as it passes, without holding the stream.

    Only the current line is kept (bounded); data lines are decoded only for ``message_start`` and
    ``message_delta`` events. ``message_delta``'s usage is cumulative: its fields replace the start's."""

    _MAX_LINE = 1024 * 1024  # longer lines are skipped (content deltas; usage events are small)

    def __init__(self) -> None:
        self._partial = b""
        self._skipping = False
        self._event = b""
        self._data: list[bytes] = []
        self.model: str | None = None
        self.usage: dict[str, Any] = {}
        self.seen = False

    def feed(self, chunk: bytes) -> None:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                rest = chunk[start:]
                if self._skipping or len(self._partial) + len(rest) > self._MAX_LINE:
                    self._partial, self._skipping = b"", True
                else:
                    self._partial += rest
                return
            line = chunk[start:end]
            start = end + 1
            if self._skipping:
                self._skipping = False
                continue
            if self._partial:
                line, self._partial = self._partial + line, b""
            self._line(line.rstrip(b"\r"))

    def _line(self, line: bytes) -> None:
        if not line:
            self._dispatch()
        elif line.startswith(b"event:"):
            self._event = line[6:].strip()
        elif line.startswith(b"data:") and self._event in (b"message_start", b"message_delta", b""):
            self._data.append(line[5:].lstrip(b" "))

    def _dispatch(self) -> None:
        data, self._data, self._event = self._data, [], b""
        if not data:
            return
        try:
            event = json.loads(b"\n".join(data))
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        if event.get("type") == "message_start" and isinstance(event.get("message"), dict):
            message = event["message"]
            self.seen = True
            if isinstance(message.get("model"), str):
                self.model = message["model"]
            if isinstance(message.get("usage"), dict):
                self.usage.update(message["usage"])
        elif event.get("type") == "message_delta" and isinstance(event.get("usage"), dict):
            self.seen = True
            # Cumulative counts; a null (unknown) field does not erase what the start said.
            self.usage.update({k: v for k, v in event["usage"].items() if v is not None})


# -- helpers ------------------------------------------------------------------------------------------


def _usage_of(sse: _SseMeter | None, captured: bytes) -> tuple[str | None, dict[str, Any] | None]:
    if sse is not None:
        return (sse.model, sse.usage) if sse.seen else (None, None)
    try:
        message = json.loads(captured)
    except ValueError:
        return None, None
    if not isinstance(message, dict) or not isinstance(message.get("usage"), dict):
        return None, None
    model = message.get("model")
    return (model if isinstance(model, str) else None), message["usage"]


def _request_model(body: bytes) -> str:
    try:
        parsed = json.loads(body)
    except ValueError:
        return "unknown"
    model = parsed.get("model") if isinstance(parsed, dict) else None
    return model if isinstance(model, str) else "unknown"


def _error_message(captured: bytes) -> str:
    try:
        parsed = json.loads(captured)
    except ValueError:
        return captured[:200].decode(errors="replace")
    error = parsed.get("error") if isinstance(parsed, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) else ""
