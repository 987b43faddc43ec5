"""The loopback GitHub, exercised only through real clients: PyGithub for the API, git for HTTP.

If these pass, other tests can trust that what works against the fake is what PyGithub and git do
against GitHub (pagination, conditional requests, exceptions, credential prompts, pushes).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from github import (
    Auth,
    BadCredentialsException,
    Github,
    GithubException,
    GithubIntegration,
    GithubRetry,
    RateLimitExceededException,
    UnknownObjectException,
)

from claude_issue_solver.demo_world.github import FakeGitHub

REPO = "octo/demo"
TOKEN = "test-token"


class Clock:
    """A clock the test moves by hand, so ``updated_at``/``since`` checks need no sleeping."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: int) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fake(tmp_path: Path, clock: Clock) -> Iterator[FakeGitHub]:
    with FakeGitHub(tmp_path / "github", tokens=(TOKEN,), clock=clock) as server:
        server.create_repo(REPO, {"README.md": "# demo\n", "src/app.py": "print('hi')\n"})
        yield server


# PyGithub throttles itself by default (0.25 s between requests, 1 s between writes): turn that off.
FAST: dict[str, Any] = {
    "retry": None,
    "timeout": 10,
    "seconds_between_requests": 0,
    "seconds_between_writes": 0,
}


def client(fake: FakeGitHub, token: str = TOKEN, **kwargs: Any) -> Github:
    return Github(auth=Auth.Token(token), base_url=fake.api_url, **{**FAST, **kwargs})


@pytest.fixture
def gh(fake: FakeGitHub) -> Iterator[Github]:
    g = client(fake)
    yield g
    g.close()


# --------------------------------------------------------------------------------------------------
# git helpers: credentials only through GIT_ASKPASS, never in the URL


@pytest.fixture
def git_env(tmp_path: Path) -> dict[str, str]:
    askpass = tmp_path / "askpass.sh"
    askpass.write_text(
        '#!/bin/sh\ncase "$1" in\n  Username*) echo x-access-token ;;\n  *) echo "$FAKE_GH_TOKEN" ;;\nesac\n'
    )
    askpass.chmod(askpass.stat().st_mode | stat.S_IXUSR)
    home = tmp_path / "home"
    home.mkdir()
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": str(askpass),
        "FAKE_GH_TOKEN": TOKEN,
        "GIT_AUTHOR_NAME": "Claude",
        "GIT_AUTHOR_EMAIL": "claude@example.invalid",
        "GIT_COMMITTER_NAME": "Claude",
        "GIT_COMMITTER_EMAIL": "claude@example.invalid",
        "NO_PROXY": "127.0.0.1",
        "no_proxy": "127.0.0.1",
    }


def git(
    env: dict[str, str], *args: str, cwd: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def clone_and_commit(
    fake: FakeGitHub, env: dict[str, str], dest: Path, branch: str, files: dict[str, bytes]
) -> Path:
    git(env, "clone", "--quiet", fake.repo(REPO).clone_url, str(dest))
    git(env, "checkout", "--quiet", "-b", branch, cwd=dest)
    for name, content in files.items():
        (dest / name).write_bytes(content)
    git(env, "add", "-A", cwd=dest)
    git(env, "commit", "--quiet", "-m", f"work on {branch}", cwd=dest)
    return dest


# --------------------------------------------------------------------------------------------------
# REST API through PyGithub


def test_repo_user_and_rate_limit(fake: FakeGitHub, gh: Github) -> None:
    repo = gh.get_repo(REPO)
    assert (repo.full_name, repo.private, repo.default_branch) == (REPO, True, "main")
    assert repo.clone_url == f"{fake.web_url}/{REPO}.git"
    assert repo.owner.login == "octo"
    assert gh.get_user().login == "claude-bot"
    remaining, limit = gh.rate_limiting
    assert limit == 5000 and remaining == 4998
    core = gh.get_rate_limit().resources.core
    assert core.remaining == 4998  # /rate_limit itself is free
    assert [r.counted for r in fake.requests] == [True, True, False]
    assert all(r.auth == "token" and r.login == "claude-bot" for r in fake.requests)
    with pytest.raises(UnknownObjectException):
        gh.get_repo("octo/missing")


def test_issue_listing_paginates_with_link_header(fake: FakeGitHub) -> None:
    numbers = [fake.create_issue(REPO, f"issue {i}")["number"] for i in range(5)]
    g = client(fake, per_page=2)
    listed = [issue.number for issue in g.get_repo(REPO).get_issues(state="open")]
    assert listed == sorted(numbers, reverse=True)  # created, desc: GitHub's default order
    pages = [r.query.get("page", ["1"])[0] for r in fake.requests_to(f"/api/v3/repos/{REPO}/issues")]
    assert pages == ["1", "2", "3"]
    status, headers, _ = g.requester.requestJson("GET", f"/repos/{REPO}/issues", parameters={"per_page": 2})
    assert status == 200
    assert 'rel="next"' in headers["link"] and 'rel="last"' in headers["link"] and "page=3" in headers["link"]
    asc = [i.number for i in g.get_repo(REPO).get_issues(sort="created", direction="asc")]
    assert asc == numbers


def test_labels_filter_is_case_insensitive_and_pull_requests_are_marked(fake: FakeGitHub, gh: Github) -> None:
    plain = fake.create_issue(REPO, "needs claude", labels=["Claude", "bug"])
    fake.create_issue(REPO, "not for claude", labels=["bug"])
    pr = fake.create_issue(REPO, "a pull request", labels=["Claude"], is_pull_request=True)
    found = gh.get_repo(REPO).get_issues(labels=["claude"])
    assert sorted(i.number for i in found) == [plain["number"], pr["number"]]
    assert [i.number for i in gh.get_repo(REPO).get_issues(labels=["CLAUDE", "Bug"])] == [plain["number"]]
    status, _, body = gh.requester.requestJson(
        "GET", f"/repos/{REPO}/issues", parameters={"labels": "claude"}
    )
    assert status == 200
    raw = {item["number"]: item for item in json.loads(body)}
    assert "pull_request" in raw[pr["number"]] and "pull_request" not in raw[plain["number"]]
    assert raw[pr["number"]]["pull_request"]["url"].endswith(f"/pulls/{pr['number']}")
    assert [label["name"] for label in raw[plain["number"]]["labels"]] == ["Claude", "bug"]
    assert gh.get_repo(REPO).get_label("claude").name == "Claude"


def test_since_filter_and_updated_at_bumps(fake: FakeGitHub, gh: Github, clock: Clock) -> None:
    first = fake.create_issue(REPO, "first")
    second = fake.create_issue(REPO, "second")
    later = clock.advance(60)
    fake.add_label(REPO, first["number"], "Claude", actor="maintainer")
    assert fake.issue(REPO, first["number"])["updated_at"] == "2026-01-01T12:01:00Z"
    assert fake.issue(REPO, second["number"])["updated_at"] == "2026-01-01T12:00:00Z"
    repo = gh.get_repo(REPO)
    assert [i.number for i in repo.get_issues(since=later)] == [first["number"]]
    clock.advance(60)
    fake.add_comment(REPO, second["number"], "ping")
    assert [i.number for i in repo.get_issues(since=later, sort="updated")] == [
        second["number"],
        first["number"],
    ]
    fake.edit_issue(REPO, second["number"], state="closed")
    assert [i.number for i in repo.get_issues(state="closed")] == [second["number"]]


def test_comments_events_and_permissions(fake: FakeGitHub, gh: Github, clock: Clock) -> None:
    number = fake.create_issue(REPO, "task", labels=["Claude"], user="alice", labeled_by="maintainer")[
        "number"
    ]
    fake.add_comment(REPO, number, "first!", user="bob", author_association="NONE")
    issue = gh.get_repo(REPO).get_issue(number)
    comment = issue.create_comment("Working on it")
    assert comment.user.login == "claude-bot" and comment.body == "Working on it"
    clock.advance(5)
    comment.edit("Done")
    assert [c.body for c in issue.get_comments()] == ["first!", "Done"]
    assert issue.get_comment(comment.id).body == "Done"
    assert [c["body"] for c in fake.comments(REPO, number)] == ["first!", "Done"]
    assert [c.body for c in issue.get_comments(since=clock.now)] == ["Done"]

    fake.remove_label(REPO, number, "claude", actor="alice")
    events = [(e.event, e.actor.login, e.label.name) for e in issue.get_events()]
    assert events == [("labeled", "maintainer", "Claude"), ("unlabeled", "alice", "Claude")]

    repo = gh.get_repo(REPO)
    fake.set_permission(REPO, "maintainer", "maintain")
    fake.set_permission(REPO, "mallory", "none")
    assert repo.get_collaborator_permission("octo") == "admin"  # the owner
    assert repo.get_collaborator_permission("stranger") == "read"  # never set
    assert repo.get_collaborator_permission("mallory") == "none"
    # Like GitHub: the legacy field maps maintain -> write; role_name keeps the real role.
    assert repo.get_collaborator_permission("maintainer") == "write"
    assert repo.get_collaborator_role_name("maintainer") == "maintain"


def test_issue_edits_through_the_api(fake: FakeGitHub, gh: Github) -> None:
    issue = gh.get_repo(REPO).get_issue(fake.create_issue(REPO, "bug", labels=["Claude"])["number"])
    issue.remove_from_labels("Claude")
    issue.add_to_labels("in-progress")
    issue.edit(state="closed")
    data = fake.issue(REPO, issue.number)
    assert [label["name"] for label in data["labels"]] == ["in-progress"]
    assert data["state"] == "closed" and data["closed_by"]["login"] == "claude-bot"
    assert [e["event"] for e in fake.events(REPO, issue.number)] == [
        "labeled",
        "unlabeled",
        "labeled",
        "closed",
    ]


def test_conditional_request_returns_304_and_is_not_counted(fake: FakeGitHub, gh: Github) -> None:
    fake.create_issue(REPO, "watch me", labels=["Claude"])
    url = f"/repos/{REPO}/issues"
    status, headers, _ = gh.requester.requestJson("GET", url, parameters={"labels": "Claude"})
    assert status == 200
    etag = headers["etag"]
    remaining = gh.rate_limiting[0]
    status, headers, body = gh.requester.requestJson(
        "GET", url, parameters={"labels": "Claude"}, headers={"If-None-Match": etag}
    )
    assert (status, body) == (304, "")
    assert gh.rate_limiting[0] == remaining
    last = fake.requests[-1]
    assert (last.status, last.conditional, last.counted) == (304, True, False)
    fake.add_comment(REPO, 1, "changes the comment count, so the body")
    status, headers, _ = gh.requester.requestJson(
        "GET", url, parameters={"labels": "Claude"}, headers={"If-None-Match": etag}
    )
    assert status == 200 and headers["etag"] != etag and fake.requests[-1].counted


def test_pull_requests_through_the_api(fake: FakeGitHub, gh: Github) -> None:
    fake.commit_files(REPO, "claude/issue-1", {"fix.txt": "fixed\n"}, message="fix")
    repo = gh.get_repo(REPO)
    pr = repo.create_pull(base="main", head="claude/issue-1", title="Fix #1", body="Closes #1", draft=True)
    assert (pr.head.ref, pr.base.ref, pr.draft, pr.state) == ("claude/issue-1", "main", True, "open")
    assert pr.head.sha == fake.repo(REPO).branch_sha("claude/issue-1")
    with pytest.raises(GithubException) as dup:
        repo.create_pull(base="main", head="octo:claude/issue-1", title="again")
    assert dup.value.status == 422
    assert dup.value.data["errors"][0]["message"] == "A pull request already exists for octo:claude/issue-1."
    with pytest.raises(GithubException) as missing:
        repo.create_pull(base="main", head="no-such-branch", title="x")
    assert missing.value.status == 422
    fake.commit_files(REPO, "empty", {}, message="nothing", parent="main")
    with pytest.raises(GithubException, match="No commits between"):
        repo.create_pull(base="main", head="main", title="x")
    assert [p.number for p in repo.get_pulls(state="open", head="octo:claude/issue-1")] == [pr.number]
    assert list(repo.get_pulls(head="octo:other")) == []
    as_issue = repo.get_issue(pr.number)
    assert as_issue.pull_request is not None and as_issue.title == "Fix #1"
    pr.edit(state="closed")
    assert fake.pulls(REPO)[0]["state"] == "closed"

    fake.refuse_pull_creation(REPO, 403, "Resource not accessible by integration")
    fake.commit_files(REPO, "claude/issue-2", {"b.txt": "b\n"})
    with pytest.raises(GithubException) as refused:
        repo.create_pull(base="main", head="claude/issue-2", title="Fix #2")
    assert refused.value.status == 403
    fake.allow_pull_creation(REPO)
    assert repo.create_pull(base="main", head="claude/issue-2", title="Fix #2").number > pr.number


# --------------------------------------------------------------------------------------------------
# Faults, rate limits, credentials


def test_502_burst_then_recovery(fake: FakeGitHub, gh: Github) -> None:
    fake.fail_next(f"/api/v3/repos/{REPO}", 502, count=2)
    for _ in range(2):
        with pytest.raises(GithubException) as err:
            gh.get_repo(REPO)
        assert err.value.status == 502
    assert gh.get_repo(REPO).name == "demo"
    # With PyGithub's retry the same burst is invisible to the caller.
    fake.fail_next(f"/api/v3/repos/{REPO}", 502, count=2)
    retrying = client(fake, retry=GithubRetry(total=3, backoff_factor=0))
    assert retrying.get_repo(REPO).name == "demo"
    assert [r.status for r in fake.requests[-3:]] == [502, 502, 200]
    assert [r.injected for r in fake.requests[-3:]] == [True, True, False]


def test_rate_limit_403_and_429(fake: FakeGitHub, gh: Github) -> None:
    reset = str(int(datetime.now(UTC).timestamp()) + 600)
    fake.fail_next(
        "/api/v3/repos",
        403,
        headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Limit": "5000", "X-RateLimit-Reset": reset},
        body={"message": "API rate limit exceeded for user ID 1."},
    )
    with pytest.raises(RateLimitExceededException) as limited:
        gh.get_repo(REPO)
    assert limited.value.headers is not None and limited.value.headers["x-ratelimit-reset"] == reset
    assert gh.rate_limiting == (0, 5000) and gh.rate_limiting_resettime == int(reset)

    fake.fail_next("/api/v3/repos", 429, headers={"Retry-After": "7"}, body={"message": "Too many requests"})
    with pytest.raises(GithubException) as throttled:
        gh.get_repo(REPO)
    assert throttled.value.status == 429 and throttled.value.headers["retry-after"] == "7"

    fake.set_rate_limit(0, token=TOKEN)  # a genuinely exhausted quota
    with pytest.raises(RateLimitExceededException):
        gh.get_repo(REPO)
    fake.reset_counts()
    assert gh.get_repo(REPO).name == "demo" and fake.requests[-1].counted


def test_bad_or_missing_credentials(fake: FakeGitHub) -> None:
    with pytest.raises(BadCredentialsException):
        client(fake, token="wrong").get_repo(REPO)
    with pytest.raises(BadCredentialsException):
        Github(base_url=fake.api_url, **FAST).get_repo(REPO)
    fake.add_token("rotated", "claude-bot")
    assert client(fake, token="rotated").get_repo(REPO).name == "demo"
    fake.revoke_token("rotated")
    with pytest.raises(BadCredentialsException):
        client(fake, token="rotated").get_repo(REPO)
    assert all(not r.counted for r in fake.requests if r.status == 401)


def test_slow_responses_time_out(fake: FakeGitHub) -> None:
    fake.set_delay(f"/api/v3/repos/{REPO}", 1.3)
    impatient = client(fake, timeout=1)  # PyGithub insists on an int timeout
    with pytest.raises(requests.exceptions.Timeout):
        impatient.get_repo(REPO)
    fake.set_delay(f"/api/v3/repos/{REPO}", 0)
    assert client(fake, timeout=5).get_repo(REPO).name == "demo"


def _rsa_keypair() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


def test_github_app_flow(fake: FakeGitHub, git_env: dict[str, str], tmp_path: Path) -> None:
    private, public = _rsa_keypair()
    fake.add_app(4242, public, slug="issue-solver")
    app_auth = Auth.AppAuth(4242, private)
    gi = GithubIntegration(auth=app_auth, base_url=fake.api_url, **FAST)
    installation = gi.get_repo_installation("octo", "demo")
    assert installation.app_id == 4242 and installation.account.login == "octo"
    access = gi.get_access_token(installation.id)
    assert access.token.startswith("ghs_") and access.expires_at > datetime.now(UTC)
    assert fake.requests[-1].auth == "jwt"

    as_installation = client(fake, token=access.token)
    assert as_installation.get_repo(REPO).permissions.push
    with pytest.raises(GithubException) as no_user:
        as_installation.get_user().login  # noqa: B018 (GitHub refuses /user to installation tokens)
    assert no_user.value.status == 403
    refreshing = Github(auth=app_auth.get_installation_auth(installation.id), base_url=fake.api_url, **FAST)
    assert refreshing.get_repo(REPO).get_issues().totalCount == 0

    env = {**git_env, "FAKE_GH_TOKEN": access.token}
    git(env, "clone", "--quiet", fake.repo(REPO).clone_url, str(tmp_path / "app-clone"))
    assert (tmp_path / "app-clone" / "src" / "app.py").exists()

    _, stranger_key = _rsa_keypair()
    fake.add_app(999, stranger_key)
    forged = GithubIntegration(auth=Auth.AppAuth(999, private), base_url=fake.api_url, **FAST)
    with pytest.raises(GithubException) as bad_jwt:
        forged.get_repo_installation("octo", "demo")
    assert bad_jwt.value.status == 401

    fake.create_repo("other/elsewhere")
    fake.add_app(77, public, slug="narrow")
    narrow_id = fake.install_app(77, "octo", repos=[REPO])
    narrow = GithubIntegration(auth=Auth.AppAuth(77, private), base_url=fake.api_url, **FAST)
    with pytest.raises(UnknownObjectException):
        narrow.get_repo_installation("other", "elsewhere")
    narrow_token = narrow.get_access_token(narrow_id).token
    with pytest.raises(UnknownObjectException):
        client(fake, token=narrow_token).get_repo("other/elsewhere")


# --------------------------------------------------------------------------------------------------
# git smart HTTP


def test_clone_push_and_open_pull_request(
    fake: FakeGitHub, gh: Github, git_env: dict[str, str], tmp_path: Path
) -> None:
    work = clone_and_commit(fake, git_env, tmp_path / "work", "claude/issue-7", {"fix.txt": b"fixed\n"})
    assert (work / "README.md").read_text() == "# demo\n"
    git(git_env, "push", "--quiet", "origin", "claude/issue-7", cwd=work)
    head = git(git_env, "rev-parse", "HEAD", cwd=work).stdout.strip()
    assert fake.repo(REPO).branches()["claude/issue-7"] == head
    assert fake.repo(REPO).read_file("claude/issue-7", "fix.txt") == "fixed\n"
    pushes = fake.requests_to(f"/{REPO}.git/git-receive-pack")
    assert (
        pushes and pushes[-1].status == 200 and pushes[-1].login == "claude-bot" and pushes[-1].kind == "git"
    )

    pr = gh.get_repo(REPO).create_pull(base="main", head="claude/issue-7", title="Fix #7", body="Closes #7")
    assert pr.head.sha == head
    with pytest.raises(GithubException) as dup:
        gh.get_repo(REPO).create_pull(base="main", head="claude/issue-7", title="again")
    assert dup.value.status == 422 and "already exists" in dup.value.data["errors"][0]["message"]


def test_private_repo_needs_credentials_public_repo_does_not(
    fake: FakeGitHub, git_env: dict[str, str], tmp_path: Path
) -> None:
    anonymous = {k: v for k, v in git_env.items() if k not in ("GIT_ASKPASS", "FAKE_GH_TOKEN")}
    denied = git(anonymous, "clone", fake.repo(REPO).clone_url, str(tmp_path / "anon"), check=False)
    assert denied.returncode != 0 and "could not read Username" in denied.stderr
    wrong = git(
        {**git_env, "FAKE_GH_TOKEN": "wrong"},
        "clone",
        fake.repo(REPO).clone_url,
        str(tmp_path / "w"),
        check=False,
    )
    assert wrong.returncode != 0 and "Authentication failed" in wrong.stderr
    assert not any(r.counted for r in fake.requests)

    public = fake.create_repo("octo/open", private=False)
    git(anonymous, "clone", "--quiet", public.clone_url, str(tmp_path / "open"))
    (tmp_path / "open" / "x.txt").write_text("x\n")
    git(anonymous, "add", "x.txt", cwd=tmp_path / "open")
    git(anonymous, "commit", "--quiet", "-m", "x", cwd=tmp_path / "open")
    anonymous_push = git(anonymous, "push", "origin", "HEAD:refs/heads/x", cwd=tmp_path / "open", check=False)
    assert anonymous_push.returncode != 0  # reading is public, writing never is
    git(git_env, "push", "--quiet", "origin", "HEAD:refs/heads/x", cwd=tmp_path / "open")
    assert "x" in public.branches()


def test_rejected_push_fails_with_reason(fake: FakeGitHub, git_env: dict[str, str], tmp_path: Path) -> None:
    work = clone_and_commit(fake, git_env, tmp_path / "work", "claude/issue-9", {"a.txt": b"a\n"})
    fake.reject_pushes(REPO, "GH013: Repository rule violations found")
    push = git(git_env, "push", "origin", "claude/issue-9", cwd=work, check=False)
    assert push.returncode != 0 and "GH013: Repository rule violations found" in push.stderr
    assert "claude/issue-9" not in fake.repo(REPO).branches()
    fake.allow_pushes(REPO)
    git(git_env, "push", "--quiet", "origin", "claude/issue-9", cwd=work)
    assert "claude/issue-9" in fake.repo(REPO).branches()


def test_large_push_with_chunked_body(fake: FakeGitHub, git_env: dict[str, str], tmp_path: Path) -> None:
    blob = os.urandom(300_000)  # incompressible, larger than git's 64 KiB minimum post buffer
    work = clone_and_commit(fake, git_env, tmp_path / "work", "big", {"blob.bin": blob})
    git(git_env, "-c", "http.postBuffer=65536", "push", "--quiet", "origin", "big", cwd=work)
    pushes = fake.requests_to(f"/{REPO}.git/git-receive-pack", "POST")
    assert pushes[-1].chunked and pushes[-1].status == 200
    assert fake.repo(REPO).branch_sha("big") == git(git_env, "rev-parse", "HEAD", cwd=work).stdout.strip()


def test_read_only_collaborator_cannot_push(
    fake: FakeGitHub, git_env: dict[str, str], tmp_path: Path
) -> None:
    work = clone_and_commit(fake, git_env, tmp_path / "work", "nope", {"a.txt": b"a\n"})
    fake.set_permission(REPO, "claude-bot", "read")
    push = git(git_env, "push", "origin", "nope", cwd=work, check=False)
    assert push.returncode != 0 and "nope" not in fake.repo(REPO).branches()


def test_stop_closes_keep_alive_connections(tmp_path: Path) -> None:
    fake = FakeGitHub(tmp_path / "gh").start()
    fake.create_repo(REPO)
    g = client(fake)
    assert g.get_repo(REPO).name == "demo"
    fake.stop()
    with pytest.raises(requests.exceptions.ConnectionError):
        g.get_repo(REPO)
