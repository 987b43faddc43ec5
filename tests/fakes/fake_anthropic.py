"""A loopback Anthropic Messages API that drives the real Claude Code CLI through a fixed script.

Point the CLI at it with ``ANTHROPIC_BASE_URL=<fake.url>`` and ``ANTHROPIC_API_KEY=<api_key>``. For each
conversation (a model call that offers tools), the fake answers turn by turn:

0. one ``Bash`` tool_use per entry of ``commands`` (``{"command": ...}``), when any are given,
1. one ``Write`` tool_use per entry of ``files`` (paths relative to the primary working directory the
   CLI states in its system prompt),
2. a ``Write`` of ``.claude-pr-summary.md`` with ``summary`` (skipped when ``summary`` is None),
3. with ``structured_output`` (an object, or a function of the request body giving one) and a request
   that offers the ``StructuredOutput`` tool (the CLI's ``--json-schema``), one ``StructuredOutput``
   tool_use whose input is that object (what the CLI validates and returns as ``structured_output``),
4. a final text (``final_text``) with ``stop_reason: end_turn``.

The turn is derived from the conversation itself (how many of our tool_use ids it already holds), so
the fake keeps no per-session state and a retried request gets the same answer.

Follow-ups (``followups``: one :class:`Round` per later run): a conversation that already holds the
final text of an earlier round is a *resumed* one (``--resume``: the previous turns are in the
request), and gets the next round's script, counted from that final text on. A fresh session holds no
earlier round and gets the first script. Each recorded conversation request says which round it
answered and whether it was resumed (``resumed_requests``). Calls that are not
the agent's conversation (title generation, a ``max_tokens: 1`` quota probe, anything without tools)
get a short text. A wrong key gets the API's 401. ``GET /v1/models`` lists ``models`` as the real
Models API does (what ``doctor`` uses to check a key without spending tokens).

For the credential relay's tests: ``usage`` replaces the token counts every answer reports (cache
fields included: ``{"input_tokens": 30, "cache_creation_input_tokens": 1000, ...}``; ``output_tokens`` is
what ``message_delta`` reports), and ``stream_gate`` (a ``threading.Event``) makes a streamed answer
arrive in two parts: ``message_start`` at once (chunked encoding), the rest once the gate is set.

    with FakeAnthropic(api_key="sk-test", files={"HELLO.md": "hi\\n"}) as api:
        run_cli(env={"ANTHROPIC_BASE_URL": api.url, "ANTHROPIC_API_KEY": "sk-test"})
        assert api.conversation_requests
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

DEFAULT_MODEL = "claude-sonnet-4-5-20250929"
DEFAULT_SUMMARY = "Add the requested files\n\nCreated by the fake Anthropic API for an end-to-end test.\n"
DEFAULT_FINAL_TEXT = "Done: I created the requested files and wrote the PR summary."
AUXILIARY_TEXT = "Fake answer."
DEFAULT_MODELS = (DEFAULT_MODEL, "claude-haiku-4-5-20251001", "claude-opus-4-1-20250805")
SUMMARY_FILE = ".claude-pr-summary.md"
FALLBACK_CWD = "/workspace"
_TOOL_ID_PREFIX = "toolu_fake_"
STRUCTURED_OUTPUT_TOOL = "StructuredOutput"  # the tool the CLI adds for --json-schema
StructuredOutput = dict[str, Any] | Callable[[dict[str, Any]], dict[str, Any]]
_CWD_PATTERNS = (
    re.compile(r"^\s*-?\s*Primary working directory:\s*(/.*?)\s*$", re.MULTILINE),
    # Older CLI versions wrote "Working directory: /abs" in an <env> block.
    re.compile(r"^\s*Working directory:\s*(/.*?)\s*$", re.MULTILINE),
)


@dataclass(frozen=True)
class Round:
    """What the fake does in a later run of the same conversation (a follow-up)."""

    files: dict[str, str]
    summary: str | None = None
    final_text: str = "Done: I made the follow-up change."
    commands: tuple[str, ...] = ()  # Bash tool calls made before the files are written


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTP request as the fake saw it. ``kind`` says how it was answered."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    # "probe" | "conversation" | "auxiliary" | "count_tokens" | "models" | "unauthorized" | "limited"
    # | "unknown"
    kind: str
    step: int | None = None
    round: int = 0  # which round's script answered (0: the first run's)
    resumed: bool = False  # the request holds an earlier round's turns (a resumed session)

    @property
    def is_model_call(self) -> bool:
        return self.method == "POST" and urlsplit(self.path).path == "/v1/messages"


@dataclass
class _Script:
    files: dict[str, str]
    summary: str | None
    final_text: str
    model: str
    # Written once a user message of the conversation holds ``followup_marker`` (a test failure fed
    # back): the conversation goes on after the first script's steps (resumed) or from the start (new).
    followup_files: dict[str, str] = field(default_factory=dict)
    followup_marker: str | None = None
    # Read each file before writing it: the real CLI's Write refuses to overwrite a file it has not read.
    read_first: bool = False
    commands: tuple[str, ...] = ()  # Bash tool calls, first
    structured_output: StructuredOutput | None = None  # the StructuredOutput tool's input, last

    def actions(self, followup: bool = False) -> list[tuple[str, str, str]]:
        """(tool, path, content) per step; a Bash step's "path" is its command."""
        files = list(self.files.items()) + (list(self.followup_files.items()) if followup else [])
        steps: list[tuple[str, str, str]] = [("Bash", command, "") for command in self.commands]
        for n, (path, content) in enumerate(files):
            if self.read_first:
                steps.append(("Read", path, ""))
            steps.append(("Write", path, content))
            if n == len(self.files) - 1 and self.summary is not None:
                steps.append(("Write", SUMMARY_FILE, self.summary))
        if not self.files and self.summary is not None:
            steps.append(("Write", SUMMARY_FILE, self.summary))
        return steps


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: list[RecordedRequest] = field(default_factory=list)
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    limit: LimitMode | None = None


class FakeAnthropic:
    """Loopback Messages API on 127.0.0.1 (a free port); start/stop or use as a context manager."""

    def __init__(
        self,
        api_key: str = "sk-test",
        files: dict[str, str] | None = None,
        *,
        summary: str | None = DEFAULT_SUMMARY,
        final_text: str = DEFAULT_FINAL_TEXT,
        model: str = DEFAULT_MODEL,
        models: tuple[str, ...] = DEFAULT_MODELS,
        host: str = "127.0.0.1",
        followup_files: dict[str, str] | None = None,
        followup_marker: str | None = None,
        read_first: bool = False,
        followups: tuple[Round, ...] = (),
        commands: tuple[str, ...] = (),
        usage: dict[str, Any] | None = None,
        stream_gate: threading.Event | None = None,
        structured_output: StructuredOutput | None = None,
    ) -> None:
        self.api_key = api_key
        self.models = models
        self._script = _Script(
            files=dict(files if files is not None else {"HELLO.md": "Hello from the fake Anthropic API.\n"}),
            summary=summary,
            final_text=final_text,
            model=model,
            followup_files=dict(followup_files or {}),
            followup_marker=followup_marker,
            read_first=read_first,
            commands=commands,
            structured_output=structured_output,
        )
        self._rounds = [self._script] + [
            _Script(
                files=dict(r.files),
                summary=r.summary,
                final_text=r.final_text,
                model=model,
                commands=r.commands,
            )
            for r in followups
        ]
        finals = [r.final_text for r in self._rounds]
        if len(set(finals)) != len(finals):
            msg = "each round needs a final text of its own: it is how a resumed conversation is told apart"
            raise ValueError(msg)
        self._host = host
        self.usage = dict(usage) if usage is not None else None
        self.stream_gate = stream_gate
        self._state = _State()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Self:
        if self._server is not None:
            return self
        handler = type("_BoundHandler", (_Handler,), {"fake": self})
        server = ThreadingHTTPServer((self._host, 0), handler)
        server.daemon_threads = True
        self._server = server
        # A short poll interval: shutdown() waits for the loop's next poll, which would slow every test.
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-anthropic", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- inspection ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._server is None:
            msg = "FakeAnthropic is not started"
            raise RuntimeError(msg)
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def port(self) -> int:
        return int(urlsplit(self.url).port or 0)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._state.lock:
            return list(self._state.requests)

    @property
    def model_calls(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.is_model_call]

    @property
    def conversation_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.kind == "conversation"]

    @property
    def resumed_requests(self) -> list[RecordedRequest]:
        """Conversation requests that carried an earlier round's turns (``--resume`` worked)."""
        return [r for r in self.conversation_requests if r.resumed]

    @property
    def limits(self) -> LimitSwitch:
        """Switch the limit modes at run time; refused calls are recorded with kind ``"limited"``."""
        return LimitSwitch(self._state)

    # -- internals used by the handler -----------------------------------------------------------

    def _record(self, request: RecordedRequest) -> None:
        with self._state.lock:
            self._state.requests.append(request)

    def _next_id(self) -> int:
        with self._state.lock:
            return next(self._state.ids)

    def _authorized(self, headers: dict[str, str]) -> bool:
        if headers.get("x-api-key") == self.api_key:
            return True
        # ANTHROPIC_AUTH_TOKEN is sent as a bearer token instead of x-api-key.
        return headers.get("authorization") == f"Bearer {self.api_key}"

    def _round(self, messages: list[Any]) -> tuple[int, list[Any], bool]:
        """Which round a conversation is in (how many rounds' final texts it holds), its messages since
        the last of them, and whether it holds any (a resumed session)."""
        finals = {script.final_text for script in self._rounds}
        done, since = 0, 0
        for index, message in enumerate(messages):
            ours = isinstance(message, dict) and message.get("role") == "assistant"
            if ours and any(text in finals for text in _texts(message.get("content"))):
                done, since = done + 1, index + 1
        return min(done, len(self._rounds) - 1), messages[since:], done > 0

    def _answer(self, body: dict[str, Any]) -> tuple[str, int | None, list[dict[str, Any]], str]:
        """Decide the reply: (kind, step, content blocks, stop_reason)."""
        tools = body.get("tools") or []
        max_tokens = body.get("max_tokens") or 0
        if not tools or max_tokens <= 1:
            return "auxiliary", None, [{"type": "text", "text": AUXILIARY_TEXT}], "end_turn"

        messages = body.get("messages") or []
        round_, current, _ = self._round(messages)
        script = self._rounds[round_]
        marker = self._script.followup_marker
        followup = marker is not None and any(
            marker in text
            for m in messages
            if isinstance(m, dict) and m.get("role") == "user"
            for text in _texts(m.get("content"))
        )
        if followup:
            current = messages  # a fed-back failure continues the first script's steps (or redoes them)
        actions = script.actions(followup)
        offered = {t.get("name") for t in tools if isinstance(t, dict)}
        if script.structured_output is not None and STRUCTURED_OUTPUT_TOOL in offered:
            actions.append((STRUCTURED_OUTPUT_TOOL, "", ""))
        step = _count_our_tool_uses(current)
        if step >= len(actions):
            return "conversation", step, [{"type": "text", "text": script.final_text}], "end_turn"
        tool, rel_path, content = actions[step]
        if tool == STRUCTURED_OUTPUT_TOOL:
            answer = script.structured_output
            tool_input_object = answer(body) if callable(answer) else answer
            tool_use = {
                "type": "tool_use",
                "id": f"{_TOOL_ID_PREFIX}{step + 1:04d}_{self._next_id():04d}",
                "name": tool,
                "input": tool_input_object,
            }
            return (
                "conversation",
                step,
                [{"type": "text", "text": "Here is my review."}, tool_use],
                "tool_use",
            )
        cwd = primary_working_directory(body) or FALLBACK_CWD
        path = f"{cwd.rstrip('/')}/{rel_path}"
        tool_input: dict[str, str]
        if tool == "Bash":
            tool_input = {"command": rel_path, "description": "Run a command"}
        elif tool == "Read":
            tool_input = {"file_path": path}
        else:
            tool_input = {"file_path": path, "content": content}
        tool_use = {
            "type": "tool_use",
            "id": f"{_TOOL_ID_PREFIX}{step + 1:04d}_{self._next_id():04d}",
            "name": tool,
            "input": tool_input,
        }
        text = {
            "type": "text",
            "text": "I'll run a command." if tool == "Bash" else f"I'll {tool.lower()} {rel_path}.",
        }
        return "conversation", step, [text, tool_use], "tool_use"


# -- limit modes: 429 rate limits, usage-limit rejections, 529 overload (switchable at run time) -------


@dataclass(frozen=True)
class LimitMode:
    """How every ``POST /v1/messages`` is refused while the mode is on.

    ``status`` 429 answers ``rate_limit_error`` with the Messages API's headers: ``retry-after`` (seconds)
    and ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}``
    (RFC 3339), the requests bucket empty. ``unified`` adds the claude.ai subscription headers
    (``anthropic-ratelimit-unified-status: rejected``, ``-reset`` in epoch seconds, ``-representative-claim``)
    that Claude Code reads for subscribers. 529 answers ``overloaded_error``; other 5xx ``api_error``.
    """

    status: int = 429
    retry_after: int | None = 60
    resets_at: float | None = None  # epoch seconds; default: now + retry_after (or + 60 s)
    message: str = "Number of requests has exceeded your per-minute rate limit."
    unified: bool = False
    claim: str = "five_hour"


_BUCKETS = (("requests", 50), ("tokens", 40000), ("input-tokens", 30000), ("output-tokens", 8000))


def _limit_headers(mode: LimitMode, now: float) -> dict[str, str]:
    from datetime import UTC, datetime  # only this section needs it

    headers: dict[str, str] = {}
    if mode.status != 429:
        return {"x-should-retry": "true"}
    resets_at = mode.resets_at if mode.resets_at is not None else now + (mode.retry_after or 60)
    stamp = datetime.fromtimestamp(resets_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if mode.retry_after is not None:
        headers["retry-after"] = str(mode.retry_after)
    for bucket, limit in _BUCKETS:
        headers[f"anthropic-ratelimit-{bucket}-limit"] = str(limit)
        headers[f"anthropic-ratelimit-{bucket}-remaining"] = "0" if bucket == "requests" else str(limit)
        headers[f"anthropic-ratelimit-{bucket}-reset"] = stamp
    if mode.unified:
        headers["anthropic-ratelimit-unified-status"] = "rejected"
        headers["anthropic-ratelimit-unified-reset"] = str(int(resets_at))
        headers["anthropic-ratelimit-unified-representative-claim"] = mode.claim
        headers["anthropic-ratelimit-unified-overage-status"] = "rejected"
        headers["anthropic-ratelimit-unified-overage-disabled-reason"] = "org_level_disabled"
    return headers


def _limit_error(mode: LimitMode) -> dict[str, Any]:
    if mode.status == 429:
        return _error("rate_limit_error", mode.message)
    if mode.status == 529:
        return _error("overloaded_error", "Overloaded")
    return _error("api_error", "Internal server error")


class LimitSwitch:
    """Turns a :class:`FakeAnthropic`'s limit mode on and off (``api.limits.rate_limit(...)``)."""

    def __init__(self, state: _State) -> None:
        self._state = state

    def rate_limit(self, *, retry_after: int | None = 60, resets_at: float | None = None, **kw: Any) -> None:
        self.set(LimitMode(429, retry_after, resets_at, **kw))

    def usage_limit(self, *, resets_at: float, claim: str = "five_hour") -> None:
        message = "This request would exceed your account's rate limit. Please try again later."
        self.set(LimitMode(429, None, resets_at, message, unified=True, claim=claim))

    def overloaded(self) -> None:
        self.set(LimitMode(529, None))

    def server_error(self, status: int = 500) -> None:
        self.set(LimitMode(status, None))

    def clear(self) -> None:
        self.set(None)

    def set(self, mode: LimitMode | None) -> None:
        with self._state.lock:
            self._state.limit = mode

    @property
    def mode(self) -> LimitMode | None:
        with self._state.lock:
            return self._state.limit


def primary_working_directory(body: dict[str, Any]) -> str | None:
    """The CLI's working directory as stated in its system prompt (string, blocks or a system message)."""
    texts = list(_texts(body.get("system")))
    for message in body.get("messages") or []:
        if isinstance(message, dict) and message.get("role") == "system":
            texts.extend(_texts(message.get("content")))
    # Also user messages: some versions put the environment in a <system-reminder> there.
    for message in body.get("messages") or []:
        if isinstance(message, dict) and message.get("role") == "user":
            texts.extend(_texts(message.get("content")))
    for pattern in _CWD_PATTERNS:
        for text in texts:
            match = pattern.search(text)
            if match:
                return match.group(1)
    return None


def _texts(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for block in value:
            if isinstance(block, str):
                yield block
            elif isinstance(block, dict) and isinstance(block.get("text"), str):
                yield block["text"]


def _count_our_tool_uses(messages: list[Any]) -> int:
    count = 0
    for message in messages:
        if not isinstance(message, dict) or message.get("role") != "assistant":
            continue
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for block in content:
            if (
                isinstance(block, dict)
                and block.get("type") == "tool_use"
                and str(block.get("id", "")).startswith(_TOOL_ID_PREFIX)
            ):
                count += 1
    return count


def _usage(input_tokens: int, output_tokens: int) -> dict[str, int]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def sse_body(
    message_id: str,
    model: str,
    blocks: list[dict[str, Any]],
    stop_reason: str,
    usage: dict[str, Any] | None = None,
) -> bytes:
    """The event stream the Messages API sends for a reply made of ``blocks`` (``usage``: the counts to
    report instead of the defaults; ``output_tokens`` goes to ``message_delta``)."""
    start_usage = {**_usage(25, 1), **{k: v for k, v in (usage or {}).items() if k != "output_tokens"}}
    output_tokens = (usage or {}).get("output_tokens", 20)
    parts = [
        _sse(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": start_usage,
                },
            },
        )
    ]
    for index, block in enumerate(blocks):
        if block["type"] == "text":
            start = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": block["text"]}]
        else:
            start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            raw = json.dumps(block["input"])
            # Two fragments, so a client that only handles one-shot JSON would be caught.
            half = len(raw) // 2
            deltas = [
                {"type": "input_json_delta", "partial_json": raw[:half]},
                {"type": "input_json_delta", "partial_json": raw[half:]},
            ]
        parts.append(
            _sse(
                "content_block_start", {"type": "content_block_start", "index": index, "content_block": start}
            )
        )
        parts.extend(
            _sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
            for delta in deltas
        )
        parts.append(_sse("content_block_stop", {"type": "content_block_stop", "index": index}))
    parts.append(
        _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            },
        )
    )
    parts.append(_sse("message_stop", {"type": "message_stop"}))
    return "".join(parts).encode()


class _Handler(BaseHTTPRequestHandler):
    fake: FakeAnthropic  # set on the per-server subclass
    # Keep-alive like the real API; every response below carries a Content-Length.
    protocol_version = "HTTP/1.1"
    server_version = "FakeAnthropic/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        # The CLI's chatter would drown test output.
        pass

    def do_HEAD(self) -> None:
        # The CLI probes connectivity with `HEAD /` before its first call.
        self._record("probe", None)
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        if urlsplit(self.path).path == "/v1/models":
            self._list_models()
            return
        self._record("unknown", None)
        self._send_json(HTTPStatus.NOT_FOUND, _error("not_found_error", f"no route for GET {self.path}"))

    # -- GET /v1/models (the Models API: a key check that spends no tokens) -----------------------

    def _list_models(self) -> None:
        """A page of models, newest first, shaped like the real API (``limit``, ``after_id``,
        ``before_id``; ``data``, ``has_more``, ``first_id``, ``last_id``)."""
        headers = {k.lower(): v for k, v in self.headers.items()}
        if not self.fake._authorized(headers):
            self._record("unauthorized", None, headers)
            self._send_json(HTTPStatus.UNAUTHORIZED, _error("authentication_error", "invalid x-api-key"))
            return
        if not headers.get("anthropic-version"):
            self._record("unknown", None, headers)
            message = "anthropic-version: header is required"
            self._send_json(HTTPStatus.BAD_REQUEST, _error("invalid_request_error", message))
            return
        query = parse_qs(urlsplit(self.path).query)
        try:
            limit = int(query.get("limit", ["20"])[0])
        except ValueError:
            limit = 0
        if not 1 <= limit <= 1000:
            self._record("unknown", None, headers)
            message = "limit: Input should be greater than or equal to 1 and less than or equal to 1000"
            self._send_json(HTTPStatus.BAD_REQUEST, _error("invalid_request_error", message))
            return
        self._record("models", None, headers)
        ids = list(self.fake.models)
        if "after_id" in query and query["after_id"][0] in ids:
            ids = ids[ids.index(query["after_id"][0]) + 1 :]
        elif "before_id" in query and query["before_id"][0] in ids:
            ids = ids[: ids.index(query["before_id"][0])][-limit:]
        page, more = ids[:limit], len(ids) > limit
        data = [
            {"type": "model", "id": m, "display_name": _display_name(m), "created_at": "2025-09-29T00:00:00Z"}
            for m in page
        ]
        first, last = (page[0], page[-1]) if page else (None, None)
        self._send_json(HTTPStatus.OK, {"data": data, "has_more": more, "first_id": first, "last_id": last})

    def do_POST(self) -> None:
        raw = self._read_body()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        headers = {k.lower(): v for k, v in self.headers.items()}
        route = urlsplit(self.path).path

        if not self.fake._authorized(headers):
            self._record("unauthorized", body, headers)
            self._send_json(HTTPStatus.UNAUTHORIZED, _error("authentication_error", "invalid x-api-key"))
            return
        if route == "/v1/messages" and self._refuse_when_limited(body, headers):
            return
        if route == "/v1/messages/count_tokens":
            self._record("count_tokens", body, headers)
            self._send_json(HTTPStatus.OK, {"input_tokens": 25})
            return
        if route != "/v1/messages" or not isinstance(body, dict):
            self._record("unknown", body, headers)
            self._send_json(HTTPStatus.NOT_FOUND, _error("not_found_error", f"no route for POST {route}"))
            return

        kind, step, blocks, stop_reason = self.fake._answer(body)
        round_, _, resumed = self.fake._round(body.get("messages") or [])
        if kind != "conversation":
            round_, resumed = 0, False
        self._record(kind, body, headers, step, round_, resumed)
        model = str(body.get("model") or self.fake._script.model)
        message_id = f"msg_fake_{self.fake._next_id():06d}"
        if body.get("stream"):
            payload = sse_body(message_id, model, blocks, stop_reason, self.fake.usage)
            if self.fake.stream_gate is not None:
                self._send_in_two_parts(payload, self.fake.stream_gate)
                return
            self._send(HTTPStatus.OK, payload, "text/event-stream; charset=utf-8")
        else:
            message = {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": blocks,
                "stop_reason": stop_reason,
                "stop_sequence": None,
                "usage": {**_usage(25, 20), **(self.fake.usage or {})},
            }
            self._send_json(HTTPStatus.OK, message)

    def _refuse_when_limited(self, body: Any, headers: dict[str, str]) -> bool:
        mode = self.fake.limits.mode
        if mode is None:
            return False
        self._record("limited", body, headers)
        payload = json.dumps(_limit_error(mode)).encode()
        self.send_response(mode.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("request-id", f"req_fake_{self.fake._next_id():06d}")
        for name, value in _limit_headers(mode, time.time()).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()
        return True

    # -- helpers ---------------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # Trailers end with an empty line.
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _record(
        self,
        kind: str,
        body: Any,
        headers: dict[str, str] | None = None,
        step: int | None = None,
        round_: int = 0,
        resumed: bool = False,
    ) -> None:
        if headers is None:
            headers = {k.lower(): v for k, v in self.headers.items()}
        self.fake._record(
            RecordedRequest(self.command, self.path, headers, body, kind, step, round_, resumed)
        )

    def _send_in_two_parts(self, payload: bytes, gate: threading.Event) -> None:
        """The first event now, the rest once ``gate`` is set (chunked, as the real API streams)."""
        cut = payload.index(b"\n\n") + 2
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        for n, part in enumerate((payload[:cut], payload[cut:])):
            if n == 1:
                gate.wait(timeout=30)
            self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _send_json(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _send(self, status: HTTPStatus, payload: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("request-id", f"req_fake_{self.fake._next_id():06d}")
        if content_type.startswith("text/event-stream"):
            self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()


def _error(error_type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message}}


def _display_name(model_id: str) -> str:
    # "claude-sonnet-4-5-20250929" -> "Claude Sonnet 4.5", as the real API names them.
    words = [w for w in model_id.split("-") if not (w.isdigit() and len(w) == 8)]
    name = [w.capitalize() for w in words if not w.isdigit()]
    version = ".".join(w for w in words if w.isdigit())
    return " ".join([*name, version] if version else name)


__all__ = [
    "AUXILIARY_TEXT",
    "DEFAULT_FINAL_TEXT",
    "DEFAULT_MODELS",
    "DEFAULT_SUMMARY",
    "STRUCTURED_OUTPUT_TOOL",
    "SUMMARY_FILE",
    "FakeAnthropic",
    "LimitMode",
    "LimitSwitch",
    "RecordedRequest",
    "primary_working_directory",
    "sse_body",
]
