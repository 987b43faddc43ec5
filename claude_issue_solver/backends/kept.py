"""What of a kept directory (:class:`~claude_issue_solver.backends.base.KeptDir`) the next process gets
back: the mechanics, on this host.

The pipeline chooses what is kept (``KeptDir.only``; for Claude's configuration directory, the session
transcripts); the Docker backend prunes the host directory it mounts before a process starts with it
(:func:`prune`), the Daytona backend packs only those files into the archive it carries into the
sandbox (:func:`kept_files`). Both walk the directory without following a link: what an earlier
process left there (an injected run may have left a ``settings.json`` with hooks, a ``CLAUDE.md``,
``agents/``, links out of the directory) is only ever looked at as directory entries, never through.

A pattern is ``/``-separated and matches a path of as many components, each by :func:`fnmatch.fnmatchcase`
(``projects/*/*.jsonl`` keeps ``projects/-workspace/<id>.jsonl``, not ``projects/x/memory/a.jsonl``).
Only regular files are kept; a directory stays only on the way to one.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from fnmatch import fnmatchcase
from pathlib import Path

from claude_issue_solver.backends import git as gitops

__all__ = ["kept_files", "prune"]


def kept_files(root: Path, only: Sequence[str] | None) -> list[str]:
    """The paths (relative, ``/``-separated, sorted) of the regular files under ``root`` that ``only``
    keeps (every regular file when None). Links are neither followed nor listed; a directory this
    process may not read is skipped."""
    patterns = _split(only)
    found: list[str] = []

    def walk(directory: Path, parts: tuple[str, ...]) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return
        for entry in entries:
            here = (*parts, entry.name)
            if entry.is_dir(follow_symlinks=False):
                if patterns is None or _may_hold(here, patterns):
                    walk(Path(entry.path), here)
            elif entry.is_file(follow_symlinks=False) and (patterns is None or _matches(here, patterns)):
                found.append("/".join(here))

    if _real_dir(root):
        walk(root, ())
    return found


def prune(root: Path, only: Sequence[str] | None) -> list[str]:
    """Remove from ``root`` everything ``only`` does not keep (nothing when None); what was removed.

    Run while no process uses the directory. A link is removed as a link; a directory left without
    permissions (by a process of the daemon's own uid) is made accessible first, never through a link.
    """
    patterns = _split(only)
    removed: list[str] = []
    if patterns is None or not _real_dir(root):
        return removed

    def walk(directory: Path, parts: tuple[str, ...]) -> None:
        if not os.access(directory, os.R_OK | os.W_OK | os.X_OK):
            os.chmod(directory, stat.S_IRWXU)  # lstat-checked as a directory by the caller
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            here = (*parts, entry.name)
            path, name = Path(entry.path), "/".join(here)
            if entry.is_dir(follow_symlinks=False):
                if _may_hold(here, patterns):
                    walk(path, here)
                    if not any(path.iterdir()):
                        path.rmdir()  # nothing kept below it
                else:
                    gitops.force_rmtree(path)
                    removed.append(f"{name}/")
            elif not (entry.is_file(follow_symlinks=False) and _matches(here, patterns)):
                path.unlink()  # another file, a link, a fifo: the next process does not get it
                removed.append(name)

    walk(root, ())
    return removed


def _split(only: Sequence[str] | None) -> list[tuple[str, ...]] | None:
    return None if only is None else [tuple(p.strip("/").split("/")) for p in only]


def _matches(parts: tuple[str, ...], patterns: list[tuple[str, ...]]) -> bool:
    return any(
        len(p) == len(parts) and all(fnmatchcase(n, q) for n, q in zip(parts, p, strict=True))
        for p in patterns
    )


def _may_hold(parts: tuple[str, ...], patterns: list[tuple[str, ...]]) -> bool:
    """Whether a directory at ``parts`` can hold a kept file (a pattern continues below it)."""
    return any(
        len(p) > len(parts) and all(fnmatchcase(n, q) for n, q in zip(parts, p[: len(parts)], strict=True))
        for p in patterns
    )


def _real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False
