"""Process control: start a command in the background and wait until it says it is ready; stop a
process by asking, waiting, then killing.

Nothing here knows the daemon or click. Readiness travels over an unnamed pipe, as daemon(7) recommends
for a process that forks into the background: the parent creates it, the child finds the write end's
number in ``READY_FD_ENV`` and writes one JSON line per event (``note`` any number of times, then
``ready`` or ``failed``). A child that exits without a word is a failed start too, with its exit code
and the tail of its output.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from claude_issue_solver.logs import rotate_output

READY_FD_ENV = "CLAUDE_ISSUE_SOLVER_READY_FD"
POLL = 0.05
OUTPUT_TAIL_BYTES = 4000


class SuperviseError(Exception):
    """Process control failed in a way the caller should report (not an already-gone process)."""


class StartInterrupted(SuperviseError):
    """The caller was interrupted (Ctrl-C) while the child was still starting; ``pid`` still runs."""

    def __init__(self, pid: int) -> None:
        super().__init__(f"interrupted while the daemon (pid {pid}) was starting")
        self.pid = pid


class StartFailed(SuperviseError):
    """The child exited, said it failed, or stayed silent past the deadline.

    ``exit_code`` is the child's (None while it still runs after a timeout); ``output`` the tail of what
    it printed during this start; ``reported``: the message is the child's own account of the failure.
    """

    def __init__(
        self,
        message: str,
        *,
        pid: int,
        exit_code: int | None,
        output: str = "",
        notes: Sequence[str] = (),
        reported: bool = False,
    ) -> None:
        super().__init__(message)
        self.reported = reported
        self.pid = pid
        self.exit_code = exit_code
        self.output = output
        self.notes = tuple(notes)


@dataclass(frozen=True)
class Started:
    pid: int
    notes: tuple[str, ...] = field(default_factory=tuple)  # what the child asked to be shown (warnings)


def start_background(
    command: Sequence[str],
    *,
    output: Path,
    timeout: float,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Started:
    """Run ``command`` in a session of its own, its output appended to ``output``; return once it
    reports ``ready``. Raises :class:`StartFailed` when it reports failure, exits, or times out."""
    output.parent.mkdir(parents=True, exist_ok=True)
    rotate_output(output)  # a long history of starts and stray output never grows without bound
    start_offset = output.stat().st_size if output.exists() else 0
    read_fd, write_fd = os.pipe()
    child_env = dict(os.environ if env is None else env)
    child_env[READY_FD_ENV] = str(write_fd)
    try:
        with open(output, "ab") as out:
            child = subprocess.Popen(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_env,
                cwd=cwd,
                pass_fds=(write_fd,),
                start_new_session=True,  # not killed with this terminal's process group
            )
    except OSError as exc:
        os.close(read_fd)
        msg = f"cannot run {command[0]}: {exc.strerror or exc}"
        raise SuperviseError(msg) from None
    finally:
        os.close(write_fd)  # only the child holds it now: end of file means the child let go of it
    with os.fdopen(read_fd, "rb") as pipe:
        try:
            return _await_ready(child, pipe, output, start_offset, timeout)
        except KeyboardInterrupt:
            raise StartInterrupted(child.pid) from None


def _await_ready(
    child: subprocess.Popen[bytes], pipe: Any, output: Path, offset: int, timeout: float
) -> Started:
    notes: list[str] = []
    deadline = time.monotonic() + timeout
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(pipe, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                msg = f"it did not report ready within {timeout:.0f}s (pid {child.pid})"
                raise StartFailed(
                    msg, pid=child.pid, exit_code=None, output=_tail(output, offset), notes=notes
                )
            if not selector.select(min(remaining, 1.0)):
                continue
            chunk = os.read(pipe.fileno(), 4096)
            if not chunk:
                break  # the child closed the pipe (or exited) without saying ready
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                event = _parse(line)
                kind = event.get("event")
                if kind == "note":
                    notes.append(str(event.get("text", "")))
                elif kind == "ready":
                    return Started(child.pid, tuple(notes))
                elif kind == "failed":
                    code = _wait_exit(child, deadline)
                    message = str(event.get("text") or "it failed during start-up")
                    raise StartFailed(
                        message,
                        pid=child.pid,
                        exit_code=code,
                        output=_tail(output, offset),
                        notes=notes,
                        reported=True,
                    )
    code = _wait_exit(child, deadline)
    shown = "is still running" if code is None else f"exited with code {code}"
    msg = f"it {shown} without reporting ready (pid {child.pid})"
    raise StartFailed(msg, pid=child.pid, exit_code=code, output=_tail(output, offset), notes=notes)


def _parse(line: bytes) -> dict[str, Any]:
    try:
        event = json.loads(line)
    except ValueError:
        return {}
    return event if isinstance(event, dict) else {}


def _wait_exit(child: subprocess.Popen[bytes], deadline: float) -> int | None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        return child.wait(max(0.5, deadline - time.monotonic()))
    return None


def _tail(output: Path, offset: int) -> str:
    """What the child printed since it was started (its last few thousand bytes)."""
    try:
        with open(output, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(offset, size - OUTPUT_TAIL_BYTES))
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


class Readiness:
    """The child's end of the pipe (a no-op when the process was not started by start_background).

    Every method is safe to call in any order and more than once; after ``ready`` or ``failed`` the
    pipe is closed and later calls do nothing.
    """

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    @classmethod
    def from_environ(cls, environ: dict[str, str] | None = None) -> Readiness:
        """Take the pipe named in the environment, and remove the name so grandchildren never see it."""
        environ = os.environ if environ is None else environ
        value = environ.pop(READY_FD_ENV, "")
        return cls(int(value) if value.isdigit() else None)

    @property
    def attached(self) -> bool:
        return self._fd is not None

    def note(self, text: str) -> None:
        self._send({"event": "note", "text": text})

    def ready(self) -> None:
        self._send({"event": "ready"})
        self.close()

    def failed(self, text: str) -> None:
        self._send({"event": "failed", "text": text})
        self.close()

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _send(self, event: dict[str, str]) -> None:
        if self._fd is None:
            return
        try:
            os.write(self._fd, json.dumps(event).encode() + b"\n")
        except OSError:  # the parent gave up waiting: nobody is listening any more
            self.close()


# --- stopping ----------------------------------------------------------------------------------------


class Stop(enum.Enum):
    NOT_RUNNING = "not running"  # there was nothing to stop
    STOPPED = "stopped"  # it ended after SIGTERM
    KILLED = "killed"  # it ended only after SIGKILL
    STILL_RUNNING = "still running"  # it outlived the timeout and force was not given (or SIGKILL)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process; reaps it first if it is our own exited child."""
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive, though not ours to signal
    return True


def stop(
    pid: int | None,
    *,
    timeout: float,
    force: bool = False,
    running: Callable[[], bool] | None = None,
    kill_timeout: float = 10.0,
    on_kill: Callable[[], None] | None = None,
) -> Stop:
    """SIGTERM, wait up to ``timeout``; with ``force`` then SIGKILL and wait up to ``kill_timeout``.

    ``running`` decides whether the process still runs (default: the pid is alive); the daemon passes
    "its pidfile lock is held", which a reused pid cannot fake. Never raises for a process that is
    already gone, so calling it twice is safe; raises :class:`SuperviseError` only when the process
    belongs to someone we may not signal.
    """
    if pid is None:
        return Stop.NOT_RUNNING
    is_running = running or (lambda: pid_alive(pid))
    if not is_running():
        return Stop.NOT_RUNNING
    if not _signal(pid, signal.SIGTERM):
        return Stop.NOT_RUNNING
    if _wait_gone(is_running, timeout):
        return Stop.STOPPED
    if not force:
        return Stop.STILL_RUNNING
    if on_kill is not None:
        on_kill()
    if not _signal(pid, signal.SIGKILL):
        return Stop.KILLED
    return Stop.KILLED if _wait_gone(is_running, kill_timeout) else Stop.STILL_RUNNING


def _signal(pid: int, signum: int) -> bool:
    """Send ``signum``; False if the process is already gone."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        msg = f"not allowed to signal pid {pid} (it runs as another user); stop it as that user"
        raise SuperviseError(msg) from None
    return True


def _wait_gone(is_running: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while is_running():
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL)
    return True
