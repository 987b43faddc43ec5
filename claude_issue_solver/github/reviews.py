"""A pull request's review on GitHub: what is there to review, what we said already, one review posted.

- :func:`pull` — the pull request (head commit, title, description; a fork's too);
- :func:`files` and :func:`unified_diff` — its files listing (``GET …/pulls/{n}/files``, each with its
  ``patch``) and the diff made of it; :func:`commits_since` — its commits after a given one;
- :func:`our_reviews` — what our earlier reviews of it said: the heads they reviewed, the keys of the
  findings posted (the hidden per-finding markers in review bodies and review comments), our review of
  a task (found again by the task's marker: a resumed publish never posts twice);
- :func:`post_review` — ONE ``POST …/pulls/{n}/reviews`` with ``event: COMMENT`` (never APPROVE or
  REQUEST_CHANGES) and every inline comment; when GitHub refuses the comments (``422``: a line it
  cannot anchor), the review is posted again with them in its body, never not at all.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from claude_issue_solver.github.client import GitHubClient, GitHubError
from claude_issue_solver.github.markers import marked_task

__all__ = [
    "FINDING_PREFIX",
    "Pull",
    "Reviewed",
    "commits_since",
    "files",
    "finding_marker",
    "our_reviews",
    "post_review",
    "pull",
    "unified_diff",
]

log = logging.getLogger(__name__)

FINDING_PREFIX = "<!-- claude-issue-solver:finding="
_FINDING_RE = re.compile(r"<!-- claude-issue-solver:finding=([0-9a-f]{8,40}) -->")
_HEAD_RE = re.compile(r"<!-- claude-issue-solver:reviewed=([0-9a-f]{7,40}) -->")
EVENT = "COMMENT"  # the only event we ever send: no approval, no block


def finding_marker(key: str) -> str:
    return f"{FINDING_PREFIX}{key} -->"


def head_marker(sha: str) -> str:
    return f"<!-- claude-issue-solver:reviewed={sha} -->"


@dataclass(frozen=True)
class Pull:
    number: int
    title: str
    body: str
    author: str
    head_sha: str
    head_label: str
    base_ref: str
    state: str
    draft: bool
    url: str


def pull(client: GitHubClient, repo: str, number: int) -> Pull:
    data = client.request(repo, "GET", f"/repos/{repo}/pulls/{number}", retry=True).data or {}
    head, base = data.get("head") or {}, data.get("base") or {}
    return Pull(
        number=number,
        title=data.get("title") or "",
        body=data.get("body") or "",
        author=(data.get("user") or {}).get("login", ""),
        head_sha=head.get("sha") or "",
        head_label=head.get("label") or head.get("ref") or "",
        base_ref=base.get("ref") or "",
        state=data.get("state") or "open",
        draft=bool(data.get("draft")),
        url=data.get("html_url") or "",
    )


def files(client: GitHubClient, repo: str, number: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for page in client.paginate(repo, f"/repos/{repo}/pulls/{number}/files"):
        out.extend(page.data or [])
    return out


def unified_diff(listing: list[dict[str, Any]]) -> str:
    """The diff of a files listing (a file without a ``patch``, binary or too large, is named only)."""
    parts = []
    for item in listing:
        name = item.get("filename") or ""
        patch = item.get("patch")
        head = f"diff --git a/{name} b/{name}\n--- a/{name}\n+++ b/{name}\n"
        parts.append(head + (patch.rstrip("\n") + "\n" if patch else "(no textual diff)\n"))
    return "".join(parts)


def commits_since(client: GitHubClient, repo: str, number: int, since: str | None) -> list[dict[str, str]]:
    """The pull request's commits after ``since`` (all when it is not among them: a force-push)."""
    commits: list[dict[str, str]] = []
    for page in client.paginate(repo, f"/repos/{repo}/pulls/{number}/commits"):
        for c in page.data or []:
            message = ((c.get("commit") or {}).get("message") or "").splitlines()
            commits.append({"sha": c.get("sha", ""), "subject": message[0] if message else ""})
    shas = [c["sha"] for c in commits]
    if since and since in shas:
        return commits[shas.index(since) + 1 :]
    return commits


@dataclass
class Reviewed:
    """What our earlier reviews of a pull request said."""

    heads: list[str] = field(default_factory=list)  # the heads reviewed, oldest first
    findings: set[str] = field(default_factory=set)  # the keys of every finding posted
    by_task: dict[str, dict[str, Any]] = field(default_factory=dict)  # task id -> its review

    @property
    def last_head(self) -> str | None:
        return self.heads[-1] if self.heads else None


def our_reviews(client: GitHubClient, repo: str, number: int) -> Reviewed:
    """Read from GitHub (the record): our reviews (by their markers) and our review comments."""
    seen = Reviewed()
    for page in client.paginate(repo, f"/repos/{repo}/pulls/{number}/reviews"):
        for review in page.data or []:
            body = review.get("body") or ""
            task = marked_task(body)
            if task is None:
                continue
            seen.by_task[task] = review
            head = _HEAD_RE.search(body)
            if head is not None:
                seen.heads.append(head.group(1))
            seen.findings.update(_FINDING_RE.findall(body))
    for page in client.paginate(repo, f"/repos/{repo}/pulls/{number}/comments"):
        for comment in page.data or []:
            seen.findings.update(_FINDING_RE.findall(comment.get("body") or ""))
    return seen


def post_review(
    client: GitHubClient,
    repo: str,
    number: int,
    *,
    commit_id: str,
    body: str,
    comments: list[dict[str, Any]],
    moved: str = "",
) -> tuple[dict[str, Any], bool]:
    """One review with every comment; (the review, whether the comments had to go into the body).

    ``moved`` is the heading the body gets above comments GitHub refused.
    """
    path = f"/repos/{repo}/pulls/{number}/reviews"
    payload: dict[str, Any] = {"commit_id": commit_id, "body": body, "event": EVENT, "comments": comments}
    try:
        return client.request(repo, "POST", path, body=payload).data or {}, False
    except GitHubError as exc:
        if exc.status != 422 or not comments:
            raise
        log.warning(
            "%s#%s: GitHub refused the review's inline comments (%s); posting them in its body",
            repo,
            number,
            exc,
        )
    inline = "\n\n".join(f"**{c['path']}:{c['line']}**\n\n{c['body']}" for c in comments)
    again = {"commit_id": commit_id, "body": f"{body}\n\n{moved}\n\n{inline}", "event": EVENT}
    return client.request(repo, "POST", path, body=again).data or {}, True
