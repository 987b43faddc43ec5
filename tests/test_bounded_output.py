"""Bounded process output without a backend: the keeper, the note, and reading a result from a cut end."""

from __future__ import annotations

import json

from claude_issue_solver.agent import parse_result
from claude_issue_solver.backends.base import OutputBounds, OutputKeeper, kept_text


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
