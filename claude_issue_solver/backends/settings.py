"""One settings type per backend: only its own settings and only the secrets it needs.

Built from the daemon's ``Config`` by :func:`claude_issue_solver.app.make_backend`, which imports the
chosen backend (and its SDK) only then; this module imports neither.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DaytonaSettings", "DockerSettings"]


@dataclass(frozen=True)
class DockerSettings:
    state_dir: Path  # mirrors, worktrees and task files live under it; resolved by the backend
    image: str | None = None  # DOCKER_IMAGE: use it as is; None builds Dockerfile.claude
    base_image: str = "node:20-bookworm-slim"
    memory: str = "4g"
    cpus: float = 2.0
    network: str = "bridge"
    pids_limit: int = 512


@dataclass(frozen=True)
class DaytonaSettings:
    state_dir: Path  # only for the owner label and a working directory for host-side ls-remote
    api_key: str | None = field(default=None, repr=False)
    api_url: str = "https://app.daytona.io/api"
    target: str | None = None
    snapshot: str = "claude-issue-solver"
    cpu: int = 2
    memory_gb: int = 4
    disk_gb: int = 10
    auto_delete_minutes: int = 1440
    poll_interval: float = 2.0
    task_timeout: int = 3600  # a sandbox's auto-stop must outlast the longest run
    # ANTHROPIC_BASE_URL: its host is all an offline process (the agent) may reach from its sandbox.
    anthropic_base_url: str | None = None
    # DAYTONA_NETWORK_ALLOW_LIST: IPv4 CIDRs (comma-separated) the whole sandbox is limited to; None: open.
    network_allow_list: str | None = None
