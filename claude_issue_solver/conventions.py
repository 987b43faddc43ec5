"""Names the daemon, the agent and the pull request agree on, in one place nothing else depends on."""

from __future__ import annotations

__all__ = [
    "LOG_TAIL_LINES",
    "PR_BODY_LIMIT",
    "RESULT_LIMIT",
    "SUMMARY_FILE",
    "SUMMARY_LIMIT",
    "branch_for",
    "cut_with_note",
    "format_usd",
]

# The agent writes the pull request's title and description here; it is read, removed, never committed.
SUMMARY_FILE = ".claude-pr-summary.md"
SUMMARY_LIMIT = 64 * 1024  # read no more of it than this: the agent could write gigabytes
PR_BODY_LIMIT = 65536  # characters GitHub takes in a pull request's (or a comment's) body
RESULT_LIMIT = 16 * 1024  # characters of the agent's final answer kept on the task and quoted in comments
LOG_TAIL_LINES = 30  # how much of a failed process's output an error message quotes


def branch_for(issue_number: int) -> str:
    """One stable branch per issue: re-runs continue it instead of piling up -try2, -try3."""
    return f"claude/issue-{issue_number}"


def format_usd(amount: float) -> str:
    """Dollars as every text shows them: in cents, except that a run cheaper than a cent shows two
    significant digits, so $0.0019 does not read as "$0.00" (nor as free)."""
    if 0 < amount < 0.01:
        return f"${amount:.2g}"
    return f"${amount:.2f}"


def cut_with_note(text: str, limit: int, what: str) -> str:
    """``text`` when it fits in ``limit`` characters, else its start and a note saying it was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit].rstrip()}\n\n_({what} was cut here: it was {len(text)} characters, over {limit}.)_"


# The setup cache's states in a task's record (test_gate's TestReport.cache; the metrics read them), each
# recorded before the act it names (a resumed task reads where it was).
RESTORING, HIT, MISS, SAVING, SAVED, NOT_SAVED, OFF = (
    "restoring",
    "hit",
    "miss",
    "saving",
    "saved",
    "not saved",
    "off",
)
