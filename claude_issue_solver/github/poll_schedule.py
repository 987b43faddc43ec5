"""When each repository is polled: evenly over time, within the request budget, slower where webhooks
arrive.

Two rings, each a round-robin over its repositories in name order with one poll every
``interval / len(ring)`` seconds, so that the requests are spread evenly and never come as a burst
every interval:

- the *polling* ring at ``POLL_INTERVAL``, stretched when its repositories need more than the polls'
  share of ``GITHUB_REQUESTS_PER_MINUTE`` (``repositories * requests per poll / share``): 1,000
  repositories at one request a poll and 400 polls a minute are polled every 2.5 minutes, and
  :meth:`PollSchedule.describe` says so;
- the *safety-net* ring at ``WEBHOOK_POLL_INTERVAL``: the repositories for which signed webhook deliveries
  arrive (:meth:`PollSchedule.delivery`). A delivery names what it covers: its repository, its owner for
  an organisation's hook, every watched repository for a GitHub App's hook (its payload carries
  ``installation``). When none arrived for ``WEBHOOK_POLL_INTERVAL``, the repositories go back to the
  polling ring (and the log says so): a hook that stopped delivering costs at most one safety-net
  interval.

A ring that falls behind (GitHub was slow, the client was paused) starts again from now rather than
catching up in a burst. A repository GitHub asked to be polled less often (``x-poll-interval``) is
skipped until that long has passed since its last poll. All times come from the injected ``clock``.
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from claude_issue_solver.github.request_budget import POLL_SHARE

log = logging.getLogger(__name__)

APP = "app"  # the source of a GitHub App's webhook deliveries: every repository the App watches
MAX_DUE = 16  # at most this many polls are handed out per look (a ring far behind starts again instead)
PLAN_MARGIN = 0.97  # the rings plan with this much of the polls' share: the budget itself rarely holds one
STRETCH_SHOWN = 1.02  # an interval this much over POLL_INTERVAL is said to be stretched
CATCH_UP = 5.0  # seconds a ring may lag (a slow write, a late wake-up) and still catch up its slots
MEMBERS_TTL = 1.0  # seconds which repository is in which ring is reused for (deliveries change it)
COST_WEIGHT = 0.1  # how fast the estimate of requests per poll follows what polls cost


def repo_source(repo: str) -> str:
    return f"repo:{repo.lower()}"


def owner_source(owner: str) -> str:
    return f"owner:{owner.lower()}"


@dataclass
class _Ring:
    next_at: float | None = None
    last: str = ""  # the repository (lowercased) polled last: the next one follows it in name order
    handed: int = 0  # polls handed out: the first round goes as fast as the budget allows


class PollSchedule:
    """Thread-safe; the watcher asks :meth:`due` what to poll and reports each poll with :meth:`polled`."""

    def __init__(
        self,
        *,
        interval: float,
        webhook_interval: float,
        per_minute: int,
        app: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.interval = float(interval)
        self.webhook_interval = float(webhook_interval)
        self.per_minute = per_minute
        self.app = app
        self.clock = clock
        self.cost = 1.0  # requests an idle poll takes, estimated from the polls made
        self._lock = threading.Lock()
        self._repos: dict[str, str] = {}  # lowercased -> as GitHub spells it
        self._keys: list[str] = []  # the same, lowercased, in name order
        self._generation = 0  # moved on by what changes the rings (repositories, deliveries)
        self._members_cache: tuple[int, float, dict[bool, list[str]]] | None = None
        self._rings = {False: _Ring(), True: _Ring()}  # polling, safety net
        self._deliveries: dict[str, float] = {}  # source -> when its last delivery arrived
        self._live: set[str] = set()  # sources said to be live in the log
        self._hints: dict[str, float] = {}  # x-poll-interval per repository
        self._last_polled: dict[str, float] = {}

    # --- what is watched, and what GitHub said ------------------------------------------------------

    def set_repos(self, repos: Iterable[str]) -> None:
        with self._lock:
            self._repos = {r.lower(): r for r in repos}
            self._keys = sorted(self._repos)
            self._generation += 1

    @property
    def repos(self) -> list[str]:
        with self._lock:
            return list(self._repos.values())

    def delivery(self, sources: Iterable[str], now: float | None = None) -> None:
        """A signed, relevant webhook delivery arrived for ``sources`` (see :func:`repo_source`)."""
        now = self.clock() if now is None else now
        with self._lock:
            for source in sources:
                self._deliveries[source] = now
            self._generation += 1
            self._say_live(now)

    def hint(self, repo: str, seconds: float) -> None:
        """GitHub's ``x-poll-interval`` for ``repo``: poll it no more often than that."""
        with self._lock:
            if seconds > 0:
                self._hints[repo.lower()] = float(seconds)
            else:
                self._hints.pop(repo.lower(), None)

    def polled(self, repo: str, requests: int, now: float | None = None) -> None:
        """``repo`` was polled with ``requests`` requests (a poll that sent none is not counted)."""
        now = self.clock() if now is None else now
        with self._lock:
            self._last_polled[repo.lower()] = now
            if requests > 0:
                self.cost += COST_WEIGHT * (requests - self.cost)

    def polled_at(self, repo: str) -> float | None:
        """When ``repo``'s last scheduled or requested poll ended; None before its first."""
        with self._lock:
            return self._last_polled.get(repo.lower())

    # --- which ring -----------------------------------------------------------------------------------

    def _sources(self, key: str) -> tuple[str, ...]:
        owner = key.partition("/")[0]
        sources = (repo_source(key), owner_source(owner))
        return (*sources, APP) if self.app else sources

    def _covered(self, key: str, now: float) -> bool:
        since = now - self.webhook_interval
        return any(self._deliveries.get(s, -math.inf) > since for s in self._sources(key))

    def covered(self, repo: str, now: float | None = None) -> bool:
        with self._lock:
            return self._covered(repo.lower(), self.clock() if now is None else now)

    def _members(self, now: float) -> dict[bool, list[str]]:
        """Which repositories are in which ring (reused for a second unless a delivery or the list of
        repositories changed it: every look at the schedule asks)."""
        cached = self._members_cache
        if cached is not None and cached[0] == self._generation and 0 <= now - cached[1] < MEMBERS_TTL:
            return cached[2]
        rings: dict[bool, list[str]] = {False: [], True: []}
        if not self._deliveries:
            rings[False] = list(self._keys)
        else:
            for key in self._keys:
                rings[self._covered(key, now)].append(key)
        self._members_cache = (self._generation, now, rings)
        return rings

    def _intervals(self, members: dict[bool, list[str]]) -> dict[bool, float]:
        """Each ring's interval: the safety net's as set (stretched only if it alone needs more than the
        share), the polling ring's stretched to fit what the safety net leaves of the polls' share."""
        per_second = self.per_minute * POLL_SHARE * PLAN_MARGIN / 60.0 if self.per_minute > 0 else math.inf
        cost = max(self.cost, 1.0)
        net = len(members[True])
        net_interval = max(self.webhook_interval, net * cost / per_second) if net else self.webhook_interval
        left = per_second - (net * cost / net_interval if net else 0.0)
        polling = len(members[False])
        needed = polling * cost / left if left > 0 else math.inf
        return {False: max(self.interval, needed), True: net_interval}

    # --- the schedule ---------------------------------------------------------------------------------

    def due(self, now: float | None = None) -> list[str]:
        """The repositories to poll now (each ring hands out its next ones whose slot has come)."""
        now = self.clock() if now is None else now
        with self._lock:
            self._say_live(now)
            members = self._members(now)
            intervals = self._intervals(members)
            out: list[str] = []
            for covered, ring in self._rings.items():
                keys = members[covered]
                if not keys:
                    ring.next_at = None
                    continue
                settled = intervals[covered] / len(keys)
                if ring.next_at is None:
                    ring.next_at = now  # the first poll at once, the others spread after it
                spacing = self._spacing(ring, covered, settled, len(keys))
                if ring.next_at < now - max(spacing, CATCH_UP):
                    ring.next_at = now  # far behind (a pause): start again from now, no burst to catch up
                elif ring.next_at > now + spacing:
                    # The ring grew (an organisation's deliveries moved its repositories into the safety
                    # net after one repository's had): its next slot was planned for fewer members.
                    ring.next_at = now + spacing
                while ring.next_at <= now and len(out) < MAX_DUE:
                    ring.next_at += self._spacing(ring, covered, settled, len(keys))
                    picked = self._next_member(ring, keys, now)
                    ring.handed += 1
                    if picked is not None:
                        out.append(self._repos[picked])
            return out

    def _spacing(self, ring: _Ring, covered: bool, settled: float, members: int) -> float:
        """Seconds to the ring's next slot. A daemon that just started looks at every repository as soon
        as the budget allows (a label put on while it was down waits no interval), then settles."""
        if not covered and ring.handed < members:
            return 0.0 if members <= MAX_DUE else min(settled, self._fastest())  # a few: all at once
        return settled

    def _fastest(self) -> float:
        """Seconds between polls at the polls' whole share of the budget."""
        if self.per_minute <= 0:
            return 0.0
        return max(self.cost, 1.0) * 60.0 / (self.per_minute * POLL_SHARE * PLAN_MARGIN)

    def _next_member(self, ring: _Ring, keys: list[str], now: float) -> str | None:
        """The repository after the last one; None (the slot stays empty, so no other repository is
        polled more often) when GitHub asked for fewer polls of it than its turns come."""
        at = bisect.bisect_right(keys, ring.last)
        key = keys[at] if at < len(keys) else keys[0]
        ring.last = key
        hint = self._hints.get(key)
        if hint and now - self._last_polled.get(key, -math.inf) < hint:
            return None
        return key

    def next_in(self, now: float | None = None) -> float:
        """Seconds until :meth:`due` has something (never more than a minute: deliveries change rings)."""
        now = self.clock() if now is None else now
        with self._lock:
            times = [r.next_at for r in self._rings.values() if r.next_at is not None]
            if not times:
                return 0.0 if self._repos else 60.0
            return max(0.0, min(60.0, min(times) - now))

    # --- what status says -------------------------------------------------------------------------------

    def interval_for(self, repo: str, now: float | None = None) -> float:
        """How often ``repo`` is polled now."""
        now = self.clock() if now is None else now
        with self._lock:
            members = self._members(now)
            intervals = self._intervals(members)
            key = repo.lower()
            interval = intervals[self._covered(key, now)]
            return max(interval, self._hints.get(key, 0.0))

    def describe(self, now: float | None = None) -> dict[str, Any]:
        """The schedule for ``status`` and the health checks (written to the state file)."""
        now = self.clock() if now is None else now
        with self._lock:
            members = self._members(now)
            intervals = self._intervals(members)
            live = sorted(s for s, at in self._deliveries.items() if at > now - self.webhook_interval)
            return {
                "repos": len(self._repos),
                "poll_interval": self.interval,
                "interval": intervals[False] if members[False] else self.interval,
                "stretched": bool(members[False]) and intervals[False] > self.interval * STRETCH_SHOWN,
                "webhook_interval": intervals[True],
                "webhook_repos": len(members[True]),
                "webhook_sources": live,
                "requests_per_minute": self.per_minute,
                "requests_per_poll": round(self.cost, 2),
                "at": now,
            }

    def _say_live(self, now: float) -> None:
        """Log when webhook deliveries start covering a source, and when they stop (under the lock)."""
        since = now - self.webhook_interval
        live = {s for s, at in self._deliveries.items() if at > since}
        for source in sorted(live - self._live):
            log.info(
                "webhook deliveries arrive for %s: polling it every %s as a safety net",
                _source_name(source),
                duration(self.webhook_interval),
            )
        for source in sorted(self._live - live):
            log.info(
                "no webhook delivery for %s in %s: polling it every %s again",
                _source_name(source),
                duration(self.webhook_interval),
                duration(self.interval),
            )
        self._live = live
        expired = [s for s, at in self._deliveries.items() if at <= since]
        for source in expired:
            del self._deliveries[source]
        if expired:
            self._generation += 1


def expected_interval(schedule: dict[str, Any] | None, repo: str, poll_interval: float) -> float:
    """How often ``repo`` is polled, from the schedule the daemon wrote (``state.watcher.schedule``):
    what the health checks allow between two polls (three of these)."""
    if not isinstance(schedule, dict):
        return poll_interval
    try:
        key = repo.lower()
        live = set(schedule.get("webhook_sources") or [])
        covered = bool(live & {repo_source(key), owner_source(key.partition("/")[0]), APP})
        interval = float(schedule["webhook_interval"] if covered else schedule["interval"])
    except (KeyError, TypeError, ValueError):
        return poll_interval
    return max(poll_interval, interval)


def paused(schedule: dict[str, Any] | None, now: float) -> bool:
    """Whether GitHub has asked the whole client to wait (no repository is polled meanwhile)."""
    if not isinstance(schedule, dict):
        return False
    until = schedule.get("paused_until")
    return isinstance(until, int | float) and until > now


def _source_name(source: str) -> str:
    kind, _, name = source.partition(":")
    if kind == "repo":
        return name
    if kind == "owner":
        return f"{name}'s repositories (an organisation webhook)"
    return "every repository of the GitHub App"


def duration(seconds: float) -> str:
    """``30 s``, ``6 min``, ``2.5 min``, ``1.5 h``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        minutes = seconds / 60
        return f"{minutes:.0f} min" if abs(minutes - round(minutes)) < 0.05 else f"{minutes:.1f} min"
    return f"{seconds / 3600:.1f} h"


def status_line(schedule: dict[str, Any]) -> str:
    """One line for ``status``: how often the repositories are polled and why."""
    repos = int(schedule.get("repos") or 0)
    net = int(schedule.get("webhook_repos") or 0)
    polling = repos - net
    budget = int(schedule.get("requests_per_minute") or 0)
    parts = []
    if polling:
        line = f"{polling:,} {_repositories(polling)} every {duration(float(schedule['interval']))}"
        if schedule.get("stretched"):
            line += f" to stay within {budget:,} requests/min (POLL_INTERVAL={schedule['poll_interval']:.0f})"
        parts.append(line)
    if net:
        parts.append(
            f"{net:,} {_repositories(net)} with webhook deliveries every "
            f"{duration(float(schedule['webhook_interval']))} (a safety net)"
        )
    if not parts:
        return "polling: no repository yet"
    return "polling " + "; ".join(parts)


def _repositories(n: int) -> str:
    return "repository" if n == 1 else "repositories"
