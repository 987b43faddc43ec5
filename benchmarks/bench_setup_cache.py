"""The setup cache on Docker: a second task on an unchanged repository, time from task start to the
first test run (the ``baseline`` container started), with the cache and with ``SETUP_CACHE=false``.

The real daemon and pipeline against the loopback GitHub, the fake ``claude`` in the busybox agent image
(no network in the containers). The sample's setup does real work: it writes a venv-like tree of
``--files`` files into the repository (``.deps/``, ignored) and as many into HOME, and its tests need
both. The first task of each mode (the mirror, the saved setup) is reported apart.
Usage: python benchmarks/bench_setup_cache.py [--runs 5] [--files 4000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import docker

from claude_issue_solver.app import build
from claude_issue_solver.backends.base import LABEL_OWNER, owner_of
from claude_issue_solver.config import load_config
from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.demo_world.images import fake_agent_image
from claude_issue_solver.run.pipeline import Pipeline
from claude_issue_solver.store.queue import TaskState

TOKEN = "ghp_benchmarktoken0123456789abcdefABCD"
SETUP_SH = """\
set -e
mkdir -p "$HOME/.venv-like/lib" .deps/site-packages
i=0
while [ $i -lt {files} ]; do
    d=.deps/site-packages/pkg$((i % 40))
    mkdir -p $d
    printf 'def f%s():\\n    return %s\\n' $i $i >$d/mod$i.py
    printf 'x%s\\n' $i >"$HOME/.venv-like/lib/m$i.txt"
    i=$((i + 1))
done
echo "installed {files} modules"
"""
TEST_SH = """\
test -f "$HOME/.venv-like/lib/m0.txt" && test -f .deps/site-packages/pkg0/mod0.py && echo "1 passed"
"""

started: dict[str, float] = {}  # task id -> when the pipeline took it
baseline: dict[str, float] = {}  # task id -> when its baseline container had started
restores: dict[str, float] = {}  # task id -> how long restore_setup took (hit or miss)


def instrument(parts: Any) -> None:
    backend = parts.backend
    start_process = backend.start_process

    def timed(workspace: Any, process: Any, log: Any) -> bool:
        result = start_process(workspace, process, log)
        if process.name == "baseline":
            baseline.setdefault(workspace.task_id, time.perf_counter())
        return result

    backend.start_process = timed
    restore_setup = backend.restore_setup

    def timed_restore(workspace: Any, key: str, log: Any) -> str | None:
        began = time.perf_counter()
        try:
            return restore_setup(workspace, key, log)
        finally:
            restores[workspace.task_id] = time.perf_counter() - began

    backend.restore_setup = timed_restore


def patch_pipeline() -> None:
    run = Pipeline.run

    def timed(self: Pipeline, task: Any, control: Any) -> Any:
        started.setdefault(task.id, time.perf_counter())
        return run(self, task, control)

    Pipeline.run = timed  # type: ignore[method-assign]


def seed(github: FakeGitHub, repo: str, files: int) -> None:
    github.create_repo(repo, {"README.md": "# deps\n"})
    github.set_permission(repo, "maintainer", "write")  # a labeller the daemon trusts
    github.commit_files(
        repo,
        "main",
        {
            "setup.sh": SETUP_SH.format(files=files),
            "test.sh": TEST_SH,
            ".gitignore": ".deps/\n",
            "requirements.txt": "venv-like==1\n",
            ".github/claude-issue-solver.yml": "setup: sh setup.sh\ntest: sh test.sh\n",
        },
        message="a sample whose setup writes a venv-like tree",
    )


def one_mode(root: Path, github: FakeGitHub, image: str, cache: bool, runs: int, files: int) -> list[float]:
    """Tasks on one repository, one after the other; the figures of all but the first."""
    mode = "cache" if cache else "nocache"
    repo = f"bench/deps-{mode}"
    seed(github, repo, files)
    state = root / f"state-{mode}"
    config = load_config(
        environ={
            "HOME": str(root),
            "STATE_DIR": str(state),
            "GITHUB_TOKEN": TOKEN,
            "GITHUB_API_URL": github.api_url,
            "GITHUB_REPOS": repo,
            "DOCKER_IMAGE": image,
            "DOCKER_NETWORK": "none",
            "ANTHROPIC_API_KEY": "sk-ant-api03-benchmarkkey0123456789",
            "SETUP_CACHE": "true" if cache else "false",
            "TASK_TIMEOUT": "300",
            "POLL_INTERVAL": "1",  # the next issue is seen at once
        }
    )
    parts = build(config)
    instrument(parts)
    figures: list[float] = []
    restored: list[float] = []
    try:
        for n in range(runs + 1):
            issue = github.create_issue(
                repo, f"bench {n}", "FAKE_CLAUDE_SCENARIO=noop\n", labels=["Claude"], user="maintainer"
            )
            number = issue["number"]
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                parts.daemon.run_once()
                tasks = [t for t in parts.queue.list() if t.issue_number == number]
                if tasks and not tasks[0].state.live:
                    break
                time.sleep(0.05)
            while parts.daemon.active:
                time.sleep(0.05)
            task = next((t for t in parts.queue.list() if t.issue_number == number), None)
            if task is None:
                msg = f"issue #{number} of {repo} was never queued"
                raise SystemExit(msg)
            if task.state is not TaskState.COMPLETED or task.id not in baseline:
                msg = f"task {task.id} ended {task.state.value}: {task.error}"
                raise SystemExit(msg)
            elapsed = baseline[task.id] - started[task.id]
            state_of = (task.meta.get("tests") or {}).get("cache", {}).get("state")
            if n == 0:
                print(f"  first task (mirror, setup {state_of}): {elapsed:.2f}s")
            else:
                figures.append(elapsed)
                if task.id in restores and state_of == "hit":
                    restored.append(restores[task.id])
    finally:
        client = docker.from_env()
        for leftover in client.images.list(filters={"label": [f"{LABEL_OWNER}={owner_of(state.resolve())}"]}):
            client.images.remove(leftover.id, force=True)
    if restored:
        print(f"  of which restoring the saved setup: median {statistics.median(restored):.2f}s")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--files", type=int, default=4000, help="files setup writes into the tree and into HOME each"
    )
    args = parser.parse_args()
    image = fake_agent_image(docker.from_env())
    patch_pipeline()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        github = FakeGitHub(root / "gh", tokens=(TOKEN,)).start()
        try:
            results = {}
            for cache in (True, False):
                print(f"SETUP_CACHE={'true' if cache else 'false'}:")
                results[cache] = one_mode(root, github, image, cache, args.runs, args.files)
        finally:
            github.stop()
    print(
        f"task start -> first test run (baseline started), second and later tasks, {args.runs} runs each, "
        f"setup writing {args.files} files into the tree and {args.files} into HOME:"
    )
    for cache, figures in results.items():
        print(
            f"  SETUP_CACHE={'true ' if cache else 'false'}: median {statistics.median(figures):.2f}s, "
            f"min {min(figures):.2f}s, max {max(figures):.2f}s"
        )


if __name__ == "__main__":
    main()
