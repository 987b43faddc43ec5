"""ON_RED_TESTS=comment and a daemon that dies at its end: the resumed task ends FAILED, as it would have.

The red-tests ending records itself (reason and figures) together with phase ``published`` before the
comment is written, so :meth:`Pipeline.resume` tells it from a published pull request, writes the
same comment again (found by its marker: still one comment) and fails the task.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from claude_issue_solver.config import Config
from claude_issue_solver.github.client import GitHubClient
from claude_issue_solver.github.publisher import Publisher
from claude_issue_solver.run.pipeline import RED_WITHOUT_PR, Pipeline
from claude_issue_solver.store.outcome import TaskControl
from claude_issue_solver.store.queue import Task, TaskState
from tests.fakes.memory_backend import Crash, edits
from tests.test_pipeline import REPO, SUMMARY, World
from tests.test_pipeline import world as world  # the fixture
from tests.test_test_gate import good, settings, suite


@pytest.fixture(autouse=True)
def red_tests_comment(world: World, gh_config: Callable[..., Config]) -> None:
    world.config = gh_config(GITHUB_REPOS=REPO, MAX_ATTEMPTS="2", ON_RED_TESTS="comment", TEST_FIX_ROUNDS="0")
    settings(world, "test: sh test.sh\n")
    suite(world, green_when=good)
    world.backend.agents["agent"] = edits({"calc.txt": "half\n"}, SUMMARY)  # the tests stay red


class CrashOnReport(Publisher):
    """The daemon dies as it writes the red-tests comment (a process kill, not a GitHub error)."""

    def upsert_comment(
        self, repo: str, number: int, task_id: str, body: str, comment_id: int | None = None
    ) -> int:
        if "no pull request was opened" in body:
            raise Crash("upsert_comment")
        return super().upsert_comment(repo, number, task_id, body, comment_id)


def crashed_run(world: World, pipeline: Pipeline) -> Task:
    task = world.task()
    with pytest.raises(Crash):
        pipeline.run(task, TaskControl())
    crashed = world.queue.get(task.id)
    assert crashed.state is TaskState.RUNNING and crashed.meta["phase"] == "published"
    assert "the tests are still red" in crashed.meta[RED_WITHOUT_PR]["error"]
    return crashed


def assert_failed_with_the_report(world: World, task: Task, outcome: object) -> None:
    done = world.record(task, outcome)  # type: ignore[arg-type]
    assert done.state is TaskState.FAILED and "ON_RED_TESTS=comment" in (done.error or "")
    comments = world.comments(task)
    assert len(comments) == 1 and "no pull request was opened" in comments[0]
    assert "| round 1: after Claude's change | 🔴" in comments[0]
    assert world.github.pulls(REPO) == [] and task.id not in world.backend.places
    assert "claude/issue-1" in world.backend.remote  # the work is on the branch


def test_a_crash_after_the_comment_resumes_as_failed(world: World) -> None:
    world.backend.crash_at("remove")  # the comment is written, the workspace not yet removed
    task = crashed_run(world, world.pipeline())
    assert "no pull request was opened" in world.comments(task)[0]
    outcome = world.pipeline().resume(task, TaskControl())
    assert outcome is not None and outcome.state is TaskState.FAILED
    assert_failed_with_the_report(world, task, outcome)


def test_a_crash_before_the_comment_writes_it_on_resume(world: World) -> None:
    client = GitHubClient(world.config)
    dying = Pipeline(
        world.config,
        world.queue,
        world.backend,  # type: ignore[arg-type]
        client,
        CrashOnReport(client),
        clock=world.clock,
        sleep=world.sleeps.append,
    )
    task = crashed_run(world, dying)
    assert "no pull request was opened" not in world.comments(task)[0]  # still the progress comment
    world.clock.advance(3600)  # the daemon was down an hour: the comment keeps the run's own duration
    outcome = world.pipeline().resume(task, TaskControl())
    assert_failed_with_the_report(world, task, outcome)
    assert "1h" not in world.comments(task)[0] and "60m" not in world.comments(task)[0]
    assert "resuming task" in world.log_text(task)


def test_a_retried_red_task_does_not_resume_as_its_last_ending(world: World) -> None:
    task = world.task()
    first = world.record(task, world.pipeline().run(task, TaskControl()))
    assert first.state is TaskState.FAILED and first.meta[RED_WITHOUT_PR]
    world.queue.retry(task.id)
    claimed = world.queue.claim()
    assert claimed is not None and claimed.id == task.id
    world.backend.crash_at("prepare")  # dies before this run reached any phase of its own
    with pytest.raises(Crash):
        world.pipeline().run(claimed, TaskControl())
    outcome = world.pipeline().resume(world.queue.get(task.id), TaskControl())
    assert outcome is not None and outcome.state is TaskState.PENDING  # run again, not failed again
