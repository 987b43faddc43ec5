"""Pre-warming (#23) on the in-memory place: each watched repository's setup made and cached ahead of
its first task, again only when the setup key changed, never while a task waits for a slot."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest

from claude_issue_solver.cli.render import print_status, status_payload
from claude_issue_solver.daemon.metrics import Metrics, setup_cache_lookup
from claude_issue_solver.daemon.pidfile import DaemonStatus
from claude_issue_solver.github.client import GitHubClient
from claude_issue_solver.run.agent_access import AgentAccess
from claude_issue_solver.run.prewarm import CACHED, NO_SETUP, RED, UNCHANGED, WARMED, Prewarmer, workspace_id
from claude_issue_solver.store.outcome import TaskControl
from claude_issue_solver.store.queue import TaskState
from tests.fakes.memory_backend import Place, Process, edits
from tests.test_pipeline import REPO, SUMMARY, World
from tests.test_pipeline import world as world  # the fixture

SETTINGS = ".github/claude-issue-solver.yml"


def prewarmer(world: World) -> Prewarmer:
    config = world.config
    return Prewarmer(
        config,
        world.queue,
        world.backend,  # type: ignore[arg-type]
        GitHubClient(config),
        AgentAccess(config, world.backend, None),  # type: ignore[arg-type]
        lambda: [REPO],
        clock=world.clock,
    )


def setup_runs(world: World, *, green: bool = True) -> list[Process]:
    """Every setup process: it writes the installed dependencies into the tree (untracked)."""
    runs: list[Process] = []

    def setup(place: Place, process: Process) -> None:
        runs.append(process)
        place.tree["node_modules/left-pad/index.js"] = b"module.exports = 1\n"
        process.exit_code = 0 if green else 1

    world.backend.agents["setup"] = setup
    return runs


@pytest.fixture
def warm_world(world: World) -> World:
    world.github.commit_files(REPO, "main", {SETTINGS: "setup: npm ci\n"}, message="settings")
    world.backend.remote["main"] = ("sha-1", {"README.md": b"# r\n", "package-lock.json": b"{}\n"})
    return world


def test_the_first_round_runs_setup_once_and_saves_it(warm_world: World) -> None:
    world = warm_world
    runs = setup_runs(world)
    warmer = prewarmer(world)
    entry = warmer.run_once()[REPO]
    assert entry["result"] == WARMED and entry["cached"] is True, entry
    assert [p.spec.name for p in runs] == ["setup"] and runs[0].spec.argv == ("sh", "-c", "npm ci")
    assert runs[0].spec.env == {}  # no credential of any kind: as a task's setup
    assert len(world.backend.setups) == 1
    assert workspace_id(REPO) not in world.backend.places  # the workspace is removed
    # Nothing changed: the next round only looks.
    again = warmer.run_once()[REPO]
    assert again["result"] == UNCHANGED and len(runs) == 1
    assert again["warmed_at"] == world.clock() and again["key"] == entry["key"]


def test_a_changed_dependency_file_warms_again(warm_world: World) -> None:
    world = warm_world
    runs = setup_runs(world)
    warmer = prewarmer(world)
    first = warmer.run_once()[REPO]
    world.backend.remote["main"] = ("sha-2", {"README.md": b"# r\n", "package-lock.json": b'{"v": 2}\n'})
    second = warmer.run_once()[REPO]
    assert second["result"] == WARMED and second["key"] != first["key"] and len(runs) == 2
    # A README change is no dependency change: the key stays, nothing runs.
    world.backend.remote["main"] = ("sha-3", {"README.md": b"# new\n", "package-lock.json": b'{"v": 2}\n'})
    assert warmer.run_once()[REPO]["result"] == UNCHANGED and len(runs) == 2


def test_a_setup_a_task_saved_is_only_recorded(warm_world: World) -> None:
    world = warm_world
    runs = setup_runs(world)
    prewarmer(world).run_once()
    with world.queue.store.transaction() as data:
        data.pop("prewarm")  # as a daemon without a record of its own, after a task filled the cache
    assert prewarmer(world).run_once()[REPO]["result"] == CACHED and len(runs) == 1


def test_a_red_setup_is_not_saved_and_no_setup_command_means_nothing_to_do(warm_world: World) -> None:
    world = warm_world
    setup_runs(world, green=False)
    red = prewarmer(world).run_once()[REPO]
    assert red["result"] == RED and red["cached"] is False and world.backend.setups == {}
    world.github.commit_files(REPO, "main", {SETTINGS: "test: npm test\n"}, message="no setup")
    assert prewarmer(world).run_once()[REPO]["result"] == NO_SETUP


def test_it_waits_while_a_task_waits_for_a_slot(warm_world: World) -> None:
    world = warm_world
    world.config = replace(world.config, max_concurrent=1)
    setup_runs(world)
    warmer = prewarmer(world)
    assert warmer.idle()
    first = world.queue.submit(REPO, 1, "one")
    assert first is not None
    assert not warmer.idle()  # pending: its start comes first
    world.queue.claim()
    assert not warmer.idle()  # every slot taken
    world.queue.finish(first.id, TaskState.COMPLETED)
    assert warmer.idle()
    world.queue.submit(REPO, 2, "two")
    world.queue.pause()
    assert warmer.idle()  # paused: the pending task waits for the pause, not for a slot


def test_the_first_task_after_a_warm_restores_its_setup(warm_world: World) -> None:
    world = warm_world
    runs = setup_runs(world)
    prewarmer(world).run_once()
    world.backend.agents["agent"] = edits({"fix.txt": "fixed\n"}, SUMMARY)
    task = world.task()
    outcome = world.pipeline().run(task, TaskControl())
    assert outcome is not None and outcome.state is TaskState.COMPLETED, outcome
    done = world.queue.get(task.id)
    assert done.meta["tests"]["cache"]["state"] == "hit" and len(runs) == 1  # setup did not run again
    assert setup_cache_lookup(done) == "hit"
    metrics = Metrics()
    metrics.task_finished(replace(done, state=TaskState.COMPLETED))
    text = metrics.render().decode()
    assert 'claude_issue_solver_setup_cache_lookups_total{result="hit"} 1.0' in text
    assert 'claude_issue_solver_setup_cache_lookups_total{result="miss"} 0.0' in text


def test_status_shows_when_each_repository_was_warmed(warm_world: World) -> None:
    world = warm_world
    setup_runs(world)
    payload = status_payload(world.config, DaemonStatus(False, None, False), world.queue.store.read(), [], 0)
    assert payload["prewarm"]["repos"][REPO] == {
        "warmed_at": None,
        "cached": None,
        "result": None,
        "last_round_at": None,
        "detail": None,
    }
    prewarmer(world).run_once()
    state = world.queue.store.read()
    payload = status_payload(world.config, DaemonStatus(False, None, False), state, [], world.clock())
    shown = payload["prewarm"]["repos"][REPO]
    assert shown["cached"] is True and shown["result"] == WARMED and shown["warmed_at"]
    out = io.StringIO()
    print_status(payload, out, tty=False)
    assert "pre-warming (every 30m" in out.getvalue()
    line = next(
        line for line in out.getvalue().splitlines() if line.strip().startswith(REPO) and "yes" in line
    )
    assert shown["warmed_at"] in line and "warmed" in line
    off = replace(world.config, prewarm_interval=0)
    assert status_payload(off, DaemonStatus(False, None, False), state, [], 0)["prewarm"] is None


def test_a_repository_without_setup_costs_no_request_until_a_day_later(world: World) -> None:
    """Organisation scale (#24): rounds every 30 minutes over 1,000 repositories would otherwise cost
    two or three requests each; the requests go at the budget's lowest priority."""
    from claude_issue_solver.github.request_budget import Priority
    from claude_issue_solver.run.prewarm import NO_SETUP_RECHECK

    warmer = prewarmer(world)
    assert warmer.run_once()[REPO]["result"] == NO_SETUP
    sent = warmer.client.budget.counts[Priority.BACKGROUND]
    assert sent >= 2 and sum(warmer.client.budget.counts.values()) == sent  # all of them background
    world.clock.advance(NO_SETUP_RECHECK - 1)
    assert warmer.run_once() == {} and warmer.client.budget.counts[Priority.BACKGROUND] == sent
    world.clock.advance(1)
    assert warmer.run_once()[REPO]["result"] == NO_SETUP
    assert warmer.client.budget.counts[Priority.BACKGROUND] > sent


def test_a_round_stops_without_a_record_while_github_asks_every_request_to_wait(world: World) -> None:
    warmer = prewarmer(world)
    warmer.client.budget.pause(world.clock() + 600, "a secondary rate limit")
    assert warmer.run_once() == {}
    assert warmer.last(REPO) == {}  # not "failed": the next round looks again
