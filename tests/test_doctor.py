"""`doctor` against the loopback GitHub and the real Docker daemon: every check, each failure on its own."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from claude_issue_solver.backends import git as gitops
from claude_issue_solver.cli.doctor import Check, diagnose, render, run_checks, to_json
from claude_issue_solver.config import Config
from claude_issue_solver.demo_world.github import DEFAULT_LOGIN, FakeGitHub
from tests.fakes.fake_anthropic import FakeAnthropic
from tests.github_fixtures import TOKEN

ROOT = Path(__file__).resolve().parents[1]
CLAUDE_KEY = "sk-ant-api03-doctortestkey0123456789abcdefghijklmnop"
WRONG_CLAUDE_KEY = "sk-ant-api03-wrongkey00000000000000000000000000000000"
OAUTH_TOKEN = "sk-ant-oat01-" + "Abc_def-0123456789" * 5
READER_TOKEN = "ghp_readeronlytoken0123456789abcdefABCD"
WRONG_TOKEN = "ghp_wrongtoken00000000000000000000000000"
SECRETS = (TOKEN, CLAUDE_KEY, READER_TOKEN, WRONG_TOKEN, WRONG_CLAUDE_KEY, OAUTH_TOKEN)
GITHUB_CHECKS = {
    "GitHub credential",
    "repository acme/widgets",
    "label 'Claude' on acme/widgets",
    "repository acme/gadgets",
    "label 'Claude' on acme/gadgets",
    "tests of acme/widgets",
    "tests of acme/gadgets",
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
def anthropic() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key=CLAUDE_KEY) as api:
        yield api


@pytest.fixture
def configured(
    gh_config: Callable[..., Config], github: FakeGitHub, anthropic: FakeAnthropic
) -> Callable[..., Config]:
    """The loopback GitHub's settings, write access for the token's user and a Claude key that the
    loopback Anthropic API accepts."""
    # The fake lets any token write, but reports a stranger's role as read, as GitHub would.
    for repo in ("acme/widgets", "acme/gadgets"):
        github.set_permission(repo, DEFAULT_LOGIN, "write")

    def make(**settings: str) -> Config:
        return gh_config(**{"ANTHROPIC_API_KEY": CLAUDE_KEY, "ANTHROPIC_BASE_URL": anthropic.url, **settings})

    return make


@pytest.fixture
def no_docker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The Docker checks fail fast, for tests about other checks."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def plain_http(tmp_path: Path) -> Iterator[str]:
    """A loopback web server with nothing to serve: every path is a 404, as a gateway without the
    Models API answers."""
    root = tmp_path / "empty-site"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=root))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


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
    problems = [c.detail for c in checks if c.name == "configuration"]
    assert [p.split(":")[0] for p in problems] == ["GITHUB_TOKEN is not set", "GITHUB_REPOS is not set"], text


def test_every_configuration_problem_is_listed_at_once(tmp_path: Path) -> None:
    env_file = tmp_path / "broken.env"
    env_file.write_text("POLL_INTERVAL=soon\nBACKEND=podman\nGITHUB_REPOS=\nMAX_CONCURRENT=0\n")
    checks = diagnose(env_file, environ={"HOME": str(tmp_path)})
    assert {c.name for c in checks} == {"configuration"}
    assert not any(c.ok for c in checks)
    details = [c.detail for c in checks]
    # Every bad value, and what start would miss besides (but not a second line about a bad key).
    assert len(details) == 5, details
    for key in ("POLL_INTERVAL='soon'", "BACKEND='podman'", "MAX_CONCURRENT='0'"):
        assert sum(d.startswith(key) for d in details) == 1, details
    assert any(d.startswith("GITHUB_TOKEN is not set") for d in details)
    assert any(d.startswith("GITHUB_REPOS is not set") for d in details)
    assert all(str(env_file) in (c.fix or "") for c in checks)
    assert render(checks).splitlines()[-1] == "5 of 5 checks failed"


def test_missing_daemon_settings_are_listed_at_once(
    make_config: Callable[..., Config], no_docker: None
) -> None:
    checks = run_checks(make_config(GITHUB_APP_ID="12"))
    problems = [c.detail for c in checks if c.name == "configuration"]
    assert len(problems) == 2, problems
    assert problems[0].startswith("GITHUB_APP_ID and GITHUB_APP_PRIVATE_KEY_PATH go together")
    assert problems[1].startswith("GITHUB_REPOS is not set")


def test_daytona_backend_missing(configured: Callable[..., Config], monkeypatch: pytest.MonkeyPatch) -> None:
    # Whether or not the Daytona backend exists in this checkout, doctor must cope with its absence.
    monkeypatch.setitem(sys.modules, "claude_issue_solver.backends.daytona", None)
    config = configured(BACKEND="daytona", DAYTONA_API_KEY="dtn_doctortestkey0123")
    checks = run_checks(config)
    names = {"configuration", "state directory", "Claude credential", *GITHUB_CHECKS, "Daytona"}
    expect_failed(checks, {"Daytona"}, names)
    assert "Daytona backend not installed" in by_name(checks)["Daytona"].detail
    assert "dtn_doctortestkey0123" not in render(checks)


# --- the Claude credential, checked without spending tokens -------------------------------------------------


def claude_check(config: Config) -> Check:
    checks = run_checks(config)
    expect_failed(checks, {c.name for c in checks if not c.ok}, {c.name for c in checks})  # no secret shown
    return by_name(checks)["Claude credential"]


def test_api_key_is_checked_by_listing_models(
    configured: Callable[..., Config], anthropic: FakeAnthropic, no_docker: None
) -> None:
    check = claude_check(configured())
    assert check.ok, check
    assert f"accepted by {anthropic.url}" in check.detail and "no tokens spent" in check.detail
    (request,) = anthropic.requests
    assert (request.method, request.kind) == ("GET", "models")
    assert request.headers["x-api-key"] == CLAUDE_KEY
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert anthropic.model_calls == []


def test_rejected_api_key(
    configured: Callable[..., Config], anthropic: FakeAnthropic, no_docker: None
) -> None:
    check = claude_check(configured(ANTHROPIC_API_KEY=WRONG_CLAUDE_KEY))
    assert not check.ok
    assert (
        "rejected" in check.detail and "HTTP 401" in check.detail and "authentication_error" in check.detail
    )
    assert (
        check.fix and "console.anthropic.com/settings/keys" in check.fix and "ANTHROPIC_API_KEY" in check.fix
    )
    assert [r.kind for r in anthropic.requests] == ["unauthorized"]


def test_unreachable_api(configured: Callable[..., Config], no_docker: None) -> None:
    base = f"http://127.0.0.1:{closed_port()}"
    check = claude_check(configured(ANTHROPIC_BASE_URL=base))
    assert not check.ok
    assert check.detail == f"cannot reach {base}: Connection refused"
    assert check.fix and "ANTHROPIC_BASE_URL" in check.fix and "proxy" in check.fix


def test_gateway_without_models_api_is_not_verified(
    configured: Callable[..., Config], plain_http: str, no_docker: None
) -> None:
    check = claude_check(configured(ANTHROPIC_BASE_URL=plain_http))
    assert check.ok, check
    assert "not verified" in check.detail and "HTTP 404" in check.detail


def test_a_redirect_is_not_followed(
    configured: Callable[..., Config], plain_http: str, tmp_path: Path, no_docker: None
) -> None:
    # The plain server answers a directory without its trailing slash with a 301: the key must not
    # be sent on to wherever the redirect points.
    (tmp_path / "empty-site" / "v1" / "models").mkdir(parents=True)
    check = claude_check(configured(ANTHROPIC_BASE_URL=plain_http))
    assert not check.ok and "redirects to" in check.detail and "HTTP 301" in check.detail, check
    assert check.fix and "ANTHROPIC_BASE_URL" in check.fix


def test_oauth_token_shape_and_route(
    configured: Callable[..., Config], anthropic: FakeAnthropic, no_docker: None
) -> None:
    check = claude_check(configured(ANTHROPIC_API_KEY="", CLAUDE_CODE_OAUTH_TOKEN=OAUTH_TOKEN))
    assert check.ok, check
    assert "the token itself was not checked" in check.detail and anthropic.url in check.detail
    # Only the route was tried, with no credential at all: the token never left this process.
    (request,) = anthropic.requests
    assert request.kind == "unauthorized" and OAUTH_TOKEN not in json.dumps(request.headers)


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (CLAUDE_KEY, "holds an API key"),
        (OAUTH_TOKEN[:30], "it looks cut short"),
        (OAUTH_TOKEN[:40] + " " + OAUTH_TOKEN[40:], "it contains spaces or quotes"),
        ("oauth-" + "x" * 60, "it does not start with sk-ant-oat"),
    ],
)
def test_malformed_oauth_token(
    configured: Callable[..., Config], anthropic: FakeAnthropic, no_docker: None, token: str, expected: str
) -> None:
    check = claude_check(configured(ANTHROPIC_API_KEY="", CLAUDE_CODE_OAUTH_TOKEN=token))
    assert not check.ok and expected in check.detail, check
    assert check.fix and "claude setup-token" in check.fix
    assert anthropic.requests == []
    assert token not in check.detail + check.fix


def test_api_key_wins_over_oauth_token(configured: Callable[..., Config], no_docker: None) -> None:
    check = claude_check(configured(CLAUDE_CODE_OAUTH_TOKEN=OAUTH_TOKEN))
    assert check.ok and "CLAUDE_CODE_OAUTH_TOKEN is set too but unused" in check.detail


# --- day one: a copy of .env.example with three keys filled in, through the real CLI ----------------------


def scrubbed_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Only what a child process needs, and a HOME and XDG dirs of its own: nothing of the person
    running the tests (their .env, credentials, GITHUB_*/ANTHROPIC_* variables) can leak in."""
    home = tmp_path / "home"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_STATE_HOME": str(home / ".local" / "state"),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "PYTHONPATH": str(ROOT),
        "LANG": "C.UTF-8",
    }
    if "DOCKER_HOST" in os.environ:  # where this machine's Docker daemon listens, if not the default
        env["DOCKER_HOST"] = os.environ["DOCKER_HOST"]
    return {**env, **extra}


def filled_in_env_example(path: Path, **values: str) -> Path:
    lines = (ROOT / ".env.example").read_text().splitlines()
    for key, value in values.items():
        (index,) = [n for n, line in enumerate(lines) if line.startswith(f"{key}=")]
        lines[index] = f"{key}={value}"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.docker
def test_doctor_on_a_filled_in_env_example(
    github: FakeGitHub, anthropic: FakeAnthropic, tmp_path: Path
) -> None:
    for repo in ("acme/widgets", "acme/gadgets"):
        github.set_permission(repo, DEFAULT_LOGIN, "write")
    env_file = filled_in_env_example(
        tmp_path / "solver.env",
        GITHUB_TOKEN=TOKEN,
        GITHUB_REPOS="acme/widgets,acme/gadgets",
        ANTHROPIC_API_KEY=CLAUDE_KEY,
    )
    # The loopback services stand in for github.com and api.anthropic.com; the environment wins over
    # the file, so the copy itself stays as a new user would have it.
    env = scrubbed_env(tmp_path, GITHUB_API_URL=github.api_url, ANTHROPIC_BASE_URL=anthropic.url)
    work = tmp_path / "elsewhere"
    work.mkdir()

    def doctor(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "claude_issue_solver", "--env-file", str(env_file), "doctor", *args]
        proc = subprocess.run(
            command, env=env, cwd=work, capture_output=True, text=True, timeout=120, check=False
        )
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    shown = doctor()
    assert shown.returncode == 0 and "✘" not in shown.stdout, shown.stdout
    assert shown.stdout.splitlines()[-1] == f"all {len(ALL_CHECKS)} checks passed"
    proc = doctor("--json")
    checks = [Check(**c) for c in json.loads(proc.stdout)]
    text = expect_failed(checks, set())
    assert proc.returncode == 0, text
    found = by_name(checks)
    assert f"settings from {env_file}" in found["configuration"].detail
    state = tmp_path / "home" / ".local" / "state" / "claude-issue-solver"
    assert str(state) in found["state directory"].detail  # STATE_DIR= left blank: the XDG default
    assert found["Claude credential"].ok and anthropic.url in found["Claude credential"].detail
    assert "Dockerfile.claude will be built" in found["agent image"].detail  # DOCKER_IMAGE= left blank


@pytest.mark.docker
def test_a_git_too_old_to_replay_commits_is_a_failed_check(
    good: Callable[..., Config], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ubuntu 22.04's git 2.34: everything works but putting Claude's commits on top of a moved branch."""
    real = shutil.which("git")
    assert real is not None
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "git").write_text(
        f'#!/bin/sh\n[ "$1" = --version ] && {{ echo "git version 2.34.1"; exit 0; }}\nexec {real} "$@"\n'
    )
    (fake / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    gitops.git_version.cache_clear()
    try:
        checks = run_checks(good())
        expect_failed(checks, {"git"})
        git = by_name(checks)["git"]
        assert git.detail == (
            "git 2.34.1 on this host cannot put commits on top of a moved branch "
            "(`git merge-tree --write-tree` needs git 2.38 or later)"
        )
        assert "upgrade git" in (git.fix or "")
        with pytest.raises(gitops.GitError, match=r"git 2\.34\.1 on this host cannot put commits on top"):
            gitops.replay_onto(tmp_path, "a" * 40, "b" * 40, "c" * 40)
    finally:
        gitops.git_version.cache_clear()


# --- the repositories' tests (issue #21) -------------------------------------------------------------


@pytest.mark.docker
def test_a_test_program_missing_from_the_agent_image_fails_with_the_fix(
    good: Callable[..., Config], github: FakeGitHub, fake_image: str
) -> None:
    settings = ".github/claude-issue-solver.yml"
    # The detected pytest on one repository (the busybox agent image has no Python) ...
    github.commit_files(
        "acme/widgets", "main", {"pyproject.toml": "[project]\n", "tests/test_w.py": "def test(): pass\n"}
    )
    # ... and a settings file whose command the image has (busybox's sh) on the other.
    github.commit_files("acme/gadgets", "main", {settings: "test: sh check.sh\n"})
    checks = run_checks(good())
    expect_failed(checks, {"tests of acme/widgets"})
    found = by_name(checks)
    missing = found["tests of acme/widgets"]
    assert "`python3 -m pytest` (detected" in missing.detail and "`python3` is not in" in missing.detail
    assert "exit 127" in missing.detail and missing.fix is not None and "install `python3`" in missing.fix
    assert "`sh` found in" in found["tests of acme/gadgets"].detail


def test_a_broken_settings_file_fails_with_the_problem_named(
    good: Callable[..., Config], github: FakeGitHub, no_docker: None
) -> None:
    github.commit_files("acme/gadgets", "main", {".github/claude-issue-solver.yml": "test: [1]\ntests: x\n"})
    checks = run_checks(good())
    found = by_name(checks)
    broken = found["tests of acme/gadgets"]
    assert (
        not broken.ok
        and "unknown key(s) tests" in broken.detail
        and "test: must be a non-empty" in broken.detail
    )
    assert broken.fix == "correct .github/claude-issue-solver.yml on acme/gadgets's default branch"
    assert found["tests of acme/widgets"].ok and "no test command" in found["tests of acme/widgets"].detail
