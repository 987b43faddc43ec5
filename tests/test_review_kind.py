"""Pull-request reviews (#22) on the in-memory backend against the loopback GitHub's Reviews API.

A person's pull request from a fork (its commits only under ``refs/pull/N/head``) is reviewed: ONE
review, state COMMENTED, an inline comment on the line the model named, a finding on a line outside the
diff in the body, nothing pushed, no branch. A re-review after a new commit posts only the new finding;
a second request with no new commit posts nothing. The kind is crashed in every phase it has and
resumed to the same end, as every kind in ``tests/test_task_kinds.py``. The triggers: a writer's
``@claude review`` (👀), the review label, an outsider's request, ``TRIGGER_LABEL`` on a pull request.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.github import review_triggers
from claude_issue_solver.github.watcher import Watcher
from claude_issue_solver.run import review
from claude_issue_solver.store.outcome import TaskControl
from claude_issue_solver.store.queue import Task, TaskQueue, TaskState
from tests.fakes.memory_backend import Crash, Place, Process
from tests.test_pipeline import REPO, World
from tests.test_pipeline import world as world  # the fixture
from tests.test_task_kinds import crash_in, finish

CALC = "def add(a, b):\n    return a - b\n\n\ndef mul(a, b):\n    return a * b\n"
CALC_MORE = CALC + "\n\ndef div(a, b):\n    return a / b\n"
BUG = {"path": "calc.py", "line": 2, "severity": "major", "title": "add subtracts", "body": "Use +."}
OUTSIDE = {"path": "README.md", "line": 1, "severity": "minor", "title": "Say what calc does", "body": "Doc."}
NEW = {"path": "calc.py", "line": 10, "severity": "critical", "title": "division by zero", "body": "Guard b."}


def structured(findings: list[dict[str, Any]], summary: str = "Adds a calculator.") -> str:
    return json.dumps(
        {
            "type": "result",
            "subtype": "success",
            "is_error": False,
            "num_turns": 3,
            "result": "",
            "session_id": "s-1",
            "total_cost_usd": 0.02,
            "structured_output": {"summary": summary, "findings": findings},
        }
    )


def reviewer(world: World, findings: list[dict[str, Any]], runs: list[str]) -> None:
    def run(place: Place, process: Process) -> None:
        runs.append(process.spec.name)
        process.exit_code, process.stdout = 0, structured(findings) + "\n"

    world.backend.agents["agent"] = run


def fork_pull(world: World) -> int:
    pr = world.github.open_fork_pull(
        REPO, {"calc.py": CALC}, user="contributor", title="Add a calculator", body="Please review."
    )
    number = int(pr["number"])
    sync_head(world, number)
    return number


def sync_head(world: World, number: int) -> None:
    """The memory place's remote: the pull request's head as the host's mirror would fetch it."""
    files = {
        "README.md": b"# widgets\n",
        "calc.py": world.github.repo(REPO)
        .read_file(world.github.pull_head(REPO, number), "calc.py")
        .encode(),
    }
    world.backend.remote[f"pull/{number}/head"] = (world.github.pull_head(REPO, number), files)


def review_task(world: World, number: int, body: str = "@claude review") -> Task:
    comment = world.github.add_comment(REPO, number, body, user="maintainer")
    trigger = {
        "id": f"issues:{comment['id']}",
        "where": "review_request",
        "author": "maintainer",
        "body": body,
        "url": comment["html_url"],
        "comment_id": comment["id"],
    }
    submitted = world.queue.submit(
        REPO, number, "Add a calculator", kind="review", meta={"triggers": [trigger]}
    )
    assert submitted is not None
    claimed = world.queue.claim()
    assert claimed is not None and claimed.id == submitted.id
    return claimed


def ours(world: World, number: int) -> list[dict[str, Any]]:
    return [r for r in world.github.reviews(REPO, number) if "claude-issue-solver:task=" in r["body"]]


def assert_reviewed(world: World, task: Task, number: int) -> dict[str, Any]:
    done = world.queue.get(task.id)
    assert done.state is TaskState.COMPLETED, done.error
    [posted] = ours(world, number)  # exactly one review
    assert posted["state"] == "COMMENTED" and posted["commit_id"] == world.github.pull_head(REPO, number)
    [inline] = [
        c for c in world.github.review_comments(REPO, number) if c["pull_request_review_id"] == posted["id"]
    ]
    assert (inline["path"], inline["line"], inline["side"]) == ("calc.py", 2, "RIGHT")
    assert "add subtracts" in inline["body"] and "claude-issue-solver:finding=" in inline["body"]
    assert "Say what calc does" in posted["body"] and "`README.md:1`" in posted["body"]  # not in the diff
    assert "commit_and_push" not in world.backend.calls  # nothing pushed
    assert set(world.github.repo(REPO).branches()) == {"main"}  # no branch made
    [comment] = world.comments(task)  # the task's one comment links the review
    assert posted["html_url"] in comment
    assert task.id not in world.backend.places
    return posted


def test_a_review_of_a_fork_pull_request(world: World) -> None:
    number = fork_pull(world)
    world.github.commit_files(
        REPO, "main", {".github/claude-issue-solver.yml": "test: sh t.sh\n"}, message="t"
    )
    runs: list[str] = []
    reviewer(world, [BUG, OUTSIDE], runs)
    task = review_task(world, number)
    finish(world, task, world.pipeline().run(task, TaskControl()))
    assert_reviewed(world, task, number)
    assert runs == ["agent"]  # no setup, baseline or test rounds around a review
    log = world.log_text(task)
    assert "review posted: 1 inline comment(s), 1 in the body, 0 already raised" in log, log


@pytest.mark.parametrize("phase", ["preparing", "agent", "publishing", "published"])
def test_a_crash_in_every_phase_resumes_to_one_review(
    world: World, phase: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    number = fork_pull(world)
    runs: list[str] = []
    reviewer(world, [BUG, OUTSIDE], runs)
    task = review_task(world, number)
    if phase == "publishing":  # publishing a review makes no backend call: the daemon dies at the POST
        from claude_issue_solver.run.kinds import review as review_kind

        real = review_kind.reviews.post_review

        def dies(*args: Any, **kwargs: Any) -> Any:
            monkeypatch.setattr(review_kind.reviews, "post_review", real)
            raise Crash("killed while posting the review")

        monkeypatch.setattr(review_kind.reviews, "post_review", dies)
    else:
        crash_in(world, task, phase)
    with pytest.raises(Crash):
        world.pipeline().run(task, TaskControl())
    assert world.queue.get(task.id).meta["phase"] == phase
    finish(world, task, world.pipeline().resume(world.queue.get(task.id), TaskControl()))
    assert_reviewed(world, task, number)
    assert runs == ["agent"]  # never a second agent


def test_a_crash_after_posting_before_recording_posts_no_second_review(world: World) -> None:
    number = fork_pull(world)
    reviewer(world, [BUG], [])
    task = review_task(world, number)
    # The review is posted, then the daemon dies before "published" is recorded.
    update = world.queue.update

    def crashing_update(task_id: str, **changes: Any) -> Task:
        if ours(world, number) and (changes.get("meta") or {}).get("phase") == "published":
            world.queue.update = update  # type: ignore[method-assign]
            raise Crash("killed after posting")
        return update(task_id, **changes)

    world.queue.update = crashing_update  # type: ignore[method-assign]
    with pytest.raises(Crash):
        world.pipeline().run(task, TaskControl())
    assert world.queue.get(task.id).meta["phase"] == "publishing"
    finish(world, task, world.pipeline().resume(world.queue.get(task.id), TaskControl()))
    assert len(ours(world, number)) == 1
    assert "posted before a restart" in world.log_text(task)


def test_a_re_review_posts_only_what_is_new_and_a_repeat_request_posts_nothing(world: World) -> None:
    number = fork_pull(world)
    reviewer(world, [BUG, OUTSIDE], [])
    first = review_task(world, number)
    finish(world, first, world.pipeline().run(first, TaskControl()))
    first_review = assert_reviewed(world, first, number)

    world.github.push_to_fork_pull(REPO, number, {"calc.py": CALC_MORE})
    sync_head(world, number)
    runs: list[str] = []
    reviewer(world, [BUG, OUTSIDE, NEW], runs)  # the model says the old findings again
    second = review_task(world, number, "@claude review again please")
    finish(world, second, world.pipeline().run(second, TaskControl()))
    assert world.queue.get(second.id).state is TaskState.COMPLETED
    reviews = ours(world, number)
    assert len(reviews) == 2 and reviews[0]["id"] == first_review["id"]
    comments = world.github.review_comments(REPO, number)
    new = [c for c in comments if c["pull_request_review_id"] == reviews[1]["id"]]
    assert [(c["path"], c["line"]) for c in new] == [("calc.py", 10)]  # only the new finding
    assert sum(1 for c in comments if "add subtracts" in c["body"]) == 1  # never twice at that place
    assert "Say what calc does" not in reviews[1]["body"]
    assert "already raised in an earlier review" in reviews[1]["body"]
    assert "commits since" in reviews[1]["body"]

    third = review_task(world, number, "@claude review")  # no new commit
    finish(world, third, world.pipeline().run(third, TaskControl()))
    assert world.queue.get(third.id).state is TaskState.COMPLETED
    assert len(ours(world, number)) == 2  # no duplicate review
    assert runs == ["agent"]  # and no agent ran for it
    assert any("Nothing new to review" in c for c in world.comments(third))


def test_a_finding_github_refuses_goes_into_the_body(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Findings are placed against the diff; if GitHub still refuses one (its 422 for a line outside
    the diff: the diff moved between our look and the POST), the review is posted with the comments
    in its body, never not at all."""
    from claude_issue_solver.run.kinds import review as review_kind

    number = fork_pull(world)
    reviewer(world, [BUG, OUTSIDE], [])
    task = review_task(world, number)

    def stale(findings: list[review.Finding], diff: str, posted: set[str]) -> review.Placed:
        return review.Placed(inline=findings, in_body=[], repeated=[])  # README.md:1 is not in the diff

    monkeypatch.setattr(review_kind.review, "place", stale)
    finish(world, task, world.pipeline().run(task, TaskControl()))
    [posted] = ours(world, number)
    assert "GitHub refused these" in posted["body"] and "add subtracts" in posted["body"]
    assert world.github.review_comments(REPO, number) == []
    refused = world.github.requests_to(f"/api/v3/repos/{REPO}/pulls/{number}/reviews", "POST")
    assert [r.status for r in refused] == [422, 200]
    assert world.queue.get(task.id).state is TaskState.COMPLETED


def test_the_schema_check_and_the_placing() -> None:
    summary, found = review.check({"summary": "ok", "findings": [BUG, {**OUTSIDE, "start_line": 5}]})
    assert summary == "ok" and found[1].start_line is None  # a start after the line is dropped
    for bad in (
        {"findings": []},
        {"summary": "x", "findings": [{**BUG, "line": 0}]},
        {"summary": "x", "findings": [{**BUG, "severity": "blocker"}]},
        {"summary": "x", "findings": [{**BUG, "extra": 1}]},
    ):
        with pytest.raises(review.ReviewError):
            review.check(bad)
    diff = "diff --git a/calc.py b/calc.py\n--- a/calc.py\n+++ b/calc.py\n@@ -1,2 +1,3 @@\n a\n-b\n+c\n+d\n"
    assert review.diff_lines(diff) == {"calc.py": {"RIGHT": {1, 2, 3}, "LEFT": {1, 2}}}
    many = [review.Finding("calc.py", 2, "nit", f"n{i}", "b") for i in range(3)]
    crit = review.Finding("calc.py", 3, "critical", "c", "b")
    placed = review.place([*many, crit], diff, set(), max_inline=2)
    assert [f.title for f in placed.inline] == ["c", "n0"] and len(placed.in_body) == 2
    assert review.place([crit], diff, {crit.key}).repeated == [crit]
    sugg = review.comment_body(review.Finding("calc.py", 3, "minor", "t", "b", suggestion="x = 1\n"))
    assert "```suggestion\nx = 1\n```" in sugg


# --- triggers ----------------------------------------------------------------------------------------


@pytest.fixture
def review_watcher(watcher_for: Callable[..., Watcher]) -> Watcher:
    return watcher_for(GITHUB_REPOS=REPO)


def test_the_triggers(github: FakeGitHub, queue: TaskQueue, review_watcher: Watcher) -> None:
    review_watcher.poll_all()  # the first look: what is there is history
    pr = github.open_fork_pull(REPO, {"calc.py": CALC}, user="contributor", title="Add a calculator")
    number = int(pr["number"])
    outsider = github.add_comment(REPO, number, "@claude review", user="drive-by")
    asked = github.add_comment(REPO, number, "@claude review this, please", user="maintainer")
    github.add_label(REPO, number, "Claude", actor="maintainer")  # TRIGGER_LABEL on a PR: ignored
    review_watcher.poll_all()
    [task] = [t for t in queue.list() if t.issue_number == number]
    assert task.kind == "review" and [t["author"] for t in task.meta["triggers"]] == ["maintainer"]
    assert [r["content"] for r in github.reactions(REPO, "issues", asked["id"])] == ["eyes"]
    assert github.reactions(REPO, "issues", outsider["id"]) == []
    assert review_triggers.asks_review("@Claude review", "@claude")
    assert not review_triggers.asks_review("@claude reviewer", "@claude")
    assert not review_triggers.asks_review("@claude please fix", "@claude")

    other = github.open_fork_pull(REPO, {"x.py": "x = 1\n"}, user="contributor", title="X", fork_branch="x")
    github.add_label(REPO, int(other["number"]), "claude-review", actor="drive-by")
    review_watcher.poll_all()
    assert not [t for t in queue.list() if t.issue_number == int(other["number"])]  # an outsider's label
    github.remove_label(REPO, int(other["number"]), "claude-review", actor="maintainer")
    github.add_label(REPO, int(other["number"]), "claude-review", actor="maintainer")
    review_watcher.poll_all()
    [labelled] = [t for t in queue.list() if t.issue_number == int(other["number"])]
    assert labelled.kind == "review" and labelled.meta["triggers"][0]["where"] == "label"
    review_watcher.poll_all()
    assert len([t for t in queue.list() if t.issue_number == int(other["number"])]) == 1  # once per labelling


def test_review_on_open(github: FakeGitHub, queue: TaskQueue, watcher_for: Callable[..., Watcher]) -> None:
    watcher = watcher_for(GITHUB_REPOS=REPO, REVIEW_ON_OPEN="true")
    watcher.poll_all()
    pr = github.open_fork_pull(REPO, {"y.py": "y = 1\n"}, user="maintainer", title="Y", fork_branch="y")
    watcher.poll_all()
    watcher.poll_all()
    assert [t.kind for t in queue.list() if t.issue_number == int(pr["number"])] == ["review"]
