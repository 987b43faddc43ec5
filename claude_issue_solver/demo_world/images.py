"""Local Docker images for tests: no registry is reachable, so every image is made here.

- :func:`fake_agent_image`: busybox plus the fake ``claude`` script; a second or two to build, cached.
The test suite's builders of the real agent image (``debootstrap`` base, ``Dockerfile.claude``) live
in ``tests/fakes/images.py`` and reuse the helpers here.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import logging
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import docker
import docker.errors

log = logging.getLogger(__name__)

FAKE_CLAUDE_SCRIPT = Path(__file__).resolve().parent / "fake_claude.sh"

HASH_LABEL = "claude-issue-solver.content-hash"
# Bump when the layout of the fake image changes without its inputs changing.
_FAKE_RECIPE_VERSION = b"fake-agent-image v1"
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ImageBuildError(RuntimeError):
    """An image could not be made; the message carries the tail of the build output."""


def fake_agent_image(client: docker.DockerClient, tag: str = "claude-issue-solver-fake-agent") -> str:
    """Return a tiny image whose ``claude`` is ``fake_claude.sh``; build it only if its inputs changed.

    The image meets the agent-image contract: ``claude`` on PATH, ``sh``, user ``claude`` uid 1000,
    ``USER 1000`` and ``WORKDIR /workspace`` (set through ``docker import`` changes), ``/task``,
    a 1777 ``/tmp``. There is no git in it. The result is ``<tag>:<hash12>`` unless ``tag`` already
    names a tag, in which case that tag is reused and its ``content-hash`` label decides on a rebuild.
    """
    busybox = _host_busybox()
    script = FAKE_CLAUDE_SCRIPT.read_bytes()
    busybox_bytes = busybox.read_bytes()
    digest = hashlib.sha256(_FAKE_RECIPE_VERSION + b"\0" + script + b"\0" + busybox_bytes).hexdigest()
    ref = tag if _has_tag(tag) else f"{tag}:{digest[:12]}"

    if _image_label(client, ref, HASH_LABEL) == digest:
        return ref
    # Test processes running side by side would each import and leave dangling duplicates.
    with _host_lock(ref):
        if _image_label(client, ref, HASH_LABEL) == digest:
            return ref
        applets = _busybox_applets(busybox)
        rootfs = _fake_rootfs_tar(busybox_bytes, applets, script)
        changes = [
            f"ENV PATH={_PATH}",
            "ENV DISABLE_AUTOUPDATER=1 CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 DISABLE_TELEMETRY=1",
            f"LABEL {HASH_LABEL}={digest}",
            "USER 1000",
            "WORKDIR /workspace",
            'CMD ["claude", "--version"]',
        ]
        _import(client, rootfs, ref, changes)
    log.info("built fake agent image %s", ref)
    return ref


def _host_busybox() -> Path:
    found = shutil.which("busybox")
    candidates = [Path(found)] if found else []
    candidates.append(Path("/bin/busybox"))
    for path in candidates:
        if path.is_file():
            # A dynamically linked busybox would not run in an image with no libc.
            head = path.read_bytes()[:4096]
            if b"/ld-linux" in head or b"/ld-musl" in head:
                continue
            return path.resolve()
    msg = "a static busybox (Debian package busybox-static) is needed to build the fake agent image"
    raise ImageBuildError(msg)


def _busybox_applets(busybox: Path) -> list[str]:
    out = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True).stdout
    return sorted({name for name in out.split() if name and "/" not in name and name != "busybox"})


def _fake_rootfs_tar(busybox: bytes, applets: Iterable[str], script: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add_dir(name: str, mode: int = 0o755, uid: int = 0) -> None:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = mode
            info.uid = info.gid = uid
            tar.addfile(info)

        def add_file(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            tar.addfile(info, io.BytesIO(data))

        for name in ("bin", "etc", "usr", "usr/local", "usr/local/bin", "task", "home"):
            add_dir(name)
        add_dir("root", 0o700)
        add_dir("tmp", 0o1777)
        # Owned by the agent so the image works even without a mounted worktree.
        add_dir("workspace", 0o755, uid=1000)
        add_dir("home/claude", 0o755, uid=1000)
        add_file("bin/busybox", busybox, 0o755)
        for applet in applets:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type = tarfile.SYMTYPE
            info.linkname = "busybox"
            info.mode = 0o777
            tar.addfile(info)
        add_file("usr/local/bin/claude", script, 0o755)
        add_file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nclaude:x:1000:1000:claude:/home/claude:/bin/sh\n"
            b"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        )
        add_file("etc/group", b"root:x:0:\nclaude:x:1000:\nnogroup:x:65534:\n")
    return buf.getvalue()


def _import(client: docker.DockerClient, src: bytes | str, ref: str, changes: list[str]) -> None:
    repository, _, tag = ref.rpartition(":")
    try:
        if isinstance(src, bytes):
            client.api.import_image_from_data(src, repository=repository, tag=tag, changes=changes)
        else:
            client.api.import_image(src=src, repository=repository, tag=tag, changes=changes)
    except docker.errors.APIError as exc:
        msg = f"docker import of {ref} failed: {exc}"
        raise ImageBuildError(msg) from exc
    if not _image_exists(client, ref):
        msg = f"docker import of {ref} reported success but the image is missing"
        raise ImageBuildError(msg)


@contextlib.contextmanager
def _host_lock(ref: str) -> Iterator[None]:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", ref)
    path = Path(tempfile.gettempdir()) / f"claude-issue-solver-image-{name}.lock"
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _has_tag(ref: str) -> bool:
    # "host:5000/name" has a colon but no tag: only a colon after the last slash is a tag.
    return ":" in ref.rsplit("/", 1)[-1]


def _image_exists(client: docker.DockerClient, ref: str) -> bool:
    try:
        client.images.get(ref)
    except docker.errors.ImageNotFound:
        return False
    return True


def _image_label(client: docker.DockerClient, ref: str, label: str) -> str | None:
    try:
        image = client.images.get(ref)
    except docker.errors.ImageNotFound:
        return None
    return (image.labels or {}).get(label)


def _tail(lines: list[str], n: int = 40) -> str:
    kept = [line.rstrip() for line in lines if line.strip()][-n:]
    return "\n".join(kept) if kept else "(no output)"


__all__ = ["FAKE_CLAUDE_SCRIPT", "HASH_LABEL", "ImageBuildError", "fake_agent_image"]
