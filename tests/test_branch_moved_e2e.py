"""#11 end to end: a person pushes to ``claude/issue-N`` while the follow-up's agent runs.

The daemon, the real Claude Code CLI in the real image, the loopback GitHub and Messages API. The push
happens inside the Messages API's answer to the follow-up's first model call -- the agent is running
then, by construction, with no sleep -- and afterwards the branch holds the person's commit with
Claude's on top, the same pull request, and the answer says the branch had moved.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from claude_issue_solver.app import build
from claude_issue_solver.config import Config
from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.logs import task_log_path
from claude_issue_solver.store.queue import FOLLOWUP, TaskQueue, TaskState
from tests.e2e import CLAUDE_KEY, all_finished, drive, needs_docker, real_cli
from tests.fakes.fake_anthropic import FakeAnthropic, Round

pytestmark = needs_docker

REPO = "acme/widgets"
BRANCH = "claude/issue-1"
HUMAN = "Hu Man <hu@example.com>"


class PushesDuringTheFollowUp(FakeAnthropic):
    """The loopback API, calling ``during`` once, when the first model call of a later round arrives."""

    def __init__(self, *args: Any, during: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._during = during
        self._once = threading.Lock()
        self.fired = threading.Event()

    def _answer(self, body: dict[str, Any]) -> tuple[str, int | None, list[dict[str, Any]], str]:
        round_, _, _ = self._round(body.get("messages") or [])
        if round_ >= 1 and body.get("tools"):
            with self._once:
                if not self.fired.is_set():
                    self._during()
                    self.fired.set()
        return super()._answer(body)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_a_commit_pushed_while_the_follow_up_runs_is_kept_and_claudes_goes_on_top(
    github: FakeGitHub, e2e_config: Callable[..., Config], claude_image: str, state_dir: Path
) -> None:
    repo = github.repo(REPO)
    github.create_issue(REPO, "Say hello", "Please add a HELLO.md.", labels=["Claude"], user="maintainer")
    pushed: list[str] = []

    def person_pushes() -> None:
        files = {"HUMAN.md": "a human was here\n"}
        pushed.append(github.commit_files(REPO, BRANCH, files, message="A human's commit", author=HUMAN))

    later = Round(files={"MORE.md": "More from the same session\n"}, final_text="Done: MORE.md added too.")
    with PushesDuringTheFollowUp(
        api_key=CLAUDE_KEY,
        files={"HELLO.md": "Hello from the real CLI\n"},
        followups=(later,),
        during=person_pushes,
    ) as api:
        config = e2e_config(
            **real_cli(claude_image, api.url),
            POLL_INTERVAL="1",
        )
        parts = build(config)
        queue = drive(config, all_finished, timeout=300, parts=parts)
        [first] = queue.list()
        assert first.state is TaskState.COMPLETED, first.error
        [pr] = github.pulls(REPO)
        started_from = repo.branch_sha(BRANCH)
        github.add_comment(REPO, pr["number"], "@claude please add MORE.md too", user="maintainer")

        def followup_done(q: TaskQueue) -> bool:
            return any(t.kind == FOLLOWUP and not t.state.live for t in q.list())

        queue = drive(config, followup_done, timeout=300, parts=parts)
        assert api.fired.is_set(), "the follow-up never asked the model: nobody pushed meanwhile"
    [task] = [t for t in queue.list() if t.kind == FOLLOWUP]
    assert task.state is TaskState.COMPLETED, task.error
    # The person's commit is kept, directly under Claude's; nothing was forced.
    [human] = pushed
    assert repo.git("rev-parse", f"{BRANCH}^").strip() == human
    repo.git("merge-base", "--is-ancestor", str(started_from), human)  # raises when it is not
    log = repo.git("log", "--format=%s | %an", f"main..{BRANCH}").splitlines()
    assert len(log) == 3 and log[1] == "A human's commit | Hu Man", log
    assert repo.read_file(BRANCH, "HUMAN.md") == "a human was here\n"
    assert repo.read_file(BRANCH, "MORE.md") == "More from the same session\n"
    assert repo.read_file(BRANCH, "HELLO.md") == "Hello from the real CLI\n"
    assert [p["number"] for p in github.pulls(REPO)] == [pr["number"]]
    [answer] = [c["body"] for c in github.comments(REPO, pr["number"]) if task.id in c["body"]]
    assert answer.startswith("✅") and "had moved while Claude worked (1 new commit(s) by Hu Man)" in answer
    text = task_log_path(config.log_dir, task.id).read_text()
    assert "moved on acme/widgets while Claude worked: putting its commits on top" in text
    assert "the branch had moved (1 new commit(s) by Hu Man); Claude's commit(s) were put on top" in text
