"""Per-test results of a test run, and the verdict that compares them with the baseline.

Two sources, both what CI systems already read:

- **JUnit XML** files the test command writes (``test_results:`` in the repository's settings file or
  ``TEST_RESULTS``, a glob; for the detected pytest the gate adds ``--junitxml`` itself). Parsed with
  ``junitparser`` (the maintained reader of the format GitHub's test reporters, GitLab and CircleCI
  take, with the xunit2 and pytest variants) over ``defusedxml`` (the standard library's parser with
  every DTD, entity and external reference refused): the files were written in a tree the agent and
  the repository's own code wrote, so they are untrusted input. They are read through
  ``Backend.read_file`` -- never following a link, at most :data:`FILE_LIMIT` bytes each and
  :data:`MAX_FILES` files a run.
- **``go test -json``** output (test2json events on stdout), read as it is when the command asks for it.

A :class:`Results` keeps counts and the failing tests' names (:data:`MAX_NAMES` at most) with the start
of their messages (:data:`MAX_MESSAGES`), so the state file stays small for a suite of thousands.

:func:`judge` is the verdict, the same for every backend: ``green``, ``known`` (red, but only with tests
that already failed before the change: a normal PR whose report lists them), ``red`` (new failures, or
without per-test results a red run whose baseline was green), ``unchanged`` (no per-test results, red
before and after the change), ``not-run`` (the tests could not run here: a red setup, exit 126/127,
"command not found", no test ran before or after). Fix rounds are asked only for ``red``.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "FILE_LIMIT",
    "MAX_FILES",
    "Failure",
    "Judgement",
    "Results",
    "Run",
    "environment_problem",
    "judge",
    "merge",
    "parse_go_json",
    "parse_junit",
    "wants_go_json",
]

FILE_LIMIT = 16 * 1024 * 1024  # bytes of one JUnit file read (a larger one is cut: a parse error)
MAX_FILES = 50  # JUnit files read per run
MAX_NAMES = 300  # failing tests named per run (the rest counted)
MAX_MESSAGES = 20  # failing tests whose message is kept
MESSAGE_LIMIT = 600  # characters of one kept message

GREEN, KNOWN, RED, UNCHANGED, NOT_RUN = "green", "known", "red", "unchanged", "not-run"

# What a shell prints when the program is missing (dash, bash, busybox, exec).
_NOT_FOUND = re.compile(
    r"(?im)[\w./+-]+: (?:command )?not found\s*$|command not found|no such file or directory"
)
# What Python prints when the test runner itself is not installed (exit 1, not 127).
_NO_RUNNER = re.compile(r"(?m)No module named ['\"]?(?:pytest|nose2?|tox)\b['\"]?")


@dataclass(frozen=True)
class Failure:
    name: str
    message: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "message": self.message} if self.message else {"name": self.name}


@dataclass(frozen=True)
class Results:
    """One run's tests: counts, the failing ones (named up to MAX_NAMES), where they were read."""

    __test__ = False

    passed: int = 0
    failed: int = 0  # failures and errors
    skipped: int = 0
    failing: tuple[Failure, ...] = ()
    source: str = ""  # e.g. "JUnit XML: .claude-issue-solver-results/test-1.xml"
    problems: tuple[str, ...] = ()  # files that could not be read or parsed

    @property
    def total(self) -> int:
        return self.passed + self.failed + self.skipped

    @property
    def names(self) -> frozenset[str]:
        return frozenset(f.name for f in self.failing)

    @property
    def complete(self) -> bool:
        """Every failing test is named (none was cut at MAX_NAMES)."""
        return len(self.failing) >= self.failed

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "failed": self.failed,
            "skipped": self.skipped,
            "failing": [f.to_dict() for f in self.failing],
            "source": self.source,
            "problems": list(self.problems),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Results | None:
        if not isinstance(data, Mapping):
            return None
        return cls(
            int(data.get("passed") or 0),
            int(data.get("failed") or 0),
            int(data.get("skipped") or 0),
            tuple(
                Failure(str(f.get("name", "")), str(f.get("message") or ""))
                for f in data.get("failing") or []
                if isinstance(f, Mapping)
            ),
            str(data.get("source") or ""),
            tuple(str(p) for p in data.get("problems") or []),
        )

    def counts(self) -> str:
        parts = [f"{self.passed} passed", f"{self.failed} failed"]
        if self.skipped:
            parts.append(f"{self.skipped} skipped")
        return ", ".join(parts)


def _bounded(failing: Iterable[Failure]) -> tuple[Failure, ...]:
    kept: list[Failure] = []
    for n, failure in enumerate(dict.fromkeys(failing)):
        if n >= MAX_NAMES:
            break
        message = failure.message if n < MAX_MESSAGES else ""
        kept.append(Failure(failure.name[:300], _clip(message)))
    return tuple(kept)


def _clip(text: str) -> str:
    text = text.strip()
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 1].rstrip() + "…"


# --- JUnit XML -------------------------------------------------------------------------------------------


def parse_junit(files: Mapping[str, bytes]) -> Results:
    """The tests of the JUnit XML ``files`` (path -> content, already read with a size cap).

    A file that is not JUnit XML, or that declares a DTD or an entity (defusedxml refuses those), is
    named in ``problems`` and skipped; the others count.
    """
    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import parse as safe_parse
    from junitparser import Error, JUnitXml, Skipped
    from junitparser import Failure as JFailure
    from junitparser.junitparser import JUnitXmlError

    passed = failed = skipped = 0
    failing: list[Failure] = []
    problems: list[str] = []
    read: list[str] = []
    for path, data in sorted(files.items())[:MAX_FILES]:
        try:
            xml = JUnitXml.fromfile(io.BytesIO(data), parse_func=safe_parse)
            cases = [case for suite in xml for case in suite]
        except (DefusedXmlException, JUnitXmlError, SyntaxError, ValueError, TypeError) as exc:
            problems.append(f"{path}: not usable JUnit XML ({type(exc).__name__}: {str(exc)[:200]})")
            continue
        read.append(path)
        for case in cases:
            outcomes = list(case.result)
            bad = [r for r in outcomes if isinstance(r, JFailure | Error)]
            if bad:
                failed += 1
                first = bad[0]
                message = first.message or (first.text or "")
                if first.text and first.message and first.text.strip() != first.message.strip():
                    message = f"{first.message}\n{first.text}"
                failing.append(Failure(_case_name(case), message))
            elif any(isinstance(r, Skipped) for r in outcomes):
                skipped += 1
            else:
                passed += 1
    source = "JUnit XML: " + ", ".join(read[:5]) + (f" and {len(read) - 5} more" if len(read) > 5 else "")
    return Results(passed, failed, skipped, _bounded(failing), source if read else "", tuple(problems))


def _case_name(case: Any) -> str:
    classname, name = (case.classname or "").strip(), (case.name or "").strip()
    return f"{classname}::{name}" if classname else name or "(unnamed test)"


# --- go test -json -----------------------------------------------------------------------------------------


def wants_go_json(command: str) -> bool:
    """Whether the command prints test2json events (``go test -json``, ``gotestsum --jsonfile`` aside)."""
    return bool(re.search(r"\bgo\s+test\b[^|;&]*\s-json\b", command))


def parse_go_json(stdout: str) -> Results | None:
    """The tests of ``go test -json`` output; None when it holds no test event (not such output)."""
    final: dict[str, str] = {}
    output: dict[str, list[str]] = {}
    seen = False
    for line in stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict) or not event.get("Test"):
            continue
        seen = True
        name = f"{event.get('Package', '')}::{event['Test']}"
        action = event.get("Action")
        if action == "output":
            lines = output.setdefault(name, [])
            if len(lines) < 40:
                lines.append(str(event.get("Output") or ""))
        elif action in ("pass", "fail", "skip"):
            final[name] = action
    if not seen:
        return None
    # A subtest's parent fails with it: count the leaves only when a parent has subtests.
    parents = {n.rsplit("/", 1)[0] for n in final if "/" in n.partition("::")[2]}
    leaves = {n: a for n, a in final.items() if n not in parents}
    failing = [
        Failure(n, "".join(output.get(n, [])).strip()) for n, a in sorted(leaves.items()) if a == "fail"
    ]
    return Results(
        passed=sum(a == "pass" for a in leaves.values()),
        failed=len(failing),
        skipped=sum(a == "skip" for a in leaves.values()),
        failing=_bounded(failing),
        source="go test -json",
    )


def merge(results: Iterable[Results | None]) -> Results | None:
    found = [r for r in results if r is not None]
    if not found:
        return None
    return Results(
        sum(r.passed for r in found),
        sum(r.failed for r in found),
        sum(r.skipped for r in found),
        _bounded(f for r in found for f in r.failing),
        "; ".join(r.source for r in found if r.source),
        tuple(p for r in found for p in r.problems),
    )


# --- the verdict --------------------------------------------------------------------------------


def environment_problem(exit_code: int | None, tail: str) -> str | None:
    """Why a run says the tests could not run at all here (a missing program or runner), else None.

    Exit 126/127 is the shell's "cannot execute" / "not found"; a Python without the runner exits 1
    with "No module named pytest". A failing test's own message never counts (exit 1 and no such line).
    """
    if exit_code in (126, 127):
        found = _NOT_FOUND.search(tail)
        what = found.group(0).strip() if found else "the command could not be run"
        return f"exit {exit_code}: {what}"
    if exit_code not in (0, None):
        found = _NO_RUNNER.search(tail)
        if found:
            return f"exit {exit_code}: {found.group(0).strip()}"
    return None


@dataclass(frozen=True)
class Judgement:
    """What a test run after the change means, against the baseline."""

    verdict: str  # green | known | red | unchanged | not-run
    why: str = ""  # one line: the reason (the environment's problem, the new failures' count)
    new: tuple[Failure, ...] = ()  # red after the change, not in the baseline
    known: tuple[Failure, ...] = ()  # red after the change and in the baseline too
    results: Results | None = None

    @property
    def wants_fix(self) -> bool:
        return self.verdict == RED

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "why": self.why,
            "new": [f.to_dict() for f in self.new],
            "known": [f.to_dict() for f in self.known],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Judgement | None:
        if not isinstance(data, Mapping) or not data.get("verdict"):
            return None

        def failures(key: str) -> tuple[Failure, ...]:
            return tuple(
                Failure(str(f.get("name", "")), str(f.get("message") or ""))
                for f in data.get(key) or []
                if isinstance(f, Mapping)
            )

        return cls(str(data["verdict"]), str(data.get("why") or ""), failures("new"), failures("known"))


@dataclass(frozen=True)
class Run:
    """What :func:`judge` needs of one recorded run."""

    exit_code: int | None
    timed_out: bool
    tail: str
    results: Results | None = field(default=None)

    @property
    def green(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


def judge(after: Run, baseline: Run | None, *, setup_green: bool | None = None) -> Judgement:
    """The verdict on ``after`` (the latest run after the change) given the ``baseline`` and setup."""
    results = after.results
    if after.green and (results is None or results.failed == 0):
        return Judgement(GREEN, results=results)
    if not after.timed_out:
        problem = environment_problem(after.exit_code, after.tail)
        if problem:
            return Judgement(NOT_RUN, f"the test command could not run here ({problem})", results=results)
        if setup_green is False:
            return Judgement(NOT_RUN, "setup failed, so the tests could not run as the repository expects")
        nothing_ran = results is not None and results.total == 0
        base_nothing = baseline is not None and baseline.results is not None and baseline.results.total == 0
        if nothing_ran and base_nothing and baseline is not None and not baseline.green:
            return Judgement(NOT_RUN, "no test ran, before or after the change", results=results)
    if results is not None and baseline is not None and baseline.results is not None and not after.timed_out:
        before = baseline.results
        new = tuple(f for f in results.failing if f.name not in before.names)
        known = tuple(f for f in results.failing if f.name in before.names)
        cut = not results.complete  # failing tests beyond MAX_NAMES: unnamed, so not known to be old
        if results.failed and not new and not cut:
            return Judgement(
                KNOWN,
                f"no new failures: {len(known)} test(s) failing before the change too",
                known=known,
                results=results,
            )
        if new or cut or results.failed:
            count = len(new) if not cut else results.failed - len(known)
            return Judgement(RED, f"{count} new failing test(s)", new=new, known=known, results=results)
        # Red with no failing test recorded (a crash after the tests, a collection error outside them).
        return Judgement(RED, f"exit {after.exit_code} with no failing test reported", results=results)
    if baseline is not None and not baseline.green and not after.timed_out and not after.green:
        return Judgement(
            UNCHANGED,
            "red before the change too; without per-test results the runs cannot be compared",
            results=results,
        )
    why = "timed out" if after.timed_out else f"exit {after.exit_code}"
    if results is not None and results.failed:
        why = f"{results.failed} failing test(s)"
        return Judgement(RED, why, new=results.failing, results=results)
    return Judgement(RED, why, results=results)
