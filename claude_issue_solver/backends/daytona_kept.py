"""The Daytona backend's kept directories, carried into a sandbox before a process and out of it after,
and what this host records of a task (a part of
:class:`claude_issue_solver.backends.daytona.DaytonaBackend`)."""

from __future__ import annotations

import io
import logging
import tarfile
from pathlib import Path
from typing import Any

from daytona import (
    FileUpload,
)

from claude_issue_solver.backends import git as gitops
from claude_issue_solver.backends import kept as kept_mechanics
from claude_issue_solver.backends.base import (
    ProcessSpec,
    checked_id,
    checked_process,
)
from claude_issue_solver.backends.daytona_common import (
    FROM_DEFAULT_FILE,
    KEPT_DIR,
    KEPT_KEY_SUFFIX,
    KEPT_SUFFIX,
    _Paths,
)

logger = logging.getLogger(__name__)


class DaytonaKept:
    """Kept directories and the host-side task records of the Daytona backend (a mixin: it uses the
    backend's state directory)."""

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
