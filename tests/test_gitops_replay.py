"""#11's mechanic on real git: a task's commits replayed onto a branch that moved on the remote.

A bare "remote", the Docker backend's mirror and worktree (no container is needed: this is host-side
git), a person's clone that pushes meanwhile. The replay keeps authors and messages and the person's
commit is an ancestor; a conflict names the path and changes nothing; what the agent wrote into the
worktree (a ``.git`` pointing at a repository of its own with hooks, an fsmonitor and a filter) is
never run.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from claude_issue_solver.backends import git as gitops
from claude_issue_solver.backends.base import PushRejected, PushRequest, RebaseConflict, WorkspaceSpec
from claude_issue_solver.backends.docker import DockerBackend, DockerWorkspace
from claude_issue_solver.backends.settings import DockerSettings
from claude_issue_solver.credentials import GitCredential
from claude_issue_solver.logs import TaskLog

REPO = "acme/widgets"
BRANCH = "claude/issue-7"
CREDENTIAL = GitCredential("x-access-token", "not-used-by-a-local-remote")
AUTHOR = ("claude-issue-solver[bot]", "bot@example.invalid")
MESSAGE = "Fix the widget — «naïve» ✓\n\nCloses #7.\n\n  indented line kept\n"


def git(*args: str, cwd: Path) -> str:
    proc = subprocess.run(
        ["git", "-c", "user.name=Hu Man", "-c", "user.email=hu@example.com", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, f"git {' '.join(args)} failed: {proc.stderr}"
    return proc.stdout.strip()


def message_of(repo: Path, rev: str) -> str:
    """A commit's message exactly as stored (the helper above strips output)."""
    raw = subprocess.run(["git", "cat-file", "commit", rev], cwd=repo, capture_output=True, check=True)
    return raw.stdout.decode().partition("\n\n")[2]


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.remote = tmp_path / "remote.git"
        git("init", "--quiet", "--bare", "-b", "main", str(self.remote), cwd=tmp_path)
        self.person = tmp_path / "person"
        git("clone", "--quiet", str(self.remote), str(self.person), cwd=tmp_path)
        (self.person / "widget.txt").write_text("one\ntwo\nthree\n")
        git("add", ".", cwd=self.person)
        git("commit", "--quiet", "-m", "Start", cwd=self.person)
        git("push", "--quiet", "origin", "HEAD:main", f"HEAD:{BRANCH}", cwd=self.person)
        self.backend = DockerBackend(DockerSettings(state_dir=tmp_path / "state"))
        self.log = TaskLog(tmp_path / "task.log")

    def prepare(self) -> DockerWorkspace:
        spec = WorkspaceSpec(
            "widgets-7-abc123", REPO, 7, str(self.remote), "main", BRANCH, lambda: CREDENTIAL
        )
        return self.backend.prepare(spec, self.log)

    def person_pushes(self, path: str, text: str, message: str = "A person's commit") -> str:
        git("fetch", "--quiet", "origin", cwd=self.person)
        git("checkout", "--quiet", "-B", BRANCH, f"origin/{BRANCH}", cwd=self.person)
        (self.person / path).write_text(text)
        git("add", ".", cwd=self.person)
        git("commit", "--quiet", "-m", message, cwd=self.person)
        git("push", "--quiet", "origin", f"HEAD:{BRANCH}", cwd=self.person)
        return git("rev-parse", "HEAD", cwd=self.person)

    def request(self, branch: str = BRANCH) -> PushRequest:
        return PushRequest(branch, str(self.remote), MESSAGE, AUTHOR, CREDENTIAL)

    def push(self, ws: DockerWorkspace, branch: str = BRANCH) -> str:
        return self.backend.commit_and_push(ws, self.request(branch), self.log).sha

    def remote_head(self, branch: str = BRANCH) -> str:
        return git("rev-parse", branch, cwd=self.remote)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_our_commits_go_on_top_of_a_persons_with_author_and_message_kept(world: World) -> None:
    ws = world.prepare()
    theirs = world.person_pushes("notes.txt", "by hand\n")
    (ws.worktree / "widget.txt").write_text("one\nTWO\nthree\n")
    with pytest.raises(PushRejected) as refused:
        world.push(ws)
    assert refused.value.moved
    assert world.remote_head() == theirs  # refused: nothing of theirs was touched
    ours = gitops.rev_parse(ws.mirror, f"refs/heads/{BRANCH}")
    assert ours is not None
    rebased = world.backend.rebase_onto_remote(ws, world.request(), world.log)
    assert rebased.onto == theirs and rebased.new_commits == 1 and rebased.authors == ("Hu Man",)
    assert rebased.replayed == 1 and rebased.sha != ours
    # The worktree is at the result, clean; the person's file is in it.
    assert (ws.worktree / "notes.txt").read_text() == "by hand\n"
    assert not gitops.status_changes(ws.worktree, git_dir=gitops.worktree_git_dir(ws.mirror, ws.worktree))
    assert world.push(ws) == rebased.sha == world.remote_head()
    git("merge-base", "--is-ancestor", theirs, BRANCH, cwd=world.remote)
    assert git("rev-list", "--count", f"{theirs}..{BRANCH}", cwd=world.remote) == "1"
    # Author (name, email, date), committer identity and message byte for byte.
    fmt = "--format=%an|%ae|%at|%cn|%ce"
    assert git("log", "-1", fmt, BRANCH, cwd=world.remote) == git("log", "-1", fmt, ours, cwd=ws.mirror)
    assert message_of(world.remote, BRANCH) == message_of(ws.mirror, ours)
    assert "«naïve» ✓\n\nCloses #7.\n\n  indented line kept" in message_of(ws.mirror, ours)
    assert git("show", f"{BRANCH}:widget.txt", cwd=world.remote) == "one\nTWO\nthree"
    assert (world.backend.task_dir(ws.task_id) / "base_sha").read_text() == theirs


def test_several_commits_by_different_authors_are_replayed_in_order(world: World) -> None:
    ws = world.prepare()
    git_dir = gitops.worktree_git_dir(ws.mirror, ws.worktree)
    assert git_dir is not None
    for n, author in ((1, "Ada <ada@example.com>"), (2, "Bob <bob@example.com>")):
        (ws.worktree / f"part{n}.txt").write_text(f"{n}\n")
        name, email = author[:-1].split(" <")
        gitops.commit_all(ws.worktree, f"Part {n}\n", name, email, git_dir=git_dir)
    world.person_pushes("notes.txt", "by hand\n")
    rebased = world.backend.rebase_onto_remote(ws, world.request(), world.log)
    assert rebased.replayed == 2
    world.push(ws)
    log = git("log", "--format=%s|%an|%ae", BRANCH, cwd=world.remote).splitlines()
    assert log == [
        "Part 2|Bob|bob@example.com",
        "Part 1|Ada|ada@example.com",
        "A person's commit|Hu Man|hu@example.com",
        "Start|Hu Man|hu@example.com",
    ]


def test_a_conflict_names_the_path_and_changes_nothing(world: World) -> None:
    ws = world.prepare()
    theirs = world.person_pushes("widget.txt", "one\ntheirs\nthree\n")
    (ws.worktree / "widget.txt").write_text("one\nours\nthree\n")
    with pytest.raises(PushRejected):
        world.push(ws)
    git_dir = gitops.worktree_git_dir(ws.mirror, ws.worktree)
    assert git_dir is not None
    head = gitops.rev_parse(ws.worktree, "HEAD", git_dir=git_dir)
    with pytest.raises(RebaseConflict) as conflict:
        world.backend.rebase_onto_remote(ws, world.request(), world.log)
    assert conflict.value.paths == ("widget.txt",) and "widget.txt" in str(conflict.value)
    assert world.remote_head() == theirs
    assert gitops.rev_parse(ws.worktree, "HEAD", git_dir=git_dir) == head
    assert (ws.worktree / "widget.txt").read_text() == "one\nours\nthree\n"
    assert not gitops.status_changes(ws.worktree, git_dir=git_dir)
    # The side branch the pipeline pushes to: new, with our commit, the person's branch untouched.
    side = f"{BRANCH}-{ws.task_id}"
    assert world.push(ws, side) == head == world.remote_head(side)
    assert world.remote_head() == theirs


def test_nothing_the_agent_wrote_into_the_worktree_runs(world: World, tmp_path: Path) -> None:
    ws = world.prepare()
    theirs = world.person_pushes("notes.txt", "by hand\n")
    # The agent points .git at a repository of its own whose config and hooks would run commands.
    evil = tmp_path / "evil"
    git("init", "--quiet", str(evil), cwd=tmp_path)
    ran = tmp_path / "ran"
    hook = f'#!/bin/sh\necho "$0" >> {ran}\n'
    for name in ("post-checkout", "post-rewrite", "reference-transaction", "pre-push", "post-commit"):
        path = evil / ".git" / "hooks" / name
        path.write_text(hook)
        path.chmod(0o755)
    with (evil / ".git" / "config").open("a") as config:
        config.write(f'[core]\n\tfsmonitor = "echo fsmonitor >> {ran}"\n')
        config.write(f'[filter "evil"]\n\tclean = "sh -c \\"echo clean >> {ran}; cat\\""\n')
        config.write(f'\tsmudge = "sh -c \\"echo smudge >> {ran}; cat\\""\n')
    (ws.worktree / ".git").write_text(f"gitdir: {evil / '.git'}\n")
    (ws.worktree / ".gitattributes").write_text("* filter=evil\n")
    (ws.worktree / "widget.txt").write_text("one\nTWO\nthree\n")
    with pytest.raises(PushRejected):
        world.push(ws)
    rebased = world.backend.rebase_onto_remote(ws, world.request(), world.log)
    assert world.push(ws) == rebased.sha == world.remote_head()
    assert rebased.onto == theirs
    assert not ran.exists(), ran.read_text()
    assert (ws.worktree / ".git").read_text() == f"gitdir: {evil / '.git'}\n"  # left as the agent made it
    assert git("rev-list", "--all", "--count", cwd=evil) == "0"  # its repository got nothing of ours


def test_a_refusal_by_the_remote_is_not_a_branch_that_moved(world: World) -> None:
    ws = world.prepare()
    hook = world.remote / "hooks" / "pre-receive"
    hook.write_text(
        "#!/bin/sh\necho 'protected branch: changes must be made through a pull request'\nexit 1\n"
    )
    hook.chmod(0o755)
    before = world.remote_head()
    (ws.worktree / "widget.txt").write_text("one\nTWO\nthree\n")
    with pytest.raises(PushRejected) as refused:
        world.push(ws)
    assert not refused.value.moved and "pre-receive hook declined" in str(refused.value)
    assert "protected branch" in str(refused.value) and world.remote_head() == before


def test_a_second_replay_after_a_crash_replays_only_ours(world: World) -> None:
    ws = world.prepare()
    start = world.remote_head()
    world.person_pushes("notes.txt", "by hand\n")
    (ws.worktree / "widget.txt").write_text("one\nTWO\nthree\n")
    with pytest.raises(PushRejected):
        world.push(ws)
    world.backend.rebase_onto_remote(ws, world.request(), world.log)
    # Killed after the reset, before the new base was written: the old base is on record.
    (world.backend.task_dir(ws.task_id) / "base_sha").write_text(start)
    world.person_pushes("later.txt", "again\n", message="A second commit")
    with pytest.raises(PushRejected):
        world.push(ws)
    again = world.backend.rebase_onto_remote(ws, world.request(), world.log)
    assert again.replayed == 1 and again.new_commits == 1
    world.push(ws)
    log = git("log", "--format=%s", BRANCH, cwd=world.remote).splitlines()
    assert log == [MESSAGE.splitlines()[0], "A second commit", "A person's commit", "Start"]
