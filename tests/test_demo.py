"""`claude-issue-solver demo`: the whole loop against the loopback GitHub and real Docker containers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest

from claude_issue_solver.backends.base import LABEL_TASK
from claude_issue_solver.cli.demo import (
    FOLLOW_UP_REQUEST,
    FORCED_STAND_IN_NOTICE,
    SAMPLE_FILES,
    STAND_IN_HINT,
    STAND_IN_NOTICE,
    run_demo,
)
from claude_issue_solver.demo_world.images import FAKE_CLAUDE_SCRIPT
from claude_issue_solver.run import messages
from claude_issue_solver.store.queue import Task

# A fixed HOME and no Claude credential: the scripted stand-in, whatever the developer's shell holds.
NO_CREDENTIAL = {"HOME": "/nonexistent", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
PR_URL = re.compile(r"^URL: +(http://127\.0\.0\.1:\d+/demo/calculator/pull/\d+)$", re.MULTILINE)
# What the stand-in's pull request changes, as `git diff` prints it.
SUBTRACT_FIXED = " subtract() {\n-    echo $(($1 + $2))\n+    echo $(($1 - $2))\n"
TEST_ADDED = " check test_subtract 2 subtract 5 3\n+check test_subtract_below_zero -2 subtract 3 5\n"


def containers_mounting(client: object, path: Path) -> list[str]:
    listed = client.api.containers(all=True, filters={"label": [LABEL_TASK]})  # type: ignore[attr-defined]
    return [c["Id"] for c in listed if str(path) in json.dumps(c.get("Mounts", []))]


def section(text: str, title: str) -> str:
    """One of the report's sections (between its rules), found by its first line."""
    rule = "-" * 72
    found = [part.strip("\n") for part in text.split(rule) if part.lstrip("\n").startswith(title)]
    assert len(found) == 1, text
    return found[0]


def assert_stand_in_report(text: str, notice: str = STAND_IN_NOTICE, *, tests: bool = True) -> None:
    assert text.splitlines()[0] == notice
    assert "the real claude CLI" not in text
    url = PR_URL.search(text)
    assert url, text
    assert "Traceback" not in text

    pull = section(text, "Pull request #")
    assert "Branch: claude/issue-1 -> main" in pull and "\nFixes #1" in pull
    assert "Written by the demo's scripted stand-in agent (a shell script, not Claude)" in pull
    # Nothing made up: no Claude credit, no cost, none of the test suite's fake-agent lines.
    for absent in ("Written by Claude Code", "$", "prompt-sha256", "fake agent", "CLAUDE_FIX"):
        assert absent not in pull, (absent, pull)

    diff = section(text, "git diff main...claude/issue-1")
    assert "+++ b/calc.sh" in diff and SUBTRACT_FIXED in diff
    assert "+++ b/check.sh" in diff and TEST_ADDED in diff
    assert diff.count("diff --git") == 2, diff  # only the fix and its test (not the tests' build/)

    if tests:  # red on main only for the issue's bug, green after the change
        assert_green_tests(
            pull, before="🔴 red: exit 1", before_counts="2 passed, 1 failed", after_counts="4 passed"
        )

    comment = section(text, "Comment on issue #1 by claude-bot:")
    assert (
        f"✅ A scripted stand-in agent (not Claude) opened a pull request for this issue: {url.group(1)}"
        in (comment)
    )
    assert "$" not in comment and "Claude opened" not in comment


def assert_green_tests(pull: str, *, before: str, before_counts: str, after_counts: str) -> None:
    """A verified pull request: the sample's settings file runs `sh check.sh` in the stand-in's image,
    with per-test counts before and after the change, green after it; the head's status says so."""
    assert f"Status: claude-issue-solver/tests: success (Tests pass: {after_counts}, 0 failed)" in pull, pull
    assert "- Command: `sh check.sh` (the repository's .github/claude-issue-solver.yml)" in pull, pull
    baseline = (
        re.escape(f"| before the change (baseline) | {before} (") + r"\d+s\) · " + re.escape(before_counts)
    )
    assert re.search(f"^{baseline}( — already red before the change)? \\|$", pull, re.MULTILINE), pull
    after = re.escape("| round 1: after the stand-in agent's change | 🟢 green (") + r"\d+s\) · "
    assert re.search(f"^{after}{re.escape(after_counts)}, 0 failed \\|$", pull, re.MULTILINE), pull
    assert "round 2" not in pull and "Failing" not in pull and "Not verified" not in pull
    assert "[tests failing]" not in pull and "⚠️" not in pull
    assert "`sh check.sh` after the fix: 4 passed, 0 failed." in pull  # the stand-in ran them too


def run_sample_tests(checkout: Path) -> subprocess.CompletedProcess[str]:
    """The sample repository's own tests on the host's shell, as its settings file says: `sh check.sh`."""
    return subprocess.run(
        ["sh", "check.sh"],
        cwd=checkout,
        env=NO_CREDENTIAL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def run_stand_in(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The stand-in as the demo runs it (model STAND_IN_MODEL), on the host's shell."""
    return subprocess.run(
        ["sh", str(FAKE_CLAUDE_SCRIPT), "-p", *args, "--model", messages.STAND_IN_MODEL],
        input="Fix issue #1.\n",
        cwd=cwd,
        env=NO_CREDENTIAL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def checkout(bare: Path, ref: str, into: Path) -> Path:
    into.mkdir()
    archive = subprocess.run(["git", f"--git-dir={bare}", "archive", ref], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


# --- the stand-in on its own (no Docker) -----------------------------------------------------------


def test_the_stand_in_fixes_the_sample_and_its_test_catches_the_bug(tmp_path: Path) -> None:
    repo = tmp_path / "calculator"
    repo.mkdir()
    for name, text in SAMPLE_FILES.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    before = run_sample_tests(repo)
    assert before.returncode == 1 and "2 passed, 1 failed" in before.stdout, before.stdout
    assert "FAIL test_subtract: subtract 5 3 = 8, expected 2" in before.stdout  # the issue's bug, only
    assert (
        '<testcase classname="calc" name="test_subtract"><failure message="subtract 5 3 = 8'
        in (repo / "build" / "junit.xml").read_text()
    )

    proc = run_stand_in(repo, "--output-format", "stream-json", "--verbose")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events[0]["type"] == "system" and events[0]["subtype"] == "init"
    assert events[0]["model"] == messages.STAND_IN_MODEL
    result = events[-1]
    assert result["type"] == "result" and result["is_error"] is False and result["total_cost_usd"] == 0
    assert result["num_turns"] == sum(1 for e in events if e["type"] == "assistant")
    tools = [
        b["name"] for e in events if e["type"] == "assistant" for b in e["message"]["content"] if "name" in b
    ]
    assert tools == ["Read", "Read", "Edit", "Bash", "Edit", "Bash", "Write"]
    runs = [
        b
        for e in events
        if e["type"] == "user"
        for b in e["message"]["content"]
        if "toolu_stand_in_" in str(b)
    ]
    red, green = (b for b in runs if b["tool_use_id"] in ("toolu_stand_in_red", "toolu_stand_in_green"))
    assert red["is_error"] is True and "FAIL test_subtract_below_zero" in red["content"]
    assert green["is_error"] is False and green["content"].endswith("4 passed, 0 failed")
    assert all(e["session_id"] == result["session_id"] for e in events)

    after = run_sample_tests(repo)
    assert after.returncode == 0 and "4 passed, 0 failed" in after.stdout, after.stdout
    assert "ok   test_add: add 2 3 = 5" in after.stdout  # add() keeps its +
    # The new test is a real regression test: it fails against the old subtract().
    (repo / "calc.sh").write_text(SAMPLE_FILES["calc.sh"])
    regressed = run_sample_tests(repo)
    assert "2 passed, 2 failed" in regressed.stdout and "FAIL test_subtract_below_zero" in regressed.stdout
    summary = (repo / ".claude-pr-summary.md").read_text()
    assert summary.startswith("Fix subtract(): ") and summary.rstrip().endswith("4 passed, 0 failed.")


def test_the_stand_in_leaves_a_repository_it_does_not_know_alone(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("no calculator here\n")
    (tmp_path / "calc.sh").write_text("add() { echo 0; }\n")  # no check.sh: not the sample
    proc = run_stand_in(tmp_path, "--output-format", "json")
    assert proc.returncode == 0, proc.stderr
    assert "can fix only that one, so I changed nothing" in json.loads(proc.stdout)["result"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "calc.sh"]


# --- the texts name the agent ------------------------------------------------------------------------


def test_only_the_stand_in_model_signs_as_the_stand_in() -> None:
    assert messages.agent_for(messages.STAND_IN_MODEL) is messages.STAND_IN
    for model in (None, "claude-sonnet-4-5", "opus", ""):
        assert messages.agent_for(model) is messages.CLAUDE


def test_texts_after_a_run_name_the_agent_and_show_a_cost_only_for_claude() -> None:
    task = Task(id="calculator-1-abc123", repo="demo/calculator", issue_number=1, title="t", cost_usd=0.0123)
    task.num_turns = 6
    url = "http://127.0.0.1:1/demo/calculator/pull/2"

    claude = messages.RunFigures.of(task, 75)
    assert "Written by Claude Code via claude-issue-solver" in messages.pr_body(task, "Fixed.", claude)
    assert "Run: 1m15s · 6 turns · $0.01" in messages.pr_opened_comment(task, url, claude)

    stand_in = messages.RunFigures.of(task, 75, messages.STAND_IN)
    body = messages.pr_body(task, "", stand_in)
    assert body.startswith("_A scripted stand-in agent (not Claude) left no description._")
    assert "Written by Claude" not in body and "$" not in body and "Run: 1m15s · 6 turns." in body
    opened = messages.pr_opened_comment(task, url, stand_in)
    assert opened.startswith(
        f"✅ A scripted stand-in agent (not Claude) opened a pull request for this issue: {url}"
    )
    assert "$" not in opened
    answer = messages.no_changes_comment(task, None, stand_in)
    assert answer.startswith("💬 A scripted stand-in agent (not Claude) looked into this issue")
    assert "(A scripted stand-in agent (not Claude) gave no answer.)" in answer


@pytest.mark.docker
def test_demo_with_the_stand_in_agent(
    docker_client: object, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    out = StringIO()
    code = run_demo(tmp_path, out=out, environ=NO_CREDENTIAL, timeout=120)
    err = capfd.readouterr().err
    assert code == 0, out.getvalue() + err
    assert_stand_in_report(out.getvalue())
    assert "daemon running" in err and "Traceback" not in err
    assert containers_mounting(docker_client, tmp_path) == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.docker
def test_demo_follow_up_continues_the_same_branch_pr_and_session(
    docker_client: object, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    out = StringIO()
    code = run_demo(tmp_path, out=out, environ=NO_CREDENTIAL, timeout=120, follow_up=True)
    err = capfd.readouterr().err
    text = out.getvalue()
    assert code == 0, text + err
    first = text.split("\nFollow-up on pull request")[0]
    assert_stand_in_report(first, tests=False)
    # The pull request as it is at the end: its report is the follow-up's, green before and after.
    assert_green_tests(
        section(first, "Pull request #"),
        before="🟢 green",
        before_counts="4 passed, 0 failed",
        after_counts="5 passed",
    )
    assert f"alice on pull request #2: {FOLLOW_UP_REQUEST!r}" in text
    follow_up = section(text, "Follow-up on pull request #2")
    assert re.search(r"the same branch claude/issue-1, resumed Claude session [0-9a-f-]{36}", follow_up), text
    assert ": Follow-up for @alice: please also add a test that subtracting" in follow_up
    assert "+check test_subtract_itself 0 subtract 7 7\n" in follow_up
    assert "`sh check.sh`: 5 passed, 0 failed." in section(text, "Answer on pull request #2 by claude-bot")
    answer = section(text, "Answer on pull request #2 by claude-bot")
    assert "\n✅ A scripted stand-in agent (not Claude) pushed" in answer and "for @alice" in answer
    assert "Traceback" not in err
    assert containers_mounting(docker_client, tmp_path) == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.docker
def test_keep_leaves_the_state_and_the_bare_repository(docker_client: object, tmp_path: Path) -> None:
    out = StringIO()
    work = tmp_path / "demo"
    work.mkdir()
    assert run_demo(work, out=out, environ=NO_CREDENTIAL, keep=True, timeout=120) == 0, out.getvalue()
    bare = work / "github" / "demo" / "calculator.git"
    assert f"bare repository at {bare}" in out.getvalue()
    branches = subprocess.run(
        ["git", f"--git-dir={bare}", "branch", "--list", "claude/*"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "claude/issue-1" in branches.stdout
    assert (work / "state" / "state.json").is_file()
    assert containers_mounting(docker_client, work) == []

    # The sample's tests, run on the host: failing on main, passing on the stand-in's branch.
    main = run_sample_tests(checkout(bare, "main", tmp_path / "main"))
    assert main.returncode == 1 and "2 passed, 1 failed" in main.stdout, main.stdout
    fixed = run_sample_tests(checkout(bare, "claude/issue-1", tmp_path / "fixed"))
    assert fixed.returncode == 0 and "4 passed, 0 failed" in fixed.stdout, fixed.stdout
    tree = subprocess.run(
        ["git", f"--git-dir={bare}", "ls-tree", "-r", "--name-only", "claude/issue-1"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert "build/junit.xml" not in tree and "check.sh" in tree  # the tests' results stay out


def test_docker_unreachable_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    out = StringIO()
    code = run_demo(tmp_path, out=out, environ={"ANTHROPIC_API_KEY": "sk-ant-api03-notused0123456789"})
    assert code == 1
    lines = out.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("demo failed: Docker is not reachable") and "start it" in lines[0]
    assert "Traceback" not in capfd.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.docker
def test_demo_in_a_fresh_process(docker_client: object, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN")}
    env["TMPDIR"] = str(tmp_path)  # the demo's own temporary directory lands here, where we can look
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from claude_issue_solver.cli.demo import run_demo; raise SystemExit(run_demo())",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_stand_in_report(proc.stdout)
    assert "daemon stopped" in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.glob("claude-issue-solver-demo-*")) == []
    assert containers_mounting(docker_client, tmp_path) == []


@pytest.mark.docker
def test_a_failed_real_run_points_at_the_stand_in(docker_client: object, tmp_path: Path) -> None:
    environ = {
        **NO_CREDENTIAL,
        "ANTHROPIC_API_KEY": "sk-ant-api03-" + "x" * 40,
        "DOCKER_IMAGE": "claude-issue-solver-test-no-such-image:absent",  # fails the task at once
        "DOCKER_NETWORK": "none",
    }
    out = StringIO()
    assert run_demo(tmp_path, out=out, environ=environ, timeout=120) == 1
    text = out.getvalue()
    assert text.startswith("Claude credential found: the real claude CLI will work on the issue")
    assert "`demo --stand-in` runs the scripted stand-in instead" in text.splitlines()[0]
    assert "demo failed: the task failed: the agent image" in text
    assert text.rstrip().splitlines()[-1] == STAND_IN_HINT
    assert list(tmp_path.iterdir()) == []


@pytest.mark.docker
def test_stand_in_flag_wins_over_a_claude_credential(docker_client: object, tmp_path: Path) -> None:
    """The first-hour case: a .env with ANTHROPIC_API_KEY in the checkout, and a token exported too."""
    key = "sk-ant-api03-" + "k" * 40
    token = "sk-ant-oat01-" + "t" * 40
    (tmp_path / ".env").write_text(f"ANTHROPIC_API_KEY={key}\nCLAUDE_MODEL=claude-opus-4-1\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE_", "GITHUB_"))}
    env.update(HOME=str(tmp_path), TMPDIR=str(tmp_path), CLAUDE_CODE_OAUTH_TOKEN=token)
    proc = subprocess.run(
        [sys.executable, "-m", "claude_issue_solver", "demo", "--stand-in", "--keep", "--timeout", "120"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_stand_in_report(proc.stdout, notice=FORCED_STAND_IN_NOTICE)
    kept = re.search(r"^Kept: state in (\S+), bare repository at (\S+)\.git$", proc.stdout, re.MULTILINE)
    assert kept, proc.stdout
    state = Path(kept.group(1))
    task_logs = list((state / "logs" / "tasks").glob("calculator-1-*.log"))
    assert len(task_logs) == 1, sorted(str(p) for p in state.rglob("*"))
    assert f"session started (model {messages.STAND_IN_MODEL}, cwd /workspace)" in task_logs[0].read_text()
    # Neither secret went anywhere the demo wrote (its logs, its state, its output).
    for path in [p for p in state.rglob("*") if p.is_file()]:
        data = path.read_bytes()
        assert key.encode() not in data and token.encode() not in data, path
    assert key not in proc.stdout + proc.stderr and token not in proc.stdout + proc.stderr
    assert containers_mounting(docker_client, tmp_path) == []


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_demo_with_a_credential_runs_the_real_cli(claude_image: str, tmp_path: Path) -> None:
    """With a key, no stand-in: Dockerfile.claude's image and the real `claude`, here on a loopback API."""
    from tests.fakes.fake_anthropic import FakeAnthropic

    key = "sk-ant-api03-demotestkey0123456789"
    with FakeAnthropic(api_key=key, files={"NOTES.md": "subtract must subtract\n"}) as api:
        environ = {
            "ANTHROPIC_API_KEY": key,
            "ANTHROPIC_BASE_URL": api.url,
            "CLAUDE_CODE_MAX_RETRIES": "0",
            "DOCKER_IMAGE": claude_image,
            "DOCKER_NETWORK": "host",  # the loopback API is on the host's 127.0.0.1
        }
        out = StringIO()
        code = run_demo(tmp_path, out=out, environ=environ, timeout=600)
        prompts = json.dumps([r.body for r in api.conversation_requests])
    text = out.getvalue()
    assert code == 0, text
    assert STAND_IN_NOTICE not in text and "the real claude CLI" in text
    assert "subtract() adds instead of subtracting" in prompts and "FAKE_CLAUDE_SCENARIO" not in prompts
    assert "+++ b/NOTES.md" in text and "\nFixes #1\n" in text
    assert list(tmp_path.iterdir()) == []
