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
from collections.abc import Callable, Sequence
from typing import Any

from claude_issue_solver.backends.base import (
    Backend,
    BackendError,
    KeptDir,
    Workspace,
    WorkspaceLost,
)
from claude_issue_solver.conventions import HIT, MISS, NOT_SAVED, OFF, RESTORING, SAVED, SAVING
from claude_issue_solver.logs import REDACTOR, TaskLog
from claude_issue_solver.run.agent import AgentResult, parse_result
from claude_issue_solver.run.agent_access import AgentAccess
from claude_issue_solver.run.policy import ProcessExit, wait_for_process
from claude_issue_solver.run.repo_settings import PYTEST, TestPlan
from claude_issue_solver.run.run_limits import RunEnd
from claude_issue_solver.run.test_report import (
    BASELINE,
    CONVERSATION_GONE,
    FAILING_OUTPUT_LIMIT,
    MADE_LIMIT,
    NOT_FROM_DEFAULT,
    PHASES,
    RESULTS_DIR,
    SETUP,
    Interrupted,
    SetupCache,
    StepResult,
    TestReport,
    _fix_name,
    _test_name,
    checklist,
    failing_output,
    fix_prompt,
    setup_key,
)
from claude_issue_solver.run.test_results import (
    FILE_LIMIT,
    MAX_FILES,
    Results,
    merge,
    parse_go_json,
    parse_junit,
    wants_go_json,
)
from claude_issue_solver.store.outcome import TaskControl
from claude_issue_solver.store.queue import Task, TaskQueue

__all__ = [
    "BASELINE",
    "FAILING_OUTPUT_LIMIT",
    "NOT_FROM_DEFAULT",
    "PHASES",
    "RESULTS_DIR",
    "SETUP",
    "Interrupted",
    "SetupCache",
    "StepResult",
    "TestGate",
    "TestReport",
    "checklist",
    "failing_output",
    "fix_prompt",
    "setup_key",
]


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
        if results_glob:
            # A results file an earlier run left (the baseline's, or the agent's own run of the tests)
            # goes first, as CI starts clean: a deterministic suite writes the same bytes again, and
            # those are this run's results all the same. Only untracked or ignored files match.
            for path in self.backend.untracked(workspace, results_glob)[:MAX_FILES]:
                self.backend.delete_file(workspace, path)
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
