"""The daemon's own image (``Dockerfile``) and ``contrib/docker-compose.yml``.

The image is built the way CI builds it, on a debootstrapped Debian (no registry is reachable, so no
Python base can be pulled), and run the way the compose file runs it: its environment, its secret, its
volumes (the host's Docker socket, STATE_DIR at the same path inside and out), read from the file
itself. The containers use host networking, to reach the loopback fakes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import socket
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import yaml

from claude_issue_solver import __version__
from claude_issue_solver.demo_world.github import FakeGitHub
from tests.conftest import ROOT
from tests.e2e import assert_clean, labelled, our_comments
from tests.fakes.fake_anthropic import FakeAnthropic
from tests.fakes.images import build_daemon_image, daemon_build_context, debian_base_image
from tests.github_fixtures import TOKEN
from tests.waiting import wait_until

DAEMON_IMAGE_TAG = "claude-issue-solver-test-daemon:latest"
COMPOSE_FILE = ROOT / "contrib" / "docker-compose.yml"
SERVICE = "claude-issue-solver"
DOCKER_SOCKET = "/var/run/docker.sock"
CLAUDE_KEY = "sk-ant-api03-daemonimage0123456789"
TEST_LABEL = {"claude-issue-solver.test": "test_daemon_image"}


# -- the compose file, read as compose would ----------------------------------------------------------


@dataclass(frozen=True)
class ComposeService:
    build: dict[str, Any]
    environment: dict[str, str]
    volumes: list[tuple[str, str]]  # (host path, container path)
    secrets: dict[str, Path]  # file name under /run/secrets -> the host file
    init: bool
    healthcheck: list[str]  # the CMD's argv


def compose_service(state_dir: Path | None = None) -> ComposeService:
    """The service as `docker compose` would run it, with ``CLAUDE_ISSUE_SOLVER_STATE_DIR=state_dir``."""
    text = COMPOSE_FILE.read_text()
    # Compose's ${VAR:-default} interpolation, for the variables the file uses (their defaults but
    # for the state directory).
    pattern = r"\$\{CLAUDE_ISSUE_SOLVER_STATE_DIR:-([^}]*)\}"
    text = re.sub(pattern, lambda m: str(state_dir) if state_dir else m.group(1), text)
    defaults = r"\$\{CLAUDE_ISSUE_SOLVER_(?:WEBHOOKS|PORT|BASE_IMAGE|EXTRAS):-([^}]*)\}"
    text = re.sub(defaults, lambda m: m.group(1), text)
    assert "${" not in text, "the compose file uses a variable this test does not know"
    doc = yaml.safe_load(text)
    service = doc["services"][SERVICE]
    known = {"build", "image", "restart", "init", "stop_grace_period", "environment", "secrets", "volumes"}
    known |= {"ports", "healthcheck"}
    assert set(service) <= known, f"teach this test the compose keys {set(service) - known}"
    secrets = {
        item["target"]: (COMPOSE_FILE.parent / doc["secrets"][item["source"]]["file"]).resolve()
        for item in service["secrets"]
    }
    volumes = [tuple(spec.split(":", 1)) for spec in service["volumes"]]
    return ComposeService(
        build=service["build"],
        environment={k: str(v) for k, v in service["environment"].items()},
        volumes=volumes,  # type: ignore[arg-type]
        secrets=secrets,
        init=bool(service.get("init")),
        healthcheck=list(service["healthcheck"]["test"][1:]),
    )


def host_docker_socket() -> str:
    host = os.environ.get("DOCKER_HOST", f"unix://{DOCKER_SOCKET}")
    if not host.startswith("unix://"):
        pytest.skip(f"the Docker daemon is not on a local socket (DOCKER_HOST={host})")
    return host.removeprefix("unix://")


def run_like_compose(
    client: docker.DockerClient,
    image: str,
    service: ComposeService,
    command: list[str],
    settings_file: Path,
) -> docker.models.containers.Container:
    """Start the service's container detached; ``settings_file`` stands in for the checkout's .env."""
    volumes = {}
    for source, target in service.volumes:
        # The host's own socket, wherever this machine keeps it.
        host_path = host_docker_socket() if target == DOCKER_SOCKET else source
        volumes[host_path] = {"bind": target, "mode": "rw"}
    for name in service.secrets:
        volumes[str(settings_file)] = {"bind": f"/run/secrets/{name}", "mode": "ro"}
    return client.containers.run(
        image,
        command,
        detach=True,
        environment=service.environment,
        volumes=volumes,
        init=service.init,
        network_mode="host",
        labels=TEST_LABEL,
    )


def finish(container: docker.models.containers.Container, timeout: float = 120) -> tuple[int, str]:
    """Wait for the container to exit, then remove it; its exit code and output."""
    try:
        code = container.wait(timeout=timeout)["StatusCode"]
        return code, container.logs().decode("utf-8", "replace")
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)


def run_once(
    client: docker.DockerClient, image: str, command: list[str], **kwargs: object
) -> tuple[int, str]:
    container = client.containers.run(image, command, detach=True, labels=TEST_LABEL, **kwargs)
    return finish(container)


@pytest.fixture(scope="module")
def daemon_image(docker_client: docker.DockerClient) -> str:
    return build_daemon_image(docker_client, debian_base_image(docker_client), DAEMON_IMAGE_TAG)


@pytest.fixture
def settings_file(
    tmp_path: Path, state_dir: Path, github: FakeGitHub, fake_image: str
) -> Callable[..., Path]:
    def write(**settings: str) -> Path:
        values = {
            "GITHUB_TOKEN": TOKEN,
            "GITHUB_API_URL": github.api_url,
            "GITHUB_REPOS": "acme/widgets",
            "ANTHROPIC_API_KEY": CLAUDE_KEY,
            "POLL_INTERVAL": "1",
            "DOCKER_IMAGE": fake_image,
            "DOCKER_NETWORK": "none",
            # The compose file's STATE_DIR must win over the .env's.
            "STATE_DIR": "/somewhere/else",
            **settings,
        }
        path = tmp_path / "solver.env"
        path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
        return path

    return write


@pytest.fixture
def fake_anthropic() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key=CLAUDE_KEY) as api:
        yield api


# -- without Docker ----------------------------------------------------------------------------------


def test_the_build_context_is_only_what_the_dockerfile_copies() -> None:
    context = daemon_build_context()
    size = len(context.getvalue())
    with tarfile.open(fileobj=io.BytesIO(context.getvalue())) as tar:
        names = tar.getnames()
    assert "Dockerfile" in names and "pyproject.toml" in names and "claude_issue_solver/cli/main.py" in names
    assert "Dockerfile.claude" in names  # claude_issue_solver/data/ links to it
    for name in names:
        top = name.split("/", 1)[0]
        assert top not in {".git", ".venv", "tests", ".env", "benchmarks", "build", "dist"}, name
        assert "__pycache__" not in name and not name.endswith(".egg-info"), name
    assert size < 2 * 1024 * 1024, f"the build context is {size} bytes"


def test_the_compose_file_keeps_state_paths_the_same_inside_and_out(tmp_path: Path) -> None:
    for state in (None, tmp_path / "state"):
        service = compose_service(state)
        expected = str(state) if state else "/var/lib/claude-issue-solver"
        assert service.environment["STATE_DIR"] == expected
        assert (expected, expected) in service.volumes
        assert (DOCKER_SOCKET, DOCKER_SOCKET) in service.volumes
    # The settings reach the daemon as a mounted file, not as container environment.
    assert set(service.secrets.values()) == {ROOT / ".env"}
    (name,) = service.secrets
    assert service.environment["CLAUDE_ISSUE_SOLVER_ENV"] == f"/run/secrets/{name}"
    assert not {"GITHUB_TOKEN", "ANTHROPIC_API_KEY"} & set(service.environment)
    assert service.init
    assert (COMPOSE_FILE.parent / service.build["context"]).resolve() == ROOT
    assert (ROOT / service.build["dockerfile"]).is_file()
    # Every build argument the compose file passes is one the Dockerfile declares (BASE_IMAGE for a
    # machine without a registry, EXTRAS for the Daytona SDK), with the Dockerfile's own defaults.
    declared = dict(
        (m.group(1), m.group(2) or "")
        for m in re.finditer(r"^ARG (\w+)(?:=(\S*))?$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    )
    args = {name: value or "" for name, value in service.build["args"].items()}
    assert args == {name: declared[name] for name in args}
    assert set(service.build["args"]) == {"BASE_IMAGE", "EXTRAS"}


# -- the image ---------------------------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.slow
def test_the_image_runs_the_installed_cli(docker_client: docker.DockerClient, daemon_image: str) -> None:
    code, output = run_once(docker_client, daemon_image, ["--version"], network_mode="none")
    assert code == 0 and output.strip() == f"claude-issue-solver, version {__version__}", output
    config = docker_client.images.get(daemon_image).attrs["Config"]
    assert config["Entrypoint"] == ["claude-issue-solver"] and config["Cmd"] == ["start", "--foreground"]
    assert "STATE_DIR=/var/lib/claude-issue-solver" in config["Env"]


@pytest.mark.docker
@pytest.mark.slow
def test_doctor_without_settings_or_socket_runs_every_check(
    docker_client: docker.DockerClient, daemon_image: str
) -> None:
    code, output = run_once(docker_client, daemon_image, ["doctor", "--json"], network_mode="none")
    assert code == 1 and "Traceback" not in output, output
    checks = {c["name"]: c for c in json.loads(output)}
    assert not checks["Docker"]["ok"] and checks["git"]["ok"], checks
    assert {"GitHub credential", "Claude credential", "agent image"} <= set(checks), checks
    assert all(c["fix"] for c in checks.values() if not c["ok"])


@pytest.mark.docker
@pytest.mark.slow
def test_doctor_sees_the_mounted_socket_and_the_settings_secret(
    docker_client: docker.DockerClient,
    daemon_image: str,
    settings_file: Callable[..., Path],
    state_dir: Path,
    fake_image: str,
    fake_anthropic: FakeAnthropic,
) -> None:
    service = compose_service(state_dir)
    settings = settings_file(ANTHROPIC_BASE_URL=fake_anthropic.url)
    container = run_like_compose(docker_client, daemon_image, service, ["doctor", "--json"], settings)
    _, output = finish(container)  # the exit code depends on checks beyond this test's reach
    assert "Traceback" not in output, output
    checks = {c["name"]: c for c in json.loads(output)}
    assert checks["Docker"]["ok"], checks["Docker"]
    # The host's images, seen through the socket.
    assert checks["agent image"]["ok"] and fake_image in checks["agent image"]["detail"], checks
    assert checks["state directory"]["ok"] and str(state_dir) in checks["state directory"]["detail"]
    assert "/somewhere/else" not in output
    assert checks.get("configuration", {"ok": True})["ok"], checks["configuration"]
    assert TOKEN not in output and CLAUDE_KEY not in output


@pytest.mark.docker
@pytest.mark.slow
def test_the_daemon_in_its_container_turns_an_issue_into_a_pull_request(
    docker_client: docker.DockerClient,
    daemon_image: str,
    github: FakeGitHub,
    settings_file: Callable[..., Path],
    state_dir: Path,
    no_leftover_containers: None,
) -> None:
    """The agent's container is started by the host's Docker daemon over a worktree the daemon made
    inside its own container: this works only because STATE_DIR has the same path on both sides."""
    issue = labelled(github, "Add a fix file", "edit")
    service = compose_service(state_dir)
    # The test container shares the host's network: the listener takes a free port, not 8080.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    service.environment["LISTEN_ADDRESS"] = f"0.0.0.0:{port}"
    container = run_like_compose(
        docker_client, daemon_image, service, ["start", "--foreground"], settings_file()
    )
    try:
        wait_until(lambda: github.pulls("acme/widgets"), 180, "the pull request")
        # The image's healthcheck: `status` in the container sees the daemon running.
        health = container.exec_run(["claude-issue-solver", "status"])
        assert health.exit_code == 0, health.output.decode()
        # The compose file's healthcheck: /healthz answers 200 once every repository polled.
        wait_until(lambda: container.exec_run(service.healthcheck).exit_code == 0, 60, "a healthy /healthz")
        wait_until(
            lambda: "pull request" in our_comments(github, issue["number"])[0]["body"], 60, "the comment"
        )
        container.stop(timeout=60)  # SIGTERM through docker's init: the daemon's graceful stop
        code, logs = finish(container, timeout=60)
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)
    assert code == 0 and "Traceback" not in logs, logs
    repo = github.repo("acme/widgets")
    assert "CLAUDE_FIX.md" in repo.git("ls-tree", "--name-only", "claude/issue-1")
    assert (state_dir / "state.json").is_file()  # the state lives on the host, at the same path
    assert_clean(state_dir)
    assert TOKEN not in logs
