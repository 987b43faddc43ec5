"""The Docker backend's files in a worktree, its setup cache and its agent image (a part of
:class:`claude_issue_solver.backends.docker.DockerBackend`)."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from claude_issue_solver.backends import git as gitops
from claude_issue_solver.backends.base import (
    BackendError,
    ProcessSpec,
    Workspace,
)
from claude_issue_solver.backends.docker_common import (
    _DOCKER_ERRORS,
    _ERROR_BOUNDS,
    RESTORE_PROCESS,
    RESTORE_TIMEOUT,
    SETUP_IMAGE_FILE,
    WORKSPACE_MOUNT,
    DockerWorkspace,
    _read_text,
    _subdirs,
    _write_private,
    agent_ids,
)
from claude_issue_solver.backends.docker_output import _logs
from claude_issue_solver.backends.docker_setup_cache import (
    TREE_DIR,
    image_id,
    setup_labels,
    untracked_paths,
)
from claude_issue_solver.logs import TaskLog


class DockerFiles:
    """Files, the setup cache and the agent image of the Docker backend (a mixin: it uses the backend's
    client, state directory, images and processes)."""

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

    # --- helpers: files ---------------------------------------------------------------------------------

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
