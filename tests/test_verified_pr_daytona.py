"""Verified pull requests on the Daytona backend: the same test loop, its steps session commands in the
task's sandbox (the loopback Daytona runs them for real), driven through the real SDK."""

from __future__ import annotations

from collections.abc import Callable

from claude_issue_solver.config import Config
from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.logs import task_log_path
from claude_issue_solver.store.queue import TaskState
from tests.e2e import all_finished, drive, labelled
from tests.fakes.fake_daytona import FakeDaytona
from tests.github_fixtures import TOKEN
from tests.test_e2e_daytona import CLAUDE_KEY
from tests.test_e2e_daytona import e2e_config as e2e_config  # the fixtures
from tests.test_e2e_daytona import fake as fake
from tests.test_verified_pr_docker import REPO, sample


def test_red_then_green_in_a_sandbox(
    github: FakeGitHub, fake: FakeDaytona, e2e_config: Callable[..., Config]
) -> None:
    sample(github, "setup: echo installing nothing\ntest: sh test.sh\n")
    labelled(github, "add() subtracts", "tests-fix")
    queue = drive(e2e_config(), all_finished, timeout=120)
    task = queue.list()[0]
    assert task.state is TaskState.COMPLETED, task.error
    tests = task.meta["tests"]
    assert tests["setup"]["exit_code"] == 0 and tests["baseline"]["exit_code"] == 1
    assert [r["exit_code"] for r in tests["rounds"]] == [1, 0] and tests["verdict"] == "green"
    pull = github.pulls(REPO)[0]
    assert pull["draft"] is False and "| round 2: after fix round 1 | 🟢 green" in pull["body"]
    assert "resumed session tests-fix." in pull["body"]
    # No setup cache on Daytona (setup runs in every sandbox): the report and the PR say so.
    assert (
        tests["cache"]["state"] == "off"
        and "green (" in pull["body"]
        and "; not cached on this backend (daytona)" in pull["body"]
    )
    # test.sh prints its environment first: it reached the task log, without a credential.
    config = e2e_config()
    log = task_log_path(config.log_dir, task.id).read_text()
    assert "FAIL sub 5 3 = 8, expected 2" in log and "PWD=" in log
    assert TOKEN not in log and CLAUDE_KEY not in log and "ANTHROPIC_API_KEY=" not in log
