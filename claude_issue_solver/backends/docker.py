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

This is the only module that imports ``docker``; the daemon imports it only when the Docker backend runs.
Mechanics only: when to stop, what to take and what to publish is :mod:`claude_issue_solver.run.policy`.
"""

from __future__ import annotations

import calendar
import codecs
import logging
import os
import shlex
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests
from docker.models.containers import Container
from filelock import Timeout

from claude_issue_solver.backends import git as gitops
from claude_issue_solver.backends import kept as kept_mechanics
from claude_issue_solver.backends.base import (
    LABEL_OWNER,
    LABEL_PROCESS,
    LABEL_TASK,
    NAME_PREFIX,
    BackendError,
    Changes,
    OutputBounds,
    OutputKeeper,
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
    agent_dockerfile,
    checked_id,
    checked_process,
    owner_of,
    resource_labels,
)
from claude_issue_solver.backends.docker_images import AgentImages, unreachable
from claude_issue_solver.backends.docker_setup_cache import (
    SETUP_IMAGE_REPOSITORY,
    TREE_DIR,
    SetupImages,
    image_id,
    setup_labels,
    untracked_paths,
)
from claude_issue_solver.backends.settings import DockerSettings
from claude_issue_solver.logs import TaskLog
from claude_issue_solver.relay import CONTAINER_DIR, FORWARDER_PORT, forwarded_command
from claude_issue_solver.store.queue import Task

__all__ = ["CONTAINER_PREFIX", "DockerBackend", "DockerWorkspace", "agent_dockerfile"]

logger = logging.getLogger(__name__)

CONTAINER_PREFIX = NAME_PREFIX
AGENT_PROCESS = "agent"  # its container carries the workspace's handle: the name operators know
WORKSPACE_MOUNT = "/workspace"
TASK_MOUNT = "/task"
KEPT_MOUNT = "/kept"
RELAY_MOUNT = CONTAINER_DIR  # the task's relay directory: its socket and the forwarder
BASE_SHA_FILE = "base_sha"  # the commit the work started from, for a daemon that restarts mid-task
DEFAULT_BRANCH_FILE = "default_branch"  # which branch's Dockerfile the image is built on, after a restart
FROM_DEFAULT_FILE = "from_default"  # "1" when the worktree started at the default branch's head
SETUP_IMAGE_FILE = "setup_image"  # the saved setup this task's later processes start from (a restart too)
RESTORE_PROCESS = "setup-restore"  # the container that puts a saved setup's files into the tree
RESTORE_TIMEOUT = 600.0  # seconds for copying a saved setup's files into the worktree
# The uid the agent image's user has (Dockerfile.claude); used when the daemon itself runs as root.
AGENT_UID = 1000
POLL_SECONDS = 1.0  # an inspect of a local container is cheap
_LOG_FLUSH_BYTES = 64 * 1024
# The log driver of our containers, capped: Docker's disk holds at most ~30 MB of a container's output
# (the oldest goes first), and reading it back once the process ended reads no more than that. The task
# log already got everything, streamed while the process ran (_LogPump).
LOG_CONFIG = {"type": "json-file", "config": {"max-size": "10m", "max-file": "3"}}
# What an error message quotes of a failed copy's output.
_ERROR_BOUNDS = OutputBounds(head=0, tail=4096)
_DOCKER_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)


@dataclass(frozen=True)
class DockerWorkspace(Workspace):
    """A task's worktree on this host, and the mirror that registered it."""

    default_branch: str
    worktree: Path
    mirror: Path


class DockerBackend:
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

    # --- files -----------------------------------------------------------------------------------------

    def read_file(self, workspace: Workspace, path: str, limit: int) -> bytes | None:
        target = self._inside(workspace, path)
        try:
            info = os.lstat(target)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISREG(info.st_mode):
            return None
        # O_NOFOLLOW: the agent could swap in a link to a host file between the lstat and the open.
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as handle:
            return handle.read(limit)

    def write_file(self, workspace: Workspace, path: str, data: bytes) -> None:
        target = self._inside(workspace, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        self.delete_file(workspace, path)  # a link there is replaced, never written through
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        self._hand_over_file(target)

    def delete_file(self, workspace: Workspace, path: str) -> None:
        target = self._inside(workspace, path)
        try:
            info = os.lstat(target)
        except (FileNotFoundError, NotADirectoryError):
            return
        if stat.S_ISDIR(info.st_mode):
            gitops.force_rmtree(target)
        else:
            target.unlink()

    # --- git -------------------------------------------------------------------------------------------

    def changes(self, workspace: Workspace, exclude: tuple[str, ...]) -> Changes:
        ws, git_dir = self._located(workspace)
        try:
            fence = gitops.find_fence(ws.worktree, git_dir=git_dir)
            files = gitops.status_changes(ws.worktree, git_dir=git_dir, exclude=exclude, fence=fence)
            stat_text = gitops.diffstat(
                ws.worktree, ws.base_sha or "HEAD", git_dir=git_dir, exclude=exclude, fence=fence
            )
            ahead = gitops.ahead_of_remote(ws.worktree, git_dir=git_dir)
        except gitops.GitError as exc:
            msg = f"reading the changes of task {ws.task_id} in {ws.worktree} failed: {exc}"
            raise BackendError(msg) from None
        left_out = tuple(f"{e.path}/ ({e.why})" for e in fence.left_out if e.path not in exclude)
        return Changes(files=tuple(files), diffstat=stat_text, ahead=ahead, left_out=left_out)

    def untracked(
        self, workspace: Workspace, glob: str | None = None, *, ignored: bool = True
    ) -> tuple[str, ...]:
        ws, git_dir = self._located(workspace)
        try:
            return tuple(gitops.untracked(ws.worktree, git_dir=git_dir, glob=glob, ignored=ignored))
        except gitops.GitError as exc:
            msg = f"listing the untracked files of task {ws.task_id} in {ws.worktree} failed: {exc}"
            raise BackendError(msg) from None

    def commit_and_push(self, workspace: Workspace, request: PushRequest, log: TaskLog) -> Pushed:
        ws, git_dir = self._located(workspace)
        name, email = request.author
        committed = False
        try:
            # Under the mirror lock: a fetch of another task may be rewriting the same refs. The push
            # goes to the mirror's origin, which the agent cannot change (the mirror is mounted read-only).
            with self._mirror_locked(ws.mirror):
                fence = gitops.find_fence(ws.worktree, git_dir=git_dir)
                if gitops.status_changes(ws.worktree, git_dir=git_dir, exclude=request.exclude, fence=fence):
                    gitops.commit_all(
                        ws.worktree,
                        request.message,
                        name,
                        email,
                        git_dir=git_dir,
                        exclude=request.exclude,
                        fence=fence,
                    )
                    committed = True
                sha = gitops.push(ws.worktree, request.branch, request.credential, git_dir=git_dir)
        except gitops.GitPushRejected as exc:
            raise PushRejected(str(exc), moved=exc.moved) from None
        except gitops.GitError as exc:
            msg = f"publishing task {ws.task_id} to {ws.repo} {request.branch} failed: {exc}"
            raise BackendError(msg, retryable=exc.retryable) from None
        return Pushed(sha, committed)

    def rebase_onto_remote(self, workspace: Workspace, request: PushRequest, log: TaskLog) -> Rebased:
        # Object-level in the mirror (merge-tree + commit-tree), then one reset through the mirror's git
        # directory: no `git rebase` in a worktree whose hooks, config and .git the agent wrote.
        ws, git_dir = self._located(workspace)
        task_dir = self.task_dir(ws.task_id)
        branch = request.branch
        try:
            with self._mirror_locked(ws.mirror):
                head = gitops.rev_parse(ws.worktree, "HEAD", git_dir=git_dir)
                base = _read_text(task_dir / BASE_SHA_FILE) or ws.base_sha
                if head is None or base is None:
                    msg = f"the worktree {ws.worktree} has no HEAD or no recorded base to replay from"
                    raise BackendError(msg)
                onto = gitops.fetch_branch(ws.mirror, branch, request.credential)
                moved = gitops.replay_onto(ws.mirror, base, head, onto)
                gitops.reset_worktree(ws.worktree, moved.head, git_dir=git_dir)
                # The reset above is the commit point: a crash before it leaves the old HEAD (a second
                # publish replays again), after it the replayed commits (base or onto excludes theirs).
                _write_private(task_dir / BASE_SHA_FILE, onto.encode())
        except gitops.GitConflict as exc:
            msg = f"the commits of task {ws.task_id} conflict with {branch} on {ws.repo}: {exc}"
            raise RebaseConflict(msg, exc.paths) from None
        except gitops.GitError as exc:
            msg = f"putting the commits of task {ws.task_id} on top of {ws.repo} {branch} failed: {exc}"
            raise BackendError(msg, retryable=exc.retryable) from None
        authors = tuple(dict.fromkeys(name for _sha, name in moved.new_commits))
        log.write(
            f"{branch} on {ws.repo} moved to {onto[:12]} ({len(moved.new_commits)} new commit(s)); "
            f"replayed {moved.replayed} commit(s) on top: {moved.head[:12]}"
        )
        return Rebased(moved.head, onto, len(moved.new_commits), authors, moved.replayed)

    # --- the setup cache (see docker_setup_cache) ----------------------------------------------------

    def save_setup(self, workspace: Workspace, process: str, key: str, log: TaskLog) -> str | None:
        ws, git_dir = self._located(workspace)
        agent_image = self.ensure_image(ws.repo, ws.default_branch, log)
        agent_id = image_id(self.client, agent_image)
        tag = self.setups.tag_for(key, agent_id)
        image = self.setups.find(tag)
        if image is None:
            container = self._process_container(ws, process)
            if container.status not in ("exited", "dead"):
                msg = f"container {container.name} has not ended; only an ended setup is saved"
                raise BackendError(msg)
            started = time.monotonic()
            try:
                paths = untracked_paths(ws.worktree, git_dir)
            except gitops.GitError as exc:
                msg = f"listing what setup wrote into {ws.worktree} failed: {exc}"
                raise BackendError(msg) from None
            labels = setup_labels(
                repo=ws.repo, task_id=ws.task_id, key=key, agent_image_id=agent_id, owner=self.owner
            )
            image = self.setups.save(
                container, tag, worktree=ws.worktree, paths=paths, owner_ids=agent_ids(), labels=labels
            )
            log.write(
                f"saved the setup as {tag} ({len(paths)} untracked path(s) of the tree in it, "
                f"{time.monotonic() - started:.1f}s)"
            )
        else:
            log.write(f"the setup is saved already as {tag}")
        # From now on this task's processes start from the setup image: what setup put in HOME is there.
        _write_private(self.task_dir(ws.task_id) / SETUP_IMAGE_FILE, tag.encode())
        protected = {
            t for t in (_read_text(d / SETUP_IMAGE_FILE) for d in _subdirs(self.state_dir / "tasks")) if t
        }
        for removed in self.setups.prune(ws.repo, image, protected):
            log.write(f"removed the older setup image {removed} of {ws.repo}")
        return tag

    def restore_setup(self, workspace: Workspace, key: str, log: TaskLog) -> str | None:
        ws = self._own(workspace)
        agent_id = image_id(self.client, self.ensure_image(ws.repo, ws.default_branch, log))
        tag = self.setups.tag_for(key, agent_id)
        if self.setups.find(tag) is None:
            return None
        setup_file = self.task_dir(ws.task_id) / SETUP_IMAGE_FILE
        _write_private(setup_file, tag.encode())  # before the copy starts: a restart finds both
        # The files setup wrote into the tree, copied by the agent's user inside a container.
        copy = ProcessSpec(
            name=RESTORE_PROCESS, argv=("cp", "-a", f"{TREE_DIR}/.", f"{WORKSPACE_MOUNT}/"), env={}
        )
        self.start_process(ws, copy, log)
        container = self._process_container(ws, RESTORE_PROCESS)
        try:
            code = container.wait(timeout=RESTORE_TIMEOUT).get("StatusCode")
        except _DOCKER_ERRORS as exc:
            setup_file.unlink(missing_ok=True)
            msg = f"copying the saved setup {tag} into the tree failed: {exc}"
            raise BackendError(msg, retryable=True) from None
        if code != 0:
            setup_file.unlink(missing_ok=True)
            tail = _logs(container, _ERROR_BOUNDS, stdout=True, stderr=True).text().strip()[-500:]
            msg = f"copying the saved setup {tag} into the tree exited {code}: {tail}"
            raise BackendError(msg)
        return tag

    def _image_for(self, ws: DockerWorkspace, log: TaskLog) -> str:
        """The image a process of this workspace starts from: its saved setup, else the agent image."""
        return _read_text(self.task_dir(ws.task_id) / SETUP_IMAGE_FILE) or self.ensure_image(
            ws.repo, ws.default_branch, log
        )

    # --- the agent image (see docker_images) --------------------------------------------------------

    def ensure_image(self, repo: str, default_branch: str, log: TaskLog | None = None) -> str:
        return self.images.ensure(self.mirror_dir(repo), repo, default_branch, log)

    def agent_image_tag(self, base: str, *, pull: bool = False) -> str | None:
        return self.images.agent_image_tag(base, pull=pull)

    def build_agent_image(self, base: str, log: TaskLog | None = None) -> str:
        return self.images.build_agent_image(base, log)

    def image_present(self, ref: str) -> bool:
        return self.images.present(ref)

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

    def _located(self, workspace: Workspace) -> tuple[DockerWorkspace, Path]:
        """The workspace and its worktree's git directory, as the mirror (not the worktree) records it."""
        ws = self._own(workspace)
        git_dir = gitops.worktree_git_dir(ws.mirror, ws.worktree) if ws.worktree.is_dir() else None
        if git_dir is None:
            msg = f"the worktree {ws.worktree} of task {ws.task_id} is gone (its mirror does not list it)"
            raise WorkspaceLost(msg)
        return ws, git_dir

    def _inside(self, workspace: Workspace, path: str) -> Path:
        """``path`` in the worktree; no part of it may climb out or be a link (the agent made the tree)."""
        root = self._own(workspace).worktree
        parts = Path(path).parts
        if not parts or Path(path).is_absolute() or any(p in ("..", ".") for p in parts):
            msg = f"{path!r} is not a path inside the worktree"
            raise BackendError(msg)
        current = root
        for part in parts[:-1]:
            current = current / part
            if current.is_symlink():
                msg = f"{path!r} in {root} passes through a link"
                raise BackendError(msg)
        return root.joinpath(*parts)

    def _owning_mirror(self, worktree: Path) -> Path | None:
        return next((m for m in self._mirrors() if gitops.worktree_git_dir(m, worktree) is not None), None)

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
        """Make the worktree writable (and the task directory readable) for the agent's uid.

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
        os.chown(task_dir, uid, gid, follow_symlinks=False)

    def _hand_over_file(self, path: Path) -> None:
        if os.getuid() == 0:
            uid, gid = agent_ids()
            os.chown(path, uid, gid, follow_symlinks=False)


# --- module helpers ----------------------------------------------------------------------------------------


def _container_name(task_id: str, process: str) -> str:
    base = f"{CONTAINER_PREFIX}{checked_id(task_id)}"
    return base if process == AGENT_PROCESS else f"{base}-{checked_process(process)}"


def agent_ids() -> tuple[int, int]:
    """The uid:gid the container runs as: the daemon's own, or the image's user when the daemon is root."""
    uid = os.getuid()
    return (AGENT_UID, AGENT_UID) if uid == 0 else (uid, os.getgid())


class _LogPump:
    """Copies a container's output into the task log until it exits, in whole lines where possible.

    Whole lines because the log's redaction works per write: a token split across two chunks would
    slip through. Nothing accumulates: a line longer than ``_LOG_FLUSH_BYTES`` is written in pieces.

    The log driver is capped (``LOG_CONFIG``), and a follower that falls behind a rotation loses its
    place: Docker (20.10) then ends the followed stream when the container exits, before the end of the
    output. So the pump reads with timestamps and, once the stream ended, reads what the log still
    holds after the last entry it copied -- the end of the output, a test run's verdict, always arrives.
    """

    def __init__(self, container: Container | None, log: TaskLog) -> None:
        self.container = container
        self.log = log
        self.detached = threading.Event()
        self.thread = threading.Thread(
            target=self._pump, name=f"logs-{container.name if container else '-'}", daemon=True
        )
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._pending = ""
        self._last: tuple[str, int] | None = None  # the timestamp of the last entry copied

    def start(self) -> None:
        self.thread.start()

    def close(self, *, finished: bool) -> None:
        if not finished:
            self.detached.set()  # the thread ends at the next output; whoever attaches restreams
        elif self.thread.is_alive():
            self.thread.join(timeout=30)

    def _pump(self) -> None:
        assert self.container is not None
        try:
            frames = self.container.logs(stream=True, follow=True, stdout=True, stderr=True, timestamps=True)
            for frame in frames:
                if self.detached.is_set():
                    return
                stamp, data = _stamped(frame)
                self._last = stamp or self._last
                self._copy(data)
            if not self.detached.is_set() and self._last is not None:
                self._catch_up(self._last)
        except _DOCKER_ERRORS as exc:
            self.log.write(f"the output stream of {self.container.name} broke off: {exc}")
        pending = self._pending + self._decoder.decode(b"", final=True)
        if pending:
            self.log.write_raw(pending + "\n")

    def _catch_up(self, last: tuple[str, int]) -> None:
        """Copy what the log holds after ``last`` (nothing, unless the followed stream ended early)."""
        assert self.container is not None
        caught = 0
        # `since` is a float of seconds: start a little early, and skip what was copied already.
        stream = self.container.logs(
            stream=True, follow=False, stdout=True, stderr=True, timestamps=True, since=_epoch(last) - 1e-3
        )
        try:
            for frame in stream:
                stamp, data = _stamped(frame)
                if stamp is not None and stamp <= last:
                    continue
                if not caught:
                    self._copy(b"", final=True)
                    self.log.write(
                        f"(the live copy of {self.container.name}'s output fell behind Docker's capped log; "
                        "what follows is what the log still held: output before it may be missing)"
                    )
                caught += len(data)
                self._copy(data)
        finally:
            stream.close()

    def _copy(self, data: bytes, *, final: bool = False) -> None:
        pending = self._pending + self._decoder.decode(data)
        cut = pending.rfind("\n") + 1
        if final or (cut == 0 and len(pending) > _LOG_FLUSH_BYTES):
            cut = len(pending)
        if cut:
            self.log.write_raw(pending[:cut])
            pending = pending[cut:]
        self._pending = pending


def _stamped(frame: bytes) -> tuple[tuple[str, int] | None, bytes]:
    """A log entry read with ``timestamps=True``: its time (seconds as text, nanoseconds) and its data.

    docker-py yields one frame per entry; the time is RFC 3339 with up to nine fractional digits.
    """
    stamp, space, data = frame.partition(b" ")
    text = stamp.decode("ascii", "replace")
    if not space or len(text) < 20 or text[10] != "T" or not text.endswith("Z"):
        return None, frame
    seconds, _, fraction = text[:-1].partition(".")
    if not fraction.isdigit() and fraction:
        return None, frame
    return (seconds, int((fraction or "0").ljust(9, "0")[:9])), data


def _epoch(stamp: tuple[str, int]) -> float:
    seconds, nanos = stamp
    return calendar.timegm(time.strptime(seconds, "%Y-%m-%dT%H:%M:%S")) + nanos / 1e9


def _logs(container: Container, bounds: OutputBounds, *, stdout: bool, stderr: bool) -> OutputKeeper:
    """The container's output (what its capped log driver kept), streamed into a bounded keeper.

    Streamed, never asked for whole: ``logs()`` without ``stream`` returns everything as one bytes
    object, and ``tail=`` counts log entries, not bytes.
    """
    keeper = OutputKeeper(bounds)
    try:
        stream = container.logs(stream=True, follow=False, stdout=stdout, stderr=stderr)
        try:
            for chunk in stream:
                keeper.feed(chunk)
        finally:
            stream.close()
    except _DOCKER_ERRORS as exc:
        keeper.feed(f"\n(the output of {container.name} is unavailable: {exc})\n".encode())
    return keeper


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
