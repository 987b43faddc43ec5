"""Pre-warming: each watched repository's setup made and cached before a task needs it (issue #23).

Without it the setup cache (:mod:`claude_issue_solver.run.test_gate`, ``SETUP_CACHE``) fills only when a
task runs, so the first task after a dependency change always pays for setup. Every
``PREWARM_INTERVAL`` seconds (and once at start) the :class:`Prewarmer`, a service of the daemon with a
thread of its own, goes through the watched repositories **one at a time**:

1. reads the repository's test plan from its default branch (``repo_settings.load_plan``, as a task
   does); no setup command: nothing to warm;
2. prepares a workspace of its own (``prewarm-<repo>``) at the default branch's head -- on Docker this
   fetches the repository's mirror, which the next task then fetches only the difference into;
3. computes the setup key there (``test_gate.setup_key``: the setup command and the dependency files);
   when it is the key warmed last time and the cache still holds it, nothing more happens;
4. otherwise: a setup saved under that key already (a task saved it) is only recorded; else ``setup``
   runs there -- the same process a task's setup is (``AgentAccess.command``: no credential, the setup's
   network), with the plan's timeout -- and a green one is saved (``Backend.save_setup``). The scope rule
   of the cache holds: it is saved from the default branch's head only, keyed by the repository;
5. removes the workspace; what happened is recorded in the state (``state["prewarm"][repo]``), which
   ``status`` shows.

**Low priority.** A repository is started only while nothing waits for a slot: fewer than
``MAX_CONCURRENT`` tasks run and no task is pending (a paused queue's pending tasks wait for the pause,
not for a slot). Otherwise it waits, and looks again every few seconds. No Claude process runs, so it
costs nothing of Claude's. It stops with the daemon: the setup is stopped and its workspace removed
(a daemon killed outright leaves it to the next start's ``reconcile``, as any leftover).

**Cheap at organisation scale** (issue #24). Its GitHub requests (the repository's metadata and
settings, two or three a repository) go at the request budget's lowest priority (``Priority.BACKGROUND``):
only while the last minute's requests leave room below polls and work, so it never delays a poll or a
task; a round waits for room instead. A repository whose last round found no setup command is looked
at again after :data:`NO_SETUP_RECHECK` (a day), not every round: of an organisation's 1,000
repositories, those without a setup cost nothing between two such looks (a new setup command is
warmed by the next look, or saved by the first task that runs it). A round stops when GitHub asks the
whole client to wait, or the daemon stops, and the next round goes on.

**Daytona** keeps no setup cache (``Backend.caches_setup`` is False: a sandbox is the task's, and a
snapshot per dependency change is not made), so pre-warming does nothing there and says so once.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from claude_issue_solver.backends.base import Backend, BackendError, WorkspaceSpec
from claude_issue_solver.config import Config
from claude_issue_solver.github.client import GitHubClient, GitHubError
from claude_issue_solver.github.request_budget import Priority
from claude_issue_solver.logs import REDACTOR, TaskLog
from claude_issue_solver.run.agent_access import AgentAccess
from claude_issue_solver.run.policy import remove_workspace, wait_for_process
from claude_issue_solver.run.repo_settings import RepoSettingsError, load_plan
from claude_issue_solver.run.test_gate import SETUP, setup_key
from claude_issue_solver.store.outcome import TaskControl
from claude_issue_solver.store.queue import TaskQueue, TaskState

__all__ = ["PREFIX", "Prewarmer", "workspace_id"]

log = logging.getLogger(__name__)

PREFIX = "prewarm-"
BRANCH = "claude-issue-solver-prewarm"  # the worktree's local branch; never pushed
IDLE_CHECK = 5.0  # seconds between looks at the queue while tasks wait for a slot
NO_SETUP_RECHECK = 86400.0  # a repository with no setup command is looked at again after a day
STATE_KEY = "prewarm"
# What a round recorded for a repository (``state["prewarm"][repo]["result"]``).
WARMED, CACHED, UNCHANGED, RED, NO_SETUP, FAILED = (
    "warmed",
    "cached already",
    "unchanged",
    "setup red",
    "no setup command",
    "failed",
)


def workspace_id(repo: str) -> str:
    """The pre-warm workspace's id for ``repo``: a valid task id, distinct per repository."""
    slug = re.sub(r"[^a-z0-9]+", "-", repo.lower()).strip("-")[:60]
    return f"{PREFIX}{slug}-{hashlib.sha256(repo.lower().encode()).hexdigest()[:6]}"


class Prewarmer:
    """The daemon's pre-warming service (see the module's docstring)."""

    def __init__(
        self,
        config: Config,
        queue: TaskQueue,
        backend: Backend[Any],
        client: GitHubClient,
        access: AgentAccess,
        repos: Callable[[], list[str]],
        *,
        interval: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.queue = queue
        self.backend = backend
        self.client = client
        self.access = access
        self.repos = repos
        self.interval = float(config.prewarm_interval if interval is None else interval)
        self.clock = clock
        self.control = TaskControl()  # detach: the daemon stops
        self._thread: threading.Thread | None = None

    # --- the service ----------------------------------------------------------------------------

    def start(self) -> None:
        if self.interval <= 0:
            return
        if not self.backend.caches_setup or not self.config.setup_cache:
            why = (
                "SETUP_CACHE is off"
                if not self.config.setup_cache
                else f"{self.backend.name} keeps no setup cache"
            )
            log.info("pre-warming is off: %s", why)
            return
        self.control = TaskControl()
        self._thread = threading.Thread(target=self._loop, name="prewarmer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.control.detach.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _loop(self) -> None:
        while not self.control.detach.is_set():
            self.run_once()
            self.control.detach.wait(self.interval)

    # --- one round ------------------------------------------------------------------------------

    def run_once(self) -> dict[str, dict[str, Any]]:
        """Warm every watched repository in turn, each when no task waits for a slot; never raises.
        Returns what this round did (a repository it had no need to look at is not in it)."""
        done: dict[str, dict[str, Any]] = {}
        section = self.queue.store.snapshot().get(STATE_KEY) or {}
        for repo in self.repos():
            entry = section.get(repo.lower()) if isinstance(section, dict) else None
            if self._settled(entry):
                continue
            if not self._wait_until_idle():
                break
            try:
                with self.client.priority(Priority.BACKGROUND):
                    done[repo] = self.warm(repo)
            except _RoundOver:
                break
            except Exception as exc:  # one repository's trouble must not stop the others, nor the service
                log.exception("pre-warming %s failed", repo)
                done[repo] = self._record(repo, result=FAILED, detail=f"{type(exc).__name__}: {exc}")
        return done

    def _settled(self, entry: Any) -> bool:
        """Whether the last round's finding for a repository still stands (no setup command, looked at
        less than :data:`NO_SETUP_RECHECK` ago): no request for it this round."""
        if not isinstance(entry, dict) or entry.get("result") != NO_SETUP:
            return False
        at = entry.get("at")
        return isinstance(at, int | float) and 0 <= self.clock() - at < NO_SETUP_RECHECK

    def _held(self) -> bool:
        """GitHub asked every request to wait, or the daemon stops: this round is over."""
        return self.control.detach.is_set() or self.client.budget.paused_until is not None

    def idle(self) -> bool:
        """Whether a setup may run now without taking a slot a task waits for."""
        data = self.queue.store.snapshot()  # asked before every repository: parsed only when it changed
        tasks = (data.get("tasks") or {}).values()
        running = sum(1 for t in tasks if t.get("state") == TaskState.RUNNING.value)
        pending = any(t.get("state") == TaskState.PENDING.value for t in tasks)
        return running < self.config.max_concurrent and (not pending or bool(data.get("paused")))

    def _wait_until_idle(self) -> bool:
        while not self.idle():
            if self.control.detach.wait(IDLE_CHECK):
                return False
        return not self.control.detach.is_set()

    def warm(self, repo: str) -> dict[str, Any]:
        """Warm one repository; returns (and records) what happened."""
        tlog = TaskLog(self.log_path(repo))
        try:
            info = self.client.repo_info(repo)
            plan = load_plan(self.client, repo, info["default_branch"], self.config)
        except (GitHubError, RepoSettingsError) as exc:
            if self._held():  # not this repository's trouble: the next round looks again
                raise _RoundOver from exc
            tlog.write(f"pre-warm: cannot read {repo}'s settings: {exc}")
            return self._record(repo, result=FAILED, detail=str(exc))
        if not plan.setup:
            return self._record(repo, result=NO_SETUP, detail=plan.source)
        wid = workspace_id(repo)
        spec = WorkspaceSpec(
            task_id=wid,
            repo=repo,
            issue_number=0,
            clone_url=info["clone_url"],
            default_branch=info["default_branch"],
            branch=BRANCH,
            credential=lambda: self.client.git_credential(repo),
        )
        started = self.clock()
        tlog.write(f"pre-warm of {repo} ({info['default_branch']}): setup {plan.setup!r} from {plan.source}")
        try:
            workspace = self.backend.prepare(spec, tlog)
            if not workspace.from_default:
                return self._record(
                    repo, result=FAILED, detail="the workspace is not at the default branch's head"
                )
            key = setup_key(self.backend, workspace, plan.setup, plan.setup_inputs)
            last = self.last(repo)
            # Saved already (by the last round, or by a task)? A restore into this throwaway tree tells;
            # a setup pruned from the cache meanwhile is made again below.
            restored = self.backend.restore_setup(workspace, key, tlog)
            if restored is not None:
                same = last.get("key") == key and bool(last.get("cached"))
                tlog.write(
                    f"pre-warm: setup key {key[:12]} {'unchanged' if same else 'saved already'}: {restored}"
                )
                return self._record(
                    repo, result=UNCHANGED if same else CACHED, key=key, cached=True, detail=restored
                )
            tlog.write(f"pre-warm: setup key {key[:12]} changed; running setup: {plan.setup}")
            process = self.access.command(SETUP, plan.setup, setup=True)
            self.backend.start_process(workspace, process, tlog)
            exit_ = wait_for_process(
                self.backend,
                workspace,
                SETUP,
                deadline=self.clock() + plan.timeout,
                control=self.control,
                clock=self.clock,
                log=tlog,
            )
            if exit_ is None:  # the daemon stops: the leftover goes at the next start (reconcile)
                return self.last(repo)
            took = round(self.clock() - started, 1)
            if exit_.exit_code != 0:
                why = "timed out" if exit_.timed_out else f"exit code {exit_.exit_code}"
                tail = REDACTOR(exit_.tail)[-500:]
                tlog.write(f"pre-warm: setup was red ({why}); nothing saved")
                return self._record(
                    repo, result=RED, key=key, cached=False, detail=f"{why}: {tail}", took=took
                )
            saved = self.backend.save_setup(workspace, SETUP, key, tlog)
            tlog.write(f"pre-warm: setup green in {took}s; saved as {saved}")
            return self._record(repo, result=WARMED, key=key, cached=bool(saved), detail=saved, took=took)
        except BackendError as exc:
            tlog.write(f"pre-warm failed: {exc}")
            return self._record(repo, result=FAILED, detail=str(exc))
        finally:
            remove_workspace(self.backend, wid, tlog)

    # --- what status shows ----------------------------------------------------------------------

    def log_path(self, repo: str) -> Path:
        return self.config.log_dir / "prewarm" / f"{workspace_id(repo)}.log"

    def last(self, repo: str) -> dict[str, Any]:
        section = self.queue.store.snapshot().get(STATE_KEY) or {}
        entry = section.get(repo.lower()) if isinstance(section, dict) else None
        return dict(entry) if isinstance(entry, dict) else {}  # a copy: the snapshot is shared

    def _record(self, repo: str, **fields: Any) -> dict[str, Any]:
        """Record a round's end for ``repo``: when, what happened; a key and its cache state carry over
        from the last round when this one learnt nothing new of them."""
        now = self.clock()
        with self.queue.store.transaction() as data:
            section = data.setdefault(STATE_KEY, {})
            entry = dict(section.get(repo.lower()) or {})
            entry.update({"repo": repo, "at": now, "took": None, "detail": None}, **fields)
            if fields.get("result") in (WARMED, CACHED, UNCHANGED):
                entry["warmed_at"] = now
            section[repo.lower()] = entry
        log.info(
            "pre-warm of %s: %s%s",
            repo,
            fields.get("result"),
            f" ({fields['detail']})" if fields.get("detail") else "",
        )
        return entry


class _RoundOver(Exception):
    """The round stops here (:meth:`Prewarmer._held`); nothing is recorded for the repository."""
