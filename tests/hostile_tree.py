"""What a hostile agent leaves in its tree for host-side git to trip over (issue #18).

A nested repository whose own configuration runs a command -- a ``clean`` filter named by its own
``.gitattributes``, a ``core.fsmonitor`` hook, a hooks path -- and a stale file in its index, so that a
``git status`` that looks into it re-reads the file through the filter. Built with the test's own git
(on the host, with the filter switched off while building), or packed as a tar for a container without
git to unpack (:func:`nested_repo_tar`).
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import tempfile
from pathlib import Path

__all__ = ["marker_for", "nested_repo_tar", "plant_nested_repo", "ran"]

_QUIET_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "Agent",
    "GIT_AUTHOR_EMAIL": "agent@example.invalid",
    "GIT_COMMITTER_NAME": "Agent",
    "GIT_COMMITTER_EMAIL": "agent@example.invalid",
}


def marker_for(base: Path) -> Path:
    """The path a hostile command would create; nothing under it exists beforehand."""
    return base / "PWNED"


def ran(marker: Path) -> list[str]:
    """Which of the planted commands ran (files named ``<marker>.<what>``)."""
    return sorted(p.name for p in marker.parent.glob(f"{marker.name}*"))


def _git(*args: str, cwd: Path) -> None:
    env = {**os.environ, **_QUIET_ENV}
    proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"git {' '.join(args)} failed: {proc.stderr}"


def plant_nested_repo(directory: Path, marker: Path) -> None:
    """Make ``directory`` a repository whose config runs commands that create ``<marker>.<what>``."""
    directory.mkdir(parents=True, exist_ok=True)
    _git("init", "--quiet", ".", cwd=directory)
    (directory / ".gitattributes").write_text("* filter=x\n")
    (directory / "stale.txt").write_text("one\n")
    _git("add", "-A", cwd=directory)
    _git("commit", "--quiet", "-m", "planted", cwd=directory)
    # Only now the commands: building the repository above must not create the marker.
    _git("config", "filter.x.clean", f"touch {marker}.clean; cat", cwd=directory)
    _git("config", "filter.x.smudge", f"touch {marker}.smudge; cat", cwd=directory)
    _git("config", "filter.x.required", "true", cwd=directory)
    _git("config", "core.fsmonitor", f"touch {marker}.fsmonitor; false", cwd=directory)
    _git("config", "core.hooksPath", str(directory / ".git" / "evil-hooks"), cwd=directory)
    _git("config", "diff.x.textconv", f"touch {marker}.textconv; cat", cwd=directory)
    hooks = directory / ".git" / "evil-hooks"
    hooks.mkdir()
    for hook in ("pre-commit", "post-checkout", "post-index-change", "reference-transaction"):
        (hooks / hook).write_text(f"#!/bin/sh\ntouch {marker}.hook-{hook}\n")
        (hooks / hook).chmod(0o755)
    # Stale: the index's stat data no longer matches, so a status inside re-reads it through the filter.
    (directory / "stale.txt").write_text("two\n")
    os.utime(directory / "stale.txt", (946684800, 946684800))


def nested_repo_tar(marker: Path) -> bytes:
    """:func:`plant_nested_repo`'s result as a tar of the directory's contents (for ``tar -x -C dir``)."""
    with tempfile.TemporaryDirectory(prefix="cis-hostile-") as tmp:
        root = Path(tmp) / "evil"
        plant_nested_repo(root, marker)
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as tar:
            for entry in sorted(root.iterdir()):
                tar.add(str(entry), arcname=entry.name)
        return out.getvalue()
