"""#11: the branch moved on GitHub while Claude worked -- the run's commits go on top, or aside.

The pipeline on the in-memory place and the loopback GitHub: a person's commit pushed to
``claude/issue-N`` while the agent runs is kept, Claude's commit goes on top and the answer says so; a
conflict keeps the person's branch as it is, pushes Claude's commits to a new side branch and fails
with one sentence naming it; a refusal by the remote (a protected branch) stays a failure; a daemon
killed between putting the commits on top and pushing them resumes without a duplicate commit.
(Docker's mechanics against real git: tests/test_gitops_replay.py; through the daemon:
tests/test_followup_e2e.py.)
"""

from __future__ import annotations

from claude_issue_solver.backends.base import CannotRebase
from claude_issue_solver.run.policy import MOVED_ATTEMPTS
from claude_issue_solver.store.outcome import TaskControl
from claude_issue_solver.store.queue import Task, TaskState
from tests import test_followup_pipeline
from tests.fakes.memory_backend import Crash, Place, Process, edits
from tests.test_followup_pipeline import first_run, queue_followup, trigger
from tests.test_pipeline import REPO, SUMMARY, World

world = test_followup_pipeline.world  # the follow-up tests' world: loopback GitHub, memory place

BRANCH = "claude/issue-1"
HUMAN = "Hu Man <hu@example.com>"


def human_pushes(world: World, files: dict[str, str]) -> str:
    """A person pushes a commit to the branch on GitHub (and so to the place's remote)."""
    sha = world.github.commit_files(REPO, BRANCH, files, message="A human's commit", author=HUMAN)
    return world.backend.push_as("Hu Man", BRANCH, files, sha=sha)


def agent_while_human_pushes(world: World, ours: dict[str, str], theirs: dict[str, str]) -> None:
    """The agent edits ``ours``; while it works, the person pushes ``theirs``."""

    def agent(place: Place, process: Process) -> None:
        human_pushes(world, theirs)
        edits(ours, SUMMARY)(place, process)

    world.backend.agents["agent"] = agent


def followup_task(world: World) -> tuple[Task, Task]:
    first = first_run(world)
    comment = world.github.add_comment(REPO, 2, "@claude more", user="maintainer")
    return first, queue_followup(world, first, trigger("pr", "@claude more", comment))


def log_of(world: World, branch: str = BRANCH) -> list[str]:
    """The branch on GitHub, newest first: "<subject> | <author>"."""
    out = world.github.repo(REPO).git("log", "--format=%s | %an <%ae>", branch)
    return out.splitlines()


def test_a_follow_up_puts_its_commit_on_top_of_a_humans_and_says_so(world: World) -> None:
    first, task = followup_task(world)
    before = world.github.repo(REPO).branch_sha(BRANCH)
    agent_while_human_pushes(world, {"more.txt": "more\n"}, {"human.txt": "by hand\n"})
    done = world.record(task, world.pipeline().run(task, TaskControl()))
    assert done.state is TaskState.COMPLETED, done.error
    repo = world.github.repo(REPO)
    # The person's commit is kept (an ancestor) and Claude's is on top; nothing was forced.
    assert repo.read_file(BRANCH, "human.txt") == "by hand\n"
    assert repo.read_file(BRANCH, "more.txt") == "more\n"
    assert repo.read_file(BRANCH, "fix.txt") == "fixed\n"  # the first run's work
    history = log_of(world)
    assert history[1] == f"A human's commit | {HUMAN}" and "Hu Man" not in history[0]
    assert before is not None and repo.git("merge-base", "--is-ancestor", before, BRANCH) == ""
    assert len(world.github.pulls(REPO)) == 1
    [answer] = [c["body"] for c in world.github.comments(REPO, 2) if task.id in c["body"]]
    assert answer.startswith("✅")
    assert "had moved while Claude worked (1 new commit(s) by Hu Man)" in answer
    assert "commit(s) were put on top" in answer
    text = world.log_text(task)
    assert "the branch had moved (1 new commit(s) by Hu Man); Claude's commit(s) were put on top" in text
    assert world.queue.get(task.id).meta["branch_moved"][0]["new_commits"] == 1
    assert first.id != task.id


def test_a_first_run_whose_branch_a_person_created_meanwhile_builds_on_it(world: World) -> None:
    agent_while_human_pushes(world, {"fix.txt": "fixed\n"}, {"human.txt": "by hand\n"})
    task = world.task()
    done = world.record(task, world.pipeline().run(task, TaskControl()))
    assert done.state is TaskState.COMPLETED, done.error
    repo = world.github.repo(REPO)
    assert repo.read_file(BRANCH, "human.txt") == "by hand\n"
    assert repo.read_file(BRANCH, "fix.txt") == "fixed\n"
    assert log_of(world)[1] == f"A human's commit | {HUMAN}"
    [comment] = world.comments(task)
    assert comment.startswith("✅") and "had moved" in comment and done.pr_url in comment


def test_a_conflict_keeps_both_sides_and_names_the_side_branch(world: World) -> None:
    _first, task = followup_task(world)
    agent_while_human_pushes(world, {"fix.txt": "Claude's version\n"}, {"fix.txt": "a person's version\n"})
    done = world.record(task, world.pipeline().run(task, TaskControl()))
    assert done.state is TaskState.FAILED
    side = f"{BRANCH}-{task.id}"
    repo = world.github.repo(REPO)
    # The person's branch is as they left it; Claude's work is on a new branch of its own.
    assert log_of(world)[0] == f"A human's commit | {HUMAN}"
    assert repo.read_file(BRANCH, "fix.txt") == "a person's version\n"
    assert repo.read_file(side, "fix.txt") == "Claude's version\n"
    assert done.error == (
        f"the branch {BRANCH} moved while Claude worked and its changes conflict in `fix.txt`; "
        f"Claude's commits are on {side}; ask again (@claude) to build on the new head"
    )
    [answer] = [c["body"] for c in world.github.comments(REPO, 2) if task.id in c["body"]]
    assert answer.startswith("❌") and f"[{side}](" in answer and f"/tree/{side})" in answer
    assert len(world.github.pulls(REPO)) == 1


def test_a_crash_between_putting_the_commits_on_top_and_pushing_resumes_without_duplicates(
    world: World,
) -> None:
    _first, task = followup_task(world)
    agent_while_human_pushes(world, {"more.txt": "more\n"}, {"human.txt": "by hand\n"})
    world.backend.crash_at("push")  # the second push: the first was refused, then the replay ran
    try:
        world.pipeline().run(task, TaskControl())
    except Crash:
        pass
    else:
        raise AssertionError("the pipeline did not reach the push after the replay")
    assert world.backend.calls.count("rebase_onto_remote") == 1
    running = world.queue.get(task.id)
    assert running.meta["phase"] == "publishing" and running.meta["branch_moved"]
    done = world.record(task, world.pipeline().resume(running, TaskControl()))
    assert done.state is TaskState.COMPLETED, done.error
    assert world.backend.calls.count("rebase_onto_remote") == 1  # the replayed commit was pushed as it was
    # Ours (once), the person's, the first run's, the repository's first: no duplicate commit.
    assert [line.split(" | ")[0] for line in log_of(world)] == [
        "Follow-up for @maintainer: more",
        "A human's commit",
        "Add the widget fix",
        "Initial commit",
    ]
    [answer] = [c["body"] for c in world.github.comments(REPO, 2) if task.id in c["body"]]
    assert "had moved while Claude worked (1 new commit(s) by Hu Man)" in answer


def test_a_branch_that_keeps_moving_fails_without_forcing(world: World) -> None:
    _first, task = followup_task(world)
    agent_while_human_pushes(world, {"more.txt": "more\n"}, {"human.txt": "1\n"})
    pushes = iter(range(2, 10))
    original = world.backend.rebase_onto_remote

    def and_again(*args, **kwargs):  # type: ignore[no-untyped-def]
        rebased = original(*args, **kwargs)
        human_pushes(world, {"human.txt": f"{next(pushes)}\n"})  # someone pushes again at once
        return rebased

    world.backend.rebase_onto_remote = and_again  # type: ignore[method-assign]
    done = world.record(task, world.pipeline().run(task, TaskControl()))
    assert done.state is TaskState.FAILED
    assert world.backend.calls.count("rebase_onto_remote") == MOVED_ATTEMPTS
    assert "nothing of theirs was overwritten" in (done.error or "")
    assert log_of(world)[0] == f"A human's commit | {HUMAN}"


def test_a_place_that_cannot_rebase_fails_as_before(world: World) -> None:
    _first, task = followup_task(world)
    agent_while_human_pushes(world, {"more.txt": "more\n"}, {"human.txt": "by hand\n"})
    world.backend.fail_next("rebase_onto_remote", CannotRebase("this place cannot put commits on top"))
    done = world.record(task, world.pipeline().run(task, TaskControl()))
    assert done.state is TaskState.FAILED
    assert "cannot put commits on top" in (done.error or "") and "nothing of theirs" in (done.error or "")
    assert log_of(world)[0] == f"A human's commit | {HUMAN}"


def test_a_retried_conflict_gets_a_side_branch_of_its_own(world: World) -> None:
    _first, task = followup_task(world)
    agent_while_human_pushes(world, {"fix.txt": "Claude's version\n"}, {"fix.txt": "a person's version\n"})
    world.record(task, world.pipeline().run(task, TaskControl()))
    side = f"{BRANCH}-{task.id}"
    first_side = world.github.repo(REPO).branch_sha(side)
    world.queue.retry(task.id)
    again = world.queue.claim()
    assert again is not None and again.id == task.id
    agent_while_human_pushes(world, {"fix.txt": "Claude's second try\n"}, {"fix.txt": "a person, again\n"})
    done = world.record(again, world.pipeline().run(again, TaskControl()))
    assert done.state is TaskState.FAILED and f"{side}-2" in (done.error or "")
    repo = world.github.repo(REPO)
    assert repo.branch_sha(side) == first_side  # the first run's side branch is left as it was
    assert repo.read_file(f"{side}-2", "fix.txt") == "Claude's second try\n"
    assert repo.read_file(BRANCH, "fix.txt") == "a person, again\n"
