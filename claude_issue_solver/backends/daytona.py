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

Its parts: :mod:`.daytona_common` (names, paths, the workspace, errors), :mod:`.daytona_processes`,
:mod:`.daytona_kept` (kept directories carried in and out), :mod:`.daytona_git` (cloning, changes,
publishing) and :mod:`.daytona_egress` (the sandbox's firewall). Only these modules import ``daytona``;
the daemon imports them only when the Daytona backend runs. Mechanics only: when to stop, what to take
and what to publish is :mod:`claude_issue_solver.run.policy`.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path

from daytona import (
    CreateSandboxFromSnapshotParams,
    CreateSnapshotParams,
    Daytona,
    DaytonaConflictError,
    DaytonaError,
    DaytonaNotFoundError,
    DaytonaTimeoutError,
    Image,
    ListSandboxesQuery,
    Resources,
    Sandbox,
)

from claude_issue_solver.backends import git as gitops
from claude_issue_solver.backends.base import (
    LABEL_OWNER,
    LABEL_TASK,
    BackendError,
    OutputBounds,
    ProcessOutput,
    Workspace,
    WorkspaceLost,
    WorkspaceSpec,
    checked_id,
    owner_of,
    resource_labels,
)
from claude_issue_solver.backends.daytona_common import (
    _DELETED_STATES,
    _GONE_STATES,
    _RESTARTABLE_STATES,
    AUTO_STOP_MARGIN_MINUTES,
    CREATE_TIMEOUT_SECONDS,
    DEFAULT_API_HOST,
    ENV_SUFFIX,
    EXIT_SUFFIX,
    FROM_DEFAULT_FILE,
    KEPT_ARCHIVE_LIMIT,
    KEPT_DIR,
    KEPT_KEY_SUFFIX,
    KEPT_OUTPUT_SUFFIX,
    KEPT_SUFFIX,
    LOG_SUFFIX,
    REPO_DIR,
    SANDBOX_ENV,
    SANDBOX_PREFIX,
    STDERR_SUFFIX,
    STDIN_SUFFIX,
    STDOUT_SUFFIX,
    TASK_DIR,
    DaytonaWorkspace,
    _backend_error,
    _connect,
    _inside,
    _Paths,
    _prefixes,
    _q,
    _sdk,
    _state,
)
from claude_issue_solver.backends.daytona_egress import DaytonaEgress, _Egress
from claude_issue_solver.backends.daytona_git import DaytonaGit
from claude_issue_solver.backends.daytona_kept import DaytonaKept
from claude_issue_solver.backends.daytona_processes import DaytonaProcesses
from claude_issue_solver.backends.settings import DaytonaSettings
from claude_issue_solver.logs import REDACTOR, TaskLog
from claude_issue_solver.store.queue import Task

__all__ = [
    "AUTO_STOP_MARGIN_MINUTES",
    "CREATE_TIMEOUT_SECONDS",
    "DEFAULT_API_HOST",
    "ENV_SUFFIX",
    "EXIT_SUFFIX",
    "FROM_DEFAULT_FILE",
    "KEPT_ARCHIVE_LIMIT",
    "KEPT_DIR",
    "KEPT_KEY_SUFFIX",
    "KEPT_OUTPUT_SUFFIX",
    "KEPT_SUFFIX",
    "LOG_SUFFIX",
    "REPO_DIR",
    "SANDBOX_ENV",
    "SANDBOX_PREFIX",
    "STDERR_SUFFIX",
    "STDIN_SUFFIX",
    "STDOUT_SUFFIX",
    "TASK_DIR",
    "DaytonaBackend",
    "DaytonaWorkspace",
    "create_snapshot",
]

logger = logging.getLogger(__name__)


class DaytonaBackend(DaytonaProcesses, DaytonaKept, DaytonaGit, DaytonaEgress):
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

    # --- the setup cache: none here (see caches_setup) ---

    def save_setup(self, workspace: Workspace, process: str, key: str, log: TaskLog) -> str | None:
        return None

    def restore_setup(self, workspace: Workspace, key: str, log: TaskLog) -> str | None:
        return None

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
