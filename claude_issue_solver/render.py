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
from claude_issue_solver.pidfile import DaemonStatus
from claude_issue_solver.queue import Task, TaskState


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
    """What started a task: the label (and who applied it), or the follow-up's comment link(s)."""
    triggers = task.meta.get("triggers") or []
    if task.kind == "followup" and triggers:
        more = f" (+{len(triggers) - 1})" if len(triggers) > 1 else ""
        return f"@{triggers[0].get('author', '?')} {triggers[0].get('url', '')}{more}"
    labeler = task.meta.get("labeler")
    return f"label by @{labeler}" if labeler else "label"


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
    return {
        "daemon": {
            "running": daemon.running,
            "pid": daemon.pid if daemon.running else None,
            "stale_pid": daemon.pid if daemon.stale else None,
        },
        "health": health_payload(daemon, repos, config.github_repos, now),
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
            for repo in config.github_repos
        },
        "counts": counts,
        "running": [task_row(t, now) for t in tasks if t.state is TaskState.RUNNING],
        "notices": [
            {"time": _iso(n.get("time")), "message": n.get("message")} for n in state.get("notices", [])
        ],
        "state_file": str(config.state_file),
        "settings_file": None if config.settings_file is None else str(config.settings_file),
        "settings": settings_source(config),
        "config": config.redacted(),
    }


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


def queue_payload(tasks: Sequence[Task], now: float) -> list[dict[str, Any]]:
    return [task_row(t, now) for t in tasks]


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
    out.write(f"settings: {payload['settings']}\n")
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
        _table(out, "repositories", ["repo", "last poll ok", "last error", "rate limit left"], rows, tty)
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


def print_queue(rows: list[dict[str, Any]], out: TextIO, *, tty: bool) -> None:
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
            "" if r["cost_usd"] is None else f"${r['cost_usd']:.2f}",
            r.get("trigger") or "",
            r["pr_url"] or (r["error"] or "")[:60],
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
