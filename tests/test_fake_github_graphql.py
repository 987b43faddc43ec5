"""The loopback GitHub's GraphQL endpoint, through real clients: PyGithub's draft mutations, raw POSTs.

The REST API cannot change an open pull request's draft state; GitHub's GraphQL API can, with
``markPullRequestReadyForReview`` and ``convertPullRequestToDraft``. These tests pin the fake's answers
to the shapes PyGithub reads (``{"data": …}``, ``{"errors": […]}``, a 401 for a bad credential).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from github import Auth, BadCredentialsException, Github, GithubException, UnknownObjectException

from claude_issue_solver.demo_world.github import GRAPHQL_PATH, FakeGitHub

REPO = "octo/demo"
TOKEN = "test-token"
FAST = {"retry": None, "timeout": 10, "seconds_between_requests": 0, "seconds_between_writes": 0}


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeGitHub]:
    with FakeGitHub(tmp_path / "github", tokens=(TOKEN,)) as server:
        server.create_repo(REPO, {"README.md": "# demo\n"})
        server.commit_files(REPO, "claude/issue-1", {"fix.txt": "fixed\n"}, message="fix")
        yield server


@pytest.fixture
def gh(fake: FakeGitHub) -> Iterator[Github]:
    g = Github(auth=Auth.Token(TOKEN), base_url=fake.api_url, **FAST)  # type: ignore[arg-type]
    yield g
    g.close()


def graphql(
    fake: FakeGitHub, query: str, variables: dict | None = None, token: str = TOKEN
) -> requests.Response:
    return requests.post(
        fake.web_url + GRAPHQL_PATH,
        json={"query": query, "variables": variables or {}},
        headers={"Authorization": f"bearer {token}"},
        timeout=10,
    )


def test_pygithub_turns_a_draft_ready_and_back(fake: FakeGitHub, gh: Github) -> None:
    pr = gh.get_repo(REPO).create_pull(base="main", head="claude/issue-1", title="Fix #1", draft=True)
    assert pr.draft is True
    answer = pr.mark_ready_for_review()
    assert answer["pullRequest"] == {"isDraft": False}  # only the fields PyGithub asked for
    assert pr.draft is False and fake.pulls(REPO)[0]["draft"] is False
    assert gh.get_repo(REPO).get_pull(pr.number).draft is False  # the REST view follows
    pr.convert_to_draft()
    assert pr.draft is True and fake.pulls(REPO)[0]["draft"] is True
    posts = [r for r in fake.requests if r.path == GRAPHQL_PATH]
    assert len(posts) == 2 and all(r.status == 200 and r.kind == "graphql" for r in posts)
    assert not any(r.counted for r in posts)  # GraphQL's own rate limit, not the core bucket


def test_a_mutation_answers_exactly_its_selection(fake: FakeGitHub, gh: Github) -> None:
    pr = gh.get_repo(REPO).create_pull(base="main", head="claude/issue-1", title="Fix #1", draft=True)
    query = (
        "mutation Ready($in: MarkPullRequestReadyForReviewInput!) {\n"
        "  markPullRequestReadyForReview(input: $in) {\n"
        "    clientMutationId pullRequest { number isDraft state }\n"
        "  }\n"
        "}"
    )
    answer = graphql(fake, query, {"in": {"pullRequestId": pr.node_id, "clientMutationId": "c1"}})
    assert answer.status_code == 200
    assert answer.json() == {
        "data": {
            "markPullRequestReadyForReview": {
                "clientMutationId": "c1",
                "pullRequest": {"number": pr.number, "isDraft": False, "state": "OPEN"},
            }
        }
    }


def test_errors_are_shaped_like_githubs(fake: FakeGitHub, gh: Github) -> None:
    pr = gh.get_repo(REPO).create_pull(base="main", head="claude/issue-1", title="Fix #1")
    unknown = graphql(
        fake,
        "mutation M($input: ConvertPullRequestToDraftInput!) { convertPullRequestToDraft(input: $input) "
        "{ pullRequest { isDraft } } }",
        {"input": {"pullRequestId": "PR_nope"}},
    )
    body = unknown.json()
    assert unknown.status_code == 200 and body["data"] == {"convertPullRequestToDraft": None}
    assert body["errors"][0]["type"] == "NOT_FOUND" and "PR_nope" in body["errors"][0]["message"]
    other = graphql(
        fake, "mutation M($input: MergePullRequestInput!) { mergePullRequest(input: $input) { x } }"
    )
    assert (
        other.status_code == 200
        and "doesn't exist on type 'Mutation'" in other.json()["errors"][0]["message"]
    )
    field = graphql(
        fake,
        "mutation M($input: ConvertPullRequestToDraftInput!) { convertPullRequestToDraft(input: $input) "
        "{ pullRequest { nope } } }",
        {"input": {"pullRequestId": pr.node_id}},
    )
    assert "Field 'nope' doesn't exist on type 'PullRequest'" in field.json()["errors"][0]["message"]
    assert "data" not in field.json()
    missing = graphql(
        fake,
        "mutation M($input: ConvertPullRequestToDraftInput!) { convertPullRequestToDraft(input: $input) "
        "{ clientMutationId } }",
        {"input": {}},
    )
    assert "invalid value for pullRequestId" in missing.json()["errors"][0]["message"]
    bad = graphql(
        fake, "mutation M($input: X!) { convertPullRequestToDraft(input: $input) { x } }", token="nope"
    )
    assert bad.status_code == 401 and bad.json()["message"] == "Bad credentials"
    assert fake.pulls(REPO)[0]["draft"] is False  # nothing above changed it


def test_pygithub_raises_its_own_exceptions(fake: FakeGitHub, gh: Github) -> None:
    pr = gh.get_repo(REPO).create_pull(base="main", head="claude/issue-1", title="Fix #1")
    stale = gh.create_from_raw_data(type(pr), {**pr.raw_data, "node_id": "PR_gone"})
    with pytest.raises(UnknownObjectException):
        stale.convert_to_draft()
    outsider = Github(auth=Auth.Token("wrong"), base_url=fake.api_url, **FAST)  # type: ignore[arg-type]
    with pytest.raises(BadCredentialsException):
        outsider.create_from_raw_data(type(pr), pr.raw_data).convert_to_draft()
    fake.fail_next(GRAPHQL_PATH, 502)
    with pytest.raises(GithubException) as failing:
        pr.convert_to_draft()
    assert failing.value.status == 502


EDITS = """query($owner: String!, $name: String!, $number: Int!) {
  repository(owner: $owner, name: $name) {
    issue(number: $number) {
      lastEditedAt editor { login }
      userContentEdits(first: 10) { totalCount nodes { editedAt editor { login } diff deletedAt } }
    }
  }
}"""


def test_an_issues_edit_history_as_github_shapes_it(fake: FakeGitHub) -> None:
    fake.create_issue(REPO, "Title", "as created", user="outsider")
    where = {"owner": "octo", "name": "demo", "number": 1}
    never = graphql(fake, EDITS, where).json()["data"]["repository"]["issue"]
    assert never == {"lastEditedAt": None, "editor": None, "userContentEdits": {"totalCount": 0, "nodes": []}}
    fake.edit_issue(REPO, 1, body="second", actor="outsider")
    fake.edit_issue(REPO, 1, body="third", actor="octo")
    fake.edit_issue(REPO, 1, title="Renamed", actor="octo")  # a title is no body edit: a renamed event
    issue = graphql(fake, EDITS, where).json()["data"]["repository"]["issue"]
    nodes = issue["userContentEdits"]["nodes"]
    # Newest first, each the whole text of its revision; the first edit also recorded the created text.
    assert [(n["editor"]["login"], n["diff"]) for n in nodes] == [
        ("octo", "third"),
        ("outsider", "second"),
        ("outsider", "as created"),
    ]
    assert issue["userContentEdits"]["totalCount"] == 3 and issue["editor"] == {"login": "octo"}
    assert issue["lastEditedAt"] == nodes[0]["editedAt"]
    [renamed] = [e for e in fake.events(REPO, 1) if e["event"] == "renamed"]
    assert renamed["rename"] == {"from": "Title", "to": "Renamed"} and renamed["actor"]["login"] == "octo"
    missing = graphql(fake, EDITS, {**where, "number": 9}).json()
    assert missing["data"] == {"repository": {"issue": None}}
    assert missing["errors"][0]["type"] == "NOT_FOUND" and missing["errors"][0]["path"] == [
        "repository",
        "issue",
    ]
    unpaged = graphql(fake, EDITS.replace("(first: 10)", ""), where).json()
    assert "data" not in unpaged and "`first` or `last`" in unpaged["errors"][0]["message"]
    unknown = graphql(fake, EDITS.replace("diff", "patch"), where).json()
    assert unknown["errors"][0]["message"] == "Field 'patch' doesn't exist on type 'UserContentEdit'"
