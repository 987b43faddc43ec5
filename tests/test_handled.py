"""GitHub is the record of what was done (issue #19, item 3): a daemon on a new, empty ``STATE_DIR`` (or
a restored old state file) does not run again the labelled issues an earlier daemon already answered.

The daemons are the real ones (``app.build``: watcher, pipeline, queue) on the in-memory backend, over
the loopback GitHub; "no container, no model request" is "the backend was never asked to prepare a
workspace or start a process". One Docker end-to-end test with the fake agent image is in
``test_handled_e2e.py``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from claude_issue_solver.app import Parts, build
from claude_issue_solver.config import Config
from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.github import handled
from claude_issue_solver.github.client import GitHubClient
from claude_issue_solver.run import messages
from claude_issue_solver.store.queue import FOLLOWUP, Task, TaskState
from tests.fakes.memory_backend import MemoryBackend, Place, Process, result_line
from tests.github_fixtures import TOKEN
from tests.waiting import wait_until

REPO = "acme/widgets"
KEY = "sk-ant-api03-testkeyXYZ0123456789"
SUMMARY = "Add the widget fix\n\nThe widget now works.\n"


def agent(place: Place, process: Process) -> None:
    """Edits for most issues; an issue titled "... fails" fails, "... asks" answers with no change."""
    number = place.spec.issue_number
    if number in FAILING:
        process.exit_code = 1
        process.stdout = result_line("Invalid API key", ok=False) + "\n"
        return
    if number not in ANSWERING:
        place.tree[f"fix-{number}.txt"] = place.tree.get(f"fix-{number}.txt", b"") + b"fixed\n"
        place.tree[".claude-pr-summary.md"] = SUMMARY.encode()
    process.exit_code = 0
    process.stdout = result_line("Nothing to change.") + "\n"


FAILING: set[int] = set()
ANSWERING: set[int] = set()


@dataclass
class Daemon:
    parts: Parts
    backend: MemoryBackend
    state_dir: Path

    @property
    def tasks(self) -> list[Task]:
        return self.parts.queue.list()

    @property
    def ran(self) -> list[str]:
        """What the backend was asked to do that needs a container or a model."""
        return [c for c in self.backend.calls if c in ("prepare", "start_process")]

    def cycle(self) -> None:
        """One poll of the repository and one dispatch (as a webhook's poke would cause)."""
        self.parts.daemon.poke(REPO)
        self.parts.daemon.run_once()

    def settle(self, until: Callable[[list[Task]], bool] = lambda tasks: True, timeout: float = 30) -> None:
        wait_until(lambda: (self.cycle(), until(self.tasks))[1], timeout, "the daemon's tasks", interval=0.02)
        wait_until(lambda: not self.parts.daemon.active, 10, "the monitors to finish")
        self.cycle()  # the watcher sees the final comments


@dataclass
class World:
    github: FakeGitHub
    make_config: Callable[..., Config]
    tmp_path: Path
    daemons: list[Daemon] = field(default_factory=list)
    issues: list[int] = field(default_factory=list)

    def daemon(self, state: str) -> Daemon:
        state_dir = self.tmp_path / state
        state_dir.mkdir(exist_ok=True)
        config = self.make_config(
            GITHUB_TOKEN=TOKEN,
            GITHUB_API_URL=self.github.api_url,
            GITHUB_REPOS=REPO,
            STATE_DIR=str(state_dir),
            ANTHROPIC_API_KEY=KEY,
            TASK_TIMEOUT="600",
        )
        backend = MemoryBackend()
        backend.on_push = lambda branch, files, message: self.github.commit_files(
            REPO, branch, files, message=message
        )
        backend.agents["agent"] = agent
        started = Daemon(build(config, backend=backend), backend, state_dir)  # type: ignore[arg-type]
        self.daemons.append(started)
        return started

    def issue(self, title: str) -> int:
        created = self.github.create_issue(REPO, title, "It is broken.", labels=["Claude"], user="maintainer")
        self.issues.append(int(created["number"]))
        return self.issues[-1]

    def relabel(self, number: int) -> None:
        self.github.remove_label(REPO, number, "Claude", actor="maintainer")
        self.github.add_label(REPO, number, "Claude", actor="maintainer")

    def ours(self, number: int) -> list[dict[str, Any]]:
        return [c for c in self.github.comments(REPO, number) if messages.marked_task(c["body"])]

    def snapshot(self) -> tuple[dict[int, list[str]], int]:
        """Every comment body of ours per issue, and how many pull requests there are."""
        numbers = [int(i["number"]) for i in self.github.pulls(REPO)]
        bodies = {n: [c["body"] for c in self.ours(n)] for n in self.issues}
        return bodies, len(numbers)


@pytest.fixture
def world(github: FakeGitHub, make_config: Callable[..., Config], tmp_path: Path) -> World:
    FAILING.clear()
    ANSWERING.clear()
    return World(github, make_config, tmp_path)


def finished(count: int) -> Callable[[list[Task]], bool]:
    return lambda tasks: len(tasks) >= count and all(not t.state.live for t in tasks)


def first_daemon_handles_three(world: World) -> tuple[Daemon, int, int, int]:
    """A PR, a failure, an answer: three issues a first daemon finished."""
    pr, failed, answered = world.issue("Fix it"), world.issue("It fails"), world.issue("Just asks")
    FAILING.add(failed)
    ANSWERING.add(answered)
    first = world.daemon("first")
    first.settle(finished(3))
    states = {t.issue_number: t.state for t in first.tasks}
    assert states == {pr: TaskState.COMPLETED, failed: TaskState.FAILED, answered: TaskState.COMPLETED}
    return first, pr, failed, answered


# --- what it must show -----------------------------------------------------------------------------


def test_a_fresh_state_dir_does_not_run_handled_issues_again_and_a_relabel_runs(world: World) -> None:
    _, pr, failed, answered = first_daemon_handles_three(world)
    before = world.snapshot()
    assert before[1] == 1

    second = world.daemon("fresh")  # a new, empty STATE_DIR over the same repository
    for _ in range(3):
        second.cycle()
    assert second.tasks == [] and second.ran == []  # no task, no container, no model request
    assert world.snapshot() == before  # no new comment, no edited one, no new pull request

    # What was found is recorded: the next polls ask GitHub nothing about these issues.
    book = second.parts.queue.store.read()["watcher"]["issues"]
    found = {n: book[f"{REPO}#{n}"]["handled_on_github"] for n in (pr, failed, answered)}
    assert found[pr]["by"] == "comment" and found[pr]["outcome"] == "completed" and found[pr]["pr_number"]
    assert found[failed]["outcome"] == "failed"  # a failure is an end: not retried by a fresh daemon
    assert found[answered]["outcome"] == "completed" and found[answered]["pr_number"] is None
    marks = len(world.github.requests)
    second.cycle()
    later = world.github.requests[marks:]
    assert [r.path for r in later if "/issues/" in r.path[-14:] or r.path.endswith("/pulls")] == []
    assert all(r.status == 304 for r in later if r.path.endswith("/issues"))

    # A maintainer applies the label again: a new labelling after our final comment runs.
    world.relabel(pr)
    second.settle(finished(1))
    (task,) = second.tasks
    assert task.issue_number == pr and task.state is TaskState.COMPLETED, task.error
    assert second.ran  # it ran this time
    assert len(world.github.pulls(REPO)) == 1  # the same pull request, updated
    assert len(world.ours(pr)) == 2  # the first run's comment and this run's
    assert len(world.ours(failed)) == 1 and len(world.ours(answered)) == 1  # the others untouched


def test_a_comment_deleted_by_a_person_our_open_pull_request_still_counts(world: World) -> None:
    _, pr, _, _ = first_daemon_handles_three(world)
    (comment,) = world.ours(pr)
    client = GitHubClient(world.daemons[0].parts.watcher.config)
    client.request(REPO, "DELETE", f"/repos/{REPO}/issues/comments/{comment['id']}")

    second = world.daemon("fresh")
    second.cycle()
    assert second.tasks == [] and second.ran == []
    assert world.ours(pr) == []
    book = second.parts.queue.store.read()["watcher"]["issues"][f"{REPO}#{pr}"]["handled_on_github"]
    assert book["by"] == "pull request" and book["outcome"] == "open"


def test_a_run_that_never_ended_runs_on_the_fresh_daemon(world: World) -> None:
    number = world.issue("Fix it")
    first = world.daemon("first")
    first.parts.queue.pause()  # the first daemon queued it (its "queued" comment is up), then was lost
    first.cycle()
    assert len(first.tasks) == 1 and first.ran == []
    assert world.ours(number)[0]["body"].startswith("🤖 Queued")

    second = world.daemon("fresh")
    second.settle(finished(1))
    (task,) = second.tasks
    assert task.state is TaskState.COMPLETED and second.ran
    assert len(world.github.pulls(REPO)) == 1


def test_a_person_copying_our_marker_does_not_make_an_issue_look_handled(world: World) -> None:
    number = world.issue("Fix it")
    forged = messages.pr_opened_comment(
        Task(id="widgets-1-abcdef", repo=REPO, issue_number=number, title="x"),
        "http://x",
        messages.RunFigures(),
    )
    world.github.add_comment(REPO, number, forged, user="drive-by")
    second = world.daemon("fresh")
    second.settle(finished(1))
    assert [t.state for t in second.tasks] == [TaskState.COMPLETED] and second.ran


def test_a_restored_old_state_file_does_not_run_what_was_done_after_it(world: World) -> None:
    number = world.issue("Fix it")
    first = world.daemon("first")
    first.settle(finished(1))
    backup = world.tmp_path / "backup.json"
    shutil.copy(first.state_dir / "state.json", backup)  # last night's backup

    world.relabel(number)  # the maintainer asks again; the first daemon runs it a second time
    first.settle(finished(2))
    assert len(world.ours(number)) == 2
    before = world.snapshot()

    restored = world.tmp_path / "restored"
    restored.mkdir()
    shutil.copy(backup, restored / "state.json")  # the disk died; the backup is put back
    again = world.daemon("restored")
    assert len(again.tasks) == 1  # the record knows the first run only, and the first labelling
    for _ in range(3):
        again.cycle()
    assert len(again.tasks) == 1 and again.ran == []
    assert world.snapshot() == before

    world.relabel(number)  # a labelling after everything: runs
    again.settle(finished(2))
    assert [t.state for t in again.tasks] == [TaskState.COMPLETED, TaskState.COMPLETED] and again.ran


def test_a_trigger_after_the_fresh_start_still_runs(world: World) -> None:
    _, pr, _, _ = first_daemon_handles_three(world)
    second = world.daemon("fresh")
    second.cycle()
    assert second.tasks == []
    world.github.add_comment(REPO, pr, "@claude please also handle the empty case", user="maintainer")
    second.settle(finished(1))
    (task,) = second.tasks
    assert task.kind == FOLLOWUP and task.issue_number == pr and task.state is TaskState.COMPLETED, task.error
    assert second.ran and len(world.github.pulls(REPO)) == 1


def test_a_daemon_that_watched_all_along_queues_a_relabel_without_asking(world: World) -> None:
    number = world.issue("Fix it")
    first = world.daemon("first")
    first.settle(finished(1))
    first.parts.queue.pause()  # only the poll that queues it is looked at
    world.relabel(number)
    marks = len(world.github.requests)
    first.cycle()
    assert len(first.tasks) == 2  # queued
    asked = [r for r in world.github.requests[marks:] if r.method == "GET"]
    comments = f"/issues/{number}/comments"
    looks = [
        r.path
        for r in asked
        if r.path.endswith("/pulls") or (r.path.endswith(comments) and "since" in r.query)
    ]
    assert looks == []
    first.parts.queue.resume()
    first.settle(finished(2))
    assert [t.state for t in first.tasks] == [TaskState.COMPLETED, TaskState.COMPLETED]


# --- the rules ---------------------------------------------------------------------------------------------


def test_which_of_our_comments_say_a_run_ended() -> None:
    task = Task(id="widgets-7-abcdef", repo=REPO, issue_number=7, title="t")
    figures = messages.RunFigures()
    in_progress = [
        messages.queued_comment(task),
        messages.working_comment(task, 1),
        messages.checklist_comment(task, [(True, "setup")]),
        messages.followup_working_comment(task, 1),
        messages.waiting_comment(task, "Claude's limit was hit", "13:00 UTC", known_reset=True),
    ]
    ended = {
        "completed": [
            messages.pr_opened_comment(task, "http://pr", figures),
            messages.no_changes_comment(task, "An answer.", figures),
        ],
        "failed": [messages.failed_comment(task, "it broke", "Claude")],
        "cancelled": [messages.cancelled_comment(task)],
        "ended without a pull request": [
            messages.pr_fallback_comment(task, "claude/issue-7", " a.txt | 1 +", "it was refused", "Claude"),
        ],
    }
    assert [handled.comment_outcome(body) for body in in_progress] == [None] * len(in_progress)
    for outcome, bodies in ended.items():
        assert [handled.comment_outcome(body) for body in bodies] == [outcome] * len(bodies)
    assert handled.comment_outcome("✅ looks done to me") is None  # no marker: not ours


def test_the_state_vouches_only_when_it_saw_every_comment() -> None:
    assert not handled.vouches(None, {"comments": 0})
    assert not handled.vouches({}, {"comments": 0})
    assert handled.vouches({"handled_label_at": "x", "comments": 2}, {"comments": 2})
    assert handled.vouches({"handled_label_at": "x"}, {"comments": 0})
    assert not handled.vouches({"handled_label_at": "x", "comments": 1}, {"comments": 3})


def test_whose_marked_comments_count() -> None:
    body = messages.failed_comment(Task(id="w-1-abcdef", repo=REPO, issue_number=1, title="t"), "x", "Claude")

    def comment(login: str, kind: str = "User", association: str = "NONE") -> dict[str, Any]:
        return {"body": body, "user": {"login": login, "type": kind}, "author_association": association}

    assert handled._ours(comment("solver-bot"), "Solver-Bot")
    assert not handled._ours(comment("mallory", association="COLLABORATOR"), "solver-bot")
    # The daemon's login unknown (an App's token; `GET /user` failed): a bot, or a writer's association.
    assert handled._ours(comment("my-app[bot]", "Bot"), None)
    assert handled._ours(comment("solver-bot", association="OWNER"), None)
    assert not handled._ours(comment("drive-by"), None)
