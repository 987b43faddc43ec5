from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from claude_issue_solver.queue import TaskQueue, TaskState
from claude_issue_solver.state import SCHEMA_VERSION, StateError, StateStore
from tests.waiting import wait_until


def test_round_trip_and_schema(store: StateStore) -> None:
    with store.transaction() as data:
        data["paused"] = True
    raw = json.loads(store.path.read_text())
    assert raw["schema"] == SCHEMA_VERSION
    assert raw["paused"] is True
    assert oct(store.path.stat().st_mode & 0o777) == "0o600"


def test_unchanged_transaction_does_not_write(store: StateStore) -> None:
    with store.transaction() as data:
        data["paused"] = False
    before = store.path.stat().st_mtime_ns
    with store.transaction():
        pass
    assert store.path.stat().st_mtime_ns == before


def test_corrupt_file_is_quarantined_not_overwritten(store: StateStore) -> None:
    store.path.write_text('{"schema": 1, "tasks": {"half-written')
    queue = TaskQueue(store)
    assert queue.list() == []  # starts empty instead of crashing
    quarantined = list(store.path.parent.glob("state.json.corrupt-*"))
    assert len(quarantined) == 1
    assert quarantined[0].read_text() == '{"schema": 1, "tasks": {"half-written'
    notices = store.read()["notices"]
    assert "could not be used" in notices[0]["message"] and str(quarantined[0]) in notices[0]["message"]
    assert queue.submit("acme/widgets", 1, "works again") is not None


def test_newer_schema_is_refused_not_quarantined(store: StateStore) -> None:
    store.path.write_text(json.dumps({"schema": SCHEMA_VERSION + 1, "tasks": {}}))
    with pytest.raises(StateError, match="newer than this version"), store.transaction():
        pass
    assert not list(store.path.parent.glob("state.json.corrupt-*"))


def test_writer_killed_mid_write_leaves_previous_state(store: StateStore, tmp_path: Path) -> None:
    queue = TaskQueue(store)
    queue.submit("acme/widgets", 1, "the survivor")
    marker = tmp_path / "in-fsync"
    # The child stalls inside the write, after the temporary file has data but before the rename.
    child_code = textwrap.dedent(
        f"""
        import os, pathlib, time
        from claude_issue_solver.queue import TaskQueue
        from claude_issue_solver.state import StateStore
        real_fsync = os.fsync
        def stalled_fsync(fd):
            pathlib.Path({str(marker)!r}).write_text("x")
            while True:
                time.sleep(1)
        os.fsync = stalled_fsync
        TaskQueue(StateStore(pathlib.Path({str(store.path)!r}))).submit("acme/widgets", 2, "never lands")
        """
    )
    child = subprocess.Popen([sys.executable, "-c", child_code])
    try:
        wait_until(marker.exists, what="the child to be mid-write")
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
    titles = [t.title for t in TaskQueue(store).list()]
    assert titles == ["the survivor"]
    # the lock died with the writer: the next change goes through at once
    assert TaskQueue(store).submit("acme/widgets", 3, "after the crash") is not None
    assert not list(store.path.parent.glob("state.json.corrupt-*"))


def test_fifty_processes_adding_at_once_all_survive(store: StateStore, tmp_path: Path) -> None:
    go = tmp_path / "go"
    child_code = textwrap.dedent(
        f"""
        import pathlib, sys, time
        from claude_issue_solver.queue import TaskQueue
        from claude_issue_solver.state import StateStore
        queue = TaskQueue(StateStore(pathlib.Path({str(store.path)!r})))
        pathlib.Path({str(tmp_path)!r}, "ready-" + sys.argv[1]).touch()
        deadline = time.monotonic() + 60
        while not pathlib.Path({str(go)!r}).exists() and time.monotonic() < deadline:
            time.sleep(0.001)
        assert queue.submit("acme/widgets", int(sys.argv[1]), "from process " + sys.argv[1]) is not None
        """
    )
    children = [subprocess.Popen([sys.executable, "-c", child_code, str(n)]) for n in range(1, 51)]
    try:
        wait_until(lambda: len(list(tmp_path.glob("ready-*"))) == 50, timeout=120, what="50 ready children")
        go.touch()
        codes = [c.wait(120) for c in children]
    finally:
        for c in children:
            if c.poll() is None:
                c.kill()
    assert codes == [0] * 50
    tasks = TaskQueue(store).list()
    assert sorted(t.issue_number for t in tasks) == list(range(1, 51))
    assert all(t.state is TaskState.PENDING for t in tasks)
    assert len({t.seq for t in tasks}) == 50
