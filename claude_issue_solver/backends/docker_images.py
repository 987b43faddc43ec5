"""The agent image of the Docker backend: ``Dockerfile.claude`` built on the right base, and cached.

The base is the repository's own image when its default branch has a ``Dockerfile`` at the root (built
from the mirror, never from a checkout), else ``DOCKER_BASE_IMAGE``. Built images are tagged by a hash
of their inputs and reused; ``DOCKER_IMAGE`` skips all of it.

The network of a build: the repository's ``Dockerfile`` is the repository's code running on this host,
and so is ``Dockerfile.claude`` built on the image it made (its ``ONBUILD`` triggers, ``SHELL`` and
``ENV PATH`` decide what our ``RUN`` lines execute). Those builds get ``DOCKER_NETWORK`` -- the network
setup has -- and never the host's (:func:`build_network`: ``host`` becomes Docker's default bridge): on
the host network a ``RUN`` reaches whatever listens on the host's 127.0.0.1. ``Dockerfile.claude`` on
``DOCKER_BASE_IMAGE`` (the operator's choice) keeps the host network, as before.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests
from filelock import FileLock

from claude_issue_solver.backends import git as gitops
from claude_issue_solver.backends.base import BackendError, agent_dockerfile
from claude_issue_solver.logs import TaskLog

__all__ = ["AGENT_IMAGE_REPOSITORY", "BASE_IMAGE_PREFIX", "AgentImages", "build_network", "unreachable"]

logger = logging.getLogger(__name__)

AGENT_IMAGE_REPOSITORY = "claude-issue-solver-agent"
BASE_IMAGE_PREFIX = "claude-issue-solver-base-"
HOST_NETWORK = "host"
TRUSTED_BUILD_NETWORK = HOST_NETWORK  # Dockerfile.claude on the operator's DOCKER_BASE_IMAGE
_BUILD_TAIL_LINES = 40
_DOCKER_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)


class AgentImages:
    """Finds or builds the image a task's containers run."""

    def __init__(
        self,
        client: Callable[[], docker.DockerClient],
        state_dir: Path,
        *,
        base_image: str,
        configured: str | None,
        network: str = "bridge",
    ) -> None:
        self.client = client
        self.state_dir = state_dir
        self.base_image = base_image
        self.configured = configured
        self.network = network  # DOCKER_NETWORK: what a build of the repository's instructions gets
        self._lock = threading.Lock()

    def ensure(self, mirror: Path, repo: str, default_branch: str, log: TaskLog | None = None) -> str:
        """The agent image: the configured one, else ``Dockerfile.claude`` built on the right base.

        The base is the repository's own image when its default branch has a ``Dockerfile`` at the root,
        else ``DOCKER_BASE_IMAGE``. Built images are tagged by a hash of their inputs and reused.
        """
        configured = self.configured
        if configured:
            return configured
        dockerfile_path = agent_dockerfile()
        try:
            dockerfile_path.read_bytes()
        except OSError as exc:
            msg = f"cannot read {dockerfile_path} to build the agent image ({exc}); set DOCKER_IMAGE instead"
            raise BackendError(msg) from None
        # One build at a time per state dir: two tasks starting together must not build the same image.
        (self.state_dir / "locks").mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.state_dir / "locks" / "image.lock"), timeout=3600)
        with self._lock, lock:
            return self.build_agent_image(self._base_image(mirror, repo, default_branch, log), log)

    def agent_image_tag(self, base: str, *, pull: bool = False) -> str | None:
        """The tag ``Dockerfile.claude`` built on ``base`` gets: a hash of the file and the base's id.

        None when the base is not on this host (and ``pull`` is False).
        """
        base_id = self._local_image_id(base, pull=pull)
        if base_id is None:
            return None
        digest = hashlib.sha256(agent_dockerfile().read_bytes() + b"\0" + base_id.encode()).hexdigest()[:12]
        return f"{AGENT_IMAGE_REPOSITORY}:{digest}"

    def build_agent_image(self, base: str, log: TaskLog | None = None) -> str:
        """``Dockerfile.claude`` on ``base``, built unless an image with the same inputs exists."""
        tag = self.agent_image_tag(base, pull=True)
        assert tag is not None  # pull=True raises rather than returning None
        if self.present(tag):
            return tag
        _note(log, f"building the agent image {tag} from Dockerfile.claude on {base}")
        dockerfile = agent_dockerfile().read_bytes()
        # On the repository's image, the repository's instructions run too (ONBUILD, SHELL, ENV).
        network = build_network(self.network) if base.startswith(BASE_IMAGE_PREFIX) else TRUSTED_BUILD_NETWORK
        context = _single_file_tar("Dockerfile.claude", dockerfile)
        self._build(context, "Dockerfile.claude", tag, base, network, log)
        _note(log, f"built {tag}")
        return tag

    def present(self, ref: str) -> bool:
        return self._local_image_id(ref) is not None

    def _base_image(self, mirror: Path, repo: str, default_branch: str, log: TaskLog | None) -> str:
        ref = f"refs/remotes/origin/{default_branch}"
        probe = gitops.run_git(["cat-file", "-e", f"{ref}:Dockerfile"], cwd=mirror, check=False)
        if probe.returncode != 0:
            return self.base_image
        tree = gitops.run_git(["rev-parse", f"{ref}^{{tree}}"], cwd=mirror).stdout.strip()
        owner, _, name = repo.lower().partition("/")
        tag = f"{BASE_IMAGE_PREFIX}{_slug(owner)}-{_slug(name)}:{tree[:12]}"
        if self._local_image_id(tag) is not None:
            return tag
        _note(log, f"building the base image {tag} from the Dockerfile of {repo} {default_branch}")
        with tempfile.TemporaryDirectory(prefix="cis-archive-") as tmp:
            archive = Path(tmp) / "context.tar"
            gitops.run_git(["archive", "--format=tar", f"--output={archive}", ref], cwd=mirror)
            self._build(archive.read_bytes(), "Dockerfile", tag, None, build_network(self.network), log)
        return tag

    def _build(
        self,
        context: bytes,
        dockerfile: str,
        tag: str,
        base: str | None,
        network: str,
        log: TaskLog | None = None,
    ) -> None:
        """Build, streaming: each ``Step k/n`` line reaches ``log`` as it starts (a build can take
        minutes, and a silent one looks hung)."""
        chunks: list[dict[str, Any]] = []
        error: str | None = None
        try:
            stream = self.client().api.build(
                fileobj=io.BytesIO(context),
                custom_context=True,
                dockerfile=dockerfile,
                buildargs={"BASE_IMAGE": base} if base else None,
                tag=tag,
                network_mode=network,
                rm=True,
                forcerm=True,
                decode=True,
            )
            for chunk in stream:
                chunks.append(chunk)
                del chunks[: -_BUILD_TAIL_LINES * 4]  # enough for the tail, never the whole output
                if "error" in chunk:
                    error = str(chunk.get("error") or "").strip() or "the build failed"
                for line in str(chunk.get("stream") or "").splitlines():
                    if line.startswith("Step ") and log is not None:
                        log.write(f"build: {line.strip()[:200]}")
        except _DOCKER_ERRORS as exc:
            msg = f"building {tag} from {dockerfile} failed: {exc}"
            raise BackendError(msg, retryable=True) from None
        if error is not None:
            tail = _build_tail(chunks)
            msg = f"building {tag} from {dockerfile}" + (f" on {base}" if base else "")
            if network != HOST_NETWORK:  # a build that needs the network may fail for the lack of it
                msg += f" (its RUN steps had the network {network!r} from DOCKER_NETWORK, never the host's)"
            raise BackendError(f"{msg} failed: {error}\n{tail}") from None

    def _local_image_id(self, ref: str, *, pull: bool = False) -> str | None:
        try:
            return self.client().images.get(ref).id
        except docker.errors.ImageNotFound:
            if not pull:
                return None
        except _DOCKER_ERRORS as exc:
            raise BackendError(unreachable(exc), retryable=True) from None
        try:
            return self.client().images.pull(ref).id
        except _DOCKER_ERRORS as exc:
            msg = f"the base image {ref} is not on this host and pulling it failed: {exc}"
            raise BackendError(msg, retryable=True) from None


def build_network(network: str) -> str:
    """The network a build running the repository's instructions gets: ``DOCKER_NETWORK``, but never the
    host's (``host`` becomes Docker's default bridge, its own network namespace; on a dockerd started
    with ``--bridge=none`` that namespace has only loopback, so such a build has no network at all)."""
    return "default" if network == HOST_NETWORK else network


def unreachable(exc: Exception) -> str:
    return (
        f"cannot reach the Docker daemon: {exc}; is Docker running and may this user use it "
        "(member of the docker group, or DOCKER_HOST set)?"
    )


def _slug(text: str) -> str:
    # Image repository names allow lowercase alphanumerics with single separators only.
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "repo"


def _single_file_tar(name: str, data: bytes) -> bytes:
    # Only the Dockerfile travels: it copies nothing, and the daemon need not see any checkout.
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _build_tail(build_log: Iterable[dict[str, Any]]) -> str:
    lines: list[str] = []
    for chunk in build_log:
        text = chunk.get("stream") or chunk.get("error") or ""
        lines.extend(line for line in str(text).splitlines() if line.strip())
    return "\n".join(lines[-_BUILD_TAIL_LINES:]) or "(no build output)"


def _note(log: TaskLog | None, message: str) -> None:
    logger.info("%s", message)
    if log is not None:
        log.write(message)
