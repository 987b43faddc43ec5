"""The steps the pipeline takes with a backend, for the backend tests: one copy for every backend."""

from __future__ import annotations

import time
from typing import Any

from claude_issue_solver.backends.base import Backend, Changes, Pushed, PushRequest, Workspace
from claude_issue_solver.credentials import GitCredential
from claude_issue_solver.logs import TaskLog
from claude_issue_solver.run.pipeline import RunSpec as Job
from claude_issue_solver.run.policy import NEVER_COMMITTED, ProcessExit, take_summary, wait_for_process
from claude_issue_solver.store.outcome import TaskControl

__all__ = ["AUTHOR", "Job", "collect", "control", "push", "wait"]

AUTHOR = ("Issue Bot", "issue-bot@example.com")


def control(*, cancel: bool = False, detach: bool = False) -> TaskControl:
    made = TaskControl()
    if cancel:
        made.cancel.set()
    if detach:
        made.detach.set()
    return made


def wait(
    backend: Backend[Any],
    workspace: Workspace,
    log: TaskLog,
    *,
    seconds: float,
    stop: TaskControl | None = None,
    name: str = "agent",
) -> ProcessExit | None:
    """The pipeline's wait for a process, on the wall clock."""
    return wait_for_process(
        backend,
        workspace,
        name,
        deadline=time.time() + seconds,
        control=stop or TaskControl(),
        clock=time.time,
        log=log,
    )


def collect(backend: Backend[Any], workspace: Workspace) -> tuple[Changes, str | None]:
    """Take the summary, then read what changed (as the pipeline does before publishing)."""
    summary = take_summary(backend, workspace)
    return backend.changes(workspace, NEVER_COMMITTED), summary


def push(
    backend: Backend[Any],
    workspace: Workspace,
    job: Job,
    log: TaskLog,
    message: str = "Fix",
    credential: GitCredential | None = None,
) -> Pushed:
    return backend.commit_and_push(workspace, request(job, message, credential), log)


def request(job: Job, message: str = "Fix", credential: GitCredential | None = None) -> PushRequest:
    """What the pipeline asks to publish: the job's branch and remote, the bot as author."""
    return PushRequest(
        branch=job.workspace.branch,
        clone_url=job.workspace.clone_url,
        message=message,
        author=AUTHOR,
        credential=credential or job.workspace.credential(),
        exclude=NEVER_COMMITTED,
    )
