"""One bare mirror per repository, and a worktree per task on it."""

from __future__ import annotations

import os
import re
from pathlib import Path

from filelock import FileLock

from claude_issue_solver.backends.git.hardening import (
    LOCK_TIMEOUT,
    MIRROR_ATTRIBUTES,
    GitError,
    _transfer_error,
    _worktree_options,
    run_git,
)
from claude_issue_solver.backends.git.remove import force_rmtree
from claude_issue_solver.credentials import GitCredential

# --- mirrors -------------------------------------------------------------------------------------------


def mirror_lock(mirror_dir: Path, timeout: float = LOCK_TIMEOUT) -> FileLock:
    """The lock serialising fetch, worktree add/remove and push on one mirror across threads and processes."""
    mirror_dir.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(f"{mirror_dir}.lock", timeout=timeout)


def pull_ref(branch: str | None) -> str | None:
    """Where the mirror keeps a pull request's head (``pull/N/head``, a review's workspace) as GitHub
    keeps it, forks' too: outside ``refs/remotes/origin/*``, so that no other task's fetch prunes it."""
    found = re.fullmatch(r"pull/(\d+)/head", branch or "")
    return f"refs/remotes/pulls/{found[1]}/head" if found else None


def pull_refspecs(branch: str | None) -> list[str]:
    ref = pull_ref(branch)
    return [f"+refs/{branch}:{ref}"] if ref else []


def ensure_mirror(
    mirror_dir: Path, clone_url: str, credential: GitCredential | None, *, branch: str | None = None
) -> None:
    """Create the bare mirror if needed, point ``origin`` at ``clone_url``, and fetch every branch
    (and ``branch`` when it names a pull request's head, :func:`pull_refspecs`).

    Hold :func:`mirror_lock` around this and the worktree change that follows.
    """
    if not (mirror_dir / "HEAD").is_file():
        mirror_dir.mkdir(parents=True, exist_ok=True)
        run_git(["init", "--bare", "--quiet", str(mirror_dir)], cwd=mirror_dir.parent)
    _write_mirror_attributes(mirror_dir)
    current = run_git(["config", "--get", "remote.origin.url"], cwd=mirror_dir, check=False).stdout.strip()
    if not current:
        run_git(["remote", "add", "origin", clone_url], cwd=mirror_dir)
    elif current != clone_url:  # the repository moved (a rename, another host)
        run_git(["remote", "set-url", "origin", clone_url], cwd=mirror_dir)
    proc = run_git(
        [
            "fetch",
            "--quiet",
            "--prune",
            "origin",
            "+refs/heads/*:refs/remotes/origin/*",
            *pull_refspecs(branch),
        ],
        cwd=mirror_dir,
        credential=credential,
        check=False,
    )
    if proc.returncode != 0:
        raise _transfer_error(f"`git fetch origin` in {mirror_dir}", proc, credential)


def fetch_ref(mirror_dir: Path, ref: str, into: str, credential: GitCredential | None) -> None:
    """Fetch one ref of origin (``refs/pull/7/head``) into ``into`` (``refs/remotes/origin/<branch>``),
    forced: a pull request's head may have been force-pushed. Hold :func:`mirror_lock`."""
    if not ref.startswith("refs/") or any(c in ref for c in " ~^:?*[\\") or ".." in ref:
        msg = f"not a ref to fetch: {ref!r}"
        raise GitError(msg)
    proc = run_git(
        ["fetch", "--quiet", "--no-tags", "origin", f"+{ref}:{into}"],
        cwd=mirror_dir,
        credential=credential,
        check=False,
    )
    if proc.returncode != 0:
        raise _transfer_error(f"`git fetch origin {ref}` in {mirror_dir}", proc, credential)


def rev_parse(repo: Path, rev: str, *, git_dir: Path | None = None) -> str | None:
    """The commit ``rev`` names, or None when it names none."""
    args = [*_worktree_options(repo, git_dir), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"]
    proc = run_git(args, cwd=repo, check=False)
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


def remote_branch_exists(mirror_dir: Path, branch: str) -> bool:
    return rev_parse(mirror_dir, f"refs/remotes/origin/{branch}") is not None


def start_point(mirror_dir: Path, branch: str, default_branch: str) -> str:
    """Where a task's branch starts: the remote's branch when a previous run pushed it, else the default."""
    pulled = pull_ref(branch)
    if pulled is not None and rev_parse(mirror_dir, pulled) is not None:
        return pulled
    if remote_branch_exists(mirror_dir, branch):
        return f"refs/remotes/origin/{branch}"
    if remote_branch_exists(mirror_dir, default_branch):
        return f"refs/remotes/origin/{default_branch}"
    msg = (
        f"the remote of {mirror_dir} has neither branch {branch!r} nor the default branch {default_branch!r}"
    )
    raise GitError(msg)


# --- worktrees -----------------------------------------------------------------------------------------


def worktree_git_dir(mirror_dir: Path, path: Path) -> Path | None:
    """The mirror's administrative directory for the worktree at ``path``, found from the mirror's side.

    The worktree's own ``.git`` file is the agent's to rewrite; the mirror's ``worktrees/*/gitdir``
    files are not (the mirror is mounted read-only).
    """
    wanted = os.path.abspath(path / ".git")
    admin = mirror_dir / "worktrees"
    if not admin.is_dir():
        return None
    for entry in admin.iterdir():
        try:
            target = (entry / "gitdir").read_text().strip()
        except OSError:
            continue
        if os.path.abspath(target) == wanted:
            return entry
    return None


def _write_mirror_attributes(mirror_dir: Path) -> None:
    """The mirror's ``info/attributes``, which every worktree of it reads over its own .gitattributes."""
    info = mirror_dir / "info"
    info.mkdir(exist_ok=True)
    path = info / "attributes"
    try:
        if path.read_text() == MIRROR_ATTRIBUTES:
            return
    except OSError:
        pass
    tmp = info / ".attributes.tmp"
    tmp.write_text(MIRROR_ATTRIBUTES)
    os.replace(tmp, path)


def worktree_holding(mirror_dir: Path, branch: str) -> Path | None:
    """The worktree that has ``branch`` checked out, if any (git lets only one have it)."""
    out = run_git(["worktree", "list", "--porcelain"], cwd=mirror_dir).stdout
    path: str | None = None
    for line in out.splitlines():
        if line.startswith("worktree "):
            path = line.removeprefix("worktree ")
        elif line == f"branch refs/heads/{branch}" and path is not None:
            return Path(path)
    return None


def add_worktree(mirror_dir: Path, path: Path, branch: str, start: str) -> Path:
    """Check out ``branch``, reset to ``start``, at ``path``; returns the worktree's git directory.

    ``--force`` because a crash may have left ``path`` registered but missing. The branch must not be
    checked out in another worktree (see :func:`worktree_holding`). No user name or email is
    configured: every commit passes its author explicitly.
    """
    run_git(["worktree", "prune"], cwd=mirror_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    run_git(
        ["worktree", "add", "--force", "--quiet", "--no-track", "-B", branch, str(path), start],
        cwd=mirror_dir,
    )
    git_dir = worktree_git_dir(mirror_dir, path)
    if git_dir is None:
        msg = f"`git worktree add` reported success but {mirror_dir} does not list {path}"
        raise GitError(msg)
    return git_dir


def remove_worktree(mirror_dir: Path, path: Path) -> None:
    """Remove the worktree and its registration; a missing path or mirror is not an error."""
    has_mirror = (mirror_dir / "HEAD").is_file()
    if has_mirror and path.exists() and worktree_git_dir(mirror_dir, path) is not None:
        # Failure is fine here: the rmtree below removes what git left, and prune forgets it.
        run_git(["worktree", "remove", "--force", "--force", str(path)], cwd=mirror_dir, check=False)
    if path.exists():
        force_rmtree(path)
    if has_mirror:
        run_git(["worktree", "prune"], cwd=mirror_dir)
