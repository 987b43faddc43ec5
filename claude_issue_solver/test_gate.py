"""The repository's tests around the agent: setup -> baseline -> (agent) -> test -> fix -> test ...

Policy, written once for every backend: each step is a named process in the task's workspace (the
same container image or sandbox as the agent, its user and network, no GitHub credential) started
with :meth:`Backend.start_process` and waited for with :func:`run_policy.wait_for_process`, each with
its own deadline (``test_timeout``, never past the task's ``TASK_TIMEOUT``). A hanging run is killed
at its deadline and counts as red.

Every step's result is recorded in ``task.meta["tests"]`` (the :class:`TestReport`) and the step in
progress in ``task.meta["phase"]`` before it starts, so a daemon that died anywhere resumes here: the
finished steps are read back, the running one is found again by its process name (``start_process``
starts nothing when one of that name exists) and waited for.

Setup is cached where the backend can (``Backend.caches_setup``, and ``SETUP_CACHE`` on): the key is
:func:`setup_key` -- the repository, the setup command and the content of the repository's dependency
files (:data:`repo_settings.SETUP_INPUTS`), read in the workspace before anything ran there. A saved
setup under that key is restored instead of running ``setup``; a green setup that ran is saved, but
only from a workspace that started at the default branch's head (``Workspace.from_default``): a retry
or a follow-up works on ``claude/issue-N``, which holds an earlier run's commits (an agent's, perhaps
an injected one's), and what setup made from that tree must not become what the default branch's
later tasks start from. Such a workspace may still *restore*: a saved setup was made from the default
branch's tree with the same key, so the same repository, command and dependency files -- what it
holds came from trusted inputs, however the branch differs elsewhere. What the cache did is recorded
(``TestReport.cache``) before each act, so a resumed task neither runs setup after a restore nor
loses a save.

When the tests are red after the agent, the same Claude session is continued (``--resume``) with the
failing output (its tail, size-capped, through the secret redactor) up to ``TEST_FIX_ROUNDS`` times.
The pipeline decides what a red or green verdict publishes (a draft PR, a comment, a normal PR).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from claude_issue_solver.agent import AgentResult, parse_result
from claude_issue_solver.agent_access import AgentAccess
from claude_issue_solver.backends.base import (
    Backend,
    BackendError,
    KeptDir,
    Workspace,
    WorkspaceLost,
)
from claude_issue_solver.logs import REDACTOR, TaskLog
from claude_issue_solver.outcome import TaskControl
from claude_issue_solver.queue import Task, TaskQueue
from claude_issue_solver.repo_settings import PYTEST, SETUP_INPUTS, TestPlan
from claude_issue_solver.run_limits import RunEnd
from claude_issue_solver.run_policy import ProcessExit, wait_for_process
from claude_issue_solver.test_results import (
    FILE_LIMIT,
    MAX_FILES,
    Judgement,
    Results,
    Run,
    judge,
    merge,
    parse_go_json,
    parse_junit,
    wants_go_json,
)

__all__ = [
    "FAILING_OUTPUT_LIMIT",
    "RESULTS_DIR",
    "Interrupted",
    "SetupCache",
    "StepResult",
    "TestGate",
    "TestReport",
    "checklist",
    "fix_prompt",
    "setup_key",
]

SETUP, BASELINE = "setup", "baseline"
PHASES = (SETUP, BASELINE, "tests", "fixing")  # task.meta["phase"] values of this module
# What the CLI says to `--resume <id>` when the session's files are not in its config directory.
CONVERSATION_GONE = "No conversation found"
FAILING_OUTPUT_LIMIT = 8 * 1024  # how much of a red run's output Claude is shown (its end)
TAIL_LINES = 40  # and how many lines of it, at most
SETUP_INPUT_LIMIT = 64 * 1024 * 1024  # bytes of one dependency file that go into the setup cache's key
# In the key: a new format never finds a setup saved under an older one (those keys lacked the
# repository, so two repositories with the same command and lock files shared one).
SETUP_KEY_VERSION = 2
# Why a green setup was not saved (TestReport.cache.detail) in a workspace not at the default branch's head.
NOT_FROM_DEFAULT = "the workspace did not start at the default branch's head (its branch has earlier commits)"

# Where the detected pytest writes its JUnit XML (one file per run); never committed.
RESULTS_DIR = ".claude-issue-solver-results"
# How many untracked paths (a directory holding only such files counts once) are kept as what setup and
# the test runs made in the tree: never committed, named in the PR when they would have been.
MADE_LIMIT = 500

# TestReport.cache states, each recorded before the act it names (a resumed task reads where it was).
RESTORING, HIT, MISS, SAVING, SAVED, NOT_SAVED, OFF = (
    "restoring",
    "hit",
    "miss",
    "saving",
    "saved",
    "not saved",
    "off",
)


def _test_name(round_: int) -> str:
    return f"test-{round_}"


def _fix_name(round_: int) -> str:
    return f"fix-{round_}"


class Interrupted(Exception):
    """The operator cancelled (``cancelled``) or the daemon detached (the work runs on)."""

    def __init__(self, *, cancelled: bool) -> None:
        super().__init__("cancelled by an operator" if cancelled else "detached")
        self.cancelled = cancelled


@dataclass(frozen=True)
class StepResult:
    """One setup or test run: how it ended, how long it took, the end of what it printed."""

    __test__ = False

    name: str  # the process name: setup, baseline, test-1, ...
    exit_code: int | None
    duration_s: float
    timed_out: bool
    tail: str
    cached: str | None = None  # setup only: restored from this saved setup instead of running
    results: Results | None = None  # per-test results (JUnit XML, go test -json), when there were any

    @property
    def green(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def run(self) -> Run:
        return Run(self.exit_code, self.timed_out, self.tail, self.results)

    def to_dict(self) -> dict[str, Any]:
        data = {
            "name": self.name,
            "exit_code": self.exit_code,
            "duration_s": round(self.duration_s, 3),
            "timed_out": self.timed_out,
            "tail": self.tail,
        }
        if self.cached:
            data["cached"] = self.cached
        if self.results is not None:
            data["results"] = self.results.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepResult:
        return cls(
            str(data["name"]),
            data.get("exit_code"),
            float(data.get("duration_s") or 0.0),
            bool(data.get("timed_out")),
            str(data.get("tail") or ""),
            data.get("cached") or None,
            Results.from_dict(data.get("results")),
        )


@dataclass
class SetupCache:
    """What the setup cache did for a task: its key, where it is (``state``) and what it said."""

    key: str | None = None
    state: str | None = None  # restoring, hit, miss, saving, saved, not saved, off
    detail: str | None = None  # the saved or restored setup (e.g. an image), or why there is none

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "state": self.state, "detail": self.detail}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SetupCache:
        return cls(data.get("key"), data.get("state"), data.get("detail"))


def setup_key(backend: Backend[Any], workspace: Workspace, command: str, extra: tuple[str, ...] = ()) -> str:
    """sha256 over the repository (its full name, lower-cased), the setup command and, for each
    dependency file present, its path and content's sha256.

    Read through the backend (so the same on every place), before anything ran in the workspace. A path
    that passes through a link counts as its own value: the key still changes when that changes.
    ``extra``: the repository's own ``setup_inputs:`` (a lock file in a subdirectory, say).
    """
    inputs: list[list[str]] = []
    for path in dict.fromkeys((*SETUP_INPUTS, *extra)):
        try:
            data = backend.read_file(workspace, path, SETUP_INPUT_LIMIT)
        except WorkspaceLost:
            raise
        except BackendError:
            inputs.append([path, "unreadable"])
            continue
        if data is not None:
            inputs.append([path, hashlib.sha256(data).hexdigest()])
    text = json.dumps(
        {"version": SETUP_KEY_VERSION, "repo": workspace.repo.lower(), "setup": command, "files": inputs},
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class TestReport:
    """What was verified, kept in ``task.meta["tests"]`` (so ``queue --json`` shows it) and told in the PR."""

    __test__ = False

    plan: TestPlan
    setup: StepResult | None = None
    baseline: StepResult | None = None
    rounds: list[StepResult] = field(default_factory=list)  # test runs after the agent, one per round
    fixes: int = 0  # fix rounds Claude was asked for
    note: str | None = None  # why the loop stopped early (a failed fix run, TASK_TIMEOUT)
    cache: SetupCache = field(default_factory=SetupCache)
    judgement: Judgement | None = None  # the latest round against the baseline (test_results.judge)
    # What setup, the baseline and the test runs made in the tree (untracked and ignored paths; a
    # directory holding only such files once): never committed. None until taken, before the agent.
    made: list[str] | None = None
    made_shown: list[str] = field(default_factory=list)  # of those, what git would have committed

    @property
    def verdict(self) -> str:
        """``none`` (nothing to run), ``pending`` before the first round, else the judgement's:
        ``green``, ``known``, ``red``, ``unchanged``, ``not-run`` (see :func:`test_results.judge`)."""
        if self.plan.test is None:
            return "none"
        if not self.rounds:
            return "pending"
        if self.judgement is not None:
            return self.judgement.verdict
        return "green" if self.rounds[-1].green else "red"

    def judge(self) -> Judgement:
        """The latest round against the baseline (and setup), kept in ``judgement``."""
        setup_green = None if self.setup is None else self.setup.green
        baseline = self.baseline.run() if self.baseline is not None else None
        self.judgement = judge(self.rounds[-1].run(), baseline, setup_green=setup_green)
        return self.judgement

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan": self.plan.to_dict(),
            "setup": self.setup.to_dict() if self.setup else None,
            "baseline": self.baseline.to_dict() if self.baseline else None,
            "rounds": [r.to_dict() for r in self.rounds],
            "fixes": self.fixes,
            "note": self.note,
            "verdict": self.verdict,
            "cache": self.cache.to_dict(),
            "judgement": self.judgement.to_dict() if self.judgement else None,
            "made": self.made,
            "made_shown": self.made_shown,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TestReport:
        return cls(
            plan=TestPlan.from_dict(data.get("plan") or {}),
            setup=StepResult.from_dict(data["setup"]) if data.get("setup") else None,
            baseline=StepResult.from_dict(data["baseline"]) if data.get("baseline") else None,
            rounds=[StepResult.from_dict(r) for r in data.get("rounds") or []],
            fixes=int(data.get("fixes") or 0),
            note=data.get("note"),
            cache=SetupCache.from_dict(data.get("cache") or {}),
            judgement=Judgement.from_dict(data.get("judgement")),
            made=list(data["made"]) if isinstance(data.get("made"), list) else None,
            made_shown=list(data.get("made_shown") or []),
        )


def checklist(report: TestReport, *, agent_done: bool, current: str | None) -> list[tuple[bool, str]]:
    """The progress comment's items: setup / baseline / agent / tests (round k), ticked when done."""

    def outcome(step: StepResult | None) -> str:
        if step is None:
            return ""
        if step.cached:
            return " — restored from the cache"
        return " — green" if step.green else (" — timed out" if step.timed_out else " — red")

    items: list[tuple[bool, str]] = []
    if report.plan.setup:
        items.append((report.setup is not None, "setup" + outcome(report.setup)))
    if report.plan.test:
        items.append(
            (report.baseline is not None, "tests before the change (baseline)" + outcome(report.baseline))
        )
    items.append((agent_done, "agent running" if current == "agent" else "agent"))
    for n, step in enumerate(report.rounds, start=1):
        items.append((True, f"tests (round {n}){outcome(step)}"))
    if current in ("tests", "fixing"):
        n = len(report.rounds) + (0 if current == "fixing" else 1)
        label = f"agent fixing the failures (round {n})" if current == "fixing" else f"tests (round {n})"
        items.append((False, label))
    return items


def fix_prompt(
    step: StepResult, command: str, round_: int, rounds: int, judgement: Judgement | None = None
) -> str:
    """What the continued session is told: the failing run's end, redacted and size-capped; with
    per-test results, the tests that fail because of the change (their messages) and those that were
    failing before it, which need not be fixed."""
    why = (
        f"timed out and was killed after {step.duration_s:.0f}s"
        if step.timed_out
        else f"exited {step.exit_code}"
    )
    parts = [f"The repository's tests fail after your change: `{command}` {why}."]
    if judgement is not None and judgement.new:
        parts.append("\nThese tests fail now and passed (or did not exist) before your change:\n")
        for failure in judgement.new[:20]:
            message = REDACTOR(failure.message).strip()
            parts.append(f"- `{failure.name}`" + (f":\n```\n{message[:1500]}\n```" if message else ""))
        if len(judgement.new) > 20:
            parts.append(f"- … and {len(judgement.new) - 20} more")
    if judgement is not None and judgement.known:
        names = ", ".join(f"`{f.name}`" for f in judgement.known[:20])
        more = f" and {len(judgement.known) - 20} more" if len(judgement.known) > 20 else ""
        parts.append(
            f"\nThese were already failing before your change; you need not fix them: {names}{more}."
        )
    parts.append(f"\nThe end of its output:\n\n```\n{failing_output(step.tail)}\n```\n")
    parts.append(
        f"Fix the code so that the tests pass (fix round {round_} of {rounds}). Do not weaken or delete "
        "tests to make them pass. Then update .claude-pr-summary.md as before."
    )
    return "\n".join(parts)


def failing_output(text: str) -> str:
    lines = REDACTOR(text).splitlines()[-TAIL_LINES:]
    tail = "\n".join(lines)
    return tail[-FAILING_OUTPUT_LIMIT:]


class TestGate:
    """Runs a task's :class:`TestPlan` in its workspace, recording each step on the task."""

    __test__ = False

    def __init__(
        self,
        backend: Backend[Any],
        queue: TaskQueue,
        *,
        fix_rounds: int,
        agent_command: Sequence[str],
        access: AgentAccess,
        clock: Callable[[], float],
        progress: Callable[[Task, TestReport, bool, str | None], None],
        after_run: Callable[..., RunEnd] | None = None,
        setup_cache: bool = True,
    ) -> None:
        self.backend = backend
        self.queue = queue
        self.fix_rounds = fix_rounds
        self.agent_command = tuple(agent_command)
        self.access = access  # what each process may reach: the relay, the credential, the network
        self.clock = clock
        self.progress = progress  # (task, report, agent_done, current step): the checklist comment
        # The budget and Claude limits (run_limits.RunLimits.after_run): a fix round is an agent run too.
        self.after_run = after_run
        self.setup_cache = setup_cache  # SETUP_CACHE: off means setup runs every time

    # --- before the agent -------------------------------------------------------------------------

    def before_agent(
        self,
        task: Task,
        workspace: Workspace,
        report: TestReport,
        control: TaskControl,
        tlog: TaskLog,
        deadline: float,
    ) -> TestReport:
        """Setup (when there is one) and the baseline run (when there are tests), each skipped when
        recorded already. Raises Interrupted."""
        plan = report.plan
        if plan.setup:
            self._setup(task, workspace, report, control, tlog, deadline)
        if report.baseline is None and plan.test:
            self._enter(task, BASELINE, report, agent_done=False)
            tlog.write(f"baseline tests: {plan.test}")
            report.baseline = self._run(workspace, BASELINE, plan, control, tlog, deadline)
            self._record(task, report)
            if report.baseline.results is not None:
                tlog.write(f"baseline: {report.baseline.results.counts()} ({report.baseline.results.source})")
        if report.made is None:
            # Before the agent: whatever is untracked now, setup and the baseline made (or the cache
            # restored). None of it is the agent's, so none of it is committed.
            made = self.backend.untracked(workspace)
            shown = set(self.backend.untracked(workspace, ignored=False))
            report.made = list(made[:MADE_LIMIT])
            report.made_shown = [p for p in made[:MADE_LIMIT] if p in shown]
            self._record(task, report)
            if made:
                tlog.write(
                    f"{len(made)} untracked path(s) in the tree before the agent (setup's and the tests' "
                    f"products, never committed): {', '.join(made[:10])}" + (" …" if len(made) > 10 else "")
                )
        return report

    def _setup(
        self,
        task: Task,
        workspace: Workspace,
        report: TestReport,
        control: TaskControl,
        tlog: TaskLog,
        deadline: float,
    ) -> None:
        """Restore the saved setup, or run setup and save it when green; each act recorded before it."""
        plan, cache = report.plan, report.cache
        command = str(plan.setup)
        if report.setup is None:
            self._enter(task, SETUP, report, agent_done=False)
            if cache.state is None and not self.setup_cache:
                cache.state, cache.detail = OFF, "SETUP_CACHE is off"
            elif cache.state is None and not self.backend.caches_setup:
                cache.state, cache.detail = OFF, f"not cached on this backend ({self.backend.name})"
            if cache.state in (None, RESTORING):
                started = self.clock()
                if cache.key is None:
                    cache.key = setup_key(self.backend, workspace, command, plan.setup_inputs)
                cache.state = RESTORING
                self._record(task, report)
                restored = self._restore(workspace, cache.key, tlog)
                if restored is not None:
                    cache.state, cache.detail = HIT, restored
                    report.setup = StepResult(SETUP, 0, self.clock() - started, False, "", cached=restored)
                    self._record(task, report)
                    tlog.write(f"setup: restored from the cache of {restored}; `{command}` not run")
                    return
                cache.state = MISS
                self._record(task, report)
                tlog.write(f"setup cache: nothing saved under {cache.key[:12]}; running setup")
            elif cache.state == OFF:
                tlog.write(f"setup cache: {cache.detail}")
            tlog.write(f"setup: {command}")
            report.setup = self._run(workspace, SETUP, plan, control, tlog, deadline, command=command)
            if cache.state == MISS:
                saves = report.setup.green and workspace.from_default
                cache.state = SAVING if saves else NOT_SAVED
                cache.detail = None if saves else NOT_FROM_DEFAULT if report.setup.green else "setup was red"
                if report.setup.green and not saves:
                    tlog.write(f"setup cache: not saved: {NOT_FROM_DEFAULT}")
            self._record(task, report)
            if not report.setup.green:
                tlog.write("setup failed; the tests will show what that breaks")
        if cache.state == SAVING and cache.key is not None:
            # Also after a restart between the green setup and the save: saving again only records it.
            try:
                saved = self.backend.save_setup(workspace, SETUP, cache.key, tlog)
            except WorkspaceLost:
                raise
            except BackendError as exc:
                saved = None
                cache.detail = f"saving it failed: {exc}"
                tlog.write(f"setup cache: {cache.detail} (the task goes on)")
            else:
                cache.detail = saved or "the backend kept nothing"
                if saved:
                    tlog.write(f"setup cache: saved as {saved}")
            cache.state = SAVED if saved else NOT_SAVED
            self._record(task, report)

    def _restore(self, workspace: Workspace, key: str, tlog: TaskLog) -> str | None:
        try:
            return self.backend.restore_setup(workspace, key, tlog)
        except WorkspaceLost:
            raise
        except BackendError as exc:
            # A cache that cannot be read is a miss, never a failed task: setup runs as without one.
            tlog.write(f"setup cache: restoring failed ({exc}); running setup")
            return None

    # --- after the agent --------------------------------------------------------------------------

    def after_agent(
        self,
        task: Task,
        workspace: Workspace,
        report: TestReport,
        control: TaskControl,
        tlog: TaskLog,
        deadline: float,
        first_prompt: bytes = b"",
        keep: KeptDir | None = None,
    ) -> TestReport:
        """Test; while red and rounds are left, continue Claude's session with the failure and test again.

        The agent's turns and cost of each fix round are added to the task's. ``first_prompt`` (the
        issue's) starts a new session when the old one cannot be continued. Raises Interrupted.
        """
        command = str(report.plan.test)
        while True:
            round_ = len(report.rounds) + 1
            if report.fixes < round_ - 1:
                # A fix round was started (phase "fixing") but not recorded: finish waiting for it.
                self._fix(task, workspace, report, control, tlog, deadline, first_prompt, keep)
                if report.note:
                    return report
                continue
            self._enter(task, "tests", report, agent_done=True)
            tlog.write(f"tests (round {round_}): {command}")
            before = set(self.backend.untracked(workspace))
            step = self._run(workspace, _test_name(round_), report.plan, control, tlog, deadline)
            report.rounds.append(step)
            self._take_made(workspace, report, before)
            judgement = report.judge()
            self._record(task, report)
            if step.results is not None:
                tlog.write(f"tests (round {round_}): {step.results.counts()} ({step.results.source})")
            if not judgement.wants_fix:
                tlog.write(
                    f"tests {judgement.verdict} in round {round_}"
                    + (f": {judgement.why}" if judgement.why else "")
                    + ("" if judgement.verdict == "green" else "; no fix round is asked for")
                )
                return report
            tlog.write(f"tests red in round {round_}: {judgement.why}")
            if report.fixes >= self.fix_rounds:
                tlog.write(
                    f"tests still red after {report.fixes} fix round(s) (TEST_FIX_ROUNDS={self.fix_rounds})"
                )
                return report
            if self.clock() >= deadline:
                report.note = "TASK_TIMEOUT was reached before the agent could be asked for a fix"
                self._record(task, report)
                tlog.write(report.note)
                return report
            self._fix(task, workspace, report, control, tlog, deadline, first_prompt, keep)
            if report.note:
                return report

    def _fix(
        self,
        task: Task,
        workspace: Workspace,
        report: TestReport,
        control: TaskControl,
        tlog: TaskLog,
        deadline: float,
        first_prompt: bytes,
        keep: KeptDir | None = None,
    ) -> None:
        round_ = report.fixes + 1
        failing = report.rounds[-1]
        current = self.queue.get(task.id)
        session = current.session_id
        argv = (*self.agent_command, "--resume", session) if session else self.agent_command
        self._enter(task, "fixing", report, agent_done=True)
        tlog.write(
            f"asking Claude for a fix (round {round_} of {self.fix_rounds})"
            + (f", continuing session {session}" if session else ", in a new session (none was recorded)")
        )
        spec = self.access.agent(
            task.id,
            name=_fix_name(round_),
            argv=argv,
            stdin=fix_prompt(
                failing, str(report.plan.test), round_, self.fix_rounds, report.judgement
            ).encode(),
            keep=keep,  # the issue's Claude sessions, as the agent had them: --resume finds its own
        )
        self.backend.start_process(workspace, spec, tlog)
        exit_ = self._wait(workspace, spec.name, control, tlog, deadline)
        if session and CONVERSATION_GONE in exit_.stdout + exit_.stderr:
            # The place kept no Claude config between the runs: the same request in a new session,
            # with the issue's prompt first so that Claude knows what the change was for.
            tlog.write(f"session {session} cannot be continued here; asking in a new session")
            spec = self.access.agent(
                task.id,
                name=f"{_fix_name(round_)}-new",
                argv=self.agent_command,
                stdin=first_prompt + b"\n\n---\n\n" + spec.stdin,
                keep=keep,
            )
            self.backend.start_process(workspace, spec, tlog)
            exit_ = self._wait(workspace, spec.name, control, tlog, deadline)
        result = parse_result(exit_.stdout, exit_code=exit_.exit_code, log_tail=exit_.tail)
        report.fixes = round_
        self._add_figures(current, result)
        end = None
        if self.after_run is not None:
            end = self.after_run(
                current,
                stdout=exit_.stdout,
                exit_code=exit_.exit_code,
                stderr=exit_.stderr,
                cost_usd=result.cost_usd,
                step=spec.name,
            )
        if exit_.timed_out:
            report.note = f"TASK_TIMEOUT was reached during fix round {round_}"
        elif end is not None and end.waits:
            # The queue now holds for the limit; this task publishes what it has, with the reason.
            report.note = f"fix round {round_} stopped: {end.wait_reason}"
        elif end is not None and end.failure:
            report.note = f"fix round {round_} failed: {end.failure}"
        elif not result.ok:
            report.note = f"fix round {round_} failed: {result.error or 'the agent failed'}"
        if report.note:
            tlog.write(report.note)
        self._record(task, report)

    def _add_figures(self, task: Task, result: AgentResult) -> None:
        """Turns and cost add up over the rounds; the session id is the latest."""
        turns = (task.num_turns or 0) + (result.num_turns or 0)
        cost = (task.cost_usd or 0.0) + (result.cost_usd or 0.0)
        self.queue.update(
            task.id,
            num_turns=turns or task.num_turns,
            cost_usd=cost if (task.cost_usd is not None or result.cost_usd is not None) else None,
            session_id=result.session_id or task.session_id,
            **({"result": result.result} if result.result else {}),
        )

    # --- one step ---------------------------------------------------------------------------------

    def _run(
        self,
        workspace: Workspace,
        name: str,
        plan: TestPlan,
        control: TaskControl,
        tlog: TaskLog,
        deadline: float,
        command: str | None = None,
    ) -> StepResult:
        """One setup (``command``) or test run (the plan's test, asked for JUnit XML when detected),
        with its per-test results read afterwards."""
        started = self.clock()
        results_glob = plan.results
        if command is None:
            command = str(plan.test)
            if plan.runner == PYTEST and not plan.results:
                results_glob = f"{RESULTS_DIR}/{name}.xml"
                command = f"{command} --junitxml={results_glob}"
        else:
            results_glob = None
        before = {
            p: hashlib.sha256(d).digest()
            for p, d in (self._result_files(workspace, results_glob, tlog) if results_glob else {}).items()
        }
        # No GitHub credential and no Claude credential: the tests get the place's defaults only.
        spec = self.access.command(name, command, setup=name == SETUP)
        if not self.backend.start_process(workspace, spec, tlog):
            tlog.write(f"{name} already runs (started before a restart)")
        exit_ = self._wait(workspace, name, control, tlog, min(started + plan.timeout, deadline))
        duration = self.clock() - started
        if exit_.timed_out:
            tlog.write(
                f"{name} was killed at its deadline ({plan.timeout}s test_timeout or TASK_TIMEOUT): red"
            )
        results = None
        if name != SETUP:
            found: list[Results | None] = []
            if results_glob:
                after = self._result_files(workspace, results_glob, tlog)
                # Only what this run wrote: a file left from an earlier run (unchanged) is not its result.
                fresh = {p: d for p, d in after.items() if before.get(p) != hashlib.sha256(d).digest()}
                if fresh:
                    found.append(parse_junit(fresh))
            if wants_go_json(command):
                found.append(parse_go_json(exit_.stdout))
            results = merge(found)
            for problem in results.problems if results else ():
                tlog.write(f"{name}: test results: {problem}")
            if results is not None and not results.source:
                results = None  # no file could be read: no per-test results (not "no test ran")
        # Kept in the state file and quoted in the PR: redacted, and its end only (lines can be long).
        tail = REDACTOR(exit_.tail)[-FAILING_OUTPUT_LIMIT:]
        return StepResult(name, exit_.exit_code, duration, exit_.timed_out, tail, results=results)

    def _result_files(self, workspace: Workspace, glob: str, tlog: TaskLog) -> dict[str, Any]:
        """The JUnit files matching ``glob`` (untracked or ignored, never through a link), each at most
        FILE_LIMIT bytes; before a run their hashes only (``before``), after it their content."""
        files: dict[str, Any] = {}
        for path in self.backend.untracked(workspace, glob)[:MAX_FILES]:
            data = self.backend.read_file(workspace, path, FILE_LIMIT + 1)
            if data is None:
                continue  # a link, a directory, gone: never followed or read
            if len(data) > FILE_LIMIT:
                tlog.write(f"test results: {path} is larger than {FILE_LIMIT // (1024 * 1024)} MiB: not read")
                continue
            files[path] = data
        return files

    def _take_made(self, workspace: Workspace, report: TestReport, before: set[str]) -> None:
        """What a test run made in the tree (new untracked paths): never committed either."""
        made = [p for p in self.backend.untracked(workspace) if p not in before]
        if not made:
            return
        shown = set(self.backend.untracked(workspace, ignored=False))
        known = report.made or []
        for path in made:
            if len(known) >= MADE_LIMIT:
                break
            if path not in known:
                known.append(path)
                if path in shown:
                    report.made_shown.append(path)
        report.made = known

    def _wait(
        self, workspace: Workspace, name: str, control: TaskControl, tlog: TaskLog, deadline: float
    ) -> ProcessExit:
        exit_ = wait_for_process(
            self.backend, workspace, name, deadline=deadline, control=control, clock=self.clock, log=tlog
        )
        if exit_ is None:
            raise Interrupted(cancelled=False)
        if exit_.cancelled:
            raise Interrupted(cancelled=True)
        return exit_

    def _enter(self, task: Task, phase: str, report: TestReport, *, agent_done: bool) -> None:
        self.queue.update(task.id, meta={"phase": phase, "tests": report.to_dict()})
        self.progress(task, report, agent_done, phase)

    def _record(self, task: Task, report: TestReport) -> None:
        self.queue.update(task.id, meta={"tests": report.to_dict()})
