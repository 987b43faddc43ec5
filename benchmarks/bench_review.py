"""Pull-request reviews (#22): trigger → review posted, and the daemon's GitHub requests per review.

A real daemon process (``POLL_INTERVAL=1``, Docker backend) with the real Claude Code CLI in the real
agent image (``claude-issue-solver-test-claude``, built by the tests) against the loopback Messages API,
which answers at once (one ``StructuredOutput`` tool_use with two findings): the model's time is
excluded, what is left is the daemon's (pickup, prepare the pull request's head, the container, the
CLI's own start, publishing). Each trial: a person's new pull request from a fork, a maintainer's
``@claude review`` → the review on GitHub. Requests are counted on the loopback GitHub from the comment
to the task's end (REST/GraphQL apart from git smart HTTP), idle polls in that window included.

Usage: python benchmarks/bench_review.py [--trials 5]
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.store.queue import TaskQueue
from claude_issue_solver.store.state import StateStore

TOKEN = "ghp_benchmarktoken0123456789abcdefABCD"
KEY = "sk-ant-api03-benchmark0123456789"
CLAUDE_IMAGE = "claude-issue-solver-test-claude:latest"
REPO = "acme/widgets"
CALC = "def add(a, b):\n    return a - b\n\n\ndef div(a, b):\n    return a / b\n"


def wait(condition: object, timeout: float, what: str, interval: float = 0.01) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return time.monotonic()
        time.sleep(interval)
    msg = f"timed out waiting for {what}"
    raise SystemExit(msg)


def review(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "summary": "Adds a calculator.",
        "findings": [
            {"path": "calc.py", "line": 2, "severity": "major", "title": "add subtracts", "body": "Use +."},
            {
                "path": "calc.py",
                "line": 6,
                "severity": "critical",
                "title": "division by zero",
                "body": "b=0",
            },
        ],
    }


def ours(github: FakeGitHub, number: int) -> list[dict[str, Any]]:
    return [r for r in github.reviews(REPO, number) if "claude-issue-solver:task=" in r["body"]]


def median(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f})"


def main(trials: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.fakes.fake_anthropic import FakeAnthropic

    with (
        tempfile.TemporaryDirectory() as tmp,
        FakeAnthropic(api_key=KEY, files={}, summary=None, structured_output=review) as api,
    ):
        root = Path(tmp)
        state = root / "state"
        github = FakeGitHub(root / "gh", tokens=(TOKEN,)).start()
        github.create_repo(REPO, {"README.md": "# widgets\n"})
        github.set_permission(REPO, "maintainer", "write")
        settings = {
            "GITHUB_TOKEN": TOKEN,
            "GITHUB_API_URL": github.api_url,
            "GITHUB_REPOS": REPO,
            "STATE_DIR": str(state),
            "POLL_INTERVAL": "1",
            "DOCKER_IMAGE": CLAUDE_IMAGE,
            "DOCKER_NETWORK": "host",  # the loopback API is on the host's 127.0.0.1
            "ANTHROPIC_BASE_URL": api.url,
            "ANTHROPIC_API_KEY": KEY,
            "CLAUDE_CODE_MAX_RETRIES": "0",
        }
        env_file = root / "solver.env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        env = {**os.environ, "HOME": tmp, "CLAUDE_ISSUE_SOLVER_ENV": str(env_file)}
        cli = [sys.executable, "-m", "claude_issue_solver"]
        subprocess.run([*cli, "start"], env=env, check=True, capture_output=True, timeout=60)
        try:
            queue = TaskQueue(StateStore(state / "state.json"))

            def looked() -> bool:
                book = queue.store.read().get("followups", {}).get("repos", {}).get(REPO, {})
                return {"issues", "pulls"} <= set(book.get("since", {}))

            wait(looked, 60, "the daemon's first look")
            posted_s, done_s, api_requests, git_requests = [], [], [], []
            for trial in range(trials):
                pr = github.open_fork_pull(
                    REPO,
                    {f"calc{trial}.py": CALC},
                    user="contributor",
                    title=f"Calc {trial}",
                    fork_branch=f"c{trial}",
                )
                number = int(pr["number"])
                time.sleep(random.random())  # a random phase against the poll interval
                before = len(github.requests)
                github.add_comment(REPO, number, "@claude review", user="maintainer")
                asked = time.monotonic()
                at = wait(lambda n=number: ours(github, n), 300, "the review", interval=0.005)
                posted_s.append(at - asked)

                def finished(n: int = number) -> bool:
                    tasks = [t for t in queue.list() if t.kind == "review" and t.issue_number == n]
                    return bool(tasks) and all(not t.state.live for t in tasks)

                done_s.append(wait(finished, 120, "the review task to finish") - asked)
                window = github.requests[before:]
                git = [r for r in window if "/api/" not in r.path]
                api_requests.append(len(window) - len(git))
                git_requests.append(len(git))
            print(f"reviews ({trials} trials, POLL_INTERVAL=1, real CLI, instant loopback model):")
            print(f"  @claude review -> review posted: {median(posted_s)} s")
            print(f"  @claude review -> task finished: {median(done_s)} s")
            print(f"  GitHub API requests per review (comment -> task end): {median(api_requests)}")
            print(f"  git smart-HTTP requests per review: {median(git_requests)}")
            routes = collections.Counter(
                f"{r.method} {re.sub(r'/[0-9]+', '/N', r.path.split('?')[0])}"
                for r in window
                if "/api/" in r.path
            )
            print(
                "  the last review's API requests: "
                + ", ".join(f"{k} x{v}" for k, v in sorted(routes.items()))
            )
            print(f"  model calls answered: {len(api.conversation_requests)} conversation requests in all")
        finally:
            subprocess.run([*cli, "stop"], env=env, capture_output=True, timeout=60)
            github.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    main(parser.parse_args().trials)
