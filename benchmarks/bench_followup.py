"""Follow-ups (#11): how soon a trigger comment is picked up, and what resuming a session costs.

1. Pickup, through a real daemon process at ``POLL_INTERVAL=1`` (Docker backend, the stand-in agent
   image, the loopback GitHub): a maintainer's ``@claude`` comment on the PR → the follow-up task
   running (claimed) → its agent container started (the task log's "agent started").
2. Start cost of a resumed run versus a fresh one: the real Claude Code CLI in the real agent image
   (``claude-issue-solver-test-claude``, built by the tests) against the loopback Messages API, the
   same one-answer round either way; the resumed run reads the first run's session from the kept
   ``CLAUDE_CONFIG_DIR`` and sends its turns along.

Usage: python benchmarks/bench_followup.py [--trials 5] [--skip-cli]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker

from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.demo_world.images import fake_agent_image
from claude_issue_solver.logs import task_log_path
from claude_issue_solver.store.queue import FOLLOWUP, TaskQueue
from claude_issue_solver.store.state import StateStore

TOKEN = "ghp_benchmarktoken0123456789abcdefABCD"
CLAUDE_IMAGE = "claude-issue-solver-test-claude:latest"
REPO = "acme/widgets"


def wait(condition: object, timeout: float, what: str, interval: float = 0.01) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return time.monotonic()
        time.sleep(interval)
    msg = f"timed out waiting for {what}"
    raise SystemExit(msg)


def pickup(trials: int) -> None:
    client = docker.from_env()
    image = fake_agent_image(client)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        state = root / "state"
        github = FakeGitHub(root / "gh", tokens=(TOKEN,)).start()
        github.create_repo(REPO, {"README.md": "# widgets\n"})
        github.set_permission(REPO, "maintainer", "write")
        env_file = root / "solver.env"
        settings = {
            "GITHUB_TOKEN": TOKEN,
            "GITHUB_API_URL": github.api_url,
            "GITHUB_REPOS": REPO,
            "STATE_DIR": str(state),
            "POLL_INTERVAL": "1",
            "DOCKER_IMAGE": image,
            "DOCKER_NETWORK": "none",
            "ANTHROPIC_API_KEY": "sk-ant-api03-benchmark0123456789",
        }
        env_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        env = {**os.environ, "HOME": tmp, "CLAUDE_ISSUE_SOLVER_ENV": str(env_file)}
        cli = [sys.executable, "-m", "claude_issue_solver"]
        subprocess.run([*cli, "start"], env=env, check=True, capture_output=True, timeout=60)
        try:
            queue = TaskQueue(StateStore(state / "state.json"))
            github.create_issue(
                REPO, "Bench", "FAKE_CLAUDE_SCENARIO=edit\n", labels=["Claude"], user="maintainer"
            )
            wait(
                lambda: github.pulls(REPO) and all(not t.state.live for t in queue.list()),
                120,
                "the first PR",
            )
            pr = github.pulls(REPO)[0]["number"]
            claimed, started = [], []
            for trial in range(trials):
                time.sleep(random.random())  # a random phase against the poll interval
                comment = github.add_comment(REPO, pr, f"@claude bump {trial}", user="maintainer")
                posted = time.monotonic()

                def mine(comment: dict = comment) -> list:
                    return [
                        t
                        for t in queue.list()
                        if t.kind == FOLLOWUP
                        and any(x["comment_id"] == comment["id"] for x in t.meta.get("triggers", []))
                    ]

                at = wait(lambda: any(t.started_at for t in mine()), 30, "the follow-up to start")
                claimed.append(at - posted)
                task_id = mine()[0].id
                log = task_log_path(state / "logs", task_id)

                def agent_started(log: Path = log) -> bool:
                    return log.exists() and "agent started" in log.read_text()

                at = wait(agent_started, 30, "the agent container")
                started.append(at - posted)
                wait(lambda: all(not t.state.live for t in mine()), 60, "the follow-up to finish")
            print(
                f"pickup at POLL_INTERVAL=1 ({trials} trials): comment -> follow-up running: median "
                f"{statistics.median(claimed):.2f}s (min {min(claimed):.2f}, max {max(claimed):.2f}); "
                f"-> agent container started: median {statistics.median(started):.2f}s "
                f"(min {min(started):.2f}, max {max(started):.2f})"
            )
        finally:
            subprocess.run([*cli, "stop"], env=env, capture_output=True, timeout=60)
            github.stop()


def resume_cost(trials: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.fakes.fake_anthropic import FakeAnthropic, Round

    client = docker.from_env()
    key = "sk-test"
    with (
        tempfile.TemporaryDirectory() as tmp,
        FakeAnthropic(
            api_key=key, files={}, summary=None, followups=(Round(files={}, final_text="Done again."),)
        ) as api,
    ):
        root = Path(tmp)
        workspace, kept = root / "workspace", root / "kept"
        workspace.mkdir()
        kept.mkdir()
        os.chown(workspace, 1000, 1000) if os.getuid() == 0 else None
        os.chown(kept, 1000, 1000) if os.getuid() == 0 else None
        env = {
            "ANTHROPIC_API_KEY": key,
            "ANTHROPIC_BASE_URL": api.url,
            "CLAUDE_CODE_MAX_RETRIES": "0",
            "DISABLE_AUTOUPDATER": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "CLAUDE_CONFIG_DIR": "/kept/session",
        }

        def run(*extra: str) -> tuple[float, dict]:
            began = time.perf_counter()
            out = client.containers.run(
                CLAUDE_IMAGE,
                [
                    "sh",
                    "-c",
                    'echo "say hi" | claude -p --output-format json --dangerously-skip-permissions "$@"',
                    "x",
                    *extra,
                ],
                user="1000:1000",
                network_mode="host",
                environment=env,
                volumes={
                    str(workspace): {"bind": "/workspace", "mode": "rw"},
                    str(kept): {"bind": "/kept/session", "mode": "rw"},
                },
                working_dir="/workspace",
                remove=True,
            )
            return time.perf_counter() - began, json.loads(out.decode().strip().splitlines()[-1])

        _, first = run()  # the session every resumed run continues
        session = first["session_id"]
        fresh, resumed = [], []
        for _ in range(trials):
            seconds, _ = run()
            fresh.append(seconds)
            seconds, result = run("--resume", session)
            assert not result.get("is_error"), result
            resumed.append(seconds)
        held = sum(1 for r in api.conversation_requests if r.resumed)
        print(
            f"real CLI start-to-result ({trials} trials): fresh median {statistics.median(fresh):.2f}s "
            f"(min {min(fresh):.2f}); resumed median {statistics.median(resumed):.2f}s "
            f"(min {min(resumed):.2f}); "
            f"extra for resuming: {statistics.median(resumed) - statistics.median(fresh):+.2f}s; "
            f"{held} requests carried the earlier turns"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument(
        "--skip-cli", action="store_true", help="only the pickup (no real agent image needed)"
    )
    args = parser.parse_args()
    pickup(args.trials)
    if not args.skip_cli:
        resume_cost(args.trials)


if __name__ == "__main__":
    main()
