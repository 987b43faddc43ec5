"""The Docker backend's git: a task's changes, publishing them and replaying them on a moved branch,
all through the mirror, never the worktree's own ``.git`` (a part of
:class:`claude_issue_solver.backends.docker.DockerBackend`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import Timeout

from claude_issue_solver.backends import git as gitops
from claude_issue_solver.backends.base import (
    BackendError,
    Changes,
    Pushed,
    PushRejected,
    PushRequest,
    RebaseConflict,
    Rebased,
    Workspace,
    WorkspaceLost,
)
from claude_issue_solver.backends.docker_common import (
    BASE_SHA_FILE,
    DockerWorkspace,
    _read_text,
    _subdirs,
    _write_private,
)
from claude_issue_solver.logs import TaskLog


class DockerGit:
    """The git part of the Docker backend (a mixin: it uses the backend's state directory and workspaces)."""

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

    def _located(self, workspace: Workspace) -> tuple[DockerWorkspace, Path]:
        """The workspace and its worktree's git directory, as the mirror (not the worktree) records it."""
        ws = self._own(workspace)
        git_dir = gitops.worktree_git_dir(ws.mirror, ws.worktree) if ws.worktree.is_dir() else None
        if git_dir is None:
            msg = f"the worktree {ws.worktree} of task {ws.task_id} is gone (its mirror does not list it)"
            raise WorkspaceLost(msg)
        return ws, git_dir

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
