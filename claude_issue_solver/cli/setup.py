"""The commands that set the daemon up and try it out: ``doctor``, ``service``, ``daytona``, ``demo``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from claude_issue_solver.cli.main import (
    EXIT_FAILED,
    EXIT_USAGE,
    Context,
    fail,
    handles_errors,
    json_option,
    main,
)

# --- setting it up ---------------------------------------------------------------------------------


@main.command()
@json_option
@click.option("--build", is_flag=True, help="Build the agent image now if it is missing (can take minutes).")
@click.pass_obj
def doctor(obj: Context, as_json: bool, build: bool) -> None:
    """Check settings, GitHub access and labels, Docker or Daytona, and the Claude credential.

    Writes nothing to GitHub. Exits 0 when every check passes, 1 otherwise.
    """
    from claude_issue_solver.cli.doctor import diagnose, render, to_json

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
    from claude_issue_solver.cli.service import ServiceError, enable_instructions, install, render_unit
    from claude_issue_solver.config import resolve_env_file

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
    from claude_issue_solver.cli.demo import run_demo
    from claude_issue_solver.config import read_env_file, resolve_env_file

    path = resolve_env_file(obj.env_file, os.environ)
    environ = {**read_env_file(path), **os.environ} if path else dict(os.environ)
    sys.exit(run_demo(keep=keep, timeout=timeout, environ=environ, stand_in=stand_in, follow_up=follow_up))
