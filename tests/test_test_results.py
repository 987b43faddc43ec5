"""Per-test results and verdicts: JUnit XML from real pytest runs (a small project here, and the real
pallets/markupsafe when its snapshot is on this machine), hostile XML, go test -json, the verdict rules,
and the commit status on the loopback GitHub with a token and with an App."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import pytest
import requests

from claude_issue_solver.config import Config
from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.github.client import GitHubClient, GitHubError
from claude_issue_solver.github.statuses import CONTEXT, DESCRIPTION_LIMIT, post, status_for
from claude_issue_solver.run.test_results import (
    Results,
    Run,
    environment_problem,
    judge,
    parse_go_json,
    parse_junit,
    wants_go_json,
)
from tests.github_fixtures import TOKEN
from tests.test_github_app import app_config

MARKUPSAFE = Path("/work/.mirror/pallets+markupsafe/repo")  # the search tool's snapshot, when fetched


def pytest_run(project: Path, name: str) -> Run:
    """The detected command as the gate runs it (``python3 -m pytest --junitxml=…``), with this Python."""
    path = f".claude-issue-solver-results/{name}.xml"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": "src", "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={path}"],
        cwd=project,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    results = parse_junit({path: (project / path).read_bytes()})
    return Run(proc.returncode, False, proc.stdout[-4000:], results)


CALC = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"
TESTS = """\
from calc import add, sub


def test_add():
    assert add(2, 3) == 5


def test_sub():
    assert sub(5, 3) == 2


def test_known_broken():
    assert add(0.1, 0.2) == 0.3
"""


def test_a_real_pytest_run_tells_a_pre_existing_failure_from_a_new_one(tmp_path: Path) -> None:
    project = tmp_path / "calc"
    (project / "src").mkdir(parents=True)
    (project / "tests").mkdir()
    (project / "src" / "calc.py").write_text(CALC)
    (project / "tests" / "test_calc.py").write_text(TESTS)
    baseline = pytest_run(project, "baseline")
    assert baseline.exit_code == 1 and baseline.results is not None
    assert (baseline.results.passed, baseline.results.failed) == (2, 1)
    assert baseline.results.names == {"tests.test_calc::test_known_broken"}

    # The change breaks sub(): one new failure, the old one stays.
    (project / "src" / "calc.py").write_text(CALC.replace("a - b", "a + b"))
    after = pytest_run(project, "test-1")
    verdict = judge(after, baseline, setup_green=True)
    assert verdict.verdict == "red" and verdict.wants_fix
    assert [f.name for f in verdict.new] == ["tests.test_calc::test_sub"]
    assert "assert 8 == 2" in verdict.new[0].message
    assert [f.name for f in verdict.known] == ["tests.test_calc::test_known_broken"]

    # Fixed again: only the old failure is left, which is green-with-notes.
    (project / "src" / "calc.py").write_text(CALC)
    fixed = judge(pytest_run(project, "test-2"), baseline, setup_green=True)
    assert fixed.verdict == "known" and not fixed.wants_fix and not fixed.new


@pytest.mark.skipif(not (MARKUPSAFE / "HEAD").exists(), reason="no snapshot of pallets/markupsafe here")
def test_markupsafe_a_pre_existing_failure_and_a_change_that_breaks_another(tmp_path: Path) -> None:
    project = tmp_path / "markupsafe"
    project.mkdir()
    archive = subprocess.run(
        ["git", f"--git-dir={MARKUPSAFE}", "archive", "HEAD"], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(project, filter="data")
    tests = project / "tests" / "test_markupsafe.py"
    # One test that was failing before any change (as a real repository may have).
    tests.write_text(
        tests.read_text() + "\n\ndef test_already_broken():\n    assert Markup('<b>') == '<i>'\n"
    )
    (project / "src" / "markupsafe" / "_speedups.c").unlink()  # no compiler here: the pure Python one
    baseline = pytest_run(project, "baseline")
    assert baseline.results is not None and baseline.results.passed > 30
    # markupsafe's conftest runs each test against each implementation found (here the pure Python one).
    old = "tests.test_markupsafe::test_already_broken[markupsafe._native]"
    assert baseline.results.names == {old}

    # The change: escape() forgets to escape "<" (the pure-Python implementation).
    native = project / "src" / "markupsafe" / "_native.py"
    text = native.read_text()
    assert '.replace("<", "&lt;")' in text
    native.write_text(text.replace('.replace("<", "&lt;")', ""))
    after = pytest_run(project, "test-1")
    verdict = judge(after, baseline, setup_green=None)
    assert verdict.verdict == "red"
    assert verdict.new and all("already_broken" not in f.name for f in verdict.new)
    assert [f.name for f in verdict.known] == [old]
    assert after.results is not None and after.results.failed == len(verdict.new) + 1


def test_hostile_xml_is_refused_and_the_rest_still_counts() -> None:
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
        b'<testsuite><testcase classname="x" name="&lol2;"/></testsuite>'
    )
    xxe = (
        b'<?xml version="1.0"?><!DOCTYPE t [<!ENTITY secret SYSTEM "file:///etc/passwd">]>'
        b'<testsuite><testcase classname="x" name="y"><failure message="&secret;"/></testcase></testsuite>'
    )
    good = (
        b'<testsuite><testcase classname="a" name="b"/>'
        b'<testcase classname="a" name="c"><skipped/></testcase></testsuite>'
    )
    results = parse_junit({"bomb.xml": bomb, "xxe.xml": xxe, "good.xml": good, "junk.xml": b"not xml"})
    assert (results.passed, results.failed, results.skipped) == (1, 0, 1)
    assert results.source == "JUnit XML: good.xml"
    assert len(results.problems) == 3 and all("not usable JUnit XML" in p for p in results.problems)
    assert "root:" not in repr(results)


def test_go_test_json_is_read_as_it_is() -> None:
    assert wants_go_json("go test -json ./...") and not wants_go_json("go test ./...")
    events = "\n".join(
        [
            '{"Action":"run","Package":"ex/calc","Test":"TestAdd"}',
            '{"Action":"pass","Package":"ex/calc","Test":"TestAdd"}',
            '{"Action":"run","Package":"ex/calc","Test":"TestSub"}',
            '{"Action":"output","Package":"ex/calc","Test":"TestSub",'
            '"Output":"calc_test.go:9: got 8, want 2\\n"}',
            '{"Action":"fail","Package":"ex/calc","Test":"TestSub"}',
            '{"Action":"run","Package":"ex/calc","Test":"TestTable/zero"}',
            '{"Action":"skip","Package":"ex/calc","Test":"TestTable/zero"}',
            '{"Action":"skip","Package":"ex/calc","Test":"TestTable"}',
            '{"Action":"fail","Package":"ex/calc"}',
        ]
    )
    results = parse_go_json(events)
    assert results is not None
    assert (results.passed, results.failed, results.skipped) == (1, 1, 1)
    assert results.failing[0].name == "ex/calc::TestSub" and "got 8, want 2" in results.failing[0].message
    assert parse_go_json("ok  \tex/calc\t0.01s\n") is None


@pytest.mark.parametrize(
    ("exit_code", "tail", "expected"),
    [
        (127, "sh: 1: python: not found", "exit 127: python: not found"),
        (127, "bash: line 1: pytest: command not found", "exit 127: pytest: command not found"),
        (126, "sh: ./check.sh: Permission denied", "exit 126: the command could not be run"),
        (1, "/usr/bin/python3: No module named pytest", "exit 1: No module named pytest"),
        (1, "E   AssertionError: key: not found", None),  # a test's own message
        (0, "", None),
    ],
)
def test_environment_failures_are_named(exit_code: int, tail: str, expected: str | None) -> None:
    assert environment_problem(exit_code, tail) == expected


def test_the_verdict_rules() -> None:
    green, red = Run(0, False, "ok"), Run(1, False, "FAIL")
    assert judge(green, red).verdict == "green"
    assert judge(red, green).verdict == "red"  # no per-test results: red where the baseline was green
    assert judge(red, None).verdict == "red"
    assert judge(red, red).verdict == "unchanged"  # red before and after, nothing to compare
    assert judge(red, green, setup_green=False).verdict == "not-run"
    assert judge(Run(1, True, ""), green).verdict == "red"  # a timeout is red
    nothing = Run(2, False, "no tests ran", Results())
    assert judge(nothing, nothing).verdict == "not-run"  # nothing ran before or after
    assert judge(nothing, Run(0, False, "", Results(passed=3))).verdict == "red"  # the change broke it


def test_status_descriptions_fit_and_say_the_verdict() -> None:
    long_names = [{"name": f"tests.test_module_with_a_long_name::test_case_{n}"} for n in range(10)]
    report = {"verdict": "red", "fixes": 2, "judgement": {"new": long_names}, "rounds": [{}]}
    state, text = status_for(report) or ("", "")
    assert state == "failure" and len(text) <= DESCRIPTION_LIMIT and text.endswith("…")
    assert text.startswith("10 new failing tests after 2 fix rounds: tests.test_module")
    assert status_for({"verdict": "none"}) is None and status_for({"verdict": "pending"}) is None
    assert status_for({"verdict": "not-run", "judgement": {"why": "exit 127: python: not found"}}) == (
        "error",
        "Tests could not run: exit 127: python: not found",
    )


def test_statuses_on_the_loopback_github_as_github_serves_them(
    github: FakeGitHub, gh_config: Callable[..., Config], tmp_path: Path, make_config: Callable[..., Config]
) -> None:
    sha = github.repo("acme/widgets").branch_sha("main")
    assert sha is not None
    client = GitHubClient(gh_config())
    assert post(client, "acme/widgets", sha, {"verdict": "green", "rounds": [{}]}, "http://x/issues/1") == (
        "success",
        "Tests pass",
    )
    with pytest.raises(GitHubError) as refused:  # an unknown commit
        post(client, "acme/widgets", "0" * 40, {"verdict": "green"})
    assert refused.value.status == 422
    api = f"{github.api_url}/repos/acme/widgets"
    headers = {"Authorization": f"token {TOKEN}"}
    too_long = requests.post(
        f"{api}/statuses/{sha}",
        json={"state": "success", "description": "x" * 141},
        headers=headers,
        timeout=10,
    )
    assert too_long.status_code == 422
    # An App's installation token posts the next one (the statuses API takes both).
    app = GitHubClient(app_config(github, tmp_path, make_config))
    github.install_app(4242, "acme")
    post(app, "acme/widgets", sha, {"verdict": "red", "judgement": {"why": "exit 1"}, "rounds": [{}]})
    combined = requests.get(f"{api}/commits/main/status", headers=headers, timeout=10).json()
    assert combined["state"] == "failure" and combined["sha"] == sha and combined["total_count"] == 1
    (latest,) = combined["statuses"]
    assert latest["context"] == CONTEXT and latest["state"] == "failure"
    listed = requests.get(f"{api}/commits/{sha}/statuses", headers=headers, timeout=10).json()
    assert [s["state"] for s in listed] == ["failure", "success"]  # newest first
    assert shutil.which("git")  # the loopback GitHub resolved "main" with real git
