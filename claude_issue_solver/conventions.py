"""Names the daemon, the agent and the pull request agree on, in one place nothing else depends on."""

from __future__ import annotations

__all__ = ["LOG_TAIL_LINES", "SUMMARY_FILE", "SUMMARY_LIMIT", "branch_for", "format_usd"]

# The agent writes the pull request's title and description here; it is read, removed, never committed.
SUMMARY_FILE = ".claude-pr-summary.md"
SUMMARY_LIMIT = 64 * 1024  # read no more of it than this: the agent could write gigabytes
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
