"""The Docker backend: a task's processes run in containers over a git worktree on this host.

Layout under ``STATE_DIR``::

    mirrors/<owner>/<name>.git   one bare mirror per repository, fetched before each task
    worktrees/<task_id>/         the task's worktree, mounted read-write at /workspace
    tasks/<task_id>/             0700: base_sha, default_branch, from_default, <process>.stdin (mounted
                                 read-only at /task), setup_image (the saved setup the task's later
                                 processes start from)
    kept/<key>/                  0700: a directory kept between tasks (an issue's Claude configuration,
                                 its sessions), mounted read-write at /kept/<key> for the processes given
                                 it; pruned to ``KeptDir.only`` on this host before each such process

Each process of a task is a container of its own -- the agent's is ``claude-issue-solver-<task_id>``,
another process's ``claude-issue-solver-<task_id>-<name>`` -- from the same image, as the same user,
over the same worktree and with the same limits and network. A container per process (not ``exec`` in
one) because a container keeps its exit code and output after it ended: a daemon that was down when
the agent finished still reads both. Containers are labelled with the task, the process, the
repository, the issue and the owning state directory, so a restarted daemon finds its own (and only its
own) without having saved anything. They are not auto-removed, for the same reason.

Host-side git works on the worktree through the mirror (:mod:`claude_issue_solver.backends.git`), never
through the worktree's own ``.git``, which the agent could rewrite.

Its parts: :mod:`.docker_common` (names, mounts, the workspace), :mod:`.docker_git` (changes, publishing),
:mod:`.docker_files` (files, the setup cache, the agent image), :mod:`.docker_output` (the log pump, bounded
output), beside :mod:`.docker_images` and :mod:`.docker_setup_cache`. Only these modules import ``docker``;
the daemon imports them only when the Docker backend runs.
Mechanics only: when to stop, what to take and what to publish is :mod:`claude_issue_solver.run.policy`.
"""

from __future__ import annotations

import logging
import os
import shlex
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests
from docker.models.containers import Container

from claude_issue_solver.backends import git as gitops
from claude_issue_solver.backends import kept as kept_mechanics
from claude_issue_solver.backends.base import (
    LABEL_OWNER,
    LABEL_PROCESS,
    LABEL_TASK,
    BackendError,
    OutputBounds,
    ProcessOutput,
    ProcessSpec,
    Workspace,
    WorkspaceLost,
    WorkspaceSpec,
    agent_dockerfile,
    checked_id,
    checked_process,
    owner_of,
    resource_labels,
)
from claude_issue_solver.backends.docker_common import (
    _DOCKER_ERRORS,
    AGENT_PROCESS,
    AGENT_UID,
    BASE_SHA_FILE,
    CONTAINER_PREFIX,
    DEFAULT_BRANCH_FILE,
    FROM_DEFAULT_FILE,
    KEPT_MOUNT,
    POLL_SECONDS,
    RELAY_MOUNT,
    RESTORE_PROCESS,
    RESTORE_TIMEOUT,
    SETUP_IMAGE_FILE,
    TASK_MOUNT,
    WORKSPACE_MOUNT,
    DockerWorkspace,
    _container_name,
    _read_text,
    _subdirs,
    _write_private,
    agent_ids,
)
from claude_issue_solver.backends.docker_files import DockerFiles
from claude_issue_solver.backends.docker_git import DockerGit
from claude_issue_solver.backends.docker_images import AgentImages, unreachable
from claude_issue_solver.backends.docker_output import LOG_CONFIG, _LogPump, _logs
from claude_issue_solver.backends.docker_setup_cache import (
    SETUP_IMAGE_REPOSITORY,
    SetupImages,
)
from claude_issue_solver.backends.settings import DockerSettings
from claude_issue_solver.logs import TaskLog
from claude_issue_solver.relay import FORWARDER_PORT, forwarded_command
from claude_issue_solver.store.queue import Task

__all__ = [
    "AGENT_PROCESS",
    "AGENT_UID",
    "BASE_SHA_FILE",
    "CONTAINER_PREFIX",
    "DEFAULT_BRANCH_FILE",
    "FROM_DEFAULT_FILE",
    "KEPT_MOUNT",
    "LOG_CONFIG",
    "POLL_SECONDS",
    "RELAY_MOUNT",
    "RESTORE_PROCESS",
    "RESTORE_TIMEOUT",
    "SETUP_IMAGE_FILE",
    "TASK_MOUNT",
    "WORKSPACE_MOUNT",
    "DockerBackend",
    "DockerWorkspace",
    "agent_dockerfile",
    "agent_ids",
]

logger = logging.getLogger(__name__)


class DockerBackend(DockerGit, DockerFiles):
    """Runs a task's processes in local Docker containers; see the module docstring for the layout."""

    name = "docker"
    poll_interval = POLL_SECONDS
    keeps_dirs = True
    caches_setup = True  # a green setup container committed as an image (docker_setup_cache)
    relays = True  # the task's relay socket is mounted into its containers (see _create_container)

    def __init__(
        self, settings: DockerSettings, *, client: docker.DockerClient | None = None, image: str | None = None
    ):
        self.settings = settings
        # Resolved once: mounts and the worktrees' .git files must agree on one absolute path.
        self.state_dir = settings.state_dir.expanduser().resolve()
        self.owner = owner_of(self.state_dir)
        self._client = client
        self._client_lock = threading.Lock()
        self.images = AgentImages(
            lambda: self.client,
            self.state_dir,
            base_image=settings.base_image,
            configured=image or settings.image,
            network=settings.network,
        )
        self.setups = SetupImages(lambda: self.client, self.owner)

    # --- the daemon ------------------------------------------------------------------------------------

    @property
    def client(self) -> docker.DockerClient:
        # Created on first use: docker.from_env() already talks to the daemon to pick an API version.
        with self._client_lock:
            if self._client is None:
                try:
                    self._client = docker.from_env()
                except docker.errors.DockerException as exc:
                    raise BackendError(unreachable(exc), retryable=True) from None
            return self._client

    def check(self) -> None:
        try:
            self.client.ping()
        except _DOCKER_ERRORS as exc:
            raise BackendError(unreachable(exc), retryable=True) from None

    # --- names and paths -------------------------------------------------------------------------------

    def handle_for(self, task_id: str) -> str:
        return _container_name(task_id, AGENT_PROCESS)

    def process_owner(self) -> tuple[int, int] | None:
        """Whom the relay's sockets must belong to: the agent's uid when the daemon runs as root."""
        return agent_ids() if os.getuid() == 0 else None

    def mirror_dir(self, repo: str) -> Path:
        owner, _, name = repo.lower().partition("/")
        return self.state_dir / "mirrors" / owner / f"{name}.git"

    def worktree_dir(self, task_id: str) -> Path:
        return self.state_dir / "worktrees" / checked_id(task_id)

    def task_dir(self, task_id: str) -> Path:
        return self.state_dir / "tasks" / checked_id(task_id)

    def kept_dir(self, key: str) -> Path:
        return self.state_dir / "kept" / checked_id(key)

    def kept_keys(self) -> set[str]:
        return {p.name for p in _subdirs(self.state_dir / "kept")}

    def forget_kept(self, key: str) -> bool:
        path = self.kept_dir(key)
        if not path.exists():
            return False
        gitops.force_rmtree(path)
        return True

    # --- lifecycle -------------------------------------------------------------------------------------

    def prepare(self, spec: WorkspaceSpec, log: TaskLog) -> DockerWorkspace:
        mirror = self.mirror_dir(spec.repo)
        worktree = self.worktree_dir(spec.task_id)
        task_dir = self.task_dir(spec.task_id)
        try:
            with self._mirror_locked(mirror):
                git_dir = gitops.worktree_git_dir(mirror, worktree) if worktree.is_dir() else None
                if git_dir is not None:
                    base_sha = _read_text(task_dir / BASE_SHA_FILE) or gitops.rev_parse(
                        worktree, "HEAD", git_dir=git_dir
                    )
                    # As recorded when it was made: the default branch may have moved since.
                    from_default = _read_text(task_dir / FROM_DEFAULT_FILE) == "1"
                    log.write(f"reusing worktree {worktree} (prepared before a restart)")
                else:
                    started = time.monotonic()
                    # A review's branch (pull/N/head) is fetched with the mirror, into refs/remotes/pulls/.
                    gitops.ensure_mirror(mirror, spec.clone_url, spec.credential(), branch=spec.branch)
                    if spec.start_ref is not None:  # a test run's pull request head: fetched as the branch
                        into = f"refs/remotes/origin/{spec.branch}"
                        gitops.fetch_ref(mirror, spec.start_ref, into, spec.credential())
                    if worktree.exists():  # half-made by a crash: git would refuse a non-empty path
                        gitops.remove_worktree(mirror, worktree)
                    stale = gitops.worktree_holding(mirror, spec.branch)
                    if stale is not None:
                        # An earlier task of the same issue whose cleanup never ran (the queue allows
                        # one live task per issue); git lets only one worktree have the branch.
                        log.write(f"removing the stale worktree {stale}, which still held {spec.branch}")
                        gitops.remove_worktree(mirror, stale)
                    start = gitops.start_point(mirror, spec.branch, spec.default_branch)
                    git_dir = gitops.add_worktree(mirror, worktree, spec.branch, start)
                    base_sha = gitops.rev_parse(worktree, "HEAD", git_dir=git_dir)
                    # The tree is the default branch's as just fetched (a branch that exists but holds
                    # no commits of its own counts too): only then may it feed the setup cache.
                    default_head = gitops.rev_parse(mirror, f"refs/remotes/origin/{spec.default_branch}")
                    from_default = base_sha is not None and base_sha == default_head
                    log.write(
                        f"worktree {worktree} on {spec.branch} from {start.removeprefix('refs/remotes/')} "
                        f"at {(base_sha or '?')[:12]} ({time.monotonic() - started:.1f}s incl. fetch)"
                    )
        except gitops.GitError as exc:
            msg = f"preparing a worktree of {spec.repo} for task {spec.task_id} failed: {exc}"
            raise BackendError(msg, retryable=exc.retryable) from None

        task_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(task_dir, 0o700)
        _write_private(task_dir / BASE_SHA_FILE, (base_sha or "").encode())
        _write_private(task_dir / DEFAULT_BRANCH_FILE, spec.default_branch.encode())
        _write_private(task_dir / FROM_DEFAULT_FILE, b"1" if from_default else b"0")
        self._hand_over(worktree, task_dir)
        return DockerWorkspace(
            task_id=spec.task_id,
            handle=self.handle_for(spec.task_id),
            repo=spec.repo,
            issue_number=spec.issue_number,
            branch=spec.branch,
            base_sha=base_sha,
            default_branch=spec.default_branch,
            worktree=worktree,
            mirror=mirror,
            from_default=from_default,
        )

    def attach(self, task: Task) -> DockerWorkspace | None:
        mirror = self.mirror_dir(task.repo)
        worktree = self.worktree_dir(task.id)
        git_dir = gitops.worktree_git_dir(mirror, worktree) if worktree.is_dir() else None
        if git_dir is None:
            return None
        task_dir = self.task_dir(task.id)
        return DockerWorkspace(
            task_id=task.id,
            handle=self.handle_for(task.id),
            repo=task.repo,
            issue_number=task.issue_number,
            branch=gitops.current_branch(worktree, git_dir=git_dir) or task.branch or "",
            base_sha=_read_text(task_dir / BASE_SHA_FILE),
            default_branch=_read_text(task_dir / DEFAULT_BRANCH_FILE) or "main",
            worktree=worktree,
            mirror=mirror,
            from_default=_read_text(task_dir / FROM_DEFAULT_FILE) == "1",
        )

    def remove(self, task_id: str, log: TaskLog | None = None) -> list[str]:
        removed: list[str] = []
        problems: list[str] = []
        retryable = False
        try:
            containers = {c.id: c for c in self._containers({LABEL_TASK: task_id})}
            found = self._container(self.handle_for(task_id))
            if found is not None:
                containers[found.id] = found
            for container in containers.values():
                container.remove(force=True)
                removed.append(f"container {container.name}")
        except docker.errors.NotFound:
            pass  # removed in the meantime
        except (BackendError, *_DOCKER_ERRORS) as exc:
            problems.append(f"its containers: {exc}")
            retryable = True
        worktree = self.worktree_dir(task_id)
        try:
            owning = self._owning_mirror(worktree)
            if owning is not None:
                with self._mirror_locked(owning):
                    gitops.remove_worktree(owning, worktree)
                removed.append(f"worktree {worktree}")
            elif worktree.exists():
                gitops.force_rmtree(worktree)
                removed.append(f"worktree {worktree}")
        except (OSError, gitops.GitError, BackendError) as exc:
            problems.append(f"its worktree: {exc}")
        task_dir = self.task_dir(task_id)
        try:
            if task_dir.exists():
                gitops.force_rmtree(task_dir)
                removed.append(f"task directory {task_dir}")
        except OSError as exc:
            problems.append(f"its task directory: {exc}")
        if problems:
            msg = f"could not remove all of task {task_id}: " + "; ".join(problems)
            raise BackendError(msg, retryable=retryable)
        return removed

    def list_ours(self) -> set[str]:
        ours = {c.labels.get(LABEL_TASK, "") for c in self._containers()}
        ours.update(p.name for p in _subdirs(self.state_dir / "worktrees"))
        ours.update(p.name for p in _subdirs(self.state_dir / "tasks"))
        return ours - {""}

    # --- processes -------------------------------------------------------------------------------------

    def start_process(self, workspace: Workspace, process: ProcessSpec, log: TaskLog) -> bool:
        ws = self._own(workspace)
        name = _container_name(ws.task_id, process.name)
        existing = self._container(name)
        if existing is not None:
            if existing.status == "created":  # a crash between create and start
                log.write(f"starting container {existing.name}, created before a restart")
                self._docker(existing.start)
            return False
        image = self._image_for(ws, log)
        started = time.monotonic()
        stdin_file = self.task_dir(ws.task_id) / f"{process.name}.stdin"
        _write_private(stdin_file, process.stdin)
        self._hand_over_file(stdin_file)
        container = self._create_container(ws, process, image)
        if container.status == "created":
            self._docker(container.start)
        user = container.attrs.get("Config", {}).get("User", "?")
        log.write(
            f"started container {container.name} from {image} as user {user} "
            f"({time.monotonic() - started:.2f}s)"
        )
        return True

    def poll_process(self, workspace: Workspace, name: str) -> int | None:
        container = self._process_container(workspace, name)
        if container.status == "created":
            # A crash between create and start: waiting on it would report exit code 0 at once.
            self._docker(container.start)
            return None
        if container.status in ("exited", "dead"):
            code = container.attrs.get("State", {}).get("ExitCode")
            return int(code) if isinstance(code, int) else None
        return None

    def kill_process(self, workspace: Workspace, name: str) -> int | None:
        container = self._process_container(workspace, name)
        try:
            container.kill()
        except docker.errors.APIError:
            pass  # it exited on its own in the meantime
        except requests.exceptions.RequestException:
            return None
        try:
            return container.wait(timeout=30).get("StatusCode")
        except _DOCKER_ERRORS:
            return None

    def follow_output(self, workspace: Workspace, name: str, log: TaskLog) -> _LogPump:
        container = self._container(_container_name(workspace.task_id, name))
        if container is not None and container.status == "created":
            self._docker(container.start)  # a crash between create and start; following it would end at once
        pump = _LogPump(container, log)
        if container is not None:
            pump.start()
        return pump

    def output(self, workspace: Workspace, name: str, bounds: OutputBounds) -> ProcessOutput:
        container = self._process_container(workspace, name)
        stdout = _logs(container, bounds, stdout=True, stderr=False)
        stderr = _logs(container, bounds, stdout=False, stderr=True)
        return ProcessOutput(stdout.text(), stderr.text(), stdout.left_out + stderr.left_out)

    # --- helpers ---------------------------------------------------------------------------------------

    def _create_container(self, ws: DockerWorkspace, process: ProcessSpec, image: str) -> Container:
        task_dir = self.task_dir(ws.task_id)
        stdin_name = f"{checked_process(process.name)}.stdin"
        if not (task_dir / stdin_name).is_file():
            # Docker would create a missing mount source as an empty root-owned directory.
            msg = f"{task_dir / stdin_name} is missing: prepare() and start_process() write it first"
            raise BackendError(msg)
        uid, gid = agent_ids()
        environment = dict(process.env)
        if uid != AGENT_UID:
            # A uid the image does not know gets HOME=/, where the CLI cannot keep its config.
            environment.setdefault("HOME", "/tmp")
        name = _container_name(ws.task_id, process.name)
        volumes = {
            str(ws.worktree): {"bind": WORKSPACE_MOUNT, "mode": "rw"},
            str(task_dir): {"bind": TASK_MOUNT, "mode": "ro"},
            # The worktree's .git file names this host path; git inside needs it to exist.
            str(ws.mirror): {"bind": str(ws.mirror), "mode": "ro"},
        }
        if process.keep is not None:
            kept = self.kept_dir(process.keep.key)
            kept.mkdir(parents=True, exist_ok=True)
            os.chmod(kept, 0o700)
            # Only what the pipeline keeps (the sessions) reaches this process: not the settings, hooks
            # or links an earlier process left. No container uses the directory now (one live task per
            # issue, its processes one after another), so nothing changes it during the walk.
            try:
                pruned = kept_mechanics.prune(kept, process.keep.only)
            except OSError as exc:
                msg = f"clearing the kept directory {kept} for {name} failed: {exc}"
                raise BackendError(msg) from None
            if pruned:
                logger.info("%s starts without %s of %s (not kept)", name, ", ".join(pruned[:10]), kept)
            if os.getuid() == 0:
                os.chown(kept, uid, gid, follow_symlinks=False)
            inside = f"{KEPT_MOUNT}/{process.keep.key}"
            volumes[str(kept)] = {"bind": inside, "mode": "rw"}
            environment[process.keep.env] = inside
        run = f'exec "$@" < {TASK_MOUNT}/{stdin_name}'
        if process.relay is not None:
            # The relay's task directory (not its socket: a restarted daemon binds a new one there) holds
            # the socket and the forwarder that gives the CLI a TCP address on the container's own loopback.
            volumes[str(process.relay)] = {"bind": RELAY_MOUNT, "mode": "ro"}
            environment["ANTHROPIC_BASE_URL"] = f"http://127.0.0.1:{FORWARDER_PORT}"
            # Node is in every agent image (Dockerfile.claude needs it); an image without it (the demo's
            # stand-in) calls no API, so its command runs as it is.
            forwarder = shlex.join(forwarded_command([], port=FORWARDER_PORT, mount=RELAY_MOUNT))
            stdin_file = f"{TASK_MOUNT}/{stdin_name}"
            with_node = f'exec {forwarder} "$@" < {stdin_file}'
            run = f"if command -v node >/dev/null 2>&1; then {with_node}; else {run}; fi"
        # AGENT_EGRESS=relay-only: no network at all (the relay comes as a socket), whatever the Docker
        # daemon's bridge or iptables settings are.
        network = "none" if process.offline else self.settings.network
        try:
            return self.client.containers.create(
                image,
                ["sh", "-c", run, "claude-run", *process.argv],
                name=name,
                labels={
                    **resource_labels(self.owner, ws.task_id, ws.repo, ws.issue_number),
                    LABEL_PROCESS: process.name,
                },
                volumes=volumes,
                working_dir=WORKSPACE_MOUNT,
                user=f"{uid}:{gid}",
                environment=environment,
                mem_limit=self.settings.memory,
                nano_cpus=int(self.settings.cpus * 1e9),
                pids_limit=self.settings.pids_limit,
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                network_mode=network,
                privileged=False,
                # Docker's init (tini) as PID 1: it reaps what the agent's shells orphan, which would
                # otherwise stay zombies under node or the CLI and count against pids_limit until the end.
                init=True,
                log_config=LOG_CONFIG,
            )
        except docker.errors.ImageNotFound:
            if image.startswith(f"{SETUP_IMAGE_REPOSITORY}:"):
                msg = (
                    f"the saved setup image {image} this task's processes start from is gone (removed by "
                    "hand?); a retry of the task runs setup again"
                )
            else:
                msg = f"the agent image {image} is not on this host (images are never pulled for the agent)"
            raise BackendError(msg) from None
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # another thread or process created it just now
                found = self._container(name)
                if found is not None:
                    return found
                msg = f"a container named {name} exists but belongs to another daemon (another STATE_DIR)"
                raise BackendError(msg) from None
            msg = f"creating container {name} from {image} failed: {exc}"
            raise BackendError(msg, retryable=True) from None
        except requests.exceptions.RequestException as exc:
            raise BackendError(unreachable(exc), retryable=True) from None

    def _own(self, workspace: Workspace) -> DockerWorkspace:
        if not isinstance(workspace, DockerWorkspace):
            msg = f"{workspace!r} is not a Docker workspace"
            raise TypeError(msg)
        return workspace

    def _process_container(self, workspace: Workspace, name: str) -> Container:
        container_name = _container_name(workspace.task_id, name)
        container = self._container(container_name)
        if container is None:
            msg = f"container {container_name} of task {workspace.task_id} no longer exists"
            raise WorkspaceLost(msg)
        return container

    def _container(self, name: str) -> Container | None:
        """Our container of that name; None when there is none, or it belongs to another daemon."""
        try:
            found = self.client.containers.get(name)
        except docker.errors.NotFound:
            return None
        except _DOCKER_ERRORS as exc:
            raise BackendError(unreachable(exc), retryable=True) from None
        # Names are global to the Docker daemon: never wait on, adopt or remove another state dir's work.
        return found if found.labels.get(LABEL_OWNER) == self.owner else None

    def _containers(self, labels: dict[str, str] | None = None) -> list[Container]:
        wanted = {LABEL_OWNER: self.owner, **(labels or {})}
        filters = {"label": [f"{k}={v}" for k, v in wanted.items()]}
        try:
            return self.client.containers.list(all=True, filters=filters)
        except _DOCKER_ERRORS as exc:
            raise BackendError(unreachable(exc), retryable=True) from None

    def _docker(self, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except _DOCKER_ERRORS as exc:
            msg = f"the Docker daemon refused a request: {exc}"
            raise BackendError(msg, retryable=True) from None
