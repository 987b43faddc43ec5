"""Time from task start to agent start (warm image) on the Docker backend, against a fresh git clone.

Runs against the loopback GitHub with a generated repository (2,500 files over 60 commits), so the
figures measure our own work: the mirror fetch, the worktree, the hand-over to the agent's uid and the
container start. Usage: python benchmarks/bench_task_start.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import docker

from claude_issue_solver.app import docker_settings
from claude_issue_solver.backends.base import ProcessSpec, WorkspaceSpec
from claude_issue_solver.backends.docker import DockerBackend
from claude_issue_solver.config import load_config
from claude_issue_solver.credentials import GitCredential
from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.demo_world.images import fake_agent_image
from claude_issue_solver.logs import TaskLog
from claude_issue_solver.store.queue import TaskQueue
from claude_issue_solver.store.state import StateStore

TOKEN = "ghp_benchmarktoken0123456789abcdefABCD"


def seed(github: FakeGitHub) -> str:
    repo = github.create_repo("bench/big", {"README.md": "# big\n"})
    for commit in range(60):
        files = {f"src/pkg{commit % 25}/mod{n}.py": f"# {commit}-{n} {'x' * 60}\n" * 200 for n in range(42)}
        github.commit_files("bench/big", "main", files, message=f"commit {commit}")
    return repo.clone_url


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    client = docker.from_env()
    image = fake_agent_image(client)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        github = FakeGitHub(root / "gh", tokens=(TOKEN,)).start()
        try:
            clone_url = seed(github)
            config = load_config(
                environ={
                    "HOME": tmp,
                    "STATE_DIR": str(root / "state"),
                    "GITHUB_TOKEN": TOKEN,
                    "GITHUB_API_URL": github.api_url,
                    "DOCKER_IMAGE": image,
                    "DOCKER_NETWORK": "none",
                }
            )
            backend = DockerBackend(docker_settings(config))
            queue = TaskQueue(StateStore(config.state_file), max_concurrent=100)
            starts, prepares, clones = [], [], []
            for run in range(args.runs + 1):  # the first run creates the mirror: reported apart
                task = queue.submit("bench/big", run + 1, "bench")
                spec = WorkspaceSpec(
                    task_id=task.id,
                    repo="bench/big",
                    issue_number=run + 1,
                    clone_url=clone_url,
                    default_branch="main",
                    branch=f"claude/issue-{run + 1}",
                    credential=lambda: GitCredential("x-access-token", TOKEN),
                )
                agent = ProcessSpec(
                    name="agent",
                    argv=("claude", "-p", "--output-format", "json"),
                    env={},
                    stdin=b"FAKE_CLAUDE_SCENARIO=noop\n",
                )
                log = TaskLog(root / f"{task.id}.log")
                began = time.perf_counter()
                workspace = backend.prepare(spec, log)
                prepared = time.perf_counter() - began
                backend.start_process(workspace, agent, log)
                container = client.containers.get(workspace.handle)
                while container.status == "created":
                    container.reload()
                elapsed = time.perf_counter() - began
                backend.remove(task.id, log)
                if run == 0:
                    print(f"first task (creates the mirror): {elapsed:.2f}s")
                    continue
                starts.append(elapsed)
                prepares.append(prepared)
                target = root / f"clone-{run}"
                began = time.perf_counter()
                subprocess.run(
                    [
                        "git",
                        "-c",
                        f"http.extraHeader=Authorization: Basic {_basic()}",
                        "clone",
                        "-q",
                        clone_url,
                        str(target),
                    ],
                    check=True,
                )
                clones.append(time.perf_counter() - began)
            print(
                f"task start -> agent container running (warm image, {args.runs} runs): "
                f"median {statistics.median(starts):.2f}s, min {min(starts):.2f}s, max {max(starts):.2f}s"
            )
            print(
                f"  of which the workspace (fetch + worktree + hand-over): {statistics.median(prepares):.2f}s"
            )
            print(
                f"fresh git clone of the same repository: median {statistics.median(clones):.2f}s, "
                f"min {min(clones):.2f}s, max {max(clones):.2f}s"
            )
        finally:
            github.stop()


def _basic() -> str:
    import base64

    return base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()


if __name__ == "__main__":
    main()
