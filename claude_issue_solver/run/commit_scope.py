"""What a task commits: the agent's change, never what setup and the test runs made in the tree.

The test gate records, before the agent starts, every untracked and ignored path of the tree (what
setup installed there, a restored setup cache, the baseline's caches and results) and, around each test
run, the paths that run added (``TestReport.made``). Those git would commit (``made_shown``: the ignored
ones are left out by git itself), the summary file and the results directory
of the detected pytest are left out of the commit, given to the backend as ``PushRequest.exclude`` (git
pathspecs ``:(exclude,literal)``: a directory leaves out everything under it). The PR's Tests section
names the ones git would have committed (``made_shown``: not ignored by the repository's
``.gitignore``; :func:`messages.made_note`).

A commit that is still implausibly large -- more changed files than ``COMMIT_MAX_FILES`` or more added
lines than ``COMMIT_MAX_LINES`` (git's diffstat, which every backend gives without reading each file)
-- is refused before the push, with a comment that says so.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from claude_issue_solver.backends.base import Changes
from claude_issue_solver.config import Config
from claude_issue_solver.run.policy import NEVER_COMMITTED
from claude_issue_solver.run.test_gate import RESULTS_DIR

__all__ = ["excluded", "too_large"]

_INSERTIONS = re.compile(r"(\d+) insertions?\(\+\)")


def excluded(meta: Mapping[str, Any]) -> tuple[str, ...]:
    """``PushRequest.exclude`` for a task (its ``meta``): the summary, the results directory, and what
    setup and the test runs made in the tree."""
    tests = meta.get("tests") if isinstance(meta.get("tests"), Mapping) else {}
    # Only what git would commit: the ignored ones stay out anyway, and `git add` refuses a pathspec
    # that names an ignored path, even an excluding one.
    made = [str(p).rstrip("/") for p in (tests or {}).get("made_shown") or [] if str(p).strip("/")]
    extra = (RESULTS_DIR, *made) if tests and (tests.get("plan") or {}).get("test") else tuple(made)
    return tuple(dict.fromkeys((*NEVER_COMMITTED, *extra)))


def too_large(changes: Changes, config: Config) -> str | None:
    """Why the change is too large to be pushed as it is, else None."""
    files = len(changes.files)
    if files > config.commit_max_files:
        return f"the change holds {files} changed files, more than COMMIT_MAX_FILES={config.commit_max_files}"
    found = _INSERTIONS.search(changes.diffstat.splitlines()[-1] if changes.diffstat else "")
    lines = int(found.group(1)) if found else 0
    if lines > config.commit_max_lines:
        return f"the change adds {lines} lines, more than COMMIT_MAX_LINES={config.commit_max_lines}"
    return None
