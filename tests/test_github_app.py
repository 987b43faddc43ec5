"""GitHub App authentication against the loopback GitHub: installation tokens for the API and for git."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from claude_issue_solver.backends.git import run_git
from claude_issue_solver.config import Config
from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.github.client import GitHubClient, Refused, Transient
from claude_issue_solver.github.request_budget import Priority
from claude_issue_solver.github.watcher import Watcher
from claude_issue_solver.store.queue import TaskQueue
from tests.github_fixtures import Clock


def app_config(github: FakeGitHub, tmp_path: Path, make_config: Callable[..., Config]) -> Config:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    github.add_app(4242, public)
    pem = tmp_path / "app.pem"
    pem.write_bytes(private)
    return make_config(
        GITHUB_APP_ID="4242",
        GITHUB_APP_PRIVATE_KEY_PATH=str(pem),
        GITHUB_API_URL=github.api_url,
        GITHUB_REPOS="acme/widgets",
    )


def test_app_auth_polls_and_pushes(
    github: FakeGitHub, tmp_path: Path, make_config: Callable[..., Config], queue: TaskQueue
) -> None:
    clock = Clock(time.time())  # installation tokens expire in real time
    config = app_config(github, tmp_path, make_config)
    config.require_daemon_settings()
    client = GitHubClient(config, clock=clock)
    github.create_issue("acme/widgets", "Via the app", labels=["Claude"], user="maintainer")
    Watcher(config, client, queue, clock=clock)()
    assert [t.title for t in queue.list()] == ["Via the app"]
    assert {r.auth for r in github.requests_to("/api/v3/repos/acme/widgets/issues")} == {"token"}

    credential = client.git_credential("acme/widgets")
    assert credential.username == "x-access-token" and credential.password.startswith("ghs_")
    assert client.git_credential("acme/widgets") == credential  # cached while it is fresh
    clock.advance(3600)  # near expiry: a new one is minted
    assert client.git_credential("acme/widgets").password != credential.password

    clone = tmp_path / "clone"
    repo = github.repo("acme/widgets")
    subprocess.run(["git", "init", "-q", str(clone)], check=True)
    run_git(
        ["fetch", "-q", repo.clone_url, "main"], cwd=clone, credential=client.git_credential("acme/widgets")
    )
    assert "token" not in (clone / ".git" / "config").read_text().lower()


def test_one_token_serves_an_installation_and_minting_is_a_budgeted_request(
    github: FakeGitHub, tmp_path: Path, make_config: Callable[..., Config]
) -> None:
    clock = Clock(time.time())  # installation tokens expire in real time
    config = app_config(github, tmp_path, make_config)
    installation = github.install_app(4242, "acme")
    client = GitHubClient(config, clock=clock)
    before = client.budget.counts[Priority.WORK]

    widgets = client.git_credential("acme/widgets")
    gadgets = client.git_credential("acme/gadgets")
    assert widgets == gadgets  # the same installation: one token, not one per repository
    minted = github.requests_to(f"/api/v3/app/installations/{installation}/access_tokens")
    assert len(minted) == 1
    # Two installation lookups and one mint, each a slot of the budget like any request.
    assert client.budget.counts[Priority.WORK] - before == 3

    clock.advance(3600)
    github.fail_next(f"/api/v3/app/installations/{installation}/access_tokens", 502)
    with pytest.raises(Transient) as raised:  # a passing failure the pipeline retries, not a crash
        client.git_credential("acme/widgets")
    assert raised.value.status == 502
    assert client.git_credential("acme/widgets") != widgets  # the next asks mint a fresh one


def test_an_app_not_installed_on_a_repository_is_refused_in_one_line(
    github: FakeGitHub, tmp_path: Path, make_config: Callable[..., Config]
) -> None:
    config = app_config(github, tmp_path, make_config)
    github.install_app(4242, "acme", repos=["acme/widgets"])
    client = GitHubClient(config)
    with pytest.raises(Refused, match=r"^the GitHub App is not installed on acme/gadgets, or cannot see it$"):
        client.git_credential("acme/gadgets")
