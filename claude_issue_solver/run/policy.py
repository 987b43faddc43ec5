"""The run policy, written once for every backend: how a process is waited for, when it is stopped,
what is taken from the workspace, what counts as a change, how the work is published and removed.

Backends give the mechanics (:mod:`claude_issue_solver.backends.base`); these functions decide with
them. The pipeline calls them in its phases; a later feature (a test run after the agent, a follow-up
run) calls the same ones with another process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from claude_issue_solver.backends.base import (
    Backend,
    BackendError,
    Changes,
    OutputBounds,
    Pushed,
    PushRejected,
    PushRequest,
    Rebased,
    Workspace,
    WorkspaceLost,
)
from claude_issue_solver.conventions import LOG_TAIL_LINES, SUMMARY_FILE, SUMMARY_LIMIT
from claude_issue_solver.logs import TaskLog
from claude_issue_solver.store.outcome import TaskControl

__all__ = [
    "MAX_POLL_BACKOFF",
    "MOVED_ATTEMPTS",
    "NEVER_COMMITTED",
    "OUTPUT_BOUNDS",
    "ProcessExit",
    "has_changes",
    "publish",
    "reconcile",
    "remove_workspace",
    "take_summary",
    "wait_for_process",
    "what_changed",
]

logger = logging.getLogger(__name__)

MAX_POLL_BACKOFF = 30.0  # the longest pause between polls while the place rate-limits or fails
REMOVE_ATTEMPTS = 3
# How many times a push that found the branch moved puts the commits on top and pushes again: someone
# may push again meanwhile, but a branch that keeps moving fails rather than racing forever.
MOVED_ATTEMPTS = 2
NEVER_COMMITTED = (SUMMARY_FILE,)
# How much of each stream of a process the daemon keeps once it ended (the task log got all of it,
# streamed): the start (the CLI's init line) and the end (its result line, a test run's verdict), never
# the middle of 100 MB of test output. The end is generous: one result line holds the agent's answer.
OUTPUT_BOUNDS = OutputBounds(head=64 * 1024, tail=2 * 1024 * 1024)


@dataclass(frozen=True)
class ProcessExit:
    """How a process ended."""

    exit_code: int | None
    stdout: str
    stderr: str = ""
    timed_out: bool = False
    cancelled: bool = False

    @property
    def tail(self) -> str:
        """The last lines of everything it printed, for error messages."""
        return "\n".join((self.stdout.splitlines() + self.stderr.splitlines())[-LOG_TAIL_LINES:])


def wait_for_process(
    backend: Backend[Any],
    workspace: Workspace,
    name: str,
    *,
    deadline: float,
    control: TaskControl,
    clock: Callable[[], float],
    log: TaskLog,
    tick: Callable[[], None] = lambda: None,
) -> ProcessExit | None:
    """Wait for process ``name`` while copying its output into ``log``.

    Stops it when ``deadline`` (on ``clock``) passes or the operator cancels; returns None when the
    daemon detaches (it keeps running, and the next daemon waits for it again). A poll that fails in
    a passing way (a rate limit, an outage) is retried with back-off until the deadline; a lasting
    failure raises BackendError, a vanished workspace WorkspaceLost. ``tick`` runs between polls
    (progress edits).
    """
    stream = backend.follow_output(workspace, name, log)
    delay = backend.poll_interval
    failing = False
    timed_out = cancelled = False
    exit_code: int | None = None
    try:
        while True:
            try:
                exit_code = backend.poll_process(workspace, name)
            except WorkspaceLost:
                raise
            except BackendError as exc:
                if not exc.retryable:
                    raise
                delay = min(max(delay, backend.poll_interval) * 2, MAX_POLL_BACKOFF)
                if not failing:
                    log.write(
                        f"a poll of {name} in {workspace.handle} failed ({exc}); polling again with back-off"
                    )
                failing = True
            else:
                if failing:
                    log.write(f"{workspace.handle} answers again")
                    failing = False
                    delay = backend.poll_interval
                if exit_code is not None:
                    break
            if control.detach.is_set():
                log.write(f"detached from {name} in {workspace.handle}; it keeps running")
                stream.close(finished=False)
                return None
            if control.cancel.is_set():
                log.write(f"cancelled: stopping {name} in {workspace.handle}")
                cancelled = True
            elif clock() >= deadline:
                log.write(f"deadline passed: stopping {name} in {workspace.handle}")
                timed_out = True
            if cancelled or timed_out:
                exit_code = backend.kill_process(workspace, name)
                break
            tick()
            control.wait(max(0.0, min(delay, deadline - clock())))
    except BaseException:
        stream.close(finished=False)
        raise
    stream.close(finished=True)
    output = backend.output(workspace, name, OUTPUT_BOUNDS)
    log.write(f"{name} in {workspace.handle} exited with code {exit_code}")
    if output.left_out:
        log.write(
            f"{name} printed more than the daemon keeps: {output.left_out} bytes of its output left out "
            f"(kept: the first {OUTPUT_BOUNDS.head} and last {OUTPUT_BOUNDS.tail} bytes of each stream)"
        )
    return ProcessExit(exit_code, output.stdout, output.stderr, timed_out=timed_out, cancelled=cancelled)


def take_summary(backend: Backend[Any], workspace: Workspace) -> str | None:
    """Read and remove the agent's summary file, so that it is never committed.

    Anything but a regular file (a link the agent pointed at a secret, a directory) is only removed.
    """
    # One byte over the limit tells a summary that was cut from one that fits exactly.
    data = backend.read_file(workspace, SUMMARY_FILE, SUMMARY_LIMIT + 1)
    backend.delete_file(workspace, SUMMARY_FILE)
    if data is None:
        return None
    if len(data) <= SUMMARY_LIMIT:
        return data.decode("utf-8", "replace")
    kept = data[:SUMMARY_LIMIT].decode("utf-8", "ignore").rstrip()
    return f"{kept}\n\n_(The summary was cut here: the agent wrote more than {SUMMARY_LIMIT // 1024} KiB.)_"


def what_changed(
    backend: Backend[Any],
    workspace: Workspace,
    log: TaskLog,
    summary_found: bool,
    exclude: tuple[str, ...] = NEVER_COMMITTED,
) -> Changes:
    changes = backend.changes(workspace, exclude)
    log.write(
        f"{len(changes.files)} changed file(s); summary {'found' if summary_found else 'absent'}"
        + ("; unpushed commits" if changes.ahead else "")
    )
    return changes


def has_changes(changes: Changes) -> bool:
    """Worth a push: files changed, or commits the remote lacks (a publish a crash cut short)."""
    return bool(changes.files) or changes.ahead


def publish(
    backend: Backend[Any],
    workspace: Workspace,
    request: PushRequest,
    *,
    repo: str,
    log: TaskLog,
    on_rebased: Callable[[Rebased], None] = lambda _r: None,
) -> Pushed:
    """Commit what changed and push the branch, fast-forward only; safe to repeat after a crash.

    When the push finds the branch moved on the remote (someone pushed while Claude worked), the
    backend puts this run's commits on top of the new head and the push is tried again, at most
    ``MOVED_ATTEMPTS`` times; ``on_rebased`` records each replay before the next push. Any other
    refusal (a protected branch, a hook), a ``RebaseConflict`` or ``CannotRebase`` is raised.
    """
    name, email = request.author
    rebased: list[Rebased] = []
    while True:
        try:
            pushed = backend.commit_and_push(workspace, request, log)
        except PushRejected as exc:
            if not exc.moved or len(rebased) >= MOVED_ATTEMPTS:
                raise
            log.write(f"{request.branch} moved on {repo} while Claude worked: putting its commits on top")
            again = backend.rebase_onto_remote(workspace, request, log)
            rebased.append(again)
            on_rebased(again)
            workspace = replace(workspace, base_sha=again.onto)
            continue
        break
    if pushed.committed:
        log.write(f"committed {pushed.sha[:12]} as {name} <{email}>")
    log.write(f"pushed {pushed.sha[:12]} to {repo} {request.branch}")
    return replace(pushed, rebased=tuple(rebased))


def remove_workspace(
    backend: Backend[Any],
    task_id: str,
    log: TaskLog | None,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> list[str]:
    """Remove everything of a task, retrying passing failures; never raises (it runs on every ending)."""
    for attempt in range(1, REMOVE_ATTEMPTS + 1):
        try:
            removed = backend.remove(task_id, log)
        except BackendError as exc:
            if exc.retryable and attempt < REMOVE_ATTEMPTS:
                sleep(backend.poll_interval * attempt)
                continue
            problem = str(exc)
        except Exception as exc:  # cleanup runs on every path out of a task: it must not raise
            problem = f"{type(exc).__name__}: {exc}"
        else:
            for item in removed:
                _say(log, f"removed {item}")
            return removed
        break
    _say(log, f"could not remove the workspace of task {task_id}: {problem}", warning=True)
    return []


def _say(log: TaskLog | None, message: str, *, warning: bool = False) -> None:
    """Into the task's log when there is one (a task ending), else the daemon's (reconcile)."""
    if log is not None:
        log.write(message)
    elif warning:
        logger.warning("%s", message)
    else:
        logger.debug("%s", message)  # the caller says what reconcile removed


def reconcile(
    backend: Backend[Any], live_task_ids: set[str], *, sleep: Callable[[float], None] = time.sleep
) -> list[str]:
    """Remove whatever of ours no live task owns (a crash between finishing and cleaning up)."""
    try:
        ours = backend.list_ours()
    except BackendError as exc:
        logger.warning("could not list leftovers: %s", exc)
        return []
    removed: list[str] = []
    for task_id in sorted(ours - live_task_ids):
        removed.extend(remove_workspace(backend, task_id, None, sleep=sleep))
    return removed
