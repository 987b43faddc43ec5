"""#18 end to end: the real Claude Code CLI, told by the loopback Messages API to run a Bash command,
plants a git repository whose own config runs a command (a clean filter named by its .gitattributes,
an fsmonitor) inside the tree. The daemon opens the PR without running it, commits no gitlink, and says
in the PR what it left out; a follow-up on the same branch plants it again, with the same result."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path

import pytest

from claude_issue_solver.app import build
from claude_issue_solver.config import Config
from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.store.queue import FOLLOWUP, TaskQueue, TaskState
from tests.e2e import CLAUDE_KEY, all_finished, drive, needs_docker, real_cli
from tests.fakes.fake_anthropic import FakeAnthropic, Round
from tests.hostile_tree import marker_for, ran

pytestmark = needs_docker


def plant(marker: Path) -> str:
    """The agent's Bash command: a nested repository with a stale file and commands in its config."""
    clean = shlex.quote(f"touch {marker}.clean; cat")
    fsmonitor = shlex.quote(f"touch {marker}.fsmonitor; false")
    return (
        "set -e; git init -q vendor/evil; cd vendor/evil; printf '* filter=x\\n' > .gitattributes; "
        "echo one > stale.txt; git add -A; "
        "git -c user.name=a -c user.email=a@example.invalid commit -qm planted; "
        f"git config filter.x.clean {clean}; git config filter.x.required true; "
        f"git config core.fsmonitor {fsmonitor}; echo two > stale.txt; touch -d 2000-01-01 stale.txt"
    )


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_a_repository_the_real_cli_plants_is_left_out_and_never_run_in_two_runs(
    github: FakeGitHub, e2e_config: Callable[..., Config], claude_image: str, state_dir: Path, tmp_path: Path
) -> None:
    marker = marker_for(tmp_path)  # a host path, not mounted into any container
    command = plant(marker)
    repo = github.repo("acme/widgets")
    github.create_issue(
        "acme/widgets", "Say hello", "Please add a HELLO.md.", labels=["Claude"], user="maintainer"
    )
    later = Round(files={"MORE.md": "more\n"}, final_text="Done: MORE.md added too.", commands=(command,))
    with FakeAnthropic(
        api_key=CLAUDE_KEY, files={"HELLO.md": "Hello\n"}, commands=(command,), followups=(later,)
    ) as api:
        config = e2e_config(**real_cli(claude_image, api.url), POLL_INTERVAL="1")
        parts = build(config)
        queue = drive(config, all_finished, timeout=300, parts=parts)
        [first] = queue.list()
        assert first.state is TaskState.COMPLETED, first.error
        assert ran(marker) == []
        [pr] = github.pulls("acme/widgets")
        assert "Not committed: `vendor/evil/` (a git repository of its own)" in pr["body"]
        assert repo.git("ls-tree", "-r", "claude/issue-1").count("160000 ") == 0

        github.add_comment("acme/widgets", pr["number"], "@claude please add MORE.md too", user="maintainer")

        def followup_done(q: TaskQueue) -> bool:
            return any(t.kind == FOLLOWUP and not t.state.live for t in q.list())

        queue = drive(config, followup_done, timeout=300, parts=parts)
        bash_calls = [
            block
            for r in api.conversation_requests
            for m in r.body.get("messages", [])
            if m.get("role") == "assistant" and isinstance(m.get("content"), list)
            for block in m["content"]
            if block.get("type") == "tool_use" and block.get("name") == "Bash"
        ]
    [task] = [t for t in queue.list() if t.kind == FOLLOWUP]
    assert task.state is TaskState.COMPLETED, task.error
    assert bash_calls, "the CLI never ran the planting command"
    assert ran(marker) == []
    tree = repo.git("ls-tree", "-r", "--name-only", "claude/issue-1").splitlines()
    assert "MORE.md" in tree and not [path for path in tree if path.startswith("vendor/")]
    assert repo.git("ls-tree", "-r", "claude/issue-1").count("160000 ") == 0
    [pr] = github.pulls("acme/widgets")
    assert "Not committed: `vendor/evil/`" in pr["body"]
    answers = [c["body"] for c in github.comments("acme/widgets", pr["number"]) if task.id in c["body"]]
    assert answers and "Not committed: `vendor/evil/`" in answers[-1]
