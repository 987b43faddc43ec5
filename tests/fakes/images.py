"""The test suite's builders of the real agent image: no registry is reachable, so every image is made here.

- :func:`debian_base_image`: a ``debootstrap`` minbase root filesystem, for building the real agent image.
- :func:`build_claude_image`: ``Dockerfile.claude`` on any base.
- :func:`build_daemon_image`: the daemon's own ``Dockerfile`` on any Debian base.
"""

from __future__ import annotations

import io
import logging
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import docker
import docker.errors

from claude_issue_solver.demo_world.images import (
    _PATH,
    FAKE_CLAUDE_SCRIPT,
    HASH_LABEL,
    ImageBuildError,
    _has_tag,
    _host_lock,
    _image_exists,
    _import,
    _tail,
    fake_agent_image,
)

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE_CLAUDE = REPO_ROOT / "Dockerfile.claude"
_DEFAULT_MIRROR = "http://deb.debian.org/debian"
_HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

__all__ = [
    "DOCKERFILE_CLAUDE",
    "FAKE_CLAUDE_SCRIPT",
    "HASH_LABEL",
    "ImageBuildError",
    "build_claude_image",
    "build_daemon_image",
    "daemon_build_context",
    "debian_base_image",
    "fake_agent_image",
    "host_debian_mirror",
]


def _numeric_owner(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # Host user names mean nothing in the image; ids are what the rootfs was made with.
    info.uname = info.gname = ""
    return info


def debian_base_image(
    client: docker.DockerClient, tag: str = "claude-issue-solver-test-debian", suite: str = "bookworm"
) -> str:
    """Return a Debian ``minbase`` image made with debootstrap (needs root); skipped when ``tag`` exists.

    The host's CA bundle is copied in twice: as ``/etc/ssl/certs/ca-certificates.crt`` for use right
    away, and under ``/usr/local/share/ca-certificates`` so it survives the ``update-ca-certificates``
    that installing the ``ca-certificates`` package runs (it rebuilds the bundle from those sources).
    """
    ref = tag if _has_tag(tag) else f"{tag}:{suite}"
    if _image_exists(client, ref):
        return ref
    with _host_lock(ref):
        if _image_exists(client, ref):
            return ref
        _debootstrap_import(client, ref, suite)
    log.info("built Debian %s base image %s", suite, ref)
    return ref


def _debootstrap_import(client: docker.DockerClient, ref: str, suite: str) -> None:
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        msg = "debootstrap is not installed; cannot make a Debian base image"
        raise ImageBuildError(msg)
    mirror = host_debian_mirror()

    with tempfile.TemporaryDirectory(prefix="cis-debootstrap-") as tmp:
        root = Path(tmp) / "rootfs"
        cmd = [debootstrap, "--variant=minbase", suite, str(root), mirror]
        log.info("running %s", " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = _tail((proc.stdout + proc.stderr).splitlines())
            msg = f"debootstrap {suite} from {mirror} failed with exit code {proc.returncode}:\n{tail}"
            raise ImageBuildError(msg)

        if _HOST_CA_BUNDLE.is_file():
            for dest in ("etc/ssl/certs/ca-certificates.crt", "usr/local/share/ca-certificates/host.crt"):
                target = root / dest
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(_HOST_CA_BUNDLE, target)

        # Through a file rather than memory: the tree is a few hundred MB.
        tar_path = Path(tmp) / "rootfs.tar"
        with tarfile.open(tar_path, "w") as tar:
            tar.add(root, arcname=".", filter=_numeric_owner)
        _import(client, str(tar_path), ref, [f"ENV PATH={_PATH}", "ENV LANG=C.UTF-8", 'CMD ["bash"]'])


def build_claude_image(
    client: docker.DockerClient, base_image: str, tag: str, *, nocache: bool = False
) -> str:
    """Build ``Dockerfile.claude`` on ``base_image`` as ``tag`` and return ``tag``.

    The build output is logged at DEBUG on this module's logger, line by line; on failure its tail is
    in the :class:`ImageBuildError`. ``nocache`` forces every step to run (and to log).

    Only the Dockerfile is sent as the build context (it copies nothing), so the repository's
    working tree, virtualenvs and ``.git`` never travel to the daemon.
    """
    dockerfile = DOCKERFILE_CLAUDE.read_bytes()
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile.claude")
        info.size = len(dockerfile)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(dockerfile))
    context.seek(0)

    return _build(
        client,
        f"{tag} from Dockerfile.claude on {base_image}",
        fileobj=context,
        custom_context=True,
        dockerfile="Dockerfile.claude",
        buildargs={"BASE_IMAGE": base_image},
        tag=tag,
        nocache=nocache,
    )


def daemon_build_context() -> io.BytesIO:
    """The daemon image's build context exactly as ``docker build`` sends it: the checkout, filtered by
    its ``.dockerignore`` (docker-py's own implementation of the rules)."""
    from docker.utils.build import tar

    patterns = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    context = tar(str(REPO_ROOT), exclude=patterns, dockerfile=("Dockerfile", None))
    return io.BytesIO(context.read())


def build_daemon_image(client: docker.DockerClient, base_image: str, tag: str) -> str:
    """Build the daemon's own ``Dockerfile`` on ``base_image`` as ``tag``; unchanged layers are reused."""
    return _build(
        client,
        f"{tag} from Dockerfile on {base_image}",
        fileobj=daemon_build_context(),
        custom_context=True,
        dockerfile="Dockerfile",
        buildargs={"BASE_IMAGE": base_image},
        tag=tag,
    )


def _build(client: docker.DockerClient, what: str, **kwargs: object) -> str:
    """Run one build, log its output at DEBUG line by line, and return its tag; on failure the
    :class:`ImageBuildError` carries the tail of the output."""
    tag = str(kwargs["tag"])
    lines: list[str] = []
    error: str | None = None
    stream = client.api.build(
        network_mode="host",
        rm=True,
        forcerm=True,
        # A pull would fail (no registry); the base is always local.
        pull=False,
        decode=True,
        **kwargs,
    )
    try:
        for chunk in stream:
            if "stream" in chunk:
                text = chunk["stream"]
                lines.extend(text.splitlines())
                for line in text.splitlines():
                    log.debug("build %s: %s", tag, line)
            if "error" in chunk:
                error = chunk["error"]
                detail = chunk.get("errorDetail", {}).get("message")
                if detail and detail != error:
                    error = f"{error} ({detail})"
    except docker.errors.APIError as exc:
        error = str(exc)
    if error is not None:
        msg = f"building {what} failed: {error}\n{_tail(lines)}"
        raise ImageBuildError(msg)
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        msg = f"building {what} produced no image:\n{_tail(lines)}"
        raise ImageBuildError(msg) from None
    return tag


def host_debian_mirror() -> str:
    """The first non-security Debian mirror of the host's apt sources (deb822 or one-line format)."""
    candidates: list[str] = []
    sources_d = Path("/etc/apt/sources.list.d")
    if sources_d.is_dir():
        for path in sorted(sources_d.glob("*.sources")):
            for line in path.read_text(errors="replace").splitlines():
                if line.strip().lower().startswith("uris:"):
                    candidates.extend(line.split(":", 1)[1].split())
    for path in [Path("/etc/apt/sources.list"), *sorted(sources_d.glob("*.list"))]:
        if path.is_file():
            for line in path.read_text(errors="replace").splitlines():
                match = re.match(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)", line)
                if match:
                    candidates.append(match.group(1))
    for uri in candidates:
        if uri.startswith(("http://", "https://")) and "security" not in uri and "debian" in uri:
            return uri
    return _DEFAULT_MIRROR
