"""The acceptance test of bounded output: 100 MB of test output through a real daemon process.

The daemon runs as a subprocess (``start --foreground``) against the loopback GitHub with the fake
`claude` image; the sample repository's tests print 100 MB before their verdict once the agent touched
calc.sh (its first run and its fix round, not the baseline), so two test runs print 100 MB each. Its
peak memory (VmHWM) is read before it stops: it must stay flat, and the verdict at the end of the
output must still reach the fix prompt (the fake fixes sub() only when its prompt quotes "FAIL sub")
and the pull request.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.logs import task_log_path
from claude_issue_solver.store.queue import TaskState
from tests.e2e import labelled, needs_docker, tasks_of
from tests.test_verified_pr_docker import CALC, REPO, RESULTS, TEST_SH
from tests.waiting import wait_until

pytestmark = [*needs_docker, pytest.mark.timeout(400)]

NOISE_BYTES = 100_000_000
PEAK_LIMIT_KB = 250 * 1024
# 1000-byte lines (999 zeros and a newline), printed once add() is fixed: rounds 1 and 2, not the baseline.
NOISE = f"""\
. ./calc.sh
if [ "$(add 2 3)" = 5 ]; then yes "$(printf '%0999d' 0)" | head -c {NOISE_BYTES}; fi
"""


def _peak_kb(pid: int) -> int:
    """The process's peak resident memory (VmHWM), in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    msg = f"no VmHWM in /proc/{pid}/status"
    raise AssertionError(msg)


def test_100_mb_of_test_output_keeps_the_daemon_small(
    github: FakeGitHub,
    process_env: dict[str, str],
    state_dir: Path,
    tmp_path: Path,
    no_leftover_containers: None,
) -> None:
    github.commit_files(
        REPO,
        "main",
        {
            "calc.sh": CALC,
            "test.sh": NOISE + TEST_SH.replace("env | sort\n", ""),
            # Per-test results: round 1's broken sub() is a new failure (a fix round), add()'s an old one.
            ".github/claude-issue-solver.yml": "test: sh test.sh\ntest_timeout: 300\n" + RESULTS,
        },
        message="a calculator with loud tests",
    )
    labelled(github, "add() subtracts", "tests-fix")
    with open(tmp_path / "daemon.out", "wb") as out:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "claude_issue_solver", "start", "--foreground"],
            env=process_env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        finished = lambda: (  # noqa: E731
            daemon.poll() is not None
            or (bool(tasks := tasks_of(state_dir)) and all(not t.state.live for t in tasks))
        )
        wait_until(finished, 360, "the task to finish", interval=0.5)
        assert daemon.poll() is None, (tmp_path / "daemon.out").read_text()[-3000:]
        peak_kb = _peak_kb(daemon.pid)
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.kill(daemon.pid, signal.SIGKILL)
            daemon.wait()
    print(f"daemon peak RSS (VmHWM): {peak_kb / 1024:.0f} MB")
    task = tasks_of(state_dir)[0]
    assert task.state is TaskState.COMPLETED, task.error
    rounds = task.meta["tests"]["rounds"]
    # The fake fixes sub() only when the fix prompt quoted the end of round 1's 100 MB: "FAIL sub ...".
    assert [r["exit_code"] for r in rounds] == [1, 0]
    assert "FAIL sub 5 3 = 8, expected 2" in rounds[0]["tail"]
    pull = github.pulls(REPO)[0]
    assert pull["draft"] is False
    assert "2 passed, 0 failed" in pull["body"]  # the end of round 2's 100 MB
    assert peak_kb < PEAK_LIMIT_KB, f"the daemon's peak memory was {peak_kb / 1024:.0f} MB"
    # The task log got the output streamed (past Docker's log rotation), and says what was left out.
    log = task_log_path(state_dir / "logs", task.id)
    print(f"task log: {log.stat().st_size / 1e6:.0f} MB at {log}")
    with open(log, "rb") as handle:
        handle.seek(-200_000, os.SEEK_END)
        end = handle.read().decode()
    assert "2 passed, 0 failed" in end and "of its output left out" in end
