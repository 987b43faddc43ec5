"""Host-side git: one bare mirror per repository, a worktree per task, commit, push, and the replay of
a task's commits onto a branch that moved on the remote (object-level: nothing of the worktree runs).

Every command is an argv list (never a shell string) and runs with the user's credential helpers and
terminal prompts switched off. A GitHub credential reaches exactly one git process, through
``GIT_ASKPASS`` and that process's environment: never argv, a URL, ``.git/config`` or an error message.

Commands in a worktree name its git directory explicitly (``--git-dir``/``--work-tree``) instead of
letting git discover ``.git``: the agent owns the worktree and could point ``.git`` at a config of its
own (``core.fsmonitor`` runs a command), which host-side git, perhaps running as root, would obey.

Nor does host git interpret anything else the agent wrote (issue #18). Only the mirror's config and
our ``-c`` options apply: no system, global or XDG config or attributes of the daemon's user, no
``GIT_CONFIG_*`` of its environment. Submodules are never recursed into: a ``git status`` that looks
into a gitlink's directory runs ``git status`` there, under the config (filters, fsmonitor) the agent
put in that directory's ``.git``. The mirror's ``info/attributes`` switches filters off whatever the
tree's ``.gitattributes`` says. And nested repositories the agent made, and submodule paths, are fenced
off (:func:`find_fence`): never looked into, staged or committed -- a nested repository would become a
gitlink, which the next run's status would look into -- and named in :attr:`Fence.left_out`.
"""

from __future__ import annotations

import atexit
import collections
import functools
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

from filelock import FileLock

from claude_issue_solver.credentials import GitCredential
from claude_issue_solver.logs import REDACTOR

__all__ = [
    "NESTED_REPOSITORY",
    "SUBMODULE",
    "Fence",
    "GitConflict",
    "GitError",
    "GitPushRejected",
    "LeftOut",
    "Moved",
    "add_worktree",
    "ahead_of_remote",
    "commit_all",
    "create_bundle",
    "current_branch",
    "diffstat",
    "ensure_mirror",
    "fetch_branch",
    "fetch_bundle",
    "find_fence",
    "mirror_lock",
    "push",
    "remote_branch_exists",
    "remove_worktree",
    "replay_onto",
    "reset_worktree",
    "rev_parse",
    "run_git",
    "start_point",
    "status_changes",
    "tree_options",
    "worktree_git_dir",
    "worktree_holding",
]

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


# --- mirrors -------------------------------------------------------------------------------------------


def mirror_lock(mirror_dir: Path, timeout: float = LOCK_TIMEOUT) -> FileLock:
    """The lock serialising fetch, worktree add/remove and push on one mirror across threads and processes."""
    mirror_dir.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(f"{mirror_dir}.lock", timeout=timeout)


def ensure_mirror(mirror_dir: Path, clone_url: str, credential: GitCredential | None) -> None:
    """Create the bare mirror if needed, point ``origin`` at ``clone_url``, and fetch every branch.

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
        ["fetch", "--quiet", "--prune", "origin", "+refs/heads/*:refs/remotes/origin/*"],
        cwd=mirror_dir,
        credential=credential,
        check=False,
    )
    if proc.returncode != 0:
        raise _transfer_error(f"`git fetch origin` in {mirror_dir}", proc, credential)


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


def _worktree_options(repo: Path, git_dir: Path | None) -> list[str]:
    return [] if git_dir is None else [f"--git-dir={git_dir}", f"--work-tree={repo}"]


def tree_options(worktree: Path, git_dir: Path) -> list[str]:
    """The options of a command that reads or writes the agent's tree (status, add, ls-files, reset)."""
    return [*_TREE_OPTIONS, *_worktree_options(worktree, git_dir)]


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


def force_rmtree(path: Path) -> None:
    """``rm -rf`` of a tree the agent made, through directories it left without read, write or search
    permission (``chmod 000``), never following a link it planted.

    Its own walk, not :func:`shutil.rmtree` with an error handler: that handler is handed the failed
    function (``os.open``, ``os.scandir``, ``os.path.islink``), which cannot be called again with a path
    alone -- retrying ``os.open(path)`` raised ``TypeError`` and leaked the tree -- and Python 3.12
    deprecates it for ``onexc``. Every directory is opened relative to its parent's descriptor with
    ``O_NOFOLLOW``, made ``u+rwx`` when it is not (through a descriptor, not its path), then emptied
    depth-first without recursion, holding at most 64 descriptors however deep the tree. What cannot be
    removed (another user's file under a daemon that is not root, an immutable file) is skipped, the rest
    is removed, and one :class:`OSError` then names the first such path and how many there were.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        os.unlink(path)
        return
    problems: list[str] = []
    parent_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _remove_dir_at(parent_fd, path.name, str(path), problems)
    finally:
        os.close(parent_fd)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        msg = f"could not remove all of {path}: {problems[0]}{more}"
        raise OSError(msg)


_RM_MAX_DEPTH = 64  # deeper directories are moved up into the top one, so few descriptors stay open


def _remove_dir_at(top_parent_fd: int, top_name: str, top_shown: str, problems: list[str]) -> None:
    """Remove the directory ``top_name`` of ``top_parent_fd`` and everything in it (see force_rmtree)."""
    # A frame: the directory's descriptor, its parent's, its name there, its path for messages, and the
    # entries still to remove in it as (name, is a directory). Only one branch's frames are open at once,
    # and at most _RM_MAX_DEPTH of them: a deeper directory is renamed into the top one and removed later.
    stack: list[tuple[int, int, str, str, collections.deque[tuple[str, bool]]]] = []
    moved = 0

    def enter(parent_fd: int, name: str, shown: str) -> None:
        nonlocal moved
        if len(stack) >= _RM_MAX_DEPTH:
            top_fd, _, _, _, top_entries = stack[0]
            moved += 1
            flat = f".cis-rm-{os.urandom(4).hex()}-{moved}"
            try:
                os.rename(name, flat, src_dir_fd=parent_fd, dst_dir_fd=top_fd)
            except OSError as exc:
                problems.append(f"{shown}: {exc.strerror or exc}")
            else:
                top_entries.append((flat, True))
            return
        fd = _open_dir_writable(parent_fd, name, shown, problems)
        if fd is None:
            return
        try:
            with os.scandir(fd) as found:
                entries = collections.deque((e.name, _is_dir(e)) for e in found)
        except OSError as exc:
            os.close(fd)
            problems.append(f"{shown}: {exc.strerror or exc}")
            return
        stack.append((fd, parent_fd, name, shown, entries))

    enter(top_parent_fd, top_name, top_shown)
    while stack:
        fd, parent_fd, name, shown, entries = stack[-1]
        if entries:
            child, is_dir = entries.popleft()
            child_shown = f"{shown}/{child}"
            if is_dir:
                enter(fd, child, child_shown)
                continue
            try:
                os.unlink(child, dir_fd=fd)
            except FileNotFoundError:
                pass
            except IsADirectoryError:  # replaced by a directory meanwhile
                enter(fd, child, child_shown)
            except OSError as exc:
                problems.append(f"{child_shown}: {exc.strerror or exc}")
            continue
        stack.pop()
        os.close(fd)
        try:
            os.rmdir(name, dir_fd=parent_fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if not problems:  # a directory left non-empty by an earlier problem is not news
                problems.append(f"{shown}: {exc.strerror or exc}")


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _open_dir_writable(parent_fd: int, name: str, shown: str, problems: list[str]) -> int | None:
    """A read descriptor on the directory ``name`` (never a link), made ``u+rwx`` first if it was not."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    try:
        fd = os.open(name, flags, dir_fd=parent_fd)
    except FileNotFoundError:
        return None
    except NotADirectoryError:  # a link (O_NOFOLLOW) or a file that replaced the directory: unlink it
        try:
            os.unlink(name, dir_fd=parent_fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            problems.append(f"{shown}: {exc.strerror or exc}")
        return None
    except PermissionError:
        # No read permission: make it readable through an O_PATH descriptor (which needs none), by its
        # /proc name, so a link swapped in meanwhile is never what gets the new mode.
        try:
            _chmod_dir_at(parent_fd, name)
            fd = os.open(name, flags, dir_fd=parent_fd)
        except OSError as exc:
            problems.append(f"{shown}: {exc.strerror or exc}")
            return None
    except OSError as exc:
        problems.append(f"{shown}: {exc.strerror or exc}")
        return None
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) & stat.S_IRWXU != stat.S_IRWXU:
            os.fchmod(fd, stat.S_IRWXU)
    except OSError as exc:  # not ours to change: what can be removed still is
        problems.append(f"{shown}: {exc.strerror or exc}")
    return fd


def _chmod_dir_at(parent_fd: int, name: str) -> None:
    path_fd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent_fd)
    try:
        proc = f"/proc/self/fd/{path_fd}"
        if os.path.exists(proc):
            os.chmod(proc, stat.S_IRWXU)
        else:  # no /proc: by name (what O_NOFOLLOW opened was a directory a moment ago)
            os.chmod(name, stat.S_IRWXU, dir_fd=parent_fd)
    finally:
        os.close(path_fd)


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


def _transfer_error(
    what: str, proc: subprocess.CompletedProcess[str], credential: GitCredential | None
) -> GitError:
    """A failed fetch or push: retryable unless the remote refused the credential or has no such repo."""
    msg = f"{what} failed with exit code {proc.returncode}: {_tail(proc.stderr, credential)}"
    return GitError(msg, retryable=not _PERMANENT_RE.search(proc.stderr))
