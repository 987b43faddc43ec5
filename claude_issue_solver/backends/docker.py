"""The Docker backend: the agent runs in a container over a git worktree on this host.

Layout under ``STATE_DIR``::

    mirrors/<owner>/<name>.git   one bare mirror per repository, fetched before each task
    worktrees/<task_id>/         the task's worktree, mounted read-write at /workspace
    tasks/<task_id>/prompt.md    the prompt (the directory is mounted read-only at /task)

Containers are named ``claude-issue-solver-<task_id>`` and labelled with the task, the repository, the
issue and the owning state directory, so a restarted daemon finds its own containers (and only its own)
without having saved anything. They are not auto-removed: the exit code and the output must survive a
daemon that was down when the agent finished.

This is the only module that imports ``docker``; the CLI imports it only when the Docker backend runs.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import logging
import os
import re
import stat
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests
from docker.models.containers import Container
from filelock import FileLock, Timeout

from claude_issue_solver import gitops
from claude_issue_solver.backends.base import (
    LABEL_ISSUE,
    LABEL_OWNER,
    LABEL_REPO,
    LABEL_TASK,
    AgentExit,
    BackendError,
    Changes,
    LiveRun,
    RunSpec,
    Workspace,
    WorkspaceLost,
    agent_dockerfile,
)
from claude_issue_solver.config import Config
from claude_issue_solver.logs import TaskLog
from claude_issue_solver.queue import Task

__all__ = ["CONTAINER_PREFIX", "DockerBackend", "agent_dockerfile"]

logger = logging.getLogger(__name__)

CONTAINER_PREFIX = "claude-issue-solver-"
AGENT_IMAGE_REPOSITORY = "claude-issue-solver-agent"
BASE_IMAGE_PREFIX = "claude-issue-solver-base-"
WORKSPACE_MOUNT = "/workspace"
TASK_MOUNT = "/task"
PROMPT_FILE = "prompt.md"
BASE_SHA_FILE = "base_sha"  # the commit the work started from, for a daemon that restarts mid-task
# The uid the agent image's user has (Dockerfile.claude); used when the daemon itself runs as root.
AGENT_UID = 1000
WAIT_POLL_SECONDS = 2.0  # how often wait() looks at should_stop() and the deadline
LOG_TAIL_LINES = 30
SUMMARY_LIMIT = 64 * 1024
_LOG_FLUSH_BYTES = 64 * 1024
_BUILD_TAIL_LINES = 40
_TASK_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,200}$")


class DockerBackend:
    """Runs each task's agent in a local Docker container; see the module docstring for the layout."""

    name = "docker"

    def __init__(
        self, config: Config, *, client: docker.DockerClient | None = None, image: str | None = None
    ):
        self.config = config
        # Resolved once: mounts and the worktrees' .git files must agree on one absolute path.
        self.state_dir = config.state_dir.expanduser().resolve()
        self.owner = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:12]
        self._client = client
        self._client_lock = threading.Lock()
        self._image = image
        self._image_lock = threading.Lock()

    # --- the daemon ------------------------------------------------------------------------------------

    @property
    def client(self) -> docker.DockerClient:
        # Created on first use: docker.from_env() already talks to the daemon to pick an API version.
        with self._client_lock:
            if self._client is None:
                try:
                    self._client = docker.from_env()
                except docker.errors.DockerException as exc:
                    raise BackendError(_unreachable(exc), retryable=True) from None
            return self._client

    def check(self) -> None:
        try:
            self.client.ping()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise BackendError(_unreachable(exc), retryable=True) from None

    # --- names and paths -------------------------------------------------------------------------------

    def handle_for(self, task: Task) -> str:
        return _container_name(task.id)

    def mirror_dir(self, repo: str) -> Path:
        owner, _, name = repo.lower().partition("/")
        return self.state_dir / "mirrors" / owner / f"{name}.git"

    def worktree_dir(self, task_id: str) -> Path:
        return self.state_dir / "worktrees" / _checked_id(task_id)

    def task_dir(self, task_id: str) -> Path:
        return self.state_dir / "tasks" / _checked_id(task_id)

    # --- the pipeline's steps --------------------------------------------------------------------------

    def prepare(self, spec: RunSpec, log: TaskLog) -> Workspace:
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
                    log.write(f"reusing worktree {worktree} (prepared before a restart)")
                else:
                    started = time.monotonic()
                    gitops.ensure_mirror(mirror, spec.clone_url, spec.credential())
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
        _write_private(task_dir / PROMPT_FILE, spec.prompt.encode())
        self._hand_over(worktree, task_dir)
        return Workspace(
            task_id=spec.task_id,
            handle=_container_name(spec.task_id),
            branch=spec.branch,
            base_sha=base_sha,
            path=worktree,
            extra={"mirror": str(mirror)},
        )

    def start_agent(self, workspace: Workspace, spec: RunSpec, log: TaskLog) -> None:
        existing = self._container(workspace.handle)
        if existing is not None:
            if existing.status == "created":  # a crash between create and start
                log.write(f"starting container {existing.name}, created before a restart")
                self._docker(existing.start)
            else:
                log.write(
                    f"container {existing.name} already exists ({existing.status}); not starting another"
                )
            return
        image = self.ensure_image(spec, log)
        started = time.monotonic()
        container = self._create_container(workspace, spec, image)
        if container.status == "created":
            self._docker(container.start)
        user = container.attrs.get("Config", {}).get("User", "?")
        log.write(
            f"started container {container.name} from {image} as user {user} "
            f"({time.monotonic() - started:.2f}s)"
        )

    def wait(
        self, workspace: Workspace, *, deadline: float, should_stop: Callable[[], str | None], log: TaskLog
    ) -> AgentExit | None:
        container = self._container(workspace.handle)
        if container is None:
            msg = f"container {workspace.handle} of task {workspace.task_id} no longer exists"
            raise WorkspaceLost(msg)
        if container.status == "created":
            # Waiting on a never-started container returns at once with exit code 0.
            log.write(f"starting container {container.name}, created before a restart")
            self._docker(container.start)

        detached = threading.Event()
        pump = threading.Thread(
            target=_pump_logs, args=(container, log, detached), name=f"logs-{workspace.task_id}", daemon=True
        )
        pump.start()
        exit_code: int | None = None
        timed_out = cancelled = False
        while True:
            poll = max(0.1, min(WAIT_POLL_SECONDS, deadline - time.time()))
            began = time.monotonic()
            try:
                exit_code = container.wait(timeout=poll).get("StatusCode")
                break
            except requests.exceptions.RequestException:
                pass  # the poll timeout (FACTS: it may surface as ConnectionError, not ReadTimeout)
            except docker.errors.NotFound:
                msg = f"container {container.name} of task {workspace.task_id} was removed while running"
                raise WorkspaceLost(msg) from None
            except docker.errors.APIError as exc:
                logger.warning("waiting for container %s: %s", container.name, exc)
            # A daemon that is down fails at once instead of timing out: pace the loop anyway.
            time.sleep(max(0.0, poll - (time.monotonic() - began)))
            stop = should_stop()
            if stop == "detach":
                detached.set()  # the streaming thread ends at the next output; whoever attaches restreams
                log.write(f"detached from container {container.name}; it keeps running")
                return None
            if stop == "cancel":
                log.write(f"cancelled: killing container {container.name}")
                cancelled = True
            elif time.time() >= deadline:
                log.write(f"deadline passed: killing container {container.name}")
                timed_out = True
            if cancelled or timed_out:
                exit_code = _kill(container)
                break

        pump.join(timeout=10)
        stdout = _logs(container, stdout=True, stderr=False)
        tail = _logs(container, stdout=True, stderr=True, tail=LOG_TAIL_LINES)
        log.write(f"container {container.name} exited with code {exit_code}")
        return AgentExit(
            exit_code=exit_code, stdout=stdout, log_tail=tail, timed_out=timed_out, cancelled=cancelled
        )

    def collect(self, workspace: Workspace, log: TaskLog) -> Changes:
        worktree, git_dir, _ = self._located(workspace)
        try:
            files = gitops.status_changes(worktree, git_dir=git_dir)
            summary = _take_summary(worktree)
            stat_text = gitops.diffstat(worktree, workspace.base_sha or "HEAD", git_dir=git_dir)
            ahead = gitops.ahead_of_remote(worktree, git_dir=git_dir)
        except gitops.GitError as exc:
            msg = f"reading the changes of task {workspace.task_id} in {worktree} failed: {exc}"
            raise BackendError(msg) from None
        log.write(
            f"{len(files)} changed file(s); summary {'found' if summary is not None else 'absent'}"
            + ("; unpushed commits" if ahead else "")
        )
        return Changes(
            changed=bool(files) or ahead,
            files=tuple(files),
            diffstat=stat_text,
            summary=summary,
            ahead=ahead,
        )

    def push(
        self, workspace: Workspace, spec: RunSpec, message: str, author: tuple[str, str], log: TaskLog
    ) -> str:
        worktree, git_dir, mirror = self._located(workspace)
        name, email = author
        try:
            # Under the mirror lock: a fetch of another task may be rewriting the same refs.
            with self._mirror_locked(mirror):
                if gitops.status_changes(worktree, git_dir=git_dir):
                    sha = gitops.commit_all(worktree, message, name, email, git_dir=git_dir)
                    log.write(f"committed {sha[:12]} as {name} <{email}>")
                sha = gitops.push(worktree, spec.branch, spec.credential(), git_dir=git_dir)
        except gitops.GitError as exc:
            msg = f"publishing task {workspace.task_id} to {spec.repo} {spec.branch} failed: {exc}"
            raise BackendError(msg, retryable=exc.retryable) from None
        log.write(f"pushed {sha[:12]} to {spec.repo} {spec.branch}")
        return sha

    def cleanup(self, workspace: Workspace | None, task: Task, log: TaskLog) -> None:
        names = {self.handle_for(task)} | ({workspace.handle} if workspace else set())
        try:
            containers = {c.id: c for c in self._containers({LABEL_TASK: task.id})}
            for name in names:
                found = self._container(name)
                if found is not None:
                    containers[found.id] = found
            for container in containers.values():
                container.remove(force=True)
                log.write(f"removed container {container.name}")
        except Exception as exc:  # never raises: cleanup runs in finally blocks and on shutdown
            log.write(f"could not remove the container of task {task.id}: {exc}")
        try:
            worktree = self.worktree_dir(task.id)
            mirror = self.mirror_dir(task.repo)
            if worktree.exists() or gitops.worktree_git_dir(mirror, worktree) is not None:
                with self._mirror_locked(mirror):
                    gitops.remove_worktree(mirror, worktree)
                log.write(f"removed worktree {worktree}")
        except Exception as exc:
            log.write(f"could not remove the worktree of task {task.id}: {exc}")
        try:
            task_dir = self.task_dir(task.id)
            if task_dir.exists():
                gitops.force_rmtree(task_dir)
                log.write(f"removed {task_dir}")
        except Exception as exc:
            log.write(f"could not remove the task directory of task {task.id}: {exc}")

    def attach(self, task: Task) -> Workspace | None:
        mirror = self.mirror_dir(task.repo)
        worktree = self.worktree_dir(task.id)
        git_dir = gitops.worktree_git_dir(mirror, worktree) if worktree.is_dir() else None
        if git_dir is None:
            return None
        try:
            containers = self._containers({LABEL_TASK: task.id})
        except BackendError:
            containers = []  # the name is deterministic; wait() reports an unreachable daemon itself
        branch = gitops.current_branch(worktree, git_dir=git_dir) or task.branch or ""
        return Workspace(
            task_id=task.id,
            handle=containers[0].name if containers else self.handle_for(task),
            branch=branch,
            base_sha=_read_text(self.task_dir(task.id) / BASE_SHA_FILE),
            path=worktree,
            extra={"mirror": str(mirror)},
        )

    def live_runs(self) -> list[LiveRun]:
        runs: dict[str, LiveRun] = {}
        for container in self._containers():
            task_id = container.labels.get(LABEL_TASK, "")
            runs[task_id] = LiveRun(task_id, container.name, container.status == "running")
        for path in _subdirs(self.state_dir / "worktrees"):
            if path.name not in runs:
                runs[path.name] = LiveRun(path.name, _container_name(path.name), False)
        return list(runs.values())

    def remove_orphans(self, live_task_ids: set[str]) -> list[str]:
        removed: list[str] = []
        for container in self._containers():
            if container.labels.get(LABEL_TASK) not in live_task_ids:
                try:
                    container.remove(force=True)
                    removed.append(f"container {container.name}")
                except docker.errors.DockerException as exc:
                    logger.warning("could not remove orphan container %s: %s", container.name, exc)
        mirrors = list(self._mirrors())
        for path in _subdirs(self.state_dir / "worktrees"):
            if path.name in live_task_ids:
                continue
            try:
                owning = next((m for m in mirrors if gitops.worktree_git_dir(m, path) is not None), None)
                if owning is None:
                    gitops.force_rmtree(path)
                else:
                    with self._mirror_locked(owning):
                        gitops.remove_worktree(owning, path)
                removed.append(f"worktree {path}")
            except (OSError, BackendError) as exc:
                logger.warning("could not remove orphan worktree %s: %s", path, exc)
        for path in _subdirs(self.state_dir / "tasks"):
            if path.name not in live_task_ids:
                try:
                    gitops.force_rmtree(path)
                    removed.append(f"task directory {path}")
                except OSError as exc:
                    logger.warning("could not remove orphan task directory %s: %s", path, exc)
        for mirror in mirrors:
            try:
                with self._mirror_locked(mirror):
                    gitops.run_git(["worktree", "prune"], cwd=mirror)
            except BackendError as exc:
                logger.warning("could not prune the worktrees of %s: %s", mirror, exc)
        return removed

    # --- the agent image -------------------------------------------------------------------------------

    def ensure_image(self, spec: RunSpec, log: TaskLog | None = None) -> str:
        """The agent image: the configured one, else ``Dockerfile.claude`` built on the right base.

        The base is the repository's own image when its default branch has a ``Dockerfile`` at the root,
        else ``DOCKER_BASE_IMAGE``. Built images are tagged by a hash of their inputs and reused.
        """
        configured = self._image or self.config.docker_image
        if configured:
            return configured
        dockerfile_path = agent_dockerfile()
        try:
            dockerfile_path.read_bytes()
        except OSError as exc:
            msg = f"cannot read {dockerfile_path} to build the agent image ({exc}); set DOCKER_IMAGE instead"
            raise BackendError(msg) from None
        # One build at a time per state dir: two tasks starting together must not build the same image.
        (self.state_dir / "locks").mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.state_dir / "locks" / "image.lock"), timeout=3600)
        with self._image_lock, lock:
            return self.build_agent_image(self._base_image(spec, log), log)

    def agent_image_tag(self, base: str, *, pull: bool = False) -> str | None:
        """The tag ``Dockerfile.claude`` built on ``base`` gets: a hash of the file and the base's id.

        None when the base is not on this host (and ``pull`` is False).
        """
        base_id = self._local_image_id(base, pull=pull)
        if base_id is None:
            return None
        digest = hashlib.sha256(agent_dockerfile().read_bytes() + b"\0" + base_id.encode()).hexdigest()[:12]
        return f"{AGENT_IMAGE_REPOSITORY}:{digest}"

    def build_agent_image(self, base: str, log: TaskLog | None = None) -> str:
        """``Dockerfile.claude`` on ``base``, built unless an image with the same inputs exists."""
        tag = self.agent_image_tag(base, pull=True)
        assert tag is not None  # pull=True raises rather than returning None
        if self.image_present(tag):
            return tag
        _note(log, f"building the agent image {tag} from Dockerfile.claude on {base}")
        dockerfile = agent_dockerfile().read_bytes()
        self._build(_single_file_tar("Dockerfile.claude", dockerfile), "Dockerfile.claude", tag, base)
        _note(log, f"built {tag}")
        return tag

    def image_present(self, ref: str) -> bool:
        return self._local_image_id(ref) is not None

    def _base_image(self, spec: RunSpec, log: TaskLog | None) -> str:
        mirror = self.mirror_dir(spec.repo)
        ref = f"refs/remotes/origin/{spec.default_branch}"
        probe = gitops.run_git(["cat-file", "-e", f"{ref}:Dockerfile"], cwd=mirror, check=False)
        if probe.returncode != 0:
            return self.config.docker_base_image
        tree = gitops.run_git(["rev-parse", f"{ref}^{{tree}}"], cwd=mirror).stdout.strip()
        owner, _, name = spec.repo.lower().partition("/")
        tag = f"{BASE_IMAGE_PREFIX}{_slug(owner)}-{_slug(name)}:{tree[:12]}"
        if self._local_image_id(tag) is not None:
            return tag
        _note(log, f"building the base image {tag} from the Dockerfile of {spec.repo} {spec.default_branch}")
        with tempfile.TemporaryDirectory(prefix="cis-archive-") as tmp:
            archive = Path(tmp) / "context.tar"
            gitops.run_git(["archive", "--format=tar", f"--output={archive}", ref], cwd=mirror)
            self._build(archive.read_bytes(), "Dockerfile", tag, None)
        return tag

    def _build(self, context: bytes, dockerfile: str, tag: str, base: str | None) -> None:
        try:
            self.client.images.build(
                fileobj=io.BytesIO(context),
                custom_context=True,
                dockerfile=dockerfile,
                buildargs={"BASE_IMAGE": base} if base else None,
                tag=tag,
                network_mode="host",
                rm=True,
                forcerm=True,
            )
        except docker.errors.BuildError as exc:
            tail = _build_tail(exc.build_log)
            msg = f"building {tag} from {dockerfile}" + (f" on {base}" if base else "")
            raise BackendError(f"{msg} failed: {exc.msg}\n{tail}") from None
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            msg = f"building {tag} from {dockerfile} failed: {exc}"
            raise BackendError(msg, retryable=True) from None

    def _local_image_id(self, ref: str, *, pull: bool = False) -> str | None:
        try:
            return self.client.images.get(ref).id
        except docker.errors.ImageNotFound:
            if not pull:
                return None
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise BackendError(_unreachable(exc), retryable=True) from None
        try:
            return self.client.images.pull(ref).id
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            msg = f"the base image {ref} is not on this host and pulling it failed: {exc}"
            raise BackendError(msg, retryable=True) from None

    # --- helpers ---------------------------------------------------------------------------------------

    def _create_container(self, workspace: Workspace, spec: RunSpec, image: str) -> Container:
        worktree, _, mirror = self._located(workspace)
        task_dir = self.task_dir(workspace.task_id)
        if not (task_dir / PROMPT_FILE).is_file():
            # Docker would create a missing mount source as an empty root-owned directory.
            msg = f"{task_dir / PROMPT_FILE} is missing: prepare() must run before start_agent()"
            raise BackendError(msg)
        uid, gid = agent_ids()
        environment = dict(spec.agent_env)
        if uid != AGENT_UID:
            # A uid the image does not know gets HOME=/, where the CLI cannot keep its config.
            environment.setdefault("HOME", "/tmp")
        try:
            return self.client.containers.create(
                image,
                ["sh", "-c", 'exec "$@" < /task/prompt.md', "claude-run", *spec.command],
                name=workspace.handle,
                labels={
                    LABEL_TASK: workspace.task_id,
                    LABEL_REPO: spec.repo,
                    LABEL_ISSUE: str(spec.issue_number),
                    LABEL_OWNER: self.owner,
                },
                volumes={
                    str(worktree): {"bind": WORKSPACE_MOUNT, "mode": "rw"},
                    str(task_dir): {"bind": TASK_MOUNT, "mode": "ro"},
                    # The worktree's .git file names this host path; git inside needs it to exist.
                    str(mirror): {"bind": str(mirror), "mode": "ro"},
                },
                working_dir=WORKSPACE_MOUNT,
                user=f"{uid}:{gid}",
                environment=environment,
                mem_limit=self.config.docker_memory,
                nano_cpus=int(self.config.docker_cpus * 1e9),
                pids_limit=self.config.docker_pids_limit,
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                network_mode=self.config.docker_network,
                privileged=False,
            )
        except docker.errors.ImageNotFound:
            msg = f"the agent image {image} is not on this host (images are never pulled for the agent)"
            raise BackendError(msg) from None
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # another thread or process created it just now
                found = self._container(workspace.handle)
                if found is not None:
                    return found
            msg = f"creating container {workspace.handle} from {image} failed: {exc}"
            raise BackendError(msg, retryable=True) from None
        except requests.exceptions.RequestException as exc:
            raise BackendError(_unreachable(exc), retryable=True) from None

    def _container(self, name: str) -> Container | None:
        try:
            return self.client.containers.get(name)
        except docker.errors.NotFound:
            return None
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise BackendError(_unreachable(exc), retryable=True) from None

    def _containers(self, labels: dict[str, str] | None = None) -> list[Container]:
        wanted = {LABEL_OWNER: self.owner, **(labels or {})}
        filters = {"label": [f"{k}={v}" for k, v in wanted.items()]}
        try:
            return self.client.containers.list(all=True, filters=filters)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise BackendError(_unreachable(exc), retryable=True) from None

    def _docker(self, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            msg = f"the Docker daemon refused a request: {exc}"
            raise BackendError(msg, retryable=True) from None

    def _located(self, workspace: Workspace) -> tuple[Path, Path, Path]:
        """The worktree, its git directory (as the mirror records it) and the mirror of a workspace."""
        worktree = workspace.path or self.worktree_dir(workspace.task_id)
        known = workspace.extra.get("mirror")
        # A Workspace built without our extra: the mirror that registered the worktree is the one.
        for mirror in [Path(known)] if known else self._mirrors():
            git_dir = gitops.worktree_git_dir(mirror, worktree)
            if git_dir is not None and worktree.is_dir():
                return worktree, git_dir, mirror
        msg = f"the worktree {worktree} of task {workspace.task_id} is gone (no mirror lists it)"
        raise WorkspaceLost(msg)

    def _mirrors(self) -> Iterator[Path]:
        for owner in _subdirs(self.state_dir / "mirrors"):
            yield from (p for p in _subdirs(owner) if p.name.endswith(".git"))

    @contextmanager
    def _mirror_locked(self, mirror: Path) -> Iterator[None]:
        lock = gitops.mirror_lock(mirror)
        try:
            lock.acquire()
        except Timeout:
            msg = f"another task held the lock of {mirror} for more than {lock.timeout:.0f}s"
            raise BackendError(msg, retryable=True) from None
        try:
            yield
        finally:
            lock.release()

    def _hand_over(self, worktree: Path, task_dir: Path) -> None:
        """Make the worktree writable (and the prompt readable) for the agent's uid.

        Only needed as root: otherwise the agent runs as the daemon's own uid, which owns everything.
        Links are changed, never followed: the tree may hold symlinks a previous run of the agent made.
        """
        if os.getuid() != 0:
            return
        uid, gid = agent_ids()
        for root, dirs, files in os.walk(worktree):
            os.chown(root, uid, gid, follow_symlinks=False)
            for entry in (*dirs, *files):
                os.chown(os.path.join(root, entry), uid, gid, follow_symlinks=False)
        for path in (task_dir, task_dir / PROMPT_FILE):
            os.chown(path, uid, gid, follow_symlinks=False)


# --- module helpers ----------------------------------------------------------------------------------------


def _container_name(task_id: str) -> str:
    return f"{CONTAINER_PREFIX}{_checked_id(task_id)}"


def _checked_id(task_id: str) -> str:
    # Task ids become path components and container names: nothing that could climb out of a directory.
    if not _TASK_ID_RE.match(task_id) or ".." in task_id:
        msg = f"task id {task_id!r} is not usable as a directory or container name"
        raise BackendError(msg)
    return task_id


def agent_ids() -> tuple[int, int]:
    """The uid:gid the container runs as: the daemon's own, or the image's user when the daemon is root."""
    uid = os.getuid()
    return (AGENT_UID, AGENT_UID) if uid == 0 else (uid, os.getgid())


def _unreachable(exc: Exception) -> str:
    return (
        f"cannot reach the Docker daemon: {exc}; is Docker running and may this user use it "
        "(member of the docker group, or DOCKER_HOST set)?"
    )


def _pump_logs(container: Container, log: TaskLog, detached: threading.Event) -> None:
    """Copy the container's output into the task log until it exits, in whole lines where possible.

    Whole lines because the log's redaction works per write: a token split across two chunks would
    slip through.
    """
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    pending = ""
    try:
        for chunk in container.logs(stream=True, follow=True, stdout=True, stderr=True):
            if detached.is_set():
                return
            pending += decoder.decode(chunk)
            cut = pending.rfind("\n") + 1
            if cut == 0 and len(pending) > _LOG_FLUSH_BYTES:
                cut = len(pending)
            if cut:
                log.write_raw(pending[:cut])
                pending = pending[cut:]
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        log.write(f"the output stream of {container.name} broke off: {exc}")
    pending += decoder.decode(b"", final=True)
    if pending:
        log.write_raw(pending + "\n")


def _kill(container: Container) -> int | None:
    try:
        container.kill()
    except docker.errors.APIError:
        pass  # it exited on its own in the meantime
    except requests.exceptions.RequestException:
        return None
    try:
        return container.wait(timeout=30).get("StatusCode")
    except (docker.errors.DockerException, requests.exceptions.RequestException):
        return None


def _logs(container: Container, **kwargs: Any) -> str:
    try:
        data = container.logs(**kwargs)
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        return f"(the output of {container.name} is unavailable: {exc})"
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)


def _take_summary(worktree: Path) -> str | None:
    """Read and delete the agent's summary file; a link or anything but a plain file is only deleted.

    Never following a link matters: the agent could point it at a host file to have it quoted in the PR.
    """
    path = worktree / gitops.SUMMARY_FILE
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    text = None
    if stat.S_ISREG(info.st_mode):
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as handle:
            text = handle.read(SUMMARY_LIMIT).decode("utf-8", "replace")
    if stat.S_ISDIR(info.st_mode):
        gitops.force_rmtree(path)
    else:
        path.unlink()
    return text


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def _subdirs(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.is_symlink())
    except FileNotFoundError:
        return []


def _slug(text: str) -> str:
    # Image repository names allow lowercase alphanumerics with single separators only.
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "repo"


def _single_file_tar(name: str, data: bytes) -> bytes:
    # Only the Dockerfile travels: it copies nothing, and the daemon need not see any checkout.
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _build_tail(build_log: Iterable[dict[str, Any]]) -> str:
    lines: list[str] = []
    for chunk in build_log:
        text = chunk.get("stream") or chunk.get("error") or ""
        lines.extend(line for line in str(text).splitlines() if line.strip())
    return "\n".join(lines[-_BUILD_TAIL_LINES:]) or "(no build output)"


def _note(log: TaskLog | None, message: str) -> None:
    logger.info("%s", message)
    if log is not None:
        log.write(message)
