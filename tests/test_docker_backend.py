"""The Docker backend against a real Docker daemon, real git and the fake ``claude`` image.

The pipeline is not involved: each test drives the backend's mechanics with the run policy's functions,
the way the pipeline does, and looks at the result where it lands (the bare "remote", the container's
inspect data, the state dir).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

docker = pytest.importorskip("docker")

from claude_issue_solver.backends import docker as docker_backend  # noqa: E402
from claude_issue_solver.backends import docker_images  # noqa: E402
from claude_issue_solver.backends import git as gitops  # noqa: E402
from claude_issue_solver.backends.base import (  # noqa: E402
    LABEL_OWNER,
    LABEL_PROCESS,
    LABEL_TASK,
    BackendError,
    Changes,
    ProcessSpec,
    Pushed,
    PushRejected,
    WorkspaceLost,
    WorkspaceSpec,
)
from claude_issue_solver.backends.docker import DockerBackend, DockerWorkspace  # noqa: E402
from claude_issue_solver.backends.settings import DockerSettings  # noqa: E402
from claude_issue_solver.conventions import SUMMARY_FILE  # noqa: E402
from claude_issue_solver.credentials import GitCredential  # noqa: E402
from claude_issue_solver.logs import TaskLog  # noqa: E402
from claude_issue_solver.run.policy import (  # noqa: E402
    ProcessExit,
    reconcile,
    take_summary,
)
from claude_issue_solver.store.queue import Task  # noqa: E402
from tests import backend_steps as steps  # noqa: E402
from tests import hostile_tree  # noqa: E402
from tests.backend_steps import Job, control  # noqa: E402
from tests.waiting import wait_until  # noqa: E402

pytestmark = pytest.mark.docker

REPO = "acme/widgets"
BRANCH = "claude/issue-7"
# Distinctive so that finding it anywhere is meaningful; not token-shaped, so no redactor hides it by luck.
TOKEN = "s3cr3t-GitHub-T0ken-for-the-docker-tests"
COMMAND = ("claude", "-p", "--output-format", "json", "--dangerously-skip-permissions")
# Quotes, a command substitution, backticks and non-ASCII: the prompt must reach the agent byte for byte.
PROMPT = 'Fix "the widget" $(touch /tmp/pwned) `id` — naïve ✓\n'
EXPECTED_USER = "1000:1000" if os.getuid() == 0 else f"{os.getuid()}:{os.getgid()}"


def git(*args: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"git {' '.join(args)} failed: {proc.stderr}"
    return proc.stdout.strip()


@pytest.fixture
def client(docker_client: docker.DockerClient) -> docker.DockerClient:
    return docker_client


@pytest.fixture
def agent_image(fake_image: str) -> str:
    return fake_image


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    """A bare repository on disk with one commit on ``main``: the clone URL is its path."""
    bare = tmp_path / "remote.git"
    git("init", "--bare", "--quiet", "--initial-branch=main", str(bare))
    seed = tmp_path / "seed"
    git("init", "--quiet", "--initial-branch=main", str(seed))
    (seed / "README.md").write_text("# widgets\n")
    git("add", "-A", cwd=seed)
    git("-c", "user.name=Seed", "-c", "user.email=seed@example.com", "commit", "-qm", "Initial", cwd=seed)
    git("push", "-q", str(bare), "main", cwd=seed)
    return bare


@dataclass
class Harness:
    """Builds jobs, tasks and logs for one test and drives the backend the way the pipeline does."""

    client: docker.DockerClient
    image: str
    tmp_path: Path
    clone_url: str
    backends: list[DockerBackend] = field(default_factory=list)
    # Container names are global to the Docker daemon, which other test runs may share: ids get a tag.
    tag: str = field(default_factory=lambda: secrets.token_hex(3))

    def backend(self, *, build: bool = False, **settings: object) -> DockerBackend:
        """A backend over this test's state dir; a second one is "the daemon after a restart"."""
        values: dict[str, object] = {
            "state_dir": self.tmp_path / "state",
            "network": "none",
            "memory": "256m",
            "cpus": 1.0,
            "pids_limit": 64,
            **settings,
        }
        image = None if build else self.image
        made = DockerBackend(DockerSettings(**values), client=self.client, image=image)  # type: ignore[arg-type]
        self.backends.append(made)
        return made

    def job(
        self,
        scenario: str,
        task_id: str = "widgets-7-aaaaaa",
        *,
        command: tuple[str, ...] = COMMAND,
        credential: Callable[[], GitCredential] = lambda: GitCredential("x-access-token", TOKEN),
        **overrides: object,
    ) -> Job:
        values: dict[str, object] = {
            "task_id": f"{task_id}-{self.tag}",
            "repo": REPO,
            "issue_number": 7,
            "clone_url": self.clone_url,
            "default_branch": "main",
            "branch": BRANCH,
            "credential": credential,
            **overrides,
        }
        agent = ProcessSpec(
            name="agent",
            argv=command,
            env={"ANTHROPIC_API_KEY": "sk-ant-fake-key-for-tests"},
            stdin=f"{PROMPT}FAKE_CLAUDE_SCENARIO={scenario}\n".encode(),
        )
        return Job(WorkspaceSpec(**values), agent)  # type: ignore[arg-type]

    def task(self, job: Job) -> Task:
        spec = job.workspace
        return Task(
            id=spec.task_id, repo=spec.repo, issue_number=spec.issue_number, title="t", branch=spec.branch
        )

    def log(self, job: Job) -> TaskLog:
        return TaskLog(self.tmp_path / "logs" / f"{job.task_id}.log")

    def start(self, backend: DockerBackend, job: Job) -> DockerWorkspace:
        log = self.log(job)
        workspace = backend.prepare(job.workspace, log)
        backend.start_process(workspace, job.agent, log)
        return workspace

    def wait(
        self, backend: DockerBackend, workspace: DockerWorkspace, job: Job, **how: Any
    ) -> ProcessExit | None:
        return steps.wait(backend, workspace, self.log(job), **{"seconds": 60, **how})

    def run(
        self, backend: DockerBackend, job: Job, *, seconds: float = 60
    ) -> tuple[DockerWorkspace, ProcessExit]:
        workspace = self.start(backend, job)
        result = self.wait(backend, workspace, job, seconds=seconds)
        assert result is not None
        return workspace, result

    def collect(self, backend: DockerBackend, workspace: DockerWorkspace) -> tuple[Changes, str | None]:
        return steps.collect(backend, workspace)

    def push(
        self,
        backend: DockerBackend,
        workspace: DockerWorkspace,
        job: Job,
        message: str = "Fix",
        credential: GitCredential | None = None,
    ) -> Pushed:
        return steps.push(backend, workspace, job, self.log(job), message, credential)

    def containers(self, **labels: str) -> list[docker.models.containers.Container]:
        owners = {b.owner for b in self.backends}
        found = []
        for owner in owners:
            filters = {"label": [f"{LABEL_OWNER}={owner}", *(f"{k}={v}" for k, v in labels.items())]}
            found.extend(self.client.containers.list(all=True, filters=filters))
        return found


@pytest.fixture
def harness(client: docker.DockerClient, agent_image: str, tmp_path: Path, remote: Path) -> Iterator[Harness]:
    made = Harness(client, agent_image, tmp_path, str(remote))
    yield made
    # Every backend of a test has its own state dir, so this removes only this test's containers.
    for container in made.containers():
        container.remove(force=True)


def remote_log(remote: Path, ref: str, fmt: str) -> list[str]:
    return git(f"--git-dir={remote}", "log", f"--format={fmt}", ref).splitlines()


def mirror_worktrees(backend: DockerBackend) -> list[str]:
    out = git(f"--git-dir={backend.mirror_dir(REPO)}", "worktree", "list", "--porcelain")
    return [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("worktree ")]


# --- the whole run ---------------------------------------------------------------------------------------


def test_run_collect_push_lands_the_branch(harness: Harness, remote: Path) -> None:
    backend = harness.backend()
    job = harness.job("edit")
    main_sha = git(f"--git-dir={remote}", "rev-parse", "main")

    workspace, result = harness.run(backend, job)

    assert workspace.base_sha == main_sha
    assert result.exit_code == 0, result.tail
    assert json.loads(result.stdout)["is_error"] is False
    # The fake agent records the hash of the stdin it got: the prompt arrived byte for byte.
    prompt_sha = hashlib.sha256(job.agent.stdin).hexdigest()
    assert f"prompt-sha256={prompt_sha}" in (workspace.worktree / "CLAUDE_FIX.md").read_text()
    assert "result: success" in harness.log(job).path.read_text()  # the agent's events, made readable

    changes, summary = harness.collect(backend, workspace)
    assert changes.files == ("CLAUDE_FIX.md",) and not changes.ahead
    assert summary is not None and summary.startswith("Fix issue from fake agent")
    assert "CLAUDE_FIX.md" in changes.diffstat
    assert not (workspace.worktree / SUMMARY_FILE).exists()

    pushed = harness.push(backend, workspace, job, "Fix the widget (#7)")
    assert pushed.committed
    assert git(f"--git-dir={remote}", "rev-parse", f"refs/heads/{BRANCH}") == pushed.sha
    author_and_committer = "Issue Bot|issue-bot@example.com|Issue Bot|issue-bot@example.com"
    assert (
        remote_log(remote, BRANCH, "%an|%ae|%cn|%ce|%s")[0] == f"{author_and_committer}|Fix the widget (#7)"
    )
    files = git(f"--git-dir={remote}", "ls-tree", "-r", "--name-only", BRANCH).splitlines()
    assert sorted(files) == ["CLAUDE_FIX.md", "README.md"]

    # A re-run of the publish step after a crash pushes again without an empty commit.
    again = harness.push(backend, workspace, job, "Fix the widget (#7)")
    assert again == Pushed(pushed.sha, committed=False)
    assert len(remote_log(remote, BRANCH, "%H")) == 2
    after = harness.collect(backend, workspace)[0]
    assert after.files == () and not after.ahead  # nothing left to publish (the diffstat is from the base)


def test_a_rerun_starts_from_the_remote_branch(harness: Harness, remote: Path) -> None:
    backend = harness.backend()
    first_job = harness.job("edit", task_id="widgets-7-first1")
    first, _ = harness.run(backend, first_job)
    harness.collect(backend, first)
    first_sha = harness.push(backend, first, first_job, "First try").sha
    backend.remove(first_job.task_id, harness.log(first_job))

    second_job = harness.job("edit", task_id="widgets-7-second")
    second, result = harness.run(backend, second_job)
    assert result.exit_code == 0, result.tail
    assert second.base_sha == first_sha
    assert len((second.worktree / "CLAUDE_FIX.md").read_text().splitlines()) == 2
    changes, _ = harness.collect(backend, second)
    assert changes.files == ("CLAUDE_FIX.md",)
    assert "CLAUDE_FIX.md" in changes.diffstat and "1 insertion" in changes.diffstat
    second_sha = harness.push(backend, second, second_job, "Second try").sha
    assert remote_log(remote, BRANCH, "%H|%s")[:2] == [f"{second_sha}|Second try", f"{first_sha}|First try"]


def test_noop_changes_nothing(harness: Harness) -> None:
    backend = harness.backend()
    job = harness.job("noop")
    workspace, result = harness.run(backend, job)
    assert result.exit_code == 0
    changes, summary = harness.collect(backend, workspace)
    assert changes == Changes() and summary is None


def test_a_second_process_runs_in_the_same_worktree_as_the_same_user(harness: Harness) -> None:
    """What a test run after the agent needs: same tree, same user, its own output and exit code."""
    backend = harness.backend()
    job = harness.job("edit")
    workspace, _ = harness.run(backend, job)
    check = ProcessSpec(
        name="test-1",
        argv=("sh", "-c", "id -u; cat CLAUDE_FIX.md >/dev/null && cat; exit 3"),
        env={},
        stdin=b"in",
    )
    assert backend.start_process(workspace, check, harness.log(job))
    assert not backend.start_process(workspace, check, harness.log(job))  # one of each name
    result = harness.wait(backend, workspace, job, name="test-1")
    assert result is not None and result.exit_code == 3
    assert result.stdout.split() == [EXPECTED_USER.split(":")[0], "in"]
    container = harness.client.containers.get(f"claude-issue-solver-{job.task_id}-test-1")
    assert container.labels[LABEL_PROCESS] == "test-1" and container.labels[LABEL_TASK] == job.task_id
    assert container.attrs["HostConfig"]["NetworkMode"] == "none"


# --- stopping --------------------------------------------------------------------------------------------


def test_a_hanging_agent_is_killed_at_the_deadline(harness: Harness) -> None:
    backend = harness.backend()
    job = harness.job("hang")
    workspace = harness.start(backend, job)
    started = time.monotonic()
    result = harness.wait(backend, workspace, job, seconds=2)
    elapsed = time.monotonic() - started

    assert result is not None and result.timed_out and not result.cancelled
    assert 1.5 <= elapsed < 2 + docker_backend.POLL_SECONDS + 5
    assert result.exit_code == 137  # SIGKILL
    assert harness.client.containers.get(workspace.handle).status == "exited"


def test_cancel_kills_the_agent(harness: Harness) -> None:
    backend = harness.backend()
    job = harness.job("hang")
    workspace = harness.start(backend, job)
    started = time.monotonic()
    result = harness.wait(backend, workspace, job, seconds=120, stop=control(cancel=True))
    assert result is not None and result.cancelled and not result.timed_out
    assert time.monotonic() - started < docker_backend.POLL_SECONDS + 5
    assert harness.client.containers.get(workspace.handle).status == "exited"


def test_detach_leaves_it_running_and_attach_finishes_it(harness: Harness) -> None:
    backend = harness.backend()
    job = harness.job("wait")
    workspace = harness.start(backend, job)
    assert harness.wait(backend, workspace, job, stop=control(detach=True)) is None
    assert harness.client.containers.get(workspace.handle).status == "running"

    restarted = harness.backend()  # the daemon after a restart: nothing but the task to go on
    found = restarted.attach(harness.task(job))
    assert found == workspace
    (found.worktree / ".fake-claude-release").write_text("go\n")
    result = harness.wait(restarted, found, job)
    assert result is not None and result.exit_code == 0, result and result.tail
    assert harness.collect(restarted, found)[0].files == ("CLAUDE_FIX.md",)


def test_an_agent_that_finished_while_the_daemon_was_down_is_collected(harness: Harness) -> None:
    backend = harness.backend()
    job = harness.job("edit")
    workspace = harness.start(backend, job)
    # Nobody waits through the backend: the daemon is "down" while the container runs to the end.
    assert harness.client.containers.get(workspace.handle).wait(timeout=60)["StatusCode"] == 0

    restarted = harness.backend()
    found = restarted.attach(harness.task(job))
    assert found is not None
    started = time.monotonic()
    result = harness.wait(restarted, found, job)
    assert time.monotonic() - started < 2
    assert result is not None and result.exit_code == 0
    assert json.loads(result.stdout)["subtype"] == "success"
    changes, summary = harness.collect(restarted, found)
    assert changes.files == ("CLAUDE_FIX.md",) and summary is not None


def test_a_removed_container_is_a_lost_workspace(harness: Harness) -> None:
    backend = harness.backend()
    job = harness.job("hang")
    workspace = harness.start(backend, job)
    harness.client.containers.get(workspace.handle).remove(force=True)
    with pytest.raises(WorkspaceLost):
        harness.wait(backend, workspace, job)


def test_a_stale_worktree_of_the_same_issue_gives_way(harness: Harness) -> None:
    backend = harness.backend()
    stale_job = harness.job("noop", task_id="widgets-7-stale1")
    stale = backend.prepare(stale_job.workspace, harness.log(stale_job))  # its task ended without a cleanup
    fresh_job = harness.job("edit", task_id="widgets-7-fresh1")
    fresh, result = harness.run(backend, fresh_job)
    assert result.exit_code == 0
    assert not stale.worktree.exists()
    assert mirror_worktrees(backend) == [str(backend.mirror_dir(REPO)), str(fresh.worktree)]
    assert "removing the stale worktree" in harness.log(fresh_job).path.read_text()


def test_start_process_never_makes_a_second_container(harness: Harness) -> None:
    backend = harness.backend()
    job = harness.job("wait")
    log = harness.log(job)
    workspace = backend.prepare(job.workspace, log)
    # A crash between "created" and "started": the next start_process starts that one.
    (backend.task_dir(job.task_id) / "agent.stdin").write_bytes(job.agent.stdin)
    created = backend._create_container(workspace, job.agent, harness.image)
    assert created.status == "created"
    assert not backend.start_process(workspace, job.agent, log)
    assert not backend.start_process(workspace, job.agent, log)
    assert backend.prepare(job.workspace, log) == workspace  # prepare is idempotent too
    assert not backend.start_process(workspace, job.agent, log)

    containers = harness.containers(**{LABEL_TASK: job.task_id})
    assert [c.id for c in containers] == [created.id]
    assert containers[0].status == "running"
    (workspace.worktree / ".fake-claude-release").write_text("go\n")
    result = harness.wait(backend, workspace, job)
    assert result is not None and result.exit_code == 0


def test_another_daemons_container_of_the_same_name_is_left_alone(harness: Harness) -> None:
    mine = harness.backend()
    job = harness.job("wait")
    workspace = harness.start(mine, job)
    other = harness.backend(state_dir=harness.tmp_path / "other-state")  # same task id, other STATE_DIR
    theirs = other.prepare(job.workspace, harness.log(job))
    with pytest.raises(BackendError, match="belongs to another daemon"):
        other.start_process(theirs, job.agent, harness.log(job))
    with pytest.raises(WorkspaceLost):
        other.poll_process(theirs, "agent")
    assert f"container {workspace.handle}" not in other.remove(job.task_id)
    assert harness.client.containers.get(workspace.handle).status == "running"


# --- files ---------------------------------------------------------------------------------------------


def test_files_never_follow_a_link(harness: Harness, tmp_path: Path) -> None:
    backend = harness.backend()
    job = harness.job("noop")
    workspace = backend.prepare(job.workspace, harness.log(job))
    secret = tmp_path / "host-secret"
    secret.write_text("host secret\n")
    (workspace.worktree / SUMMARY_FILE).symlink_to(secret)
    (workspace.worktree / "dir").symlink_to(tmp_path)

    assert backend.read_file(workspace, SUMMARY_FILE, 1024) is None
    assert take_summary(backend, workspace) is None
    assert not (workspace.worktree / SUMMARY_FILE).is_symlink() and secret.read_text() == "host secret\n"
    for climbing in ("../host-secret", "/etc/passwd", "dir/host-secret"):
        with pytest.raises(BackendError):
            backend.read_file(workspace, climbing, 1024)
    (workspace.worktree / SUMMARY_FILE).mkdir()
    (workspace.worktree / SUMMARY_FILE / "x").write_text("x")
    backend.delete_file(workspace, SUMMARY_FILE)
    assert not (workspace.worktree / SUMMARY_FILE).exists()
    backend.write_file(workspace, "notes/a.txt", b"hello")
    assert backend.read_file(workspace, "notes/a.txt", 3) == b"hel"
    backend.delete_file(workspace, "missing.txt")  # nothing there: fine


# --- cleaning up -----------------------------------------------------------------------------------------


def test_remove_takes_container_worktree_and_task_dir(harness: Harness) -> None:
    backend = harness.backend()
    job = harness.job("wait")
    workspace = harness.start(backend, job)  # still running: removal must not need it to have stopped
    task = harness.task(job)

    removed = backend.remove(job.task_id, harness.log(job))

    assert removed == [
        f"container {workspace.handle}",
        f"worktree {workspace.worktree}",
        f"task directory {backend.task_dir(job.task_id)}",
    ]
    assert harness.containers() == []
    assert not workspace.worktree.exists()
    assert not backend.task_dir(job.task_id).exists()
    assert mirror_worktrees(backend) == [str(backend.mirror_dir(REPO))]
    assert backend.attach(task) is None
    assert backend.remove(job.task_id) == []  # twice: nothing left, no error


def test_a_chmod_000_tree_the_agent_left_is_removed_and_the_next_task_prepares(harness: Harness) -> None:
    """Issue #19: an unreadable directory made the removal raise, and the next task failed in prepare."""
    backend = harness.backend()
    first = harness.job("edit", task_id="widgets-7-first1")
    workspace, result = harness.run(backend, first)
    assert result.exit_code == 0
    owner = os.stat(workspace.worktree / "README.md")  # whoever the agent is: its files, its modes
    nested = workspace.worktree / "cache" / "a" / "b"
    nested.mkdir(parents=True)
    (nested / "blob").write_text("x")
    for path in (nested / "blob", nested, nested.parent, nested.parent.parent):
        os.chown(path, owner.st_uid, owner.st_gid)
        os.chmod(path, 0)

    backend.remove(first.task_id, harness.log(first))

    assert not workspace.worktree.exists()
    second = harness.job("edit", task_id="widgets-7-second")
    fresh, result = harness.run(backend, second)
    assert result.exit_code == 0
    assert mirror_worktrees(backend) == [str(backend.mirror_dir(REPO)), str(fresh.worktree)]


def test_reconcile_keeps_only_live_tasks(harness: Harness) -> None:
    backend = harness.backend()
    live, orphan, stray = (
        harness.job("noop", task_id=f"widgets-{n}-abcdef", issue_number=n, branch=f"claude/issue-{n}")
        for n in (1, 2, 3)
    )
    live_ws = harness.start(backend, live)
    orphan_ws = harness.start(backend, orphan)
    stray_ws = backend.prepare(
        stray.workspace, harness.log(stray)
    )  # a worktree whose container never started
    assert backend.list_ours() == {live.task_id, orphan.task_id, stray.task_id}

    removed = reconcile(backend, {live.task_id})

    assert f"container claude-issue-solver-{orphan.task_id}" in removed
    assert f"worktree {orphan_ws.worktree}" in removed and f"worktree {stray_ws.worktree}" in removed
    assert [c.labels[LABEL_TASK] for c in harness.containers()] == [live.task_id]
    assert live_ws.worktree.is_dir()
    assert not orphan_ws.worktree.exists()
    assert mirror_worktrees(backend) == [str(backend.mirror_dir(REPO)), str(live_ws.worktree)]
    assert backend.list_ours() == {live.task_id}
    assert reconcile(backend, {live.task_id}) == []


# --- confinement and secrets -----------------------------------------------------------------------------


def test_the_container_is_confined_and_never_sees_the_token(harness: Harness) -> None:
    backend = harness.backend()
    job = harness.job("wait")
    workspace = harness.start(backend, job)
    container = harness.client.containers.get(workspace.handle)
    attrs = container.attrs
    host = attrs["HostConfig"]

    assert attrs["Config"]["User"] == EXPECTED_USER
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert "no-new-privileges" in host["SecurityOpt"] and host["Privileged"] is False
    assert host["NetworkMode"] == "none" and host["AutoRemove"] is False
    assert host["Memory"] == 256 * 1024 * 1024 and host["NanoCpus"] == 10**9 and host["PidsLimit"] == 64
    assert host["Init"] is True
    assert TOKEN not in json.dumps(attrs)

    def sh(script: str) -> tuple[int, str]:
        code, out = container.exec_run(["sh", "-c", script])
        return code, out.decode().strip()

    assert sh("id -u")[1] == EXPECTED_USER.split(":")[0]
    assert sh("grep CapEff /proc/self/status")[1].split()[-1] == "0" * 16
    assert sh("touch /task/x")[0] != 0  # the prompt is read-only
    assert sh("touch /workspace/probe && rm /workspace/probe")[0] == 0
    # The worktree's .git names a host path in the mirror: it must exist in the container, read-only.
    code, dot_git = sh("cat /workspace/.git")
    assert code == 0 and dot_git.startswith("gitdir: ")
    gitdir = dot_git.removeprefix("gitdir: ")
    assert sh(f"test -f {gitdir}/HEAD && test -f {gitdir}/commondir")[0] == 0
    assert sh(f"touch {gitdir}/probe")[0] != 0
    if sh("command -v git")[0] == 0:
        assert sh("git status --porcelain")[0] == 0
    assert sh("env | grep -c GITHUB")[1] == "0"

    (workspace.worktree / ".fake-claude-release").write_text("go\n")
    result = harness.wait(backend, workspace, job)
    assert result is not None and result.exit_code == 0
    harness.collect(backend, workspace)
    harness.push(backend, workspace, job)

    state = harness.tmp_path / "state"
    holding = [p for p in state.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert holding == []
    assert (
        git(f"--git-dir={backend.mirror_dir(REPO)}", "config", "remote.origin.url") == job.workspace.clone_url
    )


def test_what_the_agent_orphans_is_reaped_not_left_a_zombie(harness: Harness) -> None:
    """The process's command never waits for strangers (node, the CLI, here ``sleep``): an orphan of
    the agent's shell is reparented to PID 1, which must be an init that reaps it, or each one stays a
    zombie holding one of ``pids_limit`` until the container ends."""
    backend = harness.backend()
    job = harness.job("none", command=("sleep", "60"))
    workspace = harness.start(backend, job)
    container = harness.client.containers.get(workspace.handle)

    def sh(script: str) -> tuple[int, str]:
        code, out = container.exec_run(["sh", "-c", script])
        return code, out.decode().strip()

    # The subshell exits at once; its child, orphaned, ends a moment later with no parent of its own.
    assert sh("(sh -c 'sleep 0.2; exec touch /tmp/orphan-done' &) ; true")[0] == 0
    wait_until(lambda: sh("test -f /tmp/orphan-done")[0] == 0, timeout=10, what="the orphan", interval=0.2)
    zombies = "grep -l '^State:.*Z' /proc/[0-9]*/status 2>/dev/null | wc -l"
    wait_until(lambda: sh(zombies)[1] == "0", timeout=10, what="the orphan reaped", interval=0.2)
    container.reload()
    assert container.status == "running"  # the command itself goes on


def test_host_git_ignores_a_git_file_the_agent_rewrote(harness: Harness, tmp_path: Path) -> None:
    backend = harness.backend()
    job = harness.job("edit")
    workspace, _ = harness.run(backend, job)
    worktree = workspace.worktree
    # What a hostile agent can do from inside: point .git at a git dir of its own whose config runs a
    # command (a clean filter here) the moment host-side git stages a file.
    marker = tmp_path / "host-command-ran"
    evil = worktree / "evil.git"  # a git dir laid out as plain files, not a nested repository
    git("init", "-q", "--bare", str(evil))
    git("config", "-f", str(evil / "config"), "core.bare", "false")
    git("config", "-f", str(evil / "config"), "filter.x.clean", f"touch {marker}; cat")
    (worktree / ".gitattributes").write_text("* filter=x\n")
    (worktree / ".git").write_text(f"gitdir: {evil}\n")

    changes, _ = harness.collect(backend, workspace)
    harness.push(backend, workspace, job)
    assert "CLAUDE_FIX.md" in changes.files and not marker.exists()

    # The control: git that trusts the worktree's .git does run the agent's command.
    subprocess.run(
        ["git", "-c", "safe.directory=*", "add", "-A"], cwd=worktree, capture_output=True, check=False
    )
    assert marker.exists()


@pytest.mark.parametrize("how", ["hook", "non-fast-forward"])
def test_a_refused_push_raises_push_rejected(harness: Harness, remote: Path, how: str) -> None:
    backend = harness.backend()
    job = harness.job("edit")
    workspace, _ = harness.run(backend, job)
    harness.collect(backend, workspace)
    if how == "hook":
        hook = remote / "hooks" / "pre-receive"
        hook.write_text("#!/bin/sh\necho 'claude/* branches are protected here' >&2\nexit 1\n")
        hook.chmod(0o755)
    else:  # someone else pushed to the branch while the agent worked
        seed = harness.tmp_path / "seed"
        git("checkout", "-qb", BRANCH, cwd=seed)
        git(
            "-c",
            "user.name=S",
            "-c",
            "user.email=s@example.com",
            "commit",
            "-qm",
            "x",
            "--allow-empty",
            cwd=seed,
        )
        git("push", "-q", str(remote), BRANCH, cwd=seed)

    with pytest.raises(PushRejected) as caught:
        harness.push(backend, workspace, job)
    message = str(caught.value)
    if how == "hook":
        assert "pre-receive hook declined" in message and "protected here" in message
    else:
        assert "fetch first" in message or "non-fast-forward" in message
    assert TOKEN not in message


def test_fetch_and_push_authenticate_through_the_fake_github(harness: Harness, tmp_path: Path) -> None:
    fake_github = pytest.importorskip("claude_issue_solver.demo_world.github")
    with fake_github.FakeGitHub(tmp_path / "github") as fake:
        repo = fake.create_repo(REPO)
        backend = harness.backend()
        good = harness.job(
            "edit", clone_url=repo.clone_url, credential=lambda: GitCredential("x", "test-token")
        )
        workspace, _ = harness.run(backend, good)
        harness.collect(backend, workspace)
        sha = harness.push(backend, workspace, good).sha
        assert repo.branch_sha(BRANCH) == sha
        assert any(r.kind == "git" and r.auth == "basic" for r in fake.requests)

        wrong_token = "wrong-token-do-not-print"
        bad = harness.job(
            "edit",
            task_id="widgets-7-badtok",
            clone_url=repo.clone_url,
            credential=lambda: GitCredential("x", wrong_token),
        )
        with pytest.raises(BackendError) as caught:
            backend.prepare(bad.workspace, harness.log(bad))
        assert not caught.value.retryable  # a rejected credential does not heal by retrying
        assert wrong_token not in str(caught.value)
        with pytest.raises(BackendError) as caught:
            harness.push(backend, workspace, bad, credential=GitCredential("x", wrong_token))
        assert not isinstance(caught.value, PushRejected) and wrong_token not in str(caught.value)

    for path in (harness.tmp_path / "state").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"test-token" not in data and wrong_token.encode() not in data, path


# --- images and the daemon -------------------------------------------------------------------------------


def test_ensure_image_builds_on_the_repository_dockerfile_and_caches(
    harness: Harness, remote: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stand-in for Dockerfile.claude: the real one installs Claude Code from npm.
    stand_in = harness.tmp_path / "Dockerfile.claude"
    stand_in.write_text(
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nUSER root\n"
        f"RUN echo agent-{harness.tmp_path.name} > /agent\nUSER 1000\n"
    )
    monkeypatch.setattr(docker_images, "agent_dockerfile", lambda: stand_in)
    backend = harness.backend(build=True, base_image=harness.image)
    job = harness.job("noop")
    backend.prepare(job.workspace, harness.log(job))  # fetches the mirror the base image is built from

    tags: list[str] = []
    try:
        plain = backend.ensure_image(REPO, "main")
        tags.append(plain)
        assert plain.startswith("claude-issue-solver-agent:")
        started = time.monotonic()
        assert backend.ensure_image(REPO, "main") == plain
        assert time.monotonic() - started < 1  # cached by content hash: no second build

        seed = harness.tmp_path / "seed"
        (seed / "Dockerfile").write_text(
            f"FROM {harness.image}\nUSER root\nRUN echo repo > /repo\nUSER 1000\n"
        )
        git("add", "-A", cwd=seed)
        git("-c", "user.name=S", "-c", "user.email=s@example.com", "commit", "-qm", "Dockerfile", cwd=seed)
        git("push", "-q", str(remote), "main", cwd=seed)
        second = harness.job("noop", task_id="widgets-7-second")
        backend.prepare(second.workspace, harness.log(second))
        layered = backend.ensure_image(REPO, "main")
        tags.append(layered)
        base_tags = [t for t in harness.client.images.list() for t in t.tags if "base-acme-widgets" in t]
        tags.extend(base_tags)
        assert layered != plain and base_tags
        out = harness.client.containers.run(
            layered,
            ["cat", "/repo", "/agent"],
            remove=True,
            network_mode="none",
            labels={LABEL_OWNER: backend.owner},
        )
        assert out.decode().split() == ["repo", f"agent-{harness.tmp_path.name}"]

        stand_in.write_text(
            "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nUSER root\nRUN echo broken-step-output && exit 3\n"
        )
        with pytest.raises(BackendError) as caught:
            backend.ensure_image(REPO, "main")
        assert "broken-step-output" in str(caught.value)
    finally:
        for tag in tags:
            harness.client.images.remove(tag, force=True)


def test_check_names_an_unreachable_daemon(tmp_path: Path) -> None:
    unreachable = docker.DockerClient(base_url=f"unix://{tmp_path}/no-docker.sock", version="1.41")
    backend = DockerBackend(DockerSettings(state_dir=tmp_path / "state"), client=unreachable)
    with pytest.raises(BackendError, match=r"cannot reach the Docker daemon: .* is Docker running"):
        backend.check()


def test_git_errors_never_show_the_credential(tmp_path: Path) -> None:
    credential = GitCredential("x-access-token", TOKEN)
    url = "http://127.0.0.1:9/acme/widgets.git"  # the discard port: nothing listens
    with pytest.raises(gitops.GitError) as caught:
        gitops.run_git(["ls-remote", url], cwd=tmp_path, credential=credential, timeout=30)
    assert "ls-remote" in str(caught.value) and TOKEN not in str(caught.value)
    assert TOKEN not in repr(credential)

    with pytest.raises(gitops.GitError) as caught:
        gitops.ensure_mirror(tmp_path / "mirror.git", url, credential)
    assert caught.value.retryable  # nothing listening may be a blip; a refused credential is not
    assert TOKEN not in str(caught.value)
    assert TOKEN not in (tmp_path / "mirror.git" / "config").read_text()


def test_a_nested_repository_the_agent_plants_is_never_interpreted_nor_committed(
    harness: Harness, remote: Path, tmp_path: Path
) -> None:
    """#18: the agent plants repositories whose own config runs a command (a clean filter, an
    fsmonitor) at a submodule's path and elsewhere; host git runs none of it, in the first run and in
    a re-run over what it pushed, commits neither as a gitlink, and says what it left out."""
    seed = tmp_path / "seed"
    git("-C", str(seed), "update-index", "--add", "--cacheinfo", f"160000,{'1' * 40},vendor/lib")
    git("-C", str(seed), "-c", "user.name=Seed", "-c", "user.email=seed@example.com", "commit", "-qm", "Sub")
    git("-C", str(seed), "push", "-q", str(remote), "main")
    marker = hostile_tree.marker_for(tmp_path)  # a host path: the container cannot create it
    planted = base64.b64encode(hostile_tree.nested_repo_tar(marker))
    # The stdin file is read twice: once per planted copy.
    plant = (
        "for d in vendor/lib vendor/evil; do mkdir -p $d && base64 -d </task/agent.stdin | tar -xC $d; done"
    )
    backend = harness.backend()
    for run in ("first1", "second"):
        base = harness.job("noop", task_id=f"widgets-7-{run}")
        job = replace(
            base,
            agent=replace(
                base.agent, argv=("sh", "-c", f"{plant} && echo {run} > vendor/{run}.txt"), stdin=planted
            ),
        )
        workspace, result = harness.run(backend, job)
        assert result.exit_code == 0, result.tail
        assert (workspace.worktree / "vendor" / "evil" / ".git" / "config").is_file()  # planted
        changes, _ = harness.collect(backend, workspace)
        assert changes.files == (f"vendor/{run}.txt",)
        assert changes.left_out == (
            f"vendor/evil/ ({gitops.NESTED_REPOSITORY})",
            f"vendor/lib/ ({gitops.SUBMODULE})",
        )
        assert "vendor/evil" not in changes.diffstat and "vendor/lib" not in changes.diffstat
        harness.push(backend, workspace, job, f"Run {run}")
        assert hostile_tree.ran(marker) == []
        tree = git(f"--git-dir={remote}", "ls-tree", "-r", BRANCH).splitlines()
        assert [line for line in tree if line.startswith("160000 ")] == [
            f"160000 commit {'1' * 40}\tvendor/lib"
        ]
        assert not [line for line in tree if "vendor/evil" in line]
        backend.remove(job.task_id, harness.log(job))
    assert hostile_tree.ran(marker) == []


# --- bounded output ---------------------------------------------------------------------------------


def test_100_mb_on_one_line_comes_back_bounded_with_its_end_and_a_note(harness: Harness) -> None:
    """A process that prints 100 MB without a newline: the daemon keeps the start and the end of it, notes
    what it left out, Docker's log of the container is capped, and the task log still gets the end."""
    from claude_issue_solver.run.policy import OUTPUT_BOUNDS

    options = docker_backend.LOG_CONFIG["config"]
    backend = harness.backend()
    loud = "echo FIRST; head -c 100000000 /dev/zero | tr '\\0' a; echo; echo LAST; echo ERR >&2"
    job = harness.job("edit", command=("sh", "-c", loud))
    workspace, result = harness.run(backend, job, seconds=120)
    assert result.exit_code == 0
    # The start is what Docker's capped log still holds (FIRST rotated out); the end is intact.
    assert result.stdout.startswith("aaaa") and result.stdout.endswith("aaaa\nLAST\n")
    assert "of this output left out here" in result.stdout
    assert len(result.stdout) < OUTPUT_BOUNDS.head + OUTPUT_BOUNDS.tail + 1000
    assert result.stderr == "ERR\n"
    assert "LAST" in result.tail
    (container,) = harness.containers(**{LABEL_PROCESS: "agent"})
    assert container.attrs["HostConfig"]["LogConfig"] == {"Type": "json-file", "Config": options}
    # The live copy gets the end too: on a loaded machine it may still be writing the 100 MB when the
    # wait for the process gave up on it, so wait for its last line with a deadline.
    wait_until(lambda: "LAST" in harness.log(job).path.read_text()[-10_000:], 120, "the live copy's end")
    log = harness.log(job).path.read_text()
    assert "FIRST" in log[:10_000]
    assert "left out" in log
    # After a restart the ended process is read again, as bounded.
    again = backend.output(workspace, "agent", OUTPUT_BOUNDS)
    assert again.stdout == result.stdout and again.left_out > 10_000_000
