"""Process control without click: real child processes started, awaited and stopped."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from claude_issue_solver.daemon.supervise import (
    READY_FD_ENV,
    Readiness,
    StartFailed,
    Stop,
    pid_alive,
    start_background,
    stop,
)
from tests.waiting import wait_until


def child(body: str) -> list[str]:
    """A Python child that talks the readiness protocol through the library's own Readiness."""
    code = textwrap.dedent(
        """
        import os, signal, sys, time
        from claude_issue_solver.daemon.supervise import READY_FD_ENV, Readiness
        readiness = Readiness.from_environ()
        assert READY_FD_ENV not in os.environ  # grandchildren never see the pipe's name
        """
    ) + textwrap.dedent(body)
    return [sys.executable, "-c", code]


@pytest.fixture
def output(tmp_path: Path) -> Path:
    path = tmp_path / "logs" / "child.out"
    path.parent.mkdir()
    path.write_text("an earlier start's output\n")
    return path


@pytest.fixture
def reap() -> Iterator[list[int]]:
    pids: list[int] = []
    yield pids
    for pid in pids:
        stop(pid, timeout=2, force=True)


def test_ready_with_notes_then_stop_twice(output: Path, reap: list[int]) -> None:
    started = start_background(
        child(
            """
            readiness.note("acme/widgets: GitHub is failing; retrying")
            readiness.ready()
            readiness.ready()  # harmless: the pipe is closed after the first
            signal.sigwait([signal.SIGTERM])
            """
        ),
        output=output,
        timeout=30,
    )
    reap.append(started.pid)
    assert started.notes == ("acme/widgets: GitHub is failing; retrying",)
    assert pid_alive(started.pid)
    assert stop(started.pid, timeout=10) is Stop.STOPPED
    assert not pid_alive(started.pid)
    assert stop(started.pid, timeout=10) is Stop.NOT_RUNNING  # safe to call twice
    assert stop(None, timeout=10) is Stop.NOT_RUNNING


def test_a_reported_failure_carries_the_reason_and_exit_code(output: Path) -> None:
    with pytest.raises(StartFailed) as failed:
        start_background(
            child(
                """
                readiness.note("a warning first")
                print("some output", flush=True)
                readiness.failed("acme/widgets: GitHub rejected the credential (HTTP 401)")
                sys.exit(2)
                """
            ),
            output=output,
            timeout=30,
        )
    exc = failed.value
    assert exc.reported and exc.exit_code == 2
    assert str(exc) == "acme/widgets: GitHub rejected the credential (HTTP 401)"
    assert exc.notes == ("a warning first",)
    assert exc.output == "some output\n"  # only this start's output, not the earlier one's


def test_a_silent_exit_is_a_failed_start(output: Path) -> None:
    with pytest.raises(StartFailed) as failed:
        start_background(
            child("print('Traceback: boom', flush=True); sys.exit(3)"), output=output, timeout=30
        )
    exc = failed.value
    assert not exc.reported and exc.exit_code == 3
    assert "exited with code 3" in str(exc) and "Traceback: boom" in exc.output


def test_no_word_within_the_deadline(output: Path, reap: list[int]) -> None:
    with pytest.raises(StartFailed) as failed:
        start_background(child("signal.sigwait([signal.SIGTERM])"), output=output, timeout=1)
    exc = failed.value
    reap.append(exc.pid)
    assert exc.exit_code is None and "within 1s" in str(exc)
    assert pid_alive(exc.pid)  # still running: the caller decides what to do with it
    assert stop(exc.pid, timeout=10) is Stop.STOPPED


def test_stop_escalates_only_when_forced(output: Path, reap: list[int]) -> None:
    started = start_background(
        child(
            """
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            readiness.ready()
            while True:
                time.sleep(60)
            """
        ),
        output=output,
        timeout=30,
    )
    reap.append(started.pid)
    assert stop(started.pid, timeout=0.3) is Stop.STILL_RUNNING
    assert pid_alive(started.pid)
    kills: list[int] = []
    result = stop(started.pid, timeout=0.3, force=True, on_kill=lambda: kills.append(started.pid))
    assert result is Stop.KILLED and kills == [started.pid]
    wait_until(lambda: not pid_alive(started.pid), what="the kill")
    assert stop(started.pid, timeout=0.3, force=True) is Stop.NOT_RUNNING


def test_stop_follows_the_callers_idea_of_running(output: Path, reap: list[int]) -> None:
    """The daemon passes "the pidfile lock is held"; a process already gone by that measure is left be."""
    started = start_background(
        child("readiness.ready(); signal.sigwait([signal.SIGTERM])"), output=output, timeout=30
    )
    reap.append(started.pid)
    assert stop(started.pid, timeout=1, running=lambda: False) is Stop.NOT_RUNNING
    assert pid_alive(started.pid)


def test_readiness_outside_start_background_does_nothing() -> None:
    environ = {"PATH": "/bin"}
    readiness = Readiness.from_environ(environ)
    assert not readiness.attached
    readiness.note("nobody listens")
    readiness.ready()
    readiness.failed("still nobody")
    environ[READY_FD_ENV] = "not-a-number"
    assert not Readiness.from_environ(environ).attached


def test_a_parent_that_stopped_listening_does_not_break_the_child() -> None:
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    previous = signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as Python sets it in every process
    try:
        readiness = Readiness(write_fd)
        readiness.note("the parent timed out and went away")
        assert not readiness.attached
        readiness.ready()
    finally:
        signal.signal(signal.SIGPIPE, previous)
