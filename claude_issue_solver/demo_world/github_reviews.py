"""The loopback GitHub's pull-request reviews, shaped like GitHub's (a mixin of :class:`FakeGitHub`).

- ``POST /repos/{o}/{r}/pulls/{n}/reviews`` with ``{commit_id, body, event, comments: [{path, line,
  side, start_line?, start_side?, body}]}``: one review and all its inline comments at once. A comment
  on a line that is not in the pull request's diff makes the whole call ``422`` (GitHub: "Line could
  not be resolved"), and nothing is created. ``event`` COMMENT, APPROVE or REQUEST_CHANGES (absent: a
  PENDING review).
- ``GET /repos/{o}/{r}/pulls/{n}`` with ``Accept: application/vnd.github.diff``: the unified diff of
  the pull request (``base...head``); ``GET …/pulls/{n}/files`` the files listing with each ``patch``;
  ``GET …/pulls/{n}/commits`` its commits, oldest first.
- ``refs/pull/{n}/head`` in the base repository for every pull request (a fork's too), so that
  ``git fetch origin refs/pull/N/head`` over smart HTTP works as on GitHub.
- Helpers for tests: :meth:`FakeGitHub.open_fork_pull` (a person's pull request from a fork: its commits
  only under ``refs/pull/N/head``), :meth:`ReviewsApi.push_to_fork_pull`, :meth:`ReviewsApi.reviews`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["ReviewsApi", "diff_lines"]

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_EVENTS = {"COMMENT": "COMMENTED", "APPROVE": "APPROVED", "REQUEST_CHANGES": "CHANGES_REQUESTED"}


def diff_lines(diff: str) -> dict[str, dict[str, set[int]]]:
    """path -> {"RIGHT": new-side lines in its hunks, "LEFT": old-side lines}: where a comment may go."""
    files: dict[str, dict[str, set[int]]] = {}
    current: dict[str, set[int]] | None = None
    old = new = 0
    for line in diff.splitlines():
        if line.startswith("diff --git "):
            current = None
        elif line.startswith("+++ "):
            path = line[4:]
            if path != "/dev/null":
                current = files.setdefault(path.removeprefix("b/"), {"RIGHT": set(), "LEFT": set()})
        elif line.startswith("--- "):
            continue
        elif (found := _HUNK.match(line)) is not None:
            old, new = int(found[1]), int(found[3])
        elif current is not None and line[:1] in ("+", "-", " "):
            if line[:1] == "+":
                current["RIGHT"].add(new)
                new += 1
            elif line[:1] == "-":
                current["LEFT"].add(old)
                old += 1
            else:
                current["RIGHT"].add(new)
                current["LEFT"].add(old)
                old, new = old + 1, new + 1
    return files


class ReviewsApi:
    """Mixed into :class:`claude_issue_solver.demo_world.github.FakeGitHub` (uses its state and lock)."""

    # ---- test helpers ----------------------------------------------------------------------------

    def push_to_fork_pull(
        self, full_name: str, number: int, files: Mapping[str, str | bytes], *, message: str = "More"
    ) -> str:
        """A new commit on a fork's pull request (what the person's push to their fork does)."""
        fake: Any = self
        with fake._lock:
            st = fake._state(full_name)
            issue = fake._issue(st, number)
            sha = self._commit_on_pull_ref(full_name, number, files, message, parent=issue.pull.head_sha)
            issue.pull.head_sha = sha
            fake._touch(issue)
            fake._changed.notify_all()
            return sha

    def reviews(self, full_name: str, number: int) -> list[dict[str, Any]]:
        """The reviews of a pull request, oldest first."""
        fake: Any = self
        with fake._lock:
            st = fake._state(full_name)
            return [
                fake._review_json(st, r)
                for r in sorted(st.reviews.values(), key=lambda r: r.id)
                if r.number == number
            ]

    def pull_head(self, full_name: str, number: int) -> str:
        fake: Any = self
        with fake._lock:
            st = fake._state(full_name)
            return self._head_sha(st, fake._issue(st, number))

    def _commit_on_pull_ref(
        self, full_name: str, number: int, files: Mapping[str, str | bytes], message: str, *, parent: str
    ) -> str:
        fake: Any = self
        temp = f"fork-pull-{number}-tmp"
        sha: str = fake.commit_files(full_name, temp, files, message=message, parent=parent)
        repo = fake.repo(full_name)
        repo.git("update-ref", f"refs/pull/{number}/head", sha)
        repo.git("update-ref", "-d", f"refs/heads/{temp}")
        return sha

    # ---- the pull request's head, diff and refs --------------------------------------------------

    def _head_sha(self, st: Any, issue: Any) -> str:
        fake: Any = self
        return str(fake._pull_head(st.repo, issue.pull))

    def _pull_diff(self, st: Any, issue: Any) -> str:
        from claude_issue_solver.demo_world.github import _run_git

        base = st.repo.branch_sha(issue.pull.base_ref) or ""
        head = self._head_sha(st, issue)
        return _run_git(st.repo.path, "diff", "--no-color", "--no-ext-diff", f"{base}...{head}")

    # ---- routes -----------------------------------------------------------------------------------

    def review_routes(self, repo: str) -> list[tuple[str, str, Any, str]]:
        return [
            ("POST", repo + r"/pulls/(?P<number>\d+)/reviews", self._api_create_review, "user"),
            ("GET", repo + r"/pulls/(?P<number>\d+)/files", self._api_pull_files, "user"),
            ("GET", repo + r"/pulls/(?P<number>\d+)/commits", self._api_pull_commits, "user"),
        ]

    def diff_response(self, call: Any, st: Any, issue: Any) -> Any:
        """``GET /pulls/{n}`` asked for the diff (``Accept: application/vnd.github.diff``), else None."""
        from claude_issue_solver.demo_world.github import _Response

        accept = call.request.headers.get("accept", "")
        if "diff" not in accept:
            return None
        return _Response(200, self._pull_diff(st, issue).encode(), content_type="text/plain; charset=utf-8")

    def _api_pull_files(self, call: Any, owner: str, name: str, number: str) -> Any:
        fake: Any = self
        st = fake._repo_for(call, owner, name)
        issue = fake._pull_for(st, number)
        files = []
        for chunk in re.split(r"(?m)^(?=diff --git )", self._pull_diff(st, issue)):
            if not chunk.startswith("diff --git "):
                continue
            path = next((ln[6:] for ln in chunk.splitlines() if ln.startswith("+++ b/")), None)
            old = next((ln[6:] for ln in chunk.splitlines() if ln.startswith("--- a/")), None)
            patch = chunk[chunk.find("@@") :] if "@@" in chunk else ""
            lines = patch.splitlines()
            files.append(
                {
                    "filename": path or old or "",
                    "status": "removed" if path is None else ("added" if old is None else "modified"),
                    "additions": sum(1 for ln in lines if ln.startswith("+")),
                    "deletions": sum(1 for ln in lines if ln.startswith("-")),
                    "changes": sum(1 for ln in lines if ln[:1] in "+-"),
                    "patch": patch,
                }
            )
        return fake._paginate(call, files, lambda f: f)

    def _api_pull_commits(self, call: Any, owner: str, name: str, number: str) -> Any:
        fake: Any = self
        st = fake._repo_for(call, owner, name)
        issue = fake._pull_for(st, number)
        base = st.repo.branch_sha(issue.pull.base_ref) or ""
        head = self._head_sha(st, issue)
        out = st.repo.git("log", "--reverse", "--format=%H%x00%s%x00%an", f"{base}..{head}")
        commits = []
        for line in out.splitlines():
            sha, subject, author = line.split("\0")
            commits.append({"sha": sha, "commit": {"message": subject, "author": {"name": author}}})
        return fake._paginate(call, commits, lambda c: c)

    def _api_create_review(self, call: Any, owner: str, name: str, number: str) -> Any:
        from claude_issue_solver.demo_world.github import _HttpError, _Review

        fake: Any = self
        st = fake._repo_for(call, owner, name)
        issue = fake._pull_for(st, number)
        data = call.json_object()
        event = data.get("event")
        if event is not None and event not in _EVENTS:
            raise _HttpError(422, "Unprocessable Entity", errors=[f"Invalid event {event!r}"])  # type: ignore[list-item]
        body = data.get("body") or ""
        comments = data.get("comments") or []
        if not isinstance(comments, list):
            raise _HttpError(422, "Invalid request.", errors=["comments is not an array"])  # type: ignore[list-item]
        if event in ("COMMENT", "REQUEST_CHANGES") and not body and not comments:
            raise _HttpError(422, "Unprocessable Entity", errors=["Body is required"])  # type: ignore[list-item]
        if event in ("APPROVE", "REQUEST_CHANGES") and issue.user.lower() == call.identity.login.lower():
            raise _HttpError(422, "Unprocessable Entity", errors=["Can not approve your own pull request"])  # type: ignore[list-item]
        lines = diff_lines(self._pull_diff(st, issue))
        for comment in comments:
            if not isinstance(comment, dict) or not comment.get("path") or not comment.get("body"):
                raise _HttpError(422, "Unprocessable Entity", errors=["Path and body are required"])  # type: ignore[list-item]
            side = comment.get("side") or "RIGHT"
            wanted = [comment.get("line"), comment.get("start_line")]
            where = lines.get(str(comment["path"]), {}).get(side, set())
            if comment.get("line") is None or any(w is not None and w not in where for w in wanted):
                raise _HttpError(
                    422,
                    "Unprocessable Entity",
                    errors=["Line could not be resolved"],  # type: ignore[list-item]
                )
        head = self._head_sha(st, issue)
        commit_id = str(data.get("commit_id") or head)
        now = fake._touch(issue)
        association = "OWNER" if call.identity.login.lower() == st.repo.owner.lower() else "NONE"
        state = _EVENTS.get(event or "", "PENDING")
        review = _Review(
            next(fake._ids), issue.number, body, call.identity.login, state, commit_id, now, association
        )
        st.reviews[review.id] = review
        for comment in comments:
            made = fake._new_review_comment(
                st,
                issue,
                str(comment["body"]),
                call.identity.login,
                association,
                str(comment["path"]),
                int(comment["line"]),
                None,
                None,
            )
            made.review_id = review.id
            made.commit_id = commit_id
            made.side = comment.get("side") or "RIGHT"
            made.start_line = comment.get("start_line")
        return fake._json(fake._review_json(st, review))
