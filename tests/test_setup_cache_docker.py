"""The setup cache on Docker, end to end: real daemon and pipeline, the fake `claude` in the busybox image.

The sample's setup installs into HOME (outside the tree: kept by ``docker commit``) and into ``.deps/``
(ignored, inside the bind-mounted tree: carried in the image as files and copied back by the agent's
user); its tests need both, so a hit that restored only one of them would be red.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docker.errors
import pytest

from claude_issue_solver.backends.base import LABEL_OWNER, LABEL_PROCESS, LABEL_REPO, owner_of
from claude_issue_solver.backends.docker_setup_cache import LABEL_SETUP_KEY, SETUP_IMAGE_REPOSITORY
from claude_issue_solver.config import Config
from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.logs import task_log_path
from claude_issue_solver.queue import Task, TaskQueue, TaskState
from tests.e2e import CLAUDE_KEY, CLIENT, all_finished, assert_clean, drive, labelled, needs_docker
from tests.github_fixtures import TOKEN

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
    labelled(github, title, "edit")
    queue = drive(config, all_finished, timeout=120)
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
