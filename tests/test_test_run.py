"""`@claude test` on any pull request: setup and the tests on its head, no agent, no push; a commit status
and one comment with the per-test table and the coverage. In memory (the loopback GitHub and the memory
place), crashed in every phase it has; the trigger on a person's fork PR; Cobertura read safely; the
loopback GitHub's ``refs/pull/N/head`` fetched by real git."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from claude_issue_solver.backends import git as gitops
from claude_issue_solver.credentials import GitCredential
from claude_issue_solver.github.markers import is_test_request
from claude_issue_solver.github.triggers import TriggerWatcher
from claude_issue_solver.run.coverage import Coverage, CoverageError, delta_text, parse_cobertura
from claude_issue_solver.run.phases import PHASES
from claude_issue_solver.store.outcome import TaskControl
from claude_issue_solver.store.queue import Task, TaskState
from tests.fakes.memory_backend import Crash, Place, Process
from tests.test_pipeline import REPO, World
from tests.test_pipeline import world as world  # the fixture
from tests.test_task_kinds import crash_in, finish

SETTINGS = ".github/claude-issue-solver.yml"
JUNIT = b"""<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="calc" tests="3" failures="%d">
<testcase classname="calc" name="test_add"/>
<testcase classname="calc" name="test_sub">%s</testcase>
<testcase classname="calc" name="test_mul"/>
</testsuite></testsuites>
"""
COBERTURA = b'<?xml version="1.0"?><coverage line-rate="0.8" lines-covered="%d" lines-valid="10"></coverage>'


def junit(failing: bool) -> bytes:
    failure = (
        b'<failure message="sub(3, 1) returned 4, expected 2">assert 4 == 2</failure>' if failing else b""
    )
    return JUNIT % (int(failing), failure)


def fork_pr(world: World, *, broken: bool) -> int:
    """A person's pull request from their fork; the test command is the default branch's."""
    settings = "setup: make deps\ntest: sh check.sh\ntest_results: build/junit.xml\ncoverage: coverage.xml\n"
    world.github.commit_files(REPO, "main", {SETTINGS: settings, "calc.sh": "good\n"}, message="settings")
    pr = world.github.open_fork_pull(
        REPO, {"calc.sh": "broken\n" if broken else "good\n"}, title="Tidy calc", user="outsider"
    )
    number, sha = pr["number"], pr["head"]["sha"]
    _, files = world.backend.remote["main"]
    world.backend.remote[f"refs/pull/{number}/head"] = (
        sha,
        {**files, "calc.sh": b"broken\n" if broken else b"good\n"},
    )
    runs: dict[str, int] = {}

    def run(place: Place, process: Process) -> None:
        runs[process.spec.name] = runs.get(process.spec.name, 0) + 1
        if process.spec.name == "setup":
            process.exit_code, process.stdout = 0, "deps ok\n"
            return
        bad = place.tree.get("calc.sh") == b"broken\n"
        place.tree["build/junit.xml"] = junit(bad)
        place.tree["coverage.xml"] = COBERTURA % (7 if bad else 8)
        process.exit_code, process.stdout = (1, "1 failed\n") if bad else (0, "3 passed\n")

    world.backend.agents["setup"] = run
    world.backend.agents["baseline"] = run
    world.runs = runs  # type: ignore[attr-defined]
    return number


def run_task(world: World, number: int) -> Task:
    submitted = world.queue.submit(REPO, number, "Tidy calc", kind="test", meta={"requester": "maintainer"})
    assert submitted is not None
    claimed = world.queue.claim()
    assert claimed is not None and claimed.id == submitted.id
    return claimed


def statuses(world: World, number: int) -> list[dict]:
    [pr] = [p for p in world.github.pulls(REPO) if p["number"] == number]
    return world.github.statuses(REPO, pr["head"]["sha"])


@pytest.mark.parametrize("broken", [False, True])
def test_a_test_run_of_a_fork_pr_posts_a_status_and_one_table(world: World, broken: bool) -> None:
    number = fork_pr(world, broken=broken)
    task = run_task(world, number)
    finish(world, task, world.pipeline().run(task, TaskControl()))
    done = world.queue.get(task.id)
    assert done.state is TaskState.COMPLETED, done.error
    [comment] = world.comments(done)
    [status] = statuses(world, number)
    assert status["context"] == "claude-issue-solver/tests"
    assert "commit_and_push" not in world.backend.calls and world.backend.agents.get("agent") is None
    assert world.runs == {"setup": 1, "baseline": 1}  # type: ignore[attr-defined]
    assert task.id not in world.backend.places  # removed
    if broken:
        assert status["state"] == "failure" and "1 failed" in status["description"]
        assert comment.startswith("❌ Tests fail on `") and "| `calc::test_sub` | failing |" in comment
        assert (
            "sub(3, 1) returned 4, expected 2" in comment
            and "Line coverage: 70.0% (7 of 10 lines)" in comment
        )
    else:
        assert status["state"] == "success"
        assert status["description"] == "Tests pass: 3 passed, 0 failed"
        assert comment.startswith("✅ Tests pass on `") and "| test |" not in comment
        assert "Line coverage: 80.0% (8 of 10 lines)" in comment
    assert "@maintainer" in comment and "nothing was pushed" in comment


def test_new_failures_against_a_recorded_base(world: World) -> None:
    """A baseline recorded for the base commit (a green test run of a PR whose head it was) tells the
    new failure apart; coverage is compared too."""
    number = fork_pr(world, broken=True)
    main_sha = world.github.repo(REPO).branch_sha("main")
    earlier = world.queue.submit(REPO, 99, "earlier", kind="test")
    assert earlier is not None
    results = {"passed": 2, "failed": 1, "failing": [{"name": "calc::test_mul"}]}
    world.queue.update(
        earlier.id,
        meta={"pr": {"head_sha": main_sha}, "test_run": {"results": results, "coverage": {"percent": 75.0}}},
    )
    world.queue.finish(earlier.id, TaskState.COMPLETED)
    task = run_task(world, number)
    finish(world, task, world.pipeline().run(task, TaskControl()))
    [comment] = world.comments(world.queue.get(task.id))
    assert "| `calc::test_sub` | **new** |" in comment and "Compared with the test run of #99" in comment
    assert "70.0% (7 of 10 lines), -5.0 points against 75.0% before" in comment
    [status] = statuses(world, number)
    assert status["state"] == "failure" and status["description"] == "1 new failing test: calc::test_sub"


TEST_RUN_PHASES = ("preparing", "setup", "baseline", "publishing", "published")


def test_a_test_run_has_no_agent_phases() -> None:
    assert set(TEST_RUN_PHASES) == set(PHASES) - {"agent", "tests", "fixing"}


@pytest.mark.parametrize("phase", TEST_RUN_PHASES)
def test_a_crash_in_every_phase_resumes_to_the_same_end(world: World, phase: str) -> None:
    number = fork_pr(world, broken=True)
    task = run_task(world, number)
    crash_in(world, task, phase)
    with pytest.raises(Crash):
        world.pipeline().run(task, TaskControl())
    recorded = world.queue.get(task.id)
    assert recorded.meta["phase"] == phase
    finish(world, task, world.pipeline().resume(recorded, TaskControl()))
    done = world.queue.get(task.id)
    assert done.state is TaskState.COMPLETED, done.error
    [comment] = world.comments(done)  # one comment, edited in place
    assert comment.startswith("❌ Tests fail on `")
    assert world.runs["setup"] == 1  # type: ignore[attr-defined]  # found again by its name
    assert {s["state"] for s in statuses(world, number)} == {"failure"}
    assert task.id not in world.backend.places


def test_the_trigger_queues_a_test_run_on_a_persons_pr_only_for_a_writer(world: World) -> None:
    number = fork_pr(world, broken=False)
    world.github.set_permission(REPO, "maintainer", "write")
    world.github.set_permission(REPO, "outsider", "read")
    client = __import__("claude_issue_solver.github.client", fromlist=["GitHubClient"]).GitHubClient(
        world.config
    )
    watcher = TriggerWatcher(
        world.config,
        client,
        world.queue,
        permission=lambda repo, login: client.permission(repo, login),
    )
    watcher.poll(REPO)  # the first look: what is there is history
    world.github.add_comment(REPO, number, "@claude test", user="outsider")
    world.github.add_comment(REPO, number, "@claude test the parser too", user="maintainer")
    watcher.poll(REPO)
    assert world.queue.list() == []  # an outsider's request, and a follow-up on a PR not ours: nothing
    world.github.add_comment(REPO, number, "@Claude test.", user="maintainer")
    watcher.poll(REPO)
    watcher.poll(REPO)  # seen once: never queued twice
    [task] = world.queue.list()
    assert (task.kind, task.issue_number, task.meta["requester"]) == ("test", number, "maintainer")


def test_what_counts_as_a_test_request() -> None:
    assert is_test_request("@claude test", "@claude") and is_test_request("  @CLAUDE tests!\n", "@claude")
    assert not is_test_request("@claude test the parser", "@claude")
    assert not is_test_request("please @claude test", "@claude")


# --- Cobertura --------------------------------------------------------------------------------------------


def test_cobertura_totals() -> None:
    coverage_py = b"""<?xml version="1.0" ?>
<coverage version="7.4" timestamp="1" lines-valid="200" lines-covered="163" line-rate="0.815"
 branches-covered="0" branches-valid="0" branch-rate="0" complexity="0">
<sources><source>/src</source></sources><packages/></coverage>"""
    assert parse_cobertura(coverage_py) == Coverage(81.5, 163, 200)
    assert parse_cobertura(b'<coverage line-rate="0.5"/>').percent == 50.0  # Istanbul may omit the counts
    assert parse_cobertura(b'<coverage lines-valid="0" lines-covered="0" line-rate="1"/>').percent == 100.0
    assert delta_text(Coverage(81.5, 163, 200), Coverage(80.0)) == (
        "81.5% (163 of 200 lines), +1.5 points against 80.0% before"
    )
    assert delta_text(Coverage(80.0), None) == "80.0%" and delta_text(None, Coverage(1.0)) is None


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b'<!DOCTYPE c [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><coverage line-rate="&b;"/>', "refused"),
        (b'<!DOCTYPE c [<!ENTITY x SYSTEM "file:///etc/passwd">]><coverage line-rate="&x;"/>', "refused"),
        (b"not xml at all", "not XML"),
        (b"<testsuites/>", "not Cobertura"),
        (b'<coverage line-rate="1.7"/>', "no usable total"),
        (b'<coverage line-rate="nan"/>', "no usable total"),
    ],
)
def test_cobertura_refuses_hostile_and_junk(data: bytes, why: str) -> None:
    with pytest.raises(CoverageError, match=why):
        parse_cobertura(data)


# --- the loopback GitHub serves refs/pull/N/head -----------------------------------------------------------


def test_refs_pull_head_is_fetchable_for_a_fork_pr(world: World, tmp_path: Path) -> None:
    pr = world.github.open_fork_pull(REPO, {"fix.txt": "from a fork\n"}, title="Fork fix", user="outsider")
    assert pr["head"]["repo"]["full_name"] == "outsider/" + REPO.split("/")[1] and pr["head"][
        "label"
    ].startswith("outsider:")
    assert "patch-1" not in world.github.repo(REPO).branches()  # only as refs/pull/N/head, as on GitHub
    # As the Docker place fetches it: the mirror, then the one ref, with the daemon's credential.
    mirror = tmp_path / "mirror.git"
    credential = GitCredential("x-access-token", world.config.github_token or "")
    url = world.github.repo(REPO).clone_url
    ref = f"refs/pull/{pr['number']}/head"
    gitops.ensure_mirror(mirror, url, credential)
    gitops.fetch_ref(mirror, ref, "refs/remotes/origin/claude-test/pr-1", credential)
    assert gitops.rev_parse(mirror, "refs/remotes/origin/claude-test/pr-1") == pr["head"]["sha"]
    shown = subprocess.run(
        ["git", "-C", str(mirror), "show", f"{pr['head']['sha']}:fix.txt"], capture_output=True
    )
    assert shown.stdout == b"from a fork\n"
    with pytest.raises(gitops.GitError, match="not a ref"):
        gitops.fetch_ref(mirror, "--upload-pack=touch /tmp/x", "refs/x", credential)
