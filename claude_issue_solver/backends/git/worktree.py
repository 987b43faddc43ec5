"""What changed in a task's worktree, and committing and pushing it."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from claude_issue_solver.backends.git.hardening import (
    _MOVED_RE,
    _STDERR_TAIL_LINES,
    Fence,
    GitError,
    GitPushRejected,
    _scrub,
    _transfer_error,
    _worktree_options,
    find_fence,
    run_git,
    tree_options,
)
from claude_issue_solver.backends.git.mirror import rev_parse
from claude_issue_solver.credentials import GitCredential


def current_branch(worktree: Path, *, git_dir: Path) -> str | None:
    proc = run_git(
        [*_worktree_options(worktree, git_dir), "symbolic-ref", "--quiet", "--short", "HEAD"],
        cwd=worktree,
        check=False,
    )
    return proc.stdout.strip() or None


def status_changes(
    worktree: Path, *, git_dir: Path, exclude: Sequence[str] = (), fence: Fence | None = None
) -> list[str]:
    """Paths changed in the worktree (untracked included), as ``git status --porcelain`` sees them.

    Nothing of ``fence`` (found now when not given) is looked into or listed.
    """
    fenced = _fence_of(worktree, git_dir, fence)
    proc = run_git(
        [
            *tree_options(worktree, git_dir),
            "status",
            "--porcelain=v1",
            "-z",
            "--untracked-files=all",
            "--ignore-submodules=all",
            *_pathspec([*exclude, *fenced.paths]),
        ],
        cwd=worktree,
    )
    entries = proc.stdout.split("\0")
    files: list[str] = []
    index = 0
    while index < len(entries):
        entry = entries[index]
        index += 1
        if len(entry) < 4:
            continue
        code, name = entry[:2], entry[3:]
        if code[0] in "RC":
            index += 1  # the next entry is the rename's source
        skipped = (*exclude, *fenced.paths)
        if name not in skipped and not any(name.startswith(f"{e}/") for e in skipped):
            files.append(name)
    return files


def untracked(worktree: Path, *, git_dir: Path, glob: str | None = None, ignored: bool = True) -> list[str]:
    """``git ls-files --others``: the untracked paths (ignored ones too unless ``ignored`` is False).

    Without ``glob`` a directory holding only untracked files is one entry, ``dir/``; with it, the files
    matching that ``:(glob)`` pattern. Nothing is looked into beyond what ls-files reads (no submodule).
    """
    args = [*tree_options(worktree, git_dir), "ls-files", "-z", "--others"]
    if not ignored:
        args.append("--exclude-standard")
    args += ["--", f":(glob){glob}"] if glob else ["--directory"]
    proc = run_git(args, cwd=worktree)
    return [p for p in proc.stdout.split("\0") if p.strip("/")]


def _fence_of(worktree: Path, git_dir: Path, given: Fence | None) -> Fence:
    return given if given is not None else find_fence(worktree, git_dir=git_dir)


def _pathspec(exclude: Sequence[str]) -> list[str]:
    # literal: a path the agent named "*" must exclude only itself.
    return ["--", ".", *(f":(exclude,literal){e}" for e in exclude)]


def _stage(
    worktree: Path,
    git_dir: Path,
    exclude: Sequence[str],
    fenced: Fence,
    env: Mapping[str, str] | None = None,
) -> None:
    """``git add -A`` of all but ``exclude`` and the fenced paths; then unstage any gitlink that is new.

    A nested repository made after ``fenced`` was taken would otherwise be staged as a gitlink.
    """
    options = tree_options(worktree, git_dir)
    run_git([*options, "add", "-A", *_pathspec([*exclude, *fenced.paths])], cwd=worktree, env=env)
    staged = run_git([*options, "ls-files", "--stage", "-z"], cwd=worktree, env=env).stdout
    new = [
        path
        for meta, _, path in (e.partition("\t") for e in staged.split("\0"))
        if meta.startswith("160000 ") and path not in fenced.gitlinks
    ]
    if new:
        run_git(
            [*options, "update-index", "--force-remove", "-z", "--stdin"],
            cwd=worktree,
            env=env,
            input="".join(f"{p}\0" for p in new),
        )


def diffstat(
    worktree: Path, base: str, *, git_dir: Path, exclude: Sequence[str] = (), fence: Fence | None = None
) -> str:
    """``git diff --stat`` from ``base`` to the worktree as it is, new files included, index untouched.

    The fenced paths (found now when not given) are neither looked into nor counted.
    """
    fenced = _fence_of(worktree, git_dir, fence)
    options = tree_options(worktree, git_dir)
    with tempfile.TemporaryDirectory(prefix="cis-index-") as tmp:
        # A copy of the index keeps its stat cache (fast) while staging leaves the real one alone.
        index = Path(tmp) / "index"
        if (git_dir / "index").exists():
            shutil.copyfile(git_dir / "index", index)
        env = {"GIT_INDEX_FILE": str(index)}
        _stage(worktree, git_dir, exclude, fenced, env)
        proc = run_git(
            [
                *options,
                "diff",
                "--cached",
                "--ignore-submodules=all",
                "--stat=100",
                base,
                *_pathspec(fenced.paths),
            ],
            cwd=worktree,
            env=env,
        )
    return proc.stdout.rstrip()


def commit_all(
    worktree: Path,
    message: str,
    author_name: str,
    author_email: str,
    *,
    git_dir: Path,
    exclude: Sequence[str] = (),
    fence: Fence | None = None,
) -> str:
    """Stage everything but ``exclude`` and the fenced paths (found now when not given) and commit as
    the given author and committer; returns HEAD. No gitlink that HEAD lacks is ever committed.

    Nothing to commit is not an error (a re-run after a crash): no empty commit is made.
    """
    options = tree_options(worktree, git_dir)
    _stage(worktree, git_dir, exclude, _fence_of(worktree, git_dir, fence))
    staged = run_git([*options, "diff", "--cached", "--quiet"], cwd=worktree, check=False)
    if staged.returncode != 0:
        env = {
            "GIT_AUTHOR_NAME": author_name,
            "GIT_AUTHOR_EMAIL": author_email,
            "GIT_COMMITTER_NAME": author_name,
            "GIT_COMMITTER_EMAIL": author_email,
        }
        run_git(
            [*options, "commit", "--quiet", "--no-verify", "--file=-"], cwd=worktree, env=env, input=message
        )
    head = rev_parse(worktree, "HEAD", git_dir=git_dir)
    if head is None:
        msg = f"the worktree {worktree} has no HEAD commit after committing"
        raise GitError(msg)
    return head


def ahead_of_remote(worktree: Path, *, git_dir: Path) -> bool:
    """Whether HEAD has commits that no branch of the remote has (as of the last fetch or push).

    Any remote branch counts, not only the task's own: a fresh branch at the default branch's tip has
    nothing to push even though the remote lacks the branch itself.
    """
    proc = run_git(
        [*_worktree_options(worktree, git_dir), "rev-list", "--count", "HEAD", "--not", "--remotes=origin"],
        cwd=worktree,
    )
    return int(proc.stdout.strip() or "0") > 0


def push(worktree: Path, branch: str, credential: GitCredential | None, *, git_dir: Path) -> str:
    """Push HEAD to ``refs/heads/<branch>`` of origin; returns the pushed sha.

    A refusal by the remote (non-fast-forward, protected branch, a hook) raises :class:`GitPushRejected`
    with the remote's reason; anything else (network, authentication) raises :class:`GitError`.
    """
    options = _worktree_options(worktree, git_dir)
    head = rev_parse(worktree, "HEAD", git_dir=git_dir)
    if head is None:
        msg = f"the worktree {worktree} has no HEAD commit to push"
        raise GitError(msg)
    refspec = f"HEAD:refs/heads/{branch}"
    proc = run_git(
        [*options, "push", "--porcelain", "origin", refspec], cwd=worktree, credential=credential, check=False
    )
    if proc.returncode == 0:
        return head
    # --porcelain prints "!<TAB>from:to<TAB>[rejected] (reason)" for each refused ref.
    refused = [line for line in proc.stdout.splitlines() if line.startswith("!")]
    if refused:
        reason = refused[0].split("\t")[-1]
        remote = [line for line in proc.stderr.splitlines() if line.startswith("remote:")]
        detail = _scrub("\n".join(remote[-_STDERR_TAIL_LINES:]), credential)
        msg = f"the remote refused the push of {branch}: {reason}" + (f"\n{detail}" if detail else "")
        raise GitPushRejected(msg, moved=bool(_MOVED_RE.match(reason)))
    raise _transfer_error(f"`git push origin {refspec}` from {worktree}", proc, credential)
