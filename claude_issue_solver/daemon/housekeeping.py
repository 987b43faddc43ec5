"""Housekeeping beside the daemon's loop, so that nothing in ``STATE_DIR`` grows without bound (issue #19).

Every ``HOUSEKEEPING_INTERVAL`` (and once at start) the :class:`Housekeeper`:

- prunes task logs (``logs/tasks/<task>.log``) whose task has left the state's history (the queue keeps
  the last 100 finished tasks), once they are an hour old -- so ``logs`` shows a log for exactly the
  tasks ``status`` lists;
- rotates ``logs/daemon.out`` (the stdout and stderr of a daemon ``start`` put in the background) when
  it is over 10 MB: copied to ``daemon.out.1`` (older copies shift up, two are kept) and truncated in
  place, which the daemon's append-only descriptors follow (:func:`claude_issue_solver.logs.rotate_output`;
  ``start`` does the same before it opens the file);
- compacts each repository's mirror (``mirrors/<owner>/<name>.git``) at most once per
  ``MIRROR_GC_INTERVAL``: ``git gc --auto`` under the mirror's lock (skipped for now when a task holds
  it), in the foreground, with the daemon user's configuration kept out as for every host git command.
  ``--auto`` does nothing unless loose objects or packs passed git's thresholds, so a tidy mirror costs
  one cheap command a day.

It is a service of the daemon (started before the loop, stopped after): its own thread, never the
dispatcher's. Each step is tested on its own with an injected clock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from filelock import Timeout

from claude_issue_solver.backends import git as gitops
from claude_issue_solver.logs import DAEMON_OUT, rotate_output
from claude_issue_solver.store.state import StateStore

log = logging.getLogger(__name__)

HOUSEKEEPING_INTERVAL = 600.0
MIRROR_GC_INTERVAL = 24 * 3600.0
MIRROR_GC_TIMEOUT = 3600.0  # a first compaction of a large repository takes a while
MIRROR_LOCK_WAIT = 5.0  # a task holding the mirror is never kept waiting: try again next time
TASK_LOG_GRACE = 3600.0  # a log younger than this is kept even without its task (a task being submitted)
# Git's own switches for a compaction in the foreground (the lock must cover all of it).
_GC_OPTIONS = ("-c", "gc.autoDetach=false", "-c", "maintenance.autoDetach=false")


def prune_task_logs(
    task_logs: Path, keep: Iterable[str], *, now: float, grace: float = TASK_LOG_GRACE
) -> list[str]:
    """Remove ``<task>.log`` files in ``task_logs`` of tasks not in ``keep`` and older than ``grace``
    (by modification time, against the wall clock ``now``). Returns the task ids whose logs went."""
    kept = set(keep)
    removed: list[str] = []
    try:
        entries = list(os.scandir(task_logs))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if not entry.name.endswith(".log") or not entry.is_file(follow_symlinks=False):
            continue
        task_id = entry.name.removesuffix(".log")
        if task_id in kept:
            continue
        try:
            if now - entry.stat(follow_symlinks=False).st_mtime < grace:
                continue
            os.unlink(entry.path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("could not remove the log of task %s: %s", task_id, exc.strerror or exc)
            continue
        removed.append(task_id)
    return sorted(removed)


def find_mirrors(mirrors: Path) -> list[Path]:
    """The bare mirrors under ``mirrors`` (``<owner>/<name>.git`` holding a ``HEAD``)."""
    found: list[Path] = []
    with contextlib.suppress(FileNotFoundError):
        for owner in sorted(mirrors.iterdir()):
            if owner.is_dir() and not owner.is_symlink():
                found += [
                    m for m in sorted(owner.glob("*.git")) if (m / "HEAD").is_file() and not m.is_symlink()
                ]
    return found


class MirrorCompactor:
    """``git gc --auto`` on each mirror, at most once per ``interval`` by the injected clock."""

    def __init__(
        self,
        mirrors: Path,
        *,
        interval: float = MIRROR_GC_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        lock_wait: float = MIRROR_LOCK_WAIT,
    ) -> None:
        self.mirrors = mirrors
        self.interval = interval
        self.clock = clock
        self.lock_wait = lock_wait
        self._last: dict[Path, float] = {}

    def run(self) -> list[Path]:
        """Compact the mirrors that are due; returns those it ran ``git gc --auto`` on."""
        ran: list[Path] = []
        for mirror in find_mirrors(self.mirrors):
            last = self._last.get(mirror)
            now = self.clock()
            if last is not None and now - last < self.interval:
                continue
            lock = gitops.mirror_lock(mirror, timeout=self.lock_wait)
            try:
                lock.acquire()
            except Timeout:
                log.debug("%s is in use; compacting it later", mirror)
                continue
            try:
                started = time.monotonic()
                proc = gitops.run_git(
                    [*_GC_OPTIONS, "gc", "--auto", "--quiet"],
                    cwd=mirror,
                    check=False,
                    timeout=MIRROR_GC_TIMEOUT,
                )
            except gitops.GitError as exc:
                log.warning("compacting %s failed: %s", mirror, exc)
            else:
                if proc.returncode != 0:
                    log.warning("`git gc --auto` in %s failed: %s", mirror, proc.stderr.strip()[-500:])
                elif time.monotonic() - started > 1.0:
                    log.info("compacted %s in %.1fs", mirror, time.monotonic() - started)
            finally:
                lock.release()
            self._last[mirror] = now
            ran.append(mirror)
        return ran


class Housekeeper:
    """The daemon's service that keeps ``STATE_DIR`` bounded (see the module's docstring)."""

    def __init__(
        self,
        store: StateStore,
        state_dir: Path,
        log_dir: Path,
        *,
        interval: float = HOUSEKEEPING_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.log_dir = log_dir
        self.interval = interval
        self.wall = wall
        self.compactor = MirrorCompactor(state_dir / "mirrors", clock=clock)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> None:
        """One round; each step's failure is logged, never raised."""
        for step in (self.prune_logs, self.rotate_output, self.compactor.run):
            try:
                step()
            except Exception:
                log.exception("housekeeping (%s) failed; trying again later", getattr(step, "__name__", step))

    def prune_logs(self) -> list[str]:
        keep = self.store.read()["tasks"].keys()
        removed = prune_task_logs(self.log_dir / "tasks", keep, now=self.wall())
        if removed:
            log.info("removed the logs of %d task(s) no longer in the history", len(removed))
        return removed

    def rotate_output(self) -> bool:
        return rotate_output(self.log_dir / DAEMON_OUT)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="housekeeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.run_once()
            self._stop.wait(self.interval)
