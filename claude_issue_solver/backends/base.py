"""The seam between the pipeline and where the work happens.

A backend says *where* a task runs (a Docker container over a git worktree, a Daytona sandbox); the
pipeline (:mod:`claude_issue_solver.pipeline`) says *what* happens, the same for every backend:
prepare -> start the agent -> wait -> collect the changes -> push -> clean up.

Every method that creates something is idempotent and finds its work by the task id, never by an id
saved after the fact: a daemon that died between "started a container" and "recorded it" finds the
container again by its label on the next start instead of starting a second one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from claude_issue_solver.logs import TaskLog
from claude_issue_solver.queue import Task

LABEL_TASK = "claude-issue-solver.task"
LABEL_REPO = "claude-issue-solver.repo"
LABEL_ISSUE = "claude-issue-solver.issue"
LABEL_OWNER = "claude-issue-solver.owner"  # which daemon (state dir) owns it, so two daemons never collide


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
    """The remote refused the branch (non-fast-forward, a protected branch, a hook)."""


@dataclass(frozen=True)
class GitCredential:
    """A short-lived credential for one git command against GitHub over HTTPS."""

    username: str
    password: str

    def __repr__(self) -> str:  # never shows the secret, even in a traceback's locals
        return f"GitCredential(username={self.username!r}, password='***')"


@dataclass(frozen=True)
class RunSpec:
    """Everything a backend needs to set up and run one task. Built by the pipeline."""

    task_id: str
    repo: str
    issue_number: int
    clone_url: str
    default_branch: str
    branch: str  # claude/issue-N: reused across re-runs
    prompt: str
    command: Sequence[str]  # the agent's argv; the prompt arrives on stdin, never in here
    agent_env: Mapping[str, str]  # the Claude credential and CLI settings: nothing else secret
    credential: Callable[[], GitCredential]  # fetched when needed so it is fresh (App tokens expire)


@dataclass
class Workspace:
    """A prepared place to work: found again after a restart through ``Backend.attach``."""

    task_id: str
    handle: str  # container name / sandbox id
    branch: str
    base_sha: str | None = None  # the commit the work started from
    path: Path | None = None  # the host worktree (Docker); None where the work is remote
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AgentExit:
    """How the agent process ended."""

    exit_code: int | None
    stdout: str  # the CLI's JSON (or NDJSON) output
    log_tail: str  # the last lines of everything it printed, for error messages
    timed_out: bool = False
    cancelled: bool = False


@dataclass(frozen=True)
class Changes:
    changed: bool
    files: tuple[str, ...] = ()
    diffstat: str = ""
    summary: str | None = None  # the agent's .claude-pr-summary.md, if it wrote one (never committed)
    ahead: bool = False  # commits on the branch not yet pushed (a publish interrupted by a crash)


@dataclass(frozen=True)
class LiveRun:
    task_id: str
    handle: str
    running: bool


class Backend(Protocol):
    name: str

    def check(self) -> None:
        """Fail fast at start-up with a clear BackendError (Docker down, Daytona key rejected)."""

    def handle_for(self, task: Task) -> str:
        """The deterministic name the task's container or sandbox will carry."""

    def prepare(self, spec: RunSpec, log: TaskLog) -> Workspace:
        """Make the workspace on branch ``spec.branch`` (from the remote's branch if it exists)."""

    def start_agent(self, workspace: Workspace, spec: RunSpec, log: TaskLog) -> None:
        """Start the agent in the workspace, detached; a second call for the same task is a no-op."""

    def wait(
        self, workspace: Workspace, *, deadline: float, should_stop: Callable[[], str | None], log: TaskLog
    ) -> AgentExit | None:
        """Wait for the agent, streaming its output into ``log``.

        Kills it when the wall-clock ``deadline`` passes (``timed_out``), or when ``should_stop()``
        returns ``"cancel"`` (``cancelled``). Returns None when it returns ``"detach"``: the daemon is
        shutting down and the agent keeps running. Raises WorkspaceLost when the container or sandbox
        no longer exists (e.g. after a restart).
        """

    def collect(self, workspace: Workspace, log: TaskLog) -> Changes:
        """What the agent changed; reads and removes the summary file so it is never committed."""

    def push(
        self, workspace: Workspace, spec: RunSpec, message: str, author: tuple[str, str], log: TaskLog
    ) -> str:
        """Commit the changes (if any are uncommitted) and push the branch; returns the pushed sha."""

    def cleanup(self, workspace: Workspace | None, task: Task, log: TaskLog) -> None:
        """Remove the container/sandbox and the worktree; never raises."""

    def attach(self, task: Task) -> Workspace | None:
        """Find a task's workspace again after a restart; None when it is gone."""

    def live_runs(self) -> list[LiveRun]:
        """Everything of ours that exists now (for reconcile)."""

    def remove_orphans(self, live_task_ids: set[str]) -> list[str]:
        """Remove containers, sandboxes and worktrees that no live task owns; returns what was removed."""
