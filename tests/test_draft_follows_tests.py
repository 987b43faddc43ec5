"""An open pull request's draft state follows the latest run's tests (#12 with #11's follow-ups).

A first run whose tests stay red opens a draft; a follow-up that makes them green marks it ready for
review, and one that leaves them red again turns it back into a draft — through GitHub's GraphQL API
(the REST API cannot), here the loopback GitHub's ``POST /api/graphql``. A failing GraphQL call is
told in the task log and does not fail the task.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from claude_issue_solver.config import Config
from claude_issue_solver.demo_world.github import GRAPHQL_PATH
from claude_issue_solver.store.outcome import TaskControl
from claude_issue_solver.store.queue import Task, TaskState
from tests.fakes.memory_backend import edits
from tests.test_followup_pipeline import queue_followup, trigger
from tests.test_pipeline import REPO, SUMMARY, World
from tests.test_pipeline import world as world  # the fixture
from tests.test_test_gate import good, settings, suite


@pytest.fixture(autouse=True)
def no_fix_rounds(world: World, gh_config: Callable[..., Config]) -> None:
    world.config = gh_config(GITHUB_REPOS=REPO, TASK_TIMEOUT="600", MAX_ATTEMPTS="2", TEST_FIX_ROUNDS="0")
    settings(world, "test: sh test.sh\n")
    suite(world, green_when=good)


def red_first_run(world: World) -> Task:
    world.backend.agents["agent"] = edits({"calc.txt": "half\n"}, SUMMARY)
    task = world.task()
    done = world.record(task, world.pipeline().run(task, TaskControl()))
    assert done.state is TaskState.COMPLETED, done.error
    pull = world.github.pulls(REPO)[0]
    assert pull["draft"] is True and pull["title"].startswith("[tests failing] ")
    return done


def followup_leaving(world: World, first: Task, calc: str) -> Task:
    body = "@claude please fix the tests"
    comment = world.github.add_comment(REPO, 2, body, user="maintainer")
    task = queue_followup(world, first, trigger("pr", body, comment))
    world.backend.agents["agent"] = edits({"calc.txt": calc})
    done = world.record(task, world.pipeline().run(task, TaskControl()))
    assert done.state is TaskState.COMPLETED, done.error
    return done


def graphql_calls(world: World) -> list[int]:
    return [r.status for r in world.github.requests if r.path == GRAPHQL_PATH]


def test_green_follow_up_marks_the_draft_ready_and_a_red_one_makes_it_a_draft_again(world: World) -> None:
    first = red_first_run(world)
    assert graphql_calls(world) == []  # a new PR is created a draft: no mutation needed

    green = followup_leaving(world, first, "good\n")
    pulls = world.github.pulls(REPO)
    assert len(pulls) == 1 and pulls[0]["draft"] is False
    assert (
        not pulls[0]["title"].startswith("[tests failing] ")
        and "| round 1: after Claude's change | 🟢" in (pulls[0]["body"])
    )
    assert "pull request #2 marked ready for review: the tests pass now" in world.log_text(green)
    assert graphql_calls(world) == [200]

    red = followup_leaving(world, green, "bad\n")
    pull = world.github.pulls(REPO)[0]
    assert pull["draft"] is True and pull["title"].startswith("[tests failing] ")
    assert "pull request #2 turned into a draft: the tests are red after this run" in world.log_text(red)

    # Red again: it is a draft already, nothing to change.
    again = followup_leaving(world, red, "worse\n")
    assert graphql_calls(world) == [200, 200]
    assert "draft" not in world.log_text(again).split("pull request updated", 1)[1]


def test_a_failing_graphql_call_is_logged_and_the_task_completes(world: World) -> None:
    first = red_first_run(world)
    # A token without the right to it: GitHub answers 200 with a GraphQL error, not an HTTP error.
    forbidden = {"type": "FORBIDDEN", "path": ["markPullRequestReadyForReview"]}
    forbidden["message"] = "Resource not accessible by integration"
    data = {"markPullRequestReadyForReview": None}
    world.github.fail_next(GRAPHQL_PATH, 200, body={"data": data, "errors": [forbidden]})
    done = followup_leaving(world, first, "good\n")
    assert done.state is TaskState.COMPLETED and done.pr_url == world.github.pulls(REPO)[0]["html_url"]
    assert world.github.pulls(REPO)[0]["draft"] is True  # unchanged, and its text says the tests pass
    assert "[tests failing]" not in world.github.pulls(REPO)[0]["title"]
    log = world.log_text(done)
    assert "pull request #2 could not be marked ready for review (the tests pass now): GraphQL " in log
    assert "Resource not accessible by integration" in log


def test_without_a_test_verdict_the_draft_state_is_left_alone(world: World) -> None:
    first = red_first_run(world)
    world.github.commit_files(REPO, "main", {".github/claude-issue-solver.yml": "setup: 'true'\n"})
    done = followup_leaving(world, first, "good\n")  # no test command now: nothing was verified
    assert world.github.pulls(REPO)[0]["draft"] is True and graphql_calls(world) == []
    assert "ready for review" not in world.log_text(done)


def test_the_answers_say_when_the_pr_is_a_draft_for_red_tests(world: World) -> None:
    first = red_first_run(world)
    [opened] = world.comments(first)
    assert (
        opened.startswith("✅")
        and "tests do not pass with this change, so the pull request is a draft" in opened
    )
    green = followup_leaving(world, first, "good\n")
    red = followup_leaving(world, green, "bad\n")
    answers = [c["body"] for c in world.github.comments(REPO, 2) if "claude-issue-solver:task=" in c["body"]]
    assert [("is a draft" in a) for a in answers] == [False, True]  # green's answer, then red's
    assert red.id in answers[1]


def test_on_red_tests_comment_updates_an_open_pr_instead_of_leaving_it_silent(
    world: World, gh_config: Callable[..., Config]
) -> None:
    world.backend.agents["agent"] = edits({"calc.txt": "good\n"}, SUMMARY)
    first = world.task()
    first = world.record(first, world.pipeline().run(first, TaskControl()))
    assert world.github.pulls(REPO)[0]["draft"] is False  # green: a normal PR
    world.config = gh_config(GITHUB_REPOS=REPO, TEST_FIX_ROUNDS="0", ON_RED_TESTS="comment")
    red = followup_leaving(world, first, "bad\n")  # its commits are on the PR's branch, so in the PR
    pull = world.github.pulls(REPO)[0]
    assert len(world.github.pulls(REPO)) == 1 and pull["draft"] is True
    assert (
        pull["title"].startswith("[tests failing] ")
        and "| round 1: after Claude's change | 🔴" in pull["body"]
    )
    assert red.state is TaskState.COMPLETED and red.pr_url == pull["html_url"]
    assert "pull request #2 is open on claude/issue-1 and has the new commits: updating it as a draft" in (
        world.log_text(red)
    )
    [answer] = [c["body"] for c in world.github.comments(REPO, 2) if red.id in c["body"]]
    assert answer.startswith("✅") and "is a draft" in answer


def test_a_red_run_whose_pr_could_not_become_a_draft_does_not_claim_it_is(world: World) -> None:
    world.backend.agents["agent"] = edits({"calc.txt": "good\n"}, SUMMARY)
    first = world.task()
    first = world.record(first, world.pipeline().run(first, TaskControl()))
    forbidden = {"type": "FORBIDDEN", "message": "Resource not accessible by integration"}
    world.github.fail_next(
        GRAPHQL_PATH, 200, body={"data": {"convertPullRequestToDraft": None}, "errors": [forbidden]}
    )
    red = followup_leaving(world, first, "bad\n")
    assert world.github.pulls(REPO)[0]["draft"] is False
    assert "could not be turned into a draft (the tests are red after this run)" in world.log_text(red)
    [answer] = [c["body"] for c in world.github.comments(REPO, 2) if red.id in c["body"]]
    assert "tests do not pass with this change, see the pull request's Tests section" in answer
    assert "is a draft" not in answer
