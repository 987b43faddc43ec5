"""The watcher: turns open issues carrying the trigger label into tasks, cheaply and safely.

Cheap: one conditional request per repository per poll. The very first look lists the open issues
carrying the label; every later one lists *every* issue and pull request updated since the newest
change already seen (``since``, any state, any label), sorted by ``updated`` (newest first), so any
change changes the first page; while its ``ETag`` still matches, GitHub answers ``304 Not Modified``,
which does not count against the rate limit. Later pages are read only down to the newest change
already seen. ETags and per-issue bookkeeping live in the state file, so a restart costs nothing either.
The same listing tells the follow-up triggers which of our pull requests moved (a review was
submitted) and which issues we worked on were closed (their kept Claude sessions are removed then).

Safe: a task is created only for the *labelling* (the newest ``labeled`` event of the trigger label)
and only when the person who applied the label may write to the repository; an issue already handled
for that labelling is not run again until someone applies the label again. The task carries the text
that label approved (:mod:`claude_issue_solver.github.trust`): an edit by someone without write access after
it never reaches the agent; a pending task takes a writer's edit, never anyone else's. Where the
approved text cannot be told, the issue asks a writer to apply the label again. Pull requests and
locked issues are skipped. A failing repository backs off on its own and never holds up the others;
within a repository, a failure on one issue (a permission lookup GitHub answers 404 or 5xx for) is
that issue's alone: it is tried again a few minutes later, and the poll goes on with the others.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from claude_issue_solver.config import Config
from claude_issue_solver.github.client import (
    GitHubClient,
    GitHubError,
    RateLimited,
    Refused,
    Response,
    Transient,
)
from claude_issue_solver.github.intake import IssueIntake, reason_of
from claude_issue_solver.github.poll_schedule import PollSchedule
from claude_issue_solver.github.request_budget import Priority
from claude_issue_solver.github.triggers import TriggerWatcher
from claude_issue_solver.github.trust import (
    PERMISSION_TTL,
    WRITE_PERMISSIONS,
    Permissions,
    content_hash,
)
from claude_issue_solver.store.queue import Task, TaskQueue

log = logging.getLogger(__name__)

__all__ = ["PERMISSION_TTL", "WRITE_PERMISSIONS", "RepoCheck", "Watcher", "content_hash"]

APP_REPOS_REFRESH = 600.0  # App-wide: list the installations' repositories again this often
ALL_REPOS = "*"  # poll_now's name for "the App's installations changed"
MAX_BACKOFF = 900.0
SINCE_MARGIN = 300  # seconds the listing looks back before the newest change seen (see _since)
EPOCH = "1970-01-01T00:00:00Z"  # the newest change of a repository that has no issue yet
BUSY_WAIT = 0.25  # seconds the poller waits while every poll thread is busy
POLL_WORKERS = 4  # scheduled polls run in this many threads, so a slow repository delays no other
SCHEDULE_LOOK = 5.0  # how often the schedule is compared with what status shows of it
HEALTH_FLUSH = 60.0  # a poll that succeeds after a success is written with the others this often
TRIGGER_RECHECK = 1800.0  # the comment listings are read at least this often even when nothing moved


@dataclass(frozen=True)
class RepoCheck:
    """What one repository's start-up check found. ``refused``: a setting must change (401/403/404)."""

    repo: str
    error: str | None = None
    refused: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


class Watcher(IssueIntake):
    """Call it (``watcher()``) once per poll; the daemon's poller thread does.

    A repository's first poll by a new watcher (a started or restarted daemon) ignores the back-off an
    earlier daemon recorded after errors: the operator may just have fixed the cause. A wait GitHub
    asked for (a rate limit) is still honoured.
    """

    def __init__(
        self,
        config: Config,
        client: GitHubClient,
        queue: TaskQueue,
        *,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
        on_queued: Callable[[Task], None] | None = None,
        on_closed: Callable[[str, int], None] | None = None,
    ) -> None:
        self.config = config
        self.on_queued = on_queued  # e.g. post the "queued" comment on the issue
        self.on_closed = on_closed  # an issue we worked on was closed: e.g. remove its kept sessions
        self.client = client
        self.queue = queue
        self.clock = clock
        self.jitter = jitter
        self.label = config.trigger_label.lower()
        self.permissions = Permissions(config, client, queue.store, clock=clock)
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        self._fresh = {repo.lower() for repo in config.github_repos}  # not polled by this watcher yet
        # What is watched: GITHUB_REPOS, or (App-wide) what the App's installations list, refreshed.
        self.repos: tuple[str, ...] = config.github_repos
        self._listed_at: float | None = None
        # Follow-up triggers (`@claude` comments) are read in the same poll, after the labelled issues.
        self.triggers = TriggerWatcher(config, client, queue, permission=self.cached_permission)
        self.triggers.reviews.on_queued = on_queued
        # When each repository is polled (poll_due): spread evenly, within the request budget.
        self.schedule = PollSchedule(
            interval=config.poll_interval,
            webhook_interval=config.webhook_poll_interval,
            per_minute=config.github_requests_per_minute,
            app=client.is_app,
            clock=clock,
        )
        self.schedule.set_repos(self.repos)
        client.on_poll_interval = self.schedule.hint
        self._pool: ThreadPoolExecutor | None = None
        self._in_flight: set[str] = set()  # scheduled polls handed to the pool and not finished
        # Successes after successes, not written yet: repo -> (when, rate limit seen); see _record_success.
        self._unwritten: dict[str, tuple[float, tuple[int, int] | None]] = {}
        self._health_written_at = clock()
        self._schedule_written: dict[str, Any] = {}
        self._schedule_looked_at = -SCHEDULE_LOOK
        self._triggers_read: dict[str, float] = {}  # repo -> when its comment listings were read last

    def __call__(self) -> None:
        self.poll_all()

    def poll_all(self) -> None:
        """Poll every repository, in parallel, so that a slow one delays no other (the start-up sweep
        and the tests; the daemon polls with :meth:`poll_due`)."""
        self._refresh_if_due()
        self._each_repo(self.poll_repo)
        self.flush_health()

    def _refresh_if_due(self) -> None:
        if self.config.app_wide and (
            self._listed_at is None or self.clock() - self._listed_at >= APP_REPOS_REFRESH
        ):
            self._refresh_quietly()

    def poll_due(self) -> list[Future[None]]:
        """Hand the repositories whose turn has come (:class:`PollSchedule`) to the poll threads; returns
        at once, with the polls started (a step of the daemon waits for them). Nothing is polled while
        GitHub has asked the whole client to wait."""
        self._refresh_if_due()
        self._write_schedule()
        started: list[Future[None]] = []
        if self.client.budget.paused_until is not None:
            return started
        with self._lock:
            busy = len(self._in_flight)
        if busy >= 2 * POLL_WORKERS:
            return started  # GitHub is slow: the rings wait rather than pile polls up
        for repo in self.schedule.due():
            with self._lock:
                if repo.lower() in self._in_flight:
                    continue
                self._in_flight.add(repo.lower())
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max_workers=POLL_WORKERS, thread_name_prefix="poll")
                pool = self._pool
            started.append(pool.submit(self._scheduled_poll, repo))
        if self.clock() - self._health_written_at >= min(HEALTH_FLUSH, self.config.poll_interval):
            self.flush_health()
        return started

    def _scheduled_poll(self, repo: str) -> None:
        try:
            self.poll_repo(repo)
        finally:
            with self._lock:
                self._in_flight.discard(repo.lower())

    def next_poll_in(self) -> float:
        """Seconds until :meth:`poll_due` has something to do."""
        paused = self.client.budget.paused_until
        if paused is not None:
            return max(0.0, min(60.0, paused - self.clock()))
        with self._lock:
            busy = len(self._in_flight) >= 2 * POLL_WORKERS
        if busy:
            return BUSY_WAIT  # the poll threads are behind (GitHub is slow): no spinning meanwhile
        return self.schedule.next_in()

    def close(self) -> None:
        """Stop the poll threads (the daemon stops); what was polled is written."""
        self.client.budget.close()
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        try:
            self.flush_health()
        except Exception as exc:  # a full disk at stop: the next daemon polls again anyway
            log.warning("could not write the last polls' health: %s", exc)

    def poll_now(self, repo: str) -> None:
        """Look at one watched repository now (a webhook said it changed); ``*``: list the App's
        repositories again and poll the new ones. Anything else is not ours and is ignored."""
        if repo == ALL_REPOS:
            if self.config.app_wide:
                before = {r.lower() for r in self.repos}
                self._refresh_quietly()
                for added in [r for r in self.repos if r.lower() not in before]:
                    self.poll_repo(added, priority=Priority.POKE)
            return
        watched = {r.lower(): r for r in self.repos}
        if repo.lower() in watched:
            self.poll_repo(watched[repo.lower()], priority=Priority.POKE)

    def refresh_repositories(self) -> tuple[str, ...]:
        """App-wide: list every repository of every installation; raises :class:`GitHubError`."""
        listed = tuple(self.client.app_repositories())
        known = {r.lower() for r in self.repos}
        added = [r for r in listed if r.lower() not in known]
        removed = sorted(set(known) - {r.lower() for r in listed})
        with self._lock:
            self._fresh.update(r.lower() for r in added)
        self.repos, self._listed_at = listed, self.clock()
        self.schedule.set_repos(listed)
        with self.queue.store.transaction() as data:
            data.setdefault("watcher", {})["app_repos"] = {
                "repos": list(listed),
                "listed_at": self._listed_at,
            }
        if added and known:
            log.info("the GitHub App was installed on %s: watching it now", ", ".join(added))
        if removed:
            log.info("the GitHub App no longer reaches %s: not watching it any more", ", ".join(removed))
        return listed

    def _refresh_quietly(self) -> None:
        try:
            self.refresh_repositories()
        except GitHubError as exc:
            self._listed_at = self.clock()  # tried: the next try is at the next refresh, not every poll
            log.warning(
                "listing the GitHub App's repositories failed (%s); still watching %d",
                exc.reason,
                len(self.repos),
            )

    def check_all(self) -> list[RepoCheck]:
        """The start-up check of every repository, in parallel (see :meth:`check`). App-wide, the
        installations are listed first; a listing GitHub refuses is one refused check."""
        if self.config.app_wide:
            try:
                self.refresh_repositories()
            except GitHubError as exc:
                return [
                    RepoCheck("the GitHub App's installations", exc.reason, refused=isinstance(exc, Refused))
                ]
            if not self.repos:
                return [
                    RepoCheck("the GitHub App's installations", "the App is installed on no repository yet")
                ]
        return self._each_repo(self.check)

    def _each_repo(self, work: Callable[[str], Any]) -> list[Any]:
        repos = self.repos
        if not repos:
            return []
        if len(repos) == 1:
            return [work(repos[0])]
        with ThreadPoolExecutor(max_workers=min(4, len(repos)), thread_name_prefix="poll") as pool:
            return list(pool.map(work, repos))

    # --- one repository ---------------------------------------------------------------------------

    def check(self, repo: str) -> RepoCheck:
        """Whether ``repo`` can be polled: the poll's own first request (conditional, so usually a free
        304), recorded in the repository's health like a poll. Never raises. The poll that follows
        treats the result as its own: a failure here starts the back-off, a success clears old errors."""
        book: dict[str, Any] = self.queue.store.snapshot().get("watcher", {})
        health = book.get("repos", {}).get(repo, {})
        with self._lock:
            self._fresh.discard(repo.lower())
        if _rate_limited(health) and (health.get("backoff_until") or 0) > self.clock():
            return RepoCheck(repo, error=health.get("last_error") or "rate limited by GitHub")
        try:
            with self.client.priority(Priority.POLL):
                response = self._first_page(repo, book)
        except Exception as exc:
            self._record_poll_error(repo, exc, report=False)  # the caller says it, once
            return RepoCheck(repo, error=reason_of(exc), refused=isinstance(exc, Refused))
        self._record_success(repo, response, health)
        return RepoCheck(repo)

    def poll_repo(self, repo: str, *, priority: Priority = Priority.POLL) -> None:
        """Never raises: every failure is recorded in the repository's health and backed off."""
        sent = self.client.sent
        moved = True
        try:
            with self.client.priority(priority):
                moved = self._poll_repo(repo)
        finally:
            # What an idle poll costs is what the schedule plans with; a poll that found work is work.
            self.schedule.polled(repo, 0 if moved else self.client.sent - sent)

    def _poll_repo(self, repo: str) -> bool:
        """One poll; whether it found something moved (a first look, a change, a failure)."""
        now = self.clock()
        # The bookkeeping as last read (parsed again only when the state file changed): an idle poll
        # reads nothing and writes nothing but its one request.
        book: dict[str, Any] = self.queue.store.snapshot().get("watcher", {})
        health = book.get("repos", {}).get(repo, {})
        with self._lock:
            fresh = repo.lower() in self._fresh
            self._fresh.discard(repo.lower())
        waiting = (health.get("backoff_until") or 0) > now
        if waiting and (_rate_limited(health) or not fresh):
            return False
        try:
            moved = self._poll(repo, book, health)
            # Every new comment moves its issue's (or pull request's) updated_at, so the listing above
            # answers 304 only when the comment listings would too; they are read anyway now and then.
            # A restarted daemon needs no extra read: a comment written while it was down moved its issue.
            last_read = self._triggers_read.setdefault(repo.lower(), now)
            if moved or now - last_read >= TRIGGER_RECHECK:
                self.triggers.poll(repo)
                self._triggers_read[repo.lower()] = now
            else:
                self.triggers.deliver(repo)
            self._retry_issues(repo)
        except Exception as exc:
            self._record_poll_error(repo, exc)
            return True
        return moved

    def _record_poll_error(self, repo: str, exc: Exception, *, report: bool = True) -> None:
        """Record the failure in the repository's health (and back off); log it unless the caller
        reports it itself."""
        reason = reason_of(exc)
        if isinstance(exc, RateLimited) and exc.status is None:
            # Not sent: the whole client waits for GitHub (status says so); not this repository's fault.
            log.debug("%s: not polled: %s", repo, exc)
            return
        if isinstance(exc, RateLimited):
            self._record_failure(repo, reason, until=exc.until, rate_limited=True)
            until = time.strftime("%H:%M:%S", time.localtime(exc.until))
            level, message, args = logging.WARNING, "%s: rate limited; next poll after %s", (repo, until)
        elif isinstance(exc, Transient):
            self._record_failure(repo, reason)
            level, message, args = logging.WARNING, "%s: %s; backing off", (repo, exc)
        elif isinstance(exc, GitHubError):
            self._record_failure(repo, reason)
            level, message, args = logging.ERROR, "%s: %s", (repo, exc)
        else:  # a bug must not kill the poller: record it and keep going
            self._record_failure(repo, reason)
            log.error("%s: unexpected error while polling", repo, exc_info=exc)
            return
        log.log(level if report else logging.DEBUG, message, *args)

    def _first_page(self, repo: str, book: dict[str, Any]) -> Response:
        """The listing request every poll starts with, conditional on the last poll's ETag.

        The first look ever reads the labelled open issues (an old repository's whole history would be
        pages of nothing to do); from then on everything updated since the newest change seen, so a
        closed issue and a reviewed pull request show up in the same one request.
        """
        high_water = book.get("high_water", {}).get(f"{repo}:{self.label}", "")
        params: dict[str, Any] = {"sort": "updated", "direction": "desc", "per_page": 100}
        if high_water:
            params.update(state="all", since=_since(high_water))
        else:
            params.update(state="open", labels=self.config.trigger_label)
        etag = book.get("etags", {}).get(f"{repo}:{self.label}")
        return self.client.request(
            repo,
            "GET",
            f"/repos/{repo}/issues",
            params=params,
            headers={"If-None-Match": etag} if etag else None,
        )

    def _poll(self, repo: str, book: dict[str, Any], health: dict[str, Any] | None = None) -> bool:
        """One look at the repository's listing; whether anything moved (not a 304)."""
        etag_key = f"{repo}:{self.label}"
        high_water = book.get("high_water", {}).get(etag_key, "")
        first_look = not high_water
        first = self._first_page(repo, book)
        if first.status == 304:
            self._record_success(repo, first, health)
            return False
        book = self.queue.store.read().get("watcher", {})  # a copy of its own: the issues change it
        newest = high_water
        response: Response | None = first
        pulls: dict[int, str] = {}  # open pull requests that moved: number -> updated_at
        closed: list[int] = []
        while response is not None:
            issues = response.data or []
            changes: dict[str, dict[str, Any]] = {}
            # The page is newest-first; queue what it holds oldest issue first, as people would expect.
            for issue in sorted(issues, key=lambda i: int(i.get("number") or 0)):
                newest = max(newest, issue.get("updated_at") or "")
                if "pull_request" in issue:
                    if issue.get("state", "open") == "open":
                        pulls[int(issue["number"])] = issue.get("updated_at") or ""
                elif issue.get("state", "open") != "open":
                    closed.append(int(issue["number"]))
                self._consider_safely(repo, issue, book, changes)
            self._update_issue_book(changes)
            oldest_on_page = min((i.get("updated_at") or "" for i in issues), default="")
            if not issues or (high_water and oldest_on_page <= high_water):
                break  # everything further down is older than what we already handled
            response = self.client.next_page(repo, response)
        if first_look:  # from here on the listing of everything since then
            newest = max(newest, self._newest_change(repo)) or EPOCH
        # Saved only now: a poll that failed half-way is done again in full, never skipped by a 304.
        with self.queue.store.transaction() as data:
            book = data.setdefault("watcher", {})
            book.setdefault("etags", {})[etag_key] = first.headers.get("etag", "")
            book.setdefault("high_water", {})[etag_key] = newest
            self.triggers.note_pulls(data, repo, pulls)
        self._record_success(repo, response or first)
        if closed and self.on_closed is not None:
            ours = self.triggers.worked_on(repo)
            for number in closed:
                if number in ours:
                    self.on_closed(repo, number)
        if first_look:
            # The listing every later poll asks for, once now, so that the next poll gets its 304.
            self._poll(repo, self.queue.store.read().get("watcher", {}))
        return True

    def _newest_change(self, repo: str) -> str:
        """When the repository's newest issue or pull request changed (once, at the first look)."""
        newest = self.client.request(
            repo,
            "GET",
            f"/repos/{repo}/issues",
            params={"state": "all", "sort": "updated", "direction": "desc", "per_page": 1},
        )
        return max((i.get("updated_at") or "" for i in newest.data or []), default="")

    # --- one issue ----------------------------------------------------------------------------------

    def _update_issue_book(self, changes: dict[str, dict[str, Any]]) -> None:
        if not changes:
            return
        with self.queue.store.transaction() as data:
            issues = data.setdefault("watcher", {}).setdefault("issues", {})
            for key, change in changes.items():
                entry = issues.setdefault(key, {})
                entry.update(change)
                if change.get("new_comments"):
                    entry["comments_since"] = max(c["created_at"] for c in change["new_comments"])

    def _record_success(self, repo: str, response: Response, health: dict[str, Any] | None = None) -> None:
        """A success ends the trouble. After a success (``health``, as last read, says so) it changes
        only when: kept in memory and written with the others (:meth:`flush_health`), not per poll."""
        now = self.clock()
        calm = (
            health is not None
            and health.get("last_success") is not None
            and not health.get("last_error")
            and not health.get("failures")
            and not health.get("backoff_until")
            and not health.get("rate_limited")
        )
        if calm:
            with self._lock:
                self._unwritten[repo] = (now, response.rate)
            return
        with self._lock:
            self._unwritten.pop(repo, None)
        with self.queue.store.transaction() as data:
            self._write_success(data, repo, now, response.rate)

    @staticmethod
    def _write_success(data: dict[str, Any], repo: str, now: float, rate: tuple[int, int] | None) -> None:
        health = data.setdefault("watcher", {}).setdefault("repos", {}).setdefault(repo, {})
        # A success ends the trouble: the old error is no longer the repository's health.
        health.update(
            last_success=now,
            failures=0,
            backoff_until=None,
            last_error=None,
            failing_since=None,
            rate_limited=False,
        )
        if rate:
            health["rate_remaining"], health["rate_limit"] = rate

    def flush_health(self) -> None:
        """Write the polls that succeeded since the last write, and the schedule, in one transaction."""
        with self._lock:
            unwritten, self._unwritten = self._unwritten, {}
            self._health_written_at = self.clock()
        schedule = self._schedule_now()
        if not unwritten and schedule == self._schedule_written:
            return
        with self.queue.store.transaction() as data:
            repos = data.setdefault("watcher", {}).setdefault("repos", {})
            for repo, (at, rate) in unwritten.items():
                if repos.get(repo, {}).get("last_error"):
                    continue  # failed since (written at once): that is its health now
                self._write_success(data, repo, at, rate)
            data["watcher"]["schedule"] = schedule
        self._schedule_written = schedule

    def _schedule_now(self) -> dict[str, Any]:
        described = self.schedule.describe()
        described.pop("at", None)
        described["requests_per_poll"] = round(described["requests_per_poll"])  # not every wobble
        paused = self.client.budget.paused_until
        described["paused_until"] = paused
        described["paused_why"] = self.client.budget.pause_reason if paused else None
        return described

    def _write_schedule(self) -> None:
        """Write the schedule when what status would say about it changed (looked at every few
        seconds, not at every poll)."""
        if self.clock() - self._schedule_looked_at < SCHEDULE_LOOK:
            return
        self._schedule_looked_at = self.clock()
        now = self._schedule_now()
        if now != self._schedule_written:
            self.flush_health()

    def _record_failure(
        self, repo: str, error: str, *, until: float | None = None, rate_limited: bool = False
    ) -> None:
        now = self.clock()
        with self._lock:
            self._unwritten.pop(repo, None)
        with self.queue.store.transaction() as data:
            health = data.setdefault("watcher", {}).setdefault("repos", {}).setdefault(repo, {})
            # Being told to wait is not a fault: it does not lengthen the next back-off.
            failures = int(health.get("failures") or 0) + (0 if rate_limited else 1)
            if until is None:
                # Exponential back-off with jitter so that many daemons do not retry in step.
                base = min(self.config.poll_interval * 2 ** (failures - 1), MAX_BACKOFF)
                until = now + base * (0.5 + self.jitter() / 2)
            health.update(
                last_error=error,
                last_error_at=now,
                failures=failures,
                backoff_until=until,
                rate_limited=rate_limited,
            )
            if not health.get("failing_since"):
                health["failing_since"] = now
            if rate_limited:
                health["rate_remaining"] = 0

    def _note_once(self, key: str, message: str, *args: Any) -> None:
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        log.info(message, *args)


def _since(high_water: str) -> str:
    """``since`` for the listing: a little before the newest change seen, so that a change GitHub wrote
    late with an older time is still listed (what was seen already is recognised by its fingerprint).
    Constant while nothing changes, so the listing's ETag keeps answering 304."""
    try:
        at = datetime.fromisoformat(high_water.replace("Z", "+00:00"))
    except ValueError:
        return high_water
    return (at - timedelta(seconds=SINCE_MARGIN)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rate_limited(health: dict[str, Any]) -> bool:
    # Older state files have no flag: a rate-limit failure was recorded as zero requests left.
    return bool(health.get("rate_limited", health.get("rate_remaining") == 0 and health.get("last_error")))
