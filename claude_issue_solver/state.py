"""The state file: one JSON document under ``STATE_DIR`` shared by the daemon and the CLI.

Every change is a locked read-modify-write (a ``filelock`` lock held across processes, plus a thread lock
so threads of one process queue up cheaply) and every write is atomic: a temporary file in the same
directory, ``fsync``, ``os.replace``, then an ``fsync`` of the directory. A reader therefore always sees
either the old or the new document, and a writer killed mid-write leaves the old one intact.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MAX_NOTICES = 20


class StateError(Exception):
    """The state file cannot be used (locked for too long, unwritable, or from a newer version)."""


class UnusableStateDir(StateError):
    """STATE_DIR cannot be created or written: a setting to fix, not an operation to retry."""


def empty_state() -> dict[str, Any]:
    return {
        "schema": SCHEMA_VERSION,
        "paused": False,
        "paused_at": None,
        "tasks": {},
        "watcher": {},
        "notices": [],
    }


class StateStore:
    """Locked, atomic access to ``state.json``.

    ``transaction()`` yields the whole document as a dict; changes are written back when the block
    exits without an exception, and only if something changed.
    """

    def __init__(self, path: Path, *, lock_timeout: float = 30.0, clock: Callable[[], float] = time.time):
        self.path = path
        self._lock = FileLock(str(path) + ".lock", timeout=lock_timeout)
        self._thread_lock = threading.RLock()
        self._clock = clock

    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict[str, Any]]:
        with self._locked():
            data, raw = self._load()
            yield data
            if json.dumps(data, sort_keys=True) != raw:
                self._write(data)

    def read(self) -> dict[str, Any]:
        """A consistent snapshot. Readers need no lock: writes are atomic renames."""
        try:
            text = self.path.read_text(encoding="utf-8")
            data = json.loads(text)
            if isinstance(data, dict) and data.get("schema") == SCHEMA_VERSION:
                return data
        except FileNotFoundError:
            return empty_state()
        except (OSError, ValueError):
            pass
        # Not readable as-is: take the locked path, which quarantines a corrupt file or explains.
        with self._locked():
            return copy.deepcopy(self._load()[0])

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self._lock:
                    yield
            except Timeout:
                waited = self._lock.timeout
                msg = f"the state file {self.path} stayed locked for {waited:.0f}s; is a process stuck?"
                raise StateError(msg) from None
            except OSError as exc:  # after Timeout, which is an OSError too
                raise UnusableStateDir(_unusable(self.path.parent, exc)) from None

    def _load(self) -> tuple[dict[str, Any], str]:
        """The document and its canonical serialization (to detect whether a transaction changed it)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            data = empty_state()
            return data, ""
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or not isinstance(data.get("tasks"), dict):
                raise ValueError("not a state document")
        except (ValueError, UnicodeDecodeError) as exc:
            data = self._quarantine(f"it does not parse ({exc})")
            return data, json.dumps(data, sort_keys=True)
        version = data.get("schema")
        if isinstance(version, int) and version > SCHEMA_VERSION:
            msg = (
                f"the state file {self.path} has schema {version}, newer than this version understands "
                f"({SCHEMA_VERSION}); upgrade claude-issue-solver or point STATE_DIR elsewhere"
            )
            raise StateError(msg)
        if version != SCHEMA_VERSION:
            data = self._quarantine(f"its schema version is {version!r}")
            return data, json.dumps(data, sort_keys=True)
        for key, value in empty_state().items():
            data.setdefault(key, value)
        return data, json.dumps(data, sort_keys=True)

    def _quarantine(self, why: str) -> dict[str, Any]:
        """Move an unusable file aside (never overwrite it) and start from an empty state."""
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(self._clock()))
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
            n += 1
        os.replace(self.path, target)
        message = (
            f"state file {self.path} could not be used because {why}; it was moved to {target} "
            "and the daemon started with an empty queue"
        )
        log.critical(message)
        data = empty_state()
        add_notice(data, message, now=self._clock())
        self._write(data)  # so every later reader sees the notice, not just this process
        return data

    def _write(self, data: dict[str, Any]) -> None:
        payload = json.dumps(data, indent=1, sort_keys=True).encode("utf-8")
        directory = self.path.parent
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def prepare_state_dir(path: Path) -> None:
    """Create STATE_DIR and its log directory, or explain in one line why that is not possible."""
    try:
        (path / "logs").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UnusableStateDir(_unusable(path, exc)) from None


def _unusable(path: Path, exc: OSError) -> str:
    return f"cannot use STATE_DIR={path}: {exc.strerror or exc}; point STATE_DIR at a writable directory"


def add_notice(data: dict[str, Any], message: str, *, now: float) -> None:
    """Record something an operator must see in ``status`` (kept short: the last MAX_NOTICES)."""
    notices = data.setdefault("notices", [])
    notices.append({"time": now, "message": message})
    del notices[:-MAX_NOTICES]
