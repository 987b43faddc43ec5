"""`@claude` on a closed issue (#11): a request written after the closing runs; one the issue was
closed after (while it waited) does not, and its answer says how to ask again.

Merging our pull request closes the issue ("Fixes #N", as GitHub does and the loopback GitHub now
does too), so a request on the merged PR is the usual way to ask for more: it gets the next round's
branch and pull request, and the issue stays closed (never reopened for a person).
"""

from __future__ import annotations

from claude_issue_solver.run.followup import asked_after_closing, session_key
from claude_issue_solver.store.outcome import TaskControl
from claude_issue_solver.store.queue import FOLLOWUP, Task, TaskState
from tests.fakes.memory_backend import edits
from tests.test_followup_pipeline import first_run, queue_followup, trigger
from tests.test_followup_pipeline import world as world  # the fixture
from tests.test_pipeline import REPO, World


def answers(world: World, number: int, task: Task) -> list[str]:
    return [c["body"] for c in world.github.comments(REPO, number) if task.id in c["body"]]


def test_merging_our_pr_closes_the_issue_it_fixes(world: World) -> None:
    first_run(world)
    other = world.github.create_issue(REPO, "Another", user="maintainer")
    assert "Fixes #1" in world.github.pulls(REPO)[0]["body"]
    world.github.merge_pull(REPO, 2)
    assert world.github.issue(REPO, 1)["state"] == "closed"
    assert world.github.issue(REPO, other["number"])["state"] == "open"  # not named, not closed


def test_a_request_on_the_merged_pr_runs_on_a_new_branch_and_pr(world: World) -> None:
    first = first_run(world)
    world.github.merge_pull(REPO, 2)
    sha = world.github.repo(REPO).branch_sha("main")
    assert sha is not None and world.github.issue(REPO, 1)["state"] == "closed"
    world.backend.remote["main"] = (sha, {"README.md": b"# r\n", "fix.txt": b"fixed\n"})
    body = "@claude one more thing: more.txt"
    comment = world.github.add_comment(REPO, 2, body, user="maintainer")
    task = queue_followup(world, first, trigger("pr", body, comment))
    world.backend.agents["agent"] = edits({"more.txt": "more\n"}, "One more thing\n\nAnd more.\n")
    done = world.record(task, world.pipeline().run(task, TaskControl()))
    assert done.state is TaskState.COMPLETED, done.error
    pulls = world.github.pulls(REPO)
    assert [(p["number"], p["head"]["ref"], p["state"]) for p in pulls] == [
        (2, "claude/issue-1", "closed"),
        (3, "claude/issue-1-2", "open"),
    ]
    [answer] = answers(world, 2, task)  # where it was asked
    assert answer.startswith("✅") and "claude/issue-1-2" in answer and pulls[1]["html_url"] in answer
    assert world.github.issue(REPO, 1)["state"] == "closed"  # a person's decision, not ours to undo
    assert "the issue is closed" in world.log_text(task) and "but this request came after: running it" in (
        world.log_text(task)
    )


def test_a_request_on_an_issue_a_person_closed_runs_on_its_branch(world: World) -> None:
    first = first_run(world)
    world.github.edit_issue(REPO, 1, state="closed")
    comment = world.github.add_comment(REPO, 1, "@claude do it anyway", user="maintainer")
    task = queue_followup(world, first, trigger("issue", "@claude do it anyway", comment))
    world.backend.agents["agent"] = edits({"more.txt": "more\n"})
    done = world.record(task, world.pipeline().run(task, TaskControl()))
    assert done.state is TaskState.COMPLETED, done.error
    assert world.github.repo(REPO).read_file("claude/issue-1", "more.txt") == "more\n"
    [answer] = answers(world, 1, task)
    assert answer.startswith("✅") and world.github.pulls(REPO)[0]["html_url"] in answer
    assert session_key(REPO, 1) in world.backend.kept  # its session stays for the next request


def test_a_request_the_issue_was_closed_after_is_answered_not_run(world: World) -> None:
    first = first_run(world)
    comment = world.github.add_comment(REPO, 2, "@claude more", user="maintainer")
    task = queue_followup(world, first, trigger("pr", "@claude more", comment))
    world.github.edit_issue(REPO, 1, state="closed")  # while the request waited
    outcome = world.pipeline().run(task, TaskControl())
    assert outcome is not None and outcome.state is TaskState.CANCELLED
    assert world.backend.calls.count("prepare") == 1  # the first run's only
    [answer] = answers(world, 2, task)
    assert answer.startswith("⏹️ This issue was closed after @maintainer asked, so the request was not run")
    assert "reopen the issue" in answer and "mentions `@claude`" in answer
    assert session_key(REPO, 1) not in world.backend.kept


def test_after_closing_means_a_later_second_on_githubs_clock() -> None:
    def followup(*asked: str) -> Task:
        task = Task(id="t", repo=REPO, issue_number=1, title="t", kind=FOLLOWUP)
        task.meta["triggers"] = [{"created_at": a} for a in asked]
        return task

    closed = {"state": "closed", "closed_at": "2026-12-01T12:00:00Z"}
    assert asked_after_closing(followup("2026-12-01T11:00:00Z", "2026-12-01T12:00:01Z"), closed)
    assert not asked_after_closing(followup("2026-12-01T12:00:00Z"), closed)  # "Close with comment"
    assert not asked_after_closing(followup("2026-12-01T11:59:59Z"), closed)
    assert not asked_after_closing(followup("2026-12-01T13:00:00Z"), {"state": "closed"})
    assert not asked_after_closing(followup("not a time"), closed)
    label_task = Task(id="u", repo=REPO, issue_number=1, title="t")
    assert not asked_after_closing(label_task, closed)  # a label's task on a closed issue never runs
