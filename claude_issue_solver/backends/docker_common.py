"""The Docker backend's shared pieces: its names, mounts and files, its workspace, and small helpers
(see :mod:`claude_issue_solver.backends.docker`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import requests

from claude_issue_solver.backends.base import (
    NAME_PREFIX,
    OutputBounds,
    Workspace,
    checked_id,
    checked_process,
)
from claude_issue_solver.relay import CONTAINER_DIR

CONTAINER_PREFIX = NAME_PREFIX
AGENT_PROCESS = "agent"  # its container carries the workspace's handle: the name operators know
WORKSPACE_MOUNT = "/workspace"
TASK_MOUNT = "/task"
KEPT_MOUNT = "/kept"
RELAY_MOUNT = CONTAINER_DIR  # the task's relay directory: its socket and the forwarder
BASE_SHA_FILE = "base_sha"  # the commit the work started from, for a daemon that restarts mid-task
DEFAULT_BRANCH_FILE = "default_branch"  # which branch's Dockerfile the image is built on, after a restart
FROM_DEFAULT_FILE = "from_default"  # "1" when the worktree started at the default branch's head
SETUP_IMAGE_FILE = "setup_image"  # the saved setup this task's later processes start from (a restart too)
RESTORE_PROCESS = "setup-restore"  # the container that puts a saved setup's files into the tree
RESTORE_TIMEOUT = 600.0  # seconds for copying a saved setup's files into the worktree
# The uid the agent image's user has (Dockerfile.claude); used when the daemon itself runs as root.
AGENT_UID = 1000
POLL_SECONDS = 1.0  # an inspect of a local container is cheap
# What an error message quotes of a failed copy's output.
_ERROR_BOUNDS = OutputBounds(head=0, tail=4096)
_DOCKER_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)


@dataclass(frozen=True)
class DockerWorkspace(Workspace):
    """A task's worktree on this host, and the mirror that registered it."""

    default_branch: str
    worktree: Path
    mirror: Path


def _container_name(task_id: str, process: str) -> str:
    base = f"{CONTAINER_PREFIX}{checked_id(task_id)}"
    return base if process == AGENT_PROCESS else f"{base}-{checked_process(process)}"


def agent_ids() -> tuple[int, int]:
    """The uid:gid the container runs as: the daemon's own, or the image's user when the daemon is root."""
    uid = os.getuid()
    return (AGENT_UID, AGENT_UID) if uid == 0 else (uid, os.getgid())


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def _subdirs(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.is_symlink())
    except FileNotFoundError:
        return []
