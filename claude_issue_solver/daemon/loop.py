"""The daemon: a poller, a dispatcher and one monitor thread per running task.

The work itself is injected: a *watcher* (called every ``POLL_INTERVAL``; it turns labelled issues into
tasks) and a *runner* (runs one task to its end; see :class:`Runner`). Tests construct a ``Daemon``
with fakes of both and drive it with :meth:`Daemon.run_once`, or run :meth:`Daemon.run` in a thread.

Threading model:
- main thread: the dispatcher loop in :meth:`run` -- reads signals, claims pending tasks within the
  concurrency bound, starts monitors, relays cancel requests; wakes at least once a second so ``pause``
  and ``resume`` from the CLI take effect within a second.
- poller thread: calls the watcher every ``poll_interval`` seconds (a slow GitHub never delays dispatch),
  and polls one repository at once when :meth:`Daemon.poke` asks for it (a webhook delivery). With a
  schedule (``next_poll_in``), the watcher is called whenever the schedule says something is due
  (:class:`~claude_issue_solver.github.poll_schedule.PollSchedule` spreads the repositories evenly over time).
- listener thread (optional, ``LISTEN_ADDRESS``): the HTTP server for webhooks, ``/metrics`` and
  ``/healthz`` (see :mod:`claude_issue_solver.daemon.listener`); started before the loop, stopped after it.
- monitor threads (one per running task): call the runner, then record the outcome in the queue.

No task stays ``running`` without a monitor (issue #19). An end that cannot be written (the disk is
full) is kept in memory and written again each cycle until it is; a run the disk stopped half-way
(``ENOSPC`` while the runner wrote its log or the state) is resumed, with back-off, once it can go on;
and a ``running`` task that no monitor watches and no pending end covers (its monitor died) is found
every ``ORPHAN_CHECK_INTERVAL`` and resumed as a restarted daemon resumes it.
All shared state lives in the state file behind the store's lock; the daemon's own dicts are guarded by
``self._lock``.
"""

from __future__ import annotations

import errno
import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Protocol

from claude_issue_solver.store.outcome import Outcome, TaskControl
from claude_issue_solver.store.queue import QueueError, Task, TaskQueue, TaskState

__all__ = ["Daemon", "Outcome", "Runner", "TaskControl"]  # the two shared types re-exported for callers

log = logging.getLogger(__name__)

DISPATCH_INTERVAL = 1.0
SCHEDULE_FLOOR = 0.01  # the poller waits at least this long between two looks at a schedule
SHUTDOWN_GRACE = 5.0
ORPHAN_CHECK_INTERVAL = 10.0  # how often running tasks are checked for a monitor
RESUME_BACKOFF = (10.0, 600.0)  # a run the full disk stopped: first and longest wait before resuming it
UNRECORDED_LOG_INTERVAL = 300.0  # an end that still cannot be written is logged again this often
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


@dataclass
class _Unrecorded:
    """The end of a task that could not be written yet (kept in memory, written again each cycle)."""

    task: Task
    outcome: Outcome
    tries: int = 1
    logged_at: float = 0.0


def no_space(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is the disk or the quota being full."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if getattr(current, "errno", None) in _NO_SPACE:
            return True
        current = current.__cause__ or current.__context__
    return False


class Runner(Protocol):
    def run(self, task: Task, control: TaskControl) -> Outcome | None:
        """Do the task from the start. ``None`` means detached: the work goes on without us."""

    def resume(self, task: Task, control: TaskControl) -> Outcome | None:
        """Pick up a task that was running when the previous daemon stopped or died."""

    def reconcile(self, live: list[Task]) -> None:
        """Remove leftovers (containers, sandboxes, worktrees) that no live task owns."""


Watcher = Callable[[], object]


class Service(Protocol):
    """Something that runs beside the loop (the HTTP listener): started first, stopped last."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class Daemon:
    def __init__(
        self,
        queue: TaskQueue,
        runner: Runner,
        *,
        watcher: Watcher | None = None,
        poll_interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        on_ready: Callable[[], None] | None = None,
        poll_one: Callable[[str], object] | None = None,
        on_finished: Callable[[Task], None] | None = None,
        services: tuple[Service, ...] = (),
        next_poll_in: Callable[[], float] | None = None,
        held: Callable[[], str | None] | None = None,
    ) -> None:
        self.queue = queue
        self.runner = runner
        self.watcher = watcher
        self.poll_interval = poll_interval
        self.clock = clock
        self.on_ready = on_ready
        self.poll_one = poll_one  # poll one repository now (a webhook said it changed)
        self.on_finished = on_finished  # e.g. the metrics' observation of a finished task
        self.services = services
        # Seconds until the watcher has something due (a schedule); None: poll every poll_interval.
        self.next_poll_in = next_poll_in
        # Why no task may start now, or None (GitHub asked the daemon to stop sending for a while).
        self.held = held
        self._held_why: str | None = None
        self._poked: set[str] = set()
        self._poke = threading.Event()
        self._lock = threading.Lock()
        self._monitors: dict[str, tuple[threading.Thread, TaskControl]] = {}
        self._unrecorded: dict[str, _Unrecorded] = {}  # ends to write again (guarded by _lock)
        self._stalled: dict[str, tuple[float, int]] = {}  # runs the full disk stopped: (resume at, times)
        self._next_orphan_check: float | None = None
        self._signals: list[int] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._next_poll: float | None = None
        self._started = False

    # --- the step ------------------------------------------------------------------------------

    def startup(self) -> None:
        """Resume tasks that were running when the last daemon ended, then clean up leftovers."""
        if self._started:
            return
        self._started = True
        running = self.queue.list([TaskState.RUNNING])
        for task in running:
            log.info("resuming task %s (%s), left running by the previous daemon", task.id, task.ref)
            self._start_monitor(task, resume=True)
        try:
            self.runner.reconcile(self.queue.list([TaskState.PENDING, TaskState.RUNNING]))
        except Exception:
            log.exception("reconciling leftovers failed; will try again at the next start")

    def run_once(self) -> None:
        """One cycle: poll if due, relay cancel requests, reap finished monitors, dispatch."""
        self.startup()
        if self.watcher is not None and not self._stop.is_set():
            now = self.clock()
            if self.next_poll_in is not None:
                self.poll_poked()  # a scheduled poll covers some repositories only: pokes go first
                if self._next_poll is None or now >= self._next_poll:
                    started = self.poll()
                    if isinstance(started, list):  # polls the watcher started: a step waits for them
                        futures.wait([f for f in started if isinstance(f, futures.Future)])
                    self._next_poll = now + self._scheduled_wait()
            elif self._next_poll is None or now >= self._next_poll:
                self._next_poll = now + self.poll_interval
                self._take_poked()  # the full poll covers them
                self.poll()
            else:
                self.poll_poked()
        self._relay_cancels()
        self._reap()
        if not self._stop.is_set():
            try:
                self.dispatch()
            except Exception:  # a full disk refuses the claim's write: nothing was claimed
                log.exception("dispatching failed; trying again at the next cycle")

    def poll(self) -> object:
        """Call the watcher once (what it returns: a scheduled watcher, the polls it started); a failing
        watcher is logged, never fatal."""
        if self.watcher is None:
            return None
        try:
            return self.watcher()
        except Exception:
            log.exception("the watcher failed; trying again at the next poll")
            return None

    def poke(self, repo: str) -> None:
        """Ask for ``repo`` to be polled now (from any thread; only records and wakes the poller)."""
        with self._lock:
            self._poked.add(repo)
        self._poke.set()

    def wake(self) -> None:
        """Dispatch now rather than at the next tick (e.g. a task was just queued)."""
        self._wake.set()

    def _take_poked(self) -> list[str]:
        with self._lock:
            poked, self._poked = sorted(self._poked), set()
        return poked

    def poll_poked(self) -> None:
        """Poll each repository a webhook named since the last look; failures are logged, never fatal."""
        if self.poll_one is None:
            self._take_poked()
            return
        for repo in self._take_poked():
            try:
                self.poll_one(repo)
            except Exception:
                log.exception("polling %s at a webhook's request failed", repo)

    def dispatch(self) -> list[Task]:
        """Start as many pending tasks as the concurrency bound allows (the queue enforces it)."""
        started: list[Task] = []
        why = self.held() if self.held is not None else None
        if why != self._held_why:  # said once as it begins and once as it ends, not every cycle
            if why is not None:
                log.warning("no task starts until then: %s", why)
            else:
                log.info("tasks start again")
            self._held_why = why
        if why is not None:
            return started
        while not self._stop.is_set():
            task = self.queue.claim()
            if task is None:
                break
            log.info("starting task %s for %s (attempt %d)", task.id, task.ref, task.attempts)
            self._start_monitor(task, resume=False)
            started.append(task)
        return started

    # --- monitors ------------------------------------------------------------------------------

    def _start_monitor(self, task: Task, *, resume: bool) -> None:
        control = TaskControl()
        if task.cancel_requested:
            control.cancel.set()
        thread = threading.Thread(
            target=self._monitor, args=(task, control, resume), name=f"monitor-{task.id}", daemon=True
        )
        with self._lock:
            self._monitors[task.id] = (thread, control)
        thread.start()

    def _monitor(self, task: Task, control: TaskControl, resume: bool) -> None:
        try:
            try:
                outcome = (self.runner.resume if resume else self.runner.run)(task, control)
            except Exception as exc:
                if no_space(exc):
                    self._stall(task, exc)
                    return
                log.exception("task %s crashed inside the daemon", task.id)
                outcome = Outcome(TaskState.FAILED, error=f"internal error: {type(exc).__name__}: {exc}")
            if outcome is None:
                log.info("task %s left running (daemon stopping); it resumes at the next start", task.id)
                return
            with self._lock:
                self._stalled.pop(task.id, None)
            try:
                self._record(task, outcome)
            except Exception as exc:
                self._keep_unrecorded(task, outcome, exc)
        finally:
            self._wake.set()

    def _record(self, task: Task, outcome: Outcome) -> None:
        """Write the end of a task to the queue (raises when the state cannot be written)."""
        if outcome.state is TaskState.PENDING:
            self.queue.requeue(task.id, outcome.error or "requeued")
            log.info("task %s requeued: %s", task.id, outcome.error)
            return
        finished = self.queue.finish(task.id, outcome.state, error=outcome.error, **outcome.fields)
        self._observe(finished)
        log.info("task %s %s%s", task.id, outcome.state.value, f": {outcome.error}" if outcome.error else "")

    def _keep_unrecorded(self, task: Task, outcome: Outcome, exc: Exception) -> None:
        if isinstance(exc, QueueError):  # the task is gone from the state: nothing to write it to
            log.error("could not record the end of task %s: %s", task.id, exc)
            return
        with self._lock:
            self._unrecorded[task.id] = _Unrecorded(task, outcome, logged_at=self.clock())
        log.error(
            "could not record the end of task %s (%s): %s; it is kept in memory and written as soon as "
            "the state can be written (the task holds its slot until then)",
            task.id,
            outcome.state.value,
            exc,
        )

    def _stall(self, task: Task, exc: BaseException) -> None:
        """The run stopped on a full disk: leave it running, resume it later (see _resume_orphans)."""
        now = self.clock()
        with self._lock:
            _, times = self._stalled.get(task.id, (0.0, 0))
            wait = min(RESUME_BACKOFF[0] * 2**times, RESUME_BACKOFF[1])
            self._stalled[task.id] = (now + wait, times + 1)
        log.error(
            "task %s stopped: %s; it stays running and resumes in %.0fs, once the disk has room",
            task.id,
            exc,
            wait,
        )

    def _write_unrecorded(self) -> None:
        """Try again to write each end that could not be written; loud, but not every second."""
        with self._lock:
            pending = list(self._unrecorded.values())
        for item in pending:
            try:
                self._record(item.task, item.outcome)
            except QueueError as exc:
                log.error("could not record the end of task %s: %s; giving up on it", item.task.id, exc)
            except Exception as exc:
                item.tries += 1
                now = self.clock()
                if now - item.logged_at >= UNRECORDED_LOG_INTERVAL:
                    item.logged_at = now
                    log.error(
                        "the end of task %s (%s) is still not written after %d tries: %s",
                        item.task.id,
                        item.outcome.state.value,
                        item.tries,
                        exc,
                    )
                continue
            else:
                log.warning("recorded the end of task %s after %d tries", item.task.id, item.tries + 1)
            with self._lock:
                self._unrecorded.pop(item.task.id, None)

    def _resume_orphans(self) -> None:
        """Resume each running task that no monitor watches and no pending end covers."""
        now = self.clock()
        if self._next_orphan_check is not None and now < self._next_orphan_check:
            return
        self._next_orphan_check = now + ORPHAN_CHECK_INTERVAL
        try:
            running = self.queue.list([TaskState.RUNNING])
        except Exception:
            log.exception("could not read the running tasks")
            return
        for task in running:
            with self._lock:
                if task.id in self._monitors or task.id in self._unrecorded:
                    continue
                stalled = self._stalled.get(task.id)
            if stalled is not None:
                if now < stalled[0]:
                    continue
                log.info("resuming task %s (%s), stopped earlier by a full disk", task.id, task.ref)
            else:
                log.warning(
                    "task %s (%s) is running but no monitor watches it (its monitor ended without recording "
                    "an end); resuming it",
                    task.id,
                    task.ref,
                )
            self._start_monitor(task, resume=True)

    @property
    def unrecorded(self) -> list[str]:
        """Tasks whose end is known but not yet written to the state."""
        with self._lock:
            return sorted(self._unrecorded)

    def _observe(self, task: Task) -> None:
        if self.on_finished is None:
            return
        try:
            self.on_finished(task)
        except Exception:
            log.exception("observing the end of task %s failed", task.id)

    def _relay_cancels(self) -> None:
        with self._lock:
            monitors = dict(self._monitors)
        if not monitors:
            return
        wanted = {t.id for t in self.queue.list([TaskState.RUNNING]) if t.cancel_requested}
        for task_id, (_, control) in monitors.items():
            if task_id in wanted and not control.cancel.is_set():
                log.info("cancelling task %s at the operator's request", task_id)
                control.cancel.set()

    def _reap(self) -> None:
        with self._lock:
            for task_id, (thread, _) in list(self._monitors.items()):
                if not thread.is_alive():
                    thread.join()
                    del self._monitors[task_id]
        self._write_unrecorded()
        if not self._stop.is_set():
            self._resume_orphans()

    @property
    def active(self) -> list[str]:
        with self._lock:
            return [task_id for task_id, (thread, _) in self._monitors.items() if thread.is_alive()]

    # --- the loop ------------------------------------------------------------------------------

    def handle_signal(self, signum: int, _frame: object = None) -> None:
        """Only record; the loop acts (a handler that does work can deadlock on a held lock)."""
        self._signals.append(signum)
        self._wake.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.handle_signal)
        # The CLI sends SIGUSR1 after changing the queue (pause, resume, submit) to skip the wait.
        signal.signal(signal.SIGUSR1, lambda *_: self._wake.set())

    def run(self) -> int:
        """Run until a signal asks us to stop. Returns the exit code."""
        self.startup()
        started: list[Service] = []
        try:
            for service in self.services:
                service.start()
                started.append(service)
            return self._run()
        finally:
            for service in reversed(started):
                try:
                    service.stop()
                except Exception:
                    log.exception("stopping %s failed", type(service).__name__)

    def _run(self) -> int:
        poller = None
        if self.watcher is not None:
            poller = threading.Thread(target=self._poll_loop, name="poller", daemon=True)
            poller.start()
        if self.on_ready is not None:
            self.on_ready()
        log.info(
            "daemon running (poll every %ss, at most %d tasks at once)",
            self.poll_interval,
            self.queue.max_concurrent,
        )
        try:
            while True:
                if self._take_stop_signal():
                    break
                self._relay_cancels()
                self._reap()
                try:
                    self.dispatch()
                except Exception:
                    log.exception("dispatching failed; trying again in a moment")
                self._wake.wait(DISPATCH_INTERVAL)
                self._wake.clear()
        finally:
            self._stop.set()
            self._poke.set()
        return self._shutdown(poller)

    def _take_stop_signal(self) -> bool:
        if not self._signals:
            return False
        signum = self._signals[0]
        # A routine stop (`stop`, systemd, docker compose stop): information, not a warning.
        log.info(
            "received %s: no new work will start; running tasks stay recorded and resume at the next "
            "start. Send it again to exit at once.",
            signal.Signals(signum).name,
        )
        return True

    def _scheduled_wait(self) -> float:
        assert self.next_poll_in is not None
        try:
            # A floor, so that a schedule that keeps saying "now" cannot spin the poller.
            return max(SCHEDULE_FLOOR, min(self.poll_interval, self.next_poll_in()))
        except Exception:
            log.exception("the poll schedule failed; polling again in %ss", self.poll_interval)
            return self.poll_interval

    def _poll_loop(self) -> None:
        if self.next_poll_in is not None:
            self._scheduled_poll_loop()
            return
        next_poll = 0.0
        while not self._stop.is_set():
            self._poke.clear()  # before taking the set: a poke that lands after is seen next time round
            if time.monotonic() >= next_poll:
                next_poll = time.monotonic() + self.poll_interval
                self._take_poked()
                self.poll()
            else:
                self.poll_poked()
            self._poke.wait(max(0.0, next_poll - time.monotonic()))

    def _scheduled_poll_loop(self) -> None:
        """Pokes at once; the watcher whenever its schedule has something due (it returns at once and
        its own threads poll)."""
        while not self._stop.is_set():
            self._poke.clear()
            self.poll_poked()
            self.poll()
            self._poke.wait(self._scheduled_wait())

    def _shutdown(self, poller: threading.Thread | None) -> int:
        with self._lock:
            monitors = list(self._monitors.values())
        for _, control in monitors:
            control.detach.set()
        deadline = time.monotonic() + SHUTDOWN_GRACE
        for thread in [t for t, _ in monitors] + ([poller] if poller else []):
            while thread.is_alive() and time.monotonic() < deadline:
                if len(self._signals) > 1:
                    log.warning("second signal: exiting now")
                    return 1
                thread.join(0.1)
        if any(t.is_alive() for t, _ in monitors):
            log.warning("some monitors did not detach within %.0fs; exiting anyway", SHUTDOWN_GRACE)
        self._write_unrecorded()
        for task_id in self.unrecorded:
            log.critical(
                "the end of task %s could not be written before exiting; it stays running in the state "
                "and is resumed at the next start",
                task_id,
            )
        log.info("daemon stopped")
        return 0
