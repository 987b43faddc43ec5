"""Writes to GitHub: issue comments and pull requests, each idempotent.

Nothing here pushes (the pipeline does). Every write first looks for what it would create: our comment
by its hidden marker, our pull request by its head branch. Re-running a publish step after a crash
therefore edits what is there instead of adding a second comment or a second pull request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from claude_issue_solver.github.client import GitHubClient, GitHubError
from claude_issue_solver.github.markers import marker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PullRequest:
    url: str
    number: int
    created: bool  # False when an open PR from the branch existed and was updated
    draft: bool = False  # as it was found (or created)
    node_id: str = ""  # what GraphQL knows it by (its draft state changes only there)


@dataclass(frozen=True)
class PullState:
    """The newest pull request from a branch, whatever its state."""

    url: str
    number: int
    state: str  # open | closed
    merged: bool
    title: str


class Publisher:
    def __init__(self, client: GitHubClient) -> None:
        self.client = client

    def upsert_comment(
        self, repo: str, number: int, task_id: str, body: str, comment_id: int | None = None
    ) -> int:
        """Edit the task's comment (known by id, or found by its marker); post it if there is none."""
        if marker(task_id) not in body:
            body = f"{body}\n\n{marker(task_id)}"
        if comment_id is None:
            comment_id = self.find_comment(repo, number, task_id)
        if comment_id is not None:
            try:
                self.client.request(
                    repo,
                    "PATCH",
                    f"/repos/{repo}/issues/comments/{comment_id}",
                    body={"body": body},
                    retry=True,
                )
                return comment_id
            except GitHubError as exc:
                if exc.status != 404:
                    raise
                log.info("comment %s on %s#%s is gone; posting a new one", comment_id, repo, number)
        created = self.client.request(
            repo, "POST", f"/repos/{repo}/issues/{number}/comments", body={"body": body}, retry=True
        ).data
        return int(created["id"])

    def find_comment(self, repo: str, number: int, task_id: str) -> int | None:
        wanted = marker(task_id)
        found = None
        for comment in self.client.comments(repo, number):
            if wanted in (comment.get("body") or ""):
                found = int(comment["id"])
        return found

    def find_open_pr(self, repo: str, branch: str) -> PullRequest | None:
        owner = repo.split("/", 1)[0]
        pulls = self.client.request(
            repo,
            "GET",
            f"/repos/{repo}/pulls",
            params={"state": "open", "head": f"{owner}:{branch}"},
            retry=True,
        ).data
        for pull in pulls or []:
            if (pull.get("head") or {}).get("ref") == branch:
                return _pull_request(pull, created=False)
        return None

    def open_or_update_pr(
        self, repo: str, *, branch: str, base: str, title: str, body: str, draft: bool = False
    ) -> PullRequest:
        """Open a PR from ``branch``, or update the open one from it: never a second PR for a branch.

        ``draft`` applies to a new PR (red tests); an open one keeps its state here (the REST API
        cannot change it: :meth:`set_draft` does), its title and body say how the tests went.
        """
        existing = self.find_open_pr(repo, branch)
        if existing is None:
            try:
                data = self.client.request(
                    repo,
                    "POST",
                    f"/repos/{repo}/pulls",
                    body={"title": title, "body": body, "head": branch, "base": base, "draft": draft},
                    retry=True,
                ).data
                return _pull_request(data, created=True)
            except GitHubError as exc:
                # Someone (or our previous life) opened it between our look and our create.
                if exc.status != 422 or "already exists" not in str(exc).lower():
                    raise
                existing = self.find_open_pr(repo, branch)
                if existing is None:
                    raise
        self.client.request(
            repo,
            "PATCH",
            f"/repos/{repo}/pulls/{existing.number}",
            body={"title": title, "body": body},
            retry=True,
        )
        return existing

    def set_draft(self, repo: str, pr: PullRequest, draft: bool) -> bool:
        """Make an open pull request a draft, or ready for review (GitHub's GraphQL API); its new state."""
        return self.client.set_draft(
            repo, {"node_id": pr.node_id, "number": pr.number, "html_url": pr.url}, draft
        )

    def find_pr(self, repo: str, branch: str) -> PullState | None:
        """The newest pull request from ``branch`` in any state (a follow-up must know if it was merged)."""
        ours = pulls_from(self.client, repo, branch)
        if not ours:
            return None
        pull = max(ours, key=lambda p: int(p["number"]))
        return PullState(
            url=pull["html_url"],
            number=int(pull["number"]),
            state=str(pull.get("state") or "open"),
            merged=bool(pull.get("merged") or pull.get("merged_at")),
            title=str(pull.get("title") or ""),
        )

    def upsert_review_reply(
        self, repo: str, pr_number: int, thread: int, task_id: str, body: str, reply_id: int | None = None
    ) -> int:
        """The task's one reply in a review thread: edited in place, found by its marker, else posted."""
        if marker(task_id) not in body:
            body = f"{body}\n\n{marker(task_id)}"
        if reply_id is None:
            for page in self.client.paginate(repo, f"/repos/{repo}/pulls/{pr_number}/comments"):
                for comment in page.data or []:
                    if marker(task_id) in (comment.get("body") or ""):
                        reply_id = int(comment["id"])
        if reply_id is not None:
            try:
                self.client.request(
                    repo, "PATCH", f"/repos/{repo}/pulls/comments/{reply_id}", body={"body": body}, retry=True
                )
                return reply_id
            except GitHubError as exc:
                if exc.status != 404:
                    raise
        created = self.client.request(
            repo,
            "POST",
            f"/repos/{repo}/pulls/{pr_number}/comments/{thread}/replies",
            body={"body": body},
            retry=True,
        ).data
        return int(created["id"])


def pulls_from(client: GitHubClient, repo: str, branch: str) -> list[dict[str, Any]]:
    """Every pull request from ``branch`` of ``repo`` itself, in any state, newest first."""
    owner = repo.split("/", 1)[0]
    pulls = client.request(
        repo,
        "GET",
        f"/repos/{repo}/pulls",
        params={"state": "all", "head": f"{owner}:{branch}", "sort": "created", "direction": "desc"},
        retry=True,
    ).data
    return [p for p in pulls or [] if (p.get("head") or {}).get("ref") == branch]


def _pull_request(pull: dict[str, Any], *, created: bool) -> PullRequest:
    return PullRequest(
        pull["html_url"],
        int(pull["number"]),
        created=created,
        draft=bool(pull.get("draft")),
        node_id=str(pull.get("node_id") or ""),
    )
