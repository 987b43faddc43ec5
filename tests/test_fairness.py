"""Fair turns between repositories (:mod:`claude_issue_solver.store.fairness`) on an injected clock."""

from __future__ import annotations

from dataclasses import dataclass

from claude_issue_solver.store.fairness import (
    HOUR,
    FairnessLimits,
    next_start_at,
    note_start,
    pick,
    prune_starts,
)

NOW = 1_800_000_000.0


@dataclass(frozen=True)
class T:
    id: str
    repo: str


def _pending(spec: list[tuple[str, int]]) -> list[T]:
    """Tasks oldest first, repository by repository in the given order."""
    return [T(f"{repo}-{n}", repo) for repo, count in spec for n in range(count)]


def _ids(tasks: list[T]) -> list[str]:
    return [t.id for t in tasks]


def test_one_task_of_b_is_among_the_first_max_concurrent_behind_thirty_of_a() -> None:
    pending = _pending([("acme/a", 30), ("acme/b", 1)])
    limits = FairnessLimits(max_concurrent=3)

    assert _ids(pick(pending, [], {}, limits, now=NOW)) == ["acme/a-0", "acme/b-0", "acme/a-1"]


def test_b_gets_its_turn_when_slots_free_one_at_a_time() -> None:
    """The dispatcher claims one task per free slot; the start times carry the turn from call to call."""
    pending = _pending([("acme/a", 30), ("acme/b", 1)])
    limits = FairnessLimits(max_concurrent=1)
    starts: dict[str, list[float]] = {}
    started: list[str] = []
    now = NOW
    for _ in range(3):
        (task,) = pick(pending, [], starts, limits, now=now)
        started.append(task.id)
        pending.remove(task)
        starts = note_start(starts, task.repo, now=now)
        now += 60
    assert started == ["acme/a-0", "acme/b-0", "acme/a-1"]


def test_round_robin_over_three_repositories_oldest_first_within_each() -> None:
    pending = [T("a1", "o/a"), T("a2", "o/a"), T("b1", "o/b"), T("a3", "o/a"), T("c1", "o/c"), T("b2", "o/b")]
    assert _ids(pick(pending, [], {}, FairnessLimits(max_concurrent=6), now=NOW)) == [
        "a1",
        "b1",
        "c1",
        "a2",
        "b2",
        "a3",
    ]


def test_the_least_recently_started_repository_goes_first() -> None:
    pending = [T("a1", "o/a"), T("b1", "o/b"), T("c1", "o/c")]
    starts = {"o/a": [NOW - 10], "o/b": [NOW - 300]}  # c never started: first; then b (longer ago)
    assert _ids(pick(pending, [], starts, FairnessLimits(max_concurrent=3), now=NOW)) == ["c1", "b1", "a1"]


def test_the_global_cap_counts_running_tasks() -> None:
    pending = _pending([("o/a", 3)])
    running = [T("x", "o/x"), T("y", "o/y")]
    assert _ids(pick(pending, running, {}, FairnessLimits(max_concurrent=3), now=NOW)) == ["o/a-0"]
    assert pick(pending, [*running, T("z", "o/z")], {}, FairnessLimits(max_concurrent=3), now=NOW) == []
    assert pick([], [], {}, FairnessLimits(max_concurrent=3), now=NOW) == []


def test_per_repository_concurrency_cap() -> None:
    pending = _pending([("o/a", 5), ("o/b", 1)])
    limits = FairnessLimits(max_concurrent=5, repo_max_concurrent=2)
    # One of a already runs: a gets one more, b one; the other slots stay free.
    assert _ids(pick(pending, [T("run", "o/a")], {}, limits, now=NOW)) == ["o/a-0", "o/b-0"]
    assert pick(pending[:5], [T("r1", "o/a"), T("r2", "O/A")], {}, limits, now=NOW) == []


def test_per_hour_cap_on_an_injected_clock() -> None:
    limits = FairnessLimits(max_concurrent=10, repo_max_per_hour=2)
    pending = _pending([("o/a", 5), ("o/b", 1)])
    starts = {"o/a": [NOW - 3000]}
    # a started once within the hour: one more start for a, and b's.
    assert _ids(pick(pending, [], starts, limits, now=NOW)) == ["o/b-0", "o/a-0"]

    starts = {"o/a": [NOW - 3000, NOW - 1200]}
    assert _ids(pick(pending[:5], [], starts, limits, now=NOW)) == []
    # The oldest of the two leaves the window at NOW + 600.
    assert next_start_at("o/a", starts, limits, now=NOW) == NOW - 3000 + HOUR
    assert _ids(pick(pending[:5], [], starts, limits, now=NOW + 599)) == []
    assert _ids(pick(pending[:5], [], starts, limits, now=NOW + 601)) == ["o/a-0"]
    assert next_start_at("o/b", starts, limits, now=NOW) is None
    assert next_start_at("o/a", starts, FairnessLimits(max_concurrent=1), now=NOW) is None


def test_repositories_match_case_insensitively_and_any_task_shape_works() -> None:
    pending = [{"id": "1", "repo": "Acme/A"}, {"id": "2", "repo": "acme/a"}, {"id": "3", "repo": "acme/b"}]
    chosen = pick(
        pending,
        [],
        {"ACME/A": [NOW - 5]},
        FairnessLimits(max_concurrent=2),
        now=NOW,
        repo_of=lambda t: t["repo"],
    )
    assert [t["id"] for t in chosen] == ["3", "1"]


def test_starts_are_pruned_to_the_hour_but_keep_each_repositorys_latest() -> None:
    starts = {"o/a": [NOW - 7200, NOW - 5000], "o/b": [NOW - 4000, NOW - 100], "o/c": ["x", True], "o/d": 3}
    assert prune_starts(starts, now=NOW) == {"o/a": [NOW - 5000], "o/b": [NOW - 100]}
    assert note_start(None, "O/New", now=NOW) == {"o/new": [NOW]}
    assert note_start({"o/a": [NOW - 10]}, "o/a", now=NOW) == {"o/a": [NOW - 10, NOW]}
