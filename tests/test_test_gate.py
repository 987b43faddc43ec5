"""Verified pull requests on the in-memory place: setup, baseline, test rounds, fix rounds, the PR's report.

The repository's settings are read from the loopback GitHub's default branch (its contents API); the
test runs are processes of the memory backend whose exit code depends on the tree the agent left.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from claude_issue_solver.config import Config
from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.github.client import GitHubClient
from claude_issue_solver.run.repo_settings import (
    RepoSettingsError,
    TestPlan,
    detect,
    load_plan,
    parse_settings,
)
from claude_issue_solver.run.test_gate import FAILING_OUTPUT_LIMIT, StepResult, failing_output, fix_prompt
from claude_issue_solver.store import budget
from claude_issue_solver.store.outcome import TaskControl
from claude_issue_solver.store.queue import TaskState
from tests.fakes.memory_backend import Crash, Place, Process, edits, result_line
from tests.test_pipeline import REPO, SUMMARY, World
from tests.test_pipeline import world as world  # the fixture

SETTINGS = ".github/claude-issue-solver.yml"


def settings(world: World, text: str) -> None:
    world.github.commit_files(REPO, "main", {SETTINGS: text}, message="settings")


def suite(
    world: World, *, green_when: Callable[[Place], bool], hang: set[str] = frozenset()
) -> list[Process]:
    """Every setup/test process: green when ``green_when(tree)``; those named in ``hang`` never end."""
    seen: list[Process] = []

    def run(place: Place, process: Process) -> None:
        seen.append(process)
        if process.spec.name in hang:
            return
        # The baseline is green: the agent's first attempt is what breaks the tests (a red baseline
        # with no per-test results gets no fix round: the change cannot be blamed).
        ok = process.spec.name in ("setup", "baseline") or green_when(place)
        process.exit_code = 0 if ok else 1
        process.stdout = "3 passed\n" if ok else "FAILED test_calc: expected 5, got 6\n1 failed, 2 passed\n"

    for name in ("setup", "baseline", "test-1", "test-2", "test-3"):
        world.backend.agents[name] = run
    return seen


def fixer(world: World, round_: int, text: str, seen: list[Process]) -> None:
    def run(place: Place, process: Process) -> None:
        seen.append(process)
        place.tree["calc.txt"] = text.encode()
        process.exit_code = 0
        process.stdout = result_line(f"fix {round_}", turns=3) + "\n"

    world.backend.agents[f"fix-{round_}"] = run


def good(place: Place) -> bool:
    return place.tree.get("calc.txt") == b"good\n"


def first_attempt(world: World) -> None:
    world.backend.agents["agent"] = edits({"calc.txt": "half\n"}, SUMMARY)


# --- the loop ------------------------------------------------------------------------------------------


def test_green_in_the_second_round_opens_a_normal_pr(world: World) -> None:
    settings(world, "setup: ./install.sh\ntest: sh test.sh\ntest_timeout: 60\n")
    runs = suite(world, green_when=good)
    fixes: list[Process] = []
    first_attempt(world)
    fixer(world, 1, "good\n", fixes)
    task = world.task()
    outcome = world.pipeline().run(task, TaskControl())
    assert outcome is not None and outcome.state is TaskState.COMPLETED, outcome

    assert [p.spec.name for p in runs] == ["setup", "baseline", "test-1", "test-2"]
    assert all(dict(p.spec.env) == {} for p in runs)  # no GitHub (nor Claude) credential for the tests
    assert all(p.spec.argv[:2] == ("sh", "-c") for p in runs)
    fix = fixes[0].spec
    assert fix.argv[-2:] == ("--resume", "session-1")  # the same conversation goes on
    assert b"expected 5, got 6" in fix.stdin and b"sh test.sh" in fix.stdin

    pull = world.github.pulls(REPO)[0]
    assert pull["draft"] is False and pull["title"] == "Add the widget fix"
    body = pull["body"]
    assert "- Command: `sh test.sh` (the repository's .github/claude-issue-solver.yml)" in body
    assert "- Setup: `./install.sh` — 🟢" in body
    assert "| before the change (baseline) | 🟢 green" in body and "already red" not in body
    assert "| round 1: after Claude's change | 🔴 red: exit 1" in body
    assert "| round 2: after fix round 1 | 🟢 green" in body
    assert "<details><summary>Last output (test-2)</summary>" in body

    done = world.queue.get(task.id)
    assert done.num_turns == 5 and done.cost_usd == pytest.approx(0.02)  # 2 + 3 turns, both runs' cost
    # The day's spend (DAILY_BUDGET_USD) books the fix round as a run of its own, not over the first.
    ledger = world.queue.store.read()["budget"]
    assert budget.spent_today(ledger, now=world.clock()) == pytest.approx(0.02)
    tests = done.meta["tests"]
    assert tests["verdict"] == "green" and tests["fixes"] == 1 and len(tests["rounds"]) == 2
    assert world.backend.remote["claude/issue-1"][1]["calc.txt"] == b"good\n"
    log = world.log_text(task)
    assert "tests: 'sh test.sh' from the repository's" in log and "continuing session session-1" in log


def test_still_red_after_every_round_opens_a_draft(world: World) -> None:
    settings(world, "test: sh test.sh\n")
    suite(world, green_when=good)
    fixes: list[Process] = []
    first_attempt(world)
    fixer(world, 1, "worse\n", fixes)
    fixer(world, 2, "still bad\n", fixes)
    task = world.task()
    outcome = world.pipeline().run(task, TaskControl())
    assert outcome is not None and outcome.state is TaskState.COMPLETED, outcome
    assert len(fixes) == 2  # TEST_FIX_ROUNDS defaults to 2
    pull = world.github.pulls(REPO)[0]
    assert pull["draft"] is True and pull["title"].startswith("[tests failing] ")
    assert "tests do not pass" in pull["body"] and "| round 3: after fix round 2 | 🔴" in pull["body"]
    assert world.queue.get(task.id).meta["tests"]["verdict"] == "red"


def test_on_red_tests_comment_pushes_and_comments_without_a_pr(
    world: World, gh_config: Callable[..., Config]
) -> None:
    world.config = gh_config(GITHUB_REPOS=REPO, ON_RED_TESTS="comment", TEST_FIX_ROUNDS="0")
    settings(world, "test: sh test.sh\n")
    suite(world, green_when=good)
    first_attempt(world)
    task = world.task()
    outcome = world.pipeline().run(task, TaskControl())
    assert outcome is not None and outcome.state is TaskState.FAILED
    assert "ON_RED_TESTS=comment" in (outcome.error or "")
    assert world.github.pulls(REPO) == []
    assert "claude/issue-1" in world.backend.remote  # the work is not lost
    comment = world.comments(task)[0]
    assert "no pull request was opened" in comment and "| round 1: after Claude's change | 🔴" in comment


def test_a_hanging_test_is_killed_at_its_timeout_and_counts_as_red(world: World) -> None:
    settings(world, "test: sh test.sh\ntest_timeout: 30\n")
    runs = suite(world, green_when=lambda place: True, hang={"test-1"})
    world.backend.agents["agent"] = edits({"calc.txt": "good\n"}, SUMMARY)
    fixes: list[Process] = []
    fixer(world, 1, "good\n", fixes)
    world.backend.on_poll(lambda: world.clock.advance(10))
    task = world.task()
    outcome = world.pipeline().run(task, TaskControl())
    assert outcome is not None and outcome.state is TaskState.COMPLETED, outcome
    hung = next(p for p in runs if p.spec.name == "test-1")
    assert hung.killed
    tests = world.queue.get(task.id).meta["tests"]
    assert tests["rounds"][0]["timed_out"] is True and tests["rounds"][1]["exit_code"] == 0
    assert b"timed out and was killed" in fixes[0].spec.stdin
    assert (
        "| round 1: after Claude's change | 🔴 timed out after 30s (killed)"
        in world.github.pulls(REPO)[0]["body"]
    )


def test_the_task_timeout_bounds_the_whole_loop(world: World, gh_config: Callable[..., Config]) -> None:
    world.config = gh_config(GITHUB_REPOS=REPO, TASK_TIMEOUT="100", TEST_TIMEOUT="600")
    settings(world, "test: sh test.sh\n")
    suite(world, green_when=good, hang={"test-1"})
    first_attempt(world)
    fixes: list[Process] = []
    fixer(world, 1, "good\n", fixes)
    world.backend.on_poll(lambda: world.clock.advance(40))
    task = world.task()
    outcome = world.pipeline().run(task, TaskControl())
    assert outcome is not None and outcome.state is TaskState.COMPLETED, outcome
    assert fixes == []  # no time was left to ask
    tests = world.queue.get(task.id).meta["tests"]
    assert tests["rounds"][0]["timed_out"] and "TASK_TIMEOUT" in tests["note"]
    assert world.github.pulls(REPO)[0]["draft"] is True


def test_a_broken_settings_file_fails_the_task_quoting_the_problem(world: World) -> None:
    settings(world, "test: [unclosed\n")
    first_attempt(world)
    task = world.task()
    outcome = world.pipeline().run(task, TaskControl())
    assert outcome is not None and outcome.state is TaskState.FAILED
    comment = world.comments(task)[0]
    assert ".github/claude-issue-solver.yml is not valid YAML" in comment
    assert "Traceback" not in comment and "prepare" not in world.backend.calls
    # The file is at fault, not Claude: the comment says the settings cannot be used, and what to fix.
    assert "could not finish" not in comment
    assert (
        "the repository's settings cannot be used" in comment
        and "Fix the file on the default branch" in comment
    )


def test_without_tests_the_pr_says_it_is_not_verified(world: World) -> None:
    first_attempt(world)
    task = world.task()
    assert world.pipeline().run(task, TaskControl()).state is TaskState.COMPLETED  # type: ignore[union-attr]
    assert "Not verified: no test command was found" in world.github.pulls(REPO)[0]["body"]
    assert "tests: no test command found" in world.log_text(task)
    assert not [c for c in world.backend.calls if c == "start_process"][1:]  # the agent only


def test_the_daemon_wide_test_command_applies_without_a_file(
    world: World, gh_config: Callable[..., Config]
) -> None:
    world.config = gh_config(GITHUB_REPOS=REPO, TEST_COMMAND="make check", SETUP_COMMAND="make deps")
    runs = suite(world, green_when=good)
    world.backend.agents["agent"] = edits({"calc.txt": "good\n"}, SUMMARY)
    task = world.task()
    assert world.pipeline().run(task, TaskControl()).state is TaskState.COMPLETED  # type: ignore[union-attr]
    assert [p.spec.argv[2] for p in runs] == ["make deps", "make check", "make check"]
    assert "(the daemon's TEST_COMMAND)" in world.github.pulls(REPO)[0]["body"]


def test_the_checklist_shows_each_step(world: World) -> None:
    settings(world, "setup: ./install.sh\ntest: sh test.sh\n")
    bodies: list[str] = []
    suite(world, green_when=good)
    world.backend.agents["agent"] = edits({"calc.txt": "good\n"}, SUMMARY)
    task = world.task()
    pipeline = world.pipeline()
    original = pipeline.comment

    def spy(t, body: str) -> None:  # type: ignore[no-untyped-def]
        bodies.append(body)
        original(t, body)

    pipeline.comment = spy  # type: ignore[method-assign]
    assert pipeline.run(task, TaskControl()).state is TaskState.COMPLETED  # type: ignore[union-attr]
    seen = "\n".join(bodies)
    assert "- [ ] setup" in seen and "- [x] setup — green" in seen
    assert "- [x] tests before the change (baseline) — green" in seen
    assert "- [ ] agent running" in seen and "- [ ] tests (round 1)" in seen


# --- crash and resume ----------------------------------------------------------------------------------


def test_a_crash_during_a_fix_round_resumes_it_without_a_second_start(world: World) -> None:
    settings(world, "test: sh test.sh\n")
    suite(world, green_when=good)
    first_attempt(world)
    fixes: list[Process] = []

    def slow_fix(place: Place, process: Process) -> None:  # finishes only when the test says so
        fixes.append(process)
        place.tree["calc.txt"] = b"good\n"

    world.backend.agents["fix-1"] = slow_fix
    task = world.task()
    polls = {"n": 0}

    def crash_on_fix() -> None:
        polls["n"] += 1
        if world.queue.get(task.id).meta.get("phase") == "fixing":
            raise Crash("daemon killed while Claude fixes")

    world.backend.on_poll(crash_on_fix)
    with pytest.raises(Crash):
        world.pipeline().run(task, TaskControl())
    recorded = world.queue.get(task.id)
    assert recorded.meta["phase"] == "fixing" and recorded.meta["tests"]["fixes"] == 0
    world.backend._on_poll.clear()
    world.backend.finish(task.id, "fix-1", stdout=result_line("fixed", turns=1) + "\n")
    outcome = world.pipeline().resume(recorded, TaskControl())
    assert outcome is not None and outcome.state is TaskState.COMPLETED, outcome
    assert len(fixes) == 1  # found again by name, not started twice
    assert world.queue.get(task.id).meta["tests"]["verdict"] == "green"
    assert world.github.pulls(REPO)[0]["draft"] is False


def test_a_crash_during_the_baseline_resumes_then_starts_the_agent(world: World) -> None:
    settings(world, "test: sh test.sh\n")
    suite(world, green_when=good, hang={"baseline"})
    world.backend.agents["agent"] = edits({"calc.txt": "good\n"}, SUMMARY)
    world.backend.crash_at("poll_process")
    task = world.task()
    with pytest.raises(Crash):
        world.pipeline().run(task, TaskControl())
    assert world.queue.get(task.id).meta["phase"] == "baseline"
    world.backend.finish(task.id, "baseline", exit_code=1, stdout="1 failed\n")
    outcome = world.pipeline().resume(world.queue.get(task.id), TaskControl())
    assert outcome is not None and outcome.state is TaskState.COMPLETED, outcome
    tests = world.queue.get(task.id).meta["tests"]
    assert tests["baseline"]["exit_code"] == 1 and tests["verdict"] == "green"


def test_cancel_during_the_tests_cancels_the_task(world: World) -> None:
    settings(world, "test: sh test.sh\n")
    suite(world, green_when=good, hang={"test-1"})
    world.backend.agents["agent"] = edits({"calc.txt": "good\n"}, SUMMARY)
    control = TaskControl()
    task = world.task()
    world.backend.on_poll(
        lambda: control.cancel.set() if world.queue.get(task.id).meta.get("phase") == "tests" else None
    )
    outcome = world.pipeline().run(task, control)
    assert outcome is not None and outcome.state is TaskState.CANCELLED
    assert world.github.pulls(REPO) == [] and task.id not in world.backend.places


# --- the settings file and detection -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("test: [unclosed\n", "is not valid YAML"),
        ("- test\n", "must be a mapping"),
        ("test: pytest\ntests: pytest\nrun: x\n", "unknown key(s) run, tests"),
        ("test: 5\n", "test: must be a non-empty shell command"),
        ("test: pytest\ntest_timeout: soon\n", "test_timeout: must be a whole number"),
        ("test: pytest\ntest_timeout: 0\n", "test_timeout: must be a whole number"),
        ("setup: !!python/object/apply:os.system ['id']\n", "is not valid YAML"),  # safe_load refuses it
    ],
)
def test_settings_problems_are_named(text: str, problem: str) -> None:
    with pytest.raises(RepoSettingsError, match=None) as caught:
        parse_settings(text)
    assert problem in str(caught.value)


def test_an_empty_settings_file_is_no_settings() -> None:
    assert parse_settings("# nothing yet\n") == {}


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"pyproject.toml": "[project]\n", "tests/test_a.py": "def test(): pass\n"}, "python3 -m pytest"),
        ({"pytest.ini": "[pytest]\n"}, "python3 -m pytest"),
        ({"pyproject.toml": "[project]\n"}, None),  # a package without tests
        ({"package.json": json.dumps({"scripts": {"test": "node --test"}})}, "npm test"),
        (
            {"package.json": json.dumps({"scripts": {"test": 'echo "Error: no test specified" && exit 1'}})},
            None,
        ),
        ({"go.mod": "module x\n"}, "go test ./..."),
        ({"Cargo.toml": "[package]\n"}, "cargo test"),
        ({"Makefile": "all:\n\ttrue\ntest: all\n\t./t.sh\n"}, "make test"),
        ({"Makefile": "all:\n\ttrue\n"}, None),
        ({}, None),
    ],
)
def test_detection(
    github: FakeGitHub, gh_config: Callable[..., Config], files: dict[str, str], expected: str | None
) -> None:
    github.create_repo("acme/probe", {"README.md": "# probe\n", **files})
    client = GitHubClient(gh_config(GITHUB_REPOS="acme/probe"))
    found = detect(client, "acme/probe", "main")
    assert (found[0] if found else None) == expected
    plan = load_plan(client, "acme/probe", "main", gh_config(GITHUB_REPOS="acme/probe"))
    assert plan.test == expected and plan.source.startswith("detected" if expected else "no test command")


def test_the_file_is_read_from_the_default_branch_only(
    github: FakeGitHub, gh_config: Callable[..., Config]
) -> None:
    github.commit_files(REPO, "claude/issue-1", {SETTINGS: "test: 'true'\n"}, message="the agent's edit")
    config = gh_config(GITHUB_REPOS=REPO)
    plan = load_plan(GitHubClient(config), REPO, "main", config)
    assert plan == TestPlan(None, None, 600, "no test command found")


def test_the_failing_output_is_capped_and_redacted() -> None:
    from claude_issue_solver.logs import REDACTOR

    REDACTOR.add("s3cr3t-value-123")
    long = "\n".join(f"line {n} " + "x" * 500 for n in range(100)) + "\ntoken s3cr3t-value-123 leaked\n"
    text = failing_output(long)
    assert len(text) <= FAILING_OUTPUT_LIMIT and "s3cr3t-value-123" not in text and text.endswith("leaked")
    prompt = fix_prompt(StepResult("test-1", 1, 2.0, False, long), "pytest", 1, 2)
    assert "s3cr3t-value-123" not in prompt and "fix round 1 of 2" in prompt


def test_a_session_that_cannot_be_continued_is_asked_again_in_a_new_one(world: World) -> None:
    settings(world, "test: sh test.sh\n")
    suite(world, green_when=good)
    first_attempt(world)

    def gone(place: Place, process: Process) -> None:  # the real CLI, when the session's files are gone
        process.exit_code, process.stdout = 1, ""
        process.stderr = "No conversation found with session ID: session-1\n"

    fresh: list[Process] = []
    world.backend.agents["fix-1"] = gone
    world.backend.agents["fix-1-new"] = fresh_fixer(fresh)
    task = world.task()
    outcome = world.pipeline().run(task, TaskControl())
    assert outcome is not None and outcome.state is TaskState.COMPLETED, outcome
    spec = fresh[0].spec
    assert "--resume" not in spec.argv
    assert (
        b"It is broken." in spec.stdin and b"expected 5, got 6" in spec.stdin
    )  # the issue, then the failure
    assert world.queue.get(task.id).meta["tests"]["verdict"] == "green"
    assert "cannot be continued here; asking in a new session" in world.log_text(task)


def fresh_fixer(seen: list[Process]) -> Callable[[Place, Process], None]:
    def run(place: Place, process: Process) -> None:
        seen.append(process)
        place.tree["calc.txt"] = b"good\n"
        process.exit_code = 0
        process.stdout = result_line("fixed anew", turns=3) + "\n"

    return run


def test_no_changes_runs_no_test_rounds(world: World) -> None:
    settings(world, "test: sh test.sh\n")
    runs = suite(world, green_when=good)
    world.backend.agents["agent"] = edits({})
    task = world.task()
    assert world.pipeline().run(task, TaskControl()).state is TaskState.COMPLETED  # type: ignore[union-attr]
    assert [p.spec.name for p in runs] == ["baseline"]
    assert "made no changes" in world.comments(task)[0]


def test_a_requeued_task_starts_its_tests_afresh(world: World) -> None:
    settings(world, "test: sh test.sh\n")
    runs = suite(world, green_when=good)
    world.backend.agents["agent"] = edits({"calc.txt": "good\n"}, SUMMARY, finish=False)
    world.backend.on_poll(
        lambda: (
            world.backend.places.clear() if world.queue.get(task.id).meta.get("phase") == "agent" else None
        )
    )
    task = world.task()
    outcome = world.pipeline().run(task, TaskControl())
    assert outcome is not None and outcome.state is TaskState.PENDING  # the workspace vanished
    world.record(task, outcome)
    world.backend._on_poll.clear()
    world.backend.agents["agent"] = edits({"calc.txt": "good\n"}, SUMMARY)
    again = world.queue.claim()
    assert again is not None
    assert world.pipeline().run(again, TaskControl()).state is TaskState.COMPLETED  # type: ignore[union-attr]
    assert [p.spec.name for p in runs] == ["baseline", "baseline", "test-1"]
    assert len(world.queue.get(task.id).meta["tests"]["rounds"]) == 1


def test_the_report_quotes_a_command_with_backticks_whole() -> None:
    from claude_issue_solver.run import messages

    plan = TestPlan(None, "test `uname` = Linux && make test", 60, "the daemon's TEST_COMMAND")
    text = messages.tests_report({"plan": plan.to_dict(), "baseline": None, "rounds": []})
    assert "- Command: `` test `uname` = Linux && make test `` (the daemon's TEST_COMMAND)" in text
    assert "| before the change (baseline) | not run |" in text
