"""The ``claude-issue-solver`` command: parse, call the library, print.

Exit codes (as ``systemctl status`` uses them where they overlap):
0 success / daemon running; 1 the operation failed (already running, stop timed out, unknown task);
2 bad usage or configuration; 3 the daemon is not running (``status``, ``stop``); 4 the daemon runs but
is degraded (``status --check`` only); 130 interrupted by Ctrl-C while ``start`` waited.

Only light modules are imported here; docker, PyGithub and the Daytona SDK are imported inside the
commands that use them, so ``status``, ``queue``, ``pause`` and ``resume`` start fast.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from claude_issue_solver import __version__
from claude_issue_solver.config import Config, ConfigError, load_config
from claude_issue_solver.daemon.pidfile import DaemonStatus, daemon_status
from claude_issue_solver.logs import DAEMON_OUT
from claude_issue_solver.store.queue import QueueError, TaskQueue, TaskState
from claude_issue_solver.store.state import StateError, StateStore, UnusableStateDir, prepare_state_dir

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3
EXIT_DEGRADED = 4
EXIT_INTERRUPTED = 130  # the shell's code for a process ended by Ctrl-C (128 + SIGINT)

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    click.secho(f"Error: {message}", err=True, fg="red")
    sys.exit(code)


class Context:
    """Lazily loaded configuration and state, shared by the subcommands."""

    def __init__(self, env_file: Path | None) -> None:
        self.env_file = env_file
        self._config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            try:
                self._config = load_config(self.env_file)
            except ConfigError as exc:
                fail(str(exc), EXIT_USAGE)
            problem = _state_dir_problem(self._config.state_dir)
            if problem:
                fail(problem, EXIT_USAGE)
        return self._config

    def queue(self) -> TaskQueue:
        return TaskQueue.for_config(StateStore(self.config.state_file), self.config)

    def daemon(self) -> DaemonStatus:
        return daemon_status(self.config.pid_file)

    def nudge(self) -> None:
        """Wake a running daemon so a queue change takes effect now rather than at its next tick."""
        status = self.daemon()
        if status.ready and status.pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(status.pid, signal.SIGUSR1)


def _state_dir_problem(path: Path) -> str | None:
    """Why STATE_DIR can never work (a part of it is a file), checked without creating anything, so
    that every command says so in the same line and with exit code 2. Permissions are left to the
    commands that write: reading another user's state may be allowed."""
    for part in [path, *path.parents]:
        if part.exists():
            if part.is_dir():
                return None
            return (
                f"cannot use STATE_DIR={path}: {part} is not a directory; "
                "point STATE_DIR at a writable directory"
            )
    return None


def json_option(func: F) -> F:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of tables."
    )(func)


def handles_errors(func: F) -> F:
    """Turn the library's expected failures into one readable line and an exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (ConfigError, UnusableStateDir) as exc:
            fail(str(exc), EXIT_USAGE)
        except (StateError, QueueError) as exc:
            fail(str(exc))

    return wrapper  # type: ignore[return-value]


def _is_tty() -> bool:
    return sys.stdout.isatty()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="claude-issue-solver")
@click.option(
    "--env-file",
    type=click.Path(path_type=Path, dir_okay=False),
    # Not envvar=: config reads $CLAUDE_ISSUE_SOLVER_ENV itself, and names it in its errors.
    help=(
        "Read settings from this .env file (default: $CLAUDE_ISSUE_SOLVER_ENV, else ./.env if present; "
        "the environment wins)."
    ),
)
@click.pass_context
def main(ctx: click.Context, env_file: Path | None) -> None:
    """Watch GitHub for issues labelled 'Claude' and have Claude Code open pull requests for them.

    Each issue runs in isolation (a Docker container over a git worktree, or a Daytona sandbox); the
    daemon pushes a branch claude/issue-N, opens a pull request and reports back on the issue.

    \b
    Exit codes: 0 ok, 1 failed, 2 bad usage or configuration, 3 daemon not running, 4 degraded
    (status --check), 130 interrupted (Ctrl-C).
    """
    ctx.obj = Context(env_file)


# --- the daemon's lifecycle -----------------------------------------------------------------------


@main.command()
@click.option(
    "--foreground", "-f", is_flag=True, help="Run attached to this terminal, logging to stderr too."
)
@click.option(
    "--wait",
    "wait_seconds",
    type=click.FloatRange(min=1),
    default=60,
    show_default=True,
    help="Seconds to wait for a background daemon to come up (its first look at every repository).",
)
@click.option("--detached-child", is_flag=True, hidden=True)
@click.pass_obj
@handles_errors
def start(obj: Context, foreground: bool, wait_seconds: float, detached_child: bool) -> None:
    """Start the daemon (in the background unless --foreground).

    It first checks every repository once: a rejected token, a missing repository or no permission
    ends the start with exit code 2 and the reason; GitHub being down only warns.
    """
    config = obj.config
    config.require_daemon_settings()
    prepare_state_dir(config.state_dir)
    if foreground or detached_child:
        _run_here(config, detached=detached_child)
    status = obj.daemon()
    if status.running:
        fail(f"the daemon is already running (pid {status.pid}); use 'restart' to restart it")
    _start_background(obj, config, wait_seconds)


def _run_here(config: Config, *, detached: bool) -> NoReturn:
    from claude_issue_solver.app import StartRefused, run_daemon
    from claude_issue_solver.daemon.supervise import Readiness

    readiness = Readiness.from_environ() if detached else Readiness(None)
    try:
        code = run_daemon(config, to_stderr=not detached, readiness=readiness)
    except StartRefused as exc:
        readiness.failed(str(exc))
        fail(str(exc), exc.code)
    finally:
        readiness.close()
    sys.exit(code)


def _start_background(obj: Context, config: Config, wait_seconds: float) -> None:
    from claude_issue_solver.daemon.supervise import (
        StartFailed,
        StartInterrupted,
        SuperviseError,
        start_background,
        stop,
    )

    out_path = config.log_dir / DAEMON_OUT
    command = [sys.executable, "-m", "claude_issue_solver"]
    if obj.env_file:
        command += ["--env-file", str(obj.env_file.resolve())]
    command += ["start", "--detached-child"]
    try:
        started = start_background(command, output=out_path, timeout=wait_seconds)
    except StartFailed as exc:
        for note in exc.notes:
            click.secho(f"warning: {note}", err=True, fg="yellow")
        if exc.reported:
            fail(str(exc), EXIT_USAGE if exc.exit_code == EXIT_USAGE else EXIT_FAILED)
        click.echo(exc.output, err=True, nl=False)
        if exc.exit_code is None:
            # Half started is worse than not started: a later `start` would find it "already running".
            stop(exc.pid, timeout=10, force=True)
            fail(
                f"the daemon did not come up within {wait_seconds:.0f}s (pid {exc.pid}), so it was "
                f"stopped; see {config.log_dir / 'daemon.log'}"
            )
        fail(
            f"the daemon exited during start-up (exit code {exc.exit_code}); see {out_path}",
            EXIT_USAGE if exc.exit_code == EXIT_USAGE else EXIT_FAILED,
        )
    except StartInterrupted as exc:
        # Half started is worse than not started (see above); Ctrl-C means "not now".
        stop(exc.pid, timeout=10, force=True)
        fail(f"interrupted: the daemon that was starting (pid {exc.pid}) was stopped", EXIT_INTERRUPTED)
    except SuperviseError as exc:
        fail(str(exc))
    for note in started.notes:
        click.secho(f"warning: {note}", err=True, fg="yellow")
    click.echo(f"daemon started (pid {started.pid}); logs: {config.log_dir / 'daemon.log'}")


def _stop(obj: Context, timeout: float, force: bool) -> bool:
    """Stop the daemon; True if one was running."""
    from claude_issue_solver.daemon.supervise import Stop, SuperviseError, stop

    status = obj.daemon()
    deadline = time.monotonic() + timeout
    while status.running and status.pid is None and time.monotonic() < deadline:
        time.sleep(0.05)  # still starting: its pid is written once its start-up checks are done
        status = obj.daemon()
    if status.running and status.pid is None:
        fail(f"the daemon is still starting after {timeout:.0f}s; try again, or see its log")
    if not status.running or status.pid is None:
        return False
    pid = status.pid

    def killing() -> None:
        click.echo(f"the daemon (pid {pid}) did not stop within {timeout:.0f}s; killing it", err=True)

    try:
        # The pidfile's lock, not the pid, says whether it still runs: a reused pid cannot fake it.
        result = stop(
            pid, timeout=timeout, force=force, running=lambda: obj.daemon().running, on_kill=killing
        )
    except SuperviseError as exc:
        fail(str(exc))
    if result is Stop.STILL_RUNNING:
        hint = "" if force else "; try 'stop --force'"
        fail(f"the daemon (pid {pid}) did not stop within {timeout:.0f}s{hint}")
    return result is not Stop.NOT_RUNNING


_timeout_option = click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=30,
    show_default=True,
    help="Seconds to wait for a graceful stop.",
)
_force_option = click.option(
    "--force", is_flag=True, help="Kill the daemon (SIGKILL) if it does not stop in time."
)


@main.command()
@_timeout_option
@_force_option
@click.pass_obj
@handles_errors
def stop(obj: Context, timeout: float, force: bool) -> None:
    """Stop the daemon gracefully: running tasks stay recorded and resume at the next start."""
    if not _stop(obj, timeout, force):
        click.echo("the daemon is not running")
        sys.exit(EXIT_NOT_RUNNING)
    click.echo("daemon stopped")


@main.command()
@_timeout_option
@_force_option
@click.option(
    "--wait",
    "wait_seconds",
    type=click.FloatRange(min=1),
    default=60,
    show_default=True,
    help="Seconds to wait for the new daemon to come up (its first look at every repository).",
)
@click.pass_obj
@handles_errors
def restart(obj: Context, timeout: float, force: bool, wait_seconds: float) -> None:
    """Stop the daemon if it runs, then start it in the background."""
    config = obj.config
    config.require_daemon_settings()
    prepare_state_dir(config.state_dir)
    if _stop(obj, timeout, force):
        click.echo("daemon stopped")
    _start_background(obj, config, wait_seconds)


# --- looking at it ----------------------------------------------------------------------------------


@main.command()
@json_option
@click.option(
    "--check",
    is_flag=True,
    help="Print only the health line; exit 0 healthy, 4 degraded, 3 not running (for monitors).",
)
@click.pass_obj
@handles_errors
def status(obj: Context, as_json: bool, check: bool) -> None:
    """Show whether the daemon runs, its health, the queue, per-repo poll health and the (redacted) config.

    Exits 0 when the daemon is running and 3 when it is not; with --check, 4 when it runs but a
    repository cannot be polled (degraded).
    """
    from claude_issue_solver.cli.render import health_line, print_status, status_payload

    queue = obj.queue()
    state = queue.store.read()
    tasks = queue.list()
    daemon = obj.daemon()
    payload = status_payload(obj.config, daemon, state, tasks, time.time())
    if as_json:
        click.echo(json.dumps(payload, indent=2))
    elif check:
        click.echo(health_line(payload["health"]))
    else:
        print_status(payload, sys.stdout, tty=_is_tty())
    if not daemon.running:
        sys.exit(EXIT_NOT_RUNNING)
    sys.exit(EXIT_DEGRADED if check and payload["health"]["status"] == "degraded" else 0)


@main.command(name="queue")
@json_option
@click.option("--all", "show_all", is_flag=True, help="Include finished tasks (the last 100).")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice([s.value for s in TaskState]),
    help="Only tasks in this state (repeatable).",
)
@click.pass_obj
@handles_errors
def queue_command(obj: Context, as_json: bool, show_all: bool, states: tuple[str, ...]) -> None:
    """List tasks: live ones by default, with --all the history too."""
    from claude_issue_solver.cli.render import (
        limits_payload,
        print_queue,
        queue_payload,
        queue_waits,
        repo_caps,
    )

    wanted: list[TaskState] | None
    if states:
        wanted = [TaskState(s) for s in states]
    elif show_all:
        wanted = None
    else:
        wanted = [TaskState.PENDING, TaskState.RUNNING]
    queue = obj.queue()
    now = time.time()
    state = queue.store.read()
    hold = limits_payload(obj.config, state, now)["hold"]
    waits = queue_waits(obj.config, state, daemon_running=obj.daemon().running, now=now)
    rows = queue_payload(queue.list(wanted), now, hold, repo_caps(obj.config, state, now), waits)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        print_queue(rows, sys.stdout, tty=_is_tty(), hold=hold)


@main.command()
@json_option
@click.option(
    "--days",
    type=click.IntRange(1, 31),
    default=30,
    show_default=True,
    help="How many UTC days back, today included (31 are kept).",
)
@click.pass_obj
@handles_errors
def usage(obj: Context, as_json: bool, days: int) -> None:
    """Show Claude spend per repository and UTC day, and today's spend against DAILY_BUDGET_USD."""
    from claude_issue_solver.cli.render import print_usage, usage_payload

    payload = usage_payload(obj.config, obj.queue().store.read(), time.time(), days)
    if as_json:
        click.echo(json.dumps(payload, indent=2))
    else:
        print_usage(payload, sys.stdout, tty=_is_tty())


@main.command()
@click.pass_obj
@handles_errors
def pause(obj: Context) -> None:
    """Start no new tasks (running ones finish). Works whether or not the daemon runs."""
    _set_paused(obj, True)


@main.command()
@click.pass_obj
@handles_errors
def resume(obj: Context) -> None:
    """Start tasks again after 'pause'."""
    _set_paused(obj, False)


def _set_paused(obj: Context, paused: bool) -> None:
    queue = obj.queue()
    changed = queue.pause() if paused else queue.resume()
    obj.nudge()
    if paused:
        click.echo("paused: running tasks will finish; no new task starts" if changed else "already paused")
    else:
        click.echo("resumed: pending tasks will start" if changed else "not paused")


@main.command()
@click.argument("task", required=False)
@click.option(
    "-n",
    "--lines",
    default=50,
    show_default=True,
    type=click.IntRange(min=0),
    help="How many lines to show from the end.",
)
@click.option(
    "-f", "--follow", is_flag=True, help="Keep printing new lines as they are written (Ctrl-C ends)."
)
@click.pass_obj
@handles_errors
def logs(obj: Context, task: str | None, lines: int, follow: bool) -> None:
    """Show the daemon's log, or with TASK (a task id or owner/repo#N) that task's log."""
    from claude_issue_solver.logs import daemon_log_path, tail_lines, task_log_path
    from claude_issue_solver.logs import follow as follow_file

    config = obj.config
    if task:
        found = obj.queue().find(task)
        path = task_log_path(config.log_dir, found.id)
    else:
        path = daemon_log_path(config.log_dir)
    if not follow:
        if not path.exists():
            fail(f"no log yet at {path}")
        sys.stdout.write("".join(tail_lines(path, lines)))
        return
    try:
        for line in follow_file(path, start_lines=lines):
            sys.stdout.write(line)
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass
