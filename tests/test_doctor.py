"""`doctor` against the loopback GitHub and the real Docker daemon: every check, each failure on its own."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from claude_issue_solver.config import Config
from claude_issue_solver.demo_world.github import DEFAULT_LOGIN, FakeGitHub
from claude_issue_solver.doctor import Check, diagnose, render, run_checks, to_json
from tests.github_fixtures import TOKEN

CLAUDE_KEY = "sk-ant-api03-doctortestkey0123456789abcdefghijklmnop"
READER_TOKEN = "ghp_readeronlytoken0123456789abcdefABCD"
WRONG_TOKEN = "ghp_wrongtoken00000000000000000000000000"
SECRETS = (TOKEN, CLAUDE_KEY, READER_TOKEN, WRONG_TOKEN)
GITHUB_CHECKS = {
    "GitHub credential",
    "repository acme/widgets",
    "label 'Claude' on acme/widgets",
    "repository acme/gadgets",
    "label 'Claude' on acme/gadgets",
}
DOCKER_CHECKS = {"Docker", "agent image", "git"}
ALL_CHECKS = {"configuration", "state directory", "Claude credential", *GITHUB_CHECKS, *DOCKER_CHECKS}


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {check.name: check for check in checks}


def expect_failed(checks: list[Check], failed: set[str], names: set[str] = ALL_CHECKS) -> str:
    """Exactly ``failed`` failed, each with a fix, every other check ran, and no secret shows anywhere."""
    text = render(checks)
    assert {c.name for c in checks} == names, text
    assert {c.name for c in checks if not c.ok} == failed, text
    assert all(c.fix for c in checks if not c.ok), text
    shown = text + json.dumps(to_json(checks))
    for secret in SECRETS:
        assert secret not in shown
    return text


@pytest.fixture
def configured(gh_config: Callable[..., Config], github: FakeGitHub) -> Callable[..., Config]:
    """The loopback GitHub's settings, write access for the token's user and a Claude key."""
    # The fake lets any token write, but reports a stranger's role as read, as GitHub would.
    for repo in ("acme/widgets", "acme/gadgets"):
        github.set_permission(repo, DEFAULT_LOGIN, "write")

    def make(**settings: str) -> Config:
        return gh_config(**{"ANTHROPIC_API_KEY": CLAUDE_KEY, **settings})

    return make


@pytest.fixture
def good(configured: Callable[..., Config], fake_image: str) -> Callable[..., Config]:
    """A configuration on which every check passes; keyword settings override it."""

    def make(**settings: str) -> Config:
        return configured(**{"DOCKER_IMAGE": fake_image, **settings})

    return make


# --- rendering ----------------------------------------------------------------------------------------


def test_render_marks_each_check_and_indents_fixes() -> None:
    checks = [
        Check("Docker", True, "Docker 20.10 answers"),
        Check("label 'Claude' on acme/x", False, "acme/x has no label 'Claude'", "create it"),
    ]
    assert render(checks).splitlines() == [
        "✔ Docker: Docker 20.10 answers",
        "✘ label 'Claude' on acme/x: acme/x has no label 'Claude'",
        "    fix: create it",
        "1 of 2 checks failed",
    ]
    assert render(checks[:1]).splitlines()[-1] == "all 1 checks passed"
    assert to_json(checks)[1] == {
        "name": "label 'Claude' on acme/x",
        "ok": False,
        "detail": "acme/x has no label 'Claude'",
        "fix": "create it",
    }


# --- a good setup --------------------------------------------------------------------------------------


@pytest.mark.docker
def test_good_setup_passes_every_check(good: Callable[..., Config], github: FakeGitHub) -> None:
    checks = run_checks(good())
    text = expect_failed(checks, set())
    found = by_name(checks)
    assert "2.1.197" in found["agent image"].detail
    assert "no network" in found["agent image"].detail
    assert "claude-bot" in found["GitHub credential"].detail
    assert "write access" in found["repository acme/widgets"].detail
    assert "ANTHROPIC_API_KEY" in found["Claude credential"].detail
    assert text.splitlines()[-1] == f"all {len(ALL_CHECKS)} checks passed"
    # Read-only towards GitHub: doctor never writes to a repository.
    assert {r.method for r in github.requests} == {"GET"}


@pytest.mark.docker
def test_image_unset_reports_what_would_be_built(good: Callable[..., Config], fake_image: str) -> None:
    checks = run_checks(good(DOCKER_IMAGE="", DOCKER_BASE_IMAGE=fake_image))
    expect_failed(checks, set())
    detail = by_name(checks)["agent image"].detail
    assert "Dockerfile.claude will be built on" in detail and fake_image in detail and "(present)" in detail


@pytest.mark.docker
def test_app_credential_and_installation_permissions(
    good: Callable[..., Config], github: FakeGitHub, tmp_path: Path
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "app.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    github.add_app(4242, public, slug="issue-solver")
    config = good(GITHUB_TOKEN="", GITHUB_APP_ID="4242", GITHUB_APP_PRIVATE_KEY_PATH=str(pem))
    checks = run_checks(config)
    expect_failed(checks, set())
    found = by_name(checks)
    assert "issue-solver" in found["GitHub credential"].detail
    assert "contents, issues, pull_requests: write" in found["repository acme/gadgets"].detail


# --- each failure on its own ------------------------------------------------------------------------------


@pytest.mark.docker
def test_rejected_token(good: Callable[..., Config]) -> None:
    checks = run_checks(good(GITHUB_TOKEN=WRONG_TOKEN))
    expect_failed(checks, GITHUB_CHECKS)
    credential = by_name(checks)["GitHub credential"]
    assert "the token was rejected" in credential.detail
    assert credential.fix and "create a new one" in credential.fix and "Pull requests" in credential.fix


@pytest.mark.docker
def test_repository_without_push_permission(good: Callable[..., Config], github: FakeGitHub) -> None:
    github.add_token(READER_TOKEN, login="reader")
    github.set_permission("acme/widgets", "reader", "read")
    github.set_permission("acme/gadgets", "reader", "write")
    checks = run_checks(good(GITHUB_TOKEN=READER_TOKEN))
    expect_failed(checks, {"repository acme/widgets"})
    widgets = by_name(checks)["repository acme/widgets"]
    assert "reader has read access" in widgets.detail and "cannot push" in widgets.detail
    assert widgets.fix and "write access" in widgets.fix


@pytest.mark.docker
def test_missing_label(good: Callable[..., Config]) -> None:
    checks = run_checks(good(TRIGGER_LABEL="Claude ready"))
    labels = {"label 'Claude ready' on acme/widgets", "label 'Claude ready' on acme/gadgets"}
    names = (ALL_CHECKS - {"label 'Claude' on acme/widgets", "label 'Claude' on acme/gadgets"}) | labels
    expect_failed(checks, labels, names)
    fix = by_name(checks)["label 'Claude ready' on acme/widgets"].fix or ""
    assert "gh label create 'Claude ready' --repo acme/widgets" in fix


def test_docker_down(configured: Callable[..., Config], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    checks = run_checks(configured(DOCKER_IMAGE="anything:latest"))
    expect_failed(checks, {"Docker", "agent image"})
    docker = by_name(checks)["Docker"]
    assert "cannot reach the Docker daemon" in docker.detail
    assert docker.fix and "systemctl start docker" in docker.fix and "DOCKER_HOST" in docker.fix


@pytest.mark.docker
def test_missing_claude_credential(good: Callable[..., Config]) -> None:
    checks = run_checks(good(ANTHROPIC_API_KEY=""))
    expect_failed(checks, {"Claude credential"})
    assert "CLAUDE_CODE_OAUTH_TOKEN" in (by_name(checks)["Claude credential"].fix or "")


@pytest.mark.docker
def test_unwritable_state_dir(good: Callable[..., Config], tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    checks = run_checks(good(STATE_DIR=str(blocker / "state")))
    expect_failed(checks, {"state directory"})
    assert "is not a directory" in by_name(checks)["state directory"].detail


@pytest.mark.docker
def test_missing_configured_image(good: Callable[..., Config]) -> None:
    checks = run_checks(good(DOCKER_IMAGE="claude-issue-solver-doctor-missing:nope"))
    expect_failed(checks, {"agent image"})
    assert "never pulled" in by_name(checks)["agent image"].detail


@pytest.mark.docker
def test_rate_limit_used_up(good: Callable[..., Config], github: FakeGitHub) -> None:
    github.set_rate_limit(0)
    checks = run_checks(good())
    expect_failed(checks, GITHUB_CHECKS)
    assert "rate limit" in by_name(checks)["GitHub credential"].detail


def test_incomplete_configuration_still_checks_the_rest(
    make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    checks = run_checks(make_config())
    names = {"configuration", "state directory", "GitHub credential", "Claude credential", *DOCKER_CHECKS}
    text = expect_failed(
        checks, {"configuration", "GitHub credential", "Claude credential", "Docker", "agent image"}, names
    )
    assert "GITHUB_TOKEN is not set" in by_name(checks)["configuration"].detail, text


def test_unparsable_configuration_is_one_failed_check(tmp_path: Path) -> None:
    env_file = tmp_path / "broken.env"
    env_file.write_text(f"GITHUB_TOKEN={TOKEN}\nPOLL_INTERVAL=soon\n")
    checks = diagnose(env_file, environ={"HOME": str(tmp_path)})
    assert [(c.name, c.ok) for c in checks] == [("configuration", False)]
    assert "POLL_INTERVAL" in checks[0].detail and str(env_file) in (checks[0].fix or "")


def test_daytona_backend_missing(configured: Callable[..., Config], monkeypatch: pytest.MonkeyPatch) -> None:
    # Whether or not the Daytona backend exists in this checkout, doctor must cope with its absence.
    monkeypatch.setitem(sys.modules, "claude_issue_solver.backends.daytona", None)
    config = configured(BACKEND="daytona", DAYTONA_API_KEY="dtn_doctortestkey0123")
    checks = run_checks(config)
    names = {"configuration", "state directory", "Claude credential", *GITHUB_CHECKS, "Daytona"}
    expect_failed(checks, {"Daytona"}, names)
    assert "Daytona backend not installed" in by_name(checks)["Daytona"].detail
    assert "dtn_doctortestkey0123" not in render(checks)
