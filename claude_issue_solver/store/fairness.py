"""Fair turns between repositories: which pending tasks may start now.

:func:`pick` is pure: given the pending tasks (oldest first), the running ones, when each repository last
started tasks, and the caps, it returns the tasks to start, in order. Repositories take turns: the one
that started a task least recently goes first (one that never did before any that did; ties go to the
repository with the oldest pending task), and each pick counts as a start for the next turn — so a
repository with 30 pending tasks cannot keep one with a single task waiting, whether the dispatcher asks
for three tasks at once or for one at a time. Within a repository, oldest first.

Caps: ``max_concurrent`` running in all; ``repo_max_concurrent`` running per repository (None: only the
global cap); ``repo_max_per_hour`` starts per repository in any sliding hour (None: no cap).

The start times live in the state file beside the queue (``state["starts"]``, a JSON-able
``{repo: [epoch, …]}``) kept by :func:`note_start`, so the hourly cap survives restarts; finished tasks'
history is not enough, as it is bounded and drops old tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, TypeVar

__all__ = ["HOUR", "FairnessLimits", "next_start_at", "note_start", "pick", "prune_starts"]

HOUR = 3600.0
T = TypeVar("T")


@dataclass(frozen=True)
class FairnessLimits:
    max_concurrent: int
    repo_max_concurrent: int | None = None
    repo_max_per_hour: int | None = None


def _key(repo: str) -> str:
    # GitHub names are case-insensitive; the queue compares them lowered too.
    return repo.lower()


def _starts_of(recent_starts: Mapping[str, Sequence[float]]) -> dict[str, list[float]]:
    merged: dict[str, list[float]] = {}
    for repo, times in recent_starts.items():
        merged.setdefault(_key(repo), []).extend(float(t) for t in times)
    return merged


def pick(
    pending: Sequence[T],
    running: Sequence[T],
    recent_starts: Mapping[str, Sequence[float]],
    limits: FairnessLimits,
    *,
    now: float,
    repo_of: Callable[[T], str] = attrgetter("repo"),
) -> list[T]:
    """The pending tasks to start now, in the order to start them (see the module docstring)."""
    free = limits.max_concurrent - len(running)
    if free <= 0 or not pending:
        return []
    running_per_repo: dict[str, int] = {}
    for task in running:
        running_per_repo[_key(repo_of(task))] = running_per_repo.get(_key(repo_of(task)), 0) + 1
    starts = _starts_of(recent_starts)
    queues: dict[str, list[T]] = {}
    first_seen: dict[str, int] = {}
    for index, task in enumerate(pending):
        repo = _key(repo_of(task))
        queues.setdefault(repo, []).append(task)
        first_seen.setdefault(repo, index)

    def may_start(repo: str) -> bool:
        cap = limits.repo_max_concurrent
        if cap is not None and running_per_repo.get(repo, 0) >= cap:
            return False
        hourly = limits.repo_max_per_hour
        return hourly is None or sum(1 for t in starts.get(repo, []) if t > now - HOUR) < hourly

    last_start = {repo: list(times) for repo, times in starts.items()}
    picked_at: dict[str, int] = {}
    chosen: list[T] = []
    while len(chosen) < free:
        candidates = [repo for repo, tasks in queues.items() if tasks and may_start(repo)]
        if not candidates:
            break
        # Not yet picked in this call first, least recently started first (never started before anything),
        # then the oldest waiting task; among those already picked here, the earliest picked.
        repo = min(
            candidates,
            key=lambda r: (
                picked_at.get(r, -1),
                max(last_start.get(r, []), default=float("-inf")),
                first_seen[r],
            ),
        )
        picked_at[repo] = len(chosen)
        chosen.append(queues[repo].pop(0))
        running_per_repo[repo] = running_per_repo.get(repo, 0) + 1
        starts.setdefault(repo, []).append(now)
    return chosen


def next_start_at(
    repo: str,
    recent_starts: Mapping[str, Sequence[float]],
    limits: FairnessLimits,
    *,
    now: float,
) -> float | None:
    """When the hourly cap lets ``repo`` start again (``None``: it may start now, or there is no cap)."""
    cap = limits.repo_max_per_hour
    if cap is None:
        return None
    window = sorted(t for t in _starts_of(recent_starts).get(_key(repo), []) if t > now - HOUR)
    if len(window) < cap:
        return None
    # The start that must leave the window before one more fits.
    return window[len(window) - cap] + HOUR


def note_start(starts: Mapping[str, Any] | None, repo: str, *, now: float) -> dict[str, list[float]]:
    """The ``state["starts"]`` section with a start of ``repo`` at ``now`` added and old ones pruned."""
    updated = prune_starts(starts, now=now)
    updated.setdefault(_key(repo), []).append(float(now))
    return updated


def prune_starts(starts: Mapping[str, Any] | None, *, now: float) -> dict[str, list[float]]:
    """Keep the starts of the last hour, and each repository's latest (whose turn comes next needs it)."""
    kept: dict[str, list[float]] = {}
    if not isinstance(starts, Mapping):
        return kept
    for repo, times in starts.items():
        if not isinstance(times, list):
            continue
        valid = sorted(float(t) for t in times if isinstance(t, int | float) and not isinstance(t, bool))
        if not valid:
            continue
        recent = [t for t in valid if t > now - HOUR]
        kept[_key(str(repo))] = recent or valid[-1:]
    return kept
