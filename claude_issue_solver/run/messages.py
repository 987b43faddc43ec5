"""Every piece of text the daemon writes to GitHub: issue comments and pull request bodies.

Kept in one module so the voice is consistent and easy to change. Each comment carries a hidden marker
naming its task, which is how the publisher finds its own comment again instead of posting a second.
Every text that names who works names the agent that does (:class:`Agent`): Claude, or the demo's
scripted stand-in, which must never pass for Claude. What a text calls the work and how it tells to ask
again is the task's kind's (:meth:`claude_issue_solver.run.kinds.TaskKind.words`): a follow-up's speak of
"this follow-up" and the trigger phrase, an issue's of "this issue" and its label.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from claude_issue_solver.conventions import LOG_TAIL_LINES, PR_BODY_LIMIT, cut_with_note, format_usd
from claude_issue_solver.github.markers import (  # the GitHub side's, kept importable from here
    MARKER_PREFIX as MARKER_PREFIX,
)
from claude_issue_solver.github.markers import approval_marker as approval_marker
from claude_issue_solver.github.markers import marked_task as marked_task
from claude_issue_solver.github.markers import marker
from claude_issue_solver.github.markers import relabel_comment as relabel_comment
from claude_issue_solver.run.kinds import Words, kind_of
from claude_issue_solver.store.queue import Task

# The model name `claude-issue-solver demo` runs its scripted stand-in under (fake_claude.sh knows it too):
# the daemon's configured model is what it knows before, during and after a run, so it decides here.
STAND_IN_MODEL = "scripted-stand-in"


@dataclass(frozen=True)
class Agent:
    """Who did the work, as the texts name it."""

    name: str  # the subject of a sentence
    credit: str  # the pull request's closing note
    spends_money: bool  # whether the cost it reports is money spent, worth showing
    possessive: str  # inside a sentence: "after Claude's change"


CLAUDE = Agent(
    name="Claude",
    credit="Written by Claude Code via claude-issue-solver",
    spends_money=True,
    possessive="Claude's",
)
STAND_IN = Agent(
    name="A scripted stand-in agent (not Claude)",
    credit=(
        "Written by the demo's scripted stand-in agent (a shell script, not Claude) via claude-issue-solver"
    ),
    spends_money=False,
    possessive="the stand-in agent's",
)


def agent_for(model: str | None) -> Agent:
    """The agent a daemon runs with ``CLAUDE_MODEL=model``: the only place a stand-in is told from Claude."""
    return STAND_IN if model == STAND_IN_MODEL else CLAUDE


@dataclass(frozen=True)
class RunFigures:
    """What the texts say about a finished run: who ran it, and its figures."""

    duration_s: float | None = None
    turns: int | None = None
    cost_usd: float | None = None
    agent: Agent = CLAUDE
    issue_total_usd: float | None = None  # a follow-up's: what every run of the issue cost together

    @classmethod
    def of(cls, task: Task, duration_s: float | None = None, agent: Agent = CLAUDE) -> RunFigures:
        cost = task.cost_usd if agent.spends_money else None  # a stand-in's "$0.00" would be made up
        return cls(duration_s=duration_s, turns=task.num_turns, cost_usd=cost, agent=agent)

    def line(self) -> str:
        parts = []
        if self.duration_s is not None:
            minutes, seconds = divmod(int(self.duration_s), 60)
            parts.append(f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s")
        if self.turns is not None:
            parts.append(f"{self.turns} turns")
        if self.cost_usd is not None:
            parts.append(format_usd(self.cost_usd))
        if self.issue_total_usd is not None:
            parts.append(f"{format_usd(self.issue_total_usd)} for the issue so far")
        return " · ".join(parts)


def _words(task: Task, label: str = "Claude", phrase: str = "@claude") -> Words:
    """What the task's kind calls its work and how to ask again (an issue's label; a follow-up's phrase)."""
    return kind_of(task).words(task, label, phrase)


def _fence(text: str) -> str:
    """A code fence longer than any run of backticks inside ``text``."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _collapsed(summary: str, text: str) -> str:
    fence = _fence(text)
    return f"<details><summary>{summary}</summary>\n\n{fence}\n{text.rstrip()}\n{fence}\n</details>"


WORK_STEPS = ("workspace ready", "agent running", "changes committed and pushed", "pull request opened")


def working_comment(task: Task, done: int, *, turns: int | None = None, agent: Agent = CLAUDE) -> str:
    """The progress checklist: the first ``done`` steps are ticked."""
    lines = [f"🤖 {agent.name} is working on this issue (task `{task.id}`).", ""]
    for n, step in enumerate(WORK_STEPS):
        if step == "agent running" and turns:
            step = f"agent running ({turns} turn{'s' if turns != 1 else ''} so far)"
        lines.append(f"- [{'x' if n < done else ' '}] {step}")
    return "\n".join(lines) + "\n\n" + marker(task.id)


def queued_comment(task: Task, *, agent: Agent = CLAUDE) -> str:
    return f"🤖 Queued: {agent.name} will pick this issue up shortly (task `{task.id}`).\n\n{marker(task.id)}"


def _red_pr_line(draft: bool) -> str:
    state = "so the pull request is a draft: its" if draft else "see the pull request's"
    return f"⚠️ The repository's tests do not pass with this change, {state} Tests section shows the failure."


def pr_opened_comment(
    task: Task,
    pr_url: str,
    figures: RunFigures,
    *,
    updated: bool = False,
    red: bool = False,
    draft: bool = True,
) -> str:
    """``red``: the tests do not pass; ``draft``: whether the PR is a draft now (turning it into one
    can fail)."""
    verb = "updated" if updated else "opened"
    lines = [f"✅ {figures.agent.name} {verb} a pull request for this issue: {pr_url}"]
    if red:
        lines += ["", _red_pr_line(draft)]
    if figures.line():
        lines += ["", f"Run: {figures.line()} (task `{task.id}`)"]
    return "\n".join(lines) + "\n\n" + marker(task.id)


def no_changes_comment(task: Task, answer: str | None, figures: RunFigures) -> str:
    return _answer_comment(task, "looked into this issue and made no changes to the code", answer, figures)


def _answer_comment(task: Task, did: str, answer: str | None, figures: RunFigures) -> str:
    """💬 "<agent> <did>. Its answer:", the answer quoted, the run's figures."""
    who = figures.agent.name
    text = (answer or "").strip() or f"({who} gave no answer.)"
    quoted = "\n".join("> " + line for line in text.splitlines())
    lines = [f"💬 {who} {did}. Its answer:", "", quoted]
    if figures.line():
        lines += ["", f"Run: {figures.line()} (task `{task.id}`)"]
    return "\n".join(lines) + "\n\n" + marker(task.id)


def failed_comment(
    task: Task, reason: str, label: str, log_tail: str = "", *, phrase: str = "@claude", agent: Agent = CLAUDE
) -> str:
    words = _words(task, label, phrase)
    lines = [f"❌ {agent.name} could not finish {words.finish}: {reason.rstrip('.')}.", ""]
    lines.append(words.retry)
    if log_tail.strip():
        tail = "\n".join(log_tail.rstrip().splitlines()[-LOG_TAIL_LINES:])
        lines += ["", _collapsed("Last lines of the log", tail)]
    return "\n".join(lines) + "\n\n" + marker(task.id)


def settings_failed_comment(
    task: Task, reason: str, label: str, *, phrase: str = "@claude", agent: Agent = CLAUDE
) -> str:
    """A repository's settings file that cannot be used: nothing ran, and nothing of the agent's is at
    fault -- the file on the default branch must change (``reason`` names the file and the problem)."""
    words = _words(task, label, phrase)
    lines = [
        f"⚠️ {agent.name} did not start on {words.subject}: the repository's settings cannot be used. "
        f"{reason.rstrip('.')}.",
        "",
        "Fix the file on the default branch. " + words.retry,
    ]
    return "\n".join(lines) + "\n\n" + marker(task.id)


def branch_moved_note(branch: str, new_commits: int, authors: Sequence[str], agent: Agent) -> str:
    """The line a publish adds when the branch moved on GitHub while the agent worked (#11)."""
    by = f" by {', '.join(authors)}" if authors else ""
    return (
        f"↪️ The branch `{branch}` had moved while {agent.name} worked ({new_commits} new commit(s){by}); "
        f"{agent.name}'s commit(s) were put on top of them, nothing was forced."
    )


def branch_conflict_reason(branch: str, paths: Sequence[str], side: str, agent: Agent, phrase: str) -> str:
    """Why a run whose branch moved could not publish: the changes conflict; its commits went aside."""
    shown = ", ".join(f"`{p}`" for p in paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
    return (
        f"the branch {branch} moved while {agent.name} worked and its changes conflict in "
        f"{shown or 'some files'}; "
        f"{agent.name}'s commits are on {side}; ask again ({phrase}) to build on the new head"
    )


def with_note(task: Task, body: str, note: str) -> str:
    """``body`` (a comment ending with the task's marker) with ``note`` as its last paragraph, if any."""
    if not note:
        return body
    end = "\n\n" + marker(task.id)
    return (body.removesuffix(end) if body.endswith(end) else body) + "\n\n" + note + end


def approval_note(approved: dict, label: str, agent: Agent = CLAUDE) -> str:
    """The issue's text changed after a writer approved it: the run works on the approved version."""
    when = str(approved.get("at") or "").replace("T", " ").replace("Z", " UTC")
    who = f"by @{approved['by']}" if approved.get("by") else "queued by an operator on the host"
    return (
        f"⚠️ This issue's title or description was changed after it was approved ({who}, {when}). "
        "Changes by people without write access to the repository are never given to "
        f"{agent.name}, so {agent.name} works on the approved version. To have the current text worked "
        f"on, a person with write access can remove and re-apply the `{label}` label."
    )


def waiting_comment(task: Task, why: str, until: str, *, known_reset: bool) -> str:
    """A run met a Claude limit: no failure, the task waits (``until``: "13:00 UTC (in 42 min)")."""
    when = (
        f"when the limit resets, at {until}"
        if known_reset
        else f"at {until} (Claude did not say when the limit resets; the queue checks then)"
    )
    return (
        f"⏳ {why}, so the work on {_words(task).subject} is paused (task `{task.id}`). Nothing failed: "
        f"the task is back in the queue and starts again {when}. This run does not count as an attempt.\n\n"
        f"{marker(task.id)}"
    )


def budget_stopped_reason(spent: float | None, cap: float | None) -> str:
    """Why a run that stopped at ``--max-budget-usd`` failed, with what it spent."""
    shown = "an unknown amount" if spent is None else f"{format_usd(spent)}"
    limit = "" if cap is None else f" of {format_usd(cap)} per run (CLAUDE_MAX_BUDGET_USD)"
    return f"Claude Code stopped at its spending limit{limit} after spending {shown}"


def cancelled_comment(task: Task, label: str = "Claude", *, phrase: str = "@claude") -> str:
    words = _words(task, label, phrase)
    return (
        f"⏹️ The work on {words.subject} was cancelled by an operator (task `{task.id}`).\n\n"
        f"{words.retry}\n\n{marker(task.id)}"
    )


def pr_fallback_comment(
    task: Task,
    branch: str,
    diffstat: str,
    reason: str,
    label: str,
    *,
    phrase: str = "@claude",
    agent: Agent = CLAUDE,
) -> str:
    lines = [
        f"⚠️ {agent.name} pushed the changes to branch `{branch}`, but the pull request could not be "
        f"opened: {reason.rstrip('.')}.",
        "",
        "Open one from that branch by hand, or fix the cause and retry. " + _words(task, label, phrase).retry,
    ]
    if diffstat.strip():
        lines += ["", _collapsed("Changed files", diffstat)]
    return "\n".join(lines) + "\n\n" + marker(task.id)


def pr_body(
    task: Task, description: str, figures: RunFigures, tests: str = "", left_out: Sequence[str] = ()
) -> str:
    """The agent's description, what was verified, what was left out, the run's figures, and the
    closing keyword."""
    parts = [description.strip() or f"_{figures.agent.name} left no description._"]
    if tests:
        parts.append(tests)
    if left_out:
        parts.append(left_out_note(left_out))
    parts.append("---")
    note = f"{figures.agent.credit} (task `{task.id}`)."
    if figures.line():
        note += f" Run: {figures.line()}."
    parts.append(note)
    parts.append(f"Fixes #{task.issue_number}")
    body = "\n\n".join(parts) + "\n"
    if len(body) > PR_BODY_LIMIT:  # GitHub refuses a longer body: the agent's description gives way
        room = max(0, len(parts[0]) - (len(body) - PR_BODY_LIMIT) - 200)
        parts[0] = cut_with_note(parts[0], room, "The description")
        body = "\n\n".join(parts) + "\n"
    return body


LEFT_OUT_SHOWN = 5


def left_out_note(left_out: Sequence[str]) -> str:
    """One paragraph naming what is in the tree but was not committed (``Changes.left_out`` entries,
    "path/ (why)"); "" when nothing was."""
    if not left_out:
        return ""
    shown = []
    for entry in left_out[:LEFT_OUT_SHOWN]:
        path, sep, why = entry.rpartition(" (")
        shown.append(f"{_inline_code(path)} ({why}" if sep else _inline_code(entry))
    more = len(left_out) - LEFT_OUT_SHOWN
    listed = ", ".join(shown) + (f" and {more} more" if more > 0 else "")
    return (
        f"⚠️ Not committed: {listed}. A git repository inside the tree would be committed as a "
        "submodule link, and submodules are never changed by a run."
    )


def _inline_code(text: str) -> str:
    """``text`` as inline code whatever it holds (an agent names its directories)."""
    text = re.sub(r"[\x00-\x1f\x7f]", "?", text)
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * (longest + 1)
    return f"{ticks} {text} {ticks}" if longest else f"`{text}`"


def commit_message(title: str, task: Task) -> str:
    return f"{title}\n\nFixes #{task.issue_number}\n\nTask: {task.id}\n"


def default_pr_title(task: Task) -> str:
    return f"Fix #{task.issue_number}: {task.title}"[:256]


# --- verified pull requests (the repository's tests, issue #12) ---------------------------------------

RED_TITLE_PREFIX = "[tests failing] "


def checklist_comment(
    task: Task, items: list[tuple[bool, str]], *, turns: int | None = None, agent: Agent = CLAUDE
) -> str:
    """The progress checklist when the repository's tests run too: setup / baseline / agent / rounds.

    A follow-up's says whose request it works on, as :func:`followup_working_comment` does.
    """
    lines = [f"🤖 {agent.name} is working on {_words(task).working} (task `{task.id}`).", ""]
    for done, label in items:
        if label == "agent running" and turns:
            label = f"agent running ({turns} turn{'s' if turns != 1 else ''} so far)"
        lines.append(f"- [{'x' if done else ' '}] {label}")
    return "\n".join(lines) + "\n\n" + marker(task.id)


def _code(text: str) -> str:
    """Inline code that survives backticks in ``text`` (a shell command may hold them)."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * (longest + 1)
    pad = " " if longest else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _step(step: dict | None) -> str:
    if step is None:
        return "not run"
    if step.get("timed_out"):
        state = f"🔴 timed out after {_duration(step.get('duration_s') or 0)} (killed)"
    elif step.get("exit_code") == 0:
        state = f"🟢 green ({_duration(step.get('duration_s') or 0)})"
    else:
        state = f"🔴 red: exit {step.get('exit_code')} ({_duration(step.get('duration_s') or 0)})"
    return state


def tests_report(report: dict, agent: Agent = CLAUDE) -> str:
    """The PR's (or the comment's) "what was verified" section, from ``task.meta["tests"]``."""
    plan = report.get("plan") or {}
    made = made_note(report)
    if not plan.get("test"):
        return (
            "### Tests\n\nNot verified: no test command was found (add `test:` to "
            "`.github/claude-issue-solver.yml`, or set `TEST_COMMAND`)."
        ) + (f"\n\n{made}" if made else "")
    lines = ["### Tests", "", f"- Command: {_code(plan['test'])} ({plan.get('source', '')})"]
    if plan.get("setup"):
        setup, cache = report.get("setup") or {}, report.get("cache") or {}
        if setup.get("cached"):
            done = f"🟢 restored from the cache of {setup['cached']}, not run"
        else:
            done = _step(report.get("setup")) + (
                f"; {cache['detail']}" if cache.get("state") == "off" else ""
            )
        lines.append(f"- Setup: {_code(plan['setup'])} — {done}")
    lines += ["", "| run | result |", "| --- | --- |"]
    baseline = report.get("baseline")
    note = ""
    if baseline is not None and not (baseline.get("exit_code") == 0 and not baseline.get("timed_out")):
        note = " — already red before the change"
    lines.append(f"| before the change (baseline) | {_step(baseline)}{_counts(baseline)}{note} |")
    rounds = report.get("rounds") or []
    for n, step in enumerate(rounds, start=1):
        after = f"after {agent.possessive} change" if n == 1 else f"after fix round {n - 1}"
        lines.append(f"| round {n}: {after} | {_step(step)}{_counts(step)} |")
    judgement = report.get("judgement") or {}
    lines += _verdict_lines(report, judgement, agent)
    if report.get("note"):
        lines += ["", f"Stopped early: {report['note']}."]
    setup = report.get("setup") or {}
    setup_red = setup and not setup.get("cached") and setup.get("exit_code") != 0
    if setup_red and (setup.get("tail") or "").strip():  # a red setup: its own output, not only the tests'
        lines += ["", _collapsed("Setup's output (setup, red)", setup["tail"])]
    last = rounds[-1] if rounds else baseline
    if last is not None and (last.get("tail") or "").strip():
        lines += ["", _collapsed(f"Last output ({last.get('name')})", last["tail"])]
    if made:
        lines += ["", made]
    return "\n".join(lines)


MADE_SHOWN = 8  # paths named in the PR


def made_note(report: dict) -> str:
    """The line naming what setup and the test runs made in the tree that git would have committed
    (``made_shown``: not ignored by the repository); "" when there is none. None of it is committed."""
    shown = report.get("made_shown") or []
    if not shown:
        return ""
    names = ", ".join(_inline_code(str(p)) for p in shown[:MADE_SHOWN])
    more = f" and {len(shown) - MADE_SHOWN} more" if len(shown) > MADE_SHOWN else ""
    return (
        f"Not committed: {names}{more} — made in the tree by setup or the test runs, not by the change "
        "(list them in `.gitignore` to keep them out of sight)."
    )


def _counts(step: dict | None) -> str:
    """ ", 38 passed, 1 failed" for a run with per-test results, else ""."""
    results = (step or {}).get("results")
    if not results:
        return ""
    text = f" · {results.get('passed', 0)} passed, {results.get('failed', 0)} failed"
    return text + (f", {results['skipped']} skipped" if results.get("skipped") else "")


FAILURES_SHOWN = 15  # failing tests named in a PR's report, per kind


def _verdict_lines(report: dict, judgement: dict, agent: Agent) -> list[str]:
    """What the runs mean against the baseline: new failures, those failing before, or why the tests
    could not run."""
    verdict = report.get("verdict")
    why = judgement.get("why") or ""
    lines: list[str] = []
    if verdict == "not-run":
        lines += [
            "",
            f"⚠️ **The tests could not run here**: {why}. This says nothing about {agent.possessive} "
            "change, and no fix round was asked for. Make the test command work in the agent's image "
            "(`setup:` in `.github/claude-issue-solver.yml`, or `DOCKER_BASE_IMAGE`); "
            "`claude-issue-solver doctor` checks it.",
        ]
    elif verdict == "unchanged":
        lines += [
            "",
            "The tests were red before the change and are red after it; without per-test results "
            "(`test_results:` in `.github/claude-issue-solver.yml`) the runs cannot be compared, so no fix "
            "round was asked for.",
        ]
    elif verdict == "known":
        lines += [
            "",
            f"No new failures: every failing test was already failing before {agent.possessive} change.",
        ]
    new, known = judgement.get("new") or [], judgement.get("known") or []
    if new:
        lines += ["", f"**Failing because of the change** ({len(new)}):", ""]
        lines += [_failure_line(f) for f in new[:FAILURES_SHOWN]]
        if len(new) > FAILURES_SHOWN:
            lines.append(f"- … and {len(new) - FAILURES_SHOWN} more")
    if known:
        lines += ["", f"**Failing before the change too** ({len(known)}, not the change's doing):", ""]
        lines += [f"- {_code(str(f.get('name', '')))}" for f in known[:FAILURES_SHOWN]]
        if len(known) > FAILURES_SHOWN:
            lines.append(f"- … and {len(known) - FAILURES_SHOWN} more")
    return lines


def _failure_line(failure: dict) -> str:
    message = " ".join(str(failure.get("message") or "").split())
    if len(message) > 200:
        message = message[:199] + "…"
    return f"- {_code(str(failure.get('name', '')))}" + (f": {_code(message)}" if message else "")


def red_pr_title(title: str) -> str:
    return (RED_TITLE_PREFIX + title)[:256]


def red_pr_note(report: dict) -> str:
    fixes = report.get("fixes") or 0
    return (
        f"⚠️ **The repository's tests do not pass** with this change (after {fixes} fix round"
        f"{'s' if fixes != 1 else ''}). This is a draft: review the failure below before relying on it."
    )


def red_tests_comment(task: Task, branch: str, report: dict, figures: RunFigures) -> str:
    """ON_RED_TESTS=comment: the branch is pushed, no pull request, and this says why."""
    lines = [
        f"⚠️ {figures.agent.name} pushed the changes to branch `{branch}`, but the repository's tests do "
        "not pass, so no pull request was opened (`ON_RED_TESTS=comment`).",
        "",
        tests_report(report, figures.agent),
    ]
    if figures.line():
        lines += ["", f"Run: {figures.line()} (task `{task.id}`)"]
    return "\n".join(lines) + "\n\n" + marker(task.id)


# --- follow-ups (#11): the answer where the request was made, and the PR's run history --------------


def asked_by(task: Task) -> str:
    authors = sorted({t.get("author", "") for t in task.meta.get("triggers", []) if t.get("author")})
    return ", ".join(f"@{a}" for a in authors) or "a maintainer"


FOLLOWUP_STEPS = ("workspace ready on the branch", "agent running", "changes pushed")


def followup_commit_subject(task: Task, phrase: str) -> str:
    """A follow-up's commit says what was asked (the PR's title is the first run's): "Follow-up for
    @alice: also add a test …", the request's first line without the trigger phrase, ≤ 72 characters."""
    triggers = task.meta.get("triggers") or [{}]
    first = triggers[0]
    lines = [line.strip() for line in str(first.get("body") or "").splitlines() if line.strip()]
    asked = re.sub(re.escape(phrase), "", lines[0], flags=re.IGNORECASE).strip(" ,:") if lines else ""
    subject = f"Follow-up for @{first.get('author', '?')}" + (f": {asked}" if asked else "")
    if len(triggers) > 1:
        subject = f"Follow-up for {len(triggers)} requests (@{first.get('author', '?')}, …)"
    return subject if len(subject) <= 72 else subject[:71].rstrip() + "…"


def followup_working_comment(
    task: Task, done: int, *, turns: int | None = None, agent: Agent = CLAUDE
) -> str:
    lines = [f"🤖 {agent.name} is working on the request of {asked_by(task)} (task `{task.id}`).", ""]
    for n, step in enumerate(FOLLOWUP_STEPS):
        if step == "agent running" and turns:
            step = f"agent running ({turns} turn{'s' if turns != 1 else ''} so far)"
        lines.append(f"- [{'x' if n < done else ' '}] {step}")
    return "\n".join(lines) + "\n\n" + marker(task.id)


def followup_pushed_comment(
    task: Task,
    branch: str,
    sha: str,
    pr_url: str | None,
    figures: RunFigures,
    *,
    pr_closed: bool = False,
    red: bool = False,
    draft: bool = True,
) -> str:
    where = f"to `{branch}`"
    if pr_url and not pr_closed:
        where += f", the branch of {pr_url}"
    lines = [f"✅ {figures.agent.name} pushed `{sha[:12]}` {where}, for {asked_by(task)}."]
    if pr_closed and pr_url:
        lines += [
            "",
            f"The pull request {pr_url} is closed, so none was opened or reopened: reopen it to review "
            "the new commits, or open one from the branch.",
        ]
    elif red and pr_url:
        lines += ["", _red_pr_line(draft)]
    if task.result and task.result.strip():
        lines += ["", "\n".join("> " + line for line in task.result.strip().splitlines())]
    if figures.line():
        lines += ["", f"Run: {figures.line()} (task `{task.id}`)"]
    return "\n".join(lines) + "\n\n" + marker(task.id)


def followup_no_changes_comment(task: Task, answer: str | None, figures: RunFigures) -> str:
    return _answer_comment(task, f"made no change to the code for {asked_by(task)}", answer, figures)


def followup_closed_comment(task: Task, *, phrase: str = "@claude") -> str:
    """A request the issue was closed after (while it waited): not run, and how to ask again."""
    return (
        f"⏹️ This issue was closed after {asked_by(task)} asked, so the request was not run "
        f"(task `{task.id}`). To have it done, reopen the issue, or write a new comment that mentions "
        f"`{phrase}`: a request made on a closed issue runs.\n\n{marker(task.id)}"
    )


@dataclass(frozen=True)
class RunRow:
    """One run of an issue, as the PR's run history lists it."""

    trigger: str  # "label" or "@alice on the PR (link)"
    figures: RunFigures
    task_id: str


def run_history(rows: list[RunRow]) -> str:
    """The PR description's short run history, newest last."""
    if not rows:
        return ""
    lines = ["<details><summary>Runs</summary>", "", "| run | trigger | figures | task |"]
    lines.append("|---|---|---|---|")
    for n, row in enumerate(rows, 1):
        lines.append(f"| {n} | {row.trigger} | {row.figures.line() or '-'} | `{row.task_id}` |")
    lines += ["", "</details>"]
    return "\n".join(lines)
