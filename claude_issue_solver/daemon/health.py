"""``/healthz``: is the daemon doing its job? Every repository polled within a few intervals, and the
backend answers. One line of reason either way, for a person and for a compose healthcheck."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from claude_issue_solver.daemon.metrics import poll_healthy
from claude_issue_solver.store.state import StateStore

BACKEND_CHECK_TTL = 30.0  # a scrape every few seconds must not ping Docker or Daytona every time


class HealthCheck:
    def __init__(
        self,
        store: StateStore,
        *,
        repos: Callable[[], list[str]],
        poll_interval: float,
        backend_check: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.repos = repos
        self.poll_interval = poll_interval
        self.backend_check = backend_check
        self.clock = clock
        self.started_at = clock()
        self._lock = threading.Lock()
        self._backend: tuple[float, str | None] | None = None

    def __call__(self) -> tuple[bool, str]:
        now = self.clock()
        watcher = self.store.snapshot().get("watcher") or {}
        book, schedule = watcher.get("repos") or {}, watcher.get("schedule")
        problems = []
        for repo in self.repos():
            health = book.get(repo) or {}
            if not poll_healthy(
                health,
                now=now,
                poll_interval=self.poll_interval,
                started_at=self.started_at,
                repo=repo,
                schedule=schedule,
            ):
                why = health.get("last_error") or "no successful poll yet"
                problems.append(f"{repo}: {why}")
        backend = self._backend_problem(now)
        if backend:
            problems.append(f"backend: {backend}")
        if problems:
            return False, "unhealthy: " + "; ".join(problems)
        return True, f"ok: {len(self.repos())} repositories polled, backend answers"

    def _backend_problem(self, now: float) -> str | None:
        with self._lock:
            if self._backend is not None and now - self._backend[0] < BACKEND_CHECK_TTL:
                return self._backend[1]
        try:
            self.backend_check()
            problem = None
        except Exception as exc:
            problem = str(exc) or type(exc).__name__
        with self._lock:
            self._backend = (now, problem)
        return problem
