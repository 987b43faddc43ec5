"""How host git runs on a tree the agent wrote: argv only, no user config, a credential through
``GIT_ASKPASS`` only, and the fence around nested repositories and submodules (see the package's
docstring)."""

from __future__ import annotations

import atexit
import os
import re
import shutil
import stat
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from claude_issue_solver.credentials import GitCredential
from claude_issue_solver.logs import REDACTOR

GIT_TIMEOUT = 600.0  # a fetch of a large repository over a slow link still fits
LOCK_TIMEOUT = 900.0  # a long fetch by another task of the same repository holds the mirror lock
_STDERR_TAIL_LINES = 15
# Options that keep the user's (or the agent's) configuration out of our commands.
_BASE_OPTIONS = (
    "-c",
    "safe.directory=*",  # worktrees may belong to the agent's uid
    "-c",
    "credential.helper=",  # ignore the user's helpers: the credential comes from us or not at all
    "-c",
    "core.fsmonitor=false",  # a user-level fsmonitor daemon per worktree would outlive the task
    "-c",
    "core.hooksPath=/dev/null",  # no hook of any kind runs in our mirrors
    "-c",
    "commit.gpgSign=false",  # a user-level signing setting would prompt or fail headless
    "-c",
    "core.attributesFile=/dev/null",  # read from $XDG_CONFIG_HOME even without a global config
    "-c",
    "core.excludesFile=/dev/null",  # likewise: the daemon user's ignores do not decide what is committed
    "-c",
    "submodule.recurse=false",  # reset, checkout: never into a gitlink's directory
    "-c",
    "diff.ignoreSubmodules=all",  # status, diff: a gitlink's directory is never looked into
    "-c",
    "status.submoduleSummary=false",
)
# Only the mirror's config and the options above: the daemon user's config could define a filter that a
# tree's .gitattributes names, and its environment could add any setting.
_CONFIG_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_ATTR_NOSYSTEM": "1",  # $(prefix)/etc/gitattributes
}
# Added to the commands that read or write the agent's tree (not to fetch and push, whose remote may be
# a local path, nor to the bundles the Daytona replay fetches): no transport of any kind from there.
_TREE_OPTIONS = ("-c", "protocol.file.allow=never")
# What the mirror's info/attributes says for every path, over any .gitattributes in the tree: no filter
# (the bytes committed are the bytes in the tree), no re-encoding. Diff and merge attributes stay: their
# drivers could only come from config, which is ours.
MIRROR_ATTRIBUTES = "* -filter -working-tree-encoding\n"
# Variables that would redirect git to another repository than the one each call names.
_REPO_ENV = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_COMMON_DIR",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_NAMESPACE",
    "GIT_ASKPASS",
    "SSH_ASKPASS",
    "GIT_EXTERNAL_DIFF",  # runs a command for every diff
    "GIT_DIFF_OPTS",
    "GIT_TEMPLATE_DIR",
    "GIT_ATTR_SOURCE",
)
_USERINFO_RE = re.compile(r"(://)[^/@\s]+@")
# git's own refusals when the remote's branch is not an ancestor of what is pushed ("[remote rejected]"
# is the remote's: a protected branch, a hook).
_MOVED_RE = re.compile(r"^\[rejected\] \((non-fast-forward|fetch first)\)")
_IDENT_RE = re.compile(r"^(?P<name>.*) <(?P<email>[^<>]*)> (?P<date>\d+ [+-]\d{4})$")
# Failures of fetch/push that another attempt will not mend: a rejected or missing credential, no repo.
_PERMANENT_RE = re.compile(
    r"Authentication failed|could not read (Username|Password)|Invalid username or password|"
    r"Repository not found|does not appear to be a git repository|returned error: 40[134]",
    re.IGNORECASE,
)
_ASKPASS_SCRIPT = """#!/bin/sh
# git asks "Username for '...': " then "Password for '...': "; answers come from this process's env.
case "$1" in
    Username*) printf '%s\\n' "$CIS_GIT_USERNAME" ;;
    *) printf '%s\\n' "$CIS_GIT_PASSWORD" ;;
esac
"""

_askpass_lock = threading.Lock()
_askpass_path: Path | None = None


class GitError(Exception):
    """A git command failed; the message has the command and the end of its stderr, without secrets.

    ``retryable`` when another attempt may succeed (a network blip), not when the remote refused the
    credential or has no such repository.
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class GitPushRejected(GitError):
    """The remote refused the branch (non-fast-forward, a protected branch, a hook).

    ``moved`` when git itself refused because the remote's branch is not an ancestor of ours (someone
    pushed meanwhile), as opposed to the remote refusing (a protected branch, a hook).
    """

    def __init__(self, message: str, *, moved: bool = False) -> None:
        super().__init__(message)
        self.moved = moved


class GitConflict(GitError):
    """Replaying commits onto a moved branch conflicts in ``paths``; no ref or file was changed."""

    def __init__(self, message: str, paths: Sequence[str]) -> None:
        super().__init__(message)
        self.paths = tuple(paths)


def _askpass() -> Path:
    """The askpass script, written once per process in a private directory."""
    global _askpass_path
    with _askpass_lock:
        if _askpass_path is None or not _askpass_path.exists():
            directory = Path(tempfile.mkdtemp(prefix="cis-askpass-"))  # 0700
            script = directory / "askpass.sh"
            fd = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
            with os.fdopen(fd, "w") as handle:
                handle.write(_ASKPASS_SCRIPT)
            atexit.register(shutil.rmtree, directory, True)
            _askpass_path = script
        return _askpass_path


def _scrub(text: str, credential: GitCredential | None) -> str:
    if credential is not None and credential.password:
        text = text.replace(credential.password, "***")
    return _USERINFO_RE.sub(r"\1***@", REDACTOR(text))


def run_git(
    args: Sequence[str],
    *,
    cwd: Path,
    credential: GitCredential | None = None,
    check: bool = True,
    timeout: float = GIT_TIMEOUT,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``git <args>`` in ``cwd``; raise :class:`GitError` on failure when ``check``."""
    full_env = {k: v for k, v in os.environ.items() if k not in _REPO_ENV and not k.startswith("GIT_CONFIG")}
    full_env.update(_CONFIG_ENV)
    full_env["GIT_TERMINAL_PROMPT"] = "0"
    full_env.update(env or {})
    if credential is not None:
        full_env["GIT_ASKPASS"] = str(_askpass())
        full_env["CIS_GIT_USERNAME"] = credential.username
        full_env["CIS_GIT_PASSWORD"] = credential.password
    argv = ["git", *_BASE_OPTIONS, *args]
    shown = _scrub(" ".join(["git", *args]), credential)
    try:
        proc = subprocess.run(
            argv,
            cwd=cwd,
            env=full_env,
            input=input,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        msg = f"`{shown}` in {cwd} timed out after {timeout:.0f}s"
        raise GitError(msg) from None
    except OSError as exc:
        msg = f"cannot run `{shown}` in {cwd}: {exc}"
        raise GitError(msg) from None
    if check and proc.returncode != 0:
        msg = f"`{shown}` in {cwd} failed with exit code {proc.returncode}: {_tail(proc.stderr, credential)}"
        raise GitError(msg)
    return proc


def _tail(stderr: str, credential: GitCredential | None) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()][-_STDERR_TAIL_LINES:]
    return _scrub("\n".join(lines), credential) or "(no output)"


# --- what host git keeps out of a tree ----------------------------------------------------------------

NESTED_REPOSITORY = "a git repository of its own"
SUBMODULE = "a submodule's directory"


@dataclass(frozen=True)
class LeftOut:
    """A path of the tree that was not committed, and why."""

    path: str
    why: str


@dataclass(frozen=True)
class Fence:
    """The paths of a worktree host git never looks into, stages or commits.

    ``gitlinks``: the submodule paths the index or HEAD records (mode 160000); ``nested``: directories
    holding a ``.git`` of their own that git would otherwise stage as gitlinks. ``left_out`` names those
    that hold anything (an empty submodule directory is how every checkout has it), sorted.
    """

    gitlinks: frozenset[str] = frozenset()
    nested: frozenset[str] = frozenset()
    left_out: tuple[LeftOut, ...] = ()

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(sorted(self.gitlinks | self.nested))


def find_fence(worktree: Path, *, git_dir: Path) -> Fence:
    """Find the submodule paths and nested repositories of the worktree (see :class:`Fence`).

    Nested repositories as git itself reports them among the untracked, not ignored, paths (what
    ``git add -A`` would stage): a directory with a ``.git`` (directory or ``gitdir:`` file) comes out as
    ``dir/``, and git never descends into it or reads its config. Gitlinks come from the index and HEAD,
    never from the tree.
    """
    options = tree_options(worktree, git_dir)
    staged = run_git([*options, "ls-files", "--stage", "-z"], cwd=worktree).stdout
    gitlinks = {e.partition("\t")[2] for e in staged.split("\0") if e.startswith("160000 ")}
    head = run_git([*options, "ls-tree", "-r", "-z", "HEAD"], cwd=worktree, check=False)
    if head.returncode == 0:
        gitlinks |= {e.partition("\t")[2] for e in head.stdout.split("\0") if e.startswith("160000 ")}
    others = run_git([*options, "ls-files", "--others", "--exclude-standard", "-z"], cwd=worktree).stdout
    nested = {e.rstrip("/") for e in others.split("\0") if e.endswith("/") and e.strip("/")}
    left_out = [LeftOut(path, NESTED_REPOSITORY) for path in nested - gitlinks]
    left_out += [LeftOut(path, SUBMODULE) for path in gitlinks if _holds_anything(worktree / path)]
    return Fence(frozenset(gitlinks), frozenset(nested), tuple(sorted(left_out, key=lambda e: e.path)))


def _holds_anything(path: Path) -> bool:
    """Whether ``path`` is a directory (not a link) with an entry, or anything but a directory."""
    try:
        info = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    if not stat.S_ISDIR(info.st_mode):
        return True
    with os.scandir(path) as entries:
        return next(entries, None) is not None


def _worktree_options(repo: Path, git_dir: Path | None) -> list[str]:
    return [] if git_dir is None else [f"--git-dir={git_dir}", f"--work-tree={repo}"]


def tree_options(worktree: Path, git_dir: Path) -> list[str]:
    """The options of a command that reads or writes the agent's tree (status, add, ls-files, reset)."""
    return [*_TREE_OPTIONS, *_worktree_options(worktree, git_dir)]


def _transfer_error(
    what: str, proc: subprocess.CompletedProcess[str], credential: GitCredential | None
) -> GitError:
    """A failed fetch or push: retryable unless the remote refused the credential or has no such repo."""
    msg = f"{what} failed with exit code {proc.returncode}: {_tail(proc.stderr, credential)}"
    return GitError(msg, retryable=not _PERMANENT_RE.search(proc.stderr))
