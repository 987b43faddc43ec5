"""Claude's rate limit end to end: the real Claude Code CLI in the real image against the loopback
Messages API, through the daemon on the Docker backend.

Five labelled issues, and the API refuses every request (429 with ``retry-after`` and the
``anthropic-ratelimit-*`` headers) when the first task runs. What Claude Code 2.1.197 makes of it, with an
API key and ``CLAUDE_CODE_MAX_RETRIES=0``: exit 1, a ``result`` with ``is_error: true`` and
``api_error_status: 429``, no reset time anywhere (``tests/test_limits_real_cli.py``). The daemon's
Claude relay read the refusal's own headers, so the queue holds until exactly the reset the API named,
with no request of the daemon's own (no probe); after it the tasks run: none of the five gets a ❌, and
the API sees one refused request from the CLI — not one per queued task. Skipped on a tree without
the run-policy pipeline (it needs the hook).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from claude_issue_solver.app import build
from claude_issue_solver.config import Config
from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.store.queue import TaskQueue, TaskState
from tests.e2e import CLAUDE_KEY, all_finished, assert_clean, drive, needs_docker, our_comments, real_cli
from tests.fakes.fake_anthropic import FakeAnthropic

pytest.importorskip("claude_issue_solver.store.outcome", reason="needs the run-policy pipeline and its hook")

pytestmark = [*needs_docker, pytest.mark.slow, pytest.mark.timeout(1500)]


def test_five_issues_meet_the_rate_limit_none_fails_all_five_open_prs(
    github: FakeGitHub, e2e_config: Callable[..., Config], claude_image: str, state_dir: Path
) -> None:
    issues = [
        github.create_issue("acme/widgets", f"Say hello {n}", "Please add a HELLO.md.", labels=["Claude"],
                            user="maintainer")
        for n in range(1, 6)
    ]  # fmt: skip
    with FakeAnthropic(api_key=CLAUDE_KEY, files={"HELLO.md": "Hello from the real CLI\n"}) as api:
        config = e2e_config(
            **real_cli(claude_image, api.url),
            MAX_CONCURRENT="1",
        )
        api.limits.rate_limit(retry_after=8)
        parts = build(config)

        def held(queue: TaskQueue) -> bool:
            return queue.store.read().get("hold") is not None and not parts.daemon.active

        drive(config, held, timeout=300, parts=parts)
        api.limits.clear()
        refused = [r for r in api.requests if r.kind == "limited"]
        waiting = [t for t in parts.queue.list() if t.error and t.error.startswith("waiting for")]
        assert len(waiting) == 1 and waiting[0].state is TaskState.PENDING and waiting[0].attempts == 0
        hold = parts.queue.store.read()["hold"]
        assert hold["reason"] == "rate_limit" and hold["known_reset"] is True
        seen = parts.daemon.runner.access.relay.last_limit()  # what the relay read off the 429
        assert seen is not None and seen.status == 429 and seen.reset_at is not None
        assert hold["until"] == pytest.approx(seen.reset_at)  # the hold ends when the API said it would
        (comment,) = our_comments(github, waiting[0].issue_number)
        assert comment["body"].startswith("⏳") and "when the limit resets" in comment["body"]

        queue = drive(config, all_finished, timeout=600, parts=parts)
        agents = [r.headers.get("user-agent", "") for r in refused]
        print(f"refused requests while limited: {len(refused)} ({agents})")

    assert [t.state for t in queue.list()] == [TaskState.COMPLETED] * 5
    probes = [r for r in refused if "python-requests" in r.headers.get("user-agent", "")]
    # One refused call of the first task's CLI and no probe (the relay knew); no other task met the limit.
    assert probes == [] and len(refused) == 1, agents
    for issue in issues:
        (comment,) = our_comments(github, issue["number"])
        assert "❌" not in comment["body"] and "pull request" in comment["body"]
    assert len(github.pulls("acme/widgets")) == 5
    assert queue.store.read()["hold"] is None
    assert_clean(state_dir)
