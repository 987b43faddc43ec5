"""The Docker backend against a real Docker daemon, real git and the fake ``claude`` image.

The pipeline is not involved: each test drives the backend's steps itself, the way the pipeline would,
and looks at the result where it lands (the bare "remote", the container's inspect data, the state dir).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

docker = pytest.importorskip("docker")

from claude_issue_solver import gitops  # noqa: E402
from claude_issue_solver.backends import docker as docker_backend  # noqa: E402
from claude_issue_solver.backends.base import (  # noqa: E402
    LABEL_OWNER,
    LABEL_TASK,
    AgentExit,
    BackendError,
    GitCredential,
    PushRejected,
    RunSpec,
    Workspace,
    WorkspaceLost,
)
from claude_issue_solver.backends.docker import DockerBackend  # noqa: E402
from claude_issue_solver.config import Config  # noqa: E402
from claude_issue_solver.logs import TaskLog  # noqa: E402
from claude_issue_solver.queue import Task  # noqa: E402

pytestmark = pytest.mark.docker

REPO = "acme/widgets"
BRANCH = "claude/issue-7"
# Distinctive so that finding it anywhere is meaningful; not token-shaped, so no redactor hides it by luck.
TOKEN = "s3cr3t-GitHub-T0ken-for-the-docker-tests"
AUTHOR = ("Issue Bot", "issue-bot@example.com")
COMMAND = ("claude", "-p", "--output-format", "json", "--dangerously-skip-permissions")
# Quotes, a command substitution, backticks and non-ASCII: the prompt must reach the agent byte for byte.
PROMPT = 'Fix "the widget" $(touch /tmp/pwned) `id` — naïve ✓\n'
EXPECTED_USER = "1000:1000" if os.getuid() == 0 else f"{os.getuid()}:{os.getgid()}"


def git(*args: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"git {' '.join(args)} failed: {proc.stderr}"
    return proc.stdout.strip()


def no_stop() -> str | None:
    return None


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
    """Builds specs, tasks and logs for one test and drives the backend the way the pipeline does."""

    client: docker.DockerClient
    image: str
    tmp_path: Path
    clone_url: str
    backends: list[DockerBackend] = field(default_factory=list)

    def backend(self, **config: object) -> DockerBackend:
        """A backend over this test's state dir; a second one is "the daemon after a restart"."""
        settings: dict[str, object] = {
            "state_dir": self.tmp_path / "state",
            "docker_network": "none",
            "docker_memory": "256m",
            "docker_cpus": 1.0,
            "docker_pids_limit": 64,
            **config,
        }
        image = None if settings.pop("build", False) else self.image
        made = DockerBackend(Config(**settings), client=self.client, image=image)  # type: ignore[arg-type]
        self.backends.append(made)
        return made

    def spec(self, scenario: str, task_id: str = "widgets-7-aaaaaa", **overrides: object) -> RunSpec:
        values: dict[str, object] = {
            "task_id": task_id,
            "repo": REPO,
            "issue_number": 7,
            "clone_url": self.clone_url,
            "default_branch": "main",
            "branch": BRANCH,
            "prompt": f"{PROMPT}FAKE_CLAUDE_SCENARIO={scenario}\n",
            "command": COMMAND,
            "agent_env": {"ANTHROPIC_API_KEY": "sk-ant-fake-key-for-tests"},
            "credential": lambda: GitCredential("x-access-token", TOKEN),
            **overrides,
        }
        return RunSpec(**values)  # type: ignore[arg-type]

    def task(self, spec: RunSpec) -> Task:
        return Task(
            id=spec.task_id, repo=spec.repo, issue_number=spec.issue_number, title="t", branch=spec.branch
        )

    def log(self, spec: RunSpec) -> TaskLog:
        return TaskLog(self.tmp_path / "logs" / f"{spec.task_id}.log")

    def start(self, backend: DockerBackend, spec: RunSpec) -> Workspace:
        log = self.log(spec)
        workspace = backend.prepare(spec, log)
        backend.start_agent(workspace, spec, log)
        return workspace

    def run(
        self,
        backend: DockerBackend,
        spec: RunSpec,
        *,
        seconds: float = 60,
        should_stop: Callable[[], str | None] = no_stop,
    ) -> tuple[Workspace, AgentExit]:
        workspace = self.start(backend, spec)
        result = backend.wait(
            workspace, deadline=time.time() + seconds, should_stop=should_stop, log=self.log(spec)
        )
        assert result is not None
        return workspace, result

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
    spec = harness.spec("edit")
    main_sha = git(f"--git-dir={remote}", "rev-parse", "main")

    workspace, result = harness.run(backend, spec)

    assert workspace.base_sha == main_sha
    assert result.exit_code == 0, result.log_tail
    assert json.loads(result.stdout)["is_error"] is False
    assert workspace.path is not None
    # The fake agent records the hash of the stdin it got: the prompt arrived byte for byte.
    prompt_sha = hashlib.sha256(spec.prompt.encode()).hexdigest()
    assert f"prompt-sha256={prompt_sha}" in (workspace.path / "CLAUDE_FIX.md").read_text()
    assert "result: success" in harness.log(spec).path.read_text()  # the agent's events, made readable

    changes = backend.collect(workspace, harness.log(spec))
    assert changes.changed and not changes.ahead
    assert changes.files == ("CLAUDE_FIX.md",)
    assert changes.summary is not None and changes.summary.startswith("Fix issue from fake agent")
    assert "CLAUDE_FIX.md" in changes.diffstat
    assert not (workspace.path / gitops.SUMMARY_FILE).exists()

    sha = backend.push(workspace, spec, "Fix the widget (#7)", AUTHOR, harness.log(spec))
    assert git(f"--git-dir={remote}", "rev-parse", f"refs/heads/{BRANCH}") == sha
    author_and_committer = "Issue Bot|issue-bot@example.com|Issue Bot|issue-bot@example.com"
    assert (
        remote_log(remote, BRANCH, "%an|%ae|%cn|%ce|%s")[0] == f"{author_and_committer}|Fix the widget (#7)"
    )
    files = git(f"--git-dir={remote}", "ls-tree", "-r", "--name-only", BRANCH).splitlines()
    assert sorted(files) == ["CLAUDE_FIX.md", "README.md"]

    # A re-run of the publish step after a crash pushes again without an empty commit.
    assert backend.push(workspace, spec, "Fix the widget (#7)", AUTHOR, harness.log(spec)) == sha
    assert len(remote_log(remote, BRANCH, "%H")) == 2
    assert not backend.collect(workspace, harness.log(spec)).changed


def test_a_rerun_starts_from_the_remote_branch(harness: Harness, remote: Path) -> None:
    backend = harness.backend()
    first_spec = harness.spec("edit", task_id="widgets-7-first1")
    first, _ = harness.run(backend, first_spec)
    backend.collect(first, harness.log(first_spec))
    first_sha = backend.push(first, first_spec, "First try", AUTHOR, harness.log(first_spec))
    backend.cleanup(first, harness.task(first_spec), harness.log(first_spec))

    second_spec = harness.spec("edit", task_id="widgets-7-second")
    second, result = harness.run(backend, second_spec)
    assert result.exit_code == 0, result.log_tail
    assert second.base_sha == first_sha
    assert second.path is not None
    assert len((second.path / "CLAUDE_FIX.md").read_text().splitlines()) == 2
    changes = backend.collect(second, harness.log(second_spec))
    assert changes.files == ("CLAUDE_FIX.md",)
    assert "CLAUDE_FIX.md" in changes.diffstat and "1 insertion" in changes.diffstat
    second_sha = backend.push(second, second_spec, "Second try", AUTHOR, harness.log(second_spec))
    assert remote_log(remote, BRANCH, "%H|%s")[:2] == [f"{second_sha}|Second try", f"{first_sha}|First try"]


def test_noop_changes_nothing(harness: Harness) -> None:
    backend = harness.backend()
    spec = harness.spec("noop")
    workspace, result = harness.run(backend, spec)
    assert result.exit_code == 0
    changes = backend.collect(workspace, harness.log(spec))
    assert not changes.changed
    assert changes.files == () and changes.summary is None and changes.diffstat == ""


# --- stopping --------------------------------------------------------------------------------------------


def test_a_hanging_agent_is_killed_at_the_deadline(harness: Harness) -> None:
    backend = harness.backend()
    spec = harness.spec("hang")
    workspace = harness.start(backend, spec)
    started = time.monotonic()
    result = backend.wait(workspace, deadline=time.time() + 2, should_stop=no_stop, log=harness.log(spec))
    elapsed = time.monotonic() - started

    assert result is not None and result.timed_out and not result.cancelled
    assert 1.5 <= elapsed < 2 + docker_backend.WAIT_POLL_SECONDS + 5
    assert result.exit_code == 137  # SIGKILL
    container = harness.client.containers.get(workspace.handle)
    assert container.status == "exited"


def test_cancel_kills_the_agent(harness: Harness) -> None:
    backend = harness.backend()
    spec = harness.spec("hang")
    workspace = harness.start(backend, spec)
    started = time.monotonic()
    result = backend.wait(
        workspace, deadline=time.time() + 120, should_stop=lambda: "cancel", log=harness.log(spec)
    )
    assert result is not None and result.cancelled and not result.timed_out
    assert time.monotonic() - started < docker_backend.WAIT_POLL_SECONDS + 5
    assert harness.client.containers.get(workspace.handle).status == "exited"


def test_detach_leaves_it_running_and_attach_finishes_it(harness: Harness) -> None:
    backend = harness.backend()
    spec = harness.spec("wait")
    workspace = harness.start(backend, spec)
    assert (
        backend.wait(
            workspace, deadline=time.time() + 60, should_stop=lambda: "detach", log=harness.log(spec)
        )
        is None
    )
    assert harness.client.containers.get(workspace.handle).status == "running"

    restarted = harness.backend()  # the daemon after a restart: nothing but the task to go on
    found = restarted.attach(harness.task(spec))
    assert found is not None
    assert (found.handle, found.path, found.base_sha, found.branch) == (
        workspace.handle,
        workspace.path,
        workspace.base_sha,
        BRANCH,
    )
    assert found.path is not None
    (found.path / ".fake-claude-release").write_text("go\n")
    result = restarted.wait(found, deadline=time.time() + 60, should_stop=no_stop, log=harness.log(spec))
    assert result is not None and result.exit_code == 0, result and result.log_tail
    assert restarted.collect(found, harness.log(spec)).files == ("CLAUDE_FIX.md",)


def test_an_agent_that_finished_while_the_daemon_was_down_is_collected(harness: Harness) -> None:
    backend = harness.backend()
    spec = harness.spec("edit")
    workspace = harness.start(backend, spec)
    # Nobody waits through the backend: the daemon is "down" while the container runs to the end.
    assert harness.client.containers.get(workspace.handle).wait(timeout=60)["StatusCode"] == 0

    restarted = harness.backend()
    found = restarted.attach(harness.task(spec))
    assert found is not None
    started = time.monotonic()
    result = restarted.wait(found, deadline=time.time() + 60, should_stop=no_stop, log=harness.log(spec))
    assert time.monotonic() - started < 2
    assert result is not None and result.exit_code == 0
    assert json.loads(result.stdout)["subtype"] == "success"
    changes = restarted.collect(found, harness.log(spec))
    assert changes.files == ("CLAUDE_FIX.md",) and changes.summary is not None


def test_a_removed_container_is_a_lost_workspace(harness: Harness) -> None:
    backend = harness.backend()
    spec = harness.spec("hang")
    workspace = harness.start(backend, spec)
    harness.client.containers.get(workspace.handle).remove(force=True)
    with pytest.raises(WorkspaceLost):
        backend.wait(workspace, deadline=time.time() + 60, should_stop=no_stop, log=harness.log(spec))


def test_a_stale_worktree_of_the_same_issue_gives_way(harness: Harness) -> None:
    backend = harness.backend()
    stale_spec = harness.spec("noop", task_id="widgets-7-stale1")
    stale = backend.prepare(stale_spec, harness.log(stale_spec))  # its task ended without a cleanup
    fresh_spec = harness.spec("edit", task_id="widgets-7-fresh1")
    fresh, result = harness.run(backend, fresh_spec)
    assert result.exit_code == 0
    assert stale.path is not None and not stale.path.exists()
    assert mirror_worktrees(backend) == [str(backend.mirror_dir(REPO)), str(fresh.path)]
    assert "removing the stale worktree" in harness.log(fresh_spec).path.read_text()


def test_start_agent_never_makes_a_second_container(harness: Harness) -> None:
    backend = harness.backend()
    spec = harness.spec("wait")
    log = harness.log(spec)
    workspace = backend.prepare(spec, log)
    # A crash between "created" and "started": the next start_agent starts that one.
    created = backend._create_container(workspace, spec, harness.image)
    assert created.status == "created"
    backend.start_agent(workspace, spec, log)
    backend.start_agent(workspace, spec, log)
    assert backend.prepare(spec, log).path == workspace.path  # prepare is idempotent too
    backend.start_agent(workspace, spec, log)

    containers = harness.containers(**{LABEL_TASK: spec.task_id})
    assert [c.id for c in containers] == [created.id]
    assert containers[0].status == "running"
    assert workspace.path is not None
    (workspace.path / ".fake-claude-release").write_text("go\n")
    result = backend.wait(workspace, deadline=time.time() + 60, should_stop=no_stop, log=log)
    assert result is not None and result.exit_code == 0


# --- cleaning up -----------------------------------------------------------------------------------------


def test_cleanup_removes_container_worktree_and_task_dir(harness: Harness) -> None:
    backend = harness.backend()
    spec = harness.spec("wait")
    workspace = harness.start(backend, spec)  # still running: cleanup must not need it to have stopped
    assert workspace.path is not None
    task = harness.task(spec)

    backend.cleanup(workspace, task, harness.log(spec))

    assert harness.containers() == []
    assert not workspace.path.exists()
    assert not backend.task_dir(spec.task_id).exists()
    assert mirror_worktrees(backend) == [str(backend.mirror_dir(REPO))]
    assert backend.attach(task) is None
    backend.cleanup(workspace, task, harness.log(spec))  # twice, and without a workspace: no error
    backend.cleanup(None, task, harness.log(spec))
    assert "removed container" in harness.log(spec).path.read_text()


def test_remove_orphans_keeps_only_live_tasks(harness: Harness) -> None:
    backend = harness.backend()
    live, orphan, stray = (
        harness.spec("noop", task_id=f"widgets-{n}-abcdef", issue_number=n, branch=f"claude/issue-{n}")
        for n in (1, 2, 3)
    )
    live_ws = harness.start(backend, live)
    orphan_ws = harness.start(backend, orphan)
    stray_ws = backend.prepare(stray, harness.log(stray))  # a worktree whose container never started
    assert {run.task_id: run.handle for run in backend.live_runs()} == {
        s.task_id: f"claude-issue-solver-{s.task_id}" for s in (live, orphan, stray)
    }

    removed = backend.remove_orphans({live.task_id})

    assert f"container claude-issue-solver-{orphan.task_id}" in removed
    assert f"worktree {orphan_ws.path}" in removed and f"worktree {stray_ws.path}" in removed
    assert [c.labels[LABEL_TASK] for c in harness.containers()] == [live.task_id]
    assert live_ws.path is not None and live_ws.path.is_dir()
    assert orphan_ws.path is not None and not orphan_ws.path.exists()
    assert mirror_worktrees(backend) == [str(backend.mirror_dir(REPO)), str(live_ws.path)]
    assert [run.task_id for run in backend.live_runs()] == [live.task_id]
    assert backend.remove_orphans({live.task_id}) == []


# --- confinement and secrets -----------------------------------------------------------------------------


def test_the_container_is_confined_and_never_sees_the_token(harness: Harness) -> None:
    backend = harness.backend()
    spec = harness.spec("wait")
    workspace = harness.start(backend, spec)
    container = harness.client.containers.get(workspace.handle)
    attrs = container.attrs
    host = attrs["HostConfig"]

    assert attrs["Config"]["User"] == EXPECTED_USER
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert "no-new-privileges" in host["SecurityOpt"] and host["Privileged"] is False
    assert host["NetworkMode"] == "none" and host["AutoRemove"] is False
    assert host["Memory"] == 256 * 1024 * 1024 and host["NanoCpus"] == 10**9 and host["PidsLimit"] == 64
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

    assert workspace.path is not None
    (workspace.path / ".fake-claude-release").write_text("go\n")
    result = backend.wait(workspace, deadline=time.time() + 60, should_stop=no_stop, log=harness.log(spec))
    assert result is not None and result.exit_code == 0
    backend.collect(workspace, harness.log(spec))
    backend.push(workspace, spec, "Fix", AUTHOR, harness.log(spec))

    state = harness.tmp_path / "state"
    holding = [p for p in state.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert holding == []
    assert git(f"--git-dir={backend.mirror_dir(REPO)}", "config", "remote.origin.url") == spec.clone_url


def test_host_git_ignores_a_git_file_the_agent_rewrote(harness: Harness, tmp_path: Path) -> None:
    backend = harness.backend()
    spec = harness.spec("edit")
    workspace, _ = harness.run(backend, spec)
    worktree = workspace.path
    assert worktree is not None
    # What a hostile agent can do from inside: point .git at a git dir of its own whose config runs a
    # command (a clean filter here) the moment host-side git stages a file.
    marker = tmp_path / "host-command-ran"
    evil = worktree / "evil.git"  # a git dir laid out as plain files, not a nested repository
    git("init", "-q", "--bare", str(evil))
    git("config", "-f", str(evil / "config"), "core.bare", "false")
    git("config", "-f", str(evil / "config"), "filter.x.clean", f"touch {marker}; cat")
    (worktree / ".gitattributes").write_text("* filter=x\n")
    (worktree / ".git").write_text(f"gitdir: {evil}\n")

    changes = backend.collect(workspace, harness.log(spec))
    backend.push(workspace, spec, "Fix", AUTHOR, harness.log(spec))
    assert "CLAUDE_FIX.md" in changes.files and not marker.exists()

    # The control: git that trusts the worktree's .git does run the agent's command.
    subprocess.run(
        ["git", "-c", "safe.directory=*", "add", "-A"], cwd=worktree, capture_output=True, check=False
    )
    assert marker.exists()


@pytest.mark.parametrize("how", ["hook", "non-fast-forward"])
def test_a_refused_push_raises_push_rejected(harness: Harness, remote: Path, how: str) -> None:
    backend = harness.backend()
    spec = harness.spec("edit")
    workspace, _ = harness.run(backend, spec)
    backend.collect(workspace, harness.log(spec))
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
        backend.push(workspace, spec, "Fix", AUTHOR, harness.log(spec))
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
        good = harness.spec(
            "edit", clone_url=repo.clone_url, credential=lambda: GitCredential("x", "test-token")
        )
        workspace, _ = harness.run(backend, good)
        backend.collect(workspace, harness.log(good))
        sha = backend.push(workspace, good, "Fix", AUTHOR, harness.log(good))
        assert repo.branch_sha(BRANCH) == sha
        assert any(r.kind == "git" and r.auth == "basic" for r in fake.requests)

        wrong_token = "wrong-token-do-not-print"
        bad = harness.spec(
            "edit",
            task_id="widgets-7-badtok",
            clone_url=repo.clone_url,
            credential=lambda: GitCredential("x", wrong_token),
        )
        with pytest.raises(BackendError) as caught:
            backend.prepare(bad, harness.log(bad))
        assert not caught.value.retryable  # a rejected credential does not heal by retrying
        assert wrong_token not in str(caught.value)
        with pytest.raises(BackendError) as caught:
            backend.push(workspace, bad, "Fix", AUTHOR, harness.log(bad))
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
    monkeypatch.setattr(docker_backend, "agent_dockerfile", lambda: stand_in)
    backend = harness.backend(build=True, docker_base_image=harness.image)
    spec = harness.spec("noop")
    backend.prepare(spec, harness.log(spec))  # fetches the mirror the base image is built from

    tags: list[str] = []
    try:
        plain = backend.ensure_image(spec)
        tags.append(plain)
        assert plain.startswith("claude-issue-solver-agent:")
        started = time.monotonic()
        assert backend.ensure_image(spec) == plain
        assert time.monotonic() - started < 1  # cached by content hash: no second build

        seed = harness.tmp_path / "seed"
        (seed / "Dockerfile").write_text(
            f"FROM {harness.image}\nUSER root\nRUN echo repo > /repo\nUSER 1000\n"
        )
        git("add", "-A", cwd=seed)
        git("-c", "user.name=S", "-c", "user.email=s@example.com", "commit", "-qm", "Dockerfile", cwd=seed)
        git("push", "-q", str(remote), "main", cwd=seed)
        backend.prepare(harness.spec("noop", task_id="widgets-7-second"), harness.log(spec))
        layered = backend.ensure_image(spec)
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
            backend.ensure_image(spec)
        assert "broken-step-output" in str(caught.value)
    finally:
        for tag in tags:
            harness.client.images.remove(tag, force=True)


def test_check_names_an_unreachable_daemon(tmp_path: Path) -> None:
    unreachable = docker.DockerClient(base_url=f"unix://{tmp_path}/no-docker.sock", version="1.41")
    backend = DockerBackend(Config(state_dir=tmp_path / "state"), client=unreachable)
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
