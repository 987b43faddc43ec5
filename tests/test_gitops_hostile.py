"""Host-side git over a tree the agent wrote never runs what the tree configures (issue #18).

Real git, a bare "remote", a mirror and a worktree made the way the Docker backend makes them (no
container: this is the host's side). The agent's moves are played by the test: a nested repository
whose own config defines a ``clean`` filter, an fsmonitor and hooks, at a submodule's path and
elsewhere; a ``.gitattributes`` naming a filter that the daemon user's own (global, system,
environment) configuration defines. Every host command the backend runs over the tree -- status, the
diffstat, commit, the reset after a replay, the setup cache's listing -- runs none of them, commits no
nested repository as a gitlink, and says what it left out.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from claude_issue_solver.backends import git as gitops
from claude_issue_solver.backends.docker_setup_cache import untracked_paths
from tests.hostile_tree import marker_for, plant_nested_repo, ran

BRANCH = "claude/issue-7"
AUTHOR = ("claude-issue-solver[bot]", "bot@example.invalid")
SUBMODULE_SHA = "1" * 40


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


def gitlinks(repo: Path, rev: str) -> list[str]:
    """The paths ``rev``'s tree holds as gitlinks (mode 160000)."""
    out = git("ls-tree", "-r", "-z", rev, cwd=repo)
    entries = (e.partition("\t") for e in out.split("\0") if e)
    return [path for meta, _, path in entries if meta.startswith("160000 ")]


class Repo:
    """A remote, the daemon's mirror of it, and a run's worktree on ``BRANCH``."""

    def __init__(self, tmp_path: Path, *, submodule: bool) -> None:
        self.tmp = tmp_path
        self.remote = tmp_path / "remote.git"
        git("init", "--quiet", "--bare", "-b", "main", str(self.remote), cwd=tmp_path)
        seed = tmp_path / "seed"
        git("init", "--quiet", "-b", "main", str(seed), cwd=tmp_path)
        (seed / "widget.txt").write_text("one\n")
        if submodule:
            (seed / ".gitmodules").write_text('[submodule "evil"]\n\tpath = vendor/evil\n\turl = ../evil\n')
        git("add", "-A", cwd=seed)
        if submodule:  # a gitlink whose directory is empty, as in a checkout without submodules
            git("update-index", "--add", "--cacheinfo", f"160000,{SUBMODULE_SHA},vendor/evil", cwd=seed)
        git("commit", "--quiet", "-m", "Start", cwd=seed)
        git("push", "--quiet", str(self.remote), "HEAD:main", cwd=seed)
        self.mirror = tmp_path / "state" / "mirrors" / "acme" / "widgets.git"
        self.runs = 0
        self.worktree: Path | None = None

    def new_run(self) -> tuple[Path, Path, str]:
        """A worktree of a new run on the branch (from the remote's branch once a run pushed it)."""
        self.runs += 1
        if self.worktree is not None:  # the previous run's, removed as the backend removes it
            gitops.remove_worktree(self.mirror, self.worktree)
        self.worktree = worktree = self.tmp / "state" / "worktrees" / f"run-{self.runs}"
        gitops.ensure_mirror(self.mirror, str(self.remote), None)
        start = gitops.start_point(self.mirror, BRANCH, "main")
        git_dir = gitops.add_worktree(self.mirror, worktree, BRANCH, start)
        base = gitops.rev_parse(worktree, "HEAD", git_dir=git_dir)
        assert base is not None
        return worktree, git_dir, base

    def publish(self, worktree: Path, git_dir: Path) -> str:
        head = gitops.commit_all(worktree, "Fix\n", *AUTHOR, git_dir=git_dir)
        gitops.push(worktree, BRANCH, None, git_dir=git_dir)
        return head


def every_host_command(worktree: Path, git_dir: Path, base: str) -> tuple[list[str], str, gitops.Fence]:
    """What the Docker backend runs over a tree after the agent: changes, diffstat, the setup listing."""
    files = gitops.status_changes(worktree, git_dir=git_dir)
    stat = gitops.diffstat(worktree, base, git_dir=git_dir)
    untracked_paths(worktree, git_dir)
    gitops.current_branch(worktree, git_dir=git_dir)
    return files, stat, gitops.find_fence(worktree, git_dir=git_dir)


def test_a_repository_planted_at_a_submodules_path_runs_nothing_and_is_left_out(tmp_path: Path) -> None:
    repo = Repo(tmp_path, submodule=True)
    marker = marker_for(tmp_path)
    worktree, git_dir, base = repo.new_run()
    plant_nested_repo(worktree / "vendor" / "evil", marker)
    plant_nested_repo(worktree / "tools" / "other", marker)
    (worktree / "widget.txt").write_text("two\n")

    files, stat, fence = every_host_command(worktree, git_dir, base)
    assert ran(marker) == []
    assert files == ["widget.txt"]
    assert "widget.txt" in stat and "vendor/evil" not in stat and "tools/other" not in stat
    assert [entry.path for entry in fence.left_out] == ["tools/other", "vendor/evil"]

    head = repo.publish(worktree, git_dir)
    assert ran(marker) == []
    # The submodule's commit is untouched, the planted repository is no gitlink, nothing of either is in.
    assert gitlinks(repo.remote, BRANCH) == ["vendor/evil"]
    assert git("rev-parse", f"{BRANCH}:vendor/evil", cwd=repo.remote) == SUBMODULE_SHA
    assert git("diff", "--name-only", base, head, cwd=repo.remote).splitlines() == ["widget.txt"]

    gitops.reset_worktree(worktree, base, git_dir=git_dir)  # as after a replay onto a moved branch
    assert ran(marker) == []
    assert (worktree / "vendor" / "evil" / ".git").is_dir()  # left as it was: not recursed into


def test_without_a_submodule_no_gitlink_is_committed_and_the_next_run_is_safe(tmp_path: Path) -> None:
    repo = Repo(tmp_path, submodule=False)
    marker = marker_for(tmp_path)
    worktree, git_dir, base = repo.new_run()
    plant_nested_repo(worktree / "vendor" / "evil", marker)
    (worktree / "vendor" / "kept.txt").write_text("a file beside it is committed\n")

    files, _stat, fence = every_host_command(worktree, git_dir, base)
    assert files == ["vendor/kept.txt"]
    assert [(e.path, e.why) for e in fence.left_out] == [("vendor/evil", gitops.NESTED_REPOSITORY)]
    repo.publish(worktree, git_dir)
    assert gitlinks(repo.remote, BRANCH) == []
    assert git("ls-tree", "-r", "--name-only", BRANCH, cwd=repo.remote).splitlines() == [
        "vendor/kept.txt",
        "widget.txt",
    ]

    # A follow-up or retry on the same branch: the agent plants it again over what was pushed.
    worktree, git_dir, base = repo.new_run()
    plant_nested_repo(worktree / "vendor" / "evil", marker)
    (worktree / "widget.txt").write_text("two\n")
    files, _stat, fence = every_host_command(worktree, git_dir, base)
    repo.publish(worktree, git_dir)
    gitops.reset_worktree(worktree, base, git_dir=git_dir)
    assert ran(marker) == []
    assert files == ["widget.txt"] and [e.path for e in fence.left_out] == ["vendor/evil"]
    assert gitlinks(repo.remote, BRANCH) == []


def test_a_gitlink_that_slips_past_the_listing_is_never_committed(tmp_path: Path) -> None:
    """A nested repository the listing did not see (it appeared after it) is unstaged again."""
    repo = Repo(tmp_path, submodule=False)
    worktree, git_dir, _base = repo.new_run()
    stale = gitops.find_fence(worktree, git_dir=git_dir)  # taken before the repository appears
    plant_nested_repo(worktree / "late", marker_for(tmp_path))
    (worktree / "widget.txt").write_text("two\n")
    gitops.commit_all(worktree, "Fix\n", *AUTHOR, git_dir=git_dir, fence=stale)
    assert gitlinks(repo.mirror, BRANCH) == []
    assert ran(marker_for(tmp_path)) == []


def test_the_daemon_users_own_git_configuration_never_applies_to_the_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filter the daemon user's global, XDG, system or environment config defines is not run, and
    the tree's ``.gitattributes`` cannot name one: the bytes the agent wrote are the bytes committed."""
    marker = marker_for(tmp_path)
    home = tmp_path / "home"
    xdg = tmp_path / "xdg"
    (xdg / "git").mkdir(parents=True)
    home.mkdir()
    driver = f'[filter "x"]\n\tclean = "touch {marker}.global; tr a-z A-Z"\n\trequired = true\n'
    (home / ".gitconfig").write_text(driver)
    (xdg / "git" / "config").write_text(driver.replace(".global", ".xdg"))
    (xdg / "git" / "attributes").write_text("*.txt filter=x\n")
    system = tmp_path / "system-gitconfig"
    system.write_text(driver.replace(".global", ".system"))
    repo = Repo(tmp_path, submodule=False)  # made by the test's own git, before the daemon user's config
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    monkeypatch.setenv("GIT_CONFIG_SYSTEM", str(system))
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "filter.y.clean")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", f"touch {marker}.env; cat")
    monkeypatch.setenv("GIT_CONFIG_PARAMETERS", f"'filter.z.clean'='touch {marker}.params; cat'")

    worktree, git_dir, base = repo.new_run()
    (worktree / ".gitattributes").write_text("* filter=x\n*.md filter=y\n*.py filter=z\n")
    (worktree / "widget.txt").write_text("lower case stays\n")
    (worktree / "notes.md").write_text("md\n")
    (worktree / "tool.py").write_text("py\n")

    every_host_command(worktree, git_dir, base)
    repo.publish(worktree, git_dir)
    gitops.reset_worktree(worktree, base, git_dir=git_dir)
    assert ran(marker) == []
    assert git("show", f"{BRANCH}:widget.txt", cwd=repo.remote) == "lower case stays"
