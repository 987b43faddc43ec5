"""The seam between the pipeline and where the work happens: a backend is a place, not a policy.

A backend says *how* things are done in its place (a Docker container over a git worktree on this host,
a Daytona sandbox with its own clone); the pipeline and :mod:`claude_issue_solver.run.policy` say *what*
happens -- the same for every backend: what runs, how long it may run, when to give up, what counts as
a change, what the commit says, what the issue is told.

What a backend offers, in the spirit of SWE-ReX's deployment/runtime split:

- a small lifecycle: ``prepare`` (create, or find by the task id, a workspace on the task's branch),
  ``attach`` (find it again after a restart), ``remove``, ``list_ours``;
- processes, named within a workspace (``"agent"``; a later test run is another name): ``start_process``
  with argv, env and stdin, ``poll_process``, ``kill_process``, ``follow_output`` into the task log,
  ``output`` once it ended -- never all of it, only the start and the end within the pipeline's
  :class:`OutputBounds` (a process may print gigabytes; the daemon's memory must not follow);
- files relative to the repository's root, never following a link: ``read_file``, ``write_file``,
  ``delete_file``;
- git: ``changes`` (what changed since the base), ``commit_and_push`` (commit what changed, push
  the branch with this credential) and ``rebase_onto_remote`` (the branch moved on the remote: put
  this run's commits on top of its new head, never running anything of the workspace's own).
- optionally (``caches_setup``), the setup cache: ``save_setup`` keeps what a green setup process made
  under a key the pipeline computed, ``restore_setup`` gives a later workspace of the same repository
  what was kept (see :mod:`claude_issue_solver.run.test_gate` for when).

Every call that creates something is idempotent and finds its work by the task id (and process name),
never by an id saved after the fact: a daemon that died between "started a process" and "recorded it"
finds the process again by its deterministic name or label instead of starting a second one.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from claude_issue_solver.credentials import GitCredential
from claude_issue_solver.logs import TaskLog
from claude_issue_solver.store.queue import Task

__all__ = [
    "LABEL_ISSUE",
    "LABEL_OWNER",
    "LABEL_PROCESS",
    "LABEL_REPO",
    "LABEL_TASK",
    "NAME_PREFIX",
    "Backend",
    "BackendError",
    "CannotRebase",
    "Changes",
    "GitCredential",
    "KeptDir",
    "OutputBounds",
    "OutputKeeper",
    "OutputStream",
    "ProcessOutput",
    "ProcessSpec",
    "PushRejected",
    "PushRequest",
    "Pushed",
    "RebaseConflict",
    "Rebased",
    "Workspace",
    "WorkspaceLost",
    "WorkspaceSpec",
    "agent_dockerfile",
    "checked_id",
    "kept_text",
    "owner_of",
    "resource_labels",
]

LABEL_TASK = "claude-issue-solver.task"
LABEL_REPO = "claude-issue-solver.repo"
LABEL_ISSUE = "claude-issue-solver.issue"
LABEL_OWNER = "claude-issue-solver.owner"  # which daemon (state dir) owns it, so two daemons never collide
LABEL_PROCESS = "claude-issue-solver.process"
NAME_PREFIX = "claude-issue-solver-"  # containers, sandboxes and sessions: ours at a glance
_TASK_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,200}$")
_PROCESS_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")


def agent_dockerfile() -> Path:
    """``Dockerfile.claude``: packaged data in an installed wheel, else the source checkout's root."""
    package_dir = Path(__file__).resolve().parent.parent
    packaged = package_dir / "data" / "Dockerfile.claude"
    return packaged if packaged.is_file() else package_dir.parent / "Dockerfile.claude"


class BackendError(Exception):
    """Something failed where the work runs. ``retryable`` failures delay the task instead of failing it."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class WorkspaceLost(BackendError):
    """The task's container or sandbox is gone (removed by hand, lost with the host): the run is lost."""


class PushRejected(BackendError):
    """The remote refused the branch (non-fast-forward, a protected branch, a hook).

    ``moved`` when the refusal is only that the branch moved on the remote (not a fast-forward of it):
    the one refusal that putting the commits on top of the new head can mend.
    """

    def __init__(self, message: str, *, moved: bool = False) -> None:
        super().__init__(message)
        self.moved = moved


class RebaseConflict(BackendError):
    """This run's commits conflict with what was pushed to the branch meanwhile; nothing was changed."""

    def __init__(self, message: str, paths: Sequence[str]) -> None:
        super().__init__(message)
        self.paths = tuple(paths)


class CannotRebase(BackendError):
    """This place cannot put the run's commits on top of a moved branch (see the backend's docs)."""


# --- names every backend gives its things -------------------------------------------------------------


def checked_id(task_id: str) -> str:
    """A task id that is safe as a path component, a container or sandbox name and a label value."""
    if not _TASK_ID_RE.match(task_id) or ".." in task_id:
        msg = f"task id {task_id!r} is not usable as a directory, container or sandbox name"
        raise BackendError(msg)
    return task_id


def checked_process(name: str) -> str:
    if not _PROCESS_NAME_RE.match(name):
        msg = f"process name {name!r} is not usable in a container or session name"
        raise BackendError(msg)
    return name


def owner_of(state_dir: Path) -> str:
    """The owner label of everything a daemon with this state directory creates."""
    return hashlib.sha256(str(state_dir).encode()).hexdigest()[:12]


def resource_labels(owner: str, task_id: str, repo: str, issue_number: int) -> dict[str, str]:
    """The labels a container or sandbox of a task carries, so a restarted daemon finds its own."""
    return {
        LABEL_TASK: task_id,
        LABEL_REPO: repo,
        LABEL_ISSUE: str(issue_number),
        LABEL_OWNER: owner,
    }


# --- what the pipeline hands a backend, and what it gets back -------------------------------------------


@dataclass(frozen=True)
class WorkspaceSpec:
    """Where a task's workspace comes from. Built by the pipeline."""

    task_id: str
    repo: str
    issue_number: int
    clone_url: str
    default_branch: str
    branch: str  # claude/issue-N: reused across re-runs
    credential: Callable[[], GitCredential]  # fetched when needed so it is fresh (App tokens expire)
    # A ref of the remote the workspace starts at instead (``refs/pull/7/head``: a pull request's head,
    # a fork's too); ``branch`` is then only the local name. None: the branch, else the default branch.
    start_ref: str | None = None


@dataclass(frozen=True)
class Workspace:
    """A prepared place to work, found again after a restart through ``Backend.attach``.

    Each backend returns its own subclass with what it needs to find its things (a typed handle).
    """

    task_id: str
    handle: str  # the deterministic name of the container / sandbox
    repo: str
    issue_number: int
    branch: str
    base_sha: str | None  # the commit the work started from
    # Whether that commit is the default branch's head as the remote had it when the workspace was
    # prepared (no earlier run's commits in it): only such a tree may feed a cache other tasks read.
    # False when the place cannot tell (a conservative default).
    from_default: bool = field(default=False, kw_only=True)


@dataclass(frozen=True)
class KeptDir:
    """A directory that outlives the workspace: the next process given the same ``key`` finds what the
    last one left there (the Claude Code configuration directory of an issue, where its sessions are).
    The backend chooses where it is and tells the process through the environment variable ``env``.

    ``only``: what of it the next process gets back -- ``/``-separated patterns (``fnmatch`` per
    component, the same number of components) of the regular files to keep; everything else an earlier
    process left (other files, directories holding none of those, links of any kind) is gone before
    the next process starts. None keeps everything. See :mod:`claude_issue_solver.backends.kept`.
    """

    key: str  # e.g. "acme-widgets-7-<hash>": safe as a path component
    env: str  # e.g. "CLAUDE_CONFIG_DIR"
    only: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ProcessSpec:
    """A process to run in a workspace, in the repository's root, as the workspace's unprivileged user."""

    name: str  # unique within the workspace: "agent"; a test run would be "test-1"
    argv: Sequence[str]  # never a shell string built from untrusted text
    env: Mapping[str, str]  # everything the process gets beyond the place's defaults
    stdin: bytes = b""  # e.g. the prompt: it never appears in argv
    keep: KeptDir | None = None  # a directory kept between workspaces (where the place supports it)
    # AGENT_EGRESS=relay-only: the process reaches nothing over the network but the relay (when given).
    offline: bool = False
    # The task's Claude relay (where the place ``relays``): a host directory holding the relay's socket.
    # The place makes it reachable from the process and points ANTHROPIC_BASE_URL at it; the process's
    # env carries only the task's token (see :mod:`claude_issue_solver.relay`).
    relay: Path | None = None


@dataclass(frozen=True)
class OutputBounds:
    """How much of each of a process's streams the daemon keeps: its first ``head`` bytes and its last
    ``tail`` bytes. The pipeline's policy (:mod:`claude_issue_solver.run.policy`); a backend only reads
    no more than this into memory, however much the process printed."""

    head: int
    tail: int


@dataclass(frozen=True)
class ProcessOutput:
    """What a process printed, bounded: each stream is its start and its end, with a note line between
    them where something was left out (see :func:`kept_text`)."""

    stdout: str
    stderr: str
    left_out: int = 0  # bytes of the output (both streams) that were not kept


def _size(count: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= factor:
            return f"{count / factor:.1f} {unit}"
    return f"{count} bytes"


def kept_text(head: bytes, tail: bytes, left_out: int) -> str:
    """One stream as the daemon keeps it: its start, a note line saying how much is missing, its end.

    The note is a line of its own and no JSON, so readers of the output (a result line, a limit text)
    skip it; the tail's first line may be cut. Nothing is missing: just the text.
    """
    if left_out <= 0:
        return (head + tail).decode("utf-8", "replace")
    # A character cut at the tail's start is dropped rather than shown as garbage.
    start = 0
    while start < min(len(tail), 3) and 0x80 <= tail[start] < 0xC0:
        start += 1
    note = (
        f"[... {_size(left_out)} of this output left out here: the daemon keeps its first "
        f"{_size(len(head))} and its last {_size(len(tail))} ...]"
    )
    return f"{head.decode('utf-8', 'replace')}\n{note}\n{tail[start:].decode('utf-8', 'replace')}"


class OutputKeeper:
    """Keeps the start and the end of a stream fed in chunks, never more than ``bounds`` (plus one
    chunk) in memory; counts what it drops."""

    def __init__(self, bounds: OutputBounds) -> None:
        self.bounds = bounds
        self.total = 0
        self._head = bytearray()
        self._tail = bytearray()

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.bounds.head - len(self._head)
        if room > 0:
            self._head += chunk[:room]
            chunk = chunk[room:]
        if not chunk or self.bounds.tail <= 0:
            return
        self._tail += chunk
        # Trimmed once it holds twice the tail: each byte is moved at most once more (amortised).
        if len(self._tail) >= 2 * self.bounds.tail:
            del self._tail[: len(self._tail) - self.bounds.tail]

    @property
    def tail(self) -> bytes:
        return bytes(self._tail[-self.bounds.tail :]) if self.bounds.tail > 0 else b""

    @property
    def left_out(self) -> int:
        return self.total - len(self._head) - len(self.tail)

    def text(self) -> str:
        return kept_text(bytes(self._head), self.tail, self.left_out)


@dataclass(frozen=True)
class Changes:
    """What differs from the workspace's base: files changed in the tree, and unpushed commits."""

    files: tuple[str, ...] = ()
    diffstat: str = ""
    ahead: bool = False  # commits on the branch that the remote has nowhere (a publish cut short)
    # What is in the tree but is never committed, each "path (why)": a git repository the agent made
    # inside the tree (it would become a gitlink), a submodule's directory.
    left_out: tuple[str, ...] = ()


@dataclass(frozen=True)
class PushRequest:
    branch: str
    clone_url: str  # where the branch goes (the agent may have pointed the remote elsewhere)
    message: str
    author: tuple[str, str]  # name, email: author and committer
    credential: GitCredential
    exclude: tuple[str, ...] = ()  # paths never committed


@dataclass(frozen=True)
class Rebased:
    """This run's commits, put on top of the branch's new remote head ``onto``."""

    sha: str  # the new head: this run's commits replayed on ``onto``
    onto: str  # the branch's head on the remote, the workspace's new base
    new_commits: int  # commits on the remote that this run had not started from
    authors: tuple[str, ...] = ()  # who wrote them (names, first seen first)
    replayed: int = 0  # how many of this run's commits were put on top


@dataclass(frozen=True)
class Pushed:
    sha: str
    committed: bool  # whether a commit was made (False: only commits made before were pushed)
    rebased: tuple[Rebased, ...] = ()  # the branch moved on the remote: the commits went on top


class OutputStream(Protocol):
    def close(self, *, finished: bool) -> None:
        """Stop copying output; ``finished`` when the process ended (copy what is left), else detached."""


W = TypeVar("W", bound=Workspace)


class Backend(Protocol[W]):
    name: str
    poll_interval: float  # how often asking about a process here is sensible (seconds)
    keeps_dirs: bool  # whether ProcessSpec.keep is honoured (a directory kept between workspaces)
    caches_setup: bool  # whether save_setup / restore_setup keep anything (else they answer None)
    relays: bool  # whether ProcessSpec.relay is honoured (the place can reach a socket on this host)

    def check(self) -> None:
        """Fail fast at start-up with a clear BackendError (Docker down, Daytona key rejected)."""

    def handle_for(self, task_id: str) -> str:
        """The deterministic name the task's container or sandbox carries."""

    def process_owner(self) -> tuple[int, int] | None:
        """The uid:gid that this host's files a process uses must belong to (None: the daemon's own)."""

    # --- lifecycle ---

    def prepare(self, spec: WorkspaceSpec, log: TaskLog) -> W:
        """Make (or find again) the workspace on ``spec.branch``, from the remote's branch if it exists."""

    def attach(self, task: Task) -> W | None:
        """Find a task's workspace again after a restart; None when it is gone."""

    def remove(self, task_id: str, log: TaskLog | None = None) -> list[str]:
        """Remove everything of the task (processes, workspace); returns what was removed.

        Removing what is already gone is not an error; a failure raises BackendError.
        """

    def list_ours(self) -> set[str]:
        """The task ids that anything of this daemon's still exists for."""

    # --- processes ---

    def start_process(self, workspace: W, process: ProcessSpec, log: TaskLog) -> bool:
        """Start the process, detached; False (and nothing started) when one of that name exists."""

    def poll_process(self, workspace: W, name: str) -> int | None:
        """The exit code once the process ended, else None. WorkspaceLost when it can no longer tell."""

    def kill_process(self, workspace: W, name: str) -> int | None:
        """Stop the process now; its exit code when the place reports one."""

    def follow_output(self, workspace: W, name: str, log: TaskLog) -> OutputStream:
        """Copy the process's output into ``log`` (live where the place allows it, else when it ends)."""

    def output(self, workspace: W, name: str, bounds: OutputBounds) -> ProcessOutput:
        """What the process printed, once it ended: of each stream its first ``bounds.head`` and last
        ``bounds.tail`` bytes at most, the rest counted in ``left_out`` and noted between them (where
        the place keeps less, such as Docker's capped log, the start is what it still keeps)."""

    # --- files (relative to the repository's root; links are never followed) ---

    def read_file(self, workspace: W, path: str, limit: int) -> bytes | None:
        """At most ``limit`` bytes of a regular file; None when it is missing or anything else."""

    def write_file(self, workspace: W, path: str, data: bytes) -> None:
        """Write a regular file readable by the workspace's user."""

    def delete_file(self, workspace: W, path: str) -> None:
        """Remove whatever is at ``path`` (a file, a link, a directory); a missing path is fine."""

    # --- git ---

    def changes(self, workspace: W, exclude: tuple[str, ...]) -> Changes:
        """What changed since the workspace's base, leaving out ``exclude``."""

    def untracked(self, workspace: W, glob: str | None = None, *, ignored: bool = True) -> tuple[str, ...]:
        """The paths in the tree that git does not track (``git ls-files --others``), ignored ones too
        unless ``ignored`` is False: without ``glob`` a directory holding only such files is named once
        (``dir/``); with ``glob`` (a git ``:(glob)`` pattern, ``**`` allowed) the matching files."""

    def commit_and_push(self, workspace: W, request: PushRequest, log: TaskLog) -> Pushed:
        """Commit what changed (if anything), then push the branch; PushRejected when the remote refuses
        (with ``moved`` when only because the branch moved there)."""

    def rebase_onto_remote(self, workspace: W, request: PushRequest, log: TaskLog) -> Rebased:
        """Fetch ``request.branch`` (from ``request.clone_url``, with its credential) and put this run's
        commits (base..HEAD) on top of its remote head.

        Authors and messages are kept; the workspace's HEAD and tree become the result and its base the
        remote head. RebaseConflict (naming the paths) leaves everything as it was; CannotRebase when
        the place has no way to do it. Nothing of the workspace's own (hooks, config) runs.
        """

    # --- kept directories ---

    def forget_kept(self, key: str) -> bool:
        """Remove the kept directory ``key`` (its issue was closed); True when there was one."""

    def kept_keys(self) -> set[str]:
        """The keys of the kept directories that exist."""

    # --- the setup cache (when caches_setup) ---

    def save_setup(self, workspace: W, process: str, key: str, log: TaskLog) -> str | None:
        """Keep what the ended (green) process ``process`` made -- outside the repository and, as
        untracked or ignored files, inside it -- under ``key`` for this repository.

        Every process of this workspace started afterwards starts from it. Saving what is saved already
        only records it again. Returns a short description (e.g. the image), None when nothing is kept.
        """

    def restore_setup(self, workspace: W, key: str, log: TaskLog) -> str | None:
        """When a setup saved under ``key`` exists for this repository: put what it wrote into the tree
        back, and make this workspace's later processes start from the rest of it. Returns a short
        description of what was restored; None when nothing is saved under ``key``.
        """
