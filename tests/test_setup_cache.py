"""The setup cache's policy on the in-memory place: the key, a miss that saves, a hit that skips setup,
an invalidated key, a red setup, SETUP_CACHE=false, and a daemon that dies at each step of it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import yaml

from claude_issue_solver.backends.base import BackendError
from claude_issue_solver.config import Config
from claude_issue_solver.run.repo_settings import (
    SETTINGS_PATH,
    SETUP_INPUTS,
    RepoSettingsError,
    parse_settings,
)
from claude_issue_solver.run.test_gate import NOT_FROM_DEFAULT, setup_key
from claude_issue_solver.store.outcome import TaskControl
from claude_issue_solver.store.queue import Task, TaskState
from tests.fakes.memory_backend import Crash, MemoryBackend, MemoryWorkspace, Place, Process, edits
from tests.test_pipeline import REPO, SUMMARY, World
from tests.test_pipeline import world as world  # the fixture
from tests.test_test_gate import settings

SETTINGS = "setup: ./install.sh\ntest: sh test.sh\n"
LOCK = "requirements.txt"


def repository(world: World, **files: str) -> None:
    """The default branch the memory place checks out: a README and ``files``."""
    tree = {"README.md": b"# r\n", **{k: v.encode() for k, v in files.items()}}
    world.backend.remote["main"] = (f"sha-{sorted(files.items())}", tree)


def install(world: World, *, ok: bool = True) -> list[Process]:
    """``setup`` writes its dependencies into the tree (``.deps/``, ignored); the tests need them."""
    setups: list[Process] = []

    def setup(place: Place, process: Process) -> None:
        setups.append(process)
        place.tree[".deps/lib.txt"] = b"installed\n"
        process.exit_code = 0 if ok else 1
        process.stdout = "installed 1 package\n" if ok else "no such package\n"

    def tests(place: Place, process: Process) -> None:
        ok = place.tree.get(".deps/lib.txt") == b"installed\n"
        process.exit_code = 0 if ok else 1
        process.stdout = "1 passed\n" if ok else "ModuleNotFoundError: lib\n"

    world.backend.agents["setup"] = setup
    for name in ("baseline", "test-1", "test-2"):
        world.backend.agents[name] = tests
    world.backend.agents["agent"] = edits({"fix.txt": "fixed\n"}, SUMMARY)
    return setups


def run(world: World) -> Task:
    task = world.task()
    outcome = world.pipeline().run(task, TaskControl())
    assert outcome is not None and outcome.state is TaskState.COMPLETED, outcome
    return world.record(task, outcome)


def test_the_key_is_the_command_and_the_dependency_files_present() -> None:
    assert LOCK in SETUP_INPUTS and SETTINGS_PATH in SETUP_INPUTS and "uv.lock" in SETUP_INPUTS
    backend = MemoryBackend()
    workspace = MemoryWorkspace("t", "memory-t", REPO, 1, "claude/issue-1", "sha")
    files = {"README.md": b"# r\n", LOCK: b"click==8\n", "src/x.py": b"x\n"}

    def key(command: str, **changes: bytes) -> str:
        tree = {**files, **changes}
        backend.places["t"] = Place(None, "sha", tree, dict(tree), "sha")  # type: ignore[arg-type]
        return setup_key(backend, workspace, command)

    first = key("pip install -r requirements.txt")
    assert len(first) == 64 and first == key("pip install -r requirements.txt")
    assert key("pip install -r requirements.txt", **{"src/x.py": b"changed\n"}) == first  # not an input
    assert key("pip install -r requirements.txt", **{LOCK: b"click==9\n"}) != first
    assert key("pip install -r requirements.txt", **{"uv.lock": b"v\n"}) != first  # one more input
    assert key("pip install .") != first


def test_the_key_includes_the_repository() -> None:
    """Two repositories with the same setup command and lock files never share a saved setup."""
    backend = MemoryBackend()
    tree = {"README.md": b"# r\n", LOCK: b"click==8\n"}
    backend.places["t"] = Place(None, "sha", tree, dict(tree), "sha")  # type: ignore[arg-type]

    def key(repo: str) -> str:
        return setup_key(backend, MemoryWorkspace("t", "memory-t", repo, 1, "claude/issue-1", "sha"), "make")

    assert key("acme/widgets") != key("other/widgets")
    assert key("acme-corp/widgets") != key("acme/corp-widgets")
    assert key("Acme/Widgets") == key("acme/widgets")  # GitHub's names are case-insensitive


def on_earlier_commits(world: World, task: Task) -> None:
    """The task's branch exists with an earlier run's commit on top of main (a retry, a follow-up)."""
    _, files = world.backend.remote["main"]
    branch = f"claude/issue-{task.issue_number}"
    world.backend.remote[branch] = ("sha-agent-commit", {**files, "planted.txt": b"by an earlier run\n"})


def test_a_setup_on_a_branch_with_earlier_commits_is_not_saved(world: World) -> None:
    settings(world, SETTINGS)
    repository(world, **{LOCK: "lib==1\n"})
    setups = install(world)
    task = world.task()
    on_earlier_commits(world, task)
    outcome = world.pipeline().run(task, TaskControl())
    done = world.record(task, outcome)
    assert done.state is TaskState.COMPLETED, done.error
    cache = done.meta["tests"]["cache"]
    assert cache["state"] == "not saved" and cache["detail"] == NOT_FROM_DEFAULT
    assert world.backend.setups == {} and "save_setup" not in world.backend.calls and len(setups) == 1
    assert done.meta["from_default"] is False
    assert f"setup cache: not saved: {NOT_FROM_DEFAULT}" in world.log_text(done)

    # A task of the default branch saves; a later one on earlier commits restores it (same key: the
    # same repository, command and dependency files, and what it holds came from the default branch).
    first = run(world)
    assert first.meta["tests"]["cache"]["state"] == "saved" and first.meta["from_default"] is True
    again = world.task()
    on_earlier_commits(world, again)
    restored = world.record(again, world.pipeline().run(again, TaskControl()))
    assert restored.meta["tests"]["cache"]["state"] == "hit" and len(setups) == 2


def test_a_crash_during_setup_on_earlier_commits_still_does_not_save(world: World) -> None:
    """The workspace found again after a restart says where it started, as the first one did."""
    settings(world, SETTINGS)
    setups = install(world)
    hanging = world.backend.agents["setup"]

    def slow(place: Place, process: Process) -> None:
        hanging(place, process)
        process.exit_code = None

    world.backend.agents["setup"] = slow
    world.backend.crash_at("poll_process")
    task = world.task()
    on_earlier_commits(world, task)
    with pytest.raises(Crash):
        world.pipeline().run(task, TaskControl())
    world.backend.finish(task.id, "setup", stdout="installed\n")
    done = resume(world, task)
    assert len(setups) == 1 and world.backend.setups == {}
    assert done.meta["tests"]["cache"] == {
        "key": done.meta["tests"]["cache"]["key"],
        "state": "not saved",
        "detail": NOT_FROM_DEFAULT,
    }


def test_a_miss_runs_and_saves_setup_and_the_next_task_restores_it(world: World) -> None:
    settings(world, SETTINGS)
    repository(world, **{LOCK: "lib==1\n"})
    setups = install(world)

    first = run(world)
    assert len(setups) == 1
    cache = first.meta["tests"]["cache"]
    assert cache["state"] == "saved" and cache["detail"].startswith("memory setup ")
    assert world.backend.setups == {(REPO, cache["key"]): {".deps/lib.txt": b"installed\n"}}
    assert "nothing saved under" in world.log_text(first) and "setup cache: saved as" in world.log_text(first)

    second = run(world)
    assert len(setups) == 1  # not run again
    tests = second.meta["tests"]
    assert tests["cache"]["state"] == "hit" and tests["cache"]["key"] == cache["key"]
    assert tests["setup"]["cached"] == cache["detail"] and tests["setup"]["exit_code"] == 0
    assert tests["baseline"]["exit_code"] == 0 and tests["verdict"] == "green"  # the tree had .deps/
    assert f"setup: restored from the cache of {cache['detail']}" in world.log_text(second)
    body = world.github.pulls(REPO)[-1]["body"]
    assert f"- Setup: `./install.sh` — 🟢 restored from the cache of {cache['detail']}, not run" in body


def test_a_changed_lock_file_misses_and_saves_anew(world: World) -> None:
    settings(world, SETTINGS)
    repository(world, **{LOCK: "lib==1\n"})
    setups = install(world)
    first = run(world)
    repository(world, **{LOCK: "lib==2\n"})
    second = run(world)
    assert len(setups) == 2
    old, new = first.meta["tests"]["cache"], second.meta["tests"]["cache"]
    assert new["state"] == "saved" and new["key"] != old["key"]
    assert not second.meta["tests"]["setup"].get("cached")


def test_setup_inputs_add_a_lock_file_in_a_subdirectory_to_the_key(world: World) -> None:
    """A monorepo's frontend/package-lock.json is not at the root: the repository names it."""
    settings(world, SETTINGS + "setup_inputs: [frontend/package-lock.json]\n")
    repository(world, **{LOCK: "lib==1\n", "frontend/package-lock.json": "{}\n"})
    setups = install(world)
    first = run(world)
    assert first.meta["tests"]["plan"]["setup_inputs"] == ["frontend/package-lock.json"]
    run(world)
    assert len(setups) == 1  # unchanged: restored
    repository(world, **{LOCK: "lib==1\n", "frontend/package-lock.json": '{"left-pad": "1"}\n'})
    third = run(world)
    assert len(setups) == 2 and third.meta["tests"]["cache"]["key"] != first.meta["tests"]["cache"]["key"]


@pytest.mark.parametrize(
    "value", ["frontend/package-lock.json", ["/etc/passwd"], ["../x"], ["a//b"], [3], ["ok", ""]]
)
def test_setup_inputs_must_be_relative_file_paths(value: object) -> None:
    text = yaml.safe_dump({"test": "make test", "setup_inputs": value})
    with pytest.raises(RepoSettingsError, match="setup_inputs: must be a list of file paths relative"):
        parse_settings(text)


def test_a_red_setup_is_not_saved(world: World) -> None:
    settings(world, SETTINGS)
    setups = install(world, ok=False)
    task = world.task()
    world.pipeline().run(task, TaskControl())
    cache = world.queue.get(task.id).meta["tests"]["cache"]
    assert cache == {"key": cache["key"], "state": "not saved", "detail": "setup was red"}
    assert world.backend.setups == {} and "save_setup" not in world.backend.calls and len(setups) == 1


def test_a_failed_save_is_logged_and_the_task_goes_on(world: World) -> None:
    settings(world, SETTINGS)
    install(world)
    world.backend.fail_next("save_setup", BackendError("the disk is full"))
    task = run(world)
    cache = task.meta["tests"]["cache"]
    assert cache["state"] == "not saved" and "the disk is full" in cache["detail"]
    assert "saving it failed: the disk is full (the task goes on)" in world.log_text(task)


def test_an_unreadable_cache_is_a_miss(world: World) -> None:
    settings(world, SETTINGS)
    setups = install(world)
    world.backend.fail_next("restore_setup", BackendError("the Docker daemon refused a request"))
    task = run(world)
    assert len(setups) == 1 and task.meta["tests"]["cache"]["state"] == "saved"
    assert "restoring failed (the Docker daemon refused a request); running setup" in world.log_text(task)


def test_setup_cache_off_runs_setup_every_time(world: World, gh_config: Callable[..., Config]) -> None:
    world.config = gh_config(GITHUB_REPOS=REPO, TASK_TIMEOUT="600", SETUP_CACHE="false")
    settings(world, SETTINGS)
    setups = install(world)
    run(world)
    second = run(world)
    assert len(setups) == 2 and world.backend.setups == {}
    assert "restore_setup" not in world.backend.calls
    assert second.meta["tests"]["cache"] == {"key": None, "state": "off", "detail": "SETUP_CACHE is off"}
    assert "setup cache: SETUP_CACHE is off" in world.log_text(second)
    assert "; SETUP_CACHE is off" in world.github.pulls(REPO)[-1]["body"]


def test_a_backend_without_a_cache_says_so(world: World) -> None:
    world.backend.caches_setup = False  # type: ignore[misc]
    settings(world, SETTINGS)
    install(world)
    task = run(world)
    assert task.meta["tests"]["cache"]["detail"] == "not cached on this backend (memory)"
    assert "restore_setup" not in world.backend.calls and "save_setup" not in world.backend.calls


def test_setup_runs_and_is_cached_without_a_test_command(world: World) -> None:
    settings(world, "setup: ./install.sh\n")  # no test: and nothing to detect
    setups = install(world)
    first = run(world)
    assert len(setups) == 1 and first.meta["tests"]["cache"]["state"] == "saved"
    assert first.meta["tests"]["baseline"] is None and first.meta["tests"]["verdict"] == "none"
    second = run(world)
    assert len(setups) == 1 and second.meta["tests"]["setup"]["cached"]
    assert "Not verified: no test command was found" in world.github.pulls(REPO)[-1]["body"]


# --- crash and resume ----------------------------------------------------------------------------------


def resume(world: World, task: Task) -> Task:
    outcome = world.pipeline().resume(world.queue.get(task.id), TaskControl())
    assert outcome is not None and outcome.state is TaskState.COMPLETED, outcome
    return world.record(task, outcome)


def test_a_crash_while_setup_runs_resumes_it_once_and_saves(world: World) -> None:
    settings(world, SETTINGS)
    setups = install(world)
    hanging = world.backend.agents["setup"]

    def slow(place: Place, process: Process) -> None:  # finishes only when the test says so
        hanging(place, process)
        process.exit_code = None

    world.backend.agents["setup"] = slow
    world.backend.crash_at("poll_process")
    task = world.task()
    with pytest.raises(Crash):
        world.pipeline().run(task, TaskControl())
    recorded = world.queue.get(task.id)
    assert recorded.meta["phase"] == "setup" and recorded.meta["tests"]["cache"]["state"] == "miss"
    world.backend.finish(task.id, "setup", stdout="installed\n")
    done = resume(world, task)
    assert len(setups) == 1  # found again by name, not started twice
    assert world.backend.calls.count("restore_setup") == 1  # a miss is not asked again
    assert done.meta["tests"]["cache"]["state"] == "saved" and done.meta["tests"]["verdict"] == "green"


def test_a_crash_before_the_save_saves_on_resume_without_running_setup_again(world: World) -> None:
    settings(world, SETTINGS)
    setups = install(world)
    world.backend.crash_at("save_setup")
    task = world.task()
    with pytest.raises(Crash):
        world.pipeline().run(task, TaskControl())
    tests = world.queue.get(task.id).meta["tests"]
    assert tests["cache"]["state"] == "saving" and tests["setup"]["exit_code"] == 0
    done = resume(world, task)
    assert len(setups) == 1 and done.meta["tests"]["cache"]["state"] == "saved"
    assert list(world.backend.setups) == [(REPO, done.meta["tests"]["cache"]["key"])]


def test_a_crash_while_restoring_restores_on_resume_and_never_runs_setup(world: World) -> None:
    settings(world, SETTINGS)
    setups = install(world)
    run(world)
    world.backend.crash_at("restore_setup")
    task = world.task()
    with pytest.raises(Crash):
        world.pipeline().run(task, TaskControl())
    assert world.queue.get(task.id).meta["tests"]["cache"]["state"] == "restoring"
    done = resume(world, task)
    assert len(setups) == 1 and done.meta["tests"]["cache"]["state"] == "hit"
    assert done.meta["tests"]["setup"]["cached"]
