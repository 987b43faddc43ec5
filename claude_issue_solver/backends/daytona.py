"""The Daytona backend: each task runs in its own Daytona sandbox, created from a snapshot.

Layout inside a sandbox (``<work>`` is the sandbox's work directory, asked of the toolbox)::

    <work>/repo/                   the clone, on the task's branch; the agent's working directory
    <work>/.claude-issue-solver/   0700: prompt.md, result.json (stdout), stderr.log, exit_code

Sandboxes are named ``claude-issue-solver-<task_id>`` and labelled with the task, the repository, the
issue and the owning state directory, so a restarted daemon finds its own sandboxes (and only its own)
without having saved anything. The agent runs as an asynchronous command of a session with a
deterministic id, found again by listing that session's commands.

Secrets. The GitHub credential travels only in the bodies of the toolbox's clone and push requests
(the daemon hands it to git through an askpass helper, never a URL or ``.git/config``; the remote URL
is reset to the clean one after cloning anyway). The Claude credential is never a sandbox ``env_var``
(those are readable back through the API): it is uploaded as a file in the 0700 task directory, which
the agent's command sources and deletes before it starts the CLI, so it exists on the sandbox's disk
only between two requests and never in the command text (which the daemon keeps on disk and reports
through the API).

This is the only module that imports ``daytona``; the CLI imports it only when the Daytona backend runs.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import shlex
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

from daytona import (
    CreateSandboxFromSnapshotParams,
    CreateSnapshotParams,
    Daytona,
    DaytonaAuthenticationError,
    DaytonaBadGatewayError,
    DaytonaConfig,
    DaytonaConflictError,
    DaytonaConnectionError,
    DaytonaError,
    DaytonaForbiddenError,
    DaytonaGitAuthFailedError,
    DaytonaGitPushRejectedError,
    DaytonaGitRemoteRejectedError,
    DaytonaInternalServerError,
    DaytonaNotFoundError,
    DaytonaRateLimitError,
    DaytonaServiceUnavailableError,
    DaytonaTimeoutError,
    FileDownloadRequest,
    Image,
    ListSandboxesQuery,
    Resources,
    Sandbox,
    SessionExecuteRequest,
)

from claude_issue_solver import gitops
from claude_issue_solver.backends.base import (
    LABEL_ISSUE,
    LABEL_OWNER,
    LABEL_REPO,
    LABEL_TASK,
    AgentExit,
    BackendError,
    Changes,
    GitCredential,
    LiveRun,
    PushRejected,
    RunSpec,
    Workspace,
    WorkspaceLost,
)
from claude_issue_solver.config import Config
from claude_issue_solver.logs import REDACTOR, TaskLog
from claude_issue_solver.queue import Task

__all__ = ["SANDBOX_PREFIX", "DaytonaBackend", "create_snapshot"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

SANDBOX_PREFIX = "claude-issue-solver-"
SESSION_PREFIX = "claude-issue-solver-"
AGENT_MARKER = "claude-issue-solver-agent"  # $0 of the agent's shell: finds its command after a restart
REPO_DIR = "repo"
TASK_DIR = ".claude-issue-solver"
PROMPT_FILE = "prompt.md"
RESULT_FILE = "result.json"
STDERR_FILE = "stderr.log"
EXIT_FILE = "exit_code"
ENV_FILE = "agent.env"
# The agent is the only thing the sandbox is for, so root there is no escalation; without this the CLI
# refuses --dangerously-skip-permissions in an image whose user is root.
SANDBOX_AGENT_ENV = {"IS_SANDBOX": "1"}
MAX_BACKOFF_SECONDS = 30.0  # the longest pause between polls while Daytona rate-limits or fails
CREATE_TIMEOUT_SECONDS = 180.0  # a cold snapshot on a busy runner takes a while to start
# A sandbox stops after this long without activity beyond TASK_TIMEOUT (our polls are activity), and is
# deleted a day after stopping: long enough for a daemon that was down to come back and publish.
AUTO_STOP_MARGIN_MINUTES = 30
LOG_TAIL_LINES = 30
SUMMARY_LIMIT = 64 * 1024
_CLEANUP_ATTEMPTS = 3
_TASK_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,200}$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DELETED_STATES = ("destroyed", "destroying")
_GONE_STATES = (*_DELETED_STATES, "error", "build_failed")  # nothing of the run can be recovered
_RESTARTABLE_STATES = ("stopped", "archived", "paused")


@dataclass(frozen=True)
class _Paths:
    """Where a task's files live in its sandbox, from the sandbox's work directory."""

    work_dir: str

    @property
    def repo(self) -> str:
        return f"{self.work_dir}/{REPO_DIR}"

    @property
    def task_dir(self) -> str:
        return f"{self.work_dir}/{TASK_DIR}"

    def task_file(self, name: str) -> str:
        return f"{self.task_dir}/{name}"


class DaytonaBackend:
    """Runs each task's agent in a Daytona sandbox; see the module docstring for the layout."""

    name = "daytona"

    def __init__(
        self, config: Config, *, client: Daytona | None = None, poll_interval: float | None = None
    ) -> None:
        self.config = config
        self.state_dir = config.state_dir.expanduser().resolve()
        # The same owner label as the Docker backend's: which daemon (state dir) a sandbox belongs to.
        self.owner = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:12]
        self.poll_interval = poll_interval or config.daytona_poll_interval
        self._client = client
        self._client_lock = threading.Lock()
        self._sandboxes: dict[str, Sandbox] = {}  # by task id: the SDK object carries the toolbox client
        self._sandboxes_lock = threading.Lock()

    # --- the daemon ------------------------------------------------------------------------------------

    @property
    def client(self) -> Daytona:
        with self._client_lock:
            if self._client is None:
                self._client = _connect(self.config)
            return self._client

    def check(self) -> None:
        """One listing (is the key accepted?) and one snapshot lookup (can a task start at all?)."""
        client = self.client
        url = self.config.daytona_api_url
        try:
            next(iter(client.list(ListSandboxesQuery(labels={LABEL_OWNER: self.owner}, limit=1))), None)
        except DaytonaError as exc:
            raise _backend_error(exc, f"listing sandboxes at {url}") from None
        name = self.config.daytona_snapshot
        try:
            snapshot = client.snapshot.get(name)
        except DaytonaNotFoundError:
            msg = (
                f"DAYTONA_SNAPSHOT={name} does not exist at {url}: create it with "
                "`claude-issue-solver daytona snapshot` (it builds Dockerfile.claude) or name an existing one"
            )
            raise BackendError(msg) from None
        except DaytonaError as exc:
            raise _backend_error(exc, f"looking up snapshot {name} at {url}") from None
        state = str(getattr(snapshot.state, "value", snapshot.state))
        if state != "active":
            msg = f"snapshot {name} at {url} is {state}, not active: wait for its build or fix it in Daytona"
            raise BackendError(msg, retryable=state in ("pending", "building", "pulling"))

    # --- names -----------------------------------------------------------------------------------------

    def handle_for(self, task: Task) -> str:
        return _sandbox_name(task.id)

    # --- the pipeline's steps --------------------------------------------------------------------------

    def prepare(self, spec: RunSpec, log: TaskLog) -> Workspace:
        started = time.monotonic()
        name = _sandbox_name(spec.task_id)
        found = self._find(spec.task_id)
        if found is not None:
            sandbox = found
            log.write(f"reusing sandbox {name} ({sandbox.id}), created before a restart")
            self._ensure_started(sandbox, log)
        else:
            sandbox = self._create(spec, log)
        self._remember(spec.task_id, sandbox)
        paths = self._paths(sandbox)
        base_sha = self._existing_clone(sandbox, paths) if found is not None else None
        if base_sha is None:
            base_sha = self._clone(sandbox, paths, spec, log)
        else:
            log.write(f"reusing the clone in {paths.repo} at {base_sha[:12]}")
        _sdk(
            f"uploading the prompt to {name}",
            lambda: sandbox.fs.upload_file(spec.prompt.encode(), paths.task_file(PROMPT_FILE)),
        )
        log.write(f"sandbox {name} ready in {time.monotonic() - started:.1f}s")
        return Workspace(
            task_id=spec.task_id,
            handle=name,
            branch=spec.branch,
            base_sha=base_sha,
            path=None,
            extra={"sandbox": sandbox.id, "work_dir": paths.work_dir, "session": _session_id(spec.task_id)},
        )

    def start_agent(self, workspace: Workspace, spec: RunSpec, log: TaskLog) -> None:
        sandbox = self._sandbox(workspace)
        paths = self._workspace_paths(workspace, sandbox)
        session = workspace.extra.get("session") or _session_id(workspace.task_id)
        try:
            sandbox.process.create_session(session)
        except DaytonaConflictError:
            existing = self._agent_command(sandbox, session)
            if existing is not None:
                workspace.extra["command_id"] = existing
                log.write(
                    f"the agent already runs in session {session} (command {existing}); not starting another"
                )
                return
        except DaytonaError as exc:
            raise _backend_error(exc, f"creating session {session} in {workspace.handle}") from None
        env = {**spec.agent_env, **SANDBOX_AGENT_ENV}
        lines = []
        for key, value in env.items():
            if _ENV_NAME_RE.match(key):
                lines.append(f"export {key}={shlex.quote(value)}\n")
            else:
                log.write(f"not passing {key!r} to the agent: not a valid variable name")
        env_file = paths.task_file(ENV_FILE)
        _sdk(
            f"uploading the agent's environment to {workspace.handle}",
            lambda: sandbox.fs.upload_file("".join(lines).encode(), env_file),
        )
        request = SessionExecuteRequest(command=_agent_command_line(paths, spec.command), run_async=True)
        started = time.monotonic()
        response = _sdk(
            f"starting the agent in {workspace.handle}",
            lambda: sandbox.process.execute_session_command(session, request),
        )
        workspace.extra["command_id"] = response.cmd_id
        log.write(
            f"started the agent in sandbox {workspace.handle}, session {session}, command {response.cmd_id} "
            f"({time.monotonic() - started:.2f}s)"
        )

    def wait(
        self, workspace: Workspace, *, deadline: float, should_stop: Callable[[], str | None], log: TaskLog
    ) -> AgentExit | None:
        sandbox = self._sandbox(workspace)
        paths = self._workspace_paths(workspace, sandbox)
        session = workspace.extra.get("session") or _session_id(workspace.task_id)
        command_id = workspace.extra.get("command_id") or self._agent_command(sandbox, session)
        exit_code: int | None = None
        finished = False
        if command_id is None:
            exit_code = self._exit_without_session(workspace, paths, log)
            finished = True
        else:
            workspace.extra["command_id"] = command_id
        timed_out = cancelled = False
        delay = self.poll_interval
        failing = False
        while not finished:
            stop = should_stop()
            if stop == "detach":
                log.write(f"detached from sandbox {workspace.handle}; the agent keeps running")
                return None
            if stop == "cancel":
                log.write(f"cancelled: stopping the agent in sandbox {workspace.handle}")
                cancelled = True
                break
            if time.time() >= deadline:
                log.write(f"deadline passed: stopping the agent in sandbox {workspace.handle}")
                timed_out = True
                break
            try:
                command = sandbox.process.get_session_command(session, command_id)
            except DaytonaError as exc:
                if _passing(exc):
                    delay = min(max(delay, self.poll_interval) * 2, MAX_BACKOFF_SECONDS)
                    if not failing:
                        log.write(f"Daytona failed a poll ({_describe(exc)}); polling again with back-off")
                    failing = True
                elif isinstance(exc, (DaytonaAuthenticationError, DaytonaForbiddenError)):
                    raise _backend_error(exc, f"polling the agent in {workspace.handle}") from None
                else:  # the command, its session or the whole sandbox is gone: find out which
                    exit_code = self._exit_without_session(workspace, paths, log, exc)
                    break
            else:
                if failing:
                    log.write("Daytona answers again")
                    failing = False
                    delay = self.poll_interval
                if command.exit_code is not None:
                    exit_code = command.exit_code
                    break
            self._pause(min(delay, max(0.0, deadline - time.time())), should_stop)

        killed = cancelled or timed_out
        if killed:
            self._kill(sandbox, session, log)
        stdout, stderr = self._outputs(sandbox, paths)
        if not killed and command_id is not None and exit_code is not None:
            self._copy_command_logs(sandbox, session, command_id, log)
        if stderr:
            log.write_raw(stderr if stderr.endswith("\n") else stderr + "\n")
        if stdout:
            log.write_raw(stdout if stdout.endswith("\n") else stdout + "\n")
        log.write(f"the agent in sandbox {workspace.handle} exited with code {exit_code}")
        tail = "\n".join((stdout.splitlines() + stderr.splitlines())[-LOG_TAIL_LINES:])
        return AgentExit(
            exit_code=exit_code, stdout=stdout, log_tail=tail, timed_out=timed_out, cancelled=cancelled
        )

    def collect(self, workspace: Workspace, log: TaskLog) -> Changes:
        sandbox = self._sandbox(workspace)
        paths = self._workspace_paths(workspace, sandbox)
        names = self._changed_paths(sandbox, paths, workspace)
        summary_paths = [n for n in names if _is_summary(n)]
        files = [n for n in names if not _is_summary(n)]
        summary = None
        if summary_paths:
            summary = self._take_summary(sandbox, paths, summary_paths, workspace)
        stat_text, ahead = self._diffstat(sandbox, paths, workspace)
        log.write(
            f"{len(files)} changed file(s); summary {'found' if summary is not None else 'absent'}"
            + ("; unpushed commits" if ahead else "")
        )
        return Changes(
            changed=bool(files) or ahead, files=tuple(files), diffstat=stat_text, summary=summary, ahead=ahead
        )

    def push(
        self, workspace: Workspace, spec: RunSpec, message: str, author: tuple[str, str], log: TaskLog
    ) -> str:
        sandbox = self._sandbox(workspace)
        paths = self._workspace_paths(workspace, sandbox)
        name, email = author
        pending = [
            n for n in self._changed_paths(sandbox, paths, workspace, with_sources=True) if not _is_summary(n)
        ]
        if pending:
            _sdk(f"staging the changes in {workspace.handle}", lambda: sandbox.git.add(paths.repo, pending))
            try:
                sha = sandbox.git.commit(paths.repo, message, author=name, email=email).sha
                log.write(f"committed {sha[:12]} as {name} <{email}>")
            except DaytonaError as exc:
                if "empty commit" not in str(exc) and "nothing to commit" not in str(exc):
                    raise _backend_error(exc, f"committing in {workspace.handle}") from None
        head = self._prepare_push(sandbox, paths, spec, workspace)
        credential = spec.credential()
        try:
            sandbox.git.push(
                paths.repo, username=credential.username, password=credential.password, branch=spec.branch
            )
        except (DaytonaGitPushRejectedError, DaytonaGitRemoteRejectedError, DaytonaConflictError) as exc:
            msg = f"the remote refused the push of {spec.branch}: {_scrub(str(exc), credential)}"
            raise PushRejected(msg) from None
        except DaytonaError as exc:
            if "rejected" in str(exc).lower():  # daemons before error codes answered 400 for every refusal
                msg = f"the remote refused the push of {spec.branch}: {_scrub(str(exc), credential)}"
                raise PushRejected(msg) from None
            raise _backend_error(exc, f"pushing {spec.branch} from {workspace.handle}", credential) from None
        log.write(f"pushed {head[:12]} to {spec.repo} {spec.branch}")
        return head

    def cleanup(self, workspace: Workspace | None, task: Task, log: TaskLog) -> None:
        try:
            self._delete_task_sandboxes(task, log)
        except Exception as exc:  # never raises: cleanup runs in finally blocks and on shutdown
            log.write(f"could not delete the sandbox of task {task.id}: {_describe(exc)}")
        finally:
            with self._sandboxes_lock:
                self._sandboxes.pop(task.id, None)

    def attach(self, task: Task) -> Workspace | None:
        name = self.handle_for(task)
        branch = task.branch or f"claude/issue-{task.issue_number}"
        base_sha = task.meta.get("base_sha") if isinstance(task.meta.get("base_sha"), str) else None
        try:
            found = self._list({LABEL_TASK: task.id})
        except BackendError as exc:
            if not exc.retryable:
                raise
            # Daytona is briefly unavailable: the deterministic name finds the sandbox later, and wait()
            # reports a lasting failure itself (retryable, so the task is not lost for good).
            logger.warning("could not list the sandboxes of task %s: %s", task.id, exc)
            return Workspace(
                task.id, name, branch, base_sha, None, {"sandbox": name, "session": _session_id(task.id)}
            )
        live = [s for s in found if _state(s) not in _GONE_STATES]
        if not live:
            return None
        sandbox = live[0]
        if _state(sandbox) in _RESTARTABLE_STATES:
            # Stopped while nobody watched (auto-stop): its disk holds the agent's output, if it finished.
            logger.info(
                "starting sandbox %s of task %s, stopped while the daemon was away", sandbox.id, task.id
            )
            _sdk(f"starting sandbox {name}", lambda: sandbox.start(timeout=CREATE_TIMEOUT_SECONDS))
        self._remember(task.id, sandbox)
        paths = self._paths(sandbox)
        return Workspace(
            task_id=task.id,
            handle=name,
            branch=branch,
            base_sha=base_sha,
            path=None,
            extra={"sandbox": sandbox.id, "work_dir": paths.work_dir, "session": _session_id(task.id)},
        )

    def live_runs(self) -> list[LiveRun]:
        return [
            LiveRun(s.labels.get(LABEL_TASK, ""), s.name, _state(s) == "started")
            for s in self._list()
            if _state(s) not in _DELETED_STATES
        ]

    def remove_orphans(self, live_task_ids: set[str]) -> list[str]:
        removed: list[str] = []
        for sandbox in self._list():
            if sandbox.labels.get(LABEL_TASK) in live_task_ids or _state(sandbox) in _DELETED_STATES:
                continue
            try:
                self.client.delete(sandbox)
                removed.append(f"sandbox {sandbox.name}")
            except DaytonaError as exc:
                logger.warning("could not delete orphan sandbox %s: %s", sandbox.name, _describe(exc))
        return removed

    # --- helpers: sandboxes ----------------------------------------------------------------------------

    def _list(self, labels: dict[str, str] | None = None) -> list[Sandbox]:
        query = ListSandboxesQuery(labels={LABEL_OWNER: self.owner, **(labels or {})})
        return _sdk("listing sandboxes", lambda: list(self.client.list(query)))

    def _find(self, task_id: str) -> Sandbox | None:
        live = [s for s in self._list({LABEL_TASK: task_id}) if _state(s) not in _GONE_STATES]
        return live[0] if live else None

    def _create(self, spec: RunSpec, log: TaskLog) -> Sandbox:
        name = _sandbox_name(spec.task_id)
        params = CreateSandboxFromSnapshotParams(
            name=name,
            snapshot=self.config.daytona_snapshot,
            labels={
                LABEL_TASK: spec.task_id,
                LABEL_REPO: spec.repo,
                LABEL_ISSUE: str(spec.issue_number),
                LABEL_OWNER: self.owner,
            },
            # No env_vars: Daytona reports them back to anyone holding the API key.
            auto_stop_interval=math.ceil(self.config.task_timeout / 60) + AUTO_STOP_MARGIN_MINUTES,
            auto_delete_interval=self.config.daytona_auto_delete_minutes,
        )
        started = time.monotonic()
        try:
            sandbox = self.client.create(params, timeout=CREATE_TIMEOUT_SECONDS)
        except DaytonaConflictError:
            # The name is taken: another thread or process created this task's sandbox just now.
            sandbox = _sdk(f"getting sandbox {name}", lambda: self.client.get(name))
        except DaytonaTimeoutError as exc:
            msg = f"sandbox {name} from snapshot {self.config.daytona_snapshot} did not start in time: {exc}"
            raise BackendError(msg, retryable=True) from None  # cleanup() deletes it by its label
        except DaytonaError as exc:
            raise _backend_error(
                exc, f"creating sandbox {name} from snapshot {self.config.daytona_snapshot}"
            ) from None
        log.write(
            f"created sandbox {name} ({sandbox.id}) from snapshot {self.config.daytona_snapshot} "
            f"({time.monotonic() - started:.1f}s)"
        )
        return sandbox

    def _ensure_started(self, sandbox: Sandbox, log: TaskLog) -> None:
        if _state(sandbox) in _RESTARTABLE_STATES:
            log.write(f"starting sandbox {sandbox.name}, which is {_state(sandbox)}")
            _sdk(f"starting sandbox {sandbox.name}", lambda: sandbox.start(timeout=CREATE_TIMEOUT_SECONDS))

    def _remember(self, task_id: str, sandbox: Sandbox) -> None:
        with self._sandboxes_lock:
            self._sandboxes[task_id] = sandbox

    def _sandbox(self, workspace: Workspace) -> Sandbox:
        with self._sandboxes_lock:
            cached = self._sandboxes.get(workspace.task_id)
        if cached is not None:
            return cached
        key = workspace.extra.get("sandbox") or workspace.handle
        try:
            sandbox = self.client.get(key)
        except DaytonaNotFoundError:
            msg = f"sandbox {workspace.handle} of task {workspace.task_id} no longer exists"
            raise WorkspaceLost(msg) from None
        except DaytonaError as exc:
            raise _backend_error(exc, f"getting sandbox {workspace.handle}") from None
        if _state(sandbox) in _GONE_STATES:
            msg = f"sandbox {workspace.handle} of task {workspace.task_id} is {_state(sandbox)}"
            raise WorkspaceLost(msg)
        self._remember(workspace.task_id, sandbox)
        return sandbox

    def _paths(self, sandbox: Sandbox) -> _Paths:
        # Asked, not assumed: Dockerfile.claude's WORKDIR is /workspace, Daytona's own snapshots use the home.
        work_dir = _sdk(f"asking {sandbox.name} for its work directory", sandbox.get_work_dir)
        return _Paths(work_dir.rstrip("/") or "/")

    def _workspace_paths(self, workspace: Workspace, sandbox: Sandbox) -> _Paths:
        work_dir = workspace.extra.get("work_dir")
        if work_dir:
            return _Paths(work_dir)
        paths = self._paths(sandbox)
        workspace.extra["work_dir"] = paths.work_dir
        return paths

    def _delete_task_sandboxes(self, task: Task, log: TaskLog) -> None:
        for attempt in range(1, _CLEANUP_ATTEMPTS + 1):
            try:
                found = {s.id: s for s in self._list({LABEL_TASK: task.id})}
                for sandbox in found.values():
                    if _state(sandbox) not in _DELETED_STATES:
                        self.client.delete(sandbox)
                        log.write(f"deleted sandbox {sandbox.name} ({sandbox.id})")
                return
            except (BackendError, DaytonaError) as exc:
                passing = exc.retryable if isinstance(exc, BackendError) else _passing(exc)
                if not passing or attempt == _CLEANUP_ATTEMPTS:
                    raise
                time.sleep(self.poll_interval * attempt)

    # --- helpers: git in the sandbox -------------------------------------------------------------------

    def _existing_clone(self, sandbox: Sandbox, paths: _Paths) -> str | None:
        """HEAD of a clone a previous attempt finished; a half-made one is removed so cloning can redo it."""
        script = (
            f"if git -C {_q(paths.repo)} rev-parse --verify --quiet HEAD; then :; "
            f"else rm -rf {_q(paths.repo)}; fi"
        )
        response = _sdk(
            f"looking for an earlier clone in {sandbox.name}", lambda: sandbox.process.exec(script)
        )
        sha = (response.result or "").strip()
        return sha if response.exit_code == 0 and re.fullmatch(r"[0-9a-f]{40,64}", sha) else None

    def _clone(self, sandbox: Sandbox, paths: _Paths, spec: RunSpec, log: TaskLog) -> str:
        credential = spec.credential()
        on_remote = self._remote_has_branch(spec, credential)
        branch = spec.branch if on_remote else spec.default_branch
        clean_url = _clean_url(spec.clone_url)
        started = time.monotonic()
        try:
            sandbox.git.clone(
                clean_url,
                paths.repo,
                branch=branch,
                username=credential.username,
                password=credential.password,
            )
        except DaytonaError as exc:
            raise _backend_error(
                exc, f"cloning {spec.repo} {branch} into {sandbox.name}", credential
            ) from None
        # The daemon keeps credentials out of .git/config; resetting the URL makes sure of it whatever
        # daemon version cloned. The task directory is private to the sandbox's user.
        steps = [
            f"cd {_q(paths.repo)}",
            f"git remote set-url origin {_q(clean_url)}",
            f"mkdir -p {_q(paths.task_dir)}",
            f"chmod 700 {_q(paths.task_dir)}",
        ]
        if not on_remote:
            steps.append(f"git checkout --quiet -b {_q(spec.branch)}")
        steps.append("git rev-parse HEAD")
        response = _sdk(
            f"setting up the clone in {sandbox.name}", lambda: sandbox.process.exec(" && ".join(steps))
        )
        output = (response.result or "").strip()
        if response.exit_code != 0 or not output:
            msg = f"setting up the clone of {spec.repo} in {sandbox.name} failed: {REDACTOR(output[-2000:])}"
            raise BackendError(msg)
        base_sha = output.splitlines()[-1].strip()
        log.write(
            f"cloned {spec.repo} {branch} into {sandbox.name}:{paths.repo}"
            + ("" if on_remote else f", new branch {spec.branch}")
            + f" at {base_sha[:12]} ({time.monotonic() - started:.1f}s)"
        )
        return base_sha

    def _remote_has_branch(self, spec: RunSpec, credential: GitCredential) -> bool:
        """Asked from this host (askpass, nothing written): the sandbox must not need the token for it."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            proc = gitops.run_git(
                ["ls-remote", "--heads", spec.clone_url, f"refs/heads/{spec.branch}"],
                cwd=self.state_dir,
                credential=credential,
                timeout=120,
            )
        except gitops.GitError as exc:
            msg = f"asking {spec.repo} whether branch {spec.branch} exists failed: {exc}"
            raise BackendError(msg, retryable=exc.retryable) from None
        return bool(proc.stdout.strip())

    def _changed_paths(
        self, sandbox: Sandbox, paths: _Paths, workspace: Workspace, *, with_sources: bool = False
    ) -> list[str]:
        status = _sdk(f"reading git status in {workspace.handle}", lambda: sandbox.git.status(paths.repo))
        names: list[str] = []
        for entry in status.file_status:
            staging = str(getattr(entry.staging, "value", entry.staging))
            worktree = str(getattr(entry.worktree, "value", entry.worktree))
            if staging == "Unmodified" and worktree == "Unmodified":
                continue
            names.append(entry.name)
            if with_sources and entry.extra and staging in ("Renamed", "Copied"):
                names.append(entry.extra)  # a rename stages its source's removal too
        return list(dict.fromkeys(names))

    def _take_summary(
        self, sandbox: Sandbox, paths: _Paths, found: list[str], workspace: Workspace
    ) -> str | None:
        target = f"{paths.repo}/{gitops.SUMMARY_FILE}"
        text = None
        if gitops.SUMMARY_FILE in found:
            response = _sdk(
                f"downloading the summary from {workspace.handle}",
                lambda: sandbox.fs.download_files([FileDownloadRequest(source=target)])[0],
            )
            if response.error is None and isinstance(response.result, bytes):
                text = response.result[:SUMMARY_LIMIT].decode("utf-8", "replace")
        # Removed before anything is committed, whatever it is (a directory, a link).
        _sdk(
            f"deleting the summary in {workspace.handle}",
            lambda: sandbox.fs.delete_file(target, recursive=True),
        )
        return text

    def _diffstat(self, sandbox: Sandbox, paths: _Paths, workspace: Workspace) -> tuple[str, bool]:
        """``git diff --stat`` from the base to the tree as it is (new files too, index untouched), and
        whether HEAD has commits that no branch of the remote has -- in one request."""
        base = workspace.base_sha or "HEAD"
        exclude = f":(exclude){gitops.SUMMARY_FILE}"
        script = "; ".join(
            [
                f"cd {_q(paths.repo)} || exit 1",
                "idx=$(mktemp -d) || exit 1",
                'cp .git/index "$idx/index" 2>/dev/null',
                f'GIT_INDEX_FILE="$idx/index" git add -A -- . {_q(exclude)} && '
                f'GIT_INDEX_FILE="$idx/index" git diff --cached --stat=100 {_q(base)}',
                "rc=$?",
                'rm -rf "$idx"',
                "printf '\\n@@ahead=%s\\n' \"$(git rev-list --count HEAD --not --remotes=origin)\"",
                'exit "$rc"',
            ]
        )
        response = _sdk(f"reading the diff in {workspace.handle}", lambda: sandbox.process.exec(script))
        output = response.result or ""
        text, _, ahead = output.rpartition("@@ahead=")
        if response.exit_code != 0:
            shown = REDACTOR(output[-2000:])
            msg = f"reading the changes of task {workspace.task_id} in {workspace.handle} failed: {shown}"
            raise BackendError(msg)
        return text.strip(), ahead.strip().isdigit() and int(ahead.strip()) > 0

    def _prepare_push(self, sandbox: Sandbox, paths: _Paths, spec: RunSpec, workspace: Workspace) -> str:
        """Put the branch where the agent's work is and make origin the clean URL again; returns HEAD.

        The agent had the run of the sandbox: it may have switched branches or pointed the remote
        somewhere else (a pushurl would receive our credential).
        """
        clean_url = _clean_url(spec.clone_url)
        script = "; ".join(
            [
                f"cd {_q(paths.repo)} || exit 1",
                "git config --local --unset-all remote.origin.pushurl",
                f"git remote set-url origin {_q(clean_url)} || exit 1",
                f'[ "$(git symbolic-ref --quiet --short HEAD)" = {_q(spec.branch)} ] || '
                f"git checkout --quiet -B {_q(spec.branch)} || exit 1",
                "git rev-parse HEAD",
            ]
        )
        response = _sdk(f"preparing the push in {workspace.handle}", lambda: sandbox.process.exec(script))
        output = (response.result or "").strip()
        head = output.splitlines()[-1].strip() if output else ""
        if response.exit_code != 0 or not re.fullmatch(r"[0-9a-f]{40,64}", head):
            shown = REDACTOR(output[-2000:])
            msg = f"preparing the push of {spec.branch} in {workspace.handle} failed: {shown}"
            raise BackendError(msg)
        return head

    # --- helpers: the agent ----------------------------------------------------------------------------

    def _agent_command(self, sandbox: Sandbox, session: str) -> str | None:
        """The id of the agent's command in its session (found by its marker), or None."""
        try:
            found = sandbox.process.get_session(session)
        except DaytonaNotFoundError:
            return None
        except DaytonaError as exc:
            raise _backend_error(exc, f"reading session {session} of {sandbox.name}") from None
        ours = [c.id for c in found.commands or [] if AGENT_MARKER in (c.command or "")]
        return ours[-1] if ours else None

    def _exit_without_session(
        self, workspace: Workspace, paths: _Paths, log: TaskLog, cause: Exception | None = None
    ) -> int:
        """The agent's command cannot be asked about: the sandbox vanished, or it restarted (a stop ends
        every session) -- then the exit code file the command wrote, if it got that far, still tells."""
        with self._sandboxes_lock:
            self._sandboxes.pop(workspace.task_id, None)
        sandbox = self._sandbox(workspace)  # WorkspaceLost when the sandbox itself is gone
        if _state(sandbox) in _RESTARTABLE_STATES:
            self._ensure_started(sandbox, log)
        response = _sdk(
            f"reading the agent's exit code in {workspace.handle}",
            lambda: sandbox.fs.download_files([FileDownloadRequest(source=paths.task_file(EXIT_FILE))])[0],
        )
        text = response.result.decode(errors="replace").strip() if isinstance(response.result, bytes) else ""
        if response.error is None and text.lstrip("-").isdigit():
            log.write(f"the agent's session in {workspace.handle} is gone, but it had finished")
            return int(text)
        reason = f" ({_describe(cause)})" if cause is not None else ""
        msg = f"the agent's session in sandbox {workspace.handle} is gone and it left no exit code{reason}"
        raise WorkspaceLost(msg)

    def _kill(self, sandbox: Sandbox, session: str, log: TaskLog) -> None:
        # Deleting the session terminates its process group (SIGTERM, then SIGKILL).
        try:
            sandbox.process.delete_session(session)
        except DaytonaNotFoundError:
            pass
        except DaytonaError as exc:
            log.write(
                f"could not stop the agent's session {session}: {_describe(exc)}; cleanup deletes the sandbox"
            )

    def _outputs(self, sandbox: Sandbox, paths: _Paths) -> tuple[str, str]:
        """The agent's stdout and stderr files, in one request; what is missing is empty."""
        try:
            responses = sandbox.fs.download_files(
                [
                    FileDownloadRequest(source=paths.task_file(RESULT_FILE)),
                    FileDownloadRequest(source=paths.task_file(STDERR_FILE)),
                ]
            )
        except DaytonaError as exc:
            return "", f"(the agent's output is unavailable: {_describe(exc)})"
        texts = [
            r.result.decode("utf-8", "replace") if isinstance(r.result, bytes) else "" for r in responses
        ]
        return texts[0], texts[1]

    def _copy_command_logs(self, sandbox: Sandbox, session: str, command_id: str, log: TaskLog) -> None:
        """Whatever the command printed outside the CLI's redirected output (a failed cd, say)."""
        try:
            logs = sandbox.process.get_session_command_logs(session, command_id)
        except DaytonaError as exc:
            log.write(f"the logs of the agent's command are unavailable: {_describe(exc)}")
            return
        output = logs.output or ""
        if output.strip():
            log.write_raw(output if output.endswith("\n") else output + "\n")

    def _pause(self, seconds: float, should_stop: Callable[[], str | None]) -> None:
        """Sleep, but look at should_stop() at least every poll interval so a cancel is prompt."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if should_stop() is not None:
                return
            time.sleep(min(left, self.poll_interval))


# --- the snapshot ------------------------------------------------------------------------------------------


def create_snapshot(
    config: Config,
    dockerfile: Path,
    *,
    name: str | None = None,
    on_logs: Callable[[str], None] | None = None,
    client: Daytona | None = None,
) -> str:
    """Build ``dockerfile`` (``Dockerfile.claude``) into a Daytona snapshot; returns the snapshot's name.

    The Dockerfile copies nothing from a build context, so no files are uploaded. Blocks until Daytona
    reports the snapshot active (or failed).
    """
    name = name or config.daytona_snapshot
    try:
        image = Image.from_dockerfile(dockerfile)
    except DaytonaError as exc:
        msg = f"cannot read {dockerfile} to build snapshot {name}: {exc}"
        raise BackendError(msg) from None
    client = client or _connect(config)
    try:
        snapshot = client.snapshot.create(
            CreateSnapshotParams(
                name=name,
                image=image,
                resources=Resources(
                    cpu=config.daytona_cpu, memory=config.daytona_memory_gb, disk=config.daytona_disk_gb
                ),
            ),
            on_logs=on_logs,
            timeout=0,
        )
    except DaytonaConflictError:
        msg = (
            f"a snapshot named {name} already exists at {config.daytona_api_url}: delete it in the Daytona "
            "dashboard first, or choose another name (and set DAYTONA_SNAPSHOT to it)"
        )
        raise BackendError(msg) from None
    except DaytonaError as exc:
        raise _backend_error(exc, f"creating snapshot {name} at {config.daytona_api_url}") from None
    return snapshot.name


# --- module helpers ----------------------------------------------------------------------------------------


def _connect(config: Config) -> Daytona:
    if not config.daytona_api_key:
        msg = "DAYTONA_API_KEY is not set: expected a Daytona API key when BACKEND=daytona"
        raise BackendError(msg)
    settings = DaytonaConfig(
        api_key=config.daytona_api_key,
        api_url=config.daytona_api_url,
        target=config.daytona_target,
        # We poll the agent's command ourselves; the event stream (a Socket.IO connection per client) would
        # only speed up the SDK's own waits for state changes, which a task hardly ever makes.
        use_deprecated_polling=True,
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return Daytona(settings)
    except DaytonaError as exc:
        raise _backend_error(exc, f"connecting to {config.daytona_api_url}") from None


def _sdk(doing: str, call: Callable[[], T]) -> T:
    try:
        return call()
    except DaytonaError as exc:
        raise _backend_error(exc, doing) from None


def _passing(exc: Exception) -> bool:
    """A failure another attempt may not meet: rate limits, timeouts, connection trouble, 5xx."""
    if isinstance(
        exc,
        (
            DaytonaRateLimitError,
            DaytonaTimeoutError,
            DaytonaConnectionError,
            DaytonaInternalServerError,
            DaytonaBadGatewayError,
            DaytonaServiceUnavailableError,
        ),
    ):
        return True
    status = getattr(exc, "status_code", None)
    return isinstance(status, int) and status >= 500


def _backend_error(exc: Exception, doing: str, credential: GitCredential | None = None) -> BackendError:
    """Daytona's exception as our own, with what we were doing and what to check."""
    detail = _scrub(str(exc), credential)
    if isinstance(exc, DaytonaGitAuthFailedError):
        return BackendError(f"GitHub refused the git credential while {doing}: {detail}")
    if isinstance(exc, DaytonaAuthenticationError):
        msg = (
            f"Daytona rejected DAYTONA_API_KEY (401) while {doing}: {detail}; check the key "
            "(Daytona dashboard, Keys) and DAYTONA_API_URL"
        )
        return BackendError(msg)
    if isinstance(exc, DaytonaForbiddenError):
        msg = (
            f"Daytona refused {doing} (403): {detail}; the API key lacks a permission (sandboxes, snapshots)"
        )
        return BackendError(msg)
    if isinstance(exc, DaytonaNotFoundError):
        return BackendError(f"Daytona found nothing while {doing} (404): {detail}")
    if isinstance(exc, DaytonaRateLimitError):
        return BackendError(f"Daytona rate-limited us (429) while {doing}: {detail}", retryable=True)
    if isinstance(exc, (DaytonaTimeoutError, DaytonaConnectionError)):
        return BackendError(f"Daytona did not answer in time while {doing}: {detail}", retryable=True)
    if _passing(exc):
        status = getattr(exc, "status_code", None)
        return BackendError(f"Daytona failed ({status}) while {doing}: {detail}", retryable=True)
    return BackendError(f"Daytona failed while {doing}: {detail}")


def _describe(exc: Exception) -> str:
    status = getattr(exc, "status_code", None)
    return REDACTOR(f"{type(exc).__name__}" + (f" {status}" if status else "") + f": {exc}")


def _scrub(text: str, credential: GitCredential | None) -> str:
    if credential is not None and credential.password:
        text = text.replace(credential.password, "***")
    return REDACTOR(text)


def _state(sandbox: Sandbox) -> str:
    return str(getattr(sandbox.state, "value", sandbox.state) or "")


def _sandbox_name(task_id: str) -> str:
    return f"{SANDBOX_PREFIX}{_checked_id(task_id)}"


def _session_id(task_id: str) -> str:
    return f"{SESSION_PREFIX}{_checked_id(task_id)}"


def _checked_id(task_id: str) -> str:
    # Task ids become sandbox names, session ids and label values.
    if not _TASK_ID_RE.match(task_id) or ".." in task_id:
        msg = f"task id {task_id!r} is not usable as a sandbox name"
        raise BackendError(msg)
    return task_id


def _q(value: str) -> str:
    return shlex.quote(value)


def _clean_url(url: str) -> str:
    """The URL without any user:password@ (the credential travels beside it, never in it)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def _is_summary(name: str) -> bool:
    return name == gitops.SUMMARY_FILE or name.startswith(f"{gitops.SUMMARY_FILE}/")


def _agent_command_line(paths: _Paths, command: Sequence[str]) -> str:
    """The session command that runs the agent.

    The daemon runs session commands inside a long-lived shell (``. cmd.sh``), so everything happens in
    a child ``sh``: the environment file's variables stay out of the session, and ``exit`` ends only
    that child. The credentials file is deleted before the CLI starts; the prompt arrives on stdin from
    its file, never through the command text; the exit code is also written to a file, which survives
    the session (a sandbox that restarts loses its sessions, not its disk).
    """
    env_file = _q(paths.task_file(ENV_FILE))
    argv = shlex.join(command)
    script = (
        f". {env_file}; loaded=$?; rm -f {env_file}; "
        f'if [ "$loaded" -eq 0 ] && cd {_q(paths.repo)}; then '
        f"{argv} < {_q(paths.task_file(PROMPT_FILE))} > {_q(paths.task_file(RESULT_FILE))} "
        f"2> {_q(paths.task_file(STDERR_FILE))}; rc=$?; else rc=126; fi; "
        f'echo "$rc" > {_q(paths.task_file(EXIT_FILE))}; exit "$rc"'
    )
    return f"sh -c {_q(script)} {AGENT_MARKER}"
