"""What the end of an agent run means for the queue: book its cost, and turn a Claude limit into a wait.

The pipeline calls :meth:`RunLimits.after_run` once per finished run, right after reading its result and
before the task is finished or requeued. In one state transaction it books the run's cost in the spend
ledger (``state["budget"]``) and records the end with :func:`admission.record_end`, which starts, renews
or clears the queue's hold — before the task leaves ``running``, so that :func:`admission.admit` never
hands the probe to a second task while the first one's verdict is still unwritten.

A run that met Claude's usage or rate limit, or an overloaded API (:class:`limits.LimitHit`,
:class:`limits.Transient`), is no failure: the answer says so (:attr:`RunEnd.waits`), its attempt is
given back in the same transaction, and the comment to write tells the issue until when the task waits.
When the CLI stated no reset time, the one the API named in the refusal's headers is taken from the
Claude relay (Docker); failing that, with an API key, one cheap request asks the API itself
(:func:`limits.probe_reset`) — only by the first task to meet the limit, not by every task that was
running alongside it. A run stopped at ``--max-budget-usd`` is a failure of its own, told with what it
spent (:attr:`RunEnd.failure`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from claude_issue_solver import limits
from claude_issue_solver.config import Config
from claude_issue_solver.run import messages
from claude_issue_solver.store import admission, budget
from claude_issue_solver.store.holds import QueueHold, format_wait
from claude_issue_solver.store.queue import Task, TaskQueue, TaskState

__all__ = ["ANTHROPIC_API_URL", "LIFTED_PAUSE", "RunEnd", "RunLimits"]

log = logging.getLogger(__name__)

ANTHROPIC_API_URL = "https://api.anthropic.com"
# The probe got an answer although the run was refused: the limit lifted in between. Wait a minute
# rather than none, so that a limit that flickers is not hammered by the whole queue.
LIFTED_PAUSE = 60.0

Prober = Callable[..., limits.Probe]

_WHY = {  # hold reason: (for the issue, for the task's error)
    "usage_limit": ("Claude's usage limit was reached", "the Claude usage limit to reset"),
    "rate_limit": ("Claude's API rate limit was reached", "the Claude rate limit to reset"),
    "overloaded": ("Claude's API was overloaded or failing", "the Claude API to recover"),
}


@dataclass(frozen=True)
class RunEnd:
    """What the pipeline does after a run: wait (requeue, no attempt used), fail with a reason, or go on."""

    verdict: limits.Verdict
    hold: QueueHold | None = None  # the queue's hold after this run
    wait_reason: str | None = None  # set: requeue the task with this error; no failure comment
    comment: str | None = None  # the issue comment for a wait
    failure: str | None = None  # set: the run stopped at its budget; the failure to report

    @property
    def waits(self) -> bool:
        return self.wait_reason is not None


class RunLimits:
    def __init__(
        self,
        queue: TaskQueue,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        prober: Prober = limits.probe_reset,
        reset_seen: Callable[[str], float | None] = lambda _task_id: None,
    ) -> None:
        self.queue = queue
        self.config = config
        self.clock = clock
        self.prober = prober
        # When the relay saw the API refuse this task's request, the reset time the API named then.
        self.reset_seen = reset_seen
        # Runs ending together must not each ask the API: deciding who asks, asking and recording the
        # hold happen under one lock (one daemon per state file, its monitors are threads).
        self._ending = threading.Lock()

    def after_run(
        self,
        task: Task,
        *,
        stdout: str,
        exit_code: int | None,
        stderr: str = "",
        cost_usd: float | None = None,
        step: str | None = None,
    ) -> RunEnd:
        """Classify the run, ask the API for a reset time if needed, and record cost and hold at once.

        ``step`` names a further agent run of the same attempt (a test-fix round), booked on its own."""
        with self._ending:
            return self._after_run(task, stdout, exit_code, stderr, cost_usd, step)

    def _after_run(
        self,
        task: Task,
        stdout: str,
        exit_code: int | None,
        stderr: str,
        cost_usd: float | None,
        step: str | None = None,
    ) -> RunEnd:
        now = self.clock()
        verdict = limits.classify(stdout, exit_code=exit_code, stderr=stderr, now=now)
        if isinstance(verdict, limits.LimitHit) and verdict.resets_at is None:
            # The relay read the refusal's own headers (retry-after, anthropic-ratelimit-*-reset): exact,
            # and no request is spent asking again.
            seen = self.reset_seen(task.id)
            if seen is not None and seen > now:  # one in the past is an earlier run's, long lifted
                verdict = replace(verdict, resets_at=seen)
        if (
            isinstance(verdict, limits.LimitHit)
            and verdict.resets_at is None
            and self._first_to_meet(task, now)
        ):
            verdict = self._ask_for_reset(verdict, now)
        run_id = f"{task.id}:{task.meta.get('runs') or task.attempts}" + (f":{step}" if step else "")
        waits = isinstance(verdict, limits.LimitHit | limits.Transient)
        with self.queue.store.transaction() as data:
            data["budget"] = budget.record(
                data.get("budget"), repo=task.repo, run_id=run_id, cost_usd=cost_usd, now=now
            )
            hold = admission.record_end(data, task.id, verdict, now=now)
            if waits and step is None:  # a fix round's limit ends the round, not the attempt
                _refund_attempt(data, task.id, run_id)
        if isinstance(verdict, limits.BudgetExhausted):
            spent = verdict.spent if verdict.spent is not None else cost_usd
            return RunEnd(verdict, hold, failure=messages.budget_stopped_reason(spent, self._run_cap))
        if not waits or hold is None:
            return RunEnd(verdict, hold)
        why, waiting_for = _WHY.get(hold.reason, ("Claude's API refused the run", "Claude"))
        until = format_wait(hold.until, now)
        reason = f"waiting for {waiting_for} (until {until.split(' (', 1)[0]}); no attempt used"
        log.info("task %s meets a Claude limit (%s); it waits until %s", task.id, verdict.message, until)
        comment = messages.waiting_comment(task, why, until, known_reset=hold.known_reset)
        return RunEnd(verdict, hold, wait_reason=reason, comment=comment)

    @property
    def _run_cap(self) -> float | None:
        return self.config.claude_max_budget_usd

    def _first_to_meet(self, task: Task, now: float) -> bool:
        """No limit hold in force yet, or this task is the one probing it: only then ask the API."""
        hold = QueueHold.from_dict(self.queue.store.read().get("hold"))
        if hold is None or hold.reason == "daily_budget":
            return True
        return hold.probe_task == task.id or now >= hold.until

    def _ask_for_reset(self, hit: limits.LimitHit, now: float) -> limits.LimitHit:
        key = self.config.anthropic_api_key
        if not key:
            return hit  # a subscription's runs state their reset themselves; nothing else to ask
        base = self.config.anthropic_base_url or ANTHROPIC_API_URL
        try:
            probe = self.prober(base, key, now=now)
        except (OSError, ValueError) as exc:  # requests' errors are OSErrors: back off as for no answer
            log.info("could not ask the Claude API when its limit resets: %s", type(exc).__name__)
            return hit
        if probe.limited and probe.resets_at is not None:
            return replace(hit, resets_at=probe.resets_at)
        if probe.status == 200:
            return replace(hit, resets_at=now + LIFTED_PAUSE)
        return hit


def _refund_attempt(data: dict[str, Any], task_id: str, run_id: str) -> None:
    """The run does not count against MAX_ATTEMPTS; once per run, should the end be recorded twice."""
    record = data["tasks"].get(task_id)
    if record is None or record.get("state") != TaskState.RUNNING.value:
        return
    meta = record.setdefault("meta", {})
    if meta.get("refunded_run") == run_id:
        return
    meta["refunded_run"] = run_id
    record["attempts"] = max(0, int(record.get("attempts") or 0) - 1)
