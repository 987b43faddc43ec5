"""The setup cache on Docker, end to end: real daemon and pipeline, the fake `claude` in the busybox image.

The sample's setup installs into HOME (outside the tree: kept by ``docker commit``) and into ``.deps/``
(ignored, inside the bind-mounted tree: carried in the image as files and copied back by the agent's
user); its tests need both, so a hit that restored only one of them would be red.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docker.errors
import pytest

from claude_issue_solver.backends.base import (
    LABEL_OWNER,
    LABEL_PROCESS,
    LABEL_REPO,
    BackendError,
    ProcessSpec,
    WorkspaceSpec,
    owner_of,
)
from claude_issue_solver.backends.docker import DockerBackend, DockerWorkspace
from claude_issue_solver.backends.docker_setup_cache import LABEL_SETUP_KEY, SETUP_IMAGE_REPOSITORY
from claude_issue_solver.backends.settings import DockerSettings
from claude_issue_solver.config import Config
from claude_issue_solver.credentials import GitCredential
from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.logs import TaskLog, task_log_path
from claude_issue_solver.run.policy import OUTPUT_BOUNDS
from claude_issue_solver.store.queue import Task, TaskQueue, TaskState
from tests.e2e import CLAUDE_KEY, CLIENT, all_finished, assert_clean, drive, labelled, needs_docker
from tests.github_fixtures import TOKEN
from tests.waiting import wait_until

pytestmark = needs_docker

REPO = "acme/widgets"
SETUP_SH = """\
set -e
mkdir -p "$HOME/.setup-cache" .deps/lib
echo installed >"$HOME/.setup-cache/marker"
i=0
while [ $i -lt 50 ]; do echo "mod $i" >.deps/lib/mod$i.txt; i=$((i + 1)); done
ln -s lib/mod0.txt .deps/first
ln -s /etc/shadow .deps/host-file  # links out of the tree: carried as links, never followed on the host
ln -s / .deps/host-root
echo 'answer() { echo 42; }' >.deps/answer.sh
echo "setup ran"
"""
TEST_SH = """\
test -f "$HOME/.setup-cache/marker" || { echo "HOME lost what setup installed"; exit 1; }
test -f .deps/lib/mod49.txt && test -L .deps/first || { echo "the tree lost .deps"; exit 1; }
test -L .deps/host-file && test -L .deps/host-root || { echo "a link was followed"; exit 1; }
. ./.deps/answer.sh
[ "$(answer)" = 42 ] && echo "1 passed"
"""


def sample(github: FakeGitHub) -> None:
    github.commit_files(
        REPO,
        "main",
        {
            "setup.sh": SETUP_SH,
            "test.sh": TEST_SH,
            ".gitignore": ".deps/\n",
            "requirements.txt": "answer==1\n",
            ".github/claude-issue-solver.yml": "setup: sh setup.sh\ntest: sh test.sh\ntest_timeout: 60\n",
        },
        message="a sample whose setup installs into HOME and the tree",
    )


@pytest.fixture
def owner(state_dir: Path) -> Iterator[str]:
    """The owner label of this test's daemon; every image of it is removed afterwards (never another's)."""
    ours = owner_of(state_dir.expanduser().resolve())
    yield ours
    for image in CLIENT.images.list(filters={"label": [f"{LABEL_OWNER}={ours}"]}):
        with contextlib.suppress(docker.errors.NotFound):
            CLIENT.images.remove(image.id, force=True)


def run_task(github: FakeGitHub, config: Config, title: str) -> tuple[Task, TaskQueue, list[str]]:
    """One issue through the daemon; the processes whose containers were created meanwhile (by label)."""
    since = int(time.time()) - 1
    number = labelled(github, title, "edit")["number"]
    # Until this issue's task has run (a new daemon's first poll is scheduled, not in its first cycle).
    queue = drive(
        config, lambda q: any(t.issue_number == number for t in q.list()) and all_finished(q), timeout=120
    )
    task = max(queue.list(), key=lambda t: t.issue_number)
    assert task.state is TaskState.COMPLETED, (task.error, task_log_path(config.log_dir, task.id).read_text())
    ours = f"{LABEL_OWNER}={owner_of(config.state_dir.resolve())}"
    events = CLIENT.events(
        since=since,
        until=int(time.time()) + 1,
        filters={"type": "container", "event": "create", "label": [ours]},
        decode=True,
    )
    created = [e["Actor"]["Attributes"].get(LABEL_PROCESS, "") for e in events]
    return task, queue, created


def test_a_second_task_restores_the_setup_and_a_changed_lock_file_runs_it_again(
    github: FakeGitHub,
    e2e_config: Callable[..., Config],
    state_dir: Path,
    owner: str,
    no_leftover_containers: None,
) -> None:
    sample(github)
    config = e2e_config()

    first, _, created = run_task(github, config, "First")
    cache = first.meta["tests"]["cache"]
    assert cache["state"] == "saved" and first.meta["tests"]["verdict"] == "green"
    assert "setup" in created
    tag = cache["detail"]
    assert tag.startswith(f"{SETUP_IMAGE_REPOSITORY}:")
    image = CLIENT.images.get(tag)
    assert image.labels[LABEL_OWNER] == owner and image.labels[LABEL_REPO] == REPO
    assert image.labels[LABEL_SETUP_KEY] == cache["key"]
    inspected = json.dumps(image.attrs)
    for secret in (TOKEN, CLAUDE_KEY):
        assert secret not in inspected  # neither in its env nor its config

    second, _, created = run_task(github, config, "Second")
    tests = second.meta["tests"]
    assert tests["cache"]["state"] == "hit" and tests["setup"]["cached"] == tag
    assert "setup" not in created and "setup-restore" in created  # no setup container at all
    assert tests["baseline"]["exit_code"] == 0 and tests["verdict"] == "green"  # HOME and .deps/ both back
    log = task_log_path(config.log_dir, second.id).read_text()
    assert f"setup: restored from the cache of {tag}" in log and "setup ran" not in log
    body = github.pulls(REPO)[-1]["body"]
    assert f"restored from the cache of {tag}, not run" in body

    github.commit_files(REPO, "main", {"requirements.txt": "answer==2\n"}, message="bump")
    third, _, created = run_task(github, config, "Third")
    new = third.meta["tests"]["cache"]
    assert new["state"] == "saved" and new["key"] != cache["key"] and "setup" in created
    assert third.meta["tests"]["verdict"] == "green"
    with pytest.raises(docker.errors.ImageNotFound):
        CLIENT.images.get(tag)  # pruned: older, and no container of a live task uses it
    ours = CLIENT.images.list(filters={"label": [f"{LABEL_OWNER}={owner}", LABEL_SETUP_KEY]})
    assert [i.tags for i in ours] == [[new["detail"]]]
    log = task_log_path(config.log_dir, third.id).read_text()
    assert f"removed the older setup image {tag}" in log
    assert_clean(state_dir)


def test_setup_cache_off_runs_setup_each_time_and_saves_nothing(
    github: FakeGitHub,
    e2e_config: Callable[..., Config],
    state_dir: Path,
    owner: str,
    no_leftover_containers: None,
) -> None:
    sample(github)
    config = e2e_config(SETUP_CACHE="false")
    run_task(github, config, "First")
    second, _, created = run_task(github, config, "Second")
    assert "setup" in created and second.meta["tests"]["cache"]["state"] == "off"
    assert CLIENT.images.list(filters={"label": [f"{LABEL_OWNER}={owner}"]}) == []
    assert_clean(state_dir)


# --- the backend's mechanics, without the pipeline ------------------------------------------------------


def _bare_remote(tmp_path: Path) -> Path:
    bare, seed = tmp_path / "remote.git", tmp_path / "seed"
    for args in (
        ["init", "--bare", "-q", "--initial-branch=main", str(bare)],
        ["init", "-q", "--initial-branch=main", str(seed)],
    ):
        subprocess.run(["git", *args], check=True)
    (seed / ".gitignore").write_text(".deps/\n")
    (seed / "README.md").write_text("# r\n")
    for args in (
        ["add", "-A"],
        ["-c", "user.name=S", "-c", "user.email=s@example.com", "commit", "-qm", "seed"],
        ["push", "-q", str(bare), "main"],
    ):
        subprocess.run(["git", *args], cwd=seed, check=True)
    return bare


def _spec(task_id: str, clone_url: str, issue: int) -> WorkspaceSpec:
    return WorkspaceSpec(
        task_id=task_id,
        repo=REPO,
        issue_number=issue,
        clone_url=clone_url,
        default_branch="main",
        branch=f"claude/issue-{issue}",
        credential=lambda: GitCredential("x-access-token", TOKEN),
    )


def _run(backend: DockerBackend, workspace: DockerWorkspace, name: str, script: str, log: TaskLog) -> str:
    backend.start_process(workspace, ProcessSpec(name=name, argv=("sh", "-c", script), env={}), log)
    wait_until(lambda: backend.poll_process(workspace, name) is not None, 60, f"{name} to end")
    assert backend.poll_process(workspace, name) == 0, backend.output(workspace, name, OUTPUT_BOUNDS)
    return backend.output(workspace, name, OUTPUT_BOUNDS).stdout


def test_a_restarted_backend_restores_into_another_workspace_and_prunes_only_its_own(
    tmp_path: Path, fake_image: str, state_dir: Path, owner: str
) -> None:
    settings = DockerSettings(state_dir=state_dir, network="none", memory="256m", cpus=1.0, pids_limit=64)
    backend = DockerBackend(settings, client=CLIENT, image=fake_image)
    clone_url = str(_bare_remote(tmp_path))
    tag = secrets.token_hex(3)
    first_id, second_id, third_id = (f"widgets-{n}-{tag}" for n in (1, 2, 3))
    log = TaskLog(tmp_path / "t.log")
    # Another daemon's setup image of the same repository, and an older one of ours a live task names.
    other = CLIENT.containers.create(fake_image, ["true"], network_mode="none")
    foreign = other.commit(
        repository=SETUP_IMAGE_REPOSITORY,
        tag=f"foreign-{tag}",
        conf={"Labels": {LABEL_OWNER: "someone-else", LABEL_REPO: REPO, LABEL_SETUP_KEY: "k"}},
    )
    other.remove()
    try:
        first = backend.prepare(_spec(first_id, clone_url, 1), log)
        _run(
            backend,
            first,
            "setup",
            'mkdir -p .deps "$HOME/cache" && echo tree >.deps/t && echo home >"$HOME/cache/h"',
            log,
        )
        saved = backend.save_setup(first, "setup", "key-1", log)
        assert saved is not None and backend.save_setup(first, "setup", "key-1", log) == saved  # only records
        # This workspace's later processes start from the saved image: HOME's install is there.
        assert _run(backend, first, "baseline", 'cat "$HOME/cache/h"', log).strip() == "home"

        restarted = DockerBackend(settings, client=CLIENT, image=fake_image)
        second = restarted.prepare(_spec(second_id, clone_url, 2), log)
        assert restarted.restore_setup(second, "key-2", log) is None  # nothing under another key
        assert restarted.restore_setup(second, "key-1", log) == saved
        assert (second.worktree / ".deps" / "t").read_text() == "tree\n"
        assert _run(restarted, second, "baseline", 'cat "$HOME/cache/h" .deps/t', log).split() == [
            "home",
            "tree",
        ]
        assert restarted.restore_setup(second, "key-1", log) == saved  # again after a restart: idempotent

        # A new setup of the repository prunes our older one unless a live task still names it.
        _run(restarted, second, "setup", "echo again >.deps/t2", log)
        newer = restarted.save_setup(second, "setup", "key-3", log)
        assert newer != saved and restarted.setups.find(str(saved)) is not None  # the first task names it
        for task_id in (first_id, second_id):  # nothing names or uses the first two images now
            restarted.remove(task_id, log)
        third = restarted.prepare(_spec(third_id, clone_url, 3), log)
        _run(restarted, third, "setup", "true", log)
        newest = restarted.save_setup(third, "setup", "key-5", log)
        tags = {t for i in CLIENT.images.list(filters={"label": [f"{LABEL_OWNER}={owner}"]}) for t in i.tags}
        assert tags == {newest}
        assert CLIENT.images.get(foreign.id).labels[LABEL_OWNER] == "someone-else"  # never another's
    finally:
        for task_id in (first_id, second_id, third_id):
            backend.remove(task_id, log)
        CLIENT.images.remove(foreign.id, force=True)


def test_a_saved_setup_removed_by_hand_is_named_as_such(
    tmp_path: Path, fake_image: str, state_dir: Path, owner: str
) -> None:
    settings = DockerSettings(state_dir=state_dir, network="none", memory="256m", cpus=1.0, pids_limit=64)
    backend = DockerBackend(settings, client=CLIENT, image=fake_image)
    task_id = f"widgets-1-{secrets.token_hex(3)}"
    log = TaskLog(tmp_path / "t.log")
    try:
        workspace = backend.prepare(_spec(task_id, str(_bare_remote(tmp_path)), 1), log)
        _run(backend, workspace, "setup", "mkdir -p .deps && echo tree >.deps/t", log)
        saved = backend.save_setup(workspace, "setup", "key-1", log)
        assert saved is not None
        CLIENT.images.remove(saved, force=True)  # an operator's `docker image rm`
        with pytest.raises(BackendError, match=r"the saved setup image .* is gone") as gone:
            backend.start_process(workspace, ProcessSpec(name="baseline", argv=("true",), env={}), log)
        assert "a retry of the task runs setup again" in str(gone.value)
    finally:
        backend.remove(task_id, log)
