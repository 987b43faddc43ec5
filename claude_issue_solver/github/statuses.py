"""The test gate's verdict as a GitHub commit status on the pushed head (context
``claude-issue-solver/tests``), where branch protection, the PR's checks list and other tools look.

``POST /repos/{o}/{r}/statuses/{sha}`` with ``state`` (success | failure | error | pending), ``context``,
``description`` (at most 140 characters) and ``target_url``. The statuses API works with a token
("Commit statuses: write", classic ``repo:status``) and with a GitHub App alike; check runs would need
an App. Each run posts on its own head, so a follow-up or a retry refreshes it (GitHub shows the newest
status of a context). Best effort: the PR's description already tells the verdict, so a refused status
is told in the task log and never fails the task.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from claude_issue_solver.github.client import GitHubClient

__all__ = ["CONTEXT", "DESCRIPTION_LIMIT", "post", "status_for"]

CONTEXT = "claude-issue-solver/tests"
DESCRIPTION_LIMIT = 140  # GitHub refuses a longer description

# The verdicts of test_results.judge, as a status: the change is judged, not the environment.
_STATES = {
    "green": "success",
    "known": "success",  # only tests that failed before the change: the change broke nothing
    "red": "failure",
    "unchanged": "failure",  # red before and after, and nothing tells them apart
    "not-run": "error",  # the tests could not run here: not the change's fault, not a pass either
}


def status_for(tests: Mapping[str, Any]) -> tuple[str, str] | None:
    """(state, description) for a recorded test report (``task.meta["tests"]``); None when there is no
    verdict to post (no test command, the change was never tested)."""
    verdict = str(tests.get("verdict") or "")
    state = _STATES.get(verdict)
    if state is None:
        return None
    judgement = tests.get("judgement") or {}
    rounds = tests.get("rounds") or []
    results = (rounds[-1].get("results") if rounds else None) or {}
    counts = _counts(results)
    fixes = int(tests.get("fixes") or 0)
    after = f" after {fixes} fix round{'s' if fixes != 1 else ''}" if fixes else ""
    if verdict == "green":
        text = f"Tests pass{after}" + (f": {counts}" if counts else "")
    elif verdict == "known":
        known = len(judgement.get("known") or [])
        text = f"No new failures: {counts}; {known} failing before this change too"
    elif verdict == "red":
        new = [str(f.get("name", "")) for f in judgement.get("new") or []]
        if new:
            text = f"{len(new)} new failing test{'s' if len(new) != 1 else ''}{after}: " + ", ".join(new)
        else:
            text = f"Tests fail{after}" + (f": {counts}" if counts else f" ({judgement.get('why') or 'red'})")
    elif verdict == "unchanged":
        text = "Red before and after the change; no per-test results to compare them"
    else:
        text = f"Tests could not run: {judgement.get('why') or 'the environment failed'}"
    return state, _cut(text)


def _counts(results: Mapping[str, Any]) -> str:
    if not results:
        return ""
    text = f"{results.get('passed', 0)} passed, {results.get('failed', 0)} failed"
    return text + (f", {results['skipped']} skipped" if results.get("skipped") else "")


def _cut(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= DESCRIPTION_LIMIT else text[: DESCRIPTION_LIMIT - 1].rstrip() + "…"


def post(
    client: GitHubClient, repo: str, sha: str, tests: Mapping[str, Any], target_url: str | None = None
) -> tuple[str, str] | None:
    """Post the status for ``tests`` on ``sha``; what was posted, None when there was nothing to post.
    Raises GitHubError (the caller logs it and goes on)."""
    found = status_for(tests)
    if found is None:
        return None
    state, description = found
    body: dict[str, Any] = {"state": state, "context": CONTEXT, "description": description}
    if target_url:
        body["target_url"] = target_url
    client.request(repo, "POST", f"/repos/{repo}/statuses/{sha}", body=body, retry=True)
    return found
