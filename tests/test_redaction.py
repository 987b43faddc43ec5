"""Nothing the agent wrote reaches GitHub unredacted (issue #18): its summary (the PR's title and body),
its answer (the issue comment) and anything else the daemon writes pass the secret redactor."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from claude_issue_solver.config import Config
from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.github.client import GitHubClient
from claude_issue_solver.logs import REDACTOR, Redactor
from claude_issue_solver.relay.base import TOKEN_PREFIX
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


def test_the_redactor_keeps_a_token_s_value_only_while_it_works_and_its_shape_for_ever() -> None:
    """A daemon's life of tasks and hourly App tokens does not grow the list every line is checked
    against: expired and closed tokens leave it, and are still masked by their shape."""
    clock = Clock(start=1_900_000_000.0)
    redactor = Redactor(["a-configured-secret"], clock=clock)
    relay = f"{TOKEN_PREFIX}{hashlib.sha256(b'task').hexdigest()}"  # as the relay makes them
    minted = [f"ghs_{n:036d}" for n in range(2_000)]  # a GitHub App installation token an hour
    for n, token in enumerate(minted):
        clock.advance(3600)
        redactor.add(token, until=clock() + 3600)
        assert len(redactor) <= 3, n  # the configured secret, the live token, the one just expired
    redactor.add(relay)
    redactor.discard(relay)  # its task closed
    assert len(redactor) == 2
    line = f"a-configured-secret {minted[0]} {minted[-1]} {relay} Bearer {relay}."
    assert redactor(line) == "*** *** *** *** Bearer ***."
    redactor.discard("a-configured-secret")  # by value only: a configured secret has no shape
    assert redactor("a-configured-secret") == "a-configured-secret"


def test_a_closed_tasks_relay_token_is_still_masked_in_the_daemon_log() -> None:
    token = f"{TOKEN_PREFIX}{'0f' * 32}"
    REDACTOR.add(token)
    REDACTOR.discard(token)
    assert REDACTOR(f"the agent printed {token}\n") == "the agent printed ***\n"
