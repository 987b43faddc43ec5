"""The texts: who they name (Claude, or the demo's stand-in, never passing for Claude), and what a
failure tells a person to do next (an issue: its label again; a follow-up: the trigger phrase again)."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from claude_issue_solver.config import Config
from claude_issue_solver.run import messages
from claude_issue_solver.store.outcome import TaskControl
from claude_issue_solver.store.queue import FOLLOWUP, Task, TaskState
from tests.fakes.memory_backend import Place, Process, edits
from tests.test_followup_pipeline import first_run, queue_followup, trigger
from tests.test_pipeline import REPO, SUMMARY, World
from tests.test_pipeline import world as world  # the fixture
from tests.test_test_gate import good, settings, suite

STAND_IN = messages.STAND_IN
# "Claude" as the worker's name; "(not Claude)", the `Claude` label and "Claude Code" are not that.
CLAUDE_AS_AGENT = re.compile(r"Claude(?! Code)(?!\))(?!-)|Claude's")


def issue_task() -> Task:
    return Task(id="widgets-1-abc123", repo=REPO, issue_number=1, title="Fix it")


def followup_task() -> Task:
    task = Task(id="widgets-1-def456", repo=REPO, issue_number=1, title="Fix it", kind=FOLLOWUP)
    task.meta["triggers"] = [{"author": "alice", "where": "pr", "url": "http://x/c/1"}]
    return task


def names_claude(text: str) -> bool:
    for meant in ("(not Claude)", "a shell script, not Claude", "`Claude`"):
        text = text.replace(meant, "")
    return bool(CLAUDE_AS_AGENT.search(text))


REPORT = {
    "plan": {"test": "sh test.sh", "source": "TEST_COMMAND", "setup": None},
    "baseline": {"name": "baseline", "exit_code": 0, "duration_s": 1.0, "tail": ""},
    "rounds": [{"name": "test-1", "exit_code": 1, "duration_s": 2.0, "tail": "1 failed\n"}],
    "fixes": 0,
    "verdict": "red",
}


def test_a_follow_ups_failure_speaks_of_the_follow_up_and_how_to_ask_again() -> None:
    text = messages.failed_comment(followup_task(), "the agent failed", "Claude", phrase="@helper")
    assert text.startswith("❌ Claude could not finish the follow-up @alice asked for: the agent failed.")
    assert "mentions `@helper` with the request" in text
    assert "claude-issue-solver retry widgets-1-def456" in text and "retry this follow-up" in text
    assert "label" not in text and "this issue" not in text

    cancelled = messages.cancelled_comment(followup_task(), "Claude", phrase="@helper")
    assert cancelled.startswith("⏹️ The work on this follow-up was cancelled by an operator")
    assert "`@helper`" in cancelled and "label" not in cancelled
    waiting = messages.waiting_comment(followup_task(), "Claude's usage limit", "13:00 UTC", known_reset=True)
    assert "the work on this follow-up is paused" in waiting


def test_an_issues_failure_still_points_at_its_label() -> None:
    text = messages.failed_comment(issue_task(), "the agent failed", "Fix-Me", phrase="@helper")
    assert text.startswith("❌ Claude could not finish this issue: the agent failed.")
    assert "re-apply the `Fix-Me` label" in text and "@helper" not in text
    assert "re-apply the `Fix-Me` label" in messages.cancelled_comment(issue_task(), "Fix-Me")
    fallback = messages.pr_fallback_comment(issue_task(), "claude/issue-1", "", "HTTP 403", "Fix-Me")
    assert fallback.startswith("⚠️ Claude pushed the changes to branch `claude/issue-1`")
    assert "re-apply the `Fix-Me` label" in fallback


def test_every_progress_and_failure_text_names_the_stand_in_not_claude() -> None:
    task, follow = issue_task(), followup_task()
    figures = messages.RunFigures.of(task, 5, STAND_IN)
    texts = {
        "queued": messages.queued_comment(task, agent=STAND_IN),
        "working": messages.working_comment(task, 1, turns=3, agent=STAND_IN),
        "follow-up working": messages.followup_working_comment(follow, 1, agent=STAND_IN),
        "checklist": messages.checklist_comment(task, [(True, "agent running")], agent=STAND_IN),
        "follow-up checklist": messages.checklist_comment(follow, [(False, "agent")], agent=STAND_IN),
        "failed": messages.failed_comment(task, "it broke", "Claude", agent=STAND_IN),
        "follow-up failed": messages.failed_comment(follow, "it broke", "Claude", agent=STAND_IN),
        "fallback": messages.pr_fallback_comment(
            task, "claude/issue-1", "", "HTTP 403", "Claude", agent=STAND_IN
        ),
        "tests report": messages.tests_report(REPORT, STAND_IN),
        "red tests": messages.red_tests_comment(task, "claude/issue-1", REPORT, figures),
        "pr body": messages.pr_body(task, "Fixed.", figures, messages.tests_report(REPORT, STAND_IN)),
    }
    for what, text in texts.items():
        assert not names_claude(text), (what, text)
    assert texts["queued"].startswith("🤖 Queued: A scripted stand-in agent (not Claude) will pick")
    assert texts["working"].startswith("🤖 A scripted stand-in agent (not Claude) is working on this issue")
    assert texts["follow-up checklist"].startswith(
        "🤖 A scripted stand-in agent (not Claude) is working on the request of @alice"
    )
    assert "| round 1: after the stand-in agent's change | 🔴" in texts["tests report"]
    assert "| round 1: after the stand-in agent's change |" in texts["red tests"]
    # Claude's own texts are as they were.
    assert "| round 1: after Claude's change |" in messages.tests_report(REPORT)
    assert messages.queued_comment(task).startswith("🤖 Queued: Claude will pick this issue up shortly")


# --- through the pipeline ----------------------------------------------------------------------------


def test_a_failed_follow_up_answers_where_it_was_asked_with_the_phrase(
    world: World, gh_config: Callable[..., Config]
) -> None:
    first = first_run(world)
    world.config = gh_config(
        GITHUB_REPOS=REPO, TASK_TIMEOUT="600", MAX_ATTEMPTS="2", TRIGGER_PHRASE="@helper"
    )
    comment = world.github.add_comment(REPO, 2, "@helper more", user="maintainer")
    task = queue_followup(world, first, trigger("pr", "@helper more", comment))

    def fails(place: Place, process: Process) -> None:
        process.exit_code, process.stdout = 1, '{"type":"result","is_error":true,"result":"boom"}\n'

    world.backend.agents["agent"] = fails
    done = world.record(task, world.pipeline().run(task, TaskControl()))
    assert done.state is TaskState.FAILED
    answers = [c["body"] for c in world.github.comments(REPO, 2) if task.id in c["body"]]
    assert len(answers) == 1 and answers[0].startswith(
        "❌ Claude could not finish the follow-up @maintainer asked"
    )
    assert "mentions `@helper`" in answers[0] and f"claude-issue-solver retry {task.id}" in answers[0]
    assert "label" not in answers[0]


def test_the_stand_ins_run_is_never_called_claude_on_the_issue(
    world: World, gh_config: Callable[..., Config]
) -> None:
    world.config = gh_config(GITHUB_REPOS=REPO, TASK_TIMEOUT="600", CLAUDE_MODEL=messages.STAND_IN_MODEL)
    settings(world, "test: sh test.sh\n")
    suite(world, green_when=good)
    seen: list[str] = []
    world.backend.on_poll(lambda: seen.extend(world.comments(task)))  # the comment while it works
    world.backend.agents["agent"] = edits({"calc.txt": "good\n"}, SUMMARY, finish=True)
    task = world.task()
    # Announced while it was still queued (an announcement after the claim says nothing: see
    # test_pipeline's late announcement).
    for state in (TaskState.PENDING, TaskState.RUNNING):
        with world.queue.store.transaction() as data:
            data["tasks"][task.id]["state"] = state.value
        if state is TaskState.PENDING:
            world.pipeline().announce(task)
    seen.extend(world.comments(task))
    done = world.record(task, world.pipeline().run(task, TaskControl()))
    assert done.state is TaskState.COMPLETED, done.error
    seen.extend(world.comments(task))
    pull = world.github.pulls(REPO)[0]
    assert any(s.startswith("🤖 Queued: A scripted stand-in agent (not Claude)") for s in seen)
    assert any(s.startswith("🤖 A scripted stand-in agent (not Claude) is working") for s in seen)
    assert "| round 1: after the stand-in agent's change | 🟢" in pull["body"]
    for text in [*seen, pull["body"]]:
        assert not names_claude(text), text


@pytest.mark.parametrize("kind", ["issue", FOLLOWUP])
def test_the_progress_comment_shows_the_test_checklist_for_either_kind(
    world: World, kind: str, gh_config: Callable[..., Config]
) -> None:
    world.config = gh_config(GITHUB_REPOS=REPO, TASK_TIMEOUT="600", TEST_FIX_ROUNDS="0")
    settings(world, "test: sh test.sh\n")
    suite(world, green_when=good)
    if kind == FOLLOWUP:
        first = first_run(world)  # (the first run has the tests too)
        comment = world.github.add_comment(REPO, 2, "@claude again", user="maintainer")
        task = queue_followup(world, first, trigger("pr", "@claude again", comment))
        where = 2
    else:
        task, where = world.task(), 1
    seen: list[str] = []
    world.backend.on_poll(
        lambda: seen.extend(c["body"] for c in world.github.comments(REPO, where) if task.id in c["body"])
    )
    world.backend.agents["agent"] = edits({"calc.txt": "good\n"}, SUMMARY)
    assert world.pipeline().run(task, TaskControl()).state is TaskState.COMPLETED  # type: ignore[union-attr]
    working = [s for s in seen if s.startswith("🤖")]
    assert working and all("tests before the change (baseline)" in s for s in working), seen
    assert any("- [ ] agent running" in s or "- [x] agent" in s for s in working)
    if kind == FOLLOWUP:
        assert all("the request of @maintainer" in s for s in working)


def test_left_out_note_names_the_paths_as_code_whatever_they_hold() -> None:
    """#18: what was not committed, each path as inline code even when the agent put backticks or a
    newline in a directory's name; a long list is cut."""
    assert messages.left_out_note(()) == ""
    note = messages.left_out_note(
        ("vendor/evil/ (a git repository of its own)", "a`b\n/ (a submodule's directory)")
    )
    assert note.startswith("⚠️ Not committed: `vendor/evil/` (a git repository of its own), `` a`b?/ `` (a ")
    many = messages.left_out_note(tuple(f"d{n}/ (a git repository of its own)" for n in range(8)))
    assert "`d4/`" in many and "`d5/`" not in many and "and 3 more" in many
