"""Verified pull requests end to end on Docker: a sample repository with a tiny shell test suite, the
real daemon and pipeline, the fake `claude` in the busybox image, setup and tests in containers of their
own over the same worktree (same image, user and network, no GitHub credential)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from claude_issue_solver.cli.render import queue_payload
from claude_issue_solver.config import Config
from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.logs import task_log_path
from claude_issue_solver.store.queue import TaskState
from tests.e2e import (
    CLAUDE_KEY,
    all_finished,
    assert_clean,
    drive,
    labelled,
    needs_docker,
    our_comments,
    real_cli,
)
from tests.github_fixtures import TOKEN

pytestmark = needs_docker

REPO = "acme/widgets"
# add() subtracts (the issue's bug); the tests print the environment first, so a leak would show.
CALC = "add() { echo $(($1 - $2)); }\nsub() { echo $(($1 - $2)); }\n"
# It writes JUnit XML (test_results: build/junit.xml), as CI test reporters read it: add() fails before
# any change (the issue's bug), so only a test the change breaks is the change's doing.
TEST_SH = """\
env | sort
. ./calc.sh
fail=0
mkdir -p build
cases=""
check() {
    got=$($1 "$2" "$3")
    if [ "$got" = "$4" ]; then
        echo "ok $1 $2 $3 = $got"
        cases="$cases<testcase classname='calc' name='test_$1'/>"
        return
    fi
    echo "FAIL $1 $2 $3 = $got, expected $4"
    f="<failure message='$1 $2 $3 = $got, expected $4'/>"
    cases="$cases<testcase classname='calc' name='test_$1'>$f</testcase>"
    fail=1
}
check add 2 3 5
check sub 5 3 2
printf '<testsuite name="calc">%s</testsuite>\\n' "$cases" >build/junit.xml
if [ $fail = 0 ]; then echo "2 passed, 0 failed"; else echo "some tests failed"; fi
exit $fail
"""
RESULTS = "test_results: build/junit.xml\n"


def sample(github: FakeGitHub, settings: str) -> None:
    if "test.sh" in settings:
        settings += RESULTS
    github.commit_files(
        REPO,
        "main",
        {"calc.sh": CALC, "test.sh": TEST_SH, ".github/claude-issue-solver.yml": settings},
        message="a calculator with tests",
    )


def test_red_then_green_in_the_resumed_session_opens_a_normal_pr(
    github: FakeGitHub, e2e_config: Callable[..., Config], state_dir: Path, no_leftover_containers: None
) -> None:
    sample(github, "setup: mkdir -p /tmp/deps\ntest: sh test.sh\ntest_timeout: 60\n")
    issue = labelled(github, "add() subtracts", "tests-fix")
    config = e2e_config()
    queue = drive(config, all_finished, timeout=120)
    task = queue.list()[0]
    assert task.state is TaskState.COMPLETED, task.error
    pull = github.pulls(REPO)[0]
    assert pull["draft"] is False and pull["title"] == "Fix the calculator"
    body = pull["body"]
    assert "| before the change (baseline) | 🔴 red: exit 1" in body and "already red" in body
    assert "| round 1: after Claude's change | 🔴 red: exit 1" in body
    assert "| round 2: after fix round 1 | 🟢 green" in body
    assert "resumed session tests-fix." in body  # the fix came from the continued conversation
    assert task.num_turns == 4 and task.meta["tests"]["verdict"] == "green"
    shown = queue_payload(queue.list(), time.time())[0]["meta"]["tests"]  # what `queue --json` prints
    assert shown["verdict"] == "green" and shown["rounds"][0]["exit_code"] == 1
    calc = github.repo(REPO).git("show", "claude/issue-1:calc.sh")
    assert "$(($1 + $2))" in calc and "$(($1 - $2))" in calc
    # The fix round was asked for the test the change broke, never for the one red before it.
    fixes = [r for r in task.meta["tests"]["rounds"] if r.get("results")]
    assert fixes[0]["results"]["failing"] == [
        {"name": "calc::test_sub", "message": "sub 5 3 = 8, expected 2"}
    ]
    assert task.meta["tests"]["baseline"]["results"]["failing"][0]["name"] == "calc::test_add"
    # Only the agent's change is committed (not the tests' results), and the head carries the status.
    head = github.repo(REPO).branch_sha("claude/issue-1")
    assert head is not None
    assert "build/junit.xml" not in github.repo(REPO).git("ls-tree", "-r", "--name-only", head)
    (status,) = github.statuses(REPO, head)
    assert status["context"] == "claude-issue-solver/tests" and status["state"] == "success"
    log = task_log_path(config.log_dir, task.id).read_text()
    assert "FAIL sub 5 3 = 8, expected 2" in log  # the test output reaches the task log (logs -f)
    for secret in (TOKEN, CLAUDE_KEY):
        assert secret not in log and secret not in body
    assert "HOME=" in log  # the tests' environment was printed, and holds no credential
    assert pull["html_url"] in our_comments(github, issue["number"])[0]["body"]
    assert_clean(state_dir)


def test_a_hanging_test_is_killed_and_reported_in_a_draft(
    github: FakeGitHub, e2e_config: Callable[..., Config], state_dir: Path, no_leftover_containers: None
) -> None:
    sample(github, "test: sleep 600\ntest_timeout: 2\n")
    labelled(github, "Never-ending tests", "edit")
    started = time.monotonic()
    queue = drive(e2e_config(TEST_FIX_ROUNDS="0"), all_finished, timeout=120)
    assert time.monotonic() - started < 60
    task = queue.list()[0]
    assert task.state is TaskState.COMPLETED, task.error
    tests = task.meta["tests"]
    assert tests["baseline"]["timed_out"] and tests["rounds"][0]["timed_out"]
    pull = github.pulls(REPO)[0]
    assert pull["draft"] is True and pull["title"].startswith("[tests failing] ")
    assert "🔴 timed out after" in pull["body"]
    assert_clean(state_dir)


def test_tests_that_stay_red_comment_without_a_pr(
    github: FakeGitHub, e2e_config: Callable[..., Config], state_dir: Path, no_leftover_containers: None
) -> None:
    sample(github, "test: sh test.sh\n")
    issue = labelled(github, "add() subtracts", "tests-red")
    queue = drive(e2e_config(ON_RED_TESTS="comment", TEST_FIX_ROUNDS="1"), all_finished, timeout=120)
    task = queue.list()[0]
    assert task.state is TaskState.FAILED and "ON_RED_TESTS=comment" in (task.error or "")
    assert github.pulls(REPO) == []
    assert github.repo(REPO).branch_sha("claude/issue-1")
    body = our_comments(github, issue["number"])[0]["body"]
    assert "no pull request was opened" in body and "| round 2: after fix round 1 | 🔴" in body
    assert_clean(state_dir)


HALF_FIXED = "add() { echo $(($1 + $2)); }\nsub() { echo $(($1 + $2)); }\n"
FIXED = "add() { echo $(($1 + $2)); }\nsub() { echo $(($1 - $2)); }\n"


def test_real_cli_red_then_green_with_the_failure_fed_back(
    github: FakeGitHub,
    e2e_config: Callable[..., Config],
    claude_image: str,
    state_dir: Path,
    no_leftover_containers: None,
) -> None:
    """The real `claude` in Dockerfile.claude's image against the loopback Messages API: its first
    attempt leaves a test red; the fix round's request carries the failing output and makes it green."""
    from tests.fakes.fake_anthropic import FakeAnthropic

    sample(github, "test: sh test.sh\ntest_timeout: 60\n")
    github.create_issue(REPO, "add() subtracts", "add(2, 3) is -1.", labels=["Claude"], user="maintainer")
    with FakeAnthropic(
        api_key=CLAUDE_KEY,
        files={"calc.sh": HALF_FIXED},
        followup_files={"calc.sh": FIXED},
        followup_marker="tests fail after your change",
        read_first=True,
    ) as api:
        config = e2e_config(
            **real_cli(claude_image, api.url),
        )
        queue = drive(config, all_finished, timeout=300)
        fed_back = [
            r
            for r in api.conversation_requests
            if "FAIL sub 5 3 = 8, expected 2" in json.dumps(r.body.get("messages"))
        ]
        # The fix round's requests hold the first run's turns: the real CLI resumed the session.
        first_run_kept = all("I'll write calc.sh" in json.dumps(r.body.get("messages")) for r in fed_back)
    task = queue.list()[0]
    assert task.state is TaskState.COMPLETED, task.error
    assert fed_back, task_log_path(config.log_dir, task.id).read_text()[-6000:]
    tests = task.meta["tests"]
    assert [r["exit_code"] for r in tests["rounds"]] == [1, 0] and tests["baseline"]["exit_code"] == 1
    assert github.repo(REPO).read_file("claude/issue-1", "calc.sh") == FIXED
    pull = github.pulls(REPO)[0]
    assert pull["draft"] is False and "| round 2: after fix round 1 | 🟢 green" in pull["body"]
    log = task_log_path(config.log_dir, task.id).read_text()
    # The issue's Claude configuration directory is kept between the agent's containers, so the fix
    # round's `--resume` finds the session: no fallback to a new one.
    assert "continuing session" in log and "asking in a new session" not in log
    assert first_run_kept
    assert CLAUDE_KEY not in log and TOKEN not in log
    assert_clean(state_dir)
