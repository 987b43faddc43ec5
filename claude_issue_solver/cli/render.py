"""What ``status`` and ``queue`` show: one payload (also the ``--json`` output), two renderings.

On a terminal the payload is drawn as rich tables; otherwise as plain aligned text, so that pipes,
``grep`` and log collectors get something readable without box-drawing characters.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Sequence
from typing import Any, TextIO

from claude_issue_solver.config import Config, settings_source
from claude_issue_solver.conventions import format_usd
from claude_issue_solver.daemon.pidfile import DaemonStatus
from claude_issue_solver.github.poll_schedule import status_line
from claude_issue_solver.github.request_budget import WORK_WAIT
from claude_issue_solver.run.kinds import kind_of
from claude_issue_solver.store import admission, budget
from claude_issue_solver.store.fairness import FairnessLimits, next_start_at, prune_starts
from claude_issue_solver.store.holds import format_wait
from claude_issue_solver.store.queue import Task, TaskState


def _iso(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _elapsed(task: Task, now: float) -> float | None:
    if task.started_at is None:
        return None
    return (task.finished_at or now) - task.started_at


def trigger_of(task: Task) -> str:
    """What started a task, as its kind tells: the label (and who applied it), the follow-up's comment
    link(s)."""
    return kind_of(task).trigger(task)


def task_row(task: Task, now: float) -> dict[str, Any]:
    data = task.to_dict()
    data["ref"] = task.ref
    data["trigger"] = trigger_of(task)
    data["elapsed_seconds"] = _elapsed(task, now)
    for key in ("created_at", "started_at", "finished_at"):
        data[key] = _iso(data[key])
    return data


def status_payload(
    config: Config, daemon: DaemonStatus, state: dict[str, Any], tasks: Sequence[Task], now: float
) -> dict[str, Any]:
    counts = {s.value: 0 for s in TaskState}
    for task in tasks:
        counts[task.state.value] += 1
    repos = state.get("watcher", {}).get("repos", {})
    watched = watched_repos(config, state)
    return {
        "daemon": {
            "running": daemon.running,
            "pid": daemon.pid if daemon.running else None,
            "stale_pid": daemon.pid if daemon.stale else None,
        },
        "health": health_payload(daemon, repos, watched, now),
        "app_wide": config.app_wide,
        "paused": bool(state.get("paused")),
        "paused_at": _iso(state.get("paused_at")),
        "backend": config.backend,
        "repos": {
            repo: {
                "last_success": _iso(repos.get(repo, {}).get("last_success")),
                "last_error": repos.get(repo, {}).get("last_error"),
                "rate_remaining": repos.get(repo, {}).get("rate_remaining"),
                "rate_limit": repos.get(repo, {}).get("rate_limit"),
                "backoff_until": _iso(repos.get(repo, {}).get("backoff_until")),
            }
            for repo in watched
        },
        "polling": polling_payload(state, now),
        "listener": listener_payload(
            config, hooks if isinstance(hooks := state.get("webhooks"), dict) else {}
        ),
        "prewarm": prewarm_payload(config, state, watched),
        "counts": counts,
        **limits_payload(config, state, now),
        "running": [task_row(t, now) for t in tasks if t.state is TaskState.RUNNING],
        "notices": [
            {"time": _iso(n.get("time")), "message": n.get("message")} for n in state.get("notices", [])
        ],
        "state_file": str(config.state_file),
        "settings_file": None if config.settings_file is None else str(config.settings_file),
        "settings": settings_source(config),
        "config": config.redacted(),
    }


def limits_payload(config: Config, state: dict[str, Any], now: float) -> dict[str, Any]:
    """Today's spend against ``DAILY_BUDGET_USD``, and the queue's hold (``None``: it runs freely)."""
    check = budget.check(state.get("budget"), config.daily_budget_usd, now=now)
    hold = admission.current_hold(state, daily_budget=config.daily_budget_usd, now=now)
    return {
        "budget": {
            "spent_today_usd": round(check.spent, 6),
            "daily_budget_usd": check.budget,
            "line": check.line(),
        },
        "hold": None
        if hold is None
        else {
            "reason": hold.reason,
            "until": _iso(hold.until),
            "known_reset": hold.known_reset,
            "message": hold.message,
            "probe_task": hold.probe_task,
            "line": hold.render(now),
        },
    }


def usage_payload(config: Config, state: dict[str, Any], now: float, days: int) -> dict[str, Any]:
    """``usage``: spend per repository and UTC day for the last ``days`` days, newest first."""
    rows = budget.usage(state.get("budget"), now=now, days=days)
    return {
        "days": days,
        "daily_budget_usd": config.daily_budget_usd,
        "spent_today_usd": round(budget.spent_today(state.get("budget"), now=now), 6),
        "total_usd": round(sum(r.cost_usd for r in rows), 6),
        "rows": [r.to_dict() for r in rows],
    }


def watched_repos(config: Config, state: dict[str, Any]) -> tuple[str, ...]:
    """GITHUB_REPOS, or App-wide the repositories the daemon last listed from the App's installations."""
    if not config.app_wide:
        return config.github_repos
    listed = (state.get("watcher", {}).get("app_repos") or {}).get("repos") or []
    return tuple(str(repo) for repo in listed)


def polling_payload(state: dict[str, Any], now: float) -> dict[str, Any] | None:
    """How often the daemon polls, as it last wrote it: the schedule and its one line for ``status``."""
    schedule = (state.get("watcher") or {}).get("schedule")
    if not isinstance(schedule, dict):
        return None
    payload = dict(schedule)
    line = status_line(schedule)
    pause = _github_pause(schedule, now)
    if pause is not None:
        until, why = pause
        line += f"; no request to GitHub until {_short_time(_iso(until), now)} ({why})"
        payload["paused_until"] = _iso(until)
    else:
        payload["paused_until"] = None
    payload["line"] = line
    return payload


def _github_pause(schedule: Any, now: float) -> tuple[float, str] | None:
    """The pause GitHub asked the daemon for, as its watcher last wrote the schedule: (until, why)."""
    until = schedule.get("paused_until") if isinstance(schedule, dict) else None
    if not isinstance(until, int | float) or until <= now:
        return None
    return float(until), str(schedule.get("paused_why") or "rate limited")


def listener_payload(config: Config, book: dict[str, Any]) -> dict[str, Any] | None:
    """The HTTP listener's address and the webhooks' last delivery and signature failures."""
    if config.listen_address is None and not book:
        return None
    last = book.get("last_delivery") or {}
    failure = book.get("last_signature_failure") or {}
    address = config.listen_address
    return {
        "address": None if address is None else f"{address[0]}:{address[1]}",
        "webhook_path": config.webhook_path if config.webhooks else None,
        "deliveries": int(book.get("deliveries") or 0),
        "last_delivery": (
            {
                "id": last.get("id"),
                "event": last.get("event"),
                "repo": last.get("repo"),
                "at": _iso(last.get("at")),
            }
            if last
            else None
        ),
        "signature_failures": int(book.get("signature_failures") or 0),
        "last_signature_failure_at": _iso(failure.get("at")),
    }


def listener_line(listener: dict[str, Any]) -> str:
    """``listener: http://… (webhooks on /webhook); last delivery …; N refused for their signature``."""
    parts = []
    if listener["address"]:
        hooks = f"webhooks on {listener['webhook_path']}" if listener["webhook_path"] else "webhooks off"
        parts.append(f"http://{listener['address']} ({hooks}, /metrics, /healthz)")
    else:
        parts.append("off (LISTEN_ADDRESS is not set)")
    last = listener["last_delivery"]
    if last:
        about = f" for {last['repo']}" if last["repo"] else ""
        parts.append(f"last delivery {last['event']}{about} at {last['at']}")
    elif listener["webhook_path"]:
        parts.append("no delivery yet")
    if listener["signature_failures"]:
        parts.append(
            f"{listener['signature_failures']} refused for a missing or wrong signature "
            f"(last at {listener['last_signature_failure_at']})"
        )
    return "listener: " + "; ".join(parts)


def prewarm_payload(config: Config, state: dict[str, Any], watched: Sequence[str]) -> dict[str, Any] | None:
    """Pre-warming (``PREWARM_INTERVAL``) per watched repository: when it was last warmed, whether its
    setup is cached, what the last round did; None when pre-warming is off."""
    if config.prewarm_interval <= 0:
        return None
    section = state.get("prewarm") if isinstance(state.get("prewarm"), dict) else {}
    repos = {}
    for repo in watched:
        entry = section.get(repo.lower()) or {}
        repos[repo] = {
            "warmed_at": _iso(entry.get("warmed_at")),
            "cached": entry.get("cached"),
            "result": entry.get("result"),
            "last_round_at": _iso(entry.get("at")),
            "detail": entry.get("detail"),
        }
    return {"interval": config.prewarm_interval, "repos": repos}


def health_payload(
    daemon: DaemonStatus, repos: dict[str, Any], watched: Sequence[str], now: float
) -> dict[str, Any]:
    """``healthy`` / ``degraded`` (some repository cannot be polled: which, since when, why) /
    ``not running``; ``summary`` is the same as one line."""
    problems = []
    for repo in watched:
        health = repos.get(repo, {})
        if health.get("last_error"):
            since = health.get("failing_since") or health.get("last_error_at")
            problems.append({"repo": repo, "since": _iso(since), "reason": health["last_error"]})
    status = "degraded" if problems else "healthy"
    if not daemon.running:
        status = "not running"
    summary = status
    if status == "degraded":
        summary += " — " + "; ".join(
            f"{p['repo']} since {_short_time(p['since'], now)}: {p['reason']}" for p in problems
        )
    return {"status": status, "summary": summary, "problems": problems}


def _short_time(iso: str | None, now: float) -> str:
    """``10:02Z`` today, ``2026-11-30 10:02Z`` on another day (UTC, as every time we show)."""
    if iso is None:
        return "?"
    today = time.strftime("%Y-%m-%d", time.gmtime(now))
    day, _, clock = iso.partition("T")
    return f"{clock[:5]}Z" if day == today else f"{day} {clock[:5]}Z"


def health_line(health: dict[str, Any]) -> str:
    return f"health: {health['summary']}"


def queue_payload(
    tasks: Sequence[Task],
    now: float,
    hold: dict[str, Any] | None = None,
    repo_caps: dict[str, str] | None = None,
    waits: tuple[str | None, str | None] = (None, None),
) -> list[dict[str, Any]]:
    """The rows of ``queue``; a pending task's ``waiting`` says why it may not start now: the pause
    (``waits[0]``, from :func:`queue_waits`), the queue's hold, its repository's cap (``repo_caps``,
    from :func:`repo_caps`), else what holds every task (``waits[1]``: every slot taken, no daemon), else
    ``None`` (it starts at the daemon's next cycle)."""
    rows = [task_row(t, now) for t in tasks]
    caps = repo_caps or {}
    paused, general = waits
    for row in rows:
        waiting = None
        if row["state"] == TaskState.PENDING:
            waiting = (
                paused
                or (hold["line"] if hold is not None else None)
                or caps.get(row["repo"].lower())
                or general
            )
        row["waiting"] = waiting
    return rows


def queue_waits(
    config: Config, state: dict[str, Any], *, daemon_running: bool, now: float | None = None
) -> tuple[str | None, str | None]:
    """What holds every pending task, for :func:`queue_payload`: (the pause, or GitHub's, else None;
    every ``MAX_CONCURRENT`` slot taken, or no daemon running, else None)."""
    now = time.time() if now is None else now
    paused = "the queue is paused: `resume` lets tasks start again" if state.get("paused") else None
    pause = _github_pause((state.get("watcher") or {}).get("schedule"), now)
    if paused is None and daemon_running and pause is not None and pause[0] - now > WORK_WAIT:
        # The daemon starts no task into a pause longer than work waits for (Daemon.held).
        until, why = pause
        paused = f"GitHub asked for no requests until {_short_time(_iso(until), now)} ({why})"
    tasks = (state.get("tasks") or {}).values()
    running = sum(1 for t in tasks if t.get("state") == TaskState.RUNNING)
    general = None
    if running >= config.max_concurrent:
        general = f"MAX_CONCURRENT={config.max_concurrent}: {running} tasks run"
    elif not daemon_running:
        general = "the daemon is not running: `start` runs it"
    return paused, general


def repo_caps(config: Config, state: dict[str, Any], now: float) -> dict[str, str]:
    """Each repository (lowercased) at ``REPO_MAX_CONCURRENT`` or ``REPO_MAX_PER_HOUR`` now, and why."""
    limits = FairnessLimits(config.max_concurrent, config.repo_max_concurrent, config.repo_max_per_hour)
    tasks = (state.get("tasks") or {}).values()
    starts = prune_starts(state.get("starts"), now=now)
    reasons: dict[str, str] = {}
    for repo in sorted({str(t["repo"]).lower() for t in tasks if t.get("state") == TaskState.PENDING}):
        running = sum(
            1 for t in tasks if t.get("state") == TaskState.RUNNING and str(t["repo"]).lower() == repo
        )
        if limits.repo_max_concurrent is not None and running >= limits.repo_max_concurrent:
            reasons[repo] = f"REPO_MAX_CONCURRENT={limits.repo_max_concurrent}: {running} of its tasks run"
        elif (when := next_start_at(repo, starts, limits, now=now)) is not None:
            reasons[repo] = (
                f"REPO_MAX_PER_HOUR={limits.repo_max_per_hour}: next start {format_wait(when, now)}"
            )
    return reasons


# --- rendering ------------------------------------------------------------------------------------


def _table(out: TextIO, title: str, headers: list[str], rows: list[list[str]], tty: bool) -> None:
    if tty:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, title_justify="left")
        for n, header in enumerate(headers):
            # Ids, states and refs must stay whole to be copied; the last column may wrap.
            last = n == len(headers) - 1
            table.add_column(header, no_wrap=not last, overflow="fold" if last else "ellipsis")
        for row in rows:
            table.add_row(*row)
        Console(file=out, force_terminal=True).print(table)
        return
    out.write(f"{title}\n")
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    for row in [headers, *rows]:
        out.write(
            "  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n"
        )


def _print_prewarm(prewarm: dict[str, Any], out: TextIO, tty: bool) -> None:
    cached = {True: "yes", False: "no", None: "?"}
    rows = [
        [repo, info["warmed_at"] or "never", cached.get(info["cached"], "?"), info["result"] or "not yet"]
        for repo, info in prewarm["repos"].items()
    ]
    title = f"pre-warming (every {duration(prewarm['interval'])})"
    _table(out, title, ["repo", "last warmed", "setup cached", "last round"], rows, tty)


def print_status(payload: dict[str, Any], out: TextIO, *, tty: bool) -> None:
    daemon = payload["daemon"]
    if daemon["running"]:
        line = f"daemon: running (pid {daemon['pid']})" if daemon["pid"] else "daemon: starting"
    elif daemon["stale_pid"]:
        line = f"daemon: not running (stale pidfile from pid {daemon['stale_pid']})"
    else:
        line = "daemon: not running"
    out.write(line + "\n")
    out.write(health_line(payload["health"]) + "\n")
    out.write(
        "queue: "
        + ("PAUSED since " + str(payload["paused_at"]) if payload["paused"] else "accepting work")
        + "\n"
    )
    out.write(f"backend: {payload['backend']}\n")
    if payload.get("polling"):
        out.write(payload["polling"]["line"] + "\n")
    if payload.get("listener"):
        out.write(listener_line(payload["listener"]) + "\n")
    out.write(f"settings: {payload['settings']}\n")
    if payload["hold"] is not None:
        out.write(payload["hold"]["line"] + "\n")
    out.write(f"budget: {payload['budget']['line']}\n")
    counts = payload["counts"]
    out.write("tasks: " + ", ".join(f"{n} {state}" for state, n in counts.items()) + "\n")
    for notice in payload["notices"]:
        out.write(f"NOTICE {notice['time']}: {notice['message']}\n")
    if payload["repos"]:
        rows = [
            [
                repo,
                info["last_success"] or "never",
                info["last_error"] or "",
                "" if info["rate_remaining"] is None else f"{info['rate_remaining']}/{info['rate_limit']}",
            ]
            for repo, info in payload["repos"].items()
        ]
        title = (
            "repositories (every one the GitHub App is installed on)"
            if payload.get("app_wide")
            else "repositories"
        )
        _table(out, title, ["repo", "last poll ok", "last error", "rate limit left"], rows, tty)
    if payload.get("prewarm") and payload["prewarm"]["repos"]:
        _print_prewarm(payload["prewarm"], out, tty)
    if payload["running"]:
        rows = [
            [t["id"], t["ref"], t["title"][:60], duration(t["elapsed_seconds"]), str(t["attempts"])]
            for t in payload["running"]
        ]
        _table(out, "running", ["task", "issue", "title", "elapsed", "attempt"], rows, tty)
    config = payload["config"]
    shown = " ".join(f"{k}={v}" for k, v in config.items() if v)
    out.write(
        "config:\n"
        + textwrap.fill(
            shown,
            width=100,
            initial_indent="  ",
            subsequent_indent="  ",
            break_on_hyphens=False,
            break_long_words=False,
        )
        + "\n"
    )


def _unless_hold(waiting: str | None, hold: dict[str, Any] | None) -> str | None:
    return None if hold is not None and waiting == hold["line"] else waiting


def print_queue(
    rows: list[dict[str, Any]], out: TextIO, *, tty: bool, hold: dict[str, Any] | None = None
) -> None:
    if hold is not None:
        out.write(hold["line"] + "\n")
    if not rows:
        out.write("the queue is empty\n")
        return
    table = [
        [
            r["id"],
            r["state"],
            r["ref"],
            r.get("kind") or "issue",
            (r["title"] or "")[:50],
            str(r["attempts"]),
            duration(r["elapsed_seconds"]),
            "" if r["cost_usd"] is None else format_usd(r["cost_usd"]),
            r.get("trigger") or "",
            # The hold is the line above the table; a repository's cap is said per task.
            r["pr_url"] or (r["error"] or _unless_hold(r.get("waiting"), hold) or "")[:60],
        ]
        for r in rows
    ]
    _table(
        out,
        "tasks",
        ["task", "state", "issue", "kind", "title", "tries", "elapsed", "cost", "trigger", "PR / error"],
        table,
        tty,
    )


def print_usage(payload: dict[str, Any], out: TextIO, *, tty: bool) -> None:
    budget_line = (
        f"spent {format_usd(payload['spent_today_usd'])} of {format_usd(payload['daily_budget_usd'])} today"
        if payload["daily_budget_usd"] is not None
        else f"spent {format_usd(payload['spent_today_usd'])} today (no DAILY_BUDGET_USD)"
    )
    out.write(budget_line + "\n")
    rows = [
        [r["day"], r["repo"], str(r["runs"]), str(r.get("fix_rounds") or ""), f"{format_usd(r['cost_usd'])}"]
        for r in payload["rows"]
    ]
    if not rows:
        out.write(f"no Claude spend recorded in the last {payload['days']} days\n")
        return
    title = f"spend per repository and UTC day (last {payload['days']} days)"
    _table(out, title, ["day", "repo", "runs", "of them fix rounds", "cost"], rows, tty)
    out.write(f"total: {format_usd(payload['total_usd'])}\n")
