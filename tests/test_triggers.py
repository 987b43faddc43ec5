"""Follow-up triggers (#11): which comments start a follow-up, at most once, merged, and cheaply."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from claude_issue_solver.demo_world.github import DEFAULT_LOGIN, FakeGitHub
from claude_issue_solver.github.triggers import mentions
from claude_issue_solver.github.watcher import Watcher
from claude_issue_solver.run.messages import marker
from claude_issue_solver.store.queue import FOLLOWUP, Task, TaskQueue, TaskState

REPO = "acme/widgets"


@pytest.fixture
def worked(github: FakeGitHub, queue: TaskQueue) -> tuple[int, int]:
    """Issue #1 had its task, which opened PR #2: what a follow-up continues."""
    issue = github.create_issue(REPO, "Crash on empty input", user="maintainer")  # its label: handled
    pr = github.create_issue(REPO, "Fix #1", is_pull_request=True, user=DEFAULT_LOGIN)
    task = queue.submit(REPO, issue["number"], issue["title"])
    assert task is not None
    queue.update(task.id, meta={"pr_number": pr["number"]}, pr_url=pr["html_url"])
    queue.finish(task.id, TaskState.COMPLETED)
    return issue["number"], pr["number"]


def followups(queue: TaskQueue) -> list[Task]:
    return [t for t in queue.list() if t.kind == FOLLOWUP]


def started(watcher_for: Callable[..., Watcher]) -> Watcher:
    watcher = watcher_for(GITHUB_REPOS=REPO)
    watcher()  # the first look: what is there already is history
    return watcher


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("@claude please rename it", True),
        ("@Claude, the test", True),
        ("thanks (@CLAUDE)", True),
        ("cc @claudette", False),
        ("mail me@claude.dev", False),
        ("claude please", False),
        ("@claude-bot do it", False),
    ],
)
def test_the_phrase_is_a_word(body: str, expected: bool) -> None:
    assert mentions(body, "@claude") is expected


def test_a_maintainer_on_the_pr_queues_a_follow_up_with_eyes(
    github: FakeGitHub, watcher_for: Callable[..., Watcher], queue: TaskQueue, worked: tuple[int, int]
) -> None:
    issue, pr = worked
    watcher = started(watcher_for)
    comment = github.add_comment(REPO, pr, "@claude please also handle None", user="maintainer")
    watcher()
    [task] = followups(queue)
    assert (task.issue_number, task.state, task.title) == (issue, TaskState.PENDING, "Crash on empty input")
    [trigger] = task.meta["triggers"]
    assert trigger["where"] == "pr" and trigger["pr_number"] == pr and trigger["author"] == "maintainer"
    assert trigger["body"] == "@claude please also handle None"
    assert [r["content"] for r in github.reactions(REPO, "issues", comment["id"])] == ["eyes"]
    watcher()
    assert len(followups(queue)) == 1 and len(followups(queue)[0].meta["triggers"]) == 1


def test_on_the_issue_and_on_a_review_line(
    github: FakeGitHub, watcher_for: Callable[..., Watcher], queue: TaskQueue, worked: tuple[int, int]
) -> None:
    issue, pr = worked
    watcher = started(watcher_for)
    github.add_comment(REPO, issue, "@claude also the docs", user="maintainer")
    line = github.add_review_comment(
        REPO,
        pr,
        "@claude use a guard clause here",
        path="calc.py",
        line=7,
        user="maintainer",
        diff_hunk="@@ -5,3 +5,4 @@\n def f(x):\n+    return x",
    )
    watcher()
    [task] = followups(queue)
    by_where = {t["where"]: t for t in task.meta["triggers"]}
    assert set(by_where) == {"issue", "review_comment"}  # two triggers before it started: one follow-up
    review = by_where["review_comment"]
    assert (review["path"], review["line"], review["thread"]) == ("calc.py", 7, line["id"])
    assert review["diff_hunk"].startswith("@@ -5,3 +5,4 @@")
    assert [r["content"] for r in github.reactions(REPO, "pulls", line["id"])] == ["eyes"]


def test_what_never_triggers(
    github: FakeGitHub, watcher_for: Callable[..., Watcher], queue: TaskQueue, worked: tuple[int, int]
) -> None:
    issue, pr = worked
    old = github.add_comment(REPO, pr, "@claude written before we watched", user="maintainer")
    watcher = started(watcher_for)
    github.add_comment(REPO, pr, "@claude from a drive-by", user="drive-by", author_association="NONE")
    github.add_comment(REPO, pr, "@claude talking to myself", user=DEFAULT_LOGIN)
    github.add_comment(REPO, issue, f"progress @claude\n\n{marker('t-1')}", user="someone-else")
    github.add_comment(REPO, pr, "no phrase here", user="maintainer")
    plain = github.add_comment(REPO, pr, "looks good", user="maintainer")
    other = github.create_issue(REPO, "Never labelled", user="maintainer")
    github.add_comment(REPO, other["number"], "@claude on an issue we never worked on", user="maintainer")
    watcher()
    # An edit never triggers: neither of a comment already read nor of one older than the watch.
    github.edit_comment(REPO, plain["id"], "@claude looks good, now rename it")
    github.edit_comment(REPO, old["id"], "@claude edited later")
    watcher()
    assert followups(queue) == []
    assert queue.store.read()["followups"].get("pending", {}) == {}


def test_an_edited_trigger_does_not_trigger_again(
    github: FakeGitHub, watcher_for: Callable[..., Watcher], queue: TaskQueue, worked: tuple[int, int]
) -> None:
    _, pr = worked
    watcher = started(watcher_for)
    comment = github.add_comment(REPO, pr, "@claude rename it", user="maintainer")
    watcher()
    [task] = followups(queue)
    queue.claim()
    queue.finish(task.id, TaskState.COMPLETED)
    github.edit_comment(REPO, comment["id"], "@claude rename it, please")
    watcher()
    assert len(followups(queue)) == 1


def test_trusted_users_need_no_permission(
    github: FakeGitHub, watcher_for: Callable[..., Watcher], queue: TaskQueue, worked: tuple[int, int]
) -> None:
    _, pr = worked
    watcher = watcher_for(GITHUB_REPOS=REPO, TRUSTED_USERS="drive-by")
    watcher()
    github.add_comment(REPO, pr, "@claude from a friend", user="drive-by", author_association="NONE")
    watcher()
    assert [t["author"] for t in followups(queue)[0].meta["triggers"]] == ["drive-by"]


def test_a_custom_phrase(
    github: FakeGitHub, watcher_for: Callable[..., Watcher], queue: TaskQueue, worked: tuple[int, int]
) -> None:
    _, pr = worked
    watcher = watcher_for(GITHUB_REPOS=REPO, TRIGGER_PHRASE="@robot")
    watcher()
    github.add_comment(REPO, pr, "@claude not me", user="maintainer")
    github.add_comment(REPO, pr, "@Robot you", user="maintainer")
    watcher()
    assert [t["body"] for t in followups(queue)[0].meta["triggers"]] == ["@Robot you"]


def test_a_trigger_while_a_task_runs_waits_then_continues(
    github: FakeGitHub, watcher_for: Callable[..., Watcher], queue: TaskQueue, worked: tuple[int, int]
) -> None:
    issue, pr = worked
    watcher = started(watcher_for)
    github.add_comment(REPO, pr, "@claude first", user="maintainer")
    watcher()
    running = queue.claim()
    assert running is not None and running.kind == FOLLOWUP
    github.add_comment(REPO, pr, "@claude second", user="maintainer")
    watcher()
    assert [t.id for t in followups(queue)] == [running.id]  # it waits: one live task per issue
    assert len(queue.store.read()["followups"]["pending"][f"{REPO}#{issue}"]) == 1
    queue.finish(running.id, TaskState.COMPLETED)
    watcher()
    later = [t for t in followups(queue) if t.id != running.id]
    assert [t["body"] for t in later[0].meta["triggers"]] == ["@claude second"]
    assert queue.store.read()["followups"]["pending"] == {}


def test_each_comment_once_across_a_restart_and_a_crash(
    github: FakeGitHub, watcher_for: Callable[..., Watcher], queue: TaskQueue, worked: tuple[int, int]
) -> None:
    issue, pr = worked
    started(watcher_for)
    github.add_comment(REPO, pr, "@claude once", user="maintainer")
    # A daemon that dies after recording the trigger but before queueing it: the trigger waits.
    watcher = watcher_for(GITHUB_REPOS=REPO)
    for kind in ("issues", "pulls"):
        watcher.triggers._read_listing(REPO, kind)
    assert len(queue.store.read()["followups"]["pending"][f"{REPO}#{issue}"]) == 1
    restarted = watcher_for(GITHUB_REPOS=REPO)  # the next daemon reads the listings again
    restarted()
    restarted()
    [task] = followups(queue)
    assert [t["body"] for t in task.meta["triggers"]] == ["@claude once"]


def test_idle_with_comments_watched_costs_nothing(
    github: FakeGitHub, watcher_for: Callable[..., Watcher], queue: TaskQueue, worked: tuple[int, int]
) -> None:
    _, pr = worked
    github.add_comment(REPO, pr, "an old remark", user="maintainer")
    github.add_review_comment(REPO, pr, "a line remark", path="a.py", user="maintainer")
    watcher = started(watcher_for)
    github.reset_counts()
    for _ in range(60):
        watcher()
    assert [r for r in github.requests if r.counted] == []
    # What changed (issues and pull requests alike, so reviews and comments too): one request, with a
    # pull request of ours open and waiting for reviews. A comment moves its issue or pull request, so
    # the comment listings are read when that listing moved (and every TRIGGER_RECHECK).
    assert {r.status for r in github.requests} == {304} and len(github.requests) == 60
    assert {r.path.rsplit("/", 2)[-2] + "/" + r.path.rsplit("/", 1)[-1] for r in github.requests} == {
        "widgets/issues",
    }
    github.add_review(REPO, pr, "@claude and the changelog", user="maintainer")
    watcher()  # the pull request moved: its reviews are read, and the review is a follow-up
    assert [t["body"] for t in followups(queue)[0].meta["triggers"]] == ["@claude and the changelog"]
    watcher()
    github.reset_counts()
    for _ in range(60):
        watcher()
    assert [r for r in github.requests if r.counted] == []
    assert {r.status for r in github.requests} == {304} and len(github.requests) == 60


def test_a_review_body_triggers_and_is_answered_on_the_pr(
    github: FakeGitHub, watcher_for: Callable[..., Watcher], queue: TaskQueue, worked: tuple[int, int]
) -> None:
    issue, pr = worked
    watcher = started(watcher_for)
    github.add_review(REPO, pr, "Nice. @claude please split the function", user="maintainer")
    github.add_review(REPO, pr, "@claude me too", user="drive-by", author_association="NONE")
    github.add_review(REPO, pr, "LGTM", user="maintainer", state="APPROVED")
    watcher()
    [task] = followups(queue)
    [trigger] = task.meta["triggers"]
    assert (trigger["where"], trigger["pr_number"], task.issue_number) == ("review", pr, issue)
    assert trigger["body"] == "Nice. @claude please split the function"
    watcher()
    assert len(followups(queue)[0].meta["triggers"]) == 1  # each review once


def test_a_pull_request_whose_task_left_the_history_still_finds_its_issue(
    github: FakeGitHub, watcher_for: Callable[..., Watcher], queue: TaskQueue, worked: tuple[int, int]
) -> None:
    issue, pr = worked
    watcher = started(watcher_for)
    # The history keeps only the newest finished tasks: one more finished task pushes #1's out.
    queue.history_limit = 0
    other = queue.submit(REPO, 99, "Elsewhere")
    assert other is not None
    queue.finish(other.id, TaskState.CANCELLED)
    assert queue.list() == []
    github.add_comment(REPO, pr, "@claude one more thing", user="maintainer")
    watcher()
    [task] = followups(queue)
    assert task.issue_number == issue and task.meta["triggers"][0]["where"] == "pr"
