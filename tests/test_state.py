from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from claude_issue_solver.store.queue import Task, TaskQueue, TaskState
from claude_issue_solver.store.state import (
    REQUIRED_TASK_FIELDS,
    SCHEMA_VERSION,
    TASK_FIELDS,
    TASK_STATES,
    StateError,
    StateStore,
)
from tests.waiting import wait_until

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def test_round_trip_and_schema(store: StateStore) -> None:
    with store.transaction() as data:
        data["paused"] = True
    raw = json.loads(store.path.read_text())
    assert raw["schema"] == SCHEMA_VERSION
    assert raw["paused"] is True
    assert oct(store.path.stat().st_mode & 0o777) == "0o600"


def test_any_text_round_trips(queue: TaskQueue) -> None:
    titles = ["café ☕ 修正", 'quotes " and \\ and \n', "\x00 and \u2028"]
    ids = [queue.submit("acme/widgets", n, title).id for n, title in enumerate(titles)]
    assert [queue.get(i).title for i in ids] == titles
    assert "修正" in queue.store.path.read_bytes().decode("utf-8")


def test_what_orjson_refuses_is_written_by_the_standard_library(queue: TaskQueue) -> None:
    # A lone surrogate (from a broken escape in some API's JSON) is valid JSON but not UTF-8: the
    # standard library writes it as an escape, and reads it back where orjson refuses to.
    task = queue.submit("acme/widgets", 1, "a lone surrogate \ud800 here", meta={"labels": ["Claude"]})
    assert b"\\ud800" in queue.store.path.read_bytes()
    assert queue.get(task.id).title == "a lone surrogate \ud800 here"
    queue.update(task.id, meta={"phase": "agent"})
    assert queue.get(task.id).meta == {"labels": ["Claude"], "phase": "agent"}
    queue.update(task.id, title="fixed")
    assert b"\\ud800" not in queue.store.path.read_bytes()
    assert not quarantined(queue.store)


def test_unchanged_transaction_does_not_write(store: StateStore) -> None:
    with store.transaction() as data:
        data["paused"] = False
    before = store.path.stat().st_mtime_ns
    with store.transaction():
        pass
    assert store.path.stat().st_mtime_ns == before


def quarantined(store: StateStore) -> list[Path]:
    return sorted(store.path.parent.glob("state.json.corrupt-*"))


def sound_state(store: StateStore) -> bytes:
    """A state with two tasks and some watcher bookkeeping, as the daemon leaves it."""
    queue = TaskQueue(store, clock=lambda: NOW)
    queue.submit("acme/widgets", 1, "one", meta={"labels": ["Claude"]})
    queue.submit("acme/widgets", 2, "two")
    with store.transaction() as data:
        data["watcher"] = {
            "etags": {"acme/widgets:claude": '"abc"'},
            "issues": {"acme/widgets#1": {"fingerprint": "f1"}},
            "repos": {"acme/widgets": {"last_success": NOW, "failures": 0}},
        }
    return store.path.read_bytes()


UNUSABLE = {
    "bytes that are not UTF-8": (b'{"schema": 1, "tasks": {"\xff\xfe": 1}}', "not UTF-8"),
    "latin-1 text": ('{"schema": 1, "tasks": {}, "notices": ["caf\u00e9"]}'.encode("latin-1"), "not UTF-8"),
    "JSON that does not parse": (b'{"schema": 1, "tasks": {"half-written', "not valid JSON"),
    "an empty file": (b"", "it is empty"),
    "only whitespace": (b"  \n", "it is empty"),
    "a JSON list": (b'[{"schema": 1}]', "it holds a list, not an object"),
    "a JSON string": (b'"state"', "it holds a string, not an object"),
    "no schema": (b'{"tasks": {}}', "schema version is None"),
    "an older schema": (b'{"schema": 0, "tasks": {}}', "schema version is 0"),
    "a schema that is a string": (b'{"schema": "1", "tasks": {}}', "schema version is '1'"),
    "a schema that is a boolean": (b'{"schema": true, "tasks": {}}', "schema version is True"),
}


@pytest.mark.parametrize("content,why", UNUSABLE.values(), ids=list(UNUSABLE))
def test_an_unusable_file_is_moved_aside_with_a_notice(tmp_path: Path, content: bytes, why: str) -> None:
    store = StateStore(tmp_path / "state.json", clock=lambda: NOW)
    store.path.write_bytes(content)
    queue = TaskQueue(store)
    assert queue.list() == []  # starts empty instead of crashing
    (moved,) = quarantined(store)
    assert moved.name == "state.json.corrupt-20270115T080000Z"
    assert moved.read_bytes() == content  # kept byte for byte, for a human to look at
    (notice,) = store.read()["notices"]
    assert why in notice["message"]
    assert str(moved) in notice["message"] and "the queue starts empty" in notice["message"]
    assert notice["time"] == NOW
    assert queue.submit("acme/widgets", 1, "works again") is not None
    assert len(quarantined(store)) == 1  # what it wrote since is sound


def test_a_truncated_file_is_moved_aside(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json", clock=lambda: NOW)  # one stamp: names end -1, -2
    whole = sound_state(store)
    for cut in (1, len(whole) // 2, len(whole) - 2):
        store.path.write_bytes(whole[:cut])
        with store.transaction() as data:
            assert data["tasks"] == {}
    assert [p.read_bytes() for p in quarantined(store)] == [
        whole[:cut] for cut in (1, len(whole) // 2, len(whole) - 2)
    ]
    (notice,) = store.read()["notices"]  # each empty start replaced the last: one notice, the latest
    assert str(quarantined(store)[-1]) in notice["message"]


def test_the_first_to_read_quarantines_the_rest_see_the_notice(store: StateStore) -> None:
    store.path.write_bytes(b"\x00\x01garbage")
    first = store.read()  # status or start: reads without a transaction of its own
    second = StateStore(store.path).read()  # another process, later
    assert first["notices"] == second["notices"] and len(first["notices"]) == 1
    assert len(quarantined(store)) == 1


def bad(store: StateStore, change: Callable[[dict[str, Any]], None]) -> None:
    """Write the sound state changed by hand, as a person editing the file might."""
    data = json.loads(store.path.read_bytes())
    change(data)
    store.path.write_text(json.dumps(data, indent=2))


def task_id(store: StateStore, number: int) -> str:
    return next(t.id for t in TaskQueue(store).list() if t.issue_number == number)


PARTLY_BAD: dict[str, tuple[Callable[[dict[str, Any], str], None], str]] = {
    "a task that is not an object": (lambda d, k: d["tasks"].update({k: ["x"]}), "is a list, not an object"),
    "a task without a repo": (lambda d, k: d["tasks"][k].pop("repo"), "has no 'repo'"),
    "a task without a state": (lambda d, k: d["tasks"][k].pop("state"), "has no 'state'"),
    "an issue number as text": (
        lambda d, k: d["tasks"][k].update(issue_number="2"),
        'issue_number is a string ("2")',
    ),
    "a boolean as a number": (lambda d, k: d["tasks"][k].update(seq=True), "seq is true/false (true)"),
    "a title that is null": (lambda d, k: d["tasks"][k].update(title=None), "title is null (null)"),
    "meta that is a list": (lambda d, k: d["tasks"][k].update(meta=[]), "meta is a list ([])"),
    "an unknown state": (lambda d, k: d["tasks"][k].update(state="exploded"), 'unknown state "exploded"'),
    "an id that is not its key": (lambda d, k: d["tasks"][k].update(id="other"), 'carries the id "other"'),
}


@pytest.mark.parametrize("change,why", PARTLY_BAD.values(), ids=list(PARTLY_BAD))
def test_a_malformed_task_is_dropped_and_everything_else_kept(
    tmp_path: Path, change: Callable[[dict[str, Any], str], None], why: str
) -> None:
    store = StateStore(tmp_path / "state.json", clock=lambda: NOW)
    sound_state(store)
    broken = task_id(store, 2)
    kept = TaskQueue(store).find("acme/widgets#1")
    bad(store, lambda d: change(d, broken))
    original = store.path.read_bytes()
    queue = TaskQueue(store)
    assert queue.list() == [kept]
    (moved,) = quarantined(store)
    assert moved.read_bytes() == original
    data = store.read()
    assert data["watcher"]["issues"] == {"acme/widgets#1": {"fingerprint": "f1"}}
    assert data["watcher"]["etags"] == {"acme/widgets:claude": '"abc"'}
    (notice,) = data["notices"]
    assert why in notice["message"] and repr(broken) in notice["message"]
    assert str(moved) in notice["message"] and "1 readable task(s)" in notice["message"]
    again = queue.submit("acme/widgets", 3, "after the repair")
    assert again is not None and again.seq > kept.seq


def test_malformed_sections_are_reset_one_by_one(store: StateStore) -> None:
    sound_state(store)

    def change(data: dict[str, Any]) -> None:
        data["paused"] = "yes"
        data["next_seq"] = "many"
        data["watcher"]["repos"]["acme/gadgets"] = "healthy"
        data["watcher"]["permissions"] = ["alice"]
        data["notices"] = [{"time": NOW, "message": "an old notice"}, "not a notice"]
        data["budget"] = {"a later version's section": True}  # unknown sections are kept as they are

    bad(store, change)
    data = store.read()
    assert data["paused"] is False
    assert data["watcher"]["repos"] == {"acme/widgets": {"last_success": NOW, "failures": 0}}
    assert "permissions" not in data["watcher"]
    assert data["budget"] == {"a later version's section": True}
    assert data["notices"][0]["message"] == "an old notice"
    message = data["notices"][-1]["message"]
    assert "paused is 'yes'" in message and "and 2 more" in message
    assert len(data["tasks"]) == 2
    assert data["next_seq"] == 3  # new tasks still queue behind the kept ones
    assert len(quarantined(store)) == 1


def test_tasks_that_are_not_an_object_keep_the_rest(store: StateStore) -> None:
    sound_state(store)
    bad(store, lambda d: d.update(tasks=[1, 2]))
    data = store.read()
    assert data["tasks"] == {} and data["watcher"]["etags"] == {"acme/widgets:claude": '"abc"'}
    assert "tasks is a list, not an object" in data["notices"][-1]["message"]


def test_newer_schema_is_refused_not_quarantined(store: StateStore) -> None:
    content = json.dumps({"schema": SCHEMA_VERSION + 1, "tasks": [], "something": "new"})
    store.path.write_text(content)
    with pytest.raises(StateError, match="newer than this version"), store.transaction():
        pass
    with pytest.raises(StateError, match=f"has schema {SCHEMA_VERSION + 1}, newer"):
        store.read()
    assert not quarantined(store)
    assert store.path.read_text() == content


def test_an_unreadable_path_is_one_error_not_a_quarantine(store: StateStore) -> None:
    store.path.mkdir()
    with pytest.raises(StateError, match=r"cannot read the state file .*Is a directory"):
        store.read()
    assert not quarantined(store)


def test_an_indented_file_from_an_earlier_version_reads_as_is(store: StateStore) -> None:
    sound_state(store)
    data = json.loads(store.path.read_bytes())
    store.path.write_text(json.dumps(data, indent=1, sort_keys=True))
    assert store.read() == json.loads(json.dumps(data, sort_keys=True))
    assert len(TaskQueue(store).list()) == 2
    assert not quarantined(store)


def test_what_a_later_version_adds_survives_this_one(store: StateStore) -> None:
    sound_state(store)
    first = task_id(store, 1)

    def add(data: dict[str, Any]) -> None:
        data["holds"] = {"acme/widgets": {"until": NOW}}
        data["tasks"][first]["budget_usd"] = 5.0

    bad(store, add)
    queue = TaskQueue(store)
    queue.update(first, title="edited")
    queue.finish(queue.claim().id, TaskState.COMPLETED)
    data = store.read()
    assert data["holds"] == {"acme/widgets": {"until": NOW}}
    assert data["tasks"][first]["budget_usd"] == 5.0 and data["tasks"][first]["title"] == "edited"
    assert not quarantined(store)


def test_the_checked_task_shape_is_the_task_type() -> None:
    assert set(TASK_FIELDS) == {f.name for f in fields(Task)}
    assert set(REQUIRED_TASK_FIELDS) <= set(TASK_FIELDS)
    assert {s.value for s in TaskState} == TASK_STATES
    # every task the queue writes passes the check: a full record with every field set
    task = Task("widgets-1-abcdef", "acme/widgets", 1, "t", seq=1, started_at=1.0, cost_usd=0.5, num_turns=3)
    for name, value in task.to_dict().items():
        assert type(value) in TASK_FIELDS[name], name


def test_writer_killed_mid_write_leaves_previous_state(store: StateStore, tmp_path: Path) -> None:
    queue = TaskQueue(store)
    queue.submit("acme/widgets", 1, "the survivor")
    marker = tmp_path / "in-fsync"
    # The child stalls inside the write, after the temporary file has data but before the rename.
    child_code = textwrap.dedent(
        f"""
        import os, pathlib, time
        from claude_issue_solver.store.queue import TaskQueue
        from claude_issue_solver.store.state import StateStore
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
        from claude_issue_solver.store.queue import TaskQueue
        from claude_issue_solver.store.state import StateStore
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
