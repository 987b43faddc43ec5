"""Webhook deliveries: signature, size, JSON and delivery-id checks, then the poke (no Docker needed)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from click.testing import CliRunner

from claude_issue_solver.cli.main import main
from claude_issue_solver.config import Config, ConfigError
from claude_issue_solver.daemon.loop import Daemon, Outcome
from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.github.watcher import Watcher
from claude_issue_solver.github.webhooks import SEEN_LIMIT, WebhookReceiver, signature, signature_ok
from claude_issue_solver.store.queue import Task, TaskQueue, TaskState
from claude_issue_solver.store.state import StateError, StateStore

SECRET = "whsec-loopback-0123456789abcdef"


def delivery(
    event: str = "issues", action: str = "labeled", repo: str = "acme/widgets", **extra: Any
) -> tuple[dict[str, str], bytes]:
    """Headers and body shaped like GitHub's (the payload trimmed to what we read)."""
    payload = {
        "action": action,
        "issue": {"number": 1, "title": "t", "labels": [{"name": "Claude"}]},
        "label": {"name": "Claude"},
        "repository": {"full_name": repo, "name": repo.split("/")[1], "owner": {"login": repo.split("/")[0]}},
        "sender": {"login": "maintainer"},
        **extra,
    }
    body = json.dumps(payload).encode()
    headers = {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-GitHub-Hook-ID": "42",
        "X-Hub-Signature-256": signature(SECRET, body),
        "User-Agent": "GitHub-Hookshot/abc123",
        "Content-Type": "application/json",
    }
    return headers, body


class Receiver:
    def __init__(self, store: StateStore) -> None:
        self.poked: list[str] = []
        self.installations = 0
        self.results: list[str] = []
        self.receiver = WebhookReceiver(
            store,
            SECRET,
            max_bytes=4096,
            on_repository=self.poked.append,
            on_installation=self._installed,
            on_result=self.results.append,
        )

    def _installed(self) -> None:
        self.installations += 1


def test_signature_is_github_s_hmac() -> None:
    # The example from GitHub's documentation of validating webhook deliveries.
    expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert signature("It's a Secret to Everybody", b"Hello, World!") == expected
    assert signature_ok("It's a Secret to Everybody", b"Hello, World!", expected)
    assert not signature_ok("It's a Secret to Everybody", b"Hello, World?", expected)
    assert not signature_ok("It's a Secret to Everybody", b"Hello, World!", None)


def test_a_signed_relevant_delivery_pokes_its_repository(store: StateStore) -> None:
    r = Receiver(store)
    headers, body = delivery()
    answer = r.receiver.handle(headers, body)
    assert (answer.status, answer.result) == (202, "accepted")
    assert r.poked == ["acme/widgets"]
    last = store.read()["webhooks"]["last_delivery"]
    assert last["id"] == headers["X-GitHub-Delivery"] and last["event"] == "issues.labeled"


@pytest.mark.parametrize(
    ("change", "status", "result"),
    [
        ("unsigned", 401, "bad_signature"),
        ("forged", 401, "bad_signature"),
        ("other-secret", 401, "bad_signature"),
        ("oversized", 413, "too_large"),
        ("malformed", 400, "malformed"),
        ("no-delivery-id", 400, "malformed"),
    ],
)
def test_bad_deliveries_change_nothing(store: StateStore, change: str, status: int, result: str) -> None:
    r = Receiver(store)
    headers, body = delivery()
    if change == "unsigned":
        del headers["X-Hub-Signature-256"]
    elif change == "forged":
        body = body.replace(b"acme/widgets", b"acme/gadgets")  # signature of the original body
    elif change == "other-secret":
        headers["X-Hub-Signature-256"] = signature("guessed", body)
    elif change == "oversized":
        body = json.dumps({"pad": "x" * 5000}).encode()
        headers["X-Hub-Signature-256"] = signature(SECRET, body)
    elif change == "malformed":
        body = b"{not json"
        headers["X-Hub-Signature-256"] = signature(SECRET, body)
    elif change == "no-delivery-id":
        del headers["X-GitHub-Delivery"]
    answer = r.receiver.handle(headers, body)
    assert (answer.status, answer.result) == (status, result)
    assert r.poked == [] and r.results == [result]
    r.receiver.flush()
    book = store.read().get("webhooks", {})
    assert "last_delivery" not in book
    assert book.get("signature_failures", 0) == (1 if status == 401 else 0)


def test_a_replay_is_a_no_op_even_after_a_restart(store: StateStore) -> None:
    headers, body = delivery()
    first = Receiver(store)
    assert first.receiver.handle(headers, body).status == 202
    assert first.receiver.handle(headers, body).result == "duplicate"
    restarted = Receiver(StateStore(store.path))
    assert restarted.receiver.handle(headers, body).result == "duplicate"
    assert first.poked == ["acme/widgets"] and restarted.poked == []


def test_the_delivery_history_is_bounded(store: StateStore) -> None:
    r = Receiver(store)
    with store.transaction() as data:
        data["webhooks"] = {"seen": [f"old-{i}" for i in range(SEEN_LIMIT)]}
    headers, body = delivery()
    r.receiver.handle(headers, body)
    seen = store.read()["webhooks"]["seen"]
    assert len(seen) == SEEN_LIMIT and seen[-1] == headers["X-GitHub-Delivery"] and "old-0" not in seen


def test_irrelevant_events_are_acknowledged_and_ignored(store: StateStore) -> None:
    r = Receiver(store)
    for event, action in [("issues", "assigned"), ("push", ""), ("star", "created"), ("ping", "")]:
        headers, body = delivery(event, action)
        answer = r.receiver.handle(headers, body)
        assert answer.status == 202 and answer.result == "ignored", (event, answer)
    assert r.poked == []


def test_each_event_we_act_on(store: StateStore) -> None:
    r = Receiver(store)
    for event, action in [
        ("issues", "labeled"),
        ("issues", "unlabeled"),
        ("issues", "edited"),
        ("issues", "closed"),
        ("issue_comment", "created"),
        ("pull_request_review", "submitted"),
        ("pull_request_review_comment", "created"),
    ]:
        headers, body = delivery(event, action)
        assert r.receiver.handle(headers, body).result == "accepted", (event, action)
    assert r.poked == ["acme/widgets"] * 7
    headers, body = delivery("installation_repositories", "added")
    assert r.receiver.handle(headers, body).result == "accepted" and r.installations == 1


def test_webhooks_need_a_secret(make_config: Callable[..., Config]) -> None:
    config = make_config(
        GITHUB_TOKEN="t", GITHUB_REPOS="acme/widgets", LISTEN_ADDRESS="127.0.0.1:8080", WEBHOOK_SECRET=""
    )
    with pytest.raises(ConfigError, match="WEBHOOK_SECRET is not set"):
        config.require_daemon_settings()
    make_config(
        GITHUB_TOKEN="t", GITHUB_REPOS="acme/widgets", LISTEN_ADDRESS="127.0.0.1:8080", WEBHOOKS="false"
    ).require_daemon_settings()
    assert make_config(LISTEN_ADDRESS="0.0.0.0:9").listen_address == ("0.0.0.0", 9)
    assert make_config(LISTEN_ADDRESS="8080").listen_address == ("127.0.0.1", 8080)  # loopback by default
    assert make_config(LISTEN_ADDRESS="[::1]:8080").listen_address == ("::1", 8080)
    with pytest.raises(ConfigError, match="LISTEN_ADDRESS='web:http' is not valid: expected host:port"):
        make_config(LISTEN_ADDRESS="web:http")
    with pytest.raises(ConfigError, match="WEBHOOK_PATH='hook' is not valid"):
        make_config(WEBHOOK_PATH="hook")
    assert make_config(WEBHOOK_SECRET=SECRET).redacted()["WEBHOOK_SECRET"] == "***"


def test_a_poke_polls_that_repository_only(
    github: FakeGitHub, watcher_for: Callable[..., Watcher], queue: TaskQueue
) -> None:
    class Idle:
        def run(self, task: Task, control: object) -> Outcome | None:
            return None

        resume = run

        def reconcile(self, live: list[Task]) -> None:
            pass

    watcher = watcher_for()
    daemon = Daemon(queue, Idle(), watcher=watcher, poll_interval=600, poll_one=watcher.poll_now)
    daemon.run_once()  # the first full poll
    queue.pause()  # keep what gets queued pending, to look at it
    github.create_issue("acme/widgets", "Now", labels=["Claude"], user="maintainer")
    github.create_issue("acme/gadgets", "Later", labels=["Claude"], user="maintainer")
    github.reset_counts()
    daemon.poke("acme/widgets")
    daemon.run_once()
    assert [(t.repo, t.state) for t in queue.list()] == [("acme/widgets", TaskState.PENDING)]
    assert github.requests_to("/api/v3/repos/acme/gadgets", "GET") == []


def test_status_shows_the_last_delivery_and_signature_failures(tmp_path: Path, state_dir: Path) -> None:
    store = StateStore(state_dir / "state.json")
    r = Receiver(store)
    headers, body = delivery()
    r.receiver.handle(headers, body)
    r.receiver.handle({**headers, "X-Hub-Signature-256": "sha256=00"}, body)
    r.receiver.flush()
    env = {
        "HOME": str(tmp_path),
        "STATE_DIR": str(state_dir),
        "GITHUB_REPOS": "acme/widgets",
        "LISTEN_ADDRESS": "127.0.0.1:8080",
        "WEBHOOK_SECRET": SECRET,
    }
    result = CliRunner().invoke(main, ["status"], env=env)
    assert result.exit_code == 3, result.output  # the daemon is not running
    line = next(line for line in result.output.splitlines() if line.startswith("listener:"))
    assert line.startswith("listener: http://127.0.0.1:8080 (webhooks on /webhook, /metrics, /healthz)")
    assert "last delivery issues.labeled for acme/widgets at 20" in line
    assert "1 refused for a missing or wrong signature (last at 20" in line
    assert SECRET not in result.output
    payload = json.loads(CliRunner().invoke(main, ["status", "--json"], env=env).output)
    assert payload["listener"]["last_delivery"]["id"] == headers["X-GitHub-Delivery"]
    assert payload["listener"]["signature_failures"] == 1


def test_start_refuses_a_port_in_use_in_one_line(tmp_path: Path, state_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(tmp_path),
            "STATE_DIR": str(state_dir),
            "GITHUB_TOKEN": "ghp_unused",
            "GITHUB_REPOS": "acme/widgets",
            "GITHUB_API_URL": "http://127.0.0.1:9/api/v3",
            "ANTHROPIC_API_KEY": "sk-ant-api03-unused",
            "LISTEN_ADDRESS": f"127.0.0.1:{port}",
            "WEBHOOK_SECRET": SECRET,
        }
        result = subprocess.run(
            [sys.executable, "-m", "claude_issue_solver", "start"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"Error: cannot start: LISTEN_ADDRESS=127.0.0.1:{port} cannot be bound: Address already in use\n"
    )


def test_a_delivery_is_only_a_hint(
    github: FakeGitHub, watcher_for: Callable[..., Watcher], queue: TaskQueue, store: StateStore
) -> None:
    """Late, out-of-order or about an untrusted labeler: the poll it causes reads GitHub as it is now."""

    class Idle:
        def run(self, task: Task, control: object) -> Outcome | None:
            return None

        resume = run

        def reconcile(self, live: list[Task]) -> None:
            pass

    watcher = watcher_for()
    daemon = Daemon(queue, Idle(), watcher=watcher, poll_interval=600, poll_one=watcher.poll_now)
    r = WebhookReceiver(store, SECRET, max_bytes=65536, on_repository=daemon.poke)
    daemon.run_once()
    gone = github.create_issue("acme/widgets", "Label came and went", user="maintainer")
    github.add_label("acme/widgets", gone["number"], "Claude", actor="maintainer")
    github.remove_label("acme/widgets", gone["number"], "Claude", actor="maintainer")
    stranger = github.create_issue("acme/widgets", "By a stranger", user="drive-by")
    github.add_label("acme/widgets", stranger["number"], "Claude", actor="drive-by")
    for number in (gone["number"], stranger["number"]):
        headers, body = delivery(issue={"number": number})
        assert r.handle(headers, body).status == 202
    headers, body = delivery(repo="someone/else")  # not watched: no request at all
    github.reset_counts()
    assert r.handle(headers, body).status == 202
    daemon.run_once()
    assert queue.list() == []
    assert not [req for req in github.requests if "someone" in req.path]
    assert [req.path for req in github.requests if req.path.endswith("/issues")] == [
        "/api/v3/repos/acme/widgets/issues"
    ]


def test_a_form_encoded_delivery_is_read_too(store: StateStore) -> None:
    r = Receiver(store)
    headers, body = delivery()
    form = urlencode({"payload": body.decode()}).encode()
    headers = {
        **headers,
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Hub-Signature-256": signature(SECRET, form),
    }
    assert r.receiver.handle(headers, form).result == "accepted" and r.poked == ["acme/widgets"]
    empty = b"other=1"
    headers = {**headers, "X-GitHub-Delivery": "x", "X-Hub-Signature-256": signature(SECRET, empty)}
    assert r.receiver.handle(headers, empty).status == 400


def test_a_replay_under_a_fresh_id_is_a_no_op_even_after_a_restart(store: StateStore) -> None:
    headers, body = delivery()
    first = Receiver(store)
    assert first.receiver.handle(headers, body).status == 202
    replay = {**headers, "X-GitHub-Delivery": str(uuid.uuid4())}
    assert first.receiver.handle(replay, body).result == "duplicate"
    first.receiver.flush()
    restarted = Receiver(StateStore(store.path))
    again = {**headers, "X-GitHub-Delivery": str(uuid.uuid4())}
    assert restarted.receiver.handle(again, body).result == "duplicate"
    assert first.poked == ["acme/widgets"] and restarted.poked == []
    # The same body under another event is another delivery (the signature does not cover the event).
    other = {**headers, "X-GitHub-Event": "issue_comment", "X-GitHub-Delivery": str(uuid.uuid4())}
    assert restarted.receiver.handle(other, body).result == "ignored"  # issue_comment.labeled


@pytest.mark.parametrize("bad", ["a" * 65, "x y", "id\nInjected: header", "../../state.json"])
def test_a_delivery_id_that_is_not_a_short_token_is_refused(store: StateStore, bad: str) -> None:
    r = Receiver(store)
    headers, body = delivery()
    answer = r.receiver.handle({**headers, "X-GitHub-Delivery": bad}, body)
    assert (answer.status, answer.result) == (400, "malformed")
    r.receiver.flush()
    assert r.poked == [] and "webhooks" not in store.read()
    assert r.receiver.handle(headers, body).status == 202  # its real id


def test_a_history_that_cannot_be_written_is_kept_and_written_later(store: StateStore) -> None:
    class FullDisk(StateStore):
        full = True

        def _write(self, payload: bytes) -> None:
            if self.full:
                raise StateError(f"cannot write the state file {self.path}: No space left on device")
            super()._write(payload)

    disk = FullDisk(store.path)
    r = Receiver(disk)
    headers, body = delivery()
    assert r.receiver.handle(headers, body).status == 202  # answered, and poked, though not written
    assert r.poked == ["acme/widgets"]
    assert r.receiver.handle(headers, body).result == "duplicate"  # remembered meanwhile
    disk.full = False
    r.receiver.flush()
    book = store.read()["webhooks"]
    assert book["seen"] == [headers["X-GitHub-Delivery"]] and book["deliveries"] == 1
