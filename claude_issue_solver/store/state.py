"""The state file: one JSON document under ``STATE_DIR`` shared by the daemon and the CLI.

Every change is a locked read-modify-write (a ``filelock`` lock held across processes, plus a thread lock
so threads of one process queue up cheaply) and every write is atomic: a temporary file in the same
directory, ``fsync``, ``os.replace``, then an ``fsync`` of the directory. A reader therefore always sees
either the old or the new document, and a writer killed mid-write leaves the old one intact.

The document is checked on every read: a file that cannot be used (bytes that are not UTF-8, JSON that
does not parse, an empty or truncated file, the wrong shape) is moved aside to ``state.json.corrupt-<ts>``
and a notice is recorded; a document whose sections or tasks are partly malformed keeps every part that
is sound. Only a file from a newer schema is refused and left untouched.

Speed at a grown state (1,000 tasks): the file is compact JSON, parsed once and serialized once per
transaction with orjson; whether a transaction changed anything is decided by comparing the new bytes
with the ones read, so a transaction that changes nothing writes nothing (``benchmarks/bench_state.py``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
from filelock import FileLock, Timeout

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MAX_NOTICES = 20
MAX_PROBLEMS_SHOWN = 3

# The shape of a task record, checked on every read (``queue.Task`` is its typed view; a test keeps the
# two in step). Types are exact: ``True`` is not an issue number. Unknown fields are kept, for newer code.
_STR = frozenset({str})
_INT = frozenset({int})
_NUM = frozenset({int, float})
_BOOL = frozenset({bool})
_NONE = frozenset({type(None)})
TASK_FIELDS: dict[str, frozenset[type]] = {
    "id": _STR,
    "repo": _STR,
    "issue_number": _INT,
    "title": _STR,
    "kind": _STR,
    "state": _STR,
    "seq": _INT,
    "attempts": _INT,
    "created_at": _NUM,
    "started_at": _NUM | _NONE,
    "finished_at": _NUM | _NONE,
    "backend": _STR | _NONE,
    "handle": _STR | _NONE,
    "branch": _STR | _NONE,
    "pr_url": _STR | _NONE,
    "error": _STR | _NONE,
    "result": _STR | _NONE,
    "cost_usd": _NUM | _NONE,
    "num_turns": _INT | _NONE,
    "session_id": _STR | _NONE,
    "duration_ms": _INT | _NONE,
    "cancel_requested": _BOOL,
    "meta": frozenset({dict}),
}
REQUIRED_TASK_FIELDS = ("id", "repo", "issue_number", "title", "state", "seq")
TASK_STATES = frozenset({"pending", "running", "completed", "failed", "cancelled"})
# The watcher's bookkeeping: each section maps a key to a string or to an object of the watcher's own.
WATCHER_SECTIONS: dict[str, type] = {
    "etags": str,
    "high_water": str,
    "issues": dict,
    "permissions": dict,
    "repos": dict,
}


class StateError(Exception):
    """The state file cannot be used (locked for too long, unwritable, or from a newer version).

    ``errno`` is the operating system's error when one caused it (``ENOSPC``: the disk is full).
    """

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class UnusableStateDir(StateError):
    """STATE_DIR cannot be created or written: a setting to fix, not an operation to retry."""


class Unusable(ValueError):
    """The file cannot be used at all: nothing in it can be kept."""


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
    exits without an exception, and only if something changed. ``read()`` returns a private snapshot.
    """

    def __init__(self, path: Path, *, lock_timeout: float = 30.0, clock: Callable[[], float] = time.time):
        self.path = path
        self._lock = FileLock(str(path) + ".lock", timeout=lock_timeout)
        self._thread_lock = threading.RLock()
        self._clock = clock
        self._snapshot: tuple[tuple[int, int, int, int], dict[str, Any]] | None = None
        self._writes = 0  # this process's writes: a snapshot is never older than the last of them

    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict[str, Any]]:
        with self._locked():
            data, raw = self._load()
            yield data
            payload = encode(data)
            if payload != raw:
                self._write(payload)

    def read(self) -> dict[str, Any]:
        """A consistent snapshot. Readers need no lock: writes are atomic renames."""
        raw = self._read_bytes()
        if raw is None:
            return empty_state()
        with contextlib.suppress(Unusable):
            data, problems = check(raw, self.path)
            if not problems:
                return data
        # Not usable as-is: take the locked path, which quarantines it (or finds it fixed meanwhile).
        with self._locked():
            return self._load()[0]

    def snapshot(self) -> dict[str, Any]:
        """The document as last read, parsed again only when the file changed (this process wrote it, or
        its size, modification time or inode changed): for a hot path that reads often and writes rarely
        (an idle poll).

        Shared between callers: **never change what it returns**; take :meth:`read` for a copy."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return empty_state()
        except OSError:
            return self.read()  # let read() say what is wrong
        key = (self._writes, st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self._snapshot
        if cached is not None and cached[0] == key:
            return cached[1]
        data = self.read()
        self._snapshot = (key, data)
        return data

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._lock.acquire()
            except Timeout:
                waited = self._lock.timeout
                msg = f"the state file {self.path} stayed locked for {waited:.0f}s; is a process stuck?"
                raise StateError(msg) from None
            except OSError as exc:  # after Timeout, which is an OSError too
                raise UnusableStateDir(_unusable(self.path.parent, exc)) from None
            try:
                yield
            finally:
                self._lock.release()

    def _read_bytes(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            msg = f"cannot read the state file {self.path}: {exc.strerror or exc}"
            raise StateError(msg) from None

    def _load(self) -> tuple[dict[str, Any], bytes]:
        """The document and the bytes it was read from (to tell whether a transaction changed it)."""
        raw = self._read_bytes()
        if raw is None:
            return empty_state(), b""
        try:
            data, problems = check(raw, self.path)
        except Unusable as exc:
            data = self._quarantine(f"it could not be used: {exc}", empty_state(), "the queue starts empty")
        else:
            if not problems:
                return data, raw
            data = self._quarantine(
                "parts of it could not be read: " + _summary(problems),
                data,
                f"{len(data['tasks'])} readable task(s) and the rest of the state were kept",
            )
        return data, encode(data)

    def _quarantine(self, why: str, kept: dict[str, Any], outcome: str) -> dict[str, Any]:
        """Move the file aside (never overwrite it), keep what could be read, and say so."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock()))
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
            n += 1
        try:
            os.replace(self.path, target)
        except OSError as exc:
            msg = (
                f"the state file {self.path} cannot be used and cannot be moved aside: {exc.strerror or exc}"
            )
            raise StateError(msg) from None
        message = f"state file {self.path}: {why}; the file was moved to {target} and {outcome}"
        log.critical("%s", message)
        add_notice(kept, message, now=self._clock())
        self._write(encode(kept))  # so every later reader sees the notice, not just this process
        return kept

    def _write(self, payload: bytes) -> None:
        self._writes += 1
        directory = self.path.parent
        try:
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
        except OSError as exc:
            msg = f"cannot write the state file {self.path}: {exc.strerror or exc}"
            raise StateError(msg, errno=exc.errno) from None


def encode(data: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON (``jq .`` pretty-prints it)."""
    try:
        return orjson.dumps(data, option=orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError:
        # What orjson refuses but JSON can hold (a lone surrogate, an integer past 64 bits): the standard
        # library writes it, as an escape. Slower, and only while such a value is in the state.
        return json.dumps(data, separators=(",", ":")).encode("utf-8") + b"\n"


def decode(raw: bytes) -> Any:
    """Parse JSON; the standard library's error (or its answer, for what orjson refuses) when orjson fails."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw.decode("utf-8"))


def check(raw: bytes, path: Path) -> tuple[dict[str, Any], list[str]]:
    """Parse and check a state document: the sound parts and what was wrong with the rest.

    Raises :class:`Unusable` when nothing can be kept, and :class:`StateError` for a newer schema (which
    must be left untouched for the newer version that wrote it).
    """
    try:
        data = decode(raw)
    except UnicodeDecodeError as exc:
        msg = f"it is not UTF-8 text (byte {exc.start})"
        raise Unusable(msg) from None
    except ValueError as exc:
        msg = "it is empty" if not raw.strip() else f"it is not valid JSON ({exc})"
        raise Unusable(msg) from None
    if type(data) is not dict:
        msg = f"it holds {_kind(data)}, not an object"
        raise Unusable(msg)
    version = data.get("schema")
    if type(version) is int and version > SCHEMA_VERSION:
        msg = (
            f"the state file {path} has schema {version}, newer than this version understands "
            f"({SCHEMA_VERSION}); upgrade claude-issue-solver or point STATE_DIR elsewhere"
        )
        raise StateError(msg)
    if version != SCHEMA_VERSION or type(version) is not int:
        msg = f"its schema version is {version!r}, not {SCHEMA_VERSION}"
        raise Unusable(msg)
    problems: list[str] = []
    for key, value in empty_state().items():
        data.setdefault(key, value)
    _check_top(data, problems)
    _check_tasks(data, problems)
    _check_watcher(data, problems)
    _check_notices(data, problems)
    return data, problems


def _check_top(data: dict[str, Any], problems: list[str]) -> None:
    if type(data["paused"]) is not bool:
        problems.append(f"paused is {data['paused']!r}, not true or false")
        data["paused"] = False
    if type(data["paused_at"]) not in _NUM | _NONE:
        problems.append(f"paused_at is {data['paused_at']!r}, not a time")
        data["paused_at"] = None
    seq = data.get("next_seq", 1)
    if type(seq) is not int or seq < 1:
        problems.append(f"next_seq is {seq!r}, not a positive integer")
        data["next_seq"] = 1  # raised past every kept task below


def _check_tasks(data: dict[str, Any], problems: list[str]) -> None:
    tasks = data["tasks"]
    if type(tasks) is not dict:
        problems.append(f"tasks is {_kind(tasks)}, not an object")
        data["tasks"] = {}
        return
    bad = [key for key, task in tasks.items() if _task_problem(key, task, problems)]
    for key in bad:
        del tasks[key]
    if problems:
        # Whatever was repaired, new tasks must still queue behind every kept one.
        top = max((t["seq"] for t in tasks.values()), default=0)
        data["next_seq"] = max(data.get("next_seq", 1), top + 1)


def _task_problem(key: str, task: Any, problems: list[str]) -> bool:
    """True (with the reason in ``problems``) when a task record cannot be used."""
    if type(task) is not dict:
        problems.append(f"task {key!r} is {_kind(task)}, not an object")
        return True
    for name in REQUIRED_TASK_FIELDS:
        if name not in task:
            problems.append(f"task {key!r} has no {name!r}")
            return True
    for name, value in task.items():
        kinds = TASK_FIELDS.get(name)
        if kinds is not None and type(value) not in kinds:
            problems.append(f"task {key!r}: {name} is {_kind(value)} ({_short(value)})")
            return True
    if task["state"] not in TASK_STATES:
        problems.append(f"task {key!r} has an unknown state {_short(task['state'])}")
        return True
    if task["id"] != key:
        problems.append(f"task {key!r} carries the id {_short(task['id'])}")
        return True
    return False


def _check_watcher(data: dict[str, Any], problems: list[str]) -> None:
    watcher = data["watcher"]
    if type(watcher) is not dict:
        problems.append(f"watcher is {_kind(watcher)}, not an object")
        data["watcher"] = {}
        return
    for name, kind in WATCHER_SECTIONS.items():
        section = watcher.get(name)
        if section is None:
            continue
        if type(section) is not dict:
            problems.append(f"watcher.{name} is {_kind(section)}, not an object")
            del watcher[name]
            continue
        bad = [key for key, value in section.items() if type(value) is not kind]
        for key in bad:
            problems.append(f"watcher.{name}[{key!r}] is {_short(section[key])}")
            del section[key]


def _check_notices(data: dict[str, Any], problems: list[str]) -> None:
    notices = data["notices"]
    if type(notices) is not list:
        problems.append(f"notices is {_kind(notices)}, not a list")
        data["notices"] = []
        return
    kept = [n for n in notices if type(n) is dict and type(n.get("message")) is str]
    if len(kept) != len(notices):
        problems.append(f"{len(notices) - len(kept)} notice(s) are not readable")
        data["notices"] = kept


def _kind(value: Any) -> str:
    """What a JSON value is, in JSON's words."""
    return _KINDS.get(type(value), type(value).__name__)


_KINDS = {
    dict: "an object",
    list: "a list",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "true/false",
    type(None): "null",
}


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _summary(problems: list[str]) -> str:
    shown = "; ".join(problems[:MAX_PROBLEMS_SHOWN])
    more = len(problems) - MAX_PROBLEMS_SHOWN
    return shown + (f"; and {more} more" if more > 0 else "")


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
