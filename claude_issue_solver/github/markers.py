"""The hidden marker every comment of ours carries, naming its task: how a comment is found again (edited,
never posted twice), and the comment the GitHub side writes itself (asking for a label again).

The texts of a run are :mod:`claude_issue_solver.run.messages`; these are below it, for the watcher, the
triggers, the publisher and the trust checks.
"""

from __future__ import annotations

import re

__all__ = ["MARKER_PREFIX", "approval_marker", "marked_task", "marker", "relabel_comment"]

MARKER_PREFIX = "<!-- claude-issue-solver:task="
_MARKER_RE = re.compile(r"<!-- claude-issue-solver:task=([A-Za-z0-9._-]+) -->")


def is_test_request(body: str | None, phrase: str) -> bool:
    """Whether a comment asks for a test run: ``@claude test`` and nothing else (any case, an optional
    full stop). "@claude test the parser too" is a follow-up, not a test run."""
    pattern = rf"\s*{re.escape(phrase)}\s+tests?\s*[.!]?\s*"
    return re.fullmatch(pattern, body or "", re.IGNORECASE) is not None


def marker(task_id: str) -> str:
    return f"{MARKER_PREFIX}{task_id} -->"


def marked_task(body: str | None) -> str | None:
    match = _MARKER_RE.search(body or "")
    return match.group(1) if match else None


def approval_marker(number: int, label_at: str) -> str:
    """The id in the hidden marker of the comment that asks for the label again (one per labelling)."""
    return f"approve-{number}-" + re.sub(r"[^0-9]", "", label_at)


def relabel_comment(labeler: str, why: str, label: str, marker_id: str) -> str:
    """A label whose approved text cannot be told: nothing runs until a writer applies it again."""
    return (
        f"🤖 Not started: @{labeler} applied the `{label}` label, but {why}, so the text that label "
        "approved cannot be told apart from later changes by people without write access. A person with "
        f"write access can remove and re-apply the `{label}` label to approve the issue as it reads now."
        f"\n\n{marker(marker_id)}"
    )
