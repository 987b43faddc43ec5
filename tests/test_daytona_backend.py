"""The Daytona backend with the real ``daytona`` SDK against the loopback Daytona and the loopback GitHub.

The pipeline is not involved: each test drives the backend's mechanics with the run policy's functions,
the way the pipeline does, and looks at the result where it lands (the fake GitHub's bare repository,
the sandbox's directory, the requests the fake answered). Nothing of the SDK is patched.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from daytona import DaytonaError

from claude_issue_solver.app import daytona_settings
from claude_issue_solver.backends.base import (
    LABEL_ISSUE,
    LABEL_OWNER,
    LABEL_REPO,
    LABEL_TASK,
    BackendError,
    Changes,
    ProcessSpec,
    Pushed,
    PushRejected,
    RebaseConflict,
    WorkspaceLost,
    WorkspaceSpec,
    agent_dockerfile,
)
from claude_issue_solver.backends.daytona import DaytonaBackend, DaytonaWorkspace, create_snapshot
from claude_issue_solver.config import Config, ConfigError
from claude_issue_solver.conventions import SUMMARY_FILE
from claude_issue_solver.credentials import GitCredential
from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.logs import TaskLog
from claude_issue_solver.run.agent import build_command
from claude_issue_solver.run.agent_access import agent_env
from claude_issue_solver.run.pipeline import agent_settings
from claude_issue_solver.run.policy import (
    ProcessExit,
    reconcile,
    remove_workspace,
    take_summary,
    wait_for_process,
)
from claude_issue_solver.store.outcome import TaskControl
from claude_issue_solver.store.queue import Task
from tests import backend_steps as steps
from tests.backend_steps import Job
from tests.fakes.fake_daytona import Egress, FakeDaytona
from tests.github_fixtures import TOKEN
from tests.waiting import wait_until

REPO = "acme/widgets"
BRANCH = "claude/issue-7"
CLAUDE_KEY = "sk-ant-api03-daytonaTestKey0123456789"
# Quotes, a command substitution, backticks and non-ASCII: the prompt must reach the agent byte for byte.
PROMPT = 'Fix "the widget" $(touch /tmp/pwned) `id` — naïve ✓\n'
POLL = 0.05


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeDaytona]:
    with FakeDaytona(tmp_path / "daytona") as made:
        yield made


@dataclass
class Harness:
    """Builds configs, specs, tasks and logs for one test and drives the backend as the pipeline does."""

    fake: FakeDaytona
    github: FakeGitHub
    make_config: Callable[..., Config]
    tmp_path: Path
    backends: list[DaytonaBackend] = field(default_factory=list)

    def config(self, **settings: str) -> Config:
        base = {
            "GITHUB_TOKEN": TOKEN,
            "GITHUB_API_URL": self.github.api_url,
            "GITHUB_REPOS": REPO,
            "BACKEND": "daytona",
            "DAYTONA_API_KEY": self.fake.api_key,
            "DAYTONA_API_URL": self.fake.api_url,
            "DAYTONA_TARGET": "us",
            "ANTHROPIC_API_KEY": CLAUDE_KEY,
        }
        return self.make_config(**{**base, **settings})

    def backend(self, **settings: str) -> DaytonaBackend:
        """A backend with its own SDK client; a second one is "the daemon after a restart"."""
        made = DaytonaBackend(daytona_settings(self.config(**settings)), poll_interval=POLL)
        self.backends.append(made)
        return made

    def job(
        self,
        scenario: str,
        task_id: str = "widgets-7-aaaaaa",
        *,
        command: tuple[str, ...] | None = None,
        **overrides: object,
    ) -> Job:
        config = self.config()
        values: dict[str, object] = {
            "task_id": task_id,
            "repo": REPO,
            "issue_number": 7,
            "clone_url": self.github.repo(REPO).clone_url,
            "default_branch": "main",
            "branch": BRANCH,
            "credential": lambda: GitCredential("x-access-token", TOKEN),
            **overrides,
        }
        agent = ProcessSpec(
            name="agent",
            argv=command or tuple(build_command(agent_settings(config))),
            env=agent_env(config),
            stdin=f"{PROMPT}FAKE_CLAUDE_SCENARIO={scenario}\n".encode(),
        )
        return Job(WorkspaceSpec(**values), agent)  # type: ignore[arg-type]

    def task(self, job: Job, workspace: DaytonaWorkspace | None = None) -> Task:
        spec = job.workspace
        meta = {"base_sha": workspace.base_sha} if workspace else {}
        return Task(
            id=spec.task_id,
            repo=spec.repo,
            issue_number=spec.issue_number,
            title="t",
            branch=spec.branch,
            meta=meta,
        )

    def log(self, job: Job) -> TaskLog:
        return TaskLog(self.tmp_path / "logs" / f"{job.task_id}.log")

    def start(self, backend: DaytonaBackend, job: Job) -> DaytonaWorkspace:
        workspace = backend.prepare(job.workspace, self.log(job))
        backend.start_process(workspace, job.agent, self.log(job))
        return workspace

    def wait(
        self, backend: DaytonaBackend, workspace: DaytonaWorkspace, job: Job, **how: Any
    ) -> ProcessExit | None:
        return steps.wait(backend, workspace, self.log(job), **{"seconds": 30, **how})

    def run(
        self, backend: DaytonaBackend, job: Job, *, seconds: float = 30, stop: TaskControl | None = None
    ) -> tuple[DaytonaWorkspace, ProcessExit]:
        workspace = self.start(backend, job)
        result = self.wait(backend, workspace, job, seconds=seconds, stop=stop)
        assert result is not None
        return workspace, result

    def collect(self, backend: DaytonaBackend, workspace: DaytonaWorkspace) -> tuple[Changes, str | None]:
        return steps.collect(backend, workspace)

    def push(
        self, backend: DaytonaBackend, workspace: DaytonaWorkspace, job: Job, message: str = "Fix"
    ) -> Pushed:
        return steps.push(backend, workspace, job, self.log(job), message)

    def sandbox_of(self, workspace: DaytonaWorkspace) -> dict[str, object]:
        return self.fake.sandboxes[workspace.sandbox_id]

    def repo_dir(self, workspace: DaytonaWorkspace) -> Path:
        assert workspace.work_dir is not None
        return Path(workspace.work_dir) / "repo"


@pytest.fixture
def harness(
    fake: FakeDaytona, github: FakeGitHub, make_config: Callable[..., Config], tmp_path: Path
) -> Harness:
    return Harness(fake, github, make_config, tmp_path)


def result_of(exit_: ProcessExit) -> dict[str, object]:
    """The CLI's result object: the last line of its stream-json output."""
    return json.loads(exit_.stdout.splitlines()[-1])


def files_containing(root: Path, needle: str) -> list[Path]:
    return [
        p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and needle.encode() in p.read_bytes()
    ]


# --- start-up -----------------------------------------------------------------------------------------


def test_check_makes_two_cheap_calls(harness: Harness) -> None:
    harness.backend().check()
    assert [(r.method, r.path) for r in harness.fake.requests] == [
        ("GET", "/api/sandbox"),
        ("GET", "/api/snapshots/claude-issue-solver"),
    ]


def test_check_names_a_rejected_key(harness: Harness) -> None:
    backend = harness.backend(DAYTONA_API_KEY="dtn-wrong-key")
    with pytest.raises(BackendError, match=r"Daytona rejected DAYTONA_API_KEY \(401\)") as caught:
        backend.check()
    assert not caught.value.retryable
    assert "dtn-wrong-key" not in str(caught.value)


def test_check_without_a_key(harness: Harness, make_config: Callable[..., Config]) -> None:
    config = make_config(BACKEND="daytona", DAYTONA_API_URL=harness.fake.api_url)
    with pytest.raises(BackendError, match="DAYTONA_API_KEY is not set"):
        DaytonaBackend(daytona_settings(config)).check()
    assert harness.fake.requests == []


def test_check_names_a_missing_snapshot(harness: Harness) -> None:
    with pytest.raises(BackendError, match=r"DAYTONA_SNAPSHOT=nope does not exist.*daytona snapshot"):
        harness.backend(DAYTONA_SNAPSHOT="nope").check()


def test_check_outage_is_retryable(harness: Harness) -> None:
    harness.fake.fail_next("/api/sandbox", 503)
    with pytest.raises(BackendError) as caught:
        harness.backend().check()
    assert caught.value.retryable


# --- the whole run --------------------------------------------------------------------------------------


def test_run_collect_push_cleanup(harness: Harness) -> None:
    backend = harness.backend()
    job = harness.job("edit")
    repo = harness.github.repo(REPO)
    main_sha = repo.branch_sha("main")

    workspace, result = harness.run(backend, job)

    assert workspace.handle == f"claude-issue-solver-{job.task_id}" == backend.handle_for(job.task_id)
    assert workspace.base_sha == main_sha
    assert result.exit_code == 0, result.tail
    assert result_of(result)["is_error"] is False
    # The fake agent records the hash of the stdin it got: the prompt arrived byte for byte.
    prompt_sha = hashlib.sha256(job.agent.stdin).hexdigest()
    assert f"prompt-sha256={prompt_sha}" in (harness.repo_dir(workspace) / "CLAUDE_FIX.md").read_text()
    assert "exited with code 0" in harness.log(job).path.read_text()
    sandbox = harness.sandbox_of(workspace)
    assert sandbox["labels"] == {
        LABEL_TASK: job.task_id,
        LABEL_REPO: REPO,
        LABEL_ISSUE: "7",
        LABEL_OWNER: backend.owner,
        "code-toolbox-language": "python",
    }
    assert sandbox["snapshot"] == "claude-issue-solver"

    changes, summary = harness.collect(backend, workspace)
    assert changes.files == ("CLAUDE_FIX.md",) and not changes.ahead
    assert summary is not None and summary.startswith("Fix issue from fake agent")
    assert "CLAUDE_FIX.md" in changes.diffstat and "1 insertion" in changes.diffstat
    assert not (harness.repo_dir(workspace) / SUMMARY_FILE).exists()

    pushed = harness.push(backend, workspace, job, "Fix the widget (#7)")
    assert pushed.committed and repo.branch_sha(BRANCH) == pushed.sha
    assert repo.git("log", "-1", "--format=%an|%ae|%cn|%ce|%s", BRANCH).strip() == (
        "Issue Bot|issue-bot@example.com|Issue Bot|issue-bot@example.com|Fix the widget (#7)"
    )
    assert sorted(repo.git("ls-tree", "-r", "--name-only", BRANCH).split()) == ["CLAUDE_FIX.md", "README.md"]

    # A re-run of the publish step after a crash pushes again, without an empty commit.
    assert harness.push(backend, workspace, job, "Fix the widget (#7)") == Pushed(pushed.sha, committed=False)
    assert len(repo.git("log", "--format=%H", BRANCH).split()) == 2

    assert backend.remove(job.task_id, harness.log(job)) == [f"sandbox {workspace.handle}"]
    assert harness.fake.sandboxes == {}
    assert harness.fake.deleted == [workspace.sandbox_id]


def test_no_secret_in_env_vars_on_disk_or_in_logs(harness: Harness) -> None:
    backend = harness.backend()
    job = harness.job("wait")
    workspace = harness.start(backend, job)
    sandbox_id = workspace.sandbox_id
    root = Path(harness.sandbox_of(workspace)["dir"])  # type: ignore[arg-type]
    # The agent runs (its release file is missing): the credential file must be gone already.
    wait_until(lambda: not any(root.rglob("agent.env")), what="the agent to read its environment")

    assert harness.fake.sandboxes[sandbox_id]["env"] == {}
    read_back = backend.client.get(sandbox_id)
    assert read_back.env == {}  # what anyone with the Daytona key sees
    assert files_containing(root, TOKEN) == []
    assert files_containing(root, CLAUDE_KEY) == []
    git_config = (harness.repo_dir(workspace) / ".git" / "config").read_text()
    assert "x-access-token" not in git_config and "@" not in git_config
    # The command the daemon keeps (and reports through the API) names no secret either.
    session = backend.client.get(sandbox_id).process.get_session(f"claude-issue-solver-{job.task_id}-agent")
    assert [c.command for c in session.commands] and all(
        CLAUDE_KEY not in c.command for c in session.commands
    )

    (harness.repo_dir(workspace) / ".fake-claude-release").write_text("go")
    result = harness.wait(backend, workspace, job)
    assert result is not None and result.exit_code == 0, result
    harness.collect(backend, workspace)
    harness.push(backend, workspace, job)
    assert files_containing(root, TOKEN) == []
    assert files_containing(root, CLAUDE_KEY) == []
    log_text = harness.log(job).path.read_text()
    assert TOKEN not in log_text and CLAUDE_KEY not in log_text


def test_the_agent_gets_its_environment(harness: Harness) -> None:
    job = harness.job(
        "noop", command=("sh", "-c", 'printf "%s|%s|%s|" "$ANTHROPIC_API_KEY" "$IS_SANDBOX" "$(pwd)"; cat')
    )
    workspace, result = harness.run(harness.backend(), job)
    key, is_sandbox, cwd, prompt = result.stdout.split("|", 3)
    assert (key, is_sandbox, cwd) == (CLAUDE_KEY, "1", str(harness.repo_dir(workspace)))
    assert prompt.encode() == job.agent.stdin


def test_a_second_process_runs_in_the_same_clone(harness: Harness) -> None:
    """What a test run after the agent needs: the same clone, its own session, output and exit code."""
    backend = harness.backend()
    job = harness.job("edit")
    workspace, _ = harness.run(backend, job)
    check = ProcessSpec(
        name="test-1", argv=("sh", "-c", "test -f CLAUDE_FIX.md && cat; exit 3"), env={}, stdin=b"in"
    )
    assert backend.start_process(workspace, check, harness.log(job))
    assert not backend.start_process(workspace, check, harness.log(job))  # one of each name
    result = wait_for_process(
        backend,
        workspace,
        "test-1",
        deadline=time.time() + 30,
        control=TaskControl(),
        clock=time.time,
        log=harness.log(job),
    )
    assert result is not None and (result.exit_code, result.stdout) == (3, "in")


def test_files_never_follow_a_link(harness: Harness, tmp_path: Path) -> None:
    backend = harness.backend()
    job = harness.job("noop")
    workspace = backend.prepare(job.workspace, harness.log(job))
    secret = tmp_path / "host-secret"
    secret.write_text("host secret\n")
    (harness.repo_dir(workspace) / SUMMARY_FILE).symlink_to(secret)
    assert backend.read_file(workspace, SUMMARY_FILE, 1024) is None
    assert take_summary(backend, workspace) is None
    assert not (harness.repo_dir(workspace) / SUMMARY_FILE).is_symlink() and secret.exists()
    with pytest.raises(BackendError):
        backend.read_file(workspace, "../.claude-issue-solver/agent.exit", 10)
    backend.write_file(workspace, "notes/a.txt", b"hello")
    assert backend.read_file(workspace, "notes/a.txt", 3) == b"hel"


def test_a_rerun_starts_from_the_remote_branch(harness: Harness) -> None:
    repo = harness.github.repo(REPO)
    first = harness.github.commit_files(REPO, BRANCH, {"CLAUDE_FIX.md": "From the first run.\n"})
    backend = harness.backend()
    job = harness.job("edit")
    workspace, result = harness.run(backend, job)
    assert result.exit_code == 0, result.tail
    assert workspace.base_sha == first
    changes, _ = harness.collect(backend, workspace)
    assert changes.files == ("CLAUDE_FIX.md",) and "1 insertion" in changes.diffstat
    sha = harness.push(backend, workspace, job, "Second try").sha
    assert repo.git("log", "--format=%H", BRANCH).split()[:2] == [sha, first]


def test_noop_changes_nothing(harness: Harness) -> None:
    backend = harness.backend()
    job = harness.job("noop")
    workspace, result = harness.run(backend, job)
    assert result.exit_code == 0
    before = len(harness.fake.requests)
    changes, summary = harness.collect(backend, workspace)
    assert changes == Changes() and summary is None
    # The summary: one read (nothing there) and one removal; the nested repositories (#18); git status;
    # diffstat and ahead in one.
    assert len(harness.fake.requests) - before == 5


def test_prepare_is_idempotent(harness: Harness) -> None:
    backend = harness.backend()
    job = harness.job("noop")
    first = backend.prepare(job.workspace, harness.log(job))
    again = harness.backend().prepare(job.workspace, harness.log(job))  # "after a restart"
    assert again == first
    assert len(harness.fake.requests_to("/api/sandbox", "POST")) == 1
    assert len(harness.fake.requests_to(f"/toolbox/{first.sandbox_id}/git/clone")) == 1


def test_start_process_twice_starts_one_agent(harness: Harness) -> None:
    backend = harness.backend()
    job = harness.job("wait")
    workspace = harness.start(backend, job)
    assert not harness.backend().start_process(workspace, job.agent, harness.log(job))
    sandbox = backend.client.get(workspace.sandbox_id)
    assert len(sandbox.process.get_session(f"claude-issue-solver-{job.task_id}-agent").commands) == 1


def test_push_rejected(harness: Harness) -> None:
    harness.github.reject_pushes(REPO, "protected branch hook declined")
    backend = harness.backend()
    job = harness.job("edit")
    workspace, _ = harness.run(backend, job)
    harness.collect(backend, workspace)
    with pytest.raises(PushRejected, match="protected branch hook declined") as caught:
        harness.push(backend, workspace, job)
    assert TOKEN not in str(caught.value)


def test_commits_go_on_top_of_a_branch_that_moved_replayed_on_this_host(harness: Harness) -> None:
    """#11: the push says the branch moved (not a hook); the run's commits come out as a bundle, are
    replayed here (the token never enters the sandbox) and go back; the next push is a fast-forward."""
    backend = harness.backend()
    job = harness.job("edit")
    workspace, _ = harness.run(backend, job)
    harness.collect(backend, workspace)
    repo = harness.github.repo(REPO)
    theirs = harness.github.commit_files(
        REPO, BRANCH, {"HUMAN.md": "by hand\n"}, message="A person's commit", author="Hu Man <hu@example.com>"
    )
    with pytest.raises(PushRejected) as caught:
        harness.push(backend, workspace, job, "Fix the widget (#7)")
    assert caught.value.moved and TOKEN not in str(caught.value)
    assert repo.branch_sha(BRANCH) == theirs
    request = steps.request(job, "Fix the widget (#7)")
    harness.fake.reset_requests()
    rebased = backend.rebase_onto_remote(workspace, request, harness.log(job))
    # The sandbox saw commands and files only: no git call of the toolbox, the only ones given a token.
    called = {r.path.rsplit("/", 2)[-2] for r in harness.fake.requests_for(workspace.sandbox_id) if r.toolbox}
    assert called and called <= {"process", "files"}, called
    assert rebased.onto == theirs and rebased.new_commits == 1 and rebased.authors == ("Hu Man",)
    assert (harness.repo_dir(workspace) / "HUMAN.md").read_text() == "by hand\n"
    pushed = harness.push(backend, replace(workspace, base_sha=rebased.onto), job, "Fix the widget (#7)")
    assert pushed.sha == rebased.sha == repo.branch_sha(BRANCH)
    assert repo.git("rev-parse", f"{BRANCH}^").strip() == theirs
    assert repo.git("log", "-1", "--format=%an|%s", BRANCH).strip() == "Issue Bot|Fix the widget (#7)"
    replays = backend.state_dir / "replays"
    assert not replays.exists() or not any(replays.iterdir())  # the host's scratch copy is gone
    assert not list(harness.repo_dir(workspace).parent.rglob("*.bundle"))
    assert TOKEN not in harness.log(job).path.read_text()


def test_a_conflict_with_a_branch_that_moved_changes_nothing_in_the_sandbox(harness: Harness) -> None:
    backend = harness.backend()
    job = harness.job("edit")
    workspace, _ = harness.run(backend, job)
    harness.collect(backend, workspace)
    theirs = harness.github.commit_files(REPO, BRANCH, {"CLAUDE_FIX.md": "a person's version\n"})
    with pytest.raises(PushRejected):
        harness.push(backend, workspace, job)
    head = (harness.repo_dir(workspace) / "CLAUDE_FIX.md").read_text()
    with pytest.raises(RebaseConflict) as conflict:
        backend.rebase_onto_remote(workspace, steps.request(job), harness.log(job))
    assert conflict.value.paths == ("CLAUDE_FIX.md",)
    assert (harness.repo_dir(workspace) / "CLAUDE_FIX.md").read_text() == head
    assert harness.github.repo(REPO).branch_sha(BRANCH) == theirs


def test_a_hostile_remote_setting_gets_no_credential(harness: Harness) -> None:
    """The agent pointed origin's push URL elsewhere: the push goes to the real remote regardless."""
    elsewhere = harness.github.create_repo("acme/elsewhere")
    backend = harness.backend()
    job = harness.job("edit")
    workspace, _ = harness.run(backend, job)
    sandbox = backend.client.get(workspace.sandbox_id)
    sandbox.process.exec(
        f"git config remote.origin.pushurl {elsewhere.clone_url}", cwd=str(harness.repo_dir(workspace))
    )
    harness.collect(backend, workspace)
    sha = harness.push(backend, workspace, job).sha
    assert harness.github.repo(REPO).branch_sha(BRANCH) == sha
    assert elsewhere.branch_sha(BRANCH) is None


# --- stopping --------------------------------------------------------------------------------------------


def test_cancel_kills_the_agent(harness: Harness) -> None:
    backend = harness.backend()
    job = harness.job("hang")
    stop = TaskControl()
    asked = time.monotonic() + 0.5
    timer = threading.Timer(0.5, stop.cancel.set)
    timer.start()
    try:
        workspace, result = harness.run(backend, job, stop=stop)
    finally:
        timer.cancel()
    assert result.cancelled and not result.timed_out
    assert time.monotonic() - asked < 5
    sandbox = backend.client.get(workspace.sandbox_id)
    assert sandbox.process.list_sessions() == []  # the session, and with it the agent, is gone


def test_timeout_kills_the_agent(harness: Harness) -> None:
    backend = harness.backend()
    job = harness.job("hang")
    started = time.monotonic()
    _, result = harness.run(backend, job, seconds=1)
    assert result.timed_out and not result.cancelled and result.exit_code is None
    assert time.monotonic() - started < 10


def test_detach_then_attach_after_a_restart(harness: Harness) -> None:
    backend = harness.backend()
    job = harness.job("wait")
    workspace = harness.start(backend, job)
    detach = TaskControl()
    detach.detach.set()
    assert harness.wait(backend, workspace, job, stop=detach) is None
    assert harness.fake.sandboxes[workspace.sandbox_id]["state"] == "started"

    restarted = harness.backend()
    again = restarted.attach(harness.task(job, workspace))
    assert again == workspace
    assert restarted._commands == {}  # found again by the session's commands, not saved state
    (harness.repo_dir(workspace) / ".fake-claude-release").write_text("go")
    result = harness.wait(restarted, again, job)
    assert result is not None and result.exit_code == 0, result
    assert harness.collect(restarted, again)[0].files == ("CLAUDE_FIX.md",)
    assert restarted.list_ours() == {job.task_id}


def test_attach_finds_nothing_for_an_unknown_task(harness: Harness) -> None:
    assert harness.backend().attach(harness.task(harness.job("edit"))) is None


def test_finished_while_stopped_is_read_from_disk(harness: Harness) -> None:
    """Auto-stop while the daemon was away ends the sessions; the exit code file still tells."""
    backend = harness.backend()
    job = harness.job("edit")
    workspace = harness.start(backend, job)
    assert workspace.work_dir is not None
    exit_file = Path(workspace.work_dir) / ".claude-issue-solver" / "agent.exit"
    wait_until(exit_file.exists, what="the agent to finish")
    harness.fake.set_state(workspace.sandbox_id, "stopped")

    restarted = harness.backend()
    again = restarted.attach(harness.task(job, workspace))
    assert again is not None
    assert harness.fake.sandboxes[workspace.sandbox_id]["state"] == "started"
    result = harness.wait(restarted, again, job)
    assert result is not None and result.exit_code == 0
    assert result_of(result)["is_error"] is False


# --- Daytona failing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
def test_rate_limits_and_outages_while_waiting_only_delay(harness: Harness, status: int) -> None:
    backend = harness.backend()
    job = harness.job("wait")
    workspace = harness.start(backend, job)
    sandbox_id = workspace.sandbox_id
    harness.fake.fail_next(f"/toolbox/{sandbox_id}/process/session", status, count=4)
    (harness.repo_dir(workspace) / ".fake-claude-release").write_text("go")
    result = harness.wait(backend, workspace, job, seconds=60)
    assert result is not None and result.exit_code == 0, result
    failed = [r for r in harness.fake.requests_for(sandbox_id) if r.status == status]
    assert len(failed) == 4
    assert "polling again with back-off" in harness.log(job).path.read_text()


def test_rate_limited_create_is_retryable(harness: Harness) -> None:
    harness.fake.fail_next("/api/sandbox", 429, method="POST")
    job = harness.job("edit")
    with pytest.raises(BackendError, match=r"rate-limited us \(429\)") as caught:
        harness.backend().prepare(job.workspace, harness.log(job))
    assert caught.value.retryable


def test_a_vanished_sandbox_is_lost(harness: Harness) -> None:
    backend = harness.backend()
    job = harness.job("hang")
    workspace = harness.start(backend, job)
    harness.fake.vanish(workspace.sandbox_id)
    with pytest.raises(WorkspaceLost, match="no longer exists"):
        harness.wait(backend, workspace, job)
    # Removing a sandbox that is gone is quiet.
    assert backend.remove(job.task_id, harness.log(job)) == []


def test_removal_never_raises(harness: Harness) -> None:
    backend = harness.backend()
    job = harness.job("noop")
    backend.prepare(job.workspace, harness.log(job))
    harness.fake.fail_next("/api/sandbox", 401, count=10)
    assert remove_workspace(backend, job.task_id, harness.log(job), sleep=lambda _: None) == []
    assert "could not remove the workspace" in harness.log(job).path.read_text()


# --- egress: the sandbox's firewall around offline processes ----------------------------------------------

NARROWED = Egress(domains="api.anthropic.com")  # the Claude API's host and nothing else


def quick(name: str, *, offline: bool, script: str = "true") -> ProcessSpec:
    return ProcessSpec(name=name, argv=("sh", "-c", script), env={}, offline=offline)


def run_process(
    harness: Harness, backend: DaytonaBackend, workspace: DaytonaWorkspace, job: Job, process: ProcessSpec
) -> ProcessExit:
    assert backend.start_process(workspace, process, harness.log(job))
    result = steps.wait(backend, workspace, harness.log(job), seconds=30, name=process.name)
    assert result is not None and result.exit_code == 0, result
    return result


def network_steps(harness: Harness, workspace: DaytonaWorkspace) -> list[tuple[str, Egress]]:
    """The sandbox's network changes, clones, pushes and processes (not its plain commands), in order."""
    prefix = f"session:claude-issue-solver-{workspace.task_id}-"
    return [
        (what.replace(prefix, "process:"), egress)
        for what, egress in harness.fake.egress_log(workspace.sandbox_id)
        if what != "exec"
    ]


def test_offline_processes_run_narrowed_setup_and_the_push_open(harness: Harness) -> None:
    backend = harness.backend()
    job = harness.job("edit")
    job = replace(job, agent=replace(job.agent, offline=True))
    workspace = backend.prepare(job.workspace, harness.log(job))
    run_process(harness, backend, workspace, job, quick("setup", offline=False))
    run_process(harness, backend, workspace, job, job.agent)
    run_process(harness, backend, workspace, job, quick("test-1", offline=True))
    harness.collect(backend, workspace)
    pushed = harness.push(backend, workspace, job)
    assert harness.github.repo(REPO).branch_sha(BRANCH) == pushed.sha

    assert network_steps(harness, workspace) == [
        ("create", Egress()),
        ("git-clone", Egress()),
        ("process:setup", Egress()),
        ("network-settings", NARROWED),
        ("process:agent", NARROWED),
        ("process:test-1", NARROWED),  # already narrowed: no second request
        ("network-settings", Egress()),
        ("git-push", Egress()),
    ]
    log_text = harness.log(job).path.read_text()
    assert "egress only api.anthropic.com, before agent" in log_text
    assert "egress open, before the push" in log_text


def test_a_restart_mid_agent_still_opens_the_sandbox_before_the_push(harness: Harness) -> None:
    backend = harness.backend()
    job = harness.job("wait")
    job = replace(job, agent=replace(job.agent, offline=True))
    workspace = harness.start(backend, job)
    assert harness.wait(backend, workspace, job, stop=steps.control(detach=True)) is None
    assert harness.fake.egress(workspace.sandbox_id) == NARROWED

    restarted = harness.backend()  # knows nothing of the egress it left
    again = restarted.attach(harness.task(job, workspace))
    assert again is not None
    (harness.repo_dir(again) / ".fake-claude-release").write_text("go")
    result = harness.wait(restarted, again, job)
    assert result is not None and result.exit_code == 0, result
    harness.collect(restarted, again)
    # Still narrowed, and the fake means it: the toolbox's git cannot reach GitHub from here.
    assert harness.fake.egress(again.sandbox_id) == NARROWED
    credential = job.workspace.credential()
    with pytest.raises(DaytonaError, match="Could not resolve host"):
        restarted.client.get(again.sandbox_id).git.push(
            str(harness.repo_dir(again)), username=credential.username, password=credential.password
        )

    pushed = harness.push(restarted, again, job)
    assert harness.github.repo(REPO).branch_sha(BRANCH) == pushed.sha
    assert network_steps(harness, again)[-2:] == [("network-settings", Egress()), ("git-push", Egress())]


@pytest.mark.parametrize(
    ("base_url", "narrowed"),
    [
        ("https://llm-gateway.example.com/anthropic", Egress(domains="llm-gateway.example.com")),
        ("http://203.0.113.7:8080", Egress(allow_list="203.0.113.7/32")),
    ],
)
def test_the_api_host_is_that_of_anthropic_base_url(
    harness: Harness, base_url: str, narrowed: Egress
) -> None:
    backend = harness.backend(ANTHROPIC_BASE_URL=base_url)
    job = harness.job("noop")
    workspace = backend.prepare(job.workspace, harness.log(job))
    run_process(harness, backend, workspace, job, quick("agent", offline=True))
    assert harness.fake.egress(workspace.sandbox_id) == narrowed


def test_an_ipv6_api_host_is_refused_at_start_up(harness: Harness) -> None:
    with pytest.raises(BackendError, match=r"IPv6 address.*allow lists take IPv4"):
        harness.backend(ANTHROPIC_BASE_URL="http://[2001:db8::7]:8080").check()
    assert harness.fake.requests == []


def test_network_allow_list_limits_the_sandbox_from_its_creation(harness: Harness) -> None:
    # The loopback GitHub is at 127.0.0.1: an operator's list must name where GitHub is.
    backend = harness.backend(DAYTONA_NETWORK_ALLOW_LIST=" 127.0.0.1/32, 10.1.2.3/16 ")
    limited = Egress(allow_list="127.0.0.1/32,10.1.0.0/16")
    job = harness.job("edit")
    job = replace(job, agent=replace(job.agent, offline=True))
    workspace, result = harness.run(backend, job)
    assert result.exit_code == 0, result.tail
    harness.collect(backend, workspace)
    pushed = harness.push(backend, workspace, job)
    assert harness.github.repo(REPO).branch_sha(BRANCH) == pushed.sha
    steps_seen = network_steps(harness, workspace)
    assert steps_seen[:2] == [("create", limited), ("git-clone", limited)]
    assert steps_seen[-2:] == [
        ("network-settings", replace(limited, domains=NARROWED.domains)),
        ("git-push", replace(limited, domains=NARROWED.domains)),
    ]
    assert (
        "egress limited to DAYTONA_NETWORK_ALLOW_LIST (127.0.0.1/32,10.1.0.0/16)"
        in harness.log(job).path.read_text()
    )

    # A list without GitHub: the clone cannot get out (and says why).
    other = harness.job("edit", task_id="widgets-7-bbbbbb")
    with pytest.raises(BackendError, match=r"Could not resolve host: 127\.0\.0\.1"):
        harness.backend(DAYTONA_NETWORK_ALLOW_LIST="10.1.0.0/16").prepare(other.workspace, harness.log(other))


def test_network_allow_list_takes_ipv4_networks_only(harness: Harness) -> None:
    with pytest.raises(ConfigError, match="DAYTONA_NETWORK_ALLOW_LIST"):
        harness.config(DAYTONA_NETWORK_ALLOW_LIST="github.com")
    with pytest.raises(ConfigError, match="DAYTONA_NETWORK_ALLOW_LIST"):
        harness.config(DAYTONA_NETWORK_ALLOW_LIST="2001:db8::/32")


# --- reconcile -------------------------------------------------------------------------------------------


def test_reconcile_keeps_live_tasks_and_other_daemons(harness: Harness, tmp_path: Path) -> None:
    backend = harness.backend()
    kept_job, orphan_job = (
        harness.job("noop", task_id="widgets-7-kept01"),
        harness.job("noop", task_id="widgets-8-orphan"),
    )
    kept = backend.prepare(kept_job.workspace, harness.log(kept_job))
    orphan = backend.prepare(orphan_job.workspace, harness.log(orphan_job))
    other = harness.backend(STATE_DIR=str(tmp_path / "other-state"))
    foreign_job = harness.job("noop", task_id="widgets-9-other1")
    foreign = other.prepare(foreign_job.workspace, harness.log(foreign_job))

    assert backend.list_ours() == {"widgets-7-kept01", "widgets-8-orphan"}
    removed = reconcile(backend, {"widgets-7-kept01"})
    assert removed == ["sandbox claude-issue-solver-widgets-8-orphan"]
    assert set(harness.fake.sandboxes) == {kept.sandbox_id, foreign.sandbox_id}
    assert orphan.sandbox_id in harness.fake.deleted


# --- the snapshot ------------------------------------------------------------------------------------------


def test_create_snapshot_from_the_agent_dockerfile(harness: Harness) -> None:
    config = harness.config()
    logs: list[str] = []
    name = create_snapshot(
        daytona_settings(config), agent_dockerfile(), name="cis-test-snapshot", on_logs=logs.append
    )
    assert name == "cis-test-snapshot"
    made = harness.fake.snapshots[name]
    assert made["state"] == "active"
    assert made["dockerfile"] == agent_dockerfile().read_text()
    with pytest.raises(BackendError, match="already exists"):
        create_snapshot(daytona_settings(config), agent_dockerfile(), name="cis-test-snapshot")
    # And a task can start from it.
    harness.backend(DAYTONA_SNAPSHOT=name).check()


def test_a_nested_repository_in_the_sandbox_is_never_committed_as_a_gitlink(harness: Harness) -> None:
    """#18: the sandbox's own git stages what its status lists; a repository the agent made inside the
    tree is left out of the status, the diffstat and the commit, and named in ``left_out``."""
    backend = harness.backend()
    plant = (
        "git init -q vendor/evil && echo x > vendor/evil/inner.txt && "
        "git -C vendor/evil add -A && "
        "git -C vendor/evil -c user.name=a -c user.email=a@example.invalid commit -qm inner && "
        "echo kept > vendor/kept.txt"
    )
    job = harness.job("noop", command=("sh", "-c", plant))
    workspace, result = harness.run(backend, job)
    assert result.exit_code == 0, result.tail
    changes, _ = harness.collect(backend, workspace)
    assert changes.files == ("vendor/kept.txt",)
    assert changes.left_out == ("vendor/evil/ (a git repository of its own)",)
    assert "vendor/evil" not in changes.diffstat
    harness.push(backend, workspace, job)
    tree = harness.github.repo(REPO).git("ls-tree", "-r", BRANCH)
    assert "160000" not in tree and "vendor/evil" not in tree and "vendor/kept.txt" in tree


def test_far_more_output_than_the_bounds_comes_back_cut_with_its_end_and_a_note(harness: Harness) -> None:
    """20 MB on one line: the sandbox cuts the files, only the start and the end are downloaded, and the
    session's logs (which the SDK returns whole) are never asked for."""
    from claude_issue_solver.run.policy import OUTPUT_BOUNDS

    backend = harness.backend()
    loud = "echo FIRST; head -c 20000000 /dev/zero | tr '\\0' a; echo; echo LAST; echo ERR >&2"
    job = harness.job("edit", command=("sh", "-c", loud))
    workspace, result = harness.run(backend, job)
    assert result.exit_code == 0
    assert result.stdout.startswith("FIRST\naaaa") and result.stdout.endswith("aaaa\nLAST\n")
    assert "of this output left out here" in result.stdout
    assert len(result.stdout) < OUTPUT_BOUNDS.head + OUTPUT_BOUNDS.tail + 1000
    assert result.stderr == "ERR\n"
    assert not [r for r in harness.fake.requests if r.path.endswith("/logs")]
    log = harness.log(job).path.read_text()
    assert "LAST" in log[-10_000:] and "left out" in log[-10_000:]
    again = backend.output(workspace, "agent", OUTPUT_BOUNDS)  # after a restart: read again, as bounded
    assert again.stdout == result.stdout and again.left_out > 17_000_000


@pytest.mark.parametrize(
    "where", [{"branch": "pull/9/head"}, {"branch": "claude/test-9", "start_ref": "refs/pull/9/head"}]
)
def test_a_pull_requests_head_is_refused_in_one_line_before_any_sandbox(
    harness: Harness, where: dict[str, str]
) -> None:
    """A review (pull/N/head) or a test run (a start ref) of a pull request needs the Docker backend: the
    sandbox clones branches only and would quietly check out the default branch instead."""
    backend = harness.backend()
    job = harness.job("noop", **where)
    with pytest.raises(BackendError, match="needs BACKEND=docker"):
        backend.prepare(job.workspace, harness.log(job))
    assert harness.fake.sandboxes == {}
