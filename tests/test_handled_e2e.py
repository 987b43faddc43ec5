"""End to end on Docker (the fake agent image): a second daemon on a fresh ``STATE_DIR`` over issues the
first one finished starts no container and writes nothing; a label applied again afterwards runs.

"No container" is Docker's own word: its event log holds no ``create`` of a container carrying the new
daemon's owner label, until the label is applied again (which then shows one: the filter sees them).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from claude_issue_solver.app import build
from claude_issue_solver.backends.base import LABEL_OWNER, owner_of
from claude_issue_solver.config import Config
from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.store.queue import TaskState
from tests.e2e import CLIENT, all_finished, assert_clean, drive, labelled, needs_docker, our_comments

pytestmark = needs_docker

REPO = "acme/widgets"


@pytest.fixture(autouse=True)
def _clean(no_leftover_containers: None) -> None:
    pass


def containers_created(state_dir: Path, since: float) -> list[dict]:
    owner = owner_of(state_dir.expanduser().resolve())
    events = CLIENT.events(  # type: ignore[union-attr]
        since=int(since) - 1,
        until=int(time.time()) + 1,
        filters={"type": "container", "event": "create", "label": [f"{LABEL_OWNER}={owner}"]},
        decode=True,
    )
    return list(events)


def test_a_fresh_state_dir_over_finished_issues_starts_nothing_and_a_relabel_runs(
    github: FakeGitHub, e2e_config: Callable[..., Config], tmp_path: Path
) -> None:
    done = labelled(github, "Add a fix file", "edit")["number"]
    failed = labelled(github, "A bad key", "invalid-key")["number"]
    first = drive(e2e_config(), lambda q: len(q.list()) == 2 and all_finished(q))
    assert {t.issue_number: t.state for t in first.list()} == {
        done: TaskState.COMPLETED,
        failed: TaskState.FAILED,
    }

    def snapshot() -> tuple[list[str], list[str], int]:
        bodies = [[c["body"] for c in our_comments(github, n)] for n in (done, failed)]
        return bodies[0], bodies[1], len(github.pulls(REPO))

    before = snapshot()
    fresh = tmp_path / "f"  # short: the relay socket path under it has a length limit
    fresh.mkdir()
    config = e2e_config(STATE_DIR=str(fresh))
    started = time.time()
    parts = build(config)
    for _ in range(3):
        parts.daemon.poke(REPO)
        parts.daemon.run_once()
    assert parts.queue.list() == []
    assert containers_created(fresh, started) == []  # no agent container, so no model request
    assert snapshot() == before  # no new comment, no comment edited, no new pull request

    github.remove_label(REPO, done, "Claude", actor="maintainer")
    github.add_label(REPO, done, "Claude", actor="maintainer")
    parts.daemon.poke(REPO)  # as the label's webhook would: the schedule's next poll is POLL_INTERVAL away
    queue = drive(config, lambda q: len(q.list()) == 1 and all_finished(q), parts=parts)
    (task,) = queue.list()
    assert task.issue_number == done and task.state is TaskState.COMPLETED, task.error
    assert containers_created(fresh, started)  # this one ran in a container
    assert len(github.pulls(REPO)) == 1  # the same pull request, updated
    assert len(our_comments(github, done)) == 2 and len(our_comments(github, failed)) == 1
    assert_clean(fresh)
