"""A branch that moved on the remote: the task's commits replayed onto it, object-level (nothing of the
worktree runs); and the bundles a sandbox's commits travel in."""

from __future__ import annotations

import functools
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from claude_issue_solver.backends.git.hardening import (
    _IDENT_RE,
    GitConflict,
    GitError,
    _tail,
    _transfer_error,
    run_git,
    tree_options,
)
from claude_issue_solver.backends.git.mirror import rev_parse
from claude_issue_solver.credentials import GitCredential

# --- a branch that moved on the remote --------------------------------------------------------------

# Who writes the throw-away commits that only steer merge-tree's merge base (never referenced).
_SCAFFOLD_ENV = {
    "GIT_AUTHOR_NAME": "claude-issue-solver",
    "GIT_AUTHOR_EMAIL": "scaffold@claude-issue-solver.invalid",
    "GIT_COMMITTER_NAME": "claude-issue-solver",
    "GIT_COMMITTER_EMAIL": "scaffold@claude-issue-solver.invalid",
}


@dataclass(frozen=True)
class Moved:
    """The commits of a run, replayed onto the branch's new remote head."""

    head: str  # the last replayed commit (``onto`` itself when every change was there already)
    onto: str
    new_commits: tuple[tuple[str, str], ...]  # (sha, author name) of the remote's commits, oldest first
    replayed: int


def fetch_branch(mirror_dir: Path, branch: str, credential: GitCredential | None) -> str:
    """Fetch ``branch`` of origin into ``refs/remotes/origin/<branch>``; returns its head there.

    Hold :func:`mirror_lock` around this and what uses the result.
    """
    ref = f"refs/remotes/origin/{branch}"
    proc = run_git(
        ["fetch", "--quiet", "--no-tags", "origin", f"+refs/heads/{branch}:{ref}"],
        cwd=mirror_dir,
        credential=credential,
        check=False,
    )
    if proc.returncode != 0:
        raise _transfer_error(f"`git fetch origin {branch}` in {mirror_dir}", proc, credential)
    sha = rev_parse(mirror_dir, ref)
    if sha is None:
        msg = f"`git fetch origin {branch}` in {mirror_dir} succeeded but left no {ref}"
        raise GitError(msg)
    return sha


# `git merge-tree --write-tree`, which replay_onto needs, came with git 2.38.
REPLAY_GIT = (2, 38)


@functools.cache
def git_version() -> tuple[int, ...] | None:
    """This host's git version, e.g. (2, 39, 5); None when it cannot be read."""
    try:
        out = subprocess.run(["git", "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", out)
    return tuple(int(n) for n in found.groups() if n is not None) if found else None


def can_replay() -> str | None:
    """Why this host's git cannot replay commits (:func:`replay_onto`); None when it can."""
    version = git_version()
    if version is None or version[:2] >= REPLAY_GIT:
        return None
    have = ".".join(map(str, version))
    need = ".".join(map(str, REPLAY_GIT))
    return (
        f"git {have} on this host cannot put commits on top of a moved branch "
        f"(`git merge-tree --write-tree` needs git {need} or later)"
    )


def replay_onto(mirror_dir: Path, base: str, head: str, onto: str) -> Moved:
    """Put the commits of ``base..head`` that ``onto`` lacks on top of ``onto``, object by object.

    Each commit becomes a new one with its author (name, email, date), its committer's identity and its
    message byte for byte, whose tree is the three-way merge of its parent's tree, its own and the new
    base's -- a cherry-pick, done by ``git merge-tree --write-tree`` and ``git commit-tree`` in the bare
    mirror: objects only, no index, no work tree, no hook, nothing of the worktree's. A commit whose
    change ``onto`` already holds is dropped. :class:`GitConflict` names the conflicting paths; nothing
    is changed then (the objects written are unreferenced). ``git merge-tree --merge-base`` needs git
    2.40; a throw-away commit with the new base's tree and the replayed commit's parent gives the same
    merge base on 2.38 and later.
    """
    too_old = can_replay()
    if too_old is not None:
        raise GitError(too_old)
    # ^onto as well as ^base: after an earlier replay (a crash before the new base was recorded) the
    # remote's commits are between base and head, and onto has them.
    span = [head, f"^{base}", f"^{onto}"]
    merges = run_git(["rev-list", "--count", "--merges", *span], cwd=mirror_dir).stdout.strip()
    if merges and int(merges) > 0:
        msg = f"{base[:12]}..{head[:12]} holds merge commits, which are not replayed onto {onto[:12]}"
        raise GitError(msg)
    ours = run_git(["rev-list", "--reverse", "--topo-order", *span], cwd=mirror_dir).stdout.split()
    listed = run_git(
        ["rev-list", "--reverse", "--no-commit-header", "--format=%H%x09%an", onto, f"^{head}", f"^{base}"],
        cwd=mirror_dir,
    ).stdout
    pairs = (line.partition("\t") for line in listed.splitlines())
    theirs = tuple((sha, name) for sha, tab, name in pairs if tab)
    current = onto
    replayed = 0
    for commit in ours:
        tree = _picked_tree(mirror_dir, commit, current)
        if tree == _tree_of(mirror_dir, current):
            continue  # the branch already has this change
        current = _recommit(mirror_dir, commit, tree, current)
        replayed += 1
    return Moved(current, onto, theirs, replayed)


def _tree_of(mirror_dir: Path, rev: str) -> str:
    return run_git(["rev-parse", "--verify", f"{rev}^{{tree}}"], cwd=mirror_dir).stdout.strip()


def _picked_tree(mirror_dir: Path, commit: str, onto: str) -> str:
    """The tree of ``commit``'s change applied to ``onto`` (merge base: ``commit``'s parent)."""
    parent = run_git(["rev-parse", "--verify", f"{commit}^1"], cwd=mirror_dir).stdout.strip()
    scaffold = run_git(
        ["commit-tree", _tree_of(mirror_dir, onto), "-p", parent],
        cwd=mirror_dir,
        env=_SCAFFOLD_ENV,
        input="scaffold\n",
    ).stdout.strip()
    proc = run_git(
        ["merge-tree", "--write-tree", "--name-only", "-z", scaffold, commit], cwd=mirror_dir, check=False
    )
    fields = proc.stdout.split("\0")
    if proc.returncode == 1:
        paths: list[str] = []
        for name in fields[1:]:
            if not name:
                break  # the conflicted files end with an empty field; messages follow
            if name not in paths:
                paths.append(name)
        msg = f"{commit[:12]} conflicts with {onto[:12]} in {', '.join(paths) or '(unnamed paths)'}"
        raise GitConflict(msg, paths)
    if proc.returncode != 0 or not fields[0]:
        msg = f"`git merge-tree` of {commit[:12]} onto {onto[:12]} failed: {_tail(proc.stderr, None)}"
        raise GitError(msg)
    return fields[0]


def _recommit(mirror_dir: Path, commit: str, tree: str, parent: str) -> str:
    """A commit of ``tree`` on ``parent`` with ``commit``'s author, committer identity and message."""
    raw = run_git(["cat-file", "commit", commit], cwd=mirror_dir).stdout
    headers, _, message = raw.partition("\n\n")
    env: dict[str, str] = {}
    for line in headers.splitlines():
        role, _, ident = line.partition(" ")
        match = _IDENT_RE.match(ident)
        if role == "author" and match:
            env |= {
                "GIT_AUTHOR_NAME": match["name"],
                "GIT_AUTHOR_EMAIL": match["email"],
                "GIT_AUTHOR_DATE": match["date"],
            }
        elif role == "committer" and match:
            env |= {"GIT_COMMITTER_NAME": match["name"], "GIT_COMMITTER_EMAIL": match["email"]}
    if len(env) != 5:
        msg = f"{commit[:12]} has no readable author or committer line"
        raise GitError(msg)
    return run_git(["commit-tree", tree, "-p", parent], cwd=mirror_dir, env=env, input=message).stdout.strip()


def fetch_bundle(repo: Path, bundle: Path, ref: str, into: str) -> str:
    """Fetch ``ref`` of a git bundle (made elsewhere, e.g. in a sandbox) into ``into``; returns its sha."""
    run_git(["fetch", "--quiet", "--no-tags", str(bundle), f"+{ref}:{into}"], cwd=repo)
    sha = rev_parse(repo, into)
    if sha is None:
        msg = f"fetching {ref} from the bundle {bundle} left no {into}"
        raise GitError(msg)
    return sha


def create_bundle(repo: Path, bundle: Path, sha: str, ref: str, have: Sequence[str]) -> None:
    """Write a bundle of ``sha`` (as ``ref``) for a repository that already has the commits ``have``."""
    run_git(["update-ref", ref, sha], cwd=repo)
    run_git(["bundle", "create", "--quiet", str(bundle), ref, *(f"^{h}" for h in have)], cwd=repo)


def reset_worktree(worktree: Path, sha: str, *, git_dir: Path) -> None:
    """Move the worktree's branch, index and tracked files to ``sha`` through the mirror's git directory.

    Untracked files stay; every change was committed before. Git never writes through a link in the
    tree, and with the explicit git directory nothing of the worktree's ``.git`` is read; nor is a
    submodule's directory (``submodule.recurse=false``), whatever the agent put there.
    """
    run_git([*tree_options(worktree, git_dir), "reset", "--quiet", "--hard", sha], cwd=worktree)
