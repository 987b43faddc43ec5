"""The Daytona backend with the real ``daytona`` SDK against the loopback Daytona and the loopback GitHub.

The pipeline is not involved: each test drives the backend's steps the way the pipeline would and looks
at the result where it lands (the fake GitHub's bare repository, the sandbox's directory, the requests
the fake answered). Nothing of the SDK is patched.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from claude_issue_solver import gitops
from claude_issue_solver.agent import build_command
from claude_issue_solver.backends.base import (
    LABEL_ISSUE,
    LABEL_OWNER,
    LABEL_REPO,
    LABEL_TASK,
    AgentExit,
    BackendError,
    GitCredential,
    PushRejected,
    RunSpec,
    Workspace,
    WorkspaceLost,
    agent_dockerfile,
)
from claude_issue_solver.backends.daytona import DaytonaBackend, create_snapshot
from claude_issue_solver.config import Config
from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.logs import TaskLog
from claude_issue_solver.pipeline import agent_env, agent_settings
from claude_issue_solver.queue import Task
from tests.fakes.fake_daytona import FakeDaytona
from tests.github_fixtures import TOKEN
from tests.waiting import wait_until

REPO = "acme/widgets"
BRANCH = "claude/issue-7"
CLAUDE_KEY = "sk-ant-api03-daytonaTestKey0123456789"
AUTHOR = ("Issue Bot", "issue-bot@example.com")
# Quotes, a command substitution, backticks and non-ASCII: the prompt must reach the agent byte for byte.
PROMPT = 'Fix "the widget" $(touch /tmp/pwned) `id` — naïve ✓\n'
POLL = 0.05


def no_stop() -> str | None:
    return None


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
        made = DaytonaBackend(self.config(**settings), poll_interval=POLL)
        self.backends.append(made)
        return made

    def spec(self, scenario: str, task_id: str = "widgets-7-aaaaaa", **overrides: object) -> RunSpec:
        config = self.config()
        values: dict[str, object] = {
            "task_id": task_id,
            "repo": REPO,
            "issue_number": 7,
            "clone_url": self.github.repo(REPO).clone_url,
            "default_branch": "main",
            "branch": BRANCH,
            "prompt": f"{PROMPT}FAKE_CLAUDE_SCENARIO={scenario}\n",
            "command": tuple(build_command(agent_settings(config))),
            "agent_env": agent_env(config),
            "credential": lambda: GitCredential("x-access-token", TOKEN),
            **overrides,
        }
        return RunSpec(**values)  # type: ignore[arg-type]

    def task(self, spec: RunSpec, workspace: Workspace | None = None) -> Task:
        meta = {"base_sha": workspace.base_sha} if workspace else {}
        return Task(
            id=spec.task_id,
            repo=spec.repo,
            issue_number=spec.issue_number,
            title="t",
            branch=spec.branch,
            meta=meta,
        )

    def log(self, spec: RunSpec) -> TaskLog:
        return TaskLog(self.tmp_path / "logs" / f"{spec.task_id}.log")

    def start(self, backend: DaytonaBackend, spec: RunSpec) -> Workspace:
        workspace = backend.prepare(spec, self.log(spec))
        backend.start_agent(workspace, spec, self.log(spec))
        return workspace

    def run(
        self,
        backend: DaytonaBackend,
        spec: RunSpec,
        *,
        seconds: float = 30,
        should_stop: Callable[[], str | None] = no_stop,
    ) -> tuple[Workspace, AgentExit]:
        workspace = self.start(backend, spec)
        result = backend.wait(
            workspace, deadline=time.time() + seconds, should_stop=should_stop, log=self.log(spec)
        )
        assert result is not None
        return workspace, result

    def sandbox_of(self, workspace: Workspace) -> dict[str, object]:
        return self.fake.sandboxes[workspace.extra["sandbox"]]

    def repo_dir(self, workspace: Workspace) -> Path:
        return Path(workspace.extra["work_dir"]) / "repo"


@pytest.fixture
def harness(
    fake: FakeDaytona, github: FakeGitHub, make_config: Callable[..., Config], tmp_path: Path
) -> Harness:
    return Harness(fake, github, make_config, tmp_path)


def result_of(exit_: AgentExit) -> dict[str, object]:
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
        DaytonaBackend(config).check()
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
    spec = harness.spec("edit")
    repo = harness.github.repo(REPO)
    main_sha = repo.branch_sha("main")

    workspace, result = harness.run(backend, spec)

    assert workspace.handle == f"claude-issue-solver-{spec.task_id}" == backend.handle_for(harness.task(spec))
    assert workspace.base_sha == main_sha
    assert result.exit_code == 0, result.log_tail
    assert result_of(result)["is_error"] is False
    # The fake agent records the hash of the stdin it got: the prompt arrived byte for byte.
    prompt_sha = hashlib.sha256(spec.prompt.encode()).hexdigest()
    assert f"prompt-sha256={prompt_sha}" in (harness.repo_dir(workspace) / "CLAUDE_FIX.md").read_text()
    assert "exited with code 0" in harness.log(spec).path.read_text()
    sandbox = harness.sandbox_of(workspace)
    assert sandbox["labels"] == {
        LABEL_TASK: spec.task_id,
        LABEL_REPO: REPO,
        LABEL_ISSUE: "7",
        LABEL_OWNER: backend.owner,
        "code-toolbox-language": "python",
    }
    assert sandbox["snapshot"] == "claude-issue-solver"

    changes = backend.collect(workspace, harness.log(spec))
    assert changes.changed and not changes.ahead
    assert changes.files == ("CLAUDE_FIX.md",)
    assert changes.summary is not None and changes.summary.startswith("Fix issue from fake agent")
    assert "CLAUDE_FIX.md" in changes.diffstat and "1 insertion" in changes.diffstat
    assert not (harness.repo_dir(workspace) / gitops.SUMMARY_FILE).exists()

    sha = backend.push(workspace, spec, "Fix the widget (#7)", AUTHOR, harness.log(spec))
    assert repo.branch_sha(BRANCH) == sha
    assert repo.git("log", "-1", "--format=%an|%ae|%cn|%ce|%s", BRANCH).strip() == (
        "Issue Bot|issue-bot@example.com|Issue Bot|issue-bot@example.com|Fix the widget (#7)"
    )
    assert sorted(repo.git("ls-tree", "-r", "--name-only", BRANCH).split()) == ["CLAUDE_FIX.md", "README.md"]

    # A re-run of the publish step after a crash pushes again, without an empty commit.
    assert backend.push(workspace, spec, "Fix the widget (#7)", AUTHOR, harness.log(spec)) == sha
    assert len(repo.git("log", "--format=%H", BRANCH).split()) == 2

    backend.cleanup(workspace, harness.task(spec), harness.log(spec))
    assert harness.fake.sandboxes == {}
    assert harness.fake.deleted == [workspace.extra["sandbox"]]


def test_no_secret_in_env_vars_on_disk_or_in_logs(harness: Harness) -> None:
    backend = harness.backend()
    spec = harness.spec("wait")
    workspace = harness.start(backend, spec)
    sandbox_id = workspace.extra["sandbox"]
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
    session = backend.client.get(sandbox_id).process.get_session(workspace.extra["session"])
    assert [c.command for c in session.commands] and all(
        CLAUDE_KEY not in c.command for c in session.commands
    )

    (harness.repo_dir(workspace) / ".fake-claude-release").write_text("go")
    result = backend.wait(workspace, deadline=time.time() + 30, should_stop=no_stop, log=harness.log(spec))
    assert result is not None and result.exit_code == 0, result
    backend.collect(workspace, harness.log(spec))
    backend.push(workspace, spec, "Fix", AUTHOR, harness.log(spec))
    assert files_containing(root, TOKEN) == []
    assert files_containing(root, CLAUDE_KEY) == []
    log_text = harness.log(spec).path.read_text()
    assert TOKEN not in log_text and CLAUDE_KEY not in log_text


def test_the_agent_gets_its_environment(harness: Harness) -> None:
    spec = harness.spec(
        "noop",
        command=("sh", "-c", 'printf "%s|%s|%s|" "$ANTHROPIC_API_KEY" "$IS_SANDBOX" "$(pwd)"; cat'),
    )
    workspace, result = harness.run(harness.backend(), spec)
    key, is_sandbox, cwd, prompt = result.stdout.split("|", 3)
    assert (key, is_sandbox, cwd) == (CLAUDE_KEY, "1", str(harness.repo_dir(workspace)))
    assert prompt == spec.prompt


def test_a_rerun_starts_from_the_remote_branch(harness: Harness) -> None:
    repo = harness.github.repo(REPO)
    first = harness.github.commit_files(REPO, BRANCH, {"CLAUDE_FIX.md": "From the first run.\n"})
    backend = harness.backend()
    spec = harness.spec("edit")
    workspace, result = harness.run(backend, spec)
    assert result.exit_code == 0, result.log_tail
    assert workspace.base_sha == first
    changes = backend.collect(workspace, harness.log(spec))
    assert changes.files == ("CLAUDE_FIX.md",) and "1 insertion" in changes.diffstat
    sha = backend.push(workspace, spec, "Second try", AUTHOR, harness.log(spec))
    assert repo.git("log", "--format=%H", BRANCH).split()[:2] == [sha, first]


def test_noop_changes_nothing(harness: Harness) -> None:
    backend = harness.backend()
    spec = harness.spec("noop")
    workspace, result = harness.run(backend, spec)
    assert result.exit_code == 0
    before = len(harness.fake.requests)
    changes = backend.collect(workspace, harness.log(spec))
    assert not changes.changed
    assert changes.files == () and changes.summary is None and changes.diffstat == ""
    assert len(harness.fake.requests) - before == 2  # git status and one command for diffstat + ahead


def test_prepare_is_idempotent(harness: Harness) -> None:
    backend = harness.backend()
    spec = harness.spec("noop")
    first = backend.prepare(spec, harness.log(spec))
    again = harness.backend().prepare(spec, harness.log(spec))  # "after a restart"
    assert again.extra["sandbox"] == first.extra["sandbox"]
    assert again.base_sha == first.base_sha
    assert len(harness.fake.requests_to("/api/sandbox", "POST")) == 1
    assert len(harness.fake.requests_to(f"/toolbox/{first.extra['sandbox']}/git/clone")) == 1


def test_start_agent_twice_starts_one_agent(harness: Harness) -> None:
    backend = harness.backend()
    spec = harness.spec("wait")
    workspace = harness.start(backend, spec)
    harness.backend().start_agent(workspace, spec, harness.log(spec))
    sandbox = backend.client.get(workspace.extra["sandbox"])
    assert len(sandbox.process.get_session(workspace.extra["session"]).commands) == 1


def test_push_rejected(harness: Harness) -> None:
    harness.github.reject_pushes(REPO, "protected branch hook declined")
    backend = harness.backend()
    spec = harness.spec("edit")
    workspace, _ = harness.run(backend, spec)
    backend.collect(workspace, harness.log(spec))
    with pytest.raises(PushRejected, match="protected branch hook declined") as caught:
        backend.push(workspace, spec, "Fix", AUTHOR, harness.log(spec))
    assert TOKEN not in str(caught.value)


def test_a_hostile_remote_setting_gets_no_credential(harness: Harness) -> None:
    """The agent pointed origin's push URL elsewhere: the push goes to the real remote regardless."""
    elsewhere = harness.github.create_repo("acme/elsewhere")
    backend = harness.backend()
    spec = harness.spec("edit")
    workspace, _ = harness.run(backend, spec)
    sandbox = backend.client.get(workspace.extra["sandbox"])
    sandbox.process.exec(
        f"git config remote.origin.pushurl {elsewhere.clone_url}", cwd=str(harness.repo_dir(workspace))
    )
    backend.collect(workspace, harness.log(spec))
    sha = backend.push(workspace, spec, "Fix", AUTHOR, harness.log(spec))
    assert harness.github.repo(REPO).branch_sha(BRANCH) == sha
    assert elsewhere.branch_sha(BRANCH) is None


# --- stopping --------------------------------------------------------------------------------------------


def test_cancel_kills_the_agent(harness: Harness) -> None:
    backend = harness.backend()
    spec = harness.spec("hang")
    asked = time.monotonic() + 0.5
    workspace, result = harness.run(
        backend, spec, should_stop=lambda: "cancel" if time.monotonic() > asked else None
    )
    assert result.cancelled and not result.timed_out
    assert time.monotonic() - asked < 5
    sandbox = backend.client.get(workspace.extra["sandbox"])
    assert sandbox.process.list_sessions() == []  # the session, and with it the agent, is gone


def test_timeout_kills_the_agent(harness: Harness) -> None:
    backend = harness.backend()
    spec = harness.spec("hang")
    started = time.monotonic()
    _, result = harness.run(backend, spec, seconds=1)
    assert result.timed_out and not result.cancelled and result.exit_code is None
    assert time.monotonic() - started < 10


def test_detach_then_attach_after_a_restart(harness: Harness) -> None:
    backend = harness.backend()
    spec = harness.spec("wait")
    workspace = harness.start(backend, spec)
    detached = backend.wait(
        workspace, deadline=time.time() + 30, should_stop=lambda: "detach", log=harness.log(spec)
    )
    assert detached is None
    assert harness.fake.sandboxes[workspace.extra["sandbox"]]["state"] == "started"

    restarted = harness.backend()
    task = harness.task(spec, workspace)
    again = restarted.attach(task)
    assert again is not None
    assert again.extra["sandbox"] == workspace.extra["sandbox"] and again.base_sha == workspace.base_sha
    assert "command_id" not in again.extra  # found again by the session's commands, not saved state
    (harness.repo_dir(workspace) / ".fake-claude-release").write_text("go")
    result = restarted.wait(again, deadline=time.time() + 30, should_stop=no_stop, log=harness.log(spec))
    assert result is not None and result.exit_code == 0, result
    assert restarted.collect(again, harness.log(spec)).files == ("CLAUDE_FIX.md",)
    assert [r.task_id for r in restarted.live_runs()] == [spec.task_id]


def test_attach_finds_nothing_for_an_unknown_task(harness: Harness) -> None:
    assert harness.backend().attach(harness.task(harness.spec("edit"))) is None


def test_finished_while_stopped_is_read_from_disk(harness: Harness) -> None:
    """Auto-stop while the daemon was away ends the sessions; the exit code file still tells."""
    backend = harness.backend()
    spec = harness.spec("edit")
    workspace = harness.start(backend, spec)
    exit_file = Path(workspace.extra["work_dir"]) / ".claude-issue-solver" / "exit_code"
    wait_until(exit_file.exists, what="the agent to finish")
    harness.fake.set_state(workspace.extra["sandbox"], "stopped")

    restarted = harness.backend()
    again = restarted.attach(harness.task(spec, workspace))
    assert again is not None
    assert harness.fake.sandboxes[workspace.extra["sandbox"]]["state"] == "started"
    result = restarted.wait(again, deadline=time.time() + 30, should_stop=no_stop, log=harness.log(spec))
    assert result is not None and result.exit_code == 0
    assert result_of(result)["is_error"] is False


# --- Daytona failing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
def test_rate_limits_and_outages_while_waiting_only_delay(harness: Harness, status: int) -> None:
    backend = harness.backend()
    spec = harness.spec("wait")
    workspace = harness.start(backend, spec)
    sandbox_id = workspace.extra["sandbox"]
    harness.fake.fail_next(f"/toolbox/{sandbox_id}/process/session", status, count=4)
    (harness.repo_dir(workspace) / ".fake-claude-release").write_text("go")
    result = backend.wait(workspace, deadline=time.time() + 60, should_stop=no_stop, log=harness.log(spec))
    assert result is not None and result.exit_code == 0, result
    failed = [r for r in harness.fake.requests_for(sandbox_id) if r.status == status]
    assert len(failed) == 4
    assert "polling again with back-off" in harness.log(spec).path.read_text()


def test_rate_limited_create_is_retryable(harness: Harness) -> None:
    harness.fake.fail_next("/api/sandbox", 429, method="POST")
    with pytest.raises(BackendError, match=r"rate-limited us \(429\)") as caught:
        harness.backend().prepare(harness.spec("edit"), harness.log(harness.spec("edit")))
    assert caught.value.retryable


def test_a_vanished_sandbox_is_lost(harness: Harness) -> None:
    backend = harness.backend()
    spec = harness.spec("hang")
    workspace = harness.start(backend, spec)
    harness.fake.vanish(workspace.extra["sandbox"])
    with pytest.raises(WorkspaceLost, match="no longer exists"):
        backend.wait(workspace, deadline=time.time() + 30, should_stop=no_stop, log=harness.log(spec))
    # Cleanup of a sandbox that is gone is quiet, and never raises.
    backend.cleanup(workspace, harness.task(spec), harness.log(spec))


def test_cleanup_never_raises(harness: Harness) -> None:
    backend = harness.backend()
    spec = harness.spec("noop")
    workspace = backend.prepare(spec, harness.log(spec))
    harness.fake.fail_next("/api/sandbox", 401, count=10)
    backend.cleanup(workspace, harness.task(spec), harness.log(spec))
    assert "could not delete the sandbox" in harness.log(spec).path.read_text()


# --- reconcile -------------------------------------------------------------------------------------------


def test_remove_orphans_keeps_live_tasks_and_other_daemons(harness: Harness, tmp_path: Path) -> None:
    backend = harness.backend()
    kept = backend.prepare(
        harness.spec("noop", task_id="widgets-7-kept01"), harness.log(harness.spec("noop"))
    )
    orphan = backend.prepare(
        harness.spec("noop", task_id="widgets-8-orphan"), harness.log(harness.spec("noop"))
    )
    other = harness.backend(STATE_DIR=str(tmp_path / "other-state"))
    foreign = other.prepare(
        harness.spec("noop", task_id="widgets-9-other1"), harness.log(harness.spec("noop"))
    )

    assert sorted(r.task_id for r in backend.live_runs()) == ["widgets-7-kept01", "widgets-8-orphan"]
    removed = backend.remove_orphans({"widgets-7-kept01"})
    assert removed == ["sandbox claude-issue-solver-widgets-8-orphan"]
    assert set(harness.fake.sandboxes) == {kept.extra["sandbox"], foreign.extra["sandbox"]}
    assert orphan.extra["sandbox"] in harness.fake.deleted


# --- the snapshot ------------------------------------------------------------------------------------------


def test_create_snapshot_from_the_agent_dockerfile(harness: Harness) -> None:
    config = harness.config()
    logs: list[str] = []
    name = create_snapshot(config, agent_dockerfile(), name="cis-test-snapshot", on_logs=logs.append)
    assert name == "cis-test-snapshot"
    made = harness.fake.snapshots[name]
    assert made["state"] == "active"
    assert made["dockerfile"] == agent_dockerfile().read_text()
    with pytest.raises(BackendError, match="already exists"):
        create_snapshot(config, agent_dockerfile(), name="cis-test-snapshot")
    # And a task can start from it.
    harness.backend(DAYTONA_SNAPSHOT=name).check()
