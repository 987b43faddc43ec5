"""The pipeline's phases and the run policy on the in-memory backend: no Docker, an injected clock.

GitHub is the loopback fake (cheap); the place is :class:`tests.fakes.memory_backend.MemoryBackend`.
A "crash" is a ``BaseException`` raised inside a backend call, like the daemon being killed there; the
test then resumes the task with a new pipeline over the same queue and place, as a restarted daemon.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from claude_issue_solver.backends.base import BackendError
from claude_issue_solver.config import Config
from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.github.client import GitHubClient
from claude_issue_solver.github.publisher import Publisher
from claude_issue_solver.github.trust import Approved
from claude_issue_solver.logs import task_log_path
from claude_issue_solver.run.pipeline import Pipeline
from claude_issue_solver.run.policy import MAX_POLL_BACKOFF
from claude_issue_solver.store.outcome import Outcome, TaskControl
from claude_issue_solver.store.queue import Task, TaskQueue, TaskState
from claude_issue_solver.store.state import StateStore
from tests.fakes.memory_backend import Crash, MemoryBackend, edits
from tests.github_fixtures import Clock

REPO = "acme/widgets"
SUMMARY = "Add the widget fix\n\nThe widget now works.\n"


@dataclass
class World:
    github: FakeGitHub
    config: Config
    queue: TaskQueue
    backend: MemoryBackend
    clock: Clock
    sleeps: list[float]

    def pipeline(self) -> Pipeline:
        """A pipeline as a (re)started daemon builds it: the queue and the place outlive it."""
        client = GitHubClient(self.config)
        return Pipeline(
            self.config,
            self.queue,
            self.backend,  # type: ignore[arg-type]
            client,
            Publisher(client),
            clock=self.clock,
            sleep=self.sleeps.append,
        )

    def task(self, title: str = "Fix the widget") -> Task:
        issue = self.github.create_issue(REPO, title, "It is broken.", labels=["Claude"], user="maintainer")
        # As the watcher queues it: with the text the maintainer's label approved.
        approved = Approved.as_read(issue, issue["updated_at"], by="maintainer", source="label")
        submitted = self.queue.submit(REPO, issue["number"], title, meta={"approved": approved.to_meta()})
        assert submitted is not None
        claimed = self.queue.claim()
        assert claimed is not None and claimed.id == submitted.id
        return claimed

    def log_text(self, task: Task) -> str:
        return task_log_path(self.config.log_dir, task.id).read_text()

    def comments(self, task: Task) -> list[str]:
        return [
            c["body"]
            for c in self.github.comments(REPO, task.issue_number)
            if "claude-issue-solver:task=" in c["body"]
        ]

    def record(self, task: Task, outcome: Outcome | None) -> Task:
        """What the daemon's monitor does with an outcome."""
        if outcome is None:
            return self.queue.get(task.id)
        if outcome.state is TaskState.PENDING:
            return self.queue.requeue(task.id, outcome.error or "")
        return self.queue.finish(task.id, outcome.state, error=outcome.error, **outcome.fields)


@pytest.fixture
def world(github: FakeGitHub, gh_config: Callable[..., Config], state_dir: object) -> World:
    config = gh_config(GITHUB_REPOS=REPO, TASK_TIMEOUT="600", MAX_ATTEMPTS="2")
    clock = Clock(start=1_900_000_000.0)
    queue = TaskQueue(StateStore(config.state_file), max_concurrent=3, clock=clock)
    backend = MemoryBackend()
    backend.on_push = lambda branch, files, message: github.commit_files(REPO, branch, files, message=message)
    return World(github, config, queue, backend, clock, [])


def agent_edits(world: World, *, finish: bool = True) -> None:
    world.backend.agents["agent"] = edits({"fix.txt": "fixed\n"}, SUMMARY, finish=finish)


def assert_published(world: World, task: Task) -> None:
    pulls = world.github.pulls(REPO)
    assert len(pulls) == 1 and pulls[0]["title"] == "Add the widget fix"
    assert pulls[0]["head"]["ref"] == f"claude/issue-{task.issue_number}"
    sha, files = world.backend.remote[f"claude/issue-{task.issue_number}"]
    assert world.github.repo(REPO).branch_sha(f"claude/issue-{task.issue_number}") == sha
    assert files == {"README.md": b"# r\n", "fix.txt": b"fixed\n"}  # never the summary file
    assert task.id not in world.backend.places  # removed
    assert len(world.comments(task)) == 1 and pulls[0]["html_url"] in world.comments(task)[0]


# --- the phases ----------------------------------------------------------------------------------------


def test_a_run_goes_through_every_phase(world: World) -> None:
    agent_edits(world)
    task = world.task()
    outcome = world.pipeline().run(task, TaskControl())
    assert outcome is not None and outcome.state is TaskState.COMPLETED, outcome
    done = world.record(task, outcome)
    assert done.meta["phase"] == "published" and done.pr_url
    assert done.num_turns == 2 and done.cost_usd == pytest.approx(0.01)
    assert_published(world, task)
    text = world.log_text(task)
    assert "1 changed file(s); summary found" in text
    assert "committed " in text and "pushed " in text


def test_the_prompt_goes_to_stdin_and_the_summary_is_never_committed(world: World) -> None:
    seen: list[bytes] = []

    def agent(place, process) -> None:  # type: ignore[no-untyped-def]
        seen.append(process.spec.stdin)
        assert all("It is broken" not in arg for arg in process.spec.argv)
        edits({"fix.txt": "fixed\n"}, SUMMARY)(place, process)

    world.backend.agents["agent"] = agent
    task = world.task()
    assert world.pipeline().run(task, TaskControl()).state is TaskState.COMPLETED  # type: ignore[union-attr]
    assert b"It is broken." in seen[0]
    assert ".claude-pr-summary.md" not in world.backend.remote[f"claude/issue-{task.issue_number}"][1]


def test_a_linked_summary_is_removed_not_read(world: World) -> None:
    def agent(place, process) -> None:  # type: ignore[no-untyped-def]
        edits({"fix.txt": "fixed\n"}, "Secret title from a link\n")(place, process)
        place.links.add(".claude-pr-summary.md")

    world.backend.agents["agent"] = agent
    task = world.task()
    assert world.pipeline().run(task, TaskControl()).state is TaskState.COMPLETED  # type: ignore[union-attr]
    assert world.github.pulls(REPO)[0]["title"] != "Secret title from a link"
    assert "summary absent" in world.log_text(task)


def test_no_changes_completes_without_a_push(world: World) -> None:
    world.backend.agents["agent"] = edits({})
    task = world.task()
    outcome = world.pipeline().run(task, TaskControl())
    assert outcome is not None and outcome.state is TaskState.COMPLETED
    assert world.github.pulls(REPO) == [] and "commit_and_push" not in world.backend.calls
    assert "made no changes" in world.comments(task)[0]


def test_a_failed_agent_fails_the_task_with_its_output(world: World) -> None:
    def agent(place, process) -> None:  # type: ignore[no-untyped-def]
        process.exit_code, process.stdout, process.stderr = 2, "", "boom: the agent broke\n"

    world.backend.agents["agent"] = agent
    task = world.task()
    outcome = world.pipeline().run(task, TaskControl())
    assert outcome is not None and outcome.state is TaskState.FAILED
    assert "exit code 2" in (outcome.error or "")
    assert "boom: the agent broke" in world.comments(task)[0]
    assert task.id not in world.backend.places


# --- stopping ------------------------------------------------------------------------------------------


def test_cancel_while_running_kills_and_removes(world: World) -> None:
    agent_edits(world, finish=False)
    control = TaskControl()
    world.backend.on_poll(control.cancel.set)
    task = world.task()
    outcome = world.pipeline().run(task, control)
    assert outcome is not None and outcome.state is TaskState.CANCELLED
    assert "kill_process" in world.backend.calls and task.id not in world.backend.places
    assert world.github.pulls(REPO) == []
    assert "cancelled" in world.comments(task)[0].lower()


def test_timeout_on_the_injected_clock(world: World) -> None:
    agent_edits(world, finish=False)
    world.backend.on_poll(lambda: world.clock.advance(200))  # each poll "takes" 200 s
    task = world.task()
    outcome = world.pipeline().run(task, TaskControl())
    assert outcome is not None and outcome.state is TaskState.FAILED
    assert "TASK_TIMEOUT" in (outcome.error or "") and "ran out of time" in world.comments(task)[0]
    assert world.backend.calls.count("poll_process") == 3  # at 200, 400, 600 s: the third meets the deadline
    assert "kill_process" in world.backend.calls


def test_detach_on_shutdown_then_resume_finishes(world: World) -> None:
    agent_edits(world, finish=False)
    control = TaskControl()
    world.backend.on_poll(control.detach.set)
    task = world.task()
    assert world.pipeline().run(task, control) is None
    assert world.queue.get(task.id).meta["phase"] == "agent"
    assert "kill_process" not in world.backend.calls and task.id in world.backend.places

    world.backend._on_poll.clear()
    world.backend.finish(task.id)  # the agent finished while no daemon ran
    outcome = world.pipeline().resume(world.queue.get(task.id), TaskControl())
    assert outcome is not None and outcome.state is TaskState.COMPLETED, outcome
    assert_published(world, task)


# --- crash and resume, phase by phase ----------------------------------------------------------------


def test_crash_while_preparing_requeues(world: World) -> None:
    agent_edits(world)
    world.backend.crash_at("prepare")
    task = world.task()
    with pytest.raises(Crash):
        world.pipeline().run(task, TaskControl())
    assert world.queue.get(task.id).meta["phase"] == "preparing"
    outcome = world.pipeline().resume(world.queue.get(task.id), TaskControl())
    assert outcome is not None and outcome.state is TaskState.PENDING  # run again from the start
    world.record(task, outcome)
    again = world.queue.claim()
    assert again is not None and again.meta["phase"] is None
    assert world.pipeline().run(again, TaskControl()).state is TaskState.COMPLETED  # type: ignore[union-attr]


def test_crash_while_the_agent_runs_reattaches(world: World) -> None:
    agent_edits(world)
    world.backend.crash_at("poll_process")
    task = world.task()
    with pytest.raises(Crash):
        world.pipeline().run(task, TaskControl())
    assert world.queue.get(task.id).meta["phase"] == "agent"
    outcome = world.pipeline().resume(world.queue.get(task.id), TaskControl())
    assert outcome is not None and outcome.state is TaskState.COMPLETED, outcome
    assert world.backend.calls.count("start_process") == 1  # never a second agent
    assert_published(world, task)


def test_crash_between_start_and_record_starts_no_second_agent(world: World) -> None:
    agent_edits(world, finish=False)
    task = world.task()
    workspace = world.backend.prepare(world.pipeline().spec(task, {}).workspace, _null_log(world, task))
    started = world.pipeline().spec(task, {}).agent
    assert world.backend.start_process(workspace, started, _null_log(world, task))
    world.backend.on_poll(lambda: world.backend.finish(task.id))
    outcome = world.pipeline().run(task, TaskControl())  # prepare and start find what exists
    assert outcome is not None and outcome.state is TaskState.COMPLETED
    assert "already runs" in world.log_text(task)


def test_crash_while_publishing_keeps_the_summary(world: World) -> None:
    agent_edits(world)
    world.backend.crash_at("push")  # committed, not pushed
    task = world.task()
    with pytest.raises(Crash):
        world.pipeline().run(task, TaskControl())
    recorded = world.queue.get(task.id)
    assert recorded.meta["phase"] == "publishing" and recorded.meta["summary"] == SUMMARY
    outcome = world.pipeline().resume(recorded, TaskControl())
    assert outcome is not None and outcome.state is TaskState.COMPLETED, outcome
    assert_published(world, task)  # the title still comes from the summary the crash took away
    assert "unpushed commits" in world.log_text(task)


def test_crash_after_publishing_only_cleans_up(world: World) -> None:
    agent_edits(world)
    world.backend.crash_at("remove")
    task = world.task()
    with pytest.raises(Crash):
        world.pipeline().run(task, TaskControl())
    assert world.queue.get(task.id).meta["phase"] == "published"
    outcome = world.pipeline().resume(world.queue.get(task.id), TaskControl())
    assert outcome is not None and outcome.state is TaskState.COMPLETED
    assert_published(world, task)
    assert world.backend.calls.count("commit_and_push") == 1


def test_a_crash_before_the_final_comment_writes_it_on_resume(world: World) -> None:
    """Killed after "published" was recorded but before the comment said so: not "working…" for good."""
    agent_edits(world)
    task = world.task()
    pipeline = world.pipeline()
    comment = pipeline.comment

    def dies_at_the_final_comment(t: Task, body: str, **kwargs: object) -> None:
        if body.startswith("✅"):
            raise Crash("killed before the final comment")
        comment(t, body, **kwargs)  # type: ignore[arg-type]

    pipeline.comment = dies_at_the_final_comment  # type: ignore[method-assign]
    with pytest.raises(Crash):
        pipeline.run(task, TaskControl())
    assert not any(c.startswith("✅") for c in world.comments(task))
    outcome = world.pipeline().resume(world.queue.get(task.id), TaskControl())
    assert outcome is not None and outcome.state is TaskState.COMPLETED
    [final] = world.comments(task)  # the one comment, edited: never a second one
    assert final.startswith("✅") and world.queue.get(task.id).pr_url in final
    assert world.backend.calls.count("commit_and_push") == 1


def test_a_lost_workspace_requeues_then_gives_up(world: World) -> None:
    agent_edits(world, finish=False)
    world.backend.on_poll(lambda: world.backend.places.clear())  # removed by hand while running
    task = world.task()
    outcome = world.pipeline().run(task, TaskControl())
    assert outcome is not None and outcome.state is TaskState.PENDING
    world.record(task, outcome)
    second = world.queue.claim()
    assert second is not None and second.attempts == 2
    outcome = world.pipeline().run(second, TaskControl())
    assert outcome is not None and outcome.state is TaskState.FAILED
    assert "already ran 2 times" in (outcome.error or "")


# --- failures of the place and the remote ------------------------------------------------------------


def test_a_passing_poll_failure_backs_off_and_carries_on(world: World) -> None:
    agent_edits(world)
    world.backend.fail_next("poll_process", BackendError("rate-limited (429)", retryable=True), count=6)
    task = world.task()
    outcome = world.pipeline().run(task, TaskControl())
    assert outcome is not None and outcome.state is TaskState.COMPLETED, outcome
    text = world.log_text(task)
    assert text.count("polling again with back-off") == 1 and "answers again" in text
    assert MAX_POLL_BACKOFF == 30.0


def test_a_lasting_poll_failure_fails_the_task(world: World) -> None:
    agent_edits(world, finish=False)
    world.backend.fail_next("poll_process", BackendError("the key was revoked (401)"))
    task = world.task()
    outcome = world.pipeline().run(task, TaskControl())
    assert outcome is not None and outcome.state is TaskState.FAILED and "revoked" in (outcome.error or "")
    assert task.id not in world.backend.places


def test_a_retryable_error_while_preparing_retries_the_task(world: World) -> None:
    agent_edits(world)
    world.backend.fail_next("prepare", BackendError("Daytona is down (503)", retryable=True))
    task = world.task()
    outcome = world.pipeline().run(task, TaskControl())
    assert outcome is not None and outcome.state is TaskState.PENDING
    assert world.queue.get(task.id).meta["phase"] is None
    world.record(task, outcome)
    again = world.queue.claim()
    assert again is not None
    assert world.pipeline().run(again, TaskControl()).state is TaskState.COMPLETED  # type: ignore[union-attr]


def test_github_s_long_rate_limit_puts_the_task_back_without_spending_an_attempt(world: World) -> None:
    agent_edits(world)
    task = world.task()
    assert task.attempts == 1
    # GitHub's secondary limit, 15 minutes: longer than work waits, so the pipeline's request fails.
    world.github.secondary_limit(f"/api/v3/repos/{REPO}", status=403, retry_after=900)
    pipeline = world.pipeline()
    outcome = pipeline.run(task, TaskControl())
    assert outcome is not None and outcome.state is TaskState.PENDING, outcome
    back = world.record(task, outcome)
    assert back.state is TaskState.PENDING and back.attempts == 0  # the daemon's wait, not the task's
    assert "(not counted as an attempt)" in world.log_text(task)
    held = pipeline.client.holds_work()  # what keeps the daemon from starting it again meanwhile
    assert held is not None and held.startswith("GitHub asked for no requests until ")


def test_a_push_rejection_fails_with_a_readable_comment(world: World) -> None:
    agent_edits(world)
    world.backend.reject_pushes = "protected branch hook declined"
    task = world.task()
    outcome = world.pipeline().run(task, TaskControl())
    assert outcome is not None and outcome.state is TaskState.FAILED
    assert "push of branch claude/issue-1 was rejected" in (outcome.error or "")
    assert "protected branch hook declined" in world.comments(task)[0]
    assert world.github.pulls(REPO) == [] and task.id not in world.backend.places


def test_removal_retries_passing_failures_and_never_raises(world: World) -> None:
    world.backend.agents["agent"] = edits({})
    world.backend.fail_next("remove", BackendError("busy", retryable=True), count=2)
    task = world.task()
    assert world.pipeline().run(task, TaskControl()).state is TaskState.COMPLETED  # type: ignore[union-attr]
    assert world.sleeps == [0.0, 0.0] and task.id not in world.backend.places

    other = world.task("Another")
    world.backend.fail_next("remove", BackendError("forbidden (403)"))
    world.backend.agents["agent"] = edits({})
    assert world.pipeline().run(other, TaskControl()).state is TaskState.COMPLETED  # type: ignore[union-attr]
    assert "could not remove the workspace" in world.log_text(other)


def test_reconcile_removes_only_what_no_live_task_owns(world: World) -> None:
    agent_edits(world, finish=False)
    control = TaskControl()
    control.detach.set()
    kept, orphan = world.task("Kept"), world.task("Orphan")
    for task in (kept, orphan):
        assert world.pipeline().run(task, control) is None
    world.pipeline().reconcile([world.queue.get(kept.id)])
    assert set(world.backend.places) == {kept.id}


def _null_log(world: World, task: Task):  # type: ignore[no-untyped-def]
    from claude_issue_solver.logs import TaskLog

    return TaskLog(task_log_path(world.config.log_dir, task.id))


def test_a_late_announcement_neither_posts_a_second_comment_nor_undoes_working(world: World) -> None:
    """The poller announces a task while the dispatcher may already run it (a webhook wakes it at once):
    the announcement's copy of the task knows no comment yet, and comes after "working"."""
    task = world.task()  # claimed: it runs
    stale = Task.from_dict(task.to_dict())
    pipeline = world.pipeline()
    pipeline.comment(task, "working on it")
    pipeline.announce(stale)
    assert [c.split("\n")[0] for c in world.comments(task)] == ["working on it"]
    assert len(world.github.comments(REPO, task.issue_number)) == 1
    pipeline.comment(Task.from_dict(stale.to_dict()), "done")  # the id the other thread recorded is used
    assert [c.split("\n")[0] for c in world.comments(task)] == ["done"]


def test_a_crash_after_the_pr_opened_but_before_it_was_recorded_ends_with_that_pr(world: World) -> None:
    """Issue #19: the push and the PR happened, "published" was never written (a crash, a full disk):
    the resumed run has nothing left to push and must not say "the agent changed nothing"."""
    agent_edits(world)
    task = world.task()
    pipeline = world.pipeline()
    opened = pipeline.publisher.open_or_update_pr

    def opens_then_dies(*args: object, **kwargs: object) -> object:
        opened(*args, **kwargs)  # type: ignore[arg-type]
        raise Crash("killed before the PR was recorded")

    pipeline.publisher.open_or_update_pr = opens_then_dies  # type: ignore[method-assign]
    with pytest.raises(Crash):
        pipeline.run(task, TaskControl())
    recorded = world.queue.get(task.id)
    assert recorded.meta["phase"] == "publishing" and recorded.pr_url is None
    outcome = world.pipeline().resume(recorded, TaskControl())
    assert outcome is not None and outcome.state is TaskState.COMPLETED, outcome
    done = world.record(task, outcome)
    assert_published(world, task)
    assert done.pr_url == world.github.pulls(REPO)[0]["html_url"]
    assert "the agent changed nothing" not in world.log_text(task)
    assert "was pushed before the interruption" in world.log_text(task)
