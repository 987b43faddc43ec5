"""The daemon's GitHub request budget: at most ``GITHUB_REQUESTS_PER_MINUTE`` requests in any 60 seconds,
polls and work together, and one pause for the whole client when GitHub says to wait.

GitHub documents a secondary limit of 900 points a minute for the REST API (a GET is one point, a write
five) whether or not an answer counts against the hourly limit: a ``304`` is free for the hourly limit
but not for this one. So every request the daemon sends takes a slot here first, in a sliding window
(``any minute``, not a minute on the clock).

Work comes first: each kind of request may fill the window only up to its share of the budget. A task's
requests (comments, pull requests, the issue read before a run) may use all of it, a webhook's poll
:data:`POKE_SHARE` of it, a scheduled poll :data:`POLL_SHARE`, background work (pre-warming)
:data:`BACKGROUND_SHARE`; the poll scheduler plans its polls within their share, so work rarely waits
at all, and background work only uses what is left over.

When GitHub answers with a rate limit (403/429 with ``retry-after``, or ``x-ratelimit-remaining: 0``
with its reset), :meth:`RequestBudget.pause` stops the whole client until then: a poll is not sent (it
raises :class:`Throttled` at once, and the scheduler sends none meanwhile); work waits for the pause when
it is short (:data:`WORK_WAIT`), and is refused the same way when it is not.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from enum import IntEnum

log = logging.getLogger(__name__)

WINDOW = 60.0  # seconds: the budget is per minute, any minute
POLL_SHARE = 0.85  # scheduled polls may fill the window up to this share of the budget
POKE_SHARE = 0.92  # a webhook's "poll this repository now" up to this share
BACKGROUND_SHARE = 0.7  # background work (pre-warming) only while the window is this empty: it never
# takes a slot a poll or a task would want (at 1,000 repositories, polls alone fill the polls' share)
WORK_WAIT = 120.0  # work waits this long at most for a pause GitHub asked for; longer, it is refused


class Priority(IntEnum):
    """What a request is for; a lower value goes first."""

    WORK = 0
    POKE = 1
    POLL = 2
    BACKGROUND = 3


SHARES = {
    Priority.WORK: 1.0,
    Priority.POKE: POKE_SHARE,
    Priority.POLL: POLL_SHARE,
    Priority.BACKGROUND: BACKGROUND_SHARE,
}


class Throttled(Exception):
    """The request was not sent: GitHub asked the whole client to wait until ``until`` (wall clock)."""

    def __init__(self, until: float, why: str) -> None:
        shown = time.strftime("%H:%M:%SZ", time.gmtime(until))
        super().__init__(f"not sent: GitHub asked us to wait until {shown} ({why})")
        self.until = until
        self.why = why


class RequestBudget:
    """A sliding-window limiter shared by every thread of the daemon (thread-safe).

    ``clock`` is the wall clock (GitHub's waits are wall-clock times) and ``sleep`` waits; both are
    injected in tests. ``per_minute <= 0`` turns the budget off (still honouring pauses).
    """

    def __init__(
        self,
        per_minute: int,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._cond = threading.Condition()
        self._sleep = sleep
        self._sent: deque[float] = deque()  # when each request of the last minute was sent
        self._paused_until = 0.0
        self._pause_why = ""
        self._closed = False
        self.counts = dict.fromkeys(Priority, 0)  # requests sent, by priority (all time)
        self.waited = 0.0  # seconds requests spent waiting for a slot (all time)

    # --- the window -------------------------------------------------------------------------------

    def cap(self, priority: Priority) -> int:
        return max(1, int(self.per_minute * SHARES[priority]))

    def used(self, now: float | None = None) -> int:
        """Requests sent in the last minute."""
        with self._cond:
            self._expire(self.clock() if now is None else now)
            return len(self._sent)

    def _expire(self, now: float) -> None:
        while self._sent and self._sent[0] <= now - WINDOW:
            self._sent.popleft()

    def acquire(self, priority: Priority = Priority.WORK) -> None:
        """Take a slot for one request, waiting for one if the window is full for ``priority``.

        Raises :class:`Throttled` while a pause GitHub asked for lasts (work: only when it is longer
        than :data:`WORK_WAIT`)."""
        started = self.clock()
        with self._cond:
            while True:
                now = self.clock()
                wait = self._pause_left(priority, now)
                if wait <= 0:
                    wait = self._slot_wait(priority, now)
                if wait <= 0:
                    self._sent.append(now)
                    self.counts[priority] += 1
                    self.waited += max(0.0, now - started)
                    return
                self._wait(min(wait, WINDOW))

    def _pause_left(self, priority: Priority, now: float) -> float:
        left = self._paused_until - now
        if left <= 0:
            return 0.0
        if priority is not Priority.WORK or left > WORK_WAIT or self._closed:
            raise Throttled(self._paused_until, self._pause_why)
        return left

    def _slot_wait(self, priority: Priority, now: float) -> float:
        if self.per_minute <= 0:
            return 0.0
        self._expire(now)
        cap = self.cap(priority)  # a lower share for polls leaves the rest of the window to work
        if len(self._sent) < cap:
            return 0.0
        # Wait until enough of the oldest requests leave the window to bring it under the cap.
        return self._sent[len(self._sent) - cap] + WINDOW - now

    def _wait(self, seconds: float) -> None:
        if self._sleep is not None:  # tests: a fake clock moves on
            self._cond.release()
            try:
                self._sleep(seconds)
            finally:
                self._cond.acquire()
        else:
            self._cond.wait(seconds)
        if self._closed:
            raise Throttled(self.clock(), "the daemon is stopping")

    # --- pauses -----------------------------------------------------------------------------------

    def pause(self, until: float, why: str) -> bool:
        """Stop every request until ``until`` (wall clock); True when this lengthened the pause."""
        with self._cond:
            if until <= self._paused_until:
                return False
            self._paused_until, self._pause_why = until, why
            self._cond.notify_all()
            return True

    @property
    def paused_until(self) -> float | None:
        """When the pause GitHub asked for ends, while it lasts."""
        with self._cond:
            return self._paused_until if self._paused_until > self.clock() else None

    @property
    def pause_reason(self) -> str:
        return self._pause_why

    def refuses_work(self) -> Throttled | None:
        """The refusal a work request would meet now (a pause longer than :data:`WORK_WAIT` is left),
        or None: the dispatcher starts no task into it."""
        with self._cond:
            if self._paused_until - self.clock() > WORK_WAIT:
                return Throttled(self._paused_until, self._pause_why)
            return None

    def close(self) -> None:
        """Wake every waiter (the daemon stops)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
