"""Names the daemon, the agent and the pull request agree on, in one place nothing else depends on."""

from __future__ import annotations

__all__ = ["LOG_TAIL_LINES", "SUMMARY_FILE", "SUMMARY_LIMIT", "branch_for"]

# The agent writes the pull request's title and description here; it is read, removed, never committed.
SUMMARY_FILE = ".claude-pr-summary.md"
SUMMARY_LIMIT = 64 * 1024  # read no more of it than this: the agent could write gigabytes
LOG_TAIL_LINES = 30  # how much of a failed process's output an error message quotes


def branch_for(issue_number: int) -> str:
    """One stable branch per issue: re-runs continue it instead of piling up -try2, -try3."""
    return f"claude/issue-{issue_number}"
