"""Pull-request reviews (#22) end to end: the real Claude Code CLI in the real agent image, through the
daemon on the Docker backend, against the loopback Messages API (which answers with a
``StructuredOutput`` tool_use, as a model does under ``--json-schema``) and the loopback GitHub.

A person's pull request from a fork; a maintainer's ``@claude review`` → exactly one review, state
COMMENTED, an inline comment on the line the model named, 👀 on the trigger, nothing pushed, no branch.
A new commit on the fork and ``@claude review`` again → a second review with only the new finding.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from claude_issue_solver.app import build
from claude_issue_solver.config import Config
from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.store.queue import TaskQueue, TaskState
from tests.e2e import CLAUDE_KEY, assert_clean, drive, needs_docker, real_cli
from tests.fakes.fake_anthropic import STRUCTURED_OUTPUT_TOOL, FakeAnthropic
from tests.waiting import wait_until

pytestmark = needs_docker

REPO = "acme/widgets"
CALC = "def add(a, b):\n    return a - b\n\n\ndef mul(a, b):\n    return a * b\n"
CALC_MORE = CALC + "\n\ndef div(a, b):\n    return a / b\n"
BUG = {"path": "calc.py", "line": 2, "severity": "major", "title": "add subtracts", "body": "Use +."}
NEW = {"path": "calc.py", "line": 10, "severity": "critical", "title": "division by zero", "body": "Guard b."}


@pytest.fixture(autouse=True)
def _clean(no_leftover_containers: None) -> None:
    pass


def the_model(body: dict[str, Any]) -> dict[str, Any]:
    """The review the model returns: the division's finding once the diff it was shown has it (and the
    first finding again, as a model does: the daemon must not post it twice)."""
    prompt = json.dumps(body.get("messages"))
    findings = [BUG, NEW] if "def div" in prompt else [BUG]
    return {"summary": "Adds a calculator.", "findings": findings}


def first_look_done(queue: TaskQueue) -> bool:
    book = queue.store.read().get("followups", {}).get("repos", {}).get(REPO, {})
    return {"issues", "pulls"} <= set(book.get("since", {}))


def ours(github: FakeGitHub, number: int) -> list[dict[str, Any]]:
    return [r for r in github.reviews(REPO, number) if "claude-issue-solver:task=" in r["body"]]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_maintainers_review_request_on_a_fork_pull_request_with_the_real_cli(
    github: FakeGitHub, e2e_config: Callable[..., Config], claude_image: str, state_dir: Path
) -> None:
    repo = github.repo(REPO)
    with FakeAnthropic(api_key=CLAUDE_KEY, files={}, summary=None, structured_output=the_model) as api:
        config = e2e_config(**real_cli(claude_image, api.url), POLL_INTERVAL="1")
        parts = build(config)
        parts.daemon.run_once()  # the first look (what is there is history), in a poll worker: wait for it
        wait_until(lambda: (parts.daemon.run_once(), first_look_done(parts.queue))[1], 60, "the first look")
        pr = github.open_fork_pull(
            REPO, {"calc.py": CALC}, user="contributor", title="Add a calculator", fork_branch="calc"
        )
        number = int(pr["number"])
        branches = set(repo.branches())
        first_head = github.pull_head(REPO, number)
        asked = github.add_comment(REPO, number, "@claude review", user="maintainer")

        def reviews_done(count: int) -> Callable[[TaskQueue], bool]:
            def done(q: TaskQueue) -> bool:
                tasks = [t for t in q.list() if t.kind == "review"]
                return len(tasks) == count and all(not t.state.live for t in tasks)

            return done

        queue = drive(config, reviews_done(1), timeout=300, parts=parts)
        [first] = [t for t in queue.list() if t.kind == "review"]
        assert first.state is TaskState.COMPLETED, first.error
        # The CLI offered the model the schema's tool, and the model's call came back to the daemon.
        offered = [{t.get("name") for t in r.body.get("tools") or []} for r in api.conversation_requests]
        assert offered and all(STRUCTURED_OUTPUT_TOOL in names for names in offered)
        assert all("Write" not in names and "Edit" not in names for names in offered)  # read-only

        [review] = ours(github, number)  # exactly one review
        assert review["state"] == "COMMENTED" and review["commit_id"] == first_head
        [inline] = [
            c for c in github.review_comments(REPO, number) if c["pull_request_review_id"] == review["id"]
        ]
        assert (inline["path"], inline["line"], inline["side"]) == ("calc.py", 2, "RIGHT")
        assert "add subtracts" in inline["body"]
        assert [r["content"] for r in github.reactions(REPO, "issues", asked["id"])] == ["eyes"]
        assert set(repo.branches()) == branches  # no new branch
        assert github.pull_head(REPO, number) == first_head  # nothing pushed to the pull request
        assert github.pulls(REPO) == [github.pulls(REPO)[0]] and github.pulls(REPO)[0]["number"] == number

        # The person pushes a new commit to their fork; the maintainer asks again.
        second_head = github.push_to_fork_pull(REPO, number, {"calc.py": CALC_MORE})
        again = github.add_comment(REPO, number, "@claude review", user="maintainer")
        queue = drive(config, reviews_done(2), timeout=300, parts=parts)
    second = next(t for t in queue.list() if t.kind == "review" and t.id != first.id)
    assert second.state is TaskState.COMPLETED, second.error
    reviews = ours(github, number)
    assert len(reviews) == 2 and reviews[0]["id"] == review["id"]
    assert reviews[1]["state"] == "COMMENTED" and reviews[1]["commit_id"] == second_head
    comments = github.review_comments(REPO, number)
    new = [c for c in comments if c["pull_request_review_id"] == reviews[1]["id"]]
    assert [(c["path"], c["line"]) for c in new] == [("calc.py", 10)]  # only the new finding
    assert "division by zero" in new[0]["body"]
    assert sum(1 for c in comments if "add subtracts" in c["body"]) == 1  # never twice at that place
    assert [r["content"] for r in github.reactions(REPO, "issues", again["id"])] == ["eyes"]
    assert set(repo.branches()) == branches
    assert github.pull_head(REPO, number) == second_head
    assert_clean(state_dir)
