"""Removing a tree whatever the agent made of it (read-only directories, deep nesting, odd names)."""

from __future__ import annotations

import collections
import os
import stat
from pathlib import Path


def force_rmtree(path: Path) -> None:
    """``rm -rf`` of a tree the agent made, through directories it left without read, write or search
    permission (``chmod 000``), never following a link it planted.

    Its own walk, not :func:`shutil.rmtree` with an error handler: that handler is handed the failed
    function (``os.open``, ``os.scandir``, ``os.path.islink``), which cannot be called again with a path
    alone -- retrying ``os.open(path)`` raised ``TypeError`` and leaked the tree -- and Python 3.12
    deprecates it for ``onexc``. Every directory is opened relative to its parent's descriptor with
    ``O_NOFOLLOW``, made ``u+rwx`` when it is not (through a descriptor, not its path), then emptied
    depth-first without recursion, holding at most 64 descriptors however deep the tree. What cannot be
    removed (another user's file under a daemon that is not root, an immutable file) is skipped, the rest
    is removed, and one :class:`OSError` then names the first such path and how many there were.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        os.unlink(path)
        return
    problems: list[str] = []
    parent_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _remove_dir_at(parent_fd, path.name, str(path), problems)
    finally:
        os.close(parent_fd)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        msg = f"could not remove all of {path}: {problems[0]}{more}"
        raise OSError(msg)


_RM_MAX_DEPTH = 64  # deeper directories are moved up into the top one, so few descriptors stay open


def _remove_dir_at(top_parent_fd: int, top_name: str, top_shown: str, problems: list[str]) -> None:
    """Remove the directory ``top_name`` of ``top_parent_fd`` and everything in it (see force_rmtree)."""
    # A frame: the directory's descriptor, its parent's, its name there, its path for messages, and the
    # entries still to remove in it as (name, is a directory). Only one branch's frames are open at once,
    # and at most _RM_MAX_DEPTH of them: a deeper directory is renamed into the top one and removed later.
    stack: list[tuple[int, int, str, str, collections.deque[tuple[str, bool]]]] = []
    moved = 0

    def enter(parent_fd: int, name: str, shown: str) -> None:
        nonlocal moved
        if len(stack) >= _RM_MAX_DEPTH:
            top_fd, _, _, _, top_entries = stack[0]
            moved += 1
            flat = f".cis-rm-{os.urandom(4).hex()}-{moved}"
            try:
                os.rename(name, flat, src_dir_fd=parent_fd, dst_dir_fd=top_fd)
            except OSError as exc:
                problems.append(f"{shown}: {exc.strerror or exc}")
            else:
                top_entries.append((flat, True))
            return
        fd = _open_dir_writable(parent_fd, name, shown, problems)
        if fd is None:
            return
        try:
            with os.scandir(fd) as found:
                entries = collections.deque((e.name, _is_dir(e)) for e in found)
        except OSError as exc:
            os.close(fd)
            problems.append(f"{shown}: {exc.strerror or exc}")
            return
        stack.append((fd, parent_fd, name, shown, entries))

    enter(top_parent_fd, top_name, top_shown)
    while stack:
        fd, parent_fd, name, shown, entries = stack[-1]
        if entries:
            child, is_dir = entries.popleft()
            child_shown = f"{shown}/{child}"
            if is_dir:
                enter(fd, child, child_shown)
                continue
            try:
                os.unlink(child, dir_fd=fd)
            except FileNotFoundError:
                pass
            except IsADirectoryError:  # replaced by a directory meanwhile
                enter(fd, child, child_shown)
            except OSError as exc:
                problems.append(f"{child_shown}: {exc.strerror or exc}")
            continue
        stack.pop()
        os.close(fd)
        try:
            os.rmdir(name, dir_fd=parent_fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if not problems:  # a directory left non-empty by an earlier problem is not news
                problems.append(f"{shown}: {exc.strerror or exc}")


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _open_dir_writable(parent_fd: int, name: str, shown: str, problems: list[str]) -> int | None:
    """A read descriptor on the directory ``name`` (never a link), made ``u+rwx`` first if it was not."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    try:
        fd = os.open(name, flags, dir_fd=parent_fd)
    except FileNotFoundError:
        return None
    except NotADirectoryError:  # a link (O_NOFOLLOW) or a file that replaced the directory: unlink it
        try:
            os.unlink(name, dir_fd=parent_fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            problems.append(f"{shown}: {exc.strerror or exc}")
        return None
    except PermissionError:
        # No read permission: make it readable through an O_PATH descriptor (which needs none), by its
        # /proc name, so a link swapped in meanwhile is never what gets the new mode.
        try:
            _chmod_dir_at(parent_fd, name)
            fd = os.open(name, flags, dir_fd=parent_fd)
        except OSError as exc:
            problems.append(f"{shown}: {exc.strerror or exc}")
            return None
    except OSError as exc:
        problems.append(f"{shown}: {exc.strerror or exc}")
        return None
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) & stat.S_IRWXU != stat.S_IRWXU:
            os.fchmod(fd, stat.S_IRWXU)
    except OSError as exc:  # not ours to change: what can be removed still is
        problems.append(f"{shown}: {exc.strerror or exc}")
    return fd


def _chmod_dir_at(parent_fd: int, name: str) -> None:
    path_fd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent_fd)
    try:
        proc = f"/proc/self/fd/{path_fd}"
        if os.path.exists(proc):
            os.chmod(proc, stat.S_IRWXU)
        else:  # no /proc: by name (what O_NOFOLLOW opened was a directory a moment ago)
            os.chmod(name, stat.S_IRWXU, dir_fd=parent_fd)
    finally:
        os.close(path_fd)
