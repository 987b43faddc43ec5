"""The commands that act on one task: ``submit``, ``cancel``, ``retry``."""

from __future__ import annotations

import time
from typing import Any

import click

from claude_issue_solver.cli.main import EXIT_USAGE, Context, fail, handles_errors, main
from claude_issue_solver.store.queue import TaskState

# --- manual control -------------------------------------------------------------------------------


def _github(obj: Context) -> tuple[Any, Any]:
    """The GitHub client and publisher, for commands that talk to GitHub themselves."""
    from claude_issue_solver.github.client import GitHubClient
    from claude_issue_solver.github.publisher import Publisher

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
    from claude_issue_solver.github.client import GitHubError
    from claude_issue_solver.run.pipeline import task_comment

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
    from claude_issue_solver.github.client import GitHubError
    from claude_issue_solver.github.trust import Approved, iso
    from claude_issue_solver.run import messages

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
    from claude_issue_solver.run import messages

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
