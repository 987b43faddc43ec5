"""Bounded process output without a backend: the keeper, the note, and reading a result from a cut end."""

from __future__ import annotations

import json
from pathlib import Path

from claude_issue_solver.backends.base import OutputBounds, OutputKeeper, WorkspaceSpec, kept_text
from claude_issue_solver.conventions import PR_BODY_LIMIT, RESULT_LIMIT, SUMMARY_FILE, SUMMARY_LIMIT
from claude_issue_solver.credentials import GitCredential
from claude_issue_solver.logs import TaskLog
from claude_issue_solver.run.agent import parse_result
from claude_issue_solver.run.messages import CLAUDE, RunFigures, pr_body
from claude_issue_solver.run.policy import take_summary
from claude_issue_solver.store.queue import Task
from tests.fakes.memory_backend import MemoryBackend

SPEC = WorkspaceSpec(
    task_id="widgets-1-abc",
    repo="acme/widgets",
    issue_number=1,
    clone_url="http://127.0.0.1:9/acme/widgets.git",
    default_branch="main",
    branch="claude/issue-1",
    credential=lambda: GitCredential("x-access-token", "t"),
)


def test_the_keeper_holds_the_start_and_the_end_and_counts_the_rest() -> None:
    keeper = OutputKeeper(OutputBounds(head=4, tail=6))
    for chunk in (b"abc", b"defgh", b"x" * 1000, b"12", b"3456"):
        keeper.feed(chunk)
        assert len(keeper._head) <= 4 and len(keeper._tail) < 2 * 6 + 1000
    assert keeper.total == 1014 and keeper.left_out == 1004
    text = keeper.text()
    assert text.startswith("abcd\n[... 1004 bytes of this output left out here")
    assert text.endswith("...]\n123456")


def test_short_output_is_kept_whole_without_a_note() -> None:
    keeper = OutputKeeper(OutputBounds(head=4, tail=6))
    keeper.feed(b"0123456789")
    assert keeper.left_out == 0 and keeper.text() == "0123456789"


def test_a_character_cut_at_the_tail_start_is_dropped() -> None:
    assert kept_text(b"a", "é!".encode()[1:], 5).endswith("...]\n!")


def test_a_result_is_found_at_the_end_of_a_json_array_whose_start_was_left_out() -> None:
    messages = [{"type": "system", "subtype": "init", "session_id": "s-1"}]
    messages += [{"type": "assistant", "message": {"content": "x" * 100}}] * 50
    messages.append({"type": "result", "subtype": "success", "is_error": False, "result": "Done."})
    whole = json.dumps(messages)
    cut = kept_text(whole[:100].encode(), whole[-300:].encode(), len(whole) - 400)
    result = parse_result(cut, exit_code=0)
    assert result.ok and result.result == "Done."


def test_a_long_answer_is_cut_with_a_note() -> None:
    line = json.dumps({"type": "result", "subtype": "success", "is_error": False, "result": "y" * 100_000})
    result = parse_result(line, exit_code=0)
    assert result.ok and result.result is not None
    assert len(result.result) < RESULT_LIMIT + 200 and "Claude's answer was cut here" in result.result


def test_a_long_summary_is_cut_with_a_note(tmp_path: Path) -> None:
    backend = MemoryBackend()
    workspace = backend.prepare(SPEC, TaskLog(tmp_path / "log"))
    backend.write_file(workspace, SUMMARY_FILE, b"Title\n\n" + b"z" * (SUMMARY_LIMIT + 10))
    summary = take_summary(backend, workspace)
    assert summary is not None and summary.endswith("more than 64 KiB.)_")
    assert len(summary) < SUMMARY_LIMIT + 200
    assert backend.read_file(workspace, SUMMARY_FILE, 10) is None


def test_a_pr_body_never_exceeds_what_github_takes() -> None:
    task = Task(id="w-1-abc", repo="acme/widgets", issue_number=1, title="t")
    body = pr_body(task, "d" * 70_000, RunFigures.of(task, 1.0, CLAUDE), tests="### Tests\n\nfine")
    assert len(body) <= PR_BODY_LIMIT and "The description was cut here" in body
    assert body.rstrip().endswith("Fixes #1") and "### Tests" in body
