"""The Daytona backend's git: cloning in the sandbox, a task's changes, publishing them and replaying
them on a moved branch (a part of :class:`claude_issue_solver.backends.daytona.DaytonaBackend`)."""

from __future__ import annotations

import logging
import re
import time

from daytona import (
    DaytonaConflictError,
    DaytonaError,
    DaytonaGitPushRejectedError,
    DaytonaGitRemoteRejectedError,
    FileDownloadRequest,
    Sandbox,
)

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
    WorkspaceSpec,
    checked_id,
)
from claude_issue_solver.backends.daytona_common import (
    _MOVED_RE,
    _backend_error,
    _clean_url,
    _excluded,
    _Paths,
    _q,
    _scrub,
    _sdk,
)
from claude_issue_solver.credentials import GitCredential
from claude_issue_solver.logs import REDACTOR, TaskLog

logger = logging.getLogger(__name__)


class DaytonaGit:
    """The git part of the Daytona backend (a mixin: it uses the backend's sandboxes, egress and state)."""

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
