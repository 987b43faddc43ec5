"""Logging: the daemon log (rotated), per-task log files, secret redaction, and reading logs back."""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from claude_issue_solver.stream_events import StreamProgress

LOGGER_NAME = "claude_issue_solver"
DAEMON_LOG = "daemon.log"
DAEMON_OUT = "daemon.out"  # stdout and stderr of a daemon `start` put in the background
DAEMON_OUT_MAX_BYTES = 10 * 1024 * 1024
DAEMON_OUT_BACKUPS = 2
_FORMAT = "%(asctime)s %(levelname)-7s %(threadName)s %(name)s: %(message)s"
# Shapes of GitHub and Anthropic credentials, masked even when we were never told the value; and the
# relay's own task tokens (``relay.base.TOKEN_PREFIX`` and a SHA-256 HMAC in hex), long after their task.
_TOKEN_SHAPES = re.compile(
    r"\b(gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|sk-ant-[A-Za-z0-9_-]{10,}"
    r"|cis-relay-[0-9a-f]{64})\b"
)


class Redactor:
    """Replaces secret values (and anything shaped like a token) with ``***``.

    A long-running daemon learns a secret per task (the relay's token) and per installation and hour
    (a GitHub App's token): those are token-shaped, masked by shape for ever, so each is kept by value
    only while it can work (``until``, or until ``discard``). The list stays the size of what is live
    rather than growing with every task of the daemon's life, and each line is not a sort of all of it.
    """

    def __init__(self, secrets: Iterable[str] = (), *, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._secrets: dict[str, float] = {}  # value -> until when it is kept (inf: for ever)
        self._ordered: tuple[str, ...] = ()  # longest first, made again only when the set changes
        self.add(*secrets)

    def add(self, *secrets: str, until: float | None = None) -> None:
        """Mask ``secrets`` from now on; ``until`` (a wall-clock time) for a token-shaped one that stops
        working then: its value is dropped after it, its shape still masked."""
        keep = float("inf") if until is None else until
        # Short values would mask ordinary words; real credentials are long.
        fresh = [s for s in secrets if s and len(s) >= 6]
        with self._lock:
            now = self._clock()
            for secret in fresh:
                self._secrets[secret] = max(keep, self._secrets.get(secret, keep))
            expired = [s for s, kept_until in self._secrets.items() if kept_until <= now]
            for secret in expired:
                del self._secrets[secret]
            if fresh or expired:
                self._reorder()

    def discard(self, *secrets: str) -> None:
        """Stop masking these values by value (a token-shaped one is still masked by its shape)."""
        with self._lock:
            gone = [s for s in secrets if self._secrets.pop(s, None) is not None]
            if gone:
                self._reorder()

    def _reorder(self) -> None:
        """Longest first, so a secret that contains another is masked whole (under the lock)."""
        self._ordered = tuple(sorted(self._secrets, key=len, reverse=True))

    def __len__(self) -> int:
        with self._lock:
            return len(self._secrets)

    def __call__(self, text: str) -> str:
        with self._lock:
            secrets = self._ordered
        for secret in secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return _TOKEN_SHAPES.sub("***", text)


# One process-wide redactor: a credential learned anywhere (an App installation token, say) is
# masked in every log from then on.
REDACTOR = Redactor()


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = REDACTOR(message)
        if record.exc_info and record.exc_info[1] is not None:
            # Format the traceback now so that its text, too, passes through the redactor.
            redacted += "\n" + REDACTOR(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
            record.exc_text = None
        record.msg, record.args = redacted, None
        return True


def setup_logging(
    log_dir: Path,
    *,
    level: str = "INFO",
    to_stderr: bool = False,
    secrets: Iterable[str] = (),
) -> logging.Logger:
    """The daemon's logging: ``log_dir/daemon.log`` rotated at 10 MB x 5, and stderr in the foreground."""
    REDACTOR.add(*secrets)
    log_dir.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(_FORMAT)
    handlers: list[logging.Handler] = [
        logging.handlers.RotatingFileHandler(
            log_dir / DAEMON_LOG, maxBytes=10 * 1024 * 1024, backupCount=5, encoding="utf-8"
        )
    ]
    if to_stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(RedactingFilter())
        logger.addHandler(handler)
    return logger


def rotate_output(
    path: Path, *, max_bytes: int = DAEMON_OUT_MAX_BYTES, backups: int = DAEMON_OUT_BACKUPS
) -> bool:
    """Rotate ``path`` when it is over ``max_bytes``: copy to ``path.1`` (``.1`` to ``.2``, ...) and
    truncate it in place, so a process appending to it (``O_APPEND``) goes on at its new start. Returns
    whether it rotated. Never raises: a log that cannot be rotated is not worth stopping for."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
        for n in range(backups - 1, 0, -1):
            older = path.with_name(f"{path.name}.{n}")
            if older.exists():
                os.replace(older, path.with_name(f"{path.name}.{n + 1}"))
        if backups > 0:
            shutil.copyfile(path, path.with_name(f"{path.name}.1"))
        os.truncate(path, 0)
    except FileNotFoundError:
        return False
    except OSError as exc:
        logging.getLogger(LOGGER_NAME).warning("could not rotate %s: %s", path, exc.strerror or exc)
        return False
    return True


def task_log_path(log_dir: Path, task_id: str) -> Path:
    return log_dir / "tasks" / f"{task_id}.log"


class TaskLog:
    """Append-only, redacted, timestamped lines for one task; safe to share between threads."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        self.progress = StreamProgress()
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self._clock()))
        lines = REDACTOR(message).rstrip("\n").splitlines() or [""]
        text = "".join(f"{stamp} {line}\n" for line in lines)
        with self._lock, open(self.path, "a", encoding="utf-8") as handle:
            handle.write(text)

    def write_raw(self, chunk: str) -> None:
        """Output from the agent, in whole lines: stream-json events become readable lines."""
        for line in chunk.splitlines():
            readable = self.progress.feed_line(line)
            if readable is not None:
                self.write(readable)

    def tail(self, lines: int = 20) -> str:
        return "".join(tail_lines(self.path, lines))


def tail_lines(path: Path, count: int) -> list[str]:
    """The last ``count`` lines of a file without reading all of a large one."""
    if count <= 0:
        return []
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            block = 8192
            data = b""
            while size > 0 and data.count(b"\n") <= count:
                step = min(block, size)
                size -= step
                handle.seek(size)
                data = handle.read(step) + data
    except FileNotFoundError:
        return []
    return [line.decode("utf-8", "replace") + "\n" for line in data.splitlines()[-count:]]


def follow(
    path: Path,
    *,
    start_lines: int = 10,
    poll: Callable[[], None] = lambda: time.sleep(0.2),
    keep_going: Callable[[], bool] = lambda: True,
) -> Iterator[str]:
    """Yield the last ``start_lines`` lines, then new lines as they are appended (like ``tail -f``).

    Survives rotation and late creation: when the file is replaced or truncated, it reopens it.
    """
    yield from tail_lines(path, start_lines)
    handle = None
    inode = None
    position = 0
    try:
        if path.exists():
            handle = open(path, "rb")  # noqa: SIM115 - kept open across iterations on purpose
            handle.seek(0, os.SEEK_END)
            position = handle.tell()
            inode = os.fstat(handle.fileno()).st_ino
        pending = b""
        while keep_going():
            if handle is None and path.exists():
                handle = open(path, "rb")  # noqa: SIM115
                inode = os.fstat(handle.fileno()).st_ino
                position = 0
            if handle is not None:
                chunk = handle.read()
                if chunk:
                    position += len(chunk)
                    pending += chunk
                    *complete, pending = pending.split(b"\n")
                    for line in complete:
                        yield line.decode("utf-8", "replace") + "\n"
                    continue
                try:
                    stat = os.stat(path)
                    if stat.st_ino != inode or stat.st_size < position:
                        handle.close()
                        handle = None
                        continue
                except FileNotFoundError:
                    pass
            poll()
    finally:
        if handle is not None:
            handle.close()


def daemon_log_path(log_dir: Path) -> Path:
    return log_dir / DAEMON_LOG
