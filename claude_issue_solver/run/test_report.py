"""What the test gate records and shows: each step's result, the setup cache's state and key, the
:class:`TestReport` kept in ``task.meta["tests"]``, the checklist, and the fix round's prompt.

:mod:`claude_issue_solver.run.test_gate` runs the steps; everything here is data and its wording, read
back by a resumed task, the pipeline's comments and the pull request's report.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from claude_issue_solver.backends.base import (
    Backend,
    BackendError,
    Workspace,
    WorkspaceLost,
)
from claude_issue_solver.logs import REDACTOR
from claude_issue_solver.run.repo_settings import SETUP_INPUTS, TestPlan
from claude_issue_solver.run.test_results import (
    Judgement,
    Results,
    Run,
    judge,
)

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
