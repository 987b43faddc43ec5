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
from claude_issue_solver.logs import DAEMON_OUT
from claude_issue_solver.pidfile import DaemonStatus, daemon_status
from claude_issue_solver.queue import QueueError, TaskQueue, TaskState
from claude_issue_solver.state import StateError, StateStore, UnusableStateDir, prepare_state_dir

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
    from claude_issue_solver.supervise import Readiness

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
    from claude_issue_solver.supervise import (
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
    from claude_issue_solver.supervise import Stop, SuperviseError, stop

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
    from claude_issue_solver.render import health_line, print_status, status_payload

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
    from claude_issue_solver.render import limits_payload, print_queue, queue_payload, queue_waits, repo_caps

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
    waits = queue_waits(obj.config, state, daemon_running=obj.daemon().running)
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
    from claude_issue_solver.render import print_usage, usage_payload

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


# --- manual control -------------------------------------------------------------------------------


def _github(obj: Context) -> tuple[Any, Any]:
    """The GitHub client and publisher, for commands that talk to GitHub themselves."""
    from claude_issue_solver.github import GitHubClient
    from claude_issue_solver.publisher import Publisher

    config = obj.config
    if not config.github_token and not config.github_app_id:
        fail(
            "GITHUB_TOKEN is not set: expected a GitHub token (or a GitHub App) to reach the issue",
            EXIT_USAGE,
        )
    client = GitHubClient(config)
    return client, Publisher(client)


def _parse_issue_ref(ref: str) -> tuple[str, int]:
    from claude_issue_solver.config import repo_name_is_valid

    repo, _, number = ref.partition("#")
    if not repo_name_is_valid(repo) or not number.isdigit():
        fail(f"{ref!r} is not an issue reference: expected owner/repo#N, e.g. acme/widgets#42", EXIT_USAGE)
    return repo, int(number)


def _comment_best_effort(obj: Context, task: Any, body: str) -> None:
    from claude_issue_solver.github import GitHubError
    from claude_issue_solver.pipeline import task_comment

    try:
        _, publisher = _github(obj)
        task_comment(publisher, obj.queue(), task, body)
    except GitHubError as exc:
        click.echo(f"warning: could not comment on {task.ref}: {exc}", err=True)


@main.command()
@click.argument("issue", metavar="OWNER/REPO#N")
@click.pass_obj
@handles_errors
def submit(obj: Context, issue: str) -> None:
    """Queue an issue by hand, without the label (one live task per issue still holds)."""
    from claude_issue_solver import messages
    from claude_issue_solver.github import GitHubError
    from claude_issue_solver.trust import Approved, iso

    repo, number = _parse_issue_ref(issue)
    client, _ = _github(obj)
    try:
        data = client.issue(repo, number)
    except GitHubError as exc:
        fail(f"cannot read {repo}#{number}: {exc}")
    if "pull_request" in data:
        fail(f"{repo}#{number} is a pull request, not an issue")
    if data.get("state") != "open":
        fail(f"{repo}#{number} is closed")
    labels = [label["name"] for label in data.get("labels", []) if isinstance(label, dict)]
    # The operator approves the text as it reads now: a later edit by anyone is not what runs.
    approved = Approved.as_read(data, iso(time.time()))
    task = obj.queue().submit(
        repo,
        number,
        approved.title,
        kind="manual",
        meta={
            "labels": labels,
            "author": (data.get("user") or {}).get("login", ""),
            "url": data.get("html_url"),
            "approved": approved.to_meta(),
            "body_hash": approved.hash,
        },
    )
    if task is None:
        live = obj.queue().live_for(repo, number)
        shown = f" ({live.id}, {live.state.value})" if live else ""
        fail(f"{repo}#{number} already has a live task{shown}")
    _comment_best_effort(
        obj, task, messages.queued_comment(task, agent=messages.agent_for(obj.config.claude_model))
    )
    obj.nudge()
    click.echo(f"queued {task.id} for {task.ref}")


@main.command()
@click.argument("task_ref", metavar="TASK")
@click.option(
    "--wait",
    "wait_seconds",
    type=click.FloatRange(min=0),
    default=30,
    show_default=True,
    help="Seconds to wait for a running task to be stopped and cleaned up (0: don't wait).",
)
@click.pass_obj
@handles_errors
def cancel(obj: Context, task_ref: str, wait_seconds: float) -> None:
    """Cancel a task (id or owner/repo#N): a pending one at once, a running one by the daemon."""
    from claude_issue_solver import messages

    queue = obj.queue()
    task = queue.request_cancel(queue.find(task_ref).id)
    if task.state is TaskState.CANCELLED:
        cancelled = messages.cancelled_comment(
            task, obj.config.trigger_label, phrase=obj.config.trigger_phrase
        )
        _comment_best_effort(obj, task, cancelled)
        click.echo(f"cancelled {task.id} ({task.ref}) before it started")
        return
    daemon = obj.daemon()
    if not daemon.running:
        click.echo(f"{task.id} will be cancelled when the daemon starts again (it is not running)")
        return
    obj.nudge()
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        current = queue.get(task.id)
        if not current.state.live:
            click.echo(f"{task.id} ({task.ref}) is {current.state.value}")
            return
        time.sleep(0.1)
    click.echo(f"cancel requested for {task.id} ({task.ref}); the daemon is stopping it")


@main.command()
@click.argument("task_ref", metavar="TASK")
@click.option("--force", is_flag=True, help="Also run a completed task again (it spends again).")
@click.pass_obj
@handles_errors
def retry(obj: Context, task_ref: str, force: bool) -> None:
    """Run a failed or cancelled task (id or owner/repo#N) again, on the same branch."""
    queue = obj.queue()
    task = queue.retry(queue.find(task_ref).id, force=force)
    obj.nudge()
    click.echo(f"queued {task.id} ({task.ref}) again")


# --- setting it up ---------------------------------------------------------------------------------


@main.command()
@json_option
@click.option("--build", is_flag=True, help="Build the agent image now if it is missing (can take minutes).")
@click.pass_obj
def doctor(obj: Context, as_json: bool, build: bool) -> None:
    """Check settings, GitHub access and labels, Docker or Daytona, and the Claude credential.

    Writes nothing to GitHub. Exits 0 when every check passes, 1 otherwise.
    """
    from claude_issue_solver.doctor import diagnose, render, to_json

    # A build takes minutes: each step as it starts, on stderr (stdout stays the report, or its JSON).
    checks = diagnose(obj.env_file, build=build, progress=lambda line: click.echo(line, err=True))
    click.echo(json.dumps(to_json(checks), indent=2) if as_json else render(checks))
    sys.exit(0 if all(check.ok for check in checks) else EXIT_FAILED)


@main.group()
def service() -> None:
    """Run the daemon as a systemd service."""


@service.command(name="install")
@click.option(
    "--user", "user_mode", is_flag=True, help="A user unit (~/.config/systemd/user), not a system one."
)
@click.option("--print", "print_only", is_flag=True, help="Print the unit instead of writing it.")
@click.option(
    "--run-as",
    metavar="USER",
    default=lambda: os.environ.get("SUDO_USER"),
    help="System unit: the user the daemon runs as (default: whoever ran sudo, else root).",
)
@click.pass_obj
@handles_errors
def service_install(obj: Context, user_mode: bool, print_only: bool, run_as: str | None) -> None:
    """Write a systemd unit that runs 'start --foreground' with the settings file (--env-file or ./.env)."""
    from claude_issue_solver.config import resolve_env_file
    from claude_issue_solver.service import ServiceError, enable_instructions, install, render_unit

    env_file = resolve_env_file(obj.env_file, os.environ)
    if env_file is None:
        fail("no settings file: pass --env-file PATH; the service reads its settings from it", EXIT_USAGE)
    run_as = None if user_mode else run_as
    try:
        if print_only:
            click.echo(render_unit(user_mode=user_mode, env_file=env_file, run_as=run_as), nl=False)
            return
        path = install(user_mode=user_mode, env_file=env_file, run_as=run_as)
    except ServiceError as exc:
        fail(str(exc))
    click.echo(f"wrote {path}\n{enable_instructions(user_mode)}")


@main.group()
def daytona() -> None:
    """The Daytona backend (BACKEND=daytona)."""


@daytona.command(name="snapshot")
@click.option("--name", help="Snapshot name (default: DAYTONA_SNAPSHOT).")
@click.option(
    "--dockerfile",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="The image definition (default: the packaged Dockerfile.claude, the same as the Docker backend's).",
)
@click.pass_obj
@handles_errors
def daytona_snapshot(obj: Context, name: str | None, dockerfile: Path | None) -> None:
    """Create the snapshot sandboxes start from: git, the pinned Claude Code CLI, a non-root user."""
    from claude_issue_solver.app import daytona_module, daytona_settings
    from claude_issue_solver.backends.base import BackendError, agent_dockerfile

    create_snapshot = daytona_module().create_snapshot
    config = obj.config
    if not config.daytona_api_key:
        fail("DAYTONA_API_KEY is not set: expected a Daytona API key", EXIT_USAGE)
    try:
        made = create_snapshot(
            daytona_settings(config), dockerfile or agent_dockerfile(), name=name, on_logs=click.echo
        )
    except BackendError as exc:
        fail(str(exc))
    click.echo(f"snapshot {made} is ready; set DAYTONA_SNAPSHOT={made} and BACKEND=daytona")


# --- trying it out ----------------------------------------------------------------------------------


@main.command()
@click.option("--keep", is_flag=True, help="Keep the demo's state and bare repository, and print where.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=600,
    show_default=True,
    help="Give up if the task has not finished after this many seconds.",
)
@click.option(
    "--stand-in",
    is_flag=True,
    help="Use the scripted stand-in agent even when a Claude credential is set (it works offline).",
)
@click.option(
    "--follow-up",
    is_flag=True,
    help="Then ask for more on the pull request (@claude ...): the work continues on the same branch, "
    "pull request and Claude session.",
)
@click.pass_obj
@handles_errors
def demo(obj: Context, keep: bool, timeout: float, stand_in: bool, follow_up: bool) -> None:
    """Run one issue end to end on this machine, with no secrets.

    A loopback GitHub with a sample repository and a labelled issue, the daemon in the foreground and
    the Docker backend. With ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN set the real Claude Code CLI
    works on it; otherwise, or with --stand-in, a scripted stand-in agent does (and says so). Prints the
    PR, its diff and the comment; with --follow-up also the answer to a maintainer's @claude on the PR
    and the commit it added.
    """
    from claude_issue_solver.config import read_env_file, resolve_env_file
    from claude_issue_solver.demo import run_demo

    path = resolve_env_file(obj.env_file, os.environ)
    environ = {**read_env_file(path), **os.environ} if path else dict(os.environ)
    sys.exit(run_demo(keep=keep, timeout=timeout, environ=environ, stand_in=stand_in, follow_up=follow_up))
