"""The Docker backend's process output: the pump that streams a container's output into the task log,
and the bounded read of what its capped log driver kept (see :mod:`claude_issue_solver.backends.docker`)."""

from __future__ import annotations

import calendar
import codecs
import threading
import time

from docker.models.containers import Container

from claude_issue_solver.backends.base import (
    OutputBounds,
    OutputKeeper,
)
from claude_issue_solver.backends.docker_common import _DOCKER_ERRORS
from claude_issue_solver.logs import TaskLog

_LOG_FLUSH_BYTES = 64 * 1024
# The log driver of our containers, capped: Docker's disk holds at most ~30 MB of a container's output
# (the oldest goes first), and reading it back once the process ended reads no more than that. The task
# log already got everything, streamed while the process ran (_LogPump).
LOG_CONFIG = {"type": "json-file", "config": {"max-size": "10m", "max-file": "3"}}


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
