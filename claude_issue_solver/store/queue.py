"""Tasks and the persistent, bounded task queue.

The queue keeps no state of its own: every operation is one locked read-modify-write of the state file
(see :mod:`claude_issue_solver.store.state`), so the daemon's threads and any number of CLI processes see and
change the same queue, and a crash loses nothing that an operation had returned.
"""

from __future__ import annotations

import copy
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from claude_issue_solver.store import admission
from claude_issue_solver.store.fairness import FairnessLimits
from claude_issue_solver.store.state import StateStore

if TYPE_CHECKING:
    from claude_issue_solver.config import Config

HISTORY_LIMIT = 100
ROUTES_LIMIT = 5000  # issues and pull requests of ours kept per repository after their tasks left
ISSUE = "issue"  # a task's kind: the first run on a labelled issue
FOLLOWUP = "followup"  # a later run asked for by a trusted `@claude` comment (see triggers.py)


class TaskState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def live(self) -> bool:
        return self in (TaskState.PENDING, TaskState.RUNNING)


FINISHED = (TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED)


class QueueError(Exception):
    """A queue operation cannot be done (unknown task, wrong state for the operation)."""


@dataclass
class Task:
    """One unit of work on one issue."""

    id: str
    repo: str
    issue_number: int
    title: str
    kind: str = "issue"
    state: TaskState = TaskState.PENDING
    seq: int = 0
    attempts: int = 0
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    backend: str | None = None
    handle: str | None = None  # container name or sandbox id: found again by this after a restart
    branch: str | None = None
    pr_url: str | None = None
    error: str | None = None
    result: str | None = None
    cost_usd: float | None = None
    num_turns: int | None = None
    session_id: str | None = None
    duration_ms: int | None = None
    cancel_requested: bool = False
    # Free-form bookkeeping for the watcher and pipeline (labels, author, comment ids, progress).
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.repo}#{self.issue_number}"

    def to_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it deep-copies every field (6x slower); only meta holds containers.
        data = {name: getattr(self, name) for name in _FIELD_ORDER}
        data["state"] = self.state.value
        data["meta"] = copy.deepcopy(self.meta)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Task:
        if _FIELDS.issuperset(data):
            task = cls(**data)
        else:  # fields of a newer version: kept on disk, not known here
            task = cls(**{k: v for k, v in data.items() if k in _FIELDS})
        task.state = _STATES[task.state]  # a dict lookup: TaskState(value) costs ~10x more
        return task


_FIELD_ORDER = tuple(f.name for f in fields(Task))
_FIELDS = frozenset(_FIELD_ORDER)
_STATES = {s.value: s for s in TaskState}
_UPDATABLE = _FIELDS - {"id", "repo", "issue_number", "seq", "created_at"}


def new_task_id(repo: str, number: int) -> str:
    name = repo.split("/", 1)[-1].lower()
    return f"{name}-{number}-{secrets.token_hex(3)}"


class TaskQueue:
    """The task queue over a :class:`StateStore`.

    Invariants, each enforced inside one locked transaction: at most ``max_concurrent`` tasks are
    running; at most one live (pending or running) task exists per issue; finished tasks beyond the last
    ``HISTORY_LIMIT`` are dropped, oldest first. Which pending task starts is :func:`admission.admit`'s
    decision (the queue hold, the daily budget, repositories in turn under their caps), taken in the
    claim's own transaction.
    """

    def __init__(
        self,
        store: StateStore,
        *,
        max_concurrent: int = 3,
        clock: Callable[[], float] = time.time,
        history_limit: int = HISTORY_LIMIT,
        repo_max_concurrent: int | None = None,
        repo_max_per_hour: int | None = None,
        daily_budget: float | None = None,
    ) -> None:
        self.store = store
        self.max_concurrent = max_concurrent
        self.clock = clock
        self.history_limit = history_limit
        self.limits = FairnessLimits(max_concurrent, repo_max_concurrent, repo_max_per_hour)
        self.daily_budget = daily_budget

    @classmethod
    def for_config(
        cls, store: StateStore, config: Config, *, clock: Callable[[], float] = time.time
    ) -> TaskQueue:
        """The queue with the configured caps: ``MAX_CONCURRENT``, the per-repository ones, the budget."""
        return cls(
            store,
            max_concurrent=config.max_concurrent,
            clock=clock,
            repo_max_concurrent=config.repo_max_concurrent,
            repo_max_per_hour=config.repo_max_per_hour,
            daily_budget=config.daily_budget_usd,
        )

    # --- adding and finding -------------------------------------------------------------------

    def submit(
        self,
        repo: str,
        issue_number: int,
        title: str,
        *,
        kind: str = "issue",
        meta: dict[str, Any] | None = None,
    ) -> Task | None:
        """Queue work on an issue. Returns None when the issue already has a live task."""
        with self.store.transaction() as data:
            tasks = data["tasks"]
            if _live_for(tasks.values(), repo, issue_number) is not None:
                return None
            task = self._new_task(data, repo, issue_number, title, kind, dict(meta or {}))
            tasks[task.id] = task.to_dict()
            return task

    def submit_in(
        self, data: dict[str, Any], repo: str, issue_number: int, title: str, kind: str, meta: dict[str, Any]
    ) -> Task | None:
        """:meth:`submit` inside the caller's transaction (recorded with what made it, atomically)."""
        tasks = data.setdefault("tasks", {})
        if _live_for(tasks.values(), repo, issue_number) is not None:
            return None
        task = self._new_task(data, repo, issue_number, title, kind, dict(meta))
        tasks[task.id] = task.to_dict()
        return task

    def _new_task(
        self, data: dict[str, Any], repo: str, issue_number: int, title: str, kind: str, meta: dict[str, Any]
    ) -> Task:
        """A new pending task with the next sequence number (inside the caller's transaction)."""
        seq = int(data.get("next_seq", 1))
        data["next_seq"] = seq + 1
        return Task(
            id=new_task_id(repo, issue_number),
            repo=repo,
            issue_number=issue_number,
            title=title,
            kind=kind,
            seq=seq,
            created_at=self.clock(),
            meta=meta,
        )

    def get(self, task_id: str) -> Task:
        data = self.store.read()["tasks"].get(task_id)
        if data is None:
            msg = f"no task {task_id!r}"
            raise QueueError(msg)
        return Task.from_dict(data)

    def find(self, ref: str) -> Task:
        """A task by id, or by ``owner/repo#N`` (its live task, else its most recent one)."""
        records = self.store.read()["tasks"]
        if ref in records:
            return Task.from_dict(records[ref])
        if "#" in ref:
            repo, _, number = ref.rpartition("#")
            matches = [
                Task.from_dict(t)
                for t in records.values()
                if t["repo"].lower() == repo.lower() and str(t["issue_number"]) == number.strip()
            ]
            if matches:
                live = [t for t in matches if t.state.live]
                return (live or sorted(matches, key=lambda t: t.seq))[-1]
        msg = f"no task matches {ref!r} (give a task id or owner/repo#N)"
        raise QueueError(msg)

    def list(self, states: Iterable[TaskState] | None = None) -> list[Task]:
        records = self.store.read()["tasks"].values()
        if states is not None:
            wanted = {TaskState(s).value for s in states}
            records = [t for t in records if t["state"] in wanted]
        return sorted((Task.from_dict(t) for t in records), key=lambda t: t.seq)

    def live_for(self, repo: str, issue_number: int) -> Task | None:
        found = _live_for(self.store.read()["tasks"].values(), repo, issue_number)
        return Task.from_dict(found) if found else None

    def take_triggers(
        self, repo: str, issue_number: int, title: str
    ) -> tuple[Task | None, list[dict[str, Any]]]:
        """Turn the issue's recorded trigger comments into its follow-up task, in one transaction.

        A pending follow-up takes them in (several triggers before it starts become one run); an issue
        whose task is running, or whose first task has not started, keeps them waiting. Returns the task
        and the triggers it gained (none when they wait). Triggers are recorded by id, so a crash between
        "taken" and "cleared" cannot add one twice.
        """
        key = f"{repo}#{issue_number}"
        with self.store.transaction() as data:
            waiting = data.get("followups", {}).get("pending", {})
            triggers = list(waiting.get(key) or [])
            if not triggers:
                return None, []
            live = _live_for(data["tasks"].values(), repo, issue_number)
            if live is not None and not (live["state"] == TaskState.PENDING and live.get("kind") == FOLLOWUP):
                return None, []
            if live is None:
                task = self._new_task(data, repo, issue_number, title, FOLLOWUP, {"triggers": []})
                live = data["tasks"][task.id] = task.to_dict()
            meta = live.setdefault("meta", {})
            known = {t["id"] for t in meta.get("triggers", [])}
            added = [t for t in triggers if t["id"] not in known]
            meta["triggers"] = [*meta.get("triggers", []), *added]
            del waiting[key]
            return Task.from_dict(live), added

    # --- the lifecycle --------------------------------------------------------------------------

    def claim(self) -> Task | None:
        """Mark the next pending task running: the one :func:`admission.admit` lets start now, if any.

        Nothing starts while paused, at ``MAX_CONCURRENT``, while the queue holds for a Claude limit or
        the daily budget (after a limit's reset exactly one task starts, to probe it), or when every
        repository with pending work is at its own cap. Otherwise repositories take turns, oldest first
        within one.
        """
        # The dispatcher asks every second: while paused or with nothing pending (an idle daemon), the
        # state as last read says so without the lock, a parse or a write (1,000 repositories' state).
        seen = self.store.snapshot()
        if seen.get("paused") or not any(
            t.get("state") == TaskState.PENDING.value for t in (seen.get("tasks") or {}).values()
        ):
            return None
        with self.store.transaction() as data:
            if data.get("paused"):
                return None
            now = self.clock()
            task_id = admission.admit(data, limits=self.limits, daily_budget=self.daily_budget, now=now)
            if task_id is None:
                return None
            chosen = data["tasks"][task_id]
            chosen.update(
                state=TaskState.RUNNING.value,
                attempts=chosen.get("attempts", 0) + 1,
                started_at=now,
                finished_at=None,
                error=None,
            )
            # Runs started, never refunded (unlike attempts): names each run in the spend ledger.
            meta = chosen.setdefault("meta", {})
            meta["runs"] = int(meta.get("runs") or 0) + 1
            return Task.from_dict(chosen)

    def update(self, task_id: str, **changes: Any) -> Task:
        """Change fields of a task in place (the watcher refreshing a title, the pipeline its progress)."""
        unknown = set(changes) - _UPDATABLE
        if unknown:
            msg = f"cannot update task fields {sorted(unknown)}"
            raise QueueError(msg)
        with self.store.transaction() as data:
            task = _require(data, task_id)
            if "meta" in changes:
                task["meta"] = {**task.get("meta", {}), **changes.pop("meta")}
            for key, value in changes.items():
                task[key] = value.value if isinstance(value, TaskState) else value
            return Task.from_dict(task)

    def finish(self, task_id: str, state: TaskState, *, error: str | None = None, **changes: Any) -> Task:
        """Record a task's end. Finished tasks are history: kept for the last ``history_limit``."""
        if state not in FINISHED:
            msg = f"{state} is not a finished state"
            raise QueueError(msg)
        with self.store.transaction() as data:
            task = _require(data, task_id)
            task.update(changes)
            task.update(state=state.value, error=error, finished_at=self.clock(), cancel_requested=False)
            _prune_history(data, self.history_limit)
            return Task.from_dict(task)

    def requeue(self, task_id: str, reason: str) -> Task:
        """Put a running task back in line (its run was lost); it keeps its place by age."""
        with self.store.transaction() as data:
            task = _require(data, task_id)
            task.update(state=TaskState.PENDING.value, error=reason, handle=None, started_at=None)
            return Task.from_dict(task)

    def retry(self, task_id: str, *, force: bool = False) -> Task:
        """Run a failed or cancelled task again, on the same issue and branch; a completed one only with
        ``force`` (it did its work: running it again spends again)."""
        with self.store.transaction() as data:
            task = _require(data, task_id)
            if TaskState(task["state"]).live:
                msg = f"task {task_id} is {task['state']}; only a finished task can be retried"
                raise QueueError(msg)
            if task["state"] == TaskState.COMPLETED.value and not force:
                done = f" ({task['pr_url']})" if task.get("pr_url") else ""
                msg = (
                    f"task {task_id} completed{done}; running it again spends again: "
                    "`retry --force` if that is what you want"
                )
                raise QueueError(msg)
            if _live_for(data["tasks"].values(), task["repo"], task["issue_number"]) is not None:
                msg = f"{task['repo']}#{task['issue_number']} already has a live task"
                raise QueueError(msg)
            seq = int(data.get("next_seq", 1))
            data["next_seq"] = seq + 1
            task.update(
                state=TaskState.PENDING.value,
                seq=seq,
                attempts=0,
                error=None,
                handle=None,
                started_at=None,
                finished_at=None,
                cancel_requested=False,
            )
            return Task.from_dict(task)

    def request_cancel(self, task_id: str) -> Task:
        """Cancel a pending task at once; ask the daemon to stop a running one."""
        with self.store.transaction() as data:
            task = _require(data, task_id)
            state = TaskState(task["state"])
            if state is TaskState.PENDING:
                task.update(state=TaskState.CANCELLED.value, finished_at=self.clock(), error="cancelled")
            elif state is TaskState.RUNNING:
                task["cancel_requested"] = True
            else:
                msg = f"task {task_id} is already {state.value}"
                raise QueueError(msg)
            return Task.from_dict(task)

    # --- pause ------------------------------------------------------------------------------------

    def pause(self) -> bool:
        """Stop starting new tasks; running ones finish. Returns False if it was already paused."""
        with self.store.transaction() as data:
            was = bool(data.get("paused"))
            data["paused"] = True
            data["paused_at"] = data.get("paused_at") if was else self.clock()
            return not was

    def resume(self) -> bool:
        with self.store.transaction() as data:
            was = bool(data.get("paused"))
            data["paused"] = False
            data["paused_at"] = None
            return was

    @property
    def paused(self) -> bool:
        return bool(self.store.read().get("paused"))


def _live_for(tasks: Iterable[dict[str, Any]], repo: str, number: int) -> dict[str, Any] | None:
    for task in tasks:
        if (
            task["issue_number"] == number
            and task["repo"].lower() == repo.lower()
            and TaskState(task["state"]).live
        ):
            return task
    return None


def _require(data: dict[str, Any], task_id: str) -> dict[str, Any]:
    task = data["tasks"].get(task_id)
    if task is None:
        msg = f"no task {task_id!r}"
        raise QueueError(msg)
    return task


def _prune_history(data: dict[str, Any], limit: int) -> None:
    tasks: dict[str, dict[str, Any]] = data["tasks"]
    finished = [t for t in tasks.values() if not TaskState(t["state"]).live]
    if len(finished) <= limit:
        return
    finished.sort(key=lambda t: (t.get("finished_at") or 0, t["seq"]))
    for task in finished[: len(finished) - limit]:
        _keep_routes(data, task)
        del tasks[task["id"]]


def _keep_routes(data: dict[str, Any], task: dict[str, Any]) -> None:
    """A task leaving the history leaves its issue and pull requests behind (``followups.repos[repo]
    .routes``): an ``@claude`` on a pull request from long ago still finds its issue (triggers)."""
    meta = task.get("meta") or {}
    pulls = [int(pr) for pr in [*(meta.get("pr_numbers") or []), meta.get("pr_number")] if pr]
    keep_route(data, task["repo"], int(task["issue_number"]), pulls)


def keep_route(data: dict[str, Any], repo: str, number: int, pulls: Iterable[int] = ()) -> None:
    """Remember (inside the caller's transaction) that issue ``number`` and pull requests ``pulls`` of
    ``repo`` are ours, without a task: a task that left the history, or a run GitHub shows (handled)."""
    entry = data.setdefault("followups", {}).setdefault("repos", {}).setdefault(repo, {})
    routes = entry.setdefault("routes", {"issues": [], "pulls": {}})
    issues = {*routes["issues"], number}
    kept = {**routes["pulls"]}
    for pr in pulls:
        kept[str(int(pr))] = number
    routes["issues"] = sorted(issues)[-ROUTES_LIMIT:]
    routes["pulls"] = {k: kept[k] for k in sorted(kept, key=int)[-ROUTES_LIMIT:]}
