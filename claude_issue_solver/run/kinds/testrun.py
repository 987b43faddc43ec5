"""A test run of any pull request: ``@claude test`` by a writer runs setup and the tests on its head.

A kind with no agent (:attr:`TaskKind.agent` False) and nothing pushed: the workspace starts at the pull
request's ``refs/pull/N/head`` (ours, a person's, a fork's: GitHub keeps that ref in the base
repository for every one), the test gate runs the repository's setup and its tests there (the gate's
"baseline" run *is* the run of the head: there is no change after it), and publishing posts

- a commit status on the head (``claude-issue-solver/tests``: success, failure, or error when the
  tests could not run here), and
- the task's one comment on the pull request with the counts, the failing tests as a table and, when
  the repository names a Cobertura file (``coverage:``), the total line coverage.

What runs is the repository's settings file on its *default branch* (never the pull request's, which
its author wrote), in the same sandbox and with the same limits as an agent's run. New failures are
told apart from those already failing on the base branch when a baseline is cheap: per-test results
recorded for the pull request's base commit by an earlier task (an issue's baseline run at that
commit, or a test run of a pull request whose head it was). No second run is made to get one.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from claude_issue_solver.backends.base import BackendError, WorkspaceLost
from claude_issue_solver.github.client import GitHubError
from claude_issue_solver.github.markers import is_test_request, marker
from claude_issue_solver.github.statuses import CONTEXT  # the gate's own status context
from claude_issue_solver.run.coverage import FILE_LIMIT as COVERAGE_LIMIT
from claude_issue_solver.run.coverage import Coverage, CoverageError, delta_text, parse_cobertura
from claude_issue_solver.run.kinds import Plan, TaskKind, Words
from claude_issue_solver.run.test_results import FILE_LIMIT as RESULTS_LIMIT
from claude_issue_solver.run.test_results import Results, environment_problem, parse_junit
from claude_issue_solver.store.outcome import Outcome
from claude_issue_solver.store.queue import TaskState

if TYPE_CHECKING:
    from claude_issue_solver.backends.base import Workspace
    from claude_issue_solver.logs import TaskLog
    from claude_issue_solver.run.agent import AgentResult
    from claude_issue_solver.run.context import RunContext, RunSpec
    from claude_issue_solver.run.messages import Agent
    from claude_issue_solver.run.prompt import IssueContext
    from claude_issue_solver.run.test_gate import StepResult, TestReport
    from claude_issue_solver.store.queue import Task

__all__ = ["CONTEXT", "NAME", "TestRunKind", "is_test_request"]

log = logging.getLogger(__name__)

NAME = "test"
DESCRIPTION_LIMIT = 140  # GitHub refuses a longer status description
TABLE_ROWS = 50  # failing tests shown in the comment's table (the rest counted)
MESSAGE_CHARS = 160  # of each failing test's message, its first line


class TestRunKind(TaskKind):
    __test__ = False

    name = NAME
    agent = False

    # --- before the work ---------------------------------------------------------------------------

    def begin(self, run: RunContext, task: Task, issue: dict[str, Any], tlog: TaskLog) -> Task | Outcome:
        """The pull request as it is now: its head (tested, and where the status goes) and its base."""
        pull = run.client.request(
            task.repo, "GET", f"/repos/{task.repo}/pulls/{task.issue_number}", retry=True
        )
        data = pull.data or {}
        head, base = data.get("head") or {}, data.get("base") or {}
        pr = {
            "head_sha": head.get("sha"),
            "head_label": head.get("label") or head.get("ref"),
            "base_ref": base.get("ref"),
            "base_sha": base.get("sha"),
            "url": data.get("html_url") or issue.get("html_url", ""),
        }
        tlog.write(f"test run of {pr['head_label']} at {str(pr['head_sha'])[:12]} (base {pr['base_ref']})")
        return run.queue.update(task.id, meta={"pr": pr})

    def approved_text(self, queue: Any, task: Task) -> None:
        return None  # no prompt: the pull request's text reaches nothing

    def plan(self, run: RunContext, task: Task, context: IssueContext, default_branch: str) -> Plan:
        number = task.issue_number
        return Plan(f"claude-test/pr-{number}", prompt="", start=f"refs/pull/{number}/head")

    # --- publishing --------------------------------------------------------------------------------

    def publish(
        self,
        run: RunContext,
        task: Task,
        workspace: Workspace,
        spec: RunSpec,
        result: AgentResult | None,
        tlog: TaskLog,
    ) -> Outcome:
        task = run.queue.get(task.id)  # as the gate left it: the run of the head is recorded there
        report = run.tests(task)
        pr = task.meta.get("pr") or {}
        if report is None or not report.plan.test:
            text = self._comment(task, run.phrase, None, None, None, None, None, run.agent.name)
            return self._end(run, task, text, None, tlog)
        step = report.baseline  # the run of the head: "before the change", and there is no change
        results = _results(run, workspace, report, step, tlog)
        coverage = _coverage(run, workspace, report, step, tlog)
        base = _recorded_base(run, task, pr.get("base_sha"))
        verdict = _verdict(report, step, results, base)
        text = self._comment(task, run.phrase, report, verdict, results, coverage, base, run.agent.name)
        status = _status(verdict, results, base)
        run.queue.update(
            task.id,
            meta={
                "test_run": {
                    "state": status[0],
                    "results": results.to_dict() if results else None,
                    "coverage": coverage.to_dict() if coverage else None,
                }
            },
        )
        return self._end(run, task, text, status, tlog)

    def _end(
        self, run: RunContext, task: Task, text: str, status: tuple[str, str] | None, tlog: TaskLog
    ) -> Outcome:
        pr = task.meta.get("pr") or {}
        if status is not None and pr.get("head_sha"):
            body = {"state": status[0], "context": CONTEXT, "description": status[1]}
            if pr.get("url"):
                body["target_url"] = pr["url"]
            try:  # best effort, as the gate's: the comment says the same
                run.client.request(
                    task.repo, "POST", f"/repos/{task.repo}/statuses/{pr['head_sha']}", body=body
                )
                tlog.write(f"status {status[0]} on {pr['head_sha'][:12]}: {status[1]}")
            except GitHubError as exc:
                tlog.write(f"could not post the commit status: {exc}")
        run.queue.update(task.id, meta={"phase": "published", "final_comment": text})
        try:
            run.comment(task, text)
        except GitHubError as exc:
            tlog.write(f"could not write the final comment: {exc}")
        run.cleanup(task, tlog)
        return Outcome(TaskState.COMPLETED)

    # --- the texts ---------------------------------------------------------------------------------

    def words(self, task: Task, label: str, phrase: str) -> Words:
        who = task.meta.get("requester")
        asked = f"the test run @{who} asked for" if who else "this test run"
        again = f"Comment `{phrase} test` on the pull request to run them again."
        return Words("this test run", asked, asked, again)

    def working_comment(self, task: Task, done: int, *, turns: int | None, agent: Agent) -> str:
        text = f"🧪 {agent.name} is preparing a test run of this pull request (task `{task.id}`)."
        return f"{text}\n\n{marker(task.id)}"

    def checklist(self, task: Task, items: list[tuple[bool, str]]) -> list[tuple[bool, str]]:
        head = str((task.meta.get("pr") or {}).get("head_sha") or "")[:7]
        shown = []
        for done, label in items:
            if label.startswith("agent"):
                continue  # no agent runs
            if label.startswith("tests before the change"):
                label = f"tests on the head{f' `{head}`' if head else ''}" + label.partition(")")[2]
            shown.append((done, label))
        return shown

    def trigger(self, task: Task) -> str:
        who = task.meta.get("requester")
        return f"test run by @{who}" if who else "test run"

    def history_trigger(self, task: Task) -> str:
        return "test"

    def _comment(
        self,
        task: Task,
        phrase: str,
        report: TestReport | None,
        verdict: tuple[str, str] | None,
        results: Results | None,
        coverage: Coverage | None,
        base: dict[str, Any] | None,
        agent: str,
    ) -> str:
        pr = task.meta.get("pr") or {}
        who = task.meta.get("requester")
        head = f"`{str(pr.get('head_sha') or '')[:7]}`" if pr.get("head_sha") else "the head"
        asked = f" (asked by @{who})" if who else ""
        if report is None or verdict is None:
            lines = [
                f"🧪 No test run{asked}: no test command was found for this repository. Give one in "
                "`.github/claude-issue-solver.yml` (`test:`) on the default branch."
            ]
            return "\n".join(lines) + "\n\n" + marker(task.id)
        kind, why = verdict
        step = report.baseline
        took = f" in {step.duration_s:.0f}s" if step else ""
        counts = f": {results.counts()}" if results else ""
        heading = {
            "green": f"✅ Tests pass on {head}{counts}",
            "known": f"✅ No new failures on {head}{counts}",
            "red": f"❌ Tests fail on {head}{counts}",
            "not-run": f"⚠️ The tests could not run on {head}: {why}",
        }[kind]
        lines = [heading + f"{took}{asked}.", ""]
        lines.append(f"`{report.plan.test}` from {report.plan.source}; no agent ran, nothing was pushed.")
        if base is None:
            lines.append(
                f"No recorded results for the base commit, so every failure is listed as failing here"
                f" (the base, `{pr.get('base_ref')}`, was not run)."
            )
        else:
            lines.append(f"Compared with {base['what']} (`{str(pr.get('base_sha'))[:7]}`).")
        if results and results.failing:
            known = set(base["failing"]) if base else set()
            lines += ["", "| test | | message |", "| --- | --- | --- |"]
            for failure in results.failing[:TABLE_ROWS]:
                mark = "failing before too" if failure.name in known else ("**new**" if base else "failing")
                message = _cell(failure.message.splitlines()[0] if failure.message else "")
                lines.append(f"| `{_cell(failure.name)}` | {mark} | {message} |")
            if results.failed > min(len(results.failing), TABLE_ROWS):
                lines.append(f"| … {results.failed - min(len(results.failing), TABLE_ROWS)} more | | |")
        elif results is None and report.plan.results is None:
            lines.append("No per-test results: give `test_results:` (JUnit XML) to see each test here.")
        if results and results.problems:
            lines.append("Not read: " + "; ".join(results.problems[:3]))
        cover = delta_text(coverage, Coverage.from_dict(base.get("coverage")) if base else None)
        if cover:
            lines += ["", f"Line coverage: {cover}."]
        elif report.plan.coverage:
            lines += ["", f"Line coverage: `{report.plan.coverage}` was not written or not usable."]
        if step is not None and not step.green:
            lines += [
                "",
                "<details><summary>The end of the output</summary>",
                "",
                "```",
                step.tail[-3000:],
                "```",
                "",
                "</details>",
            ]
        if report.setup is not None and not report.setup.green:
            lines += [
                "",
                "<details><summary>Setup failed: the end of its output</summary>",
                "",
                "```",
                report.setup.tail[-3000:],
                "```",
                "",
                "</details>",
            ]
        lines += ["", f"Run again: `{phrase} test`."]
        return "\n".join(lines) + "\n\n" + marker(task.id)


# --- what the run said -------------------------------------------------------------------------------


def _results(
    run: RunContext, workspace: Workspace, report: TestReport, step: StepResult | None, tlog: TaskLog
) -> Results | None:
    """The head run's per-test results: as the gate recorded them, else the ``test_results:`` file."""
    recorded = Results.from_dict(getattr(step, "results", None)) if step is not None else None
    if recorded is not None:
        return recorded
    pattern = report.plan.results
    if not pattern:
        return None
    if any(c in pattern for c in "*?["):
        # Listing a glob needs Backend.untracked (the gate's, on main); one named file is read here.
        tlog.write(f"test_results {pattern!r} is a glob: the gate reads those")
        return None
    data = _read_written(
        run, workspace, pattern, RESULTS_LIMIT, tlog, missing="was not written by the test run"
    )
    if data is None:
        return None
    found = parse_junit({pattern: data})
    return None if found.total == 0 and found.problems else found


def _read_written(
    run: RunContext, workspace: Workspace, path: str, limit: int, tlog: TaskLog, *, missing: str = ""
) -> bytes | None:
    """A file the test run wrote (at most ``limit`` bytes); None, said in the task log, when it cannot be
    read, or is absent (said only with ``missing``). A lost workspace is the run's end, not a missing file."""
    try:
        data = run.backend.read_file(workspace, path, limit)
    except WorkspaceLost:
        raise
    except BackendError as exc:
        tlog.write(f"could not read {path}: {exc}")
        return None
    if data is None and missing:
        tlog.write(f"{path} {missing}")
    return data


def _coverage(
    run: RunContext, workspace: Workspace, report: TestReport, step: StepResult | None, tlog: TaskLog
) -> Coverage | None:
    path = report.plan.coverage
    if not path or step is None:
        return None
    data = _read_written(run, workspace, path, COVERAGE_LIMIT, tlog)
    if data is None:
        return None
    try:
        return parse_cobertura(data)
    except CoverageError as exc:
        tlog.write(f"{path}: {exc}")
        return None


def _recorded_base(run: RunContext, task: Task, base_sha: str | None) -> dict[str, Any] | None:
    """Per-test results recorded for ``base_sha`` by an earlier task: cheap, no run made for them."""
    if not base_sha:
        return None
    for other in sorted(run.queue.list(), key=lambda t: t.seq, reverse=True):
        if other.id == task.id or other.repo.lower() != task.repo.lower():
            continue
        tests = other.meta.get("tests") or {}
        if other.kind == NAME and (other.meta.get("pr") or {}).get("head_sha") == base_sha:
            found = other.meta.get("test_run") or {}
            what = f"the test run of #{other.issue_number}, whose head it was"
        elif other.kind != NAME and other.meta.get("base_sha") == base_sha:
            baseline = tests.get("baseline") or {}
            found = {"results": baseline.get("results"), "coverage": baseline.get("coverage")}
            what = f"the baseline run of {other.ref} at the base commit"
        else:
            continue
        results = Results.from_dict(found.get("results"))
        if results is not None and results.complete:
            return {"what": what, "failing": sorted(results.names), "coverage": found.get("coverage")}
    return None


def _verdict(
    report: TestReport, step: StepResult | None, results: Results | None, base: dict[str, Any] | None
) -> tuple[str, str]:
    """green / known / red / not-run, and why (a line)."""
    if step is None:
        return "not-run", "the run did not happen"
    problem = environment_problem(step.exit_code, step.tail)
    setup_red = report.setup is not None and not report.setup.green
    if problem is not None or (setup_red and not step.green):
        return "not-run", problem or f"setup failed (exit {report.setup.exit_code if report.setup else '?'})"
    if step.timed_out:
        return "red", f"timed out after {step.duration_s:.0f}s"
    if step.green and not (results and results.failed):
        return "green", "exit 0"
    complete = results is not None and results.complete and results.failed > 0
    if complete and base is not None and results is not None and not results.names - set(base["failing"]):
        return "known", "every failing test fails on the base too"
    return "red", f"exit {step.exit_code}"


def _status(
    verdict: tuple[str, str], results: Results | None, base: dict[str, Any] | None
) -> tuple[str, str]:
    kind, why = verdict
    counts = results.counts() if results else ""
    if kind == "green":
        return "success", _cut(f"Tests pass: {counts}" if counts else "Tests pass")
    if kind == "known":
        return "success", _cut(f"No new failures: {counts}; all failing on the base too")
    if kind == "not-run":
        return "error", _cut(f"Tests could not run: {why}")
    if results is not None and base is not None and results.complete:
        new = sorted(results.names - set(base["failing"]))
        if not new:
            return "success", _cut(f"No new failures: {counts}; all failing on the base too")
        plural = "s" if len(new) != 1 else ""
        return "failure", _cut(f"{len(new)} new failing test{plural}: " + ", ".join(new))
    return "failure", _cut(f"Tests fail: {counts}" if counts else f"Tests fail ({why})")


def _cut(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= DESCRIPTION_LIMIT else text[: DESCRIPTION_LIMIT - 1].rstrip() + "…"


def _cell(text: str) -> str:
    text = " ".join(text.split()).replace("|", "\\|").replace("`", "'")
    return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 1] + "…"
