"""The pipeline's hook into :mod:`claude_issue_solver.run.run_limits`: a Claude limit is a wait, not a
failure.

Runs on the pipeline of the run-policy refactor (``claude_issue_solver.store.outcome``,
``tests/test_pipeline.py`` and its in-memory backend); skipped on a tree without it. The agent's output
is what the real Claude Code 2.1.197 prints (``tests/test_limits_real_cli.py``).
"""

from __future__ import annotations

import json

import pytest

from claude_issue_solver.store.queue import TaskState

_outcome = pytest.importorskip("claude_issue_solver.store.outcome", reason="needs the run-policy pipeline")
TaskControl = _outcome.TaskControl

from tests.fakes.memory_backend import edits  # noqa: E402
from tests.test_pipeline import SUMMARY, World, assert_published, world  # noqa: E402

__all__ = ["world"]  # the fixture


def _limited(place: object, process: object) -> None:
    """A claude.ai login's usage limit: a rejected rate_limit_event, then an error result; exit 1."""
    resets_at = 1_900_000_000.0 + 1800
    events = [
        {"type": "system", "subtype": "init", "session_id": "s-1"},
        {"type": "rate_limit_event", "rate_limit_info": {"status": "rejected", "resetsAt": resets_at}},
        {"type": "result", "subtype": "success", "is_error": True, "total_cost_usd": 0,
         "result": "You've hit your session limit · resets 9:30am (UTC)"},
    ]  # fmt: skip
    process.exit_code, process.stdout = 1, "\n".join(json.dumps(e) for e in events) + "\n"  # type: ignore[attr-defined]


def _budget_stop(place: object, process: object) -> None:
    result = {"type": "result", "subtype": "error_max_budget_usd", "is_error": True, "total_cost_usd": 0.61,
              "errors": ["Reached maximum budget ($0.5)"]}  # fmt: skip
    process.exit_code, process.stdout = 1, json.dumps(result) + "\n"  # type: ignore[attr-defined]


def test_a_usage_limit_requeues_without_an_attempt_or_a_failure_comment(world: World) -> None:
    world.backend.agents["agent"] = _limited
    task = world.task()
    outcome = world.pipeline().run(task, TaskControl())
    assert outcome is not None and outcome.state is TaskState.PENDING
    waiting = world.record(task, outcome)
    assert waiting.attempts == 0
    assert (waiting.error or "").startswith("waiting for the Claude usage limit to reset")
    (comment,) = world.comments(task)
    assert comment.startswith("⏳") and "❌" not in comment and "(in 30 min)" in comment
    assert task.id not in world.backend.places  # the workspace is removed while it waits
    assert world.queue.claim() is None  # the queue holds

    world.clock.advance(1800)
    world.backend.agents["agent"] = edits({"fix.txt": "fixed\n"}, SUMMARY)
    probe = world.queue.claim()
    assert probe is not None and probe.id == task.id and probe.attempts == 1
    done = world.record(probe, world.pipeline().run(probe, TaskControl()))
    assert done.state is TaskState.COMPLETED
    assert_published(world, done)
    assert world.queue.store.read()["hold"] is None


def test_a_run_stopped_at_its_budget_says_what_it_spent(world: World) -> None:
    world.backend.agents["agent"] = _budget_stop
    task = world.task()
    outcome = world.pipeline().run(task, TaskControl())
    assert outcome is not None and outcome.state is TaskState.FAILED
    assert "spending limit" in (outcome.error or "") and "$0.61" in (outcome.error or "")
    assert "❌" in world.comments(task)[0]
