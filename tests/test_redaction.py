"""Nothing the agent wrote reaches GitHub unredacted (issue #18): its summary (the PR's title and body),
its answer (the issue comment) and anything else the daemon writes pass the secret redactor."""

from __future__ import annotations

from collections.abc import Callable

from claude_issue_solver.config import Config
from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.github.client import GitHubClient
from claude_issue_solver.logs import REDACTOR
from claude_issue_solver.store.outcome import TaskControl
from claude_issue_solver.store.queue import TaskQueue, TaskState
from claude_issue_solver.store.state import StateStore
from tests import test_pipeline
from tests.fakes.memory_backend import MemoryBackend, edits
from tests.github_fixtures import Clock

REPO = test_pipeline.REPO
CLAUDE_KEY = "sk-ant-api03-redactme0123456789abcdef"
MINTED = "cis-relay-token-minted-for-one-task-0123456789"  # a token the daemon minted (the relay's)


def test_the_agents_summary_and_answer_reach_github_redacted(
    github: FakeGitHub, gh_config: Callable[..., Config], state_dir: object
) -> None:
    config = gh_config(GITHUB_REPOS=REPO, ANTHROPIC_API_KEY=CLAUDE_KEY, AGENT_EGRESS="open")
    REDACTOR.add(MINTED)
    clock = Clock(start=1_900_000_000.0)
    queue = TaskQueue(StateStore(config.state_file), max_concurrent=3, clock=clock)
    backend = MemoryBackend()
    backend.on_push = lambda branch, files, message: github.commit_files(REPO, branch, files, message=message)
    leaked = f"key {CLAUDE_KEY} token {MINTED} and a GitHub one ghp_{'A' * 36}"
    backend.agents["agent"] = edits({"fix.txt": "fixed\n"}, f"Fix it, {leaked}\n\nThe body: {leaked}\n")
    world = test_pipeline.World(github, config, queue, backend, clock, [])
    task = world.task()

    outcome = world.pipeline().run(task, TaskControl())

    assert outcome is not None and outcome.state is TaskState.COMPLETED, outcome
    pull = github.pulls(REPO)[0]
    written = [pull["title"], pull["body"], *world.comments(task)]
    for text in written:
        assert CLAUDE_KEY not in text and MINTED not in text and "ghp_" not in text, text
    assert "***" in pull["title"] and "***" in pull["body"]
    message = github.repo(REPO).git("log", "-1", "--format=%B", f"claude/issue-{task.issue_number}")
    assert CLAUDE_KEY not in message and MINTED not in message and "***" in message


def test_every_body_written_to_github_is_redacted(
    github: FakeGitHub, gh_config: Callable[..., Config]
) -> None:
    """The boundary itself: a comment carrying a configured secret arrives masked."""
    config = gh_config(GITHUB_REPOS=REPO, ANTHROPIC_API_KEY=CLAUDE_KEY)
    REDACTOR.add(*config.secrets())
    issue = github.create_issue(REPO, "t", "b", user="maintainer")
    client = GitHubClient(config)
    client.request(
        REPO, "POST", f"/repos/{REPO}/issues/{issue['number']}/comments", body={"body": CLAUDE_KEY}
    )
    assert [c["body"] for c in github.comments(REPO, issue["number"])] == ["***"]
