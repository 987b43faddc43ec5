"""#11 end to end on Daytona: a person creates ``claude/issue-N`` while the first run's agent works.

The real daemon and pipeline, the real SDK against the loopback Daytona, the fake ``claude`` in the
sandbox holding the run open (scenario ``wait``) until the test pushes the person's commit and releases
it: no sleep. The push finds the branch moved, the commits are replayed on this host through git
bundles, and the pull request's branch holds the person's commit with Claude's on top.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from claude_issue_solver.config import Config
from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.logs import task_log_path
from claude_issue_solver.store.queue import TaskQueue, TaskState
from tests import test_e2e_daytona
from tests.e2e import drive, labelled, our_comments
from tests.fakes.fake_daytona import SANDBOX_USER, FakeDaytona
from tests.github_fixtures import TOKEN

fake = test_e2e_daytona.fake  # the loopback Daytona, and the daemon's settings for it
e2e_config = test_e2e_daytona.e2e_config
BRANCH = "claude/issue-1"


def test_a_branch_a_person_pushed_while_the_agent_worked_gets_claudes_commit_on_top(
    github: FakeGitHub, fake: FakeDaytona, e2e_config: Callable[..., Config]
) -> None:
    issue = labelled(github, "Add a fix file", "wait")
    pushed: list[str] = []

    def meanwhile(queue: TaskQueue) -> bool:
        """Once the agent is waiting in its sandbox: the person pushes, then the agent is released."""
        tasks = queue.list()
        if not tasks:  # the first poll is scheduled, not necessarily in the first cycle
            return False
        [task] = tasks
        if not pushed and task.meta.get("phase") == "agent" and fake.sandboxes:
            [sandbox] = fake.sandboxes.values()
            repo = Path(sandbox["dir"]) / "home" / SANDBOX_USER / "repo"
            if repo.is_dir():
                files = {"HUMAN.md": "a human was here\n"}
                sha = github.commit_files("acme/widgets", BRANCH, files, message="A human's commit")
                pushed.append(sha)
                (repo / ".fake-claude-release").write_text("go")
        return not task.state.live

    queue = drive(e2e_config(), meanwhile)
    [task] = queue.list()
    assert task.state is TaskState.COMPLETED, task.error
    [human] = pushed
    repo = github.repo("acme/widgets")
    assert repo.git("rev-parse", f"{BRANCH}^").strip() == human
    assert repo.read_file(BRANCH, "HUMAN.md") == "a human was here\n"
    assert "CLAUDE_FIX.md" in repo.git("ls-tree", "--name-only", BRANCH).split()
    [pr] = github.pulls("acme/widgets")
    assert pr["head"]["ref"] == BRANCH
    [comment] = our_comments(github, issue["number"])
    assert (
        comment["body"].startswith("✅")
        and "had moved while Claude worked (1 new commit(s)" in comment["body"]
    )
    text = task_log_path(e2e_config().log_dir, task.id).read_text()
    assert "putting its commits on top" in text and "replayed 1 commit(s) on top" in text
    assert TOKEN not in text and fake.sandboxes == {}
