"""The Docker backend's setup cache: a green setup container committed as an image, found by its key.

``docker commit`` keeps what setup installed outside the repository (``pip install --user``, ``~/.npm``,
``~/.cargo``, a venv in HOME) but not the worktree, which is a bind mount. So before the commit the
untracked and ignored paths setup left in the tree (``git ls-files --others``, listed through the
mirror's record of the worktree, never the worktree's own ``.git``) are put into the stopped container
at :data:`TREE_DIR` as a tar built on the host without following links (``put_archive``: one copy, no
process needed, and the daemon only reads what the agent's uid wrote, as ``read_file`` does). A later
workspace that restores the image unpacks them into its own tree *in a container as the agent's user*
(``cp -a``), never on the host as the daemon's user.

Images are ``claude-issue-solver-setup:<hash>`` where the hash covers the owner (state directory), the
agent image's id and the pipeline's key, so a rebuilt agent image never restores a setup made on the
old one. They carry the owner label like containers do; pruning touches only ours.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

import docker
import docker.errors
import requests
from docker.models.containers import Container
from docker.models.images import Image

from claude_issue_solver.backends import git as gitops
from claude_issue_solver.backends.base import LABEL_OWNER, LABEL_REPO, LABEL_TASK, BackendError
from claude_issue_solver.backends.docker_images import unreachable

__all__ = [
    "LABEL_AGENT_IMAGE",
    "LABEL_CREATED",
    "LABEL_SETUP_KEY",
    "SETUP_IMAGE_REPOSITORY",
    "TREE_DIR",
    "SetupImages",
    "image_id",
    "setup_labels",
    "untracked_paths",
]

SETUP_IMAGE_REPOSITORY = "claude-issue-solver-setup"
LABEL_SETUP_KEY = "claude-issue-solver.setup-key"
LABEL_AGENT_IMAGE = "claude-issue-solver.agent-image"  # the id of the image the setup ran on
LABEL_CREATED = "claude-issue-solver.created"  # seconds since the epoch: which of a repository's is newer
TREE_DIR = "/claude-issue-solver-setup/tree"  # what setup wrote into the tree, inside the image
_DOCKER_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)


def untracked_paths(worktree: Path, git_dir: Path) -> list[str]:
    """The untracked and ignored paths of the worktree (a directory holding only such files: its name/)."""
    proc = gitops.run_git(
        [
            *gitops.tree_options(worktree, git_dir),
            "ls-files",
            "-z",
            "--others",
            "--directory",
        ],
        cwd=worktree,
    )
    return [p.rstrip("/") for p in proc.stdout.split("\0") if p.strip("/")]


class SetupImages:
    """Finds, saves and prunes the setup images of one owner (state directory)."""

    def __init__(self, client: Callable[[], docker.DockerClient], owner: str) -> None:
        self.client = client
        self.owner = owner

    def tag_for(self, key: str, agent_image_id: str) -> str:
        digest = hashlib.sha256(f"{self.owner}\n{agent_image_id}\n{key}".encode()).hexdigest()
        return f"{SETUP_IMAGE_REPOSITORY}:{digest[:24]}"

    def find(self, tag: str) -> Image | None:
        """Our image of that tag; None when there is none (or it is another daemon's)."""
        try:
            image = self.client().images.get(tag)
        except docker.errors.ImageNotFound:
            return None
        except _DOCKER_ERRORS as exc:
            raise BackendError(unreachable(exc), retryable=True) from None
        return image if (image.labels or {}).get(LABEL_OWNER) == self.owner else None

    def save(
        self,
        container: Container,
        tag: str,
        *,
        worktree: Path,
        paths: Iterable[str],
        owner_ids: tuple[int, int],
        labels: dict[str, str],
    ) -> Image:
        """Put the worktree's ``paths`` into the stopped ``container`` at TREE_DIR; commit it as ``tag``."""
        with tempfile.TemporaryFile() as archive:
            _tree_archive(archive, worktree, paths, owner_ids)
            archive.seek(0)
            try:
                if not container.put_archive("/", archive):
                    msg = f"Docker refused the setup's files for {container.name}"
                    raise BackendError(msg)
                repository, _, name = tag.partition(":")
                return container.commit(
                    repository=repository,
                    tag=name,
                    message="claude-issue-solver setup cache",
                    pause=False,  # it has exited
                    conf={"Labels": {**labels, LABEL_CREATED: f"{time.time():.3f}"}},
                )
            except _DOCKER_ERRORS as exc:
                msg = f"committing {container.name} as {tag} failed: {exc}"
                raise BackendError(msg, retryable=True) from None

    def prune(self, repo: str, keep: Image, protected: set[str]) -> list[str]:
        """Remove ``repo``'s setup images of ours older than ``keep`` that nothing uses; what was removed.

        ``protected``: tags a live task's later processes start from. An image a container (running or
        not) was made from is refused by Docker (409) and kept.
        """
        newest = _created(keep)
        filters = {"label": [f"{LABEL_OWNER}={self.owner}", f"{LABEL_REPO}={repo}", LABEL_SETUP_KEY]}
        try:
            images = self.client().images.list(filters=filters)
        except _DOCKER_ERRORS as exc:
            raise BackendError(unreachable(exc), retryable=True) from None
        removed: list[str] = []
        for image in images:
            if image.id == keep.id or _created(image) >= newest or set(image.tags) & protected:
                continue
            try:
                self.client().images.remove(image.id)
            except docker.errors.APIError as exc:
                if exc.status_code not in (404, 409):  # gone already, or a container uses it
                    raise BackendError(f"removing {image.tags or image.id} failed: {exc}") from None
                continue
            except requests.exceptions.RequestException as exc:
                raise BackendError(unreachable(exc), retryable=True) from None
            removed.append(", ".join(image.tags) or image.short_id)
        return removed


def setup_labels(*, repo: str, task_id: str, key: str, agent_image_id: str, owner: str) -> dict[str, str]:
    return {
        LABEL_OWNER: owner,
        LABEL_REPO: repo,
        LABEL_TASK: task_id,  # the task whose setup it is (a container from it carries its own)
        LABEL_SETUP_KEY: key,
        LABEL_AGENT_IMAGE: agent_image_id,
    }


def _created(image: Image) -> float:
    try:
        return float((image.labels or {}).get(LABEL_CREATED) or 0.0)
    except ValueError:
        return 0.0


def _tree_archive(out: IO[bytes], worktree: Path, paths: Iterable[str], owner_ids: tuple[int, int]) -> None:
    """A tar of ``paths`` under TREE_DIR: links stored as links (never followed), owned by the agent's uid."""
    uid, gid = owner_ids
    root = TREE_DIR.strip("/")

    def owned(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if not (info.isfile() or info.isdir() or info.issym() or info.islnk()):
            return None  # fifos and the like: nothing a setup's result needs
        info.uid, info.gid, info.uname, info.gname = uid, gid, "", ""
        return info

    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        parts = root.split("/")
        for n in range(1, len(parts) + 1):  # the directories themselves, readable by the agent's user
            info = tarfile.TarInfo("/".join(parts[:n]))
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
            info.uid, info.gid = (0, 0) if n < len(parts) else (uid, gid)
            tar.addfile(info)
        for path in paths:
            full = worktree / path
            if not os.path.lexists(full):
                continue
            # add() lstat()s: a link is archived as a link; a directory is walked without following links.
            tar.add(str(full), arcname=f"{root}/{path}", recursive=True, filter=owned)


def image_id(client: docker.DockerClient, ref: str) -> str:
    try:
        return str(client.images.get(ref).id)
    except docker.errors.ImageNotFound:
        msg = f"the agent image {ref} is not on this host"
        raise BackendError(msg) from None
    except _DOCKER_ERRORS as exc:
        raise BackendError(unreachable(exc), retryable=True) from None
