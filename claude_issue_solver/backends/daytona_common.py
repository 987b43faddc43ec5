"""The Daytona backend's shared pieces: its names and files, where a task's files live in its sandbox,
its workspace, and the helpers every part uses (errors, quoting, commands; see
:mod:`claude_issue_solver.backends.daytona`)."""

from __future__ import annotations

import logging
import re
import shlex
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

from daytona import (
    Daytona,
    DaytonaAuthenticationError,
    DaytonaBadGatewayError,
    DaytonaConfig,
    DaytonaConnectionError,
    DaytonaError,
    DaytonaForbiddenError,
    DaytonaGitAuthFailedError,
    DaytonaInternalServerError,
    DaytonaNotFoundError,
    DaytonaRateLimitError,
    DaytonaServiceUnavailableError,
    DaytonaTimeoutError,
    Sandbox,
)

from claude_issue_solver.backends.base import (
    NAME_PREFIX,
    BackendError,
    OutputBounds,
    Workspace,
    checked_id,
    checked_process,
)
from claude_issue_solver.backends.settings import DaytonaSettings
from claude_issue_solver.credentials import GitCredential
from claude_issue_solver.logs import REDACTOR

logger = logging.getLogger(__name__)

T = TypeVar("T")

SANDBOX_PREFIX = NAME_PREFIX
REPO_DIR = "repo"
TASK_DIR = ".claude-issue-solver"
STDIN_SUFFIX = "stdin"
STDOUT_SUFFIX = "out"
STDERR_SUFFIX = "err"
LOG_SUFFIX = "log"  # what the process's command printed itself (a failed cd): never the session's logs
KEPT_OUTPUT_SUFFIX = "kept"  # the bounded copy of an output file that is downloaded
EXIT_SUFFIX = "exit"
ENV_SUFFIX = "env"
KEPT_SUFFIX = "kept.tar"  # a kept directory, carried in before a process and out after it
KEPT_KEY_SUFFIX = "kept-key"
KEPT_DIR = ".claude-kept"  # under the work directory, beside (never inside) the repository
FROM_DEFAULT_FILE = "from_default"  # STATE_DIR/tasks/<id>/: Workspace.from_default, for a restart
# The sandbox is there for the task alone, so root there is no escalation; without this the CLI
# refuses --dangerously-skip-permissions in an image whose user is root.
SANDBOX_ENV = {"IS_SANDBOX": "1"}
CREATE_TIMEOUT_SECONDS = 180.0  # a cold snapshot on a busy runner takes a while to start
# A sandbox stops after this long without activity beyond TASK_TIMEOUT (our polls are activity), and is
# deleted a day after stopping: long enough for a daemon that was down to come back and publish.
AUTO_STOP_MARGIN_MINUTES = 30
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Downloads are capped: only the start and the end of an output file are copied out of the sandbox
# (``_download_output``), and a kept directory's archive larger than this is not carried out.
KEPT_ARCHIVE_LIMIT = 256 * 1024 * 1024
# What the task log gets of a process here (no live stream: copied when it ended); output() asked for
# the same bounds reuses that download.
_LOG_BOUNDS = OutputBounds(head=64 * 1024, tail=2 * 1024 * 1024)
# How the toolbox's git says the branch moved on the remote (not a protected branch or a hook).
_MOVED_RE = re.compile(r"non-fast-forward|fetch first", re.IGNORECASE)
_DELETED_STATES = ("destroyed", "destroying")
_GONE_STATES = (*_DELETED_STATES, "error", "build_failed")  # nothing of the run can be recovered
_RESTARTABLE_STATES = ("stopped", "archived", "paused")
DEFAULT_API_HOST = "api.anthropic.com"  # where the Claude CLI goes without ANTHROPIC_BASE_URL


@dataclass(frozen=True)
class _Paths:
    """Where a task's files live in its sandbox, from the sandbox's work directory."""

    work_dir: str

    @property
    def repo(self) -> str:
        return f"{self.work_dir}/{REPO_DIR}"

    @property
    def task_dir(self) -> str:
        return f"{self.work_dir}/{TASK_DIR}"

    def process_file(self, name: str, suffix: str) -> str:
        return f"{self.task_dir}/{checked_process(name)}.{suffix}"


@dataclass(frozen=True)
class DaytonaWorkspace(Workspace):
    """A task's sandbox: its id (or name, when Daytona could not be asked) and its work directory."""

    sandbox_id: str
    work_dir: str | None  # None until asked (after a restart during an outage)


def _connect(settings: DaytonaSettings) -> Daytona:
    if not settings.api_key:
        msg = "DAYTONA_API_KEY is not set: expected a Daytona API key when BACKEND=daytona"
        raise BackendError(msg)
    settings = DaytonaConfig(
        api_key=settings.api_key,
        api_url=settings.api_url,
        target=settings.target,
        # We poll the agent's command ourselves; the event stream (a Socket.IO connection per client) would
        # only speed up the SDK's own waits for state changes, which a task hardly ever makes.
        use_deprecated_polling=True,
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return Daytona(settings)
    except DaytonaError as exc:
        raise _backend_error(exc, f"connecting to {settings.api_url}") from None


def _sdk(doing: str, call: Callable[[], T]) -> T:
    try:
        return call()
    except DaytonaError as exc:
        raise _backend_error(exc, doing) from None


def _passing(exc: Exception) -> bool:
    """A failure another attempt may not meet: rate limits, timeouts, connection trouble, 5xx."""
    if isinstance(
        exc,
        (
            DaytonaRateLimitError,
            DaytonaTimeoutError,
            DaytonaConnectionError,
            DaytonaInternalServerError,
            DaytonaBadGatewayError,
            DaytonaServiceUnavailableError,
        ),
    ):
        return True
    status = getattr(exc, "status_code", None)
    return isinstance(status, int) and status >= 500


def _backend_error(exc: Exception, doing: str, credential: GitCredential | None = None) -> BackendError:
    """Daytona's exception as our own, with what we were doing and what to check."""
    detail = _scrub(str(exc), credential)
    if isinstance(exc, DaytonaGitAuthFailedError):
        return BackendError(f"GitHub refused the git credential while {doing}: {detail}")
    if isinstance(exc, DaytonaAuthenticationError):
        msg = (
            f"Daytona rejected DAYTONA_API_KEY (401) while {doing}: {detail}; check the key "
            "(Daytona dashboard, Keys) and DAYTONA_API_URL"
        )
        return BackendError(msg)
    if isinstance(exc, DaytonaForbiddenError):
        msg = (
            f"Daytona refused {doing} (403): {detail}; the API key lacks a permission (sandboxes, snapshots)"
        )
        return BackendError(msg)
    if isinstance(exc, DaytonaNotFoundError):
        return BackendError(f"Daytona found nothing while {doing} (404): {detail}")
    if isinstance(exc, DaytonaRateLimitError):
        return BackendError(f"Daytona rate-limited us (429) while {doing}: {detail}", retryable=True)
    if isinstance(exc, (DaytonaTimeoutError, DaytonaConnectionError)):
        return BackendError(f"Daytona did not answer in time while {doing}: {detail}", retryable=True)
    if _passing(exc):
        status = getattr(exc, "status_code", None)
        return BackendError(f"Daytona failed ({status}) while {doing}: {detail}", retryable=True)
    return BackendError(f"Daytona failed while {doing}: {detail}")


def _describe(exc: Exception) -> str:
    status = getattr(exc, "status_code", None)
    return REDACTOR(f"{type(exc).__name__}" + (f" {status}" if status else "") + f": {exc}")


def _scrub(text: str, credential: GitCredential | None) -> str:
    if credential is not None and credential.password:
        text = text.replace(credential.password, "***")
    return REDACTOR(text)


def _process_command_line(paths: _Paths, name: str, argv: Sequence[str], kept: str | None = None) -> str:
    """The session command that runs process ``name``.

    The daemon runs session commands inside a long-lived shell (``. cmd.sh``), so everything happens in
    a child ``sh``: the environment file's variables stay out of the session, and ``exit`` ends only
    that child. The environment file (it may hold the Claude credential) is deleted before the process
    starts; stdin comes from its file, never through the command text; the exit code is also written to
    a file, which survives the session (a sandbox that restarts loses its sessions, not its disk).
    """
    env_file = _q(paths.process_file(name, ENV_SUFFIX))
    exit_file = _q(paths.process_file(name, EXIT_SUFFIX))
    unpack = pack = ""
    if kept is not None:
        # The kept directory comes in as an archive and goes back into it before the exit code is
        # written, so whoever sees the process ended finds the archive complete.
        archive = _q(paths.process_file(name, KEPT_SUFFIX))
        unpack = f"rm -rf {_q(kept)}; mkdir -p {_q(kept)} && tar -xf {archive} -C {_q(kept)} && "
        pack = f"tar -cf {archive} -C {_q(kept)} . ; "
    # Everything the command prints itself goes to a file too: the session's logs are never read
    # (the SDK returns them whole, however large).
    script = (
        f"exec > {_q(paths.process_file(name, LOG_SUFFIX))} 2>&1; "
        f"rm -f {exit_file}; . {env_file}; loaded=$?; rm -f {env_file}; "  # no earlier run's exit code
        f'if [ "$loaded" -eq 0 ] && {unpack}cd {_q(paths.repo)}; then '
        f"{shlex.join(argv)} < {_q(paths.process_file(name, STDIN_SUFFIX))} "
        f"> {_q(paths.process_file(name, STDOUT_SUFFIX))} 2> {_q(paths.process_file(name, STDERR_SUFFIX))}; "
        f"rc=$?; else rc=126; fi; {pack}"
        # Written aside and renamed: an exit code file that exists is whole (a reader between the
        # shell's create and its write would find it empty and call the session lost).
        f'echo "$rc" > {exit_file}.tmp && mv -f {exit_file}.tmp {exit_file}; exit "$rc"'
    )
    return f"sh -c {_q(script)} {_marker(name)}"


def _marker(name: str) -> str:
    """$0 of a process's shell: finds its command in the session after a restart."""
    return f"{NAME_PREFIX}{name}"


def _excluded(name: str, exclude: tuple[str, ...]) -> bool:
    return any(name == e or name.startswith(f"{e}/") for e in exclude)


def _state(sandbox: Sandbox) -> str:
    return str(getattr(sandbox.state, "value", sandbox.state) or "")


def _session_id(task_id: str, name: str) -> str:
    return f"{SANDBOX_PREFIX}{checked_id(task_id)}-{checked_process(name)}"


def _inside(paths: _Paths, path: str) -> str:
    parts = Path(path).parts
    if not parts or Path(path).is_absolute() or any(p in ("..", ".") for p in parts):
        msg = f"{path!r} is not a path inside the repository"
        raise BackendError(msg)
    return f"{paths.repo}/{'/'.join(parts)}"


def _prefixes(root: str, path: str) -> list[str]:
    parts = Path(path).parts
    return [f"{root}/{'/'.join(parts[: i + 1])}" for i in range(len(parts))]


def _q(value: str) -> str:
    return shlex.quote(value)


def _clean_url(url: str) -> str:
    """The URL without any user:password@ (the credential travels beside it, never in it)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
