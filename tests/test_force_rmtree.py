"""Removing a tree the agent made: unreadable, unwritable and unsearchable directories (``chmod 000``,
nested), links it planted, a deep tree; as the test's user and, where the tests run as root (which
ignores permissions for most things), as an unprivileged uid in a child process, which is where
``shutil.rmtree``'s error handler raised ``TypeError`` and leaked the worktree (issue #19).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from claude_issue_solver.backends import git as gitops

NOBODY = 65534


def hostile_tree(root: Path) -> None:
    """What an agent can leave: nested 000 directories, a 000 file, a read-only and a search-only
    directory, and links out of the tree."""
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "a" / "b" / "c" / "deep.txt").write_text("x")
    (root / "a" / "f.txt").write_text("x")
    (root / "ro").mkdir()
    (root / "ro" / "kept.txt").write_text("x")
    (root / "xonly").mkdir()
    (root / "xonly" / "inside.txt").write_text("x")
    (root / "locked.txt").write_text("x")
    os.chmod(root / "locked.txt", 0)
    for directory in ("a/b/c", "a/b", "a"):
        os.chmod(root / directory, 0)
    os.chmod(root / "ro", stat.S_IRUSR | stat.S_IXUSR)
    os.chmod(root / "xonly", stat.S_IXUSR)
    os.chmod(root, 0)


def outside_dir(base: Path) -> Path:
    outside = base / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    os.chmod(outside, 0o750)
    return outside


def test_a_hostile_tree_is_removed_and_links_are_never_followed(tmp_path: Path) -> None:
    outside = outside_dir(tmp_path)
    tree = tmp_path / "worktree"
    tree.mkdir()
    (tree / "link-dir").symlink_to(outside)
    (tree / "sub").mkdir()
    (tree / "sub" / "link-file").symlink_to(outside / "precious.txt")
    hostile_tree(tree)

    gitops.force_rmtree(tree)

    assert not tree.exists() and not tree.is_symlink()
    assert (outside / "precious.txt").read_text() == "keep me"
    assert stat.S_IMODE(outside.stat().st_mode) == 0o750  # a link's target never gets a new mode


def test_a_deep_tree_is_removed_without_recursion_or_many_descriptors(tmp_path: Path) -> None:
    tree = tmp_path / "deep"
    path = tree
    for _ in range(300):  # deeper than _RM_MAX_DEPTH several times over
        path = path / "d"
    path.mkdir(parents=True)
    (path / "bottom.txt").write_text("x")
    os.chmod(path, 0)
    gitops.force_rmtree(tree)
    assert not tree.exists()


def test_a_missing_path_a_file_and_a_link_at_the_top(tmp_path: Path) -> None:
    gitops.force_rmtree(tmp_path / "missing")
    single = tmp_path / "single.txt"
    single.write_text("x")
    gitops.force_rmtree(single)
    assert not single.exists()
    outside = outside_dir(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(outside)
    gitops.force_rmtree(link)
    assert not link.is_symlink() and (outside / "precious.txt").exists()


# --- as an unprivileged uid ---------------------------------------------------------------------------

needs_root = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="switching to another uid needs root; the tests above already run unprivileged here",
)


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A directory the unprivileged uid owns (the test's tmp_path is private to root)."""
    base = Path(tempfile.mkdtemp(prefix="cis-rmtree-"))
    os.chown(base, NOBODY, NOBODY)
    try:
        yield base
    finally:
        gitops.force_rmtree(base)  # as root


def as_nobody(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``script`` as uid/gid 65534; the package is imported before the switch (the interpreter's own
    files may be out of that uid's reach)."""
    prologue = textwrap.dedent(
        f"""
        import os, sys, shutil, subprocess
        from pathlib import Path
        from claude_issue_solver.backends import git as gitops
        from tests.test_force_rmtree import hostile_tree
        os.setgroups([])
        os.setgid({NOBODY})
        os.setuid({NOBODY})
        """
    )
    return subprocess.run(
        [sys.executable, "-c", prologue + textwrap.dedent(script)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@needs_root
def test_as_an_unprivileged_user_a_chmod_000_tree_is_removed(nobody_dir: Path) -> None:
    proc = as_nobody(
        f"""
        root = Path({str(nobody_dir)!r}) / "tree"
        root.mkdir()
        hostile_tree(root)
        try:
            shutil.rmtree(root, onerror=lambda f, p, e: f(p))  # what force_rmtree used to do
        except TypeError as exc:
            print("old way:", exc)
        gitops.force_rmtree(root)
        print("exists:", os.path.lexists(root))
        """,
        nobody_dir,
    )
    assert proc.returncode == 0, proc.stderr
    assert "old way: open() missing required argument" in proc.stdout  # the bug, reproduced
    assert "exists: False" in proc.stdout


@needs_root
def test_as_an_unprivileged_user_what_cannot_be_removed_is_named_and_the_rest_goes(nobody_dir: Path) -> None:
    tree = nobody_dir / "tree"
    (tree / "theirs").mkdir(parents=True)
    (tree / "theirs" / "root-owned.txt").write_text("x")
    (tree / "mine").mkdir()
    (tree / "mine" / "f.txt").write_text("x")
    for path in (tree, tree / "mine", tree / "mine" / "f.txt"):
        os.chown(path, NOBODY, NOBODY)
    os.chmod(tree / "mine", 0)
    os.chmod(tree / "theirs", 0o755)  # root's: the unprivileged daemon can neither empty nor chmod it
    proc = as_nobody(
        f"""
        try:
            gitops.force_rmtree(Path({str(tree)!r}))
        except OSError as exc:
            print("error:", exc)
        """,
        nobody_dir,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"error: could not remove all of {tree}: {tree}/theirs/root-owned.txt: Permission denied" in (
        proc.stdout
    )
    assert not (tree / "mine").exists()
    assert (tree / "theirs" / "root-owned.txt").exists()


@needs_root
def test_as_an_unprivileged_user_the_next_worktree_of_the_issue_is_made(nobody_dir: Path) -> None:
    """The reported failure: the worktree leaked and the next task's ``prepare`` failed for good."""
    proc = as_nobody(
        """
        base = Path.cwd()
        def git(*args, cwd=base):
            subprocess.run(["git", "-c", "user.name=S", "-c", "user.email=s@example.com", *args],
                           cwd=cwd, check=True, capture_output=True)
        git("init", "-q", "--bare", "-b", "main", str(base / "remote.git"))
        git("init", "-q", "-b", "main", str(base / "seed"))
        (base / "seed" / "README.md").write_text("r\\n")
        git("add", "-A", cwd=base / "seed")
        git("commit", "-qm", "start", cwd=base / "seed")
        git("push", "-q", str(base / "remote.git"), "main", cwd=base / "seed")
        mirror = base / "state" / "mirrors" / "acme" / "widgets.git"
        branch = "claude/issue-7"
        for run in (1, 2):
            gitops.ensure_mirror(mirror, str(base / "remote.git"), None)
            stale = gitops.worktree_holding(mirror, branch)
            if stale is not None:
                gitops.remove_worktree(mirror, stale)
            worktree = base / "state" / "worktrees" / f"widgets-7-run{run}"
            start = gitops.start_point(mirror, branch, "main")
            gitops.add_worktree(mirror, worktree, branch, start)
            print("prepared", run)
            (worktree / "node_modules" / "pkg").mkdir(parents=True)
            (worktree / "node_modules" / "pkg" / "index.js").write_text("x")
            os.chmod(worktree / "node_modules" / "pkg", 0)
            os.chmod(worktree / "node_modules", 0)
        gitops.remove_worktree(mirror, worktree)
        print("left:", sorted(p.name for p in (base / "state" / "worktrees").iterdir()))
        """,
        nobody_dir,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:3] == ["prepared 1", "prepared 2", "left: []"]
