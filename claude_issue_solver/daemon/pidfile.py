"""The daemon's pidfile, held with an exclusive ``flock`` for the daemon's whole life.

The lock, not the pid written in the file, decides whether a daemon runs: the kernel drops it when the
process dies, however it dies, so a pidfile left behind by ``kill -9`` is recognised as stale and
replaced, and two daemons can never hold it at once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path


class AlreadyRunning(Exception):
    def __init__(self, pid: int | None, path: Path) -> None:
        self.pid = pid
        shown = f"pid {pid}" if pid else "starting"
        super().__init__(f"the daemon is already running ({shown}, pidfile {path})")


@dataclass(frozen=True)
class DaemonStatus:
    running: bool
    pid: int | None  # the running daemon's pid, or the stale pid left behind
    stale: bool  # a pidfile exists but nobody holds it

    @property
    def ready(self) -> bool:
        """Running and past start-up (the pid is written only once start-up succeeded)."""
        return self.running and self.pid is not None


class PidFile:
    """Acquire (lock) early to refuse a second daemon; ``write`` the pid once start-up succeeded."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, wait: float = 1.0) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A brief wait absorbs a `status` probe holding a shared lock for a few microseconds.
        deadline = time.monotonic() + wait
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() >= deadline:
                    raise AlreadyRunning(_read_pid(self.path), self.path) from None
                time.sleep(0.01)
                continue
            # The previous holder may have unlinked the file between our open and our lock: a lock on
            # an unlinked inode guards nothing, so start over on the file that is there now.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        # Whatever pid was there is stale: we hold the lock now. Blank it until start-up succeeds.
        os.ftruncate(fd, 0)
        self._fd = fd

    def write(self, pid: int | None = None) -> None:
        if self._fd is None:
            msg = "acquire the pidfile before writing it"
            raise RuntimeError(msg)
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{pid or os.getpid()}\n".encode(), 0)
        os.fsync(self._fd)

    def release(self) -> None:
        """Remove the pidfile and drop the lock; only ever our own (we hold the lock)."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except (FileNotFoundError, PermissionError):
        return None
    return int(text) if text.isdigit() else None


def daemon_status(path: Path) -> DaemonStatus:
    """Whether a daemon holds the pidfile, without disturbing it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return DaemonStatus(running=False, pid=None, stale=False)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return DaemonStatus(running=True, pid=_read_pid(path), stale=False)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return DaemonStatus(running=False, pid=_read_pid(path), stale=True)
    finally:
        os.close(fd)
