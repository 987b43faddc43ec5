"""The Daytona backend: each task runs in its own Daytona sandbox, created from a snapshot.

Layout inside a sandbox (``<work>`` is the sandbox's work directory, asked of the toolbox)::

    <work>/repo/                   the clone, on the task's branch; processes run here
    <work>/.claude-issue-solver/   0700: per process <name>.stdin, .out, .err, .log (what its command
                                   printed itself), .exit (and .env briefly)

Sandboxes are named ``claude-issue-solver-<task_id>`` and labelled with the task, the repository, the
issue and the owning state directory, so a restarted daemon finds its own sandboxes (and only its own)
without having saved anything. Each process (the agent, later a test run) is an asynchronous command
in a session of its own with a deterministic id, ``claude-issue-solver-<task_id>-<name>``, found again
by listing that session's commands; its exit code is also written to a file, so a sandbox that
restarted (and lost its sessions) still tells how the process ended.

Secrets. The GitHub credential travels only in the bodies of the toolbox's clone and push requests
(the remote URL is reset to the clean one after cloning and before pushing). A process's environment
(the agent's holds the Claude credential) is never a sandbox ``env_var`` (those are readable back
through the API): it is uploaded as a file in the 0700 task directory, which the process's command
sources and deletes before it starts, so it exists on the sandbox's disk only between two requests and
never in the command text (which the daemon keeps on disk and reports through the API).

Egress. A cloud sandbox cannot reach a relay on this host (``relays`` is False), so the agent's Claude
credential is in its environment, and an offline process (``ProcessSpec.offline``: the agent, a test
run, a fix) needs the Claude API. Before one starts, the sandbox's outbound network is narrowed with
Daytona's own firewall (``update_network_settings``) to the host of ANTHROPIC_BASE_URL (a domain allow
list; an IPv4 address as a /32) -- the API, nothing else (Daytona's organization policy may add its
"essential services"). Before anything that needs the network again (cloning, a process that is not
offline such as setup, the push) it is opened again: to everything, or to DAYTONA_NETWORK_ALLOW_LIST,
which the sandbox also gets when it is created. Each change is idempotent and made before the step
that needs it, never after the step before; Daytona keeps the setting with the sandbox, and a
restarted daemon (which does not know it) sets it again: a sandbox narrowed when the daemon died is
opened before the push.

This is the only module that imports ``daytona``; the daemon imports it only when the Daytona backend
runs. Mechanics only: when to stop, what to take and what to publish is
:mod:`claude_issue_solver.run.policy`.
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import logging
import math
import re
import shlex
import tarfile
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
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
    FileUpload,
    Image,
    ListSandboxesQuery,
    Resources,
    Sandbox,
    SessionExecuteRequest,
)

from claude_issue_solver.backends import git as gitops
from claude_issue_solver.backends import kept as kept_mechanics
from claude_issue_solver.backends.base import (
    LABEL_OWNER,
    LABEL_TASK,
    NAME_PREFIX,
    BackendError,
    Changes,
    OutputBounds,
    ProcessOutput,
    ProcessSpec,
    Pushed,
    PushRejected,
    PushRequest,
    RebaseConflict,
    Rebased,
    Workspace,
    WorkspaceLost,
    WorkspaceSpec,
    checked_id,
    checked_process,
    kept_text,
    owner_of,
    resource_labels,
)
from claude_issue_solver.backends.settings import DaytonaSettings
from claude_issue_solver.credentials import GitCredential
from claude_issue_solver.logs import REDACTOR, TaskLog
from claude_issue_solver.store.queue import Task

__all__ = ["SANDBOX_PREFIX", "DaytonaBackend", "DaytonaWorkspace", "create_snapshot"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

SANDBOX_PREFIX = NAME_PREFIX
REPO_DIR = "repo"
TASK_DIR = ".claude-issue-solver"
STDIN_SUFFIX = "stdin"
STDOUT_SUFFIX = "out"
STDERR_SUFFIX = "err"
LOG_SUFFIX = "log"  # what the process's command printed itself (a failed cd): never the session's logs
KEPT_OUTPUT_SUFFIX = "kept"  # the bounded copy of an output file that is downloaded
EXIT_SUFFIX = "exit"
ENV_SUFFIX = "env"
KEPT_SUFFIX = "kept.tar"  # a kept directory, carried in before a process and out after it
KEPT_KEY_SUFFIX = "kept-key"
KEPT_DIR = ".claude-kept"  # under the work directory, beside (never inside) the repository
FROM_DEFAULT_FILE = "from_default"  # STATE_DIR/tasks/<id>/: Workspace.from_default, for a restart
# The sandbox is there for the task alone, so root there is no escalation; without this the CLI
# refuses --dangerously-skip-permissions in an image whose user is root.
SANDBOX_ENV = {"IS_SANDBOX": "1"}
CREATE_TIMEOUT_SECONDS = 180.0  # a cold snapshot on a busy runner takes a while to start
# A sandbox stops after this long without activity beyond TASK_TIMEOUT (our polls are activity), and is
# deleted a day after stopping: long enough for a daemon that was down to come back and publish.
AUTO_STOP_MARGIN_MINUTES = 30
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Downloads are capped: only the start and the end of an output file are copied out of the sandbox
# (``_download_output``), and a kept directory's archive larger than this is not carried out.
KEPT_ARCHIVE_LIMIT = 256 * 1024 * 1024
# What the task log gets of a process here (no live stream: copied when it ended); output() asked for
# the same bounds reuses that download.
_LOG_BOUNDS = OutputBounds(head=64 * 1024, tail=2 * 1024 * 1024)
# How the toolbox's git says the branch moved on the remote (not a protected branch or a hook).
_MOVED_RE = re.compile(r"non-fast-forward|fetch first", re.IGNORECASE)
_DELETED_STATES = ("destroyed", "destroying")
_GONE_STATES = (*_DELETED_STATES, "error", "build_failed")  # nothing of the run can be recovered
_RESTARTABLE_STATES = ("stopped", "archived", "paused")
DEFAULT_API_HOST = "api.anthropic.com"  # where the Claude CLI goes without ANTHROPIC_BASE_URL


@dataclass(frozen=True)
class _Egress:
    """A sandbox's outbound network, as ``Sandbox.update_network_settings`` takes it (None: not sent)."""

    shown: str  # for the task log
    block_all: bool | None = None  # False: open to everything (and clears the allow lists)
    allow_list: str | None = None  # IPv4 CIDRs, comma-separated
    domains: str | None = None  # domain names, comma-separated

    def apply(self, sandbox: Sandbox) -> None:
        sandbox.update_network_settings(
            network_block_all=self.block_all,
            network_allow_list=self.allow_list,
            domain_allow_list=self.domains,
        )


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

    def process_file(self, name: str, suffix: str) -> str:
        return f"{self.task_dir}/{checked_process(name)}.{suffix}"


@dataclass(frozen=True)
class DaytonaWorkspace(Workspace):
    """A task's sandbox: its id (or name, when Daytona could not be asked) and its work directory."""

    sandbox_id: str
    work_dir: str | None  # None until asked (after a restart during an outage)


class DaytonaBackend:
    """Runs a task's processes in a Daytona sandbox; see the module docstring for the layout."""

    name = "daytona"
    keeps_dirs = True  # carried as a tar archive into the sandbox and out of it (STATE_DIR/kept/<key>)
    # Setup runs in every sandbox. The pinned SDK can snapshot a running sandbox (Sandbox.create_snapshot),
    # but a cache hit would then need a second way to prepare (a sandbox from the repository's snapshot,
    # its clone at an old commit, brought to the task's branch), the sandbox is offline while it is
    # snapshotted, and snapshots count against the organization's quota: not built in this version.
    caches_setup = False
    relays = False  # a cloud sandbox cannot reach a socket on this host: it gets the credential itself

    def __init__(
        self, settings: DaytonaSettings, *, client: Daytona | None = None, poll_interval: float | None = None
    ) -> None:
        self.settings = settings
        self.state_dir = settings.state_dir.expanduser().resolve()
        # The same owner label as the Docker backend's: which daemon (state dir) a sandbox belongs to.
        self.owner = owner_of(self.state_dir)
        self.poll_interval = poll_interval or settings.poll_interval
        self._client = client
        self._client_lock = threading.Lock()
        self._lock = threading.Lock()
        # Caches by task id (and process name); everything in them can be found again by name.
        self._sandboxes: dict[str, Sandbox] = {}  # the SDK object carries the toolbox client
        self._work_dirs: dict[str, str] = {}
        self._commands: dict[tuple[str, str], str] = {}
        self._outputs: dict[tuple[str, str], tuple[OutputBounds, ProcessOutput]] = {}
        # The egress this daemon last set (or created) per task: skips repeating it. A restarted daemon
        # knows none and sets it again before each step that needs one.
        self._egress: dict[str, _Egress] = {}

    # --- the daemon ------------------------------------------------------------------------------------

    @property
    def client(self) -> Daytona:
        with self._client_lock:
            if self._client is None:
                self._client = _connect(self.settings)
            return self._client

    def check(self) -> None:
        """One listing (is the key accepted?) and one snapshot lookup (can a task start at all?)."""
        self._narrowed()  # an ANTHROPIC_BASE_URL no allow list can name fails here, not mid-task
        client = self.client
        url = self.settings.api_url
        try:
            next(iter(client.list(ListSandboxesQuery(labels={LABEL_OWNER: self.owner}, limit=1))), None)
        except DaytonaError as exc:
            raise _backend_error(exc, f"listing sandboxes at {url}") from None
        name = self.settings.snapshot
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

    def handle_for(self, task_id: str) -> str:
        return f"{SANDBOX_PREFIX}{checked_id(task_id)}"

    def process_owner(self) -> tuple[int, int] | None:
        return None  # no file of this host is handed to its processes

    # --- lifecycle -------------------------------------------------------------------------------------

    def prepare(self, spec: WorkspaceSpec, log: TaskLog) -> DaytonaWorkspace:
        if spec.start_ref is not None or spec.branch.startswith("pull/"):
            # The sandbox clones branches only: a pull request's head (a fork's too) is not one.
            what = spec.start_ref or spec.branch
            msg = f"a workspace at {what} (a test run or review of a pull request) needs BACKEND=docker"
            raise BackendError(msg)
        started = time.monotonic()
        name = self.handle_for(spec.task_id)
        found = self._find(spec.task_id)
        if found is not None:
            sandbox = found
            log.write(f"reusing sandbox {name} ({sandbox.id}), created before a restart")
            self._ensure_started(sandbox, log)
        else:
            sandbox = self._create(spec, log)
        self._remember(spec.task_id, sandbox)
        paths = self._ask_paths(spec.task_id, sandbox)
        base_sha = self._existing_clone(sandbox, paths) if found is not None else None
        if base_sha is None:
            base_sha, from_default = self._clone(sandbox, paths, spec, log)
            self._record_start(spec.task_id, from_default)
        else:
            from_default = self._started_from_default(spec.task_id)
            log.write(f"reusing the clone in {paths.repo} at {base_sha[:12]}")
        log.write(f"sandbox {name} ready in {time.monotonic() - started:.1f}s")
        return DaytonaWorkspace(
            task_id=spec.task_id,
            handle=name,
            repo=spec.repo,
            issue_number=spec.issue_number,
            branch=spec.branch,
            base_sha=base_sha,
            sandbox_id=sandbox.id,
            work_dir=paths.work_dir,
            from_default=from_default,
        )

    def attach(self, task: Task) -> DaytonaWorkspace | None:
        name = self.handle_for(task.id)
        branch = task.branch or f"claude/issue-{task.issue_number}"
        base_sha = task.meta.get("base_sha") if isinstance(task.meta.get("base_sha"), str) else None
        from_default = self._started_from_default(task.id)
        try:
            found = self._list({LABEL_TASK: task.id})
        except BackendError as exc:
            if not exc.retryable:
                raise
            # Daytona is briefly unavailable: the deterministic name finds the sandbox later, and a poll
            # reports a lasting failure itself (retryable, so the task is not lost for good).
            logger.warning("could not list the sandboxes of task %s: %s", task.id, exc)
            return DaytonaWorkspace(
                task.id,
                name,
                task.repo,
                task.issue_number,
                branch,
                base_sha,
                name,
                None,
                from_default=from_default,
            )
        live = [s for s in found if _state(s) not in _GONE_STATES]
        if not live:
            return None
        sandbox = live[0]
        if _state(sandbox) in _RESTARTABLE_STATES:
            # Stopped while nobody watched (auto-stop): its disk holds the processes' output.
            logger.info(
                "starting sandbox %s of task %s, stopped while the daemon was away", sandbox.id, task.id
            )
            _sdk(f"starting sandbox {name}", lambda: sandbox.start(timeout=CREATE_TIMEOUT_SECONDS))
        self._remember(task.id, sandbox)
        paths = self._ask_paths(task.id, sandbox)
        return DaytonaWorkspace(
            task.id,
            name,
            task.repo,
            task.issue_number,
            branch,
            base_sha,
            sandbox.id,
            paths.work_dir,
            from_default=from_default,
        )

    def remove(self, task_id: str, log: TaskLog | None = None) -> list[str]:
        removed = []
        try:
            for sandbox in {s.id: s for s in self._list({LABEL_TASK: task_id})}.values():
                if _state(sandbox) not in _DELETED_STATES:
                    _sdk(f"deleting sandbox {sandbox.name}", lambda s=sandbox: self.client.delete(s))
                    removed.append(f"sandbox {sandbox.name}")
        finally:
            self._forget(task_id)
        local = self.state_dir / "tasks" / checked_id(task_id)  # the kept directories' keys, from_default
        if local.exists():
            gitops.force_rmtree(local)
        return removed

    def list_ours(self) -> set[str]:
        return {s.labels.get(LABEL_TASK, "") for s in self._list() if _state(s) not in _DELETED_STATES} - {""}

    # --- processes -------------------------------------------------------------------------------------

    def kept_dir(self, key: str) -> Path:
        return self.state_dir / "kept" / checked_id(key)

    def kept_keys(self) -> set[str]:
        root = self.state_dir / "kept"
        return {p.name for p in root.iterdir() if p.is_dir()} if root.is_dir() else set()

    def forget_kept(self, key: str) -> bool:
        path = self.kept_dir(key)
        if not path.exists():
            return False
        gitops.force_rmtree(path)
        return True

    # --- the setup cache: none here (see caches_setup) ---

    def save_setup(self, workspace: Workspace, process: str, key: str, log: TaskLog) -> str | None:
        return None

    def restore_setup(self, workspace: Workspace, key: str, log: TaskLog) -> str | None:
        return None

    def _carry_in(
        self, task_id: str, paths: _Paths, process: ProcessSpec
    ) -> tuple[str | None, list[FileUpload]]:
        """The kept directory as uploads (a tar archive the process's command unpacks), and its path.

        Only the files ``KeptDir.only`` keeps go in (the sessions, not the settings or hooks an earlier
        process left); the command empties the directory in the sandbox before unpacking.
        """
        if process.keep is None:
            return None, []
        local = self.kept_dir(process.keep.key)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            for path in kept_mechanics.kept_files(local, process.keep.only):
                archive.add(local / path, arcname=path, recursive=False)
        key_file = self._kept_key_file(task_id, process.name)
        key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key_file.write_text(process.keep.key)
        uploads = [FileUpload(buffer.getvalue(), paths.process_file(process.name, KEPT_SUFFIX))]
        return f"{paths.work_dir}/{KEPT_DIR}", uploads

    def _record_start(self, task_id: str, from_default: bool) -> None:
        """Whether the clone started at the default branch's head, on this host (never in the sandbox,
        where the agent could rewrite it): a restarted daemon must not recompute it from a moved branch."""
        local = self.state_dir / "tasks" / checked_id(task_id)
        local.mkdir(parents=True, exist_ok=True, mode=0o700)
        (local / FROM_DEFAULT_FILE).write_text("1" if from_default else "0")

    def _started_from_default(self, task_id: str) -> bool:
        try:
            return (self.state_dir / "tasks" / checked_id(task_id) / FROM_DEFAULT_FILE).read_text() == "1"
        except OSError:
            return False  # not known: not claimed

    def _kept_key_file(self, task_id: str, name: str) -> Path:
        # On this host, never in the sandbox: the agent must not choose which issue's sessions it writes.
        return self.state_dir / "tasks" / checked_id(task_id) / f"{checked_process(name)}.{KEPT_KEY_SUFFIX}"

    def _carry_out(self, task_id: str, name: str, tar_file: Any) -> None:
        """After the process: its kept directory back to STATE_DIR/kept/<key> (regular files only)."""
        try:
            key = self._kept_key_file(task_id, name).read_text().strip()
        except OSError:
            return  # not a process with a kept directory
        if tar_file.error is not None or not isinstance(tar_file.result, bytes) or not key:
            return
        target = self.kept_dir(key)
        fresh = target.with_name(f".{target.name}.new")
        if fresh.exists():
            gitops.force_rmtree(fresh)
        fresh.mkdir(parents=True, mode=0o700)
        with tarfile.open(fileobj=io.BytesIO(tar_file.result)) as archive:
            members = [m for m in archive.getmembers() if m.isfile() or m.isdir()]
            archive.extractall(fresh, members=members, filter="data")  # no links, nothing outside
        if target.exists():
            gitops.force_rmtree(target)
        fresh.rename(target)

    def start_process(self, workspace: Workspace, process: ProcessSpec, log: TaskLog) -> bool:
        sandbox, paths = self._located(workspace)
        name = process.name
        session = _session_id(workspace.task_id, name)
        try:
            sandbox.process.create_session(session)
        except DaytonaConflictError:
            existing = self._find_command(sandbox, session, name)
            if existing is not None:
                self._commands[(workspace.task_id, name)] = existing
                return False
        except DaytonaError as exc:
            raise _backend_error(exc, f"creating session {session} in {workspace.handle}") from None
        self._set_egress(workspace, sandbox, offline=process.offline, log=log, why=f"before {name}")
        kept, kept_uploads = self._carry_in(workspace.task_id, paths, process)
        extra = {process.keep.env: kept} if process.keep is not None and kept else {}
        lines = []
        for key, value in {**process.env, **SANDBOX_ENV, **extra}.items():
            if _ENV_NAME_RE.match(key):
                lines.append(f"export {key}={shlex.quote(value)}\n")
            else:
                log.write(f"not passing {key!r} to {name}: not a valid variable name")
        env_file = paths.process_file(name, ENV_SUFFIX)
        stdin_file = paths.process_file(name, STDIN_SUFFIX)
        uploads = [FileUpload("".join(lines).encode(), env_file), FileUpload(process.stdin, stdin_file)]
        _sdk(
            f"uploading the environment and input of {name} to {workspace.handle}",
            lambda: sandbox.fs.upload_files([*uploads, *kept_uploads]),  # one request
        )
        request = SessionExecuteRequest(
            command=_process_command_line(paths, name, process.argv, kept), run_async=True
        )
        started = time.monotonic()
        response = _sdk(
            f"starting {name} in {workspace.handle}",
            lambda: sandbox.process.execute_session_command(session, request),
        )
        self._commands[(workspace.task_id, name)] = response.cmd_id
        log.write(
            f"started {name} in sandbox {workspace.handle}, session {session}, command {response.cmd_id} "
            f"({time.monotonic() - started:.2f}s)"
        )
        return True

    def poll_process(self, workspace: Workspace, name: str) -> int | None:
        sandbox, paths = self._located(workspace)
        session = _session_id(workspace.task_id, name)
        key = (workspace.task_id, name)
        command_id = self._commands.get(key) or self._find_command(sandbox, session, name)
        if command_id is None:
            return self._exit_without_session(workspace, paths, name)
        self._commands[key] = command_id
        try:
            command = sandbox.process.get_session_command(session, command_id)
        except DaytonaError as exc:
            if _passing(exc) or isinstance(exc, (DaytonaAuthenticationError, DaytonaForbiddenError)):
                raise _backend_error(exc, f"polling {name} in {workspace.handle}") from None
            # The command, its session or the whole sandbox is gone: find out which.
            return self._exit_without_session(workspace, paths, name, exc)
        return command.exit_code

    def kill_process(self, workspace: Workspace, name: str) -> int | None:
        # Deleting the session terminates its process group (SIGTERM, then SIGKILL).
        sandbox, _ = self._located(workspace)
        session = _session_id(workspace.task_id, name)
        try:
            sandbox.process.delete_session(session)
        except DaytonaNotFoundError:
            pass
        except DaytonaError as exc:
            logger.warning(
                "could not stop session %s: %s; removal deletes the sandbox", session, _describe(exc)
            )
        return None

    def follow_output(self, workspace: Workspace, name: str, log: TaskLog) -> _CopyAtEnd:
        return _CopyAtEnd(self, workspace, name, log)

    def output(self, workspace: Workspace, name: str, bounds: OutputBounds) -> ProcessOutput:
        key = (workspace.task_id, name)
        cached = self._outputs.pop(key, None)
        if cached is not None and cached[0] == bounds:
            return cached[1]
        sandbox, paths = self._located(workspace)
        return self._download_output(sandbox, paths, name, workspace.task_id, bounds)[0]

    # --- files -----------------------------------------------------------------------------------------

    def read_file(self, workspace: Workspace, path: str, limit: int) -> bytes | None:
        sandbox, paths = self._located(workspace)
        target = _inside(paths, path)
        # Only a regular file that is no link, under no linked directory: a download would follow one.
        # Checked and read in one request; base64 because the toolbox returns text.
        checks = [f"[ -L {_q(p)} ] && exit 3" for p in _prefixes(paths.repo, path)]
        script = "; ".join(
            [*checks, f"[ -f {_q(target)} ] || exit 4", f"head -c {int(limit)} -- {_q(target)} | base64"]
        )
        response = _sdk(f"reading {path} in {workspace.handle}", lambda: sandbox.process.exec(script))
        if response.exit_code != 0:
            return None
        try:
            return base64.b64decode("".join((response.result or "").split()), validate=True)[:limit]
        except binascii.Error:
            shown = REDACTOR((response.result or "")[-200:])
            msg = f"reading {path} in {workspace.handle} gave no base64: {shown}"
            raise BackendError(msg) from None

    def write_file(self, workspace: Workspace, path: str, data: bytes) -> None:
        sandbox, paths = self._located(workspace)
        target = _inside(paths, path)
        self.delete_file(workspace, path)  # a link there is replaced, never written through
        _sdk(f"uploading {path} to {workspace.handle}", lambda: sandbox.fs.upload_file(data, target))

    def delete_file(self, workspace: Workspace, path: str) -> None:
        sandbox, paths = self._located(workspace)
        script = f"rm -rf -- {_q(_inside(paths, path))}"
        response = _sdk(f"deleting {path} in {workspace.handle}", lambda: sandbox.process.exec(script))
        if response.exit_code != 0:
            msg = f"deleting {path} in {workspace.handle} failed: {REDACTOR((response.result or '')[-2000:])}"
            raise BackendError(msg)

    # --- git -------------------------------------------------------------------------------------------

    def changes(self, workspace: Workspace, exclude: tuple[str, ...]) -> Changes:
        sandbox, paths = self._located(workspace)
        fenced, left_out = self._fence(sandbox, paths, workspace)
        skipped = (*exclude, *fenced)
        files = [n for n in self._changed_paths(sandbox, paths, workspace) if not _excluded(n, skipped)]
        stat_text, ahead = self._diffstat(sandbox, paths, workspace, skipped)
        left_out = tuple(e for e in left_out if not _excluded(e.partition("/ (")[0], exclude))
        return Changes(files=tuple(files), diffstat=stat_text, ahead=ahead, left_out=left_out)

    def untracked(
        self, workspace: Workspace, glob: str | None = None, *, ignored: bool = True
    ) -> tuple[str, ...]:
        sandbox, paths = self._located(workspace)
        options = "" if ignored else " --exclude-standard"
        which = f"-- {_q(':(glob)' + glob)}" if glob else "--directory"
        script = f"cd {_q(paths.repo)} || exit 1; git ls-files -z --others{options} {which}"
        doing = f"listing untracked files in {workspace.handle}"
        response = _sdk(doing, lambda: sandbox.process.exec(script))
        if response.exit_code != 0:
            msg = f"{doing} failed: {REDACTOR((response.result or '')[-2000:])}"
            raise BackendError(msg)
        return tuple(p for p in (response.result or "").split("\0") if p.strip("/"))

    def commit_and_push(self, workspace: Workspace, request: PushRequest, log: TaskLog) -> Pushed:
        sandbox, paths = self._located(workspace)
        name, email = request.author
        # A nested repository would be staged as a gitlink, a submodule's directory as a new commit of it.
        skipped = (*request.exclude, *self._fence(sandbox, paths, workspace)[0])
        pending = [
            n
            for n in self._changed_paths(sandbox, paths, workspace, with_sources=True)
            if not _excluded(n, skipped)
        ]
        committed = False
        if pending:
            _sdk(f"staging the changes in {workspace.handle}", lambda: sandbox.git.add(paths.repo, pending))
            try:
                sandbox.git.commit(paths.repo, request.message, author=name, email=email)
                committed = True
            except DaytonaError as exc:
                if "empty commit" not in str(exc) and "nothing to commit" not in str(exc):
                    raise _backend_error(exc, f"committing in {workspace.handle}") from None
        head = self._prepare_push(sandbox, paths, request, workspace)
        self._set_egress(workspace, sandbox, offline=False, log=log, why="before the push")
        credential = request.credential
        try:
            sandbox.git.push(
                paths.repo, username=credential.username, password=credential.password, branch=request.branch
            )
        except (DaytonaGitPushRejectedError, DaytonaGitRemoteRejectedError, DaytonaConflictError) as exc:
            msg = f"the remote refused the push of {request.branch}: {_scrub(str(exc), credential)}"
            raise PushRejected(msg, moved=bool(_MOVED_RE.search(str(exc)))) from None
        except DaytonaError as exc:
            if "rejected" in str(exc).lower():  # daemons before error codes answered 400 for every refusal
                msg = f"the remote refused the push of {request.branch}: {_scrub(str(exc), credential)}"
                raise PushRejected(msg, moved=bool(_MOVED_RE.search(str(exc)))) from None
            raise _backend_error(
                exc, f"pushing {request.branch} from {workspace.handle}", credential
            ) from None
        return Pushed(head, committed)

    def rebase_onto_remote(self, workspace: Workspace, request: PushRequest, log: TaskLog) -> Rebased:
        # The replay runs on this host with the Docker backend's git (gitops.replay_onto), so the
        # credential fetches here and never enters the sandbox: the run's commits come out of the
        # sandbox as a git bundle, the replayed ones go back as one, and one reset there moves the branch.
        sandbox, paths = self._located(workspace)
        base, branch = workspace.base_sha, request.branch
        if base is None:
            msg = f"task {workspace.task_id} has no recorded base to replay its commits from"
            raise BackendError(msg)
        scratch = self.state_dir / "replays" / checked_id(workspace.task_id)
        outgoing, incoming = f"{paths.task_dir}/ours.bundle", f"{paths.task_dir}/replayed.bundle"
        head = self._sandbox_git(
            sandbox,
            paths,
            workspace,
            "bundling this run's commits",
            [
                f"rm -f {_q(outgoing)} {_q(incoming)}",
                f"git bundle create --quiet {_q(outgoing)} HEAD ^{_q(base)}",
            ],
        )
        ours = _sdk(
            f"downloading this run's commits from {workspace.handle}",
            lambda: sandbox.fs.download_files([FileDownloadRequest(source=outgoing)])[0],
        )
        if ours.error is not None or not isinstance(ours.result, bytes):
            msg = f"downloading this run's commits from {workspace.handle} failed: {ours.error}"
            raise BackendError(msg, retryable=True)
        if scratch.exists():  # left by a daemon killed here
            gitops.force_rmtree(scratch)
        try:
            mirror = scratch / "mirror.git"
            gitops.ensure_mirror(mirror, _clean_url(request.clone_url), request.credential)
            onto = gitops.rev_parse(mirror, f"refs/remotes/origin/{branch}")
            if onto is None:
                msg = f"{workspace.repo} has no branch {branch} to put this run's commits on"
                raise gitops.GitError(msg)
            (scratch / "ours.bundle").write_bytes(ours.result)
            gitops.fetch_bundle(mirror, scratch / "ours.bundle", "HEAD", "refs/cis/ours")
            moved = gitops.replay_onto(mirror, base, head, onto)
            gitops.create_bundle(
                mirror, scratch / "replayed.bundle", moved.head, "refs/cis/replayed", (base, head)
            )
            replayed = (scratch / "replayed.bundle").read_bytes()
        except gitops.GitConflict as exc:
            msg = f"the commits of task {workspace.task_id} conflict with {branch} on {workspace.repo}: {exc}"
            raise RebaseConflict(msg, exc.paths) from None
        except gitops.GitError as exc:
            msg = (
                f"putting the commits of task {workspace.task_id} on top of {workspace.repo} {branch} "
                f"failed: {exc}"
            )
            raise BackendError(msg, retryable=exc.retryable) from None
        finally:
            if scratch.exists():
                gitops.force_rmtree(scratch)
        _sdk(
            f"uploading the replayed commits to {workspace.handle}",
            lambda: sandbox.fs.upload_file(replayed, incoming),
        )
        now = self._sandbox_git(
            sandbox,
            paths,
            workspace,
            "moving the branch to the replayed commits",
            [
                f"git fetch --quiet {_q(incoming)} refs/cis/replayed",
                f"git reset --quiet --hard {_q(moved.head)}",
                f"rm -f {_q(outgoing)} {_q(incoming)}",
            ],
        )
        if now != moved.head:
            msg = f"{workspace.handle} is at {now[:12]} after the reset to {moved.head[:12]}"
            raise BackendError(msg)
        authors = tuple(dict.fromkeys(name for _sha, name in moved.new_commits))
        log.write(
            f"{branch} on {workspace.repo} moved to {onto[:12]} ({len(moved.new_commits)} new commit(s)); "
            f"replayed {moved.replayed} commit(s) on top: {moved.head[:12]}"
        )
        return Rebased(moved.head, onto, len(moved.new_commits), authors, moved.replayed)

    def _sandbox_git(
        self, sandbox: Sandbox, paths: _Paths, workspace: Workspace, doing: str, steps: list[str]
    ) -> str:
        """Run ``steps`` in the sandbox's clone (no credential: local git only); returns HEAD after."""
        script = " && ".join([f"cd {_q(paths.repo)}", *steps, "git rev-parse HEAD"])
        response = _sdk(f"{doing} in {workspace.handle}", lambda: sandbox.process.exec(script))
        output = (response.result or "").strip()
        head = output.splitlines()[-1].strip() if output else ""
        if response.exit_code != 0 or not re.fullmatch(r"[0-9a-f]{40,64}", head):
            msg = f"{doing} in {workspace.handle} failed: {REDACTOR(output[-2000:])}"
            raise BackendError(msg)
        return head

    # --- helpers: sandboxes ----------------------------------------------------------------------------

    def _list(self, labels: dict[str, str] | None = None) -> list[Sandbox]:
        query = ListSandboxesQuery(labels={LABEL_OWNER: self.owner, **(labels or {})})
        return _sdk("listing sandboxes", lambda: list(self.client.list(query)))

    def _find(self, task_id: str) -> Sandbox | None:
        live = [s for s in self._list({LABEL_TASK: task_id}) if _state(s) not in _GONE_STATES]
        return live[0] if live else None

    def _create(self, spec: WorkspaceSpec, log: TaskLog) -> Sandbox:
        name = self.handle_for(spec.task_id)
        snapshot = self.settings.snapshot
        params = CreateSandboxFromSnapshotParams(
            name=name,
            snapshot=snapshot,
            labels=resource_labels(self.owner, spec.task_id, spec.repo, spec.issue_number),
            # No env_vars: Daytona reports them back to anyone holding the API key.
            auto_stop_interval=math.ceil(self.settings.task_timeout / 60) + AUTO_STOP_MARGIN_MINUTES,
            auto_delete_interval=self.settings.auto_delete_minutes,
            # Made open (or limited to DAYTONA_NETWORK_ALLOW_LIST): cloning and setup need the network.
            network_allow_list=self.settings.network_allow_list or None,
        )
        started = time.monotonic()
        try:
            sandbox = self.client.create(params, timeout=CREATE_TIMEOUT_SECONDS)
            with self._lock:
                self._egress[spec.task_id] = self._open()
        except DaytonaConflictError:
            # The name is taken: another thread or process created this task's sandbox just now.
            sandbox = _sdk(f"getting sandbox {name}", lambda: self.client.get(name))
            if (sandbox.labels or {}).get(LABEL_OWNER) != self.owner:
                msg = f"a sandbox named {name} exists but belongs to another daemon (another STATE_DIR)"
                raise BackendError(msg) from None
        except DaytonaTimeoutError as exc:
            msg = f"sandbox {name} from snapshot {snapshot} did not start in time: {exc}"
            raise BackendError(msg, retryable=True) from None  # removal deletes it by its label
        except DaytonaError as exc:
            raise _backend_error(exc, f"creating sandbox {name} from snapshot {snapshot}") from None
        log.write(
            f"created sandbox {name} ({sandbox.id}) from snapshot {snapshot} "
            f"({time.monotonic() - started:.1f}s)"
        )
        return sandbox

    def _ensure_started(self, sandbox: Sandbox, log: TaskLog | None = None) -> None:
        if _state(sandbox) in _RESTARTABLE_STATES:
            if log is not None:
                log.write(f"starting sandbox {sandbox.name}, which is {_state(sandbox)}")
            _sdk(f"starting sandbox {sandbox.name}", lambda: sandbox.start(timeout=CREATE_TIMEOUT_SECONDS))

    def _remember(self, task_id: str, sandbox: Sandbox) -> None:
        with self._lock:
            self._sandboxes[task_id] = sandbox

    def _forget(self, task_id: str) -> None:
        with self._lock:
            self._sandboxes.pop(task_id, None)
            self._work_dirs.pop(task_id, None)
            self._egress.pop(task_id, None)
            for cache in (self._commands, self._outputs):
                for key in [k for k in cache if k[0] == task_id]:
                    cache.pop(key, None)

    def _sandbox(self, workspace: Workspace) -> Sandbox:
        with self._lock:
            cached = self._sandboxes.get(workspace.task_id)
        if cached is not None:
            return cached
        key = workspace.sandbox_id if isinstance(workspace, DaytonaWorkspace) else workspace.handle
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

    def _ask_paths(self, task_id: str, sandbox: Sandbox) -> _Paths:
        # Asked, not assumed: Dockerfile.claude's WORKDIR is /workspace, Daytona's own snapshots use the home.
        work_dir = _sdk(f"asking {sandbox.name} for its work directory", sandbox.get_work_dir)
        paths = _Paths(work_dir.rstrip("/") or "/")
        with self._lock:
            self._work_dirs[task_id] = paths.work_dir
        return paths

    def _located(self, workspace: Workspace) -> tuple[Sandbox, _Paths]:
        sandbox = self._sandbox(workspace)
        known = workspace.work_dir if isinstance(workspace, DaytonaWorkspace) else None
        with self._lock:
            known = known or self._work_dirs.get(workspace.task_id)
        return sandbox, _Paths(known) if known else self._ask_paths(workspace.task_id, sandbox)

    # --- helpers: egress -------------------------------------------------------------------------------

    def _open(self) -> _Egress:
        """What a sandbox reaches when nothing offline runs: everything, or DAYTONA_NETWORK_ALLOW_LIST."""
        cidrs = self.settings.network_allow_list
        if cidrs:
            return _Egress(f"limited to DAYTONA_NETWORK_ALLOW_LIST ({cidrs})", allow_list=cidrs)
        return _Egress("open", block_all=False)

    def _narrowed(self) -> _Egress:
        """What an offline process's sandbox reaches: the Claude API's host alone."""
        url = self.settings.anthropic_base_url
        host = (urlsplit(url).hostname if url else None) or DEFAULT_API_HOST
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return _Egress(f"only {host}", domains=host)
        if address.version != 4:
            msg = (
                f"ANTHROPIC_BASE_URL's host {host} is an IPv6 address: Daytona's network allow lists take "
                "IPv4 networks and domain names, so an offline process's sandbox cannot be limited to it"
            )
            raise BackendError(msg)
        return _Egress(f"only {host}", allow_list=f"{address}/32")

    def _set_egress(
        self,
        workspace: Workspace | WorkspaceSpec,
        sandbox: Sandbox,
        *,
        offline: bool,
        log: TaskLog,
        why: str,
    ) -> None:
        """Narrow the sandbox's egress to the Claude API (offline) or open it, unless this daemon did
        so last. Idempotent: Daytona answers a repeat with the same setting."""
        wanted = self._narrowed() if offline else self._open()
        task_id = workspace.task_id
        with self._lock:
            if self._egress.get(task_id) == wanted:
                return
            self._egress.pop(task_id, None)  # unknown until Daytona confirms the change
        _sdk(f"setting the egress of {sandbox.name} ({wanted.shown})", lambda: wanted.apply(sandbox))
        with self._lock:
            self._egress[task_id] = wanted
        log.write(f"sandbox {sandbox.name}: egress {wanted.shown}, {why}")

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

    def _clone(self, sandbox: Sandbox, paths: _Paths, spec: WorkspaceSpec, log: TaskLog) -> tuple[str, bool]:
        """Clone the task's branch (else the default branch); its HEAD, and whether that is the default
        branch's head as the remote had it just before (see ``Workspace.from_default``)."""
        credential = spec.credential()
        heads = self._remote_heads(spec, credential)
        on_remote = spec.branch in heads
        branch = spec.branch if on_remote else spec.default_branch
        clean_url = _clean_url(spec.clone_url)
        self._set_egress(spec, sandbox, offline=False, log=log, why="before cloning")
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
        return base_sha, base_sha == heads.get(spec.default_branch)

    def _remote_heads(self, spec: WorkspaceSpec, credential: GitCredential) -> dict[str, str]:
        """The task's branch and the default branch on the remote (those that exist): name -> sha.

        Asked from this host (askpass, nothing written): the sandbox must not need the token for it.
        """
        self.state_dir.mkdir(parents=True, exist_ok=True)
        wanted = {
            f"refs/heads/{spec.branch}": spec.branch,
            f"refs/heads/{spec.default_branch}": spec.default_branch,
        }
        try:
            proc = gitops.run_git(
                ["ls-remote", "--heads", spec.clone_url, *wanted],
                cwd=self.state_dir,
                credential=credential,
                timeout=120,
            )
        except gitops.GitError as exc:
            msg = f"asking {spec.repo} whether branch {spec.branch} exists failed: {exc}"
            raise BackendError(msg, retryable=exc.retryable) from None
        heads: dict[str, str] = {}
        for line in proc.stdout.splitlines():
            sha, _, ref = line.strip().partition("\t")
            if ref in wanted:
                heads[wanted[ref]] = sha
        return heads

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

    def _fence(
        self, sandbox: Sandbox, paths: _Paths, workspace: Workspace
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The paths never staged (nested repositories, gitlinks) and ``Changes.left_out`` for them.

        As :func:`gitops.find_fence` does on the host: git lists a directory with a ``.git`` of its own
        among the untracked as ``dir/``; gitlinks come from the index (mode 160000).
        """
        script = "; ".join(
            [
                f"cd {_q(paths.repo)} || exit 1",
                "git ls-files -z --others --exclude-standard || exit 1",
                "printf '\\0@@gitlinks\\0'",
                "git ls-files -z --stage || exit 1",
            ]
        )
        response = _sdk(
            f"listing nested repositories in {workspace.handle}", lambda: sandbox.process.exec(script)
        )
        output = response.result or ""
        if response.exit_code != 0 or "\0@@gitlinks\0" not in output:
            msg = f"listing the nested repositories in {workspace.handle} failed: {REDACTOR(output[-2000:])}"
            raise BackendError(msg)
        others, _, staged = output.partition("\0@@gitlinks\0")
        nested = {e.rstrip("/") for e in others.split("\0") if e.endswith("/") and e.strip("/")}
        gitlinks = {e.partition("\t")[2] for e in staged.split("\0") if e.startswith("160000 ")}
        left_out = [f"{p}/ ({gitops.NESTED_REPOSITORY})" for p in sorted(nested - gitlinks)]
        return tuple(sorted(nested | gitlinks)), tuple(left_out)

    def _diffstat(
        self, sandbox: Sandbox, paths: _Paths, workspace: Workspace, exclude: tuple[str, ...]
    ) -> tuple[str, bool]:
        """``git diff --stat`` from the base to the tree as it is (new files too, index untouched), and
        whether HEAD has commits that no branch of the remote has -- in one request."""
        base = workspace.base_sha or "HEAD"
        pathspec = " ".join(_q(f":(exclude,literal){e}") for e in exclude)
        script = "; ".join(
            [
                f"cd {_q(paths.repo)} || exit 1",
                "idx=$(mktemp -d) || exit 1",
                'cp .git/index "$idx/index" 2>/dev/null',
                f'GIT_INDEX_FILE="$idx/index" git add -A -- . {pathspec} && '
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

    def _prepare_push(
        self, sandbox: Sandbox, paths: _Paths, request: PushRequest, workspace: Workspace
    ) -> str:
        """Put the branch where the agent's work is and make origin the clean URL again; returns HEAD.

        The agent had the run of the sandbox: it may have switched branches or pointed the remote
        somewhere else (a pushurl would receive our credential).
        """
        clean_url = _clean_url(request.clone_url)
        script = "; ".join(
            [
                f"cd {_q(paths.repo)} || exit 1",
                "git config --local --unset-all remote.origin.pushurl",
                f"git remote set-url origin {_q(clean_url)} || exit 1",
                f'[ "$(git symbolic-ref --quiet --short HEAD)" = {_q(request.branch)} ] || '
                f"git checkout --quiet -B {_q(request.branch)} || exit 1",
                "git rev-parse HEAD",
            ]
        )
        response = _sdk(f"preparing the push in {workspace.handle}", lambda: sandbox.process.exec(script))
        output = (response.result or "").strip()
        head = output.splitlines()[-1].strip() if output else ""
        if response.exit_code != 0 or not re.fullmatch(r"[0-9a-f]{40,64}", head):
            shown = REDACTOR(output[-2000:])
            msg = f"preparing the push of {request.branch} in {workspace.handle} failed: {shown}"
            raise BackendError(msg)
        return head

    # --- helpers: processes ----------------------------------------------------------------------------

    def _find_command(self, sandbox: Sandbox, session: str, name: str) -> str | None:
        """The id of the process's command in its session (found by its marker), or None."""
        try:
            found = sandbox.process.get_session(session)
        except DaytonaNotFoundError:
            return None
        except DaytonaError as exc:
            raise _backend_error(exc, f"reading session {session} of {sandbox.name}") from None
        ours = [c.id for c in found.commands or [] if _marker(name) in (c.command or "")]
        return ours[-1] if ours else None

    def _exit_without_session(
        self, workspace: Workspace, paths: _Paths, name: str, cause: Exception | None = None
    ) -> int:
        """The process's command cannot be asked about: the sandbox vanished, or it restarted (a stop ends
        every session) -- then the exit code file the command wrote, if it got that far, still tells."""
        with self._lock:
            self._sandboxes.pop(workspace.task_id, None)
        sandbox = self._sandbox(workspace)  # WorkspaceLost when the sandbox itself is gone
        self._ensure_started(sandbox)
        exit_file = paths.process_file(name, EXIT_SUFFIX)
        response = _sdk(
            f"reading the exit code of {name} in {workspace.handle}",
            lambda: sandbox.fs.download_files([FileDownloadRequest(source=exit_file)])[0],
        )
        text = response.result.decode(errors="replace").strip() if isinstance(response.result, bytes) else ""
        if response.error is None and text.lstrip("-").isdigit():
            logger.info("the session of %s in %s is gone, but it had finished", name, workspace.handle)
            return int(text)
        reason = f" ({_describe(cause)})" if cause is not None else ""
        msg = f"the session of {name} in sandbox {workspace.handle} is gone and it left no exit code{reason}"
        raise WorkspaceLost(msg)

    def _download_output(
        self, sandbox: Sandbox, paths: _Paths, name: str, task_id: str, bounds: OutputBounds
    ) -> tuple[ProcessOutput, str]:
        """The process's stdout and stderr, and what its command printed itself, each bounded: one exec
        cuts every file to its first ``bounds.head`` and last ``bounds.tail`` bytes in the sandbox, one
        request downloads the cut copies -- never a whole file of any size. A kept directory the
        process left comes back in the same request when it is not larger than KEPT_ARCHIVE_LIMIT (see
        ``_carry_out``). What is missing is empty."""
        suffixes = (STDOUT_SUFFIX, STDERR_SUFFIX, LOG_SUFFIX)
        keep = bounds.head + bounds.tail
        cut = " ".join(
            [
                f"cd {_q(paths.task_dir)} || exit 3;",
                f"for f in {' '.join(_q(f'{checked_process(name)}.{x}') for x in suffixes)}; do",
                's=$(wc -c 2>/dev/null < "$f") || s=0; s=$((s + 0));',
                f'if [ "$s" -gt {keep} ]; then {{ head -c {bounds.head} "$f"; tail -c {bounds.tail} "$f"; }}',
                f'> "$f.{KEPT_OUTPUT_SUFFIX}"; else cat "$f" > "$f.{KEPT_OUTPUT_SUFFIX}" 2>/dev/null; fi;',
                'printf "%s " "$s"; done;',
                f"wc -c 2>/dev/null < {_q(f'{checked_process(name)}.{KEPT_SUFFIX}')} || echo -1",
            ]
        )
        try:
            response = sandbox.process.exec(cut)
            sizes = [int(word) for word in (response.result or "").split()]
            if response.exit_code != 0 or len(sizes) != len(suffixes) + 1:
                msg = f"cutting the output files failed (exit {response.exit_code}): {response.result!r:.200}"
                raise BackendError(msg)
            requests = [
                FileDownloadRequest(source=f"{paths.process_file(name, x)}.{KEPT_OUTPUT_SUFFIX}")
                for x in suffixes
            ]
            archive_size = sizes[-1]
            if 0 <= archive_size <= KEPT_ARCHIVE_LIMIT:
                requests.append(FileDownloadRequest(source=paths.process_file(name, KEPT_SUFFIX)))
            elif archive_size > KEPT_ARCHIVE_LIMIT:
                logger.warning(
                    "the kept directory %s left in %s is %d bytes, over %d: not carried out",
                    name,
                    sandbox.name,
                    archive_size,
                    KEPT_ARCHIVE_LIMIT,
                )
            responses = sandbox.fs.download_files(requests)
        except (DaytonaError, BackendError, ValueError) as exc:
            text = f"(the output of {name} is unavailable: {_describe(exc)})"
            return ProcessOutput("", text), ""
        if len(responses) > len(suffixes):
            try:
                self._carry_out(task_id, name, responses[len(suffixes)])
            except (OSError, tarfile.TarError) as exc:
                logger.warning("could not carry the kept directory of %s out: %s", name, exc)
        texts: list[str] = []
        left_out = 0
        for size, response in zip(sizes[: len(suffixes)], responses[: len(suffixes)], strict=True):
            data = response.result if isinstance(response.result, bytes) else b""
            missing = max(0, size - len(data)) if size > keep else 0
            head, tail = (data[: bounds.head], data[bounds.head :]) if missing else (data, b"")
            texts.append(kept_text(head, tail, missing))
            left_out += missing
        return ProcessOutput(texts[0], texts[1], left_out), texts[2]


class _CopyAtEnd:
    """The toolbox streams no output while a process runs here: copy it into the log when it ended."""

    def __init__(self, backend: DaytonaBackend, workspace: Workspace, name: str, log: TaskLog) -> None:
        self.backend, self.workspace, self.name, self.log = backend, workspace, name, log

    def close(self, *, finished: bool) -> None:
        if not finished:
            return
        backend, key = self.backend, (self.workspace.task_id, self.name)
        try:
            sandbox, paths = backend._located(self.workspace)
        except BackendError as exc:
            self.log.write(f"the output of {self.name} is unavailable: {exc}")
            return
        output, logs = backend._download_output(
            sandbox, paths, self.name, self.workspace.task_id, _LOG_BOUNDS
        )
        if logs.strip():
            self.log.write_raw(logs if logs.endswith("\n") else logs + "\n")
        backend._outputs[key] = (_LOG_BOUNDS, output)  # output() needs it next: one download, not two
        for text in (output.stderr, output.stdout):
            if text:
                self.log.write_raw(text if text.endswith("\n") else text + "\n")


# --- the snapshot ------------------------------------------------------------------------------------------


def create_snapshot(
    settings: DaytonaSettings,
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
    name = name or settings.snapshot
    try:
        image = Image.from_dockerfile(dockerfile)
    except DaytonaError as exc:
        msg = f"cannot read {dockerfile} to build snapshot {name}: {exc}"
        raise BackendError(msg) from None
    client = client or _connect(settings)
    try:
        snapshot = client.snapshot.create(
            CreateSnapshotParams(
                name=name,
                image=image,
                resources=Resources(cpu=settings.cpu, memory=settings.memory_gb, disk=settings.disk_gb),
            ),
            on_logs=on_logs,
            timeout=0,
        )
    except DaytonaConflictError:
        msg = (
            f"a snapshot named {name} already exists at {settings.api_url}: delete it in the Daytona "
            "dashboard first, or choose another name (and set DAYTONA_SNAPSHOT to it)"
        )
        raise BackendError(msg) from None
    except DaytonaError as exc:
        raise _backend_error(exc, f"creating snapshot {name} at {settings.api_url}") from None
    return snapshot.name


# --- module helpers ----------------------------------------------------------------------------------------


def _connect(settings: DaytonaSettings) -> Daytona:
    if not settings.api_key:
        msg = "DAYTONA_API_KEY is not set: expected a Daytona API key when BACKEND=daytona"
        raise BackendError(msg)
    settings = DaytonaConfig(
        api_key=settings.api_key,
        api_url=settings.api_url,
        target=settings.target,
        # We poll the agent's command ourselves; the event stream (a Socket.IO connection per client) would
        # only speed up the SDK's own waits for state changes, which a task hardly ever makes.
        use_deprecated_polling=True,
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return Daytona(settings)
    except DaytonaError as exc:
        raise _backend_error(exc, f"connecting to {settings.api_url}") from None


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


def _process_command_line(paths: _Paths, name: str, argv: Sequence[str], kept: str | None = None) -> str:
    """The session command that runs process ``name``.

    The daemon runs session commands inside a long-lived shell (``. cmd.sh``), so everything happens in
    a child ``sh``: the environment file's variables stay out of the session, and ``exit`` ends only
    that child. The environment file (it may hold the Claude credential) is deleted before the process
    starts; stdin comes from its file, never through the command text; the exit code is also written to
    a file, which survives the session (a sandbox that restarts loses its sessions, not its disk).
    """
    env_file = _q(paths.process_file(name, ENV_SUFFIX))
    unpack = pack = ""
    if kept is not None:
        # The kept directory comes in as an archive and goes back into it before the exit code is
        # written, so whoever sees the process ended finds the archive complete.
        archive = _q(paths.process_file(name, KEPT_SUFFIX))
        unpack = f"rm -rf {_q(kept)}; mkdir -p {_q(kept)} && tar -xf {archive} -C {_q(kept)} && "
        pack = f"tar -cf {archive} -C {_q(kept)} . ; "
    # Everything the command prints itself goes to a file too: the session's logs are never read
    # (the SDK returns them whole, however large).
    script = (
        f"exec > {_q(paths.process_file(name, LOG_SUFFIX))} 2>&1; "
        f". {env_file}; loaded=$?; rm -f {env_file}; "
        f'if [ "$loaded" -eq 0 ] && {unpack}cd {_q(paths.repo)}; then '
        f"{shlex.join(argv)} < {_q(paths.process_file(name, STDIN_SUFFIX))} "
        f"> {_q(paths.process_file(name, STDOUT_SUFFIX))} 2> {_q(paths.process_file(name, STDERR_SUFFIX))}; "
        f"rc=$?; else rc=126; fi; {pack}"
        f'echo "$rc" > {_q(paths.process_file(name, EXIT_SUFFIX))}; exit "$rc"'
    )
    return f"sh -c {_q(script)} {_marker(name)}"


def _marker(name: str) -> str:
    """$0 of a process's shell: finds its command in the session after a restart."""
    return f"{NAME_PREFIX}{name}"


def _excluded(name: str, exclude: tuple[str, ...]) -> bool:
    return any(name == e or name.startswith(f"{e}/") for e in exclude)


def _state(sandbox: Sandbox) -> str:
    return str(getattr(sandbox.state, "value", sandbox.state) or "")


def _session_id(task_id: str, name: str) -> str:
    return f"{SANDBOX_PREFIX}{checked_id(task_id)}-{checked_process(name)}"


def _inside(paths: _Paths, path: str) -> str:
    parts = Path(path).parts
    if not parts or Path(path).is_absolute() or any(p in ("..", ".") for p in parts):
        msg = f"{path!r} is not a path inside the repository"
        raise BackendError(msg)
    return f"{paths.repo}/{'/'.join(parts)}"


def _prefixes(root: str, path: str) -> list[str]:
    parts = Path(path).parts
    return [f"{root}/{'/'.join(parts[: i + 1])}" for i in range(len(parts))]


def _q(value: str) -> str:
    return shlex.quote(value)


def _clean_url(url: str) -> str:
    """The URL without any user:password@ (the credential travels beside it, never in it)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
