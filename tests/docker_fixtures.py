"""Session-wide Docker fixtures: the client and the locally built agent images (imported by conftest)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

CLAUDE_IMAGE_TAG = "claude-issue-solver-test-claude:latest"


@pytest.fixture(scope="session")
def docker_client() -> Iterator[object]:
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:
        pytest.skip(f"no Docker daemon answers ({exc.__class__.__name__}: {exc})")
    yield client
    client.close()


@pytest.fixture(scope="session")
def fake_image(docker_client: object) -> str:
    """The busybox image whose `claude` is the fake script (a few MB, built in a second)."""
    from tests.fakes.images import fake_agent_image

    return fake_agent_image(docker_client)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def claude_image(docker_client: object) -> str:
    """Dockerfile.claude built on a debootstrapped Debian: the real CLI (minutes when cold, then cached)."""
    from tests.fakes.images import build_claude_image, debian_base_image

    base = debian_base_image(docker_client)  # type: ignore[arg-type]
    return build_claude_image(docker_client, base, CLAUDE_IMAGE_TAG)  # type: ignore[arg-type]
