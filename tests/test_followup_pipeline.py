"""The follow-up run (#11) through the pipeline on the in-memory backend and the loopback GitHub:
the same branch and PR, the previous session resumed (or a fresh one when it cannot be), the answer
where the request was made, the merged and closed cases, and the kept sessions of a closed issue."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from claude_issue_solver.config import Config
from claude_issue_solver.conventions import format_usd
from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.github.client import GitHubClient
from claude_issue_solver.github.watcher import Watcher
from claude_issue_solver.run.followup import FRESH_AGENT, session_key
from claude_issue_solver.store.outcome import TaskControl
from claude_issue_solver.store.queue import FOLLOWUP, Task, TaskQueue, TaskState
from claude_issue_solver.store.state import StateStore
from tests.fakes.memory_backend import MemoryBackend, Place, Process, edits
from tests.github_fixtures import Clock
from tests.test_pipeline import REPO, SUMMARY, World, agent_edits


@pytest.fixture
def world(github: FakeGitHub, gh_config: Callable[..., Config], state_dir: object) -> World:
    """The pipeline tests' world: the loopback GitHub, a queue on an injected clock, the memory place."""
    config = gh_config(GITHUB_REPOS=REPO, TASK_TIMEOUT="600", MAX_ATTEMPTS="2")
    clock = Clock(start=1_900_000_000.0)
    queue = TaskQueue(StateStore(config.state_file), max_concurrent=3, clock=clock)
    backend = MemoryBackend()
    backend.on_push = lambda branch, files, message: github.commit_files(REPO, branch, files, message=message)
    return World(github, config, queue, backend, clock, [])


def first_run(world: World) -> Task:
    """Issue #1 → its task → PR #2 on claude/issue-1."""
    agent_edits(world)
    task = world.task()
    done = world.record(task, world.pipeline().run(task, TaskControl()))
    assert done.state is TaskState.COMPLETED and done.meta["pr_number"] == 2
    return done


def trigger(where: str, body: str, comment: dict[str, Any], pr: int = 2, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"{'pulls' if where == 'review_comment' else 'issues'}:{comment['id']}",
        "comment_id": comment["id"],
        "where": where,
        "pr_number": None if where == "issue" else pr,
        "author": "maintainer",
        "url": comment["html_url"],
        "body": body,
        "created_at": comment["created_at"],
        **extra,
    }


def queue_followup(world: World, first: Task, *triggers: dict[str, Any]) -> Task:
    """What the trigger watcher records, then hands to the queue; claimed as the daemon would."""
    with world.queue.store.transaction() as data:
        data.setdefault("followups", {}).setdefault("pending", {})[f"{REPO}#{first.issue_number}"] = list(
            triggers
        )
    task, added = world.queue.take_triggers(REPO, first.issue_number, first.title)
    assert task is not None and task.kind == FOLLOWUP and len(added) == len(triggers)
    claimed = world.queue.claim()
    assert claimed is not None and claimed.id == task.id
    return claimed


def second_edit(world: World, name: str = "agent") -> None:
    world.backend.agents[name] = edits({"fix.txt": "fixed\n", "more.txt": "more\n"})


def test_a_pr_comment_continues_the_same_branch_pr_and_session(world: World) -> None:
    first = first_run(world)
    body = "@claude please also add more.txt — «exactly» $title `as written`"
    comment = world.github.add_comment(REPO, 2, body, user="maintainer")
    task = queue_followup(world, first, trigger("pr", body, comment))
    second_edit(world)
    done = world.record(task, world.pipeline().run(task, TaskControl()))
    assert done.state is TaskState.COMPLETED, done.error
    process = world.backend.calls  # the place saw one run per task
    assert process
    pulls = world.github.pulls(REPO)
    assert len(pulls) == 1 and pulls[0]["number"] == 2  # the same PR, never a second one
    assert world.github.repo(REPO).read_file("claude/issue-1", "more.txt") == "more\n"
    # The commit says what was asked (the PR's title is the first run's).
    subject = world.github.repo(REPO).git("log", "-1", "--format=%s", "claude/issue-1").strip()
    assert subject.startswith("Follow-up for @maintainer: please also add more.txt — «exactly» $title")
    assert subject.endswith("…") and len(subject) <= 72
    # The PR keeps its title and description, and gains the run history.
    assert pulls[0]["title"] == "Add the widget fix"
    assert "The widget now works." in pulls[0]["body"] and "<summary>Runs</summary>" in pulls[0]["body"]
    assert "| 1 | label |" in pulls[0]["body"] and "| 2 | @maintainer on [the PR]" in pulls[0]["body"]
    # The answer is on the PR, where it was asked; the issue's comment is the first run's only.
    answers = [c["body"] for c in world.github.comments(REPO, 2) if task.id in c["body"]]
    assert len(answers) == 1 and answers[0].startswith("✅") and "claude/issue-1" in answers[0]
    assert all(task.id not in c["body"] for c in world.github.comments(REPO, 1))
    # The answer shows this run's cost and the issue's total over both runs.
    total = (world.queue.get(first.id).cost_usd or 0) + (done.cost_usd or 0)
    assert done.cost_usd and f"{format_usd(total)} for the issue so far" in answers[0]
    text = world.log_text(task)
    assert "agent finished" in text


def test_the_follow_up_resumes_the_previous_session_with_the_request_byte_for_byte(world: World) -> None:
    first = first_run(world)
    body = "@claude rename `x` to $y\r\n  — keep  spacing  "
    comment = world.github.add_comment(REPO, 2, body, user="maintainer")
    task = queue_followup(world, first, trigger("pr", body, comment))
    seen: dict[str, Any] = {}

    def agent(place: Place, process: Process) -> None:
        seen["argv"], seen["stdin"], seen["keep"] = process.spec.argv, process.spec.stdin, process.spec.keep
        edits({"more.txt": "more\n"})(place, process)

    world.backend.agents["agent"] = agent
    world.record(task, world.pipeline().run(task, TaskControl()))
    argv = list(seen["argv"])
    assert argv[argv.index("--resume") + 1] == first.session_id == "session-1"
    assert body.encode() in seen["stdin"]  # byte for byte, never through a shell
    assert (
        b"asked in a comment on the pull request" in seen["stdin"]
        and comment["html_url"].encode() in seen["stdin"]
    )
    assert b"could not be continued" not in seen["stdin"]  # a resumed session remembers the issue
    assert seen["keep"].key == session_key(REPO, 1) and seen["keep"].env == "CLAUDE_CONFIG_DIR"
    assert session_key(REPO, 1) in world.backend.kept


def test_a_session_that_cannot_be_resumed_starts_fresh_and_says_so(world: World) -> None:
    first = first_run(world)
    comment = world.github.add_comment(REPO, 2, "@claude more", user="maintainer")
    task = queue_followup(world, first, trigger("pr", "@claude more", comment))
    fresh: dict[str, Any] = {}

    def gone(place: Place, process: Process) -> None:
        process.exit_code, process.stderr = 1, "No conversation found with session ID: session-1\n"

    def start_over(place: Place, process: Process) -> None:
        fresh["argv"], fresh["stdin"] = process.spec.argv, process.spec.stdin
        edits({"more.txt": "more\n"})(place, process)

    world.backend.agents["agent"] = gone
    world.backend.agents[FRESH_AGENT] = start_over
    done = world.record(task, world.pipeline().run(task, TaskControl()))
    assert done.state is TaskState.COMPLETED, done.error
    assert "--resume" not in fresh["argv"]
    assert b"could not be continued" in fresh["stdin"] and b"It is broken." in fresh["stdin"]
    assert b"The widget now works." in fresh["stdin"]  # the previous summary
    assert "session session-1 could not be resumed; starting a fresh session" in world.log_text(task)
    assert world.github.repo(REPO).read_file("claude/issue-1", "more.txt") == "more\n"


def test_a_review_line_is_answered_in_its_thread(world: World) -> None:
    first = first_run(world)
    line = world.github.add_review_comment(
        REPO,
        2,
        "@claude add a guard here",
        path="fix.txt",
        line=1,
        user="maintainer",
        diff_hunk="@@ -0,0 +1 @@\n+fixed",
    )
    seen: dict[str, bytes] = {}

    def agent(place: Place, process: Process) -> None:
        seen["stdin"] = process.spec.stdin
        edits({"fix.txt": "fixed, guarded\n"})(place, process)

    world.backend.agents["agent"] = agent
    task = queue_followup(
        world,
        first,
        trigger(
            "review_comment",
            "@claude add a guard here",
            line,
            path="fix.txt",
            line=1,
            diff_hunk="@@ -0,0 +1 @@\n+fixed",
            thread=line["id"],
        ),
    )
    world.record(task, world.pipeline().run(task, TaskControl()))
    assert b"On fix.txt, line 1; the diff hunk it was written on:\n@@ -0,0 +1 @@\n+fixed" in seen["stdin"]
    replies = [c for c in world.github.review_comments(REPO, 2) if c.get("in_reply_to_id") == line["id"]]
    assert len(replies) == 1 and replies[0]["body"].startswith("✅") and task.id in replies[0]["body"]
    assert all(task.id not in c["body"] for c in world.github.comments(REPO, 2))


def test_no_change_needed_says_so(world: World) -> None:
    first = first_run(world)
    comment = world.github.add_comment(REPO, 1, "@claude why this way?", user="maintainer")
    task = queue_followup(world, first, trigger("issue", "@claude why this way?", comment))
    world.backend.agents["agent"] = edits({}, None)
    done = world.record(task, world.pipeline().run(task, TaskControl()))
    assert done.state is TaskState.COMPLETED
    [answer] = [c["body"] for c in world.github.comments(REPO, 1) if task.id in c["body"]]
    assert answer.startswith("💬") and "made no change to the code for @maintainer" in answer


def test_a_closed_pr_gets_the_commits_and_no_second_pr(world: World) -> None:
    first = first_run(world)
    world.github.edit_issue(REPO, 2, state="closed")
    comment = world.github.add_comment(REPO, 1, "@claude try again", user="maintainer")
    task = queue_followup(world, first, trigger("issue", "@claude try again", comment))
    second_edit(world)
    done = world.record(task, world.pipeline().run(task, TaskControl()))
    assert done.state is TaskState.COMPLETED, done.error
    pulls = world.github.pulls(REPO)
    assert len(pulls) == 1 and pulls[0]["state"] == "closed"
    assert world.github.repo(REPO).read_file("claude/issue-1", "more.txt") == "more\n"
    [answer] = [c["body"] for c in world.github.comments(REPO, 1) if task.id in c["body"]]
    assert "is closed, so none was opened or reopened" in answer


def test_after_a_merge_a_follow_up_opens_a_new_pr_from_a_new_branch(world: World) -> None:
    first = first_run(world)
    world.github.merge_pull(REPO, 2)
    sha = world.github.repo(REPO).branch_sha("main")
    assert sha is not None
    world.backend.remote["main"] = (sha, {"README.md": b"# r\n", "fix.txt": b"fixed\n"})
    comment = world.github.add_comment(REPO, 1, "@claude one more thing", user="maintainer")
    task = queue_followup(world, first, trigger("issue", "@claude one more thing", comment))
    world.backend.agents["agent"] = edits({"more.txt": "more\n"}, "One more thing\n\nAnd more.\n")
    done = world.record(task, world.pipeline().run(task, TaskControl()))
    assert done.state is TaskState.COMPLETED, done.error
    pulls = world.github.pulls(REPO)
    assert [(p["number"], p["head"]["ref"], p["state"]) for p in pulls] == [
        (2, "claude/issue-1", "closed"),
        (3, "claude/issue-1-2", "open"),
    ]
    assert done.meta["pr_number"] == 3 and done.branch == "claude/issue-1-2"


def test_a_closed_issue_cancels_the_follow_up_and_forgets_its_sessions(world: World) -> None:
    first = first_run(world)
    assert session_key(REPO, 1) in world.backend.kept
    comment = world.github.add_comment(REPO, 1, "@claude more", user="maintainer")
    task = queue_followup(world, first, trigger("issue", "@claude more", comment))
    world.github.edit_issue(REPO, 1, state="closed")
    outcome = world.pipeline().run(task, TaskControl())
    assert outcome is not None and outcome.state is TaskState.CANCELLED
    assert session_key(REPO, 1) not in world.backend.kept
    assert SUMMARY  # the first run's summary is what the PR kept


def test_a_review_body_is_answered_on_the_pr(world: World) -> None:
    first = first_run(world)
    review = world.github.add_review(REPO, 2, "@claude split it", user="maintainer")
    seen: dict[str, bytes] = {}

    def agent(place: Place, process: Process) -> None:
        seen["stdin"] = process.spec.stdin
        edits({"more.txt": "more\n"})(place, process)

    world.backend.agents["agent"] = agent
    request = trigger("review", "@claude split it", {**review, "created_at": review["submitted_at"]})
    task = queue_followup(world, first, {**request, "id": f"reviews:{review['id']}"})
    world.record(task, world.pipeline().run(task, TaskControl()))
    assert b"asked in a review of the pull request" in seen["stdin"]
    answers = [c["body"] for c in world.github.comments(REPO, 2) if task.id in c["body"]]
    assert len(answers) == 1 and answers[0].startswith("✅")


def test_at_start_up_the_sessions_of_closed_issues_are_removed(world: World) -> None:
    first_run(world)
    other = world.github.create_issue(REPO, "Still open", user="maintainer")
    world.backend.kept[session_key(REPO, other["number"])] = {}
    world.queue.submit(REPO, other["number"], "Still open")
    world.github.edit_issue(REPO, 1, state="closed")
    world.pipeline().reconcile(world.queue.list([TaskState.PENDING, TaskState.RUNNING]))
    assert set(world.backend.kept) == {session_key(REPO, other["number"])}


def test_a_branch_the_remote_refuses_is_never_forced_and_the_answer_says_why(world: World) -> None:
    # A refusal that is not "the branch moved" (that one is tests/test_branch_moved.py) stays a failure.
    first = first_run(world)
    comment = world.github.add_comment(REPO, 1, "@claude more", user="maintainer")
    task = queue_followup(world, first, trigger("issue", "@claude more", comment))
    second_edit(world)
    world.backend.reject_pushes = "[remote rejected] (protected branch hook declined)"
    done = world.record(task, world.pipeline().run(task, TaskControl()))
    assert done.state is TaskState.FAILED and "protected branch hook declined" in (done.error or "")
    assert "rebase_onto_remote" not in world.backend.calls
    [answer] = [c["body"] for c in world.github.comments(REPO, 1) if task.id in c["body"]]
    assert answer.startswith("❌") and "protected branch hook declined" in answer


def test_closing_the_issue_removes_its_sessions_at_the_next_poll(world: World) -> None:
    """Not only at the next start-up: the watcher's listing shows the closing, and the sessions go."""
    first_run(world)
    pipeline = world.pipeline()
    watcher = Watcher(
        world.config, GitHubClient(world.config), world.queue, on_closed=pipeline.forget_sessions
    )
    watcher()  # the first look: issue #1's label (still on it) was answered already, GitHub shows it
    assert world.queue.live_for(REPO, 1) is None
    other = world.github.create_issue(REPO, "Busy", user="maintainer")
    world.backend.kept[session_key(REPO, 1)] = {}
    world.backend.kept[session_key(REPO, other["number"])] = {}
    busy = world.queue.submit(REPO, other["number"], "Busy")
    assert busy is not None
    watcher()
    assert set(world.backend.kept) == {session_key(REPO, 1), session_key(REPO, other["number"])}
    world.github.edit_issue(REPO, 1, state="closed")
    world.github.edit_issue(REPO, other["number"], state="closed")  # its task still runs: its run decides
    world.github.reset_counts()
    watcher()
    assert set(world.backend.kept) == {session_key(REPO, other["number"])}
    # One listing showed both closings; nothing was asked per issue.
    assert [r.path for r in world.github.requests if r.path.endswith(f"/issues/{other['number']}")] == []
