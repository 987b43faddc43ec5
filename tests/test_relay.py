"""The credential relay: real Unix sockets, the loopback Messages API upstream, the node forwarder, and the
real Claude Code CLI (on the host when installed, and in the agent image with no network at all)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from claude_issue_solver import relay as relay_module
from claude_issue_solver.logs import REDACTOR
from claude_issue_solver.relay import (
    FORWARDER_NAME,
    OAUTH_BETA,
    SOCKET_NAME,
    ClaudeCredential,
    Relay,
    RelayBounds,
    RelayError,
    cost_usd,
    forwarded_command,
    metering,
    price_for,
)
from tests.fakes.fake_anthropic import FakeAnthropic
from tests.waiting import wait_until

REAL_KEY = "sk-ant-api03-the-operators-real-key-0123456789"
REAL_OAUTH = "sk-ant-oat01-the-operators-real-oauth-token-0123"
CACHE_USAGE: dict[str, Any] = {
    "input_tokens": 31,
    "output_tokens": 17,
    "cache_creation_input_tokens": 1200,
    "cache_read_input_tokens": 5400,
    "cache_creation": {"ephemeral_5m_input_tokens": 200, "ephemeral_1h_input_tokens": 1000},
}
NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="node is not installed on this host")


# -- plumbing -------------------------------------------------------------------------------------------


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over the relay's Unix socket (what the forwarder does for the CLI)."""

    def __init__(self, path: Path, timeout: float = 10) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self.path))
        self.sock = sock


def message_body(model: str = "claude-sonnet-4-5-20250929", *, stream: bool = True, **extra: Any) -> str:
    return json.dumps(
        {
            "model": model,
            "max_tokens": 1000,
            "stream": stream,
            "messages": [{"role": "user", "content": "hello"}],
            "tools": [{"name": "Write", "input_schema": {"type": "object"}}],
            **extra,
        }
    )


def post(
    path: Path,
    token: str | None,
    body: str | bytes,
    *,
    bearer: bool = False,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    connection = UnixHTTPConnection(path)
    try:
        sent = {"content-type": "application/json", "anthropic-version": "2023-06-01", **(headers or {})}
        if token is not None:
            sent["authorization" if bearer else "x-api-key"] = f"Bearer {token}" if bearer else token
        connection.request("POST", "/v1/messages?beta=true", body, sent)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # Socket paths are limited to 107 bytes; pytest's tmp_path can be long.
    path = Path(tempfile.mkdtemp(prefix="rl-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def clock() -> list[float]:
    return [1_900_000_000.0]


@pytest.fixture
def api() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key=REAL_KEY) as fake:
        yield fake


@pytest.fixture
def make_relay(short_dir: Path, clock: list[float]) -> Iterator[Callable[..., Relay]]:
    started: list[Relay] = []

    def make(upstream: str, credential: ClaudeCredential | None = None, **kw: Any) -> Relay:
        kw.setdefault("clock", lambda: clock[0])
        relay = Relay(short_dir / "relay", upstream, credential or ClaudeCredential(api_key=REAL_KEY), **kw)
        relay.start()
        started.append(relay)
        return relay

    yield make
    for relay in started:
        relay.stop()


@pytest.fixture
def relay(api: FakeAnthropic, make_relay: Callable[..., Relay]) -> Relay:
    return make_relay(api.url)


# -- the credential swap --------------------------------------------------------------------------------


def test_a_streamed_answer_goes_through_with_the_real_key_and_never_the_token(
    api: FakeAnthropic, relay: Relay
) -> None:
    grant = relay.open("task-1")
    assert grant.env == {"ANTHROPIC_API_KEY": grant.token}
    assert grant.directory.parent == relay.directory
    assert grant.socket == grant.directory / SOCKET_NAME

    status, headers, body = post(
        grant.socket, grant.token, message_body(), headers={"anthropic-beta": "x-1,y-2"}
    )

    assert status == 200, body
    assert headers["content-type"].startswith("text/event-stream")
    assert b"event: message_start" in body and b"event: message_stop" in body
    (seen,) = api.model_calls
    assert seen.kind == "conversation"
    assert seen.headers["x-api-key"] == REAL_KEY
    assert "authorization" not in seen.headers
    assert seen.headers["anthropic-beta"] == "x-1,y-2"  # other headers pass as they are
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert seen.path == "/v1/messages?beta=true"
    assert not any(grant.token in value for value in seen.headers.values())
    assert REAL_KEY.encode() not in body
    assert not any(REAL_KEY in value for value in headers.values())


def test_the_clis_connectivity_probe_passes_without_a_token(api: FakeAnthropic, relay: Relay) -> None:
    grant = relay.open("task-1")
    connection = UnixHTTPConnection(grant.socket)
    connection.request("HEAD", "/")
    response = connection.getresponse()
    response.read()
    connection.close()

    assert response.status == 200
    (probe,) = api.requests
    assert (probe.method, probe.path, probe.kind) == ("HEAD", "/", "probe")
    assert "x-api-key" not in probe.headers  # a bare probe is not given the credential


def test_a_wrong_token_gets_the_apis_401_and_never_reaches_the_api(api: FakeAnthropic, relay: Relay) -> None:
    grant = relay.open("task-1")
    other = relay.open("task-2")

    for token, bearer in (
        (None, False),
        ("sk-guess", False),
        (other.token, False),
        (grant.token + "x", True),
    ):
        status, _, body = post(grant.socket, token, message_body(), bearer=bearer)
        assert status == 401, token
        error = json.loads(body)
        assert error["type"] == "error"
        assert error["error"]["type"] == "authentication_error"
    assert api.requests == []
    assert relay.usage("task-1").requests == 0


def test_an_oauth_token_goes_out_as_a_bearer_with_the_oauth_beta(
    api: FakeAnthropic, make_relay: Callable[..., Relay]
) -> None:
    relay = make_relay(api.url, ClaudeCredential(oauth_token=REAL_OAUTH))
    api.api_key = REAL_OAUTH
    grant = relay.open("task-1")
    assert grant.env == {"CLAUDE_CODE_OAUTH_TOKEN": grant.token}

    status, _, _ = post(
        grant.socket, grant.token, message_body(), bearer=True, headers={"anthropic-beta": "a-1"}
    )
    assert status == 200
    status, _, _ = post(grant.socket, grant.token, message_body())  # as x-api-key: accepted too
    assert status == 200

    first, second = api.model_calls
    assert first.headers["authorization"] == f"Bearer {REAL_OAUTH}"
    assert "x-api-key" not in first.headers
    assert first.headers["anthropic-beta"].split(",") == [OAUTH_BETA, "a-1"]
    assert second.headers["anthropic-beta"] == OAUTH_BETA
    assert relay.usage("task-1").requests == 2


def test_the_credentials_are_known_to_the_log_redactor(relay: Relay) -> None:
    grant = relay.open("task-1")
    line = f"leaked {grant.token} and {REAL_KEY}"
    assert grant.token not in REDACTOR(line)
    assert REAL_KEY not in REDACTOR(line)
    assert relay.tokens() == [grant.token]
    assert REAL_KEY not in repr(ClaudeCredential(api_key=REAL_KEY))
    assert grant.token not in repr(grant)


# -- tasks: open, close, restart ------------------------------------------------------------------------


def test_open_is_idempotent_and_close_kills_the_token(api: FakeAnthropic, relay: Relay) -> None:
    grant = relay.open("task-1")
    assert relay.open("task-1") == grant
    connection = UnixHTTPConnection(grant.socket)  # a kept-alive connection that outlives the close
    connection.request("POST", "/v1/messages", message_body(stream=False), {"x-api-key": grant.token})
    first = connection.getresponse()
    first.read()
    assert first.status == 200

    relay.close("task-1")

    assert not grant.directory.exists()
    connection.request("POST", "/v1/messages", message_body(stream=False), {"x-api-key": grant.token})
    assert connection.getresponse().status == 401
    connection.close()
    assert len(api.model_calls) == 1
    relay.close("task-1")  # twice: nothing to do
    relay.close("never-opened")


def test_a_restarted_relay_accepts_the_token_of_a_running_container(
    api: FakeAnthropic, short_dir: Path, make_relay: Callable[..., Relay]
) -> None:
    first = make_relay(api.url)
    grant = first.open("task-1")
    first.stop()
    # The directory a running container has mounted stays; its socket is dead until the new daemon opens.
    assert grant.directory.is_dir()
    with pytest.raises(OSError):
        post(grant.socket, grant.token, message_body())

    second = make_relay(api.url)
    again = second.open("task-1")

    assert again == grant
    assert post(grant.socket, grant.token, message_body())[0] == 200
    assert second.usage("task-1").requests == 1
    # Another secret (another state directory) mints other tokens.
    elsewhere = Relay(short_dir / "other", api.url, ClaudeCredential(api_key=REAL_KEY))
    elsewhere.start()
    try:
        assert elsewhere.open("task-1").token != grant.token
    finally:
        elsewhere.stop()


def test_files_and_modes(relay: Relay) -> None:
    grant = relay.open("task-1")
    assert stat.S_IMODE(relay.directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((relay.directory / "secret").stat().st_mode) == 0o600
    assert stat.S_IMODE(grant.directory.stat().st_mode) == 0o711
    assert stat.S_ISSOCK(grant.socket.stat().st_mode)
    assert stat.S_IMODE(grant.socket.stat().st_mode) == 0o600
    assert (grant.directory / FORWARDER_NAME).read_bytes() == relay_module.forwarder_source()
    assert sorted(p.name for p in grant.directory.iterdir()) == [FORWARDER_NAME, SOCKET_NAME]
    assert grant.token not in (relay.directory / "secret").read_text()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_the_socket_belongs_to_the_agents_uid(api: FakeAnthropic, make_relay: Callable[..., Relay]) -> None:
    relay = make_relay(api.url, socket_owner=(1000, 1000))
    grant = relay.open("task-1")
    info = grant.socket.stat()
    assert (info.st_uid, info.st_gid) == (1000, 1000)
    assert grant.directory.stat().st_uid == os.geteuid()  # the agent cannot write into its directory


def test_bad_task_ids_and_overlong_paths_are_refused(api: FakeAnthropic, relay: Relay) -> None:
    for bad in ("", "a/b", "../x", "a b", "x" * 201):
        with pytest.raises(RelayError):
            relay.open(bad)
    deep = Path(tempfile.mkdtemp(prefix="rl-")) / ("d" * 100)
    try:
        long_relay = Relay(deep, api.url, ClaudeCredential(api_key=REAL_KEY))
        long_relay.start()
        with pytest.raises(RelayError, match="shorter STATE_DIR"):
            long_relay.open("task-1")
        long_relay.stop()
    finally:
        shutil.rmtree(deep.parent, ignore_errors=True)
    with pytest.raises(RelayError):
        ClaudeCredential()
    with pytest.raises(RelayError):
        Relay(Path("/tmp/x"), "unix:///nope", ClaudeCredential(api_key=REAL_KEY))


def test_stop_twice_and_before_start_never_raises(api: FakeAnthropic, short_dir: Path) -> None:
    relay = Relay(short_dir / "relay", api.url, ClaudeCredential(api_key=REAL_KEY))
    relay.stop()
    relay.start()
    relay.open("task-1")
    relay.stop()
    relay.stop()
    with pytest.raises(RelayError, match="not started"):
        relay.open("task-2")


def test_sweep_removes_what_an_earlier_daemon_left(relay: Relay) -> None:
    kept = relay.open("task-1")
    relay.open("task-2")
    stale = relay.task_directory("task-3")
    stale.mkdir()
    relay.close("task-2")

    removed = relay.sweep(keep=["task-4"])

    assert removed == [stale]
    assert kept.directory.is_dir()
    assert (relay.directory / "secret").is_file()


# -- streaming, concurrency and bounds ------------------------------------------------------------------


def test_a_streamed_answer_arrives_as_it_is_sent(make_relay: Callable[..., Relay]) -> None:
    gate = threading.Event()
    with FakeAnthropic(api_key=REAL_KEY, stream_gate=gate) as api:
        relay = make_relay(api.url)
        grant = relay.open("task-1")
        connection = UnixHTTPConnection(grant.socket)
        connection.request("POST", "/v1/messages", message_body(), {"x-api-key": grant.token})
        response = connection.getresponse()
        early = b""
        while b"\n\n" not in early:  # the first event, while the API still holds the rest back
            chunk = response.read1(65536)
            assert chunk, "the stream ended before the API released its second part"
            early += chunk
        assert b"message_start" in early
        assert not gate.is_set()
        gate.set()
        rest = response.read()
        connection.close()
    assert b"message_stop" in rest
    assert relay.usage("task-1").output_tokens == 20


def test_close_cuts_a_stream_in_flight(make_relay: Callable[..., Relay]) -> None:
    gate = threading.Event()
    with FakeAnthropic(api_key=REAL_KEY, stream_gate=gate) as api:
        relay = make_relay(api.url)
        grant = relay.open("task-1")
        connection = UnixHTTPConnection(grant.socket)
        connection.request("POST", "/v1/messages", message_body(), {"x-api-key": grant.token})
        response = connection.getresponse()
        assert b"message_start" in response.read1(65536)
        started = time.monotonic()
        relay.close("task-1")
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            response.read()
        assert time.monotonic() - started < 5
        connection.close()
        gate.set()


def test_many_concurrent_streams(api: FakeAnthropic, relay: Relay) -> None:
    grants = [relay.open(f"task-{n}") for n in range(4)]
    results: list[int] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        grant = grants[n % len(grants)]
        status, _, body = post(grant.socket, grant.token, message_body())
        with lock:
            results.append(status if b"message_stop" in body else -status)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == [200] * 40
    assert sum(relay.usage(g.task_id).requests for g in grants) == 40


def test_a_silent_client_does_not_hold_a_connection(
    api: FakeAnthropic, make_relay: Callable[..., Relay]
) -> None:
    relay = make_relay(api.url, bounds=RelayBounds(idle_timeout_s=0.5, body_timeout_s=0.5))
    grant = relay.open("task-1")

    silent = socket.socket(socket.AF_UNIX)
    silent.settimeout(10)
    silent.connect(str(grant.socket))
    started = time.monotonic()
    assert silent.recv(100) == b""  # the relay hung up
    assert time.monotonic() - started < 5
    silent.close()

    slow = socket.socket(socket.AF_UNIX)  # headers, then a body that never comes
    slow.settimeout(10)
    slow.connect(str(grant.socket))
    head = f"POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: {grant.token}\r\nContent-Length: 100\r\n\r\n"
    slow.sendall(head.encode() + b"{")
    answer = slow.recv(4096)
    slow.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert api.requests == []


def test_a_body_over_the_cap_is_refused(api: FakeAnthropic, make_relay: Callable[..., Relay]) -> None:
    relay = make_relay(api.url, bounds=RelayBounds(max_body_bytes=2000))
    grant = relay.open("task-1")

    status, _, body = post(grant.socket, grant.token, message_body(padding="x" * 3000))
    assert status == 413
    assert json.loads(body)["error"]["type"] == "request_too_large"

    # Without a length up front (chunked), the cap holds as the body streams in.
    connection = UnixHTTPConnection(grant.socket)
    chunks = iter([b"{" + b"x" * 1500, b"y" * 1500, b"}"])
    connection.request("POST", "/v1/messages", chunks, {"x-api-key": grant.token}, encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 413
    connection.close()
    assert api.requests == []
    assert post(grant.socket, grant.token, message_body())[0] == 200


def test_an_unreachable_api_is_a_502_in_the_apis_shape(make_relay: Callable[..., Relay]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once closed
    relay = make_relay(f"http://127.0.0.1:{port}")
    grant = relay.open("task-1")
    status, _, body = post(grant.socket, grant.token, message_body())
    assert status == 502
    assert json.loads(body)["error"]["type"] == "api_error"


# -- metering -------------------------------------------------------------------------------------------


def test_streamed_and_json_answers_are_metered_per_model(make_relay: Callable[..., Relay]) -> None:
    with FakeAnthropic(api_key=REAL_KEY, usage=CACHE_USAGE) as api:
        relay = make_relay(api.url)
        grant = relay.open("task-1")
        assert post(grant.socket, grant.token, message_body("claude-sonnet-4-5-20250929"))[0] == 200
        assert post(grant.socket, grant.token, message_body("claude-haiku-4-5", stream=False))[0] == 200
        connection = UnixHTTPConnection(grant.socket)  # count_tokens costs nothing and is not metered
        connection.request("POST", "/v1/messages/count_tokens", message_body(), {"x-api-key": grant.token})
        assert connection.getresponse().status == 200
        connection.close()

    usage = relay.usage("task-1")
    assert usage.requests == 2
    assert usage.input_tokens == 62
    assert usage.output_tokens == 34
    assert usage.cache_creation_input_tokens == 2400
    assert usage.cache_read_input_tokens == 10800
    sonnet = usage.models["claude-sonnet-4-5-20250929"]
    haiku = usage.models["claude-haiku-4-5"]
    # 31 in, 17 out, 5400 read, 200 written for 5 minutes and 1000 for an hour, per MTok:
    assert sonnet.cost_usd == pytest.approx((31 * 3 + 17 * 15 + 5400 * 0.3 + 200 * 3.75 + 1000 * 6) / 1e6)
    assert haiku.cost_usd == pytest.approx((31 * 1 + 17 * 5 + 5400 * 0.1 + 200 * 1.25 + 1000 * 2) / 1e6)
    assert usage.cost_usd == pytest.approx(sonnet.cost_usd + haiku.cost_usd)
    assert usage.priced


def test_usage_is_kept_after_close_and_starts_again_on_reopen(api: FakeAnthropic, relay: Relay) -> None:
    grant = relay.open("task-1")
    post(grant.socket, grant.token, message_body())
    snapshot = relay.usage("task-1")
    post(grant.socket, grant.token, message_body())
    assert snapshot.requests == 1  # a snapshot, not a live view
    relay.close("task-1")
    assert relay.usage("task-1").requests == 2
    relay.open("task-1")
    assert relay.usage("task-1").requests == 0
    relay.close("task-1")
    relay.forget("task-1")
    assert relay.usage("task-1").requests == 0
    assert relay.usage("never-seen").cost_usd == 0.0


@pytest.mark.parametrize(
    ("model", "family", "dollars_in_out"),
    [
        ("claude-opus-4-6", "claude-opus-4-6", (5, 25)),
        ("claude-opus-4-5-20251101", "claude-opus-4-5", (5, 25)),
        ("claude-opus-4-1-20250805", "claude-opus-4-1", (15, 75)),
        ("claude-opus-4-20250514", "claude-opus-4-0", (15, 75)),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5", (3, 15)),
        ("claude-sonnet-4-20250514", "claude-sonnet-4-0", (3, 15)),
        ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5", (3, 15)),
        ("claude-haiku-4-5-20251001", "claude-haiku-4-5", (1, 5)),
        ("claude-3-5-haiku-20241022", "claude-3-5-haiku", (0.8, 4)),
        ("Claude-3-7-Sonnet-latest", "claude-3-7-sonnet", (3, 15)),
    ],
)
def test_price_table(model: str, family: str, dollars_in_out: tuple[float, float]) -> None:
    name, price, known = price_for(model)
    assert (name, (price.input, price.output), known) == (family, dollars_in_out, True)
    assert price.cache_write_5m == pytest.approx(price.input * 1.25)
    assert price.cache_read == pytest.approx(price.input * 0.1)


def test_unknown_models_and_extras_are_priced_like_the_cli() -> None:
    assert price_for("some-new-model") == ("unknown", price_for("claude-opus-4-5")[1], False)
    usage = {"input_tokens": 1_000_000, "server_tool_use": {"web_search_requests": 3}}
    assert cost_usd("claude-sonnet-4-5", usage) == pytest.approx(3 + 0.03)
    assert cost_usd("claude-opus-4-6", {"output_tokens": 1_000_000, "speed": "fast"}) == pytest.approx(150)


def test_the_event_stream_meter_survives_any_chunking() -> None:
    from tests.fakes.fake_anthropic import sse_body

    blocks = [{"type": "text", "text": "x" * 5000}]
    stream = sse_body("msg_1", "claude-haiku-4-5", blocks, "end_turn", CACHE_USAGE).replace(b"\n", b"\r\n")
    whole = metering._SseMeter()
    whole.feed(stream)
    bytewise = metering._SseMeter()
    for n in range(len(stream)):
        bytewise.feed(stream[n : n + 1])
    for meter in (whole, bytewise):
        assert meter.model == "claude-haiku-4-5"
        assert meter.usage["output_tokens"] == 17
        assert meter.usage["cache_read_input_tokens"] == 5400


# -- limits ---------------------------------------------------------------------------------------------


def test_a_rate_limit_says_when_it_resets(api: FakeAnthropic, relay: Relay, clock: list[float]) -> None:
    grant = relay.open("task-1")
    assert relay.last_limit() is None
    api.limits.rate_limit(retry_after=30)

    status, headers, _ = post(grant.socket, grant.token, message_body())

    assert status == 429
    assert headers["retry-after"] == "30"  # the CLI sees the API's own answer
    seen = relay.last_limit()
    assert seen is not None
    assert (seen.status, seen.reset_at, seen.seen_at, seen.transient) == (429, clock[0] + 30, clock[0], False)
    assert seen.task_id == "task-1"
    assert "rate limit" in seen.message
    assert relay.usage("task-1").refused == 1
    assert relay.usage("task-1").requests == 0

    api.limits.clear()
    clock[0] += 40
    post(grant.socket, grant.token, message_body())
    assert relay.last_ok() == clock[0]
    assert relay.last_limit() == seen  # kept: last_ok() after seen_at says it is over


def test_a_usage_limit_resets_at_the_unified_reset(
    api: FakeAnthropic, relay: Relay, clock: list[float]
) -> None:
    grant = relay.open("task-1")
    api.limits.usage_limit(resets_at=clock[0] + 7200)
    post(grant.socket, grant.token, message_body())
    seen = relay.last_limit()
    assert seen is not None
    assert (seen.status, seen.reset_at) == (429, clock[0] + 7200)


def test_the_rfc3339_bucket_resets_are_used_without_retry_after(
    api: FakeAnthropic, relay: Relay, clock: list[float]
) -> None:
    grant = relay.open("task-1")
    api.limits.rate_limit(retry_after=None, resets_at=clock[0] + 90)
    post(grant.socket, grant.token, message_body())
    seen = relay.last_limit()
    assert seen is not None and seen.reset_at == clock[0] + 90


def test_an_overload_is_recorded_as_transient(api: FakeAnthropic, relay: Relay) -> None:
    grant = relay.open("task-1")
    api.limits.overloaded()
    status, _, _ = post(grant.socket, grant.token, message_body())
    seen = relay.last_limit()
    assert status == 529
    assert seen is not None and (seen.status, seen.transient, seen.reset_at) == (529, True, None)


# -- the forwarder (node) -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _forwarder(grant_socket: Path, port: int, command: list[str]) -> list[str]:
    assert NODE is not None
    script = str(Path(relay_module.__file__).parents[1] / "data" / FORWARDER_NAME)
    return [NODE, script, "--port", str(port), "--socket", str(grant_socket), "--", *command]


CLIENT = """
import json, os, sys, urllib.request
prompt = sys.stdin.read()
request = urllib.request.Request(
    os.environ["ANTHROPIC_BASE_URL"] + "/v1/messages",
    data=json.dumps({"model": "claude-haiku-4-5", "max_tokens": 5, "messages": [prompt]}).encode(),
    headers={"x-api-key": os.environ["ANTHROPIC_API_KEY"], "content-type": "application/json"},
)
with urllib.request.urlopen(request) as answer:
    print(answer.status, json.load(answer)["model"], prompt)
sys.exit(3)
"""


@needs_node
def test_the_forwarder_pipes_to_the_socket_and_returns_the_commands_exit_code(
    api: FakeAnthropic, relay: Relay
) -> None:
    grant = relay.open("task-1")
    port = _free_port()
    run = subprocess.run(
        _forwarder(grant.socket, port, ["python3", "-c", CLIENT]),
        input="from stdin",
        env={**os.environ, **grant.env, "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{port}"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 3, run.stderr
    assert run.stdout.strip() == "200 claude-haiku-4-5 from stdin"
    assert relay.usage("task-1").requests == 1


TWICE = """
import os, sys, urllib.error, urllib.request
def ask():
    request = urllib.request.Request(
        os.environ["ANTHROPIC_BASE_URL"] + "/v1/messages",
        data=b'{"model": "claude-haiku-4-5", "max_tokens": 5, "messages": []}',
        headers={"x-api-key": os.environ["ANTHROPIC_API_KEY"], "content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request) as answer:
            answer.read()  # the whole answer, as the CLI reads it (urlopen returns at the headers)
            return answer.status
    except urllib.error.HTTPError as error:
        error.read()
        return error.code
for _ in range(3):
    print(ask(), flush=True)
    sys.stdin.readline()
"""


@needs_node
def test_a_container_outlives_a_daemon_restart(api: FakeAnthropic, make_relay: Callable[..., Relay]) -> None:
    first = make_relay(api.url)
    grant = first.open("task-1")
    port = _free_port()
    process = subprocess.Popen(
        _forwarder(grant.socket, port, ["python3", "-c", TWICE]),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, **grant.env, "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{port}"},
        text=True,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        assert process.stdout.readline().strip() == "200"
        first.stop()  # the daemon goes away; the container keeps running
        process.stdin.write("\n")
        process.stdin.flush()
        # The request waits in the forwarder while the socket is gone (the CLI's few retries are not
        # spent on the gap) and goes through once the new daemon opened the task again.
        second = make_relay(api.url)
        assert second.open("task-1") == grant  # the new daemon finds its tasks and opens them again
        assert process.stdout.readline().strip() == "200"
        process.stdin.write("\n")
        process.stdin.flush()
        assert process.stdout.readline().strip() == "200"
        process.stdin.close()
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
    # The relay books an answer as its last bytes go out: the client may hold it a moment earlier.
    wait_until(lambda: second.usage("task-1").requests == 2, 10, "the second daemon's meter")
    assert first.usage("task-1").requests == 1


@needs_node
def test_the_forwarder_answers_503_while_the_relay_is_away(short_dir: Path) -> None:
    port = _free_port()
    command = ["python3", "-c", CLIENT.replace("sys.exit(3)", "")]
    run = subprocess.run(
        _forwarder(short_dir / "no.sock", port, command),
        env={
            **os.environ,
            "ANTHROPIC_API_KEY": "t",
            "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{port}",
            "CIS_RELAY_WAIT_MS": "500",  # how long a connection waits for the socket (3 minutes by default)
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 1
    assert "HTTP Error 503" in run.stderr


@needs_node
def test_the_forwarder_refuses_a_port_in_use_and_bad_arguments(short_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run(
            _forwarder(short_dir / "x.sock", port, ["true"]), capture_output=True, text=True, timeout=30
        )
    assert run.returncode == 71
    assert f"127.0.0.1:{port} is in use" in run.stderr
    bad = subprocess.run(_forwarder(short_dir / "x.sock", port, [])[:-1], capture_output=True, text=True)
    assert bad.returncode == 2 and "no command" in bad.stderr
    missing = subprocess.run(
        _forwarder(short_dir / "x.sock", _free_port(), ["/nonexistent/cmd"]), capture_output=True, text=True
    )
    assert missing.returncode == 127


@needs_node
def test_the_forwarder_passes_sigterm_to_the_command(short_dir: Path) -> None:
    sleeper = "import signal; print('ready', flush=True); signal.pause()"  # blocks until a signal
    process = subprocess.Popen(
        _forwarder(short_dir / "x.sock", _free_port(), ["python3", "-c", sleeper]),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 128 + signal.SIGTERM
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()


def test_forwarded_command_shape() -> None:
    assert forwarded_command(["claude", "-p"]) == [
        "node",
        "/relay/relay-forward.js",
        "--port",
        "47800",
        "--socket",
        "/relay/relay.sock",
        "--",
        "claude",
        "-p",
    ]


# -- the real Claude Code CLI: its own cost report equals the relay's ------------------------------------

CLI_ENV = {
    "DISABLE_AUTOUPDATER": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_TELEMETRY": "1",
    "CLAUDE_CODE_MAX_RETRIES": "0",
}
CLI_ARGS = ["-p", "--output-format", "json", "--dangerously-skip-permissions", "--max-turns", "10"]


def _assert_same_cost(result: dict[str, Any], relay: Relay, task_id: str) -> None:
    assert result["is_error"] is False, result
    usage = relay.usage(task_id)
    assert usage.requests >= 2
    # "The relay's cost per task equals what the CLI reports (within rounding)."
    assert usage.cost_usd == pytest.approx(result["total_cost_usd"], rel=1e-9, abs=1e-12)
    cli_tokens = sum(m["inputTokens"] for m in result["modelUsage"].values())
    assert usage.input_tokens == cli_tokens
    assert usage.cache_read_input_tokens == sum(
        m["cacheReadInputTokens"] for m in result["modelUsage"].values()
    )


@needs_node
@pytest.mark.skipif(
    shutil.which("claude") is None, reason="the Claude Code CLI is not installed on this host"
)
@pytest.mark.parametrize(
    ("credential", "model"),
    [
        ("api_key", None),  # the CLI's default model
        ("api_key", "claude-sonnet-4-5-20250929"),
        ("api_key", "claude-opus-4-1"),
        ("oauth", "claude-haiku-4-5"),
    ],
)
def test_the_real_cli_on_the_host_reports_the_relays_cost(
    make_relay: Callable[..., Relay], tmp_path: Path, credential: str, model: str | None
) -> None:
    secret = REAL_KEY if credential == "api_key" else REAL_OAUTH
    with FakeAnthropic(api_key=secret, files={"A.md": "a\n"}, usage=CACHE_USAGE) as api:
        relay = make_relay(
            api.url, ClaudeCredential(**{"api_key" if credential == "api_key" else "oauth_token": secret})
        )
        grant = relay.open("task-1")
        port = _free_port()
        work = tmp_path / "work"
        work.mkdir()
        run = subprocess.run(
            _forwarder(grant.socket, port, ["claude", *CLI_ARGS, *(["--model", model] if model else [])]),
            input="Please add A.md.",
            cwd=work,
            env={
                **os.environ,
                **CLI_ENV,
                **grant.env,
                "IS_SANDBOX": "1",  # the tests may run as root
                "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{port}",
            },
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        _assert_same_cost(json.loads(run.stdout), relay, "task-1")
        assert (work / "A.md").read_text() == "a\n"
        assert {r.headers.get("x-api-key") or r.headers.get("authorization") for r in api.model_calls} == {
            secret if credential == "api_key" else f"Bearer {secret}"
        }


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_real_cli_in_the_agent_image_with_no_network(
    docker_client: Any, claude_image: str, make_relay: Callable[..., Relay], tmp_path: Path
) -> None:
    """The containment the relay exists for: network "none", the relay directory mounted at /relay, the
    token in the env, the forwarder in front of the CLI — and the CLI's own cost report equals the relay's."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    workspace.chmod(0o777)  # the agent runs as uid 1000, the tests often as root
    task = tmp_path / "task"
    task.mkdir()
    (task / "prompt.md").write_text("Please add HELLO.md.\n")
    task.chmod(0o755)
    (task / "prompt.md").chmod(0o644)
    with FakeAnthropic(api_key=REAL_KEY, files={"HELLO.md": "hello\n"}, usage=CACHE_USAGE) as api:
        owner = (1000, 1000) if os.geteuid() == 0 else None
        relay = make_relay(api.url, socket_owner=owner)
        grant = relay.open("task-1")
        container = docker_client.containers.run(
            claude_image,
            forwarded_command(["sh", "-c", 'exec claude "$@" < /task/prompt.md', "claude", *CLI_ARGS]),
            detach=True,
            user="1000:1000",
            cap_drop=["ALL"],
            network_mode="none",
            working_dir="/workspace",
            volumes={
                str(workspace): {"bind": "/workspace", "mode": "rw"},
                str(task): {"bind": "/task", "mode": "ro"},
                str(grant.directory): {"bind": "/relay", "mode": "ro"},  # connect() needs no write
            },
            environment={**CLI_ENV, **grant.env, "ANTHROPIC_BASE_URL": "http://127.0.0.1:47800"},
            labels={"claude-issue-solver.test": "test_relay"},
        )
        try:
            status = container.wait(timeout=180)
            stdout = container.logs(stdout=True, stderr=False).decode()
            stderr = container.logs(stdout=False, stderr=True).decode()
        finally:
            container.remove(force=True)
        assert status["StatusCode"] == 0, stderr
        result = json.loads(stdout)
        _assert_same_cost(result, relay, "task-1")
        assert (workspace / "HELLO.md").read_text() == "hello\n"
        assert {r.headers.get("x-api-key") for r in api.model_calls} == {REAL_KEY}
        assert REAL_KEY not in stdout + stderr


def test_each_run_is_metered_once_across_a_retry_and_a_restart(
    api: FakeAnthropic, make_relay: Callable[..., Relay], tmp_path: Path
) -> None:
    """AgentAccess.take_metered: what a run added, never twice, and not less when the meter restarts
    (a retried task is opened anew; a restarted daemon has a new relay)."""
    from claude_issue_solver.config import load_config
    from claude_issue_solver.run.agent_access import AgentAccess, add_metered

    config = load_config(environ={"HOME": str(tmp_path), "STATE_DIR": str(tmp_path / "s")}, cwd=tmp_path)

    def access_with(relay: Relay) -> AgentAccess:
        return AgentAccess(config, None, relay)  # type: ignore[arg-type]

    def one_call(access: AgentAccess) -> None:
        env, directory = access._claude("task-1")
        assert directory is not None
        post(directory / "relay.sock", env["ANTHROPIC_API_KEY"], message_body())

    access = access_with(make_relay(api.url))
    total: dict[str, Any] | None = None
    one_call(access)
    one_call(access)
    first = access.take_metered("task-1")
    assert first is not None and first["requests"] == 2
    assert access.take_metered("task-1") is None  # nothing new: nothing booked twice
    total = add_metered(total, first)
    access.close("task-1")  # the run ended; the task is retried: a new meter from zero
    one_call(access)
    retry = access.take_metered("task-1")
    assert (
        retry is not None
        and retry["requests"] == 1
        and retry["cost_usd"] == pytest.approx(first["cost_usd"] / 2)
    )
    total = add_metered(total, retry)
    access.relay.stop()  # type: ignore[union-attr]
    restarted = access_with(make_relay(api.url))  # a new daemon: a new relay, a new AgentAccess
    one_call(restarted)
    after = restarted.take_metered("task-1")
    assert after is not None and after["requests"] == 1
    total = add_metered(total, after)
    assert total["requests"] == 4 and total["cost_usd"] == pytest.approx(2 * first["cost_usd"])
