"""The HTTP listener inside a running daemon: signed deliveries over loopback, /metrics, /healthz.

The daemon is the real one (``app.build``: watcher, pipeline, Docker backend with the fake agent image)
running ``Daemon.run`` in a thread against the loopback GitHub, at ``POLL_INTERVAL=600`` so that only a
webhook can make it look at a repository within the test's time.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from claude_issue_solver.app import Parts, build
from claude_issue_solver.config import Config, ConfigError
from claude_issue_solver.daemon import metrics
from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.store.queue import TaskState
from tests.e2e import CLIENT, labelled
from tests.github_fixtures import TOKEN
from tests.test_webhooks import SECRET, delivery
from tests.waiting import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.skipif(CLIENT is None, reason="no Docker daemon answers")]


@dataclass
class Live:
    parts: Parts
    url: str
    thread: threading.Thread

    def post(self, headers: dict[str, str], body: bytes) -> requests.Response:
        return requests.post(self.url + "/webhook", data=body, headers=headers, timeout=10)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = requests.get(self.url + "/metrics", timeout=10).text
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }


@pytest.fixture
def live(e2e_config: Callable[..., Config], no_leftover_containers: None) -> Iterator[Callable[..., Live]]:
    started: list[Live] = []

    def start(**settings: str) -> Live:
        config = e2e_config(
            **{"LISTEN_ADDRESS": "127.0.0.1:0", "WEBHOOK_SECRET": SECRET, "POLL_INTERVAL": "600", **settings}
        )
        parts = build(config)
        assert parts.listener is not None
        thread = threading.Thread(target=parts.daemon.run, name="daemon-under-test", daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{parts.listener.port}"
        wait_until(lambda: _answers(url), 10, "the listener")
        live = Live(parts, url, thread)
        started.append(live)
        return live

    yield start
    for live in started:
        live.parts.daemon.handle_signal(signal.SIGTERM)
        live.thread.join(30)
        assert not live.thread.is_alive()
        with pytest.raises(requests.ConnectionError):
            requests.get(live.url + "/healthz", timeout=2)  # stopped with the daemon


def settled(daemon: Live) -> None:
    """The daemon has looked at acme/widgets at start and polled it on schedule: at POLL_INTERVAL=600
    nothing but a webhook looks again within the test. (The schedule's first round polls at once after
    the start-up check; a label put on before that poll ended would be found by it.)"""
    store, schedule = daemon.parts.queue.store, daemon.parts.watcher.schedule
    looked = lambda: "acme/widgets" in store.read().get("watcher", {}).get("repos", {})  # noqa: E731
    wait_until(looked, 30, "the first look")
    wait_until(lambda: schedule.polled_at("acme/widgets") is not None, 30, "the first scheduled poll")


def _answers(url: str) -> bool:
    try:
        return requests.get(url + "/healthz", timeout=1).status_code in (200, 503)
    except requests.ConnectionError:
        return False


def test_a_signed_label_delivery_starts_the_task_within_two_seconds(
    github: FakeGitHub, live: Callable[..., Live], state_dir: Path
) -> None:
    daemon = live()
    settled(daemon)
    before = daemon.metrics()
    issue = labelled(github, "Fix it", "edit")
    headers, body = delivery(issue={"number": issue["number"]})
    sent = time.monotonic()
    assert daemon.post(headers, body).status_code == 202
    wait_until(
        lambda: any(t.state is not TaskState.PENDING for t in daemon.parts.queue.list()),
        2.0,
        "the task to run",
    )
    assert time.monotonic() - sent <= 2.0
    wait_until(lambda: all(t.state is TaskState.COMPLETED for t in daemon.parts.queue.list()), 90, "the task")
    after = daemon.metrics()
    accepted = ("claude_issue_solver_webhook_deliveries_total", (("result", "accepted"),))
    assert after[accepted] == before[accepted] + 1
    counted = ("claude_issue_solver_github_requests_total", (("outcome", "counted"),))
    assert after[counted] > before[counted]
    assert after[("claude_issue_solver_tasks", (("kind", "issue"), ("state", "completed")))] == 1
    assert after[("claude_issue_solver_tasks", (("kind", "issue"), ("state", "pending")))] == 0
    finished = ("claude_issue_solver_task_duration_seconds_count", (("state", "completed"),))
    assert before.get(finished, 0) == 0 and after[finished] == 1
    assert after[("claude_issue_solver_agent_duration_seconds_count", ())] == 1
    assert after[("claude_issue_solver_cost_usd_total", ())] > 0
    assert after[("claude_issue_solver_queue_depth", ())] == 0
    assert after[("claude_issue_solver_poll_healthy", (("repo", "acme/widgets"),))] == 1
    assert after[("claude_issue_solver_github_rate_limit_remaining", (("repo", "acme/widgets"),))] > 0
    # The same delivery again (GitHub's "redeliver"): acknowledged, nothing new.
    assert daemon.post(headers, body).status_code == 200
    assert len(daemon.parts.queue.list()) == 1


def test_bad_deliveries_queue_nothing(github: FakeGitHub, live: Callable[..., Live]) -> None:
    daemon = live()
    settled(daemon)
    issue = labelled(github, "Not through a forgery", "demo")
    headers, body = delivery(issue={"number": issue["number"]})
    unsigned = {k: v for k, v in headers.items() if k != "X-Hub-Signature-256"}
    assert daemon.post(unsigned, body).status_code == 401
    forged = {**headers, "X-Hub-Signature-256": "sha256=" + "0" * 64}
    assert daemon.post(forged, body).status_code == 401
    assert daemon.post(headers, b"x" * 2_000_000).status_code == 413
    assert daemon.post(headers, b"{oops").status_code == 401  # the signature is checked first
    assert requests.get(daemon.url + "/webhook", timeout=5).status_code == 405
    assert requests.get(daemon.url + "/nothing", timeout=5).status_code == 404
    daemon.parts.daemon.poll_poked()  # whatever a refused delivery might have asked for, polled now
    assert daemon.parts.queue.list() == []
    wait_until(
        lambda: daemon.parts.queue.store.read().get("webhooks", {}).get("signature_failures") == 3,
        5,
        "the signature failures to be recorded",
    )
    metrics = daemon.metrics()
    assert metrics[("claude_issue_solver_webhook_deliveries_total", (("result", "bad_signature"),))] == 3
    assert metrics[("claude_issue_solver_webhook_deliveries_total", (("result", "too_large"),))] == 1


def test_healthz_flips_with_github_s_answer(
    github: FakeGitHub, live: Callable[..., Live], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Healthy means a success within three intervals plus a slack (calm successes are written once a
    # minute); a short slack keeps the flip within seconds. The revoke waits for a recorded success, so
    # the check is the same whichever came first, the daemon's first poll or this test's revoke.
    monkeypatch.setattr(metrics, "HEALTH_SLACK", 3.0)
    daemon = live(POLL_INTERVAL="1")
    store = daemon.parts.queue.store
    wait_until(
        lambda: store.read().get("watcher", {}).get("repos", {}).get("acme/widgets", {}).get("last_success"),
        10,
        "a recorded poll",
    )
    wait_until(lambda: requests.get(daemon.url + "/healthz", timeout=5).status_code == 200, 10, "healthy")
    github.revoke_token(TOKEN)
    wait_until(lambda: requests.get(daemon.url + "/healthz", timeout=5).status_code == 503, 20, "unhealthy")
    answer = requests.get(daemon.url + "/healthz", timeout=5).text
    assert "acme/widgets" in answer and "rejected the credential" in answer and TOKEN not in answer
    assert daemon.metrics()[("claude_issue_solver_poll_healthy", (("repo", "acme/widgets"),))] == 0
    github.add_token(TOKEN)
    wait_until(lambda: requests.get(daemon.url + "/healthz", timeout=5).status_code == 200, 30, "recovered")


def test_a_port_in_use_refuses_to_start(e2e_config: Callable[..., Config]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = e2e_config(LISTEN_ADDRESS=f"127.0.0.1:{port}", WEBHOOK_SECRET=SECRET)
        with pytest.raises(ConfigError, match=f"LISTEN_ADDRESS=127.0.0.1:{port} cannot be bound"):
            build(config)
