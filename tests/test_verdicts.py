"""The test gate judges the change, not the environment (issue #21), on the in-memory place.

Each test run is a process of the memory backend that writes JUnit XML where the repository's settings
say (``test_results:``), as a real ``check.sh`` would; the loopback GitHub serves the settings file and
receives the PR and the commit status (the memory place pushes into it).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from claude_issue_solver.config import Config
from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.github.statuses import CONTEXT
from claude_issue_solver.run.test_gate import RESULTS_DIR
from claude_issue_solver.store.outcome import TaskControl
from claude_issue_solver.store.queue import TaskQueue, TaskState
from claude_issue_solver.store.state import StateStore
from tests.fakes.memory_backend import MemoryBackend, Place, Process, edits, result_line
from tests.github_fixtures import Clock
from tests.test_pipeline import REPO, SUMMARY, World

SETTINGS = ".github/claude-issue-solver.yml"
JUNIT = "build/junit.xml"


@pytest.fixture
def world(github: FakeGitHub, gh_config: Callable[..., Config], state_dir: object) -> World:
    config = gh_config(GITHUB_REPOS=REPO, TASK_TIMEOUT="600", MAX_ATTEMPTS="2")
    clock = Clock(start=1_900_000_000.0)
    queue = TaskQueue(StateStore(config.state_file), max_concurrent=3, clock=clock)
    backend = MemoryBackend()
    backend.on_push = lambda branch, files, message: github.commit_files(REPO, branch, files, message=message)
    return World(github, config, queue, backend, clock, [])


def settings(world: World, text: str) -> None:
    world.github.commit_files(REPO, "main", {SETTINGS: text}, message="settings")


def junit(cases: dict[str, str | None]) -> bytes:
    """A pytest-shaped JUnit file: name -> None (passed) or the failure's message."""
    body = []
    for name, failure in cases.items():
        cls, _, test = name.rpartition("::")
        inner = f'<failure message="{failure}">{failure}\nat {test}</failure>' if failure else ""
        body.append(f'<testcase classname="{cls}" name="{test}" time="0.01">{inner}</testcase>')
    failures = sum(1 for f in cases.values() if f)
    return (
        '<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" '
        f'errors="0" failures="{failures}" skipped="0" tests="{len(cases)}">{"".join(body)}'
        "</testsuite></testsuites>"
    ).encode()


def check_sh(world: World, outcome: Callable[[Place], dict[str, str | None]]) -> list[Process]:
    """Every test run writes JUnit XML at JUNIT (as check.sh would) and exits 1 when a test failed."""
    seen: list[Process] = []

    def run(place: Place, process: Process) -> None:
        seen.append(process)
        cases = outcome(place)
        place.tree[JUNIT] = junit(cases)
        place.tree[".pytest_cache/v/cache/lastfailed"] = b"{}"  # what a test run leaves in the tree
        failed = [n for n, f in cases.items() if f]
        process.exit_code = 1 if failed else 0
        process.stdout = "".join(f"FAILED {n}\n" for n in failed) + f"{len(cases) - len(failed)} passed\n"

    for name in ("baseline", "test-1", "test-2", "test-3"):
        world.backend.agents[name] = run
    return seen


def fixer(world: World, round_: int, files: dict[str, str], seen: list[Process]) -> None:
    def run(place: Place, process: Process) -> None:
        seen.append(process)
        place.tree.update({p: d.encode() for p, d in files.items()})
        process.exit_code = 0
        process.stdout = result_line(f"fix {round_}", turns=3) + "\n"

    world.backend.agents[f"fix-{round_}"] = run


def statuses(world: World) -> list[dict]:
    head = world.github.repo(REPO).branch_sha("claude/issue-1")
    assert head is not None
    return world.github.statuses(REPO, head)


# A repository with one test that was failing before any change (test_old) and one that the agent's
# first attempt breaks (test_sub, fixed again in the fix round).
def outcome_of(place: Place) -> dict[str, str | None]:
    code = place.tree.get("calc.txt", b"")
    return {
        "tests.test_calc::test_add": None,
        "tests.test_calc::test_old": "AssertionError: known to be broken",
        "tests.test_calc::test_sub": "AssertionError: 5 - 3 == 8" if code == b"half\n" else None,
    }


def test_a_pre_existing_failure_is_not_blamed_and_only_the_new_one_is_fixed(world: World) -> None:
    settings(world, f"test: sh check.sh\ntest_results: {JUNIT}\n")
    runs = check_sh(world, outcome_of)
    fixes: list[Process] = []
    world.backend.agents["agent"] = edits({"calc.txt": "half\n"}, SUMMARY)
    fixer(world, 1, {"calc.txt": "good\n"}, fixes)
    task = world.task()
    outcome = world.pipeline().run(task, TaskControl())
    assert outcome is not None and outcome.state is TaskState.COMPLETED, outcome

    assert [p.spec.name for p in runs] == ["baseline", "test-1", "test-2"]
    assert len(fixes) == 1  # exactly one fix round
    prompt = fixes[0].spec.stdin.decode()
    assert "`tests.test_calc::test_sub`" in prompt and "5 - 3 == 8" in prompt
    assert "already failing before your change" in prompt and "`tests.test_calc::test_old`" in prompt
    # The new failing test is named as one to fix; the old one only as one not to.
    assert prompt.index("test_sub") < prompt.index("already failing") < prompt.index("test_old")

    pull = world.github.pulls(REPO)[0]
    assert pull["draft"] is False and not pull["title"].startswith("[tests failing]")
    body = pull["body"]
    assert "No new failures" in body
    assert "**Failing before the change too** (1" in body and "`tests.test_calc::test_old`" in body
    assert "| round 1: after Claude's change | 🔴 red: exit 1" in body and "1 passed, 2 failed" in body
    tests = world.queue.get(task.id).meta["tests"]
    assert tests["verdict"] == "known" and tests["fixes"] == 1
    assert [f["name"] for f in tests["judgement"]["known"]] == ["tests.test_calc::test_old"]

    # Neither the results file nor the tests' cache is in the commit.
    pushed = world.backend.remote["claude/issue-1"][1]
    assert set(pushed) == {"README.md", "calc.txt"} and pushed["calc.txt"] == b"good\n"
    # A commit status on the pushed head: success, with the counts.
    (status,) = statuses(world)
    assert status["context"] == CONTEXT and status["state"] == "success"
    assert status["description"] == "No new failures: 2 passed, 1 failed; 1 failing before this change too"
    assert status["target_url"].endswith("/issues/1")


def test_a_missing_test_program_is_named_and_never_fixed(world: World) -> None:
    settings(world, "test: python -m pytest\n")
    seen: list[Process] = []

    def missing(place: Place, process: Process) -> None:  # a stock Debian image: no `python`
        seen.append(process)
        process.exit_code = 127
        process.stderr = "sh: 1: python: not found\n"

    for name in ("baseline", "test-1", "test-2"):
        world.backend.agents[name] = missing
    world.backend.agents["agent"] = edits({"calc.txt": "good\n"}, SUMMARY)
    task = world.task()
    outcome = world.pipeline().run(task, TaskControl())
    assert outcome is not None and outcome.state is TaskState.COMPLETED, outcome

    assert [p.spec.name for p in seen] == ["baseline", "test-1"]
    done = world.queue.get(task.id)
    assert done.meta["tests"]["fixes"] == 0
    assert done.num_turns == 2  # one model conversation: the agent's
    pull = world.github.pulls(REPO)[0]
    assert pull["draft"] is False and not pull["title"].startswith("[tests failing]")
    assert (
        "The tests could not run here**: the test command could not run here (exit 127: python: not found)"
        in (pull["body"])
    )
    assert done.meta["tests"]["verdict"] == "not-run"
    (status,) = statuses(world)
    assert status["state"] == "error" and "python: not found" in status["description"]


def test_a_red_setup_means_the_tests_could_not_run_and_the_pr_shows_its_output(world: World) -> None:
    settings(world, "setup: pip install -e .\ntest: python3 -m pytest\n")

    def setup(place: Place, process: Process) -> None:
        process.exit_code = 1
        process.stdout = "ERROR: Could not find a version that satisfies the requirement frobnicate\n"

    def red(place: Place, process: Process) -> None:
        process.exit_code = 1
        process.stdout = "E   ModuleNotFoundError: No module named 'frobnicate'\n1 error\n"

    world.backend.agents["setup"] = setup
    for name in ("baseline", "test-1", "test-2"):
        world.backend.agents[name] = red
    world.backend.agents["agent"] = edits({"calc.txt": "good\n"}, SUMMARY)
    task = world.task()
    assert world.pipeline().run(task, TaskControl()).state is TaskState.COMPLETED  # type: ignore[union-attr]
    assert world.queue.get(task.id).meta["tests"]["fixes"] == 0
    body = world.github.pulls(REPO)[0]["body"]
    assert "setup failed, so the tests could not run" in body
    assert "<details><summary>Setup's output (setup, red)</summary>" in body and "frobnicate" in body


def test_what_setup_and_the_tests_made_in_the_tree_is_never_committed(world: World) -> None:
    settings(world, "setup: python3 -m venv .venv && npm ci\ntest: sh check.sh\n")

    def setup(place: Place, process: Process) -> None:
        for n in range(300):  # a virtualenv and node_modules made in the tree, not ignored
            place.tree[f".venv/lib/python3.11/site-packages/pkg{n}.py"] = b"x = 1\n"
            place.tree[f"node_modules/dep{n}/index.js"] = b"module.exports = 1\n"
        place.tree["build.log"] = b"installed\n"
        process.exit_code = 0

    def green(place: Place, process: Process) -> None:
        place.tree["coverage/.last_run.json"] = b"{}"  # a test run's product
        process.exit_code = 0
        process.stdout = "3 passed\n"

    world.backend.agents["setup"] = setup
    for name in ("baseline", "test-1"):
        world.backend.agents[name] = green
    world.backend.agents["agent"] = edits({"calc.txt": "good\n", "docs/new.md": "# new\n"}, SUMMARY)
    task = world.task()
    assert world.pipeline().run(task, TaskControl()).state is TaskState.COMPLETED  # type: ignore[union-attr]

    pushed = world.backend.remote["claude/issue-1"][1]
    assert set(pushed) == {"README.md", "calc.txt", "docs/new.md"}  # the memory place's README
    assert set(world.github.repo(REPO).git("ls-tree", "-r", "--name-only", "claude/issue-1").split()) == {
        "README.md",
        "calc.txt",
        "docs/new.md",
        SETTINGS,
    }
    body = world.github.pulls(REPO)[0]["body"]
    assert (
        "Not committed: `.venv/`, `build.log`, `coverage/`, `node_modules/` — made in the tree by setup"
        in body
    )
    (status,) = statuses(world)
    assert status["state"] == "success" and status["description"] == "Tests pass"


def test_ignored_products_are_left_out_without_a_word(world: World) -> None:
    settings(world, "setup: make deps\ntest: sh check.sh\n")

    def setup(place: Place, process: Process) -> None:
        place.tree["vendor/lib.py"] = b"x = 1\n"
        place.ignored.add("vendor")
        process.exit_code = 0

    def green(place: Place, process: Process) -> None:
        process.exit_code = 0

    world.backend.agents["setup"] = setup
    for name in ("baseline", "test-1"):
        world.backend.agents[name] = green
    world.backend.agents["agent"] = edits({"calc.txt": "good\n"}, SUMMARY)
    task = world.task()
    assert world.pipeline().run(task, TaskControl()).state is TaskState.COMPLETED  # type: ignore[union-attr]
    assert set(world.backend.remote["claude/issue-1"][1]) == {"README.md", "calc.txt"}
    assert "Not committed" not in world.github.pulls(REPO)[0]["body"]


def test_an_implausibly_large_commit_is_refused_not_pushed(
    github: FakeGitHub, gh_config: Callable[..., Config], state_dir: object
) -> None:
    config = gh_config(GITHUB_REPOS=REPO, COMMIT_MAX_FILES="50")
    world = World(
        github,
        config,
        TaskQueue(StateStore(config.state_file), max_concurrent=3, clock=Clock(start=1_900_000_000.0)),
        MemoryBackend(),
        Clock(start=1_900_000_000.0),
        [],
    )
    world.backend.agents["agent"] = edits({f"gen/file{n}.txt": "x\n" for n in range(60)}, SUMMARY)
    task = world.task()
    outcome = world.pipeline().run(task, TaskControl())
    assert outcome is not None and outcome.state is TaskState.FAILED
    assert "nothing was pushed: the change holds 60 changed files, more than COMMIT_MAX_FILES=50" in (
        outcome.error or ""
    )
    assert "claude/issue-1" not in world.backend.remote and world.github.pulls(REPO) == []
    assert any("COMMIT_MAX_FILES=50" in c for c in world.comments(task))


def test_without_per_test_results_a_red_baseline_asks_for_no_fix(world: World) -> None:
    settings(world, "test: sh test.sh\n")
    for name in ("baseline", "test-1", "test-2"):

        def red(place: Place, process: Process) -> None:
            process.exit_code = 1
            process.stdout = "FAIL something\n"

        world.backend.agents[name] = red
    world.backend.agents["agent"] = edits({"calc.txt": "good\n"}, SUMMARY)
    task = world.task()
    assert world.pipeline().run(task, TaskControl()).state is TaskState.COMPLETED  # type: ignore[union-attr]
    assert world.queue.get(task.id).meta["tests"]["fixes"] == 0
    pull = world.github.pulls(REPO)[0]
    assert pull["draft"] is False and "cannot be compared" in pull["body"]
    (status,) = statuses(world)
    assert status["state"] == "failure"


def test_the_detected_pytest_is_asked_for_junit_xml(world: World) -> None:
    world.github.commit_files(
        REPO, "main", {"pyproject.toml": "[project]\nname='w'\n", "tests/test_w.py": "def test(): pass\n"}
    )
    seen: list[Process] = []

    def pytest_run(place: Place, process: Process) -> None:
        seen.append(process)
        command = process.spec.argv[-1]
        path = command.rsplit("--junitxml=", 1)[1]
        place.tree[path] = junit({"tests.test_w::test": None, "tests.test_w::test_b": None})
        process.exit_code = 0

    for name in ("baseline", "test-1"):
        world.backend.agents[name] = pytest_run
    world.backend.agents["agent"] = edits({"w.py": "x = 1\n"}, SUMMARY)
    task = world.task()
    assert world.pipeline().run(task, TaskControl()).state is TaskState.COMPLETED  # type: ignore[union-attr]
    assert seen[0].spec.argv[-1] == f"python3 -m pytest --junitxml={RESULTS_DIR}/baseline.xml"
    assert seen[1].spec.argv[-1] == f"python3 -m pytest --junitxml={RESULTS_DIR}/test-1.xml"
    assert set(world.backend.remote["claude/issue-1"][1]) == {"README.md", "w.py"}
    body = world.github.pulls(REPO)[0]["body"]
    assert "🟢 green" in body and "2 passed, 0 failed" in body
    assert "no setup command was given, so the tests run with what the image has" in body
    (status,) = statuses(world)
    assert status["description"] == "Tests pass: 2 passed, 0 failed"
