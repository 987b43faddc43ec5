"""The Daytona backend's processes: each an asynchronous command in a session of its own, its exit code
also in a file, its output copied out bounded when it ended (a part of
:class:`claude_issue_solver.backends.daytona.DaytonaBackend`)."""

from __future__ import annotations

import logging
import shlex
import tarfile
import time
from typing import TYPE_CHECKING

from daytona import (
    DaytonaAuthenticationError,
    DaytonaConflictError,
    DaytonaError,
    DaytonaForbiddenError,
    DaytonaNotFoundError,
    FileDownloadRequest,
    FileUpload,
    Sandbox,
    SessionExecuteRequest,
)

from claude_issue_solver.backends.base import (
    BackendError,
    OutputBounds,
    ProcessOutput,
    ProcessSpec,
    Workspace,
    WorkspaceLost,
    checked_process,
    kept_text,
)
from claude_issue_solver.backends.daytona_common import (
    _ENV_NAME_RE,
    _LOG_BOUNDS,
    ENV_SUFFIX,
    EXIT_SUFFIX,
    KEPT_ARCHIVE_LIMIT,
    KEPT_OUTPUT_SUFFIX,
    KEPT_SUFFIX,
    LOG_SUFFIX,
    SANDBOX_ENV,
    STDERR_SUFFIX,
    STDIN_SUFFIX,
    STDOUT_SUFFIX,
    _backend_error,
    _describe,
    _marker,
    _passing,
    _Paths,
    _process_command_line,
    _q,
    _sdk,
    _session_id,
)
from claude_issue_solver.logs import TaskLog

if TYPE_CHECKING:
    from claude_issue_solver.backends.daytona import DaytonaBackend

logger = logging.getLogger(__name__)


class DaytonaProcesses:
    """The processes part of the Daytona backend (a mixin: it uses the backend's sandboxes, caches, egress
    and kept directories)."""

    # --- processes -------------------------------------------------------------------------------------

    def start_process(self, workspace: Workspace, process: ProcessSpec, log: TaskLog) -> bool:
        sandbox, paths = self._located(workspace)
        name = process.name
        session = _session_id(workspace.task_id, name)
        try:
            sandbox.process.create_session(session)
        except DaytonaConflictError:
            existing = self._find_command(sandbox, session, name)
            if existing is not None:
                self._commands[(workspace.task_id, name)] = existing
                return False
        except DaytonaError as exc:
            raise _backend_error(exc, f"creating session {session} in {workspace.handle}") from None
        self._set_egress(workspace, sandbox, offline=process.offline, log=log, why=f"before {name}")
        kept, kept_uploads = self._carry_in(workspace.task_id, paths, process)
        extra = {process.keep.env: kept} if process.keep is not None and kept else {}
        lines = []
        for key, value in {**process.env, **SANDBOX_ENV, **extra}.items():
            if _ENV_NAME_RE.match(key):
                lines.append(f"export {key}={shlex.quote(value)}\n")
            else:
                log.write(f"not passing {key!r} to {name}: not a valid variable name")
        env_file = paths.process_file(name, ENV_SUFFIX)
        stdin_file = paths.process_file(name, STDIN_SUFFIX)
        uploads = [FileUpload("".join(lines).encode(), env_file), FileUpload(process.stdin, stdin_file)]
        _sdk(
            f"uploading the environment and input of {name} to {workspace.handle}",
            lambda: sandbox.fs.upload_files([*uploads, *kept_uploads]),  # one request
        )
        request = SessionExecuteRequest(
            command=_process_command_line(paths, name, process.argv, kept), run_async=True
        )
        started = time.monotonic()
        response = _sdk(
            f"starting {name} in {workspace.handle}",
            lambda: sandbox.process.execute_session_command(session, request),
        )
        self._commands[(workspace.task_id, name)] = response.cmd_id
        log.write(
            f"started {name} in sandbox {workspace.handle}, session {session}, command {response.cmd_id} "
            f"({time.monotonic() - started:.2f}s)"
        )
        return True

    def poll_process(self, workspace: Workspace, name: str) -> int | None:
        sandbox, paths = self._located(workspace)
        session = _session_id(workspace.task_id, name)
        key = (workspace.task_id, name)
        command_id = self._commands.get(key) or self._find_command(sandbox, session, name)
        if command_id is None:
            return self._exit_without_session(workspace, paths, name)
        self._commands[key] = command_id
        try:
            command = sandbox.process.get_session_command(session, command_id)
        except DaytonaError as exc:
            if _passing(exc) or isinstance(exc, (DaytonaAuthenticationError, DaytonaForbiddenError)):
                raise _backend_error(exc, f"polling {name} in {workspace.handle}") from None
            # The command, its session or the whole sandbox is gone: find out which.
            return self._exit_without_session(workspace, paths, name, exc)
        return command.exit_code

    def kill_process(self, workspace: Workspace, name: str) -> int | None:
        # Deleting the session terminates its process group (SIGTERM, then SIGKILL).
        sandbox, _ = self._located(workspace)
        session = _session_id(workspace.task_id, name)
        try:
            sandbox.process.delete_session(session)
        except DaytonaNotFoundError:
            pass
        except DaytonaError as exc:
            logger.warning(
                "could not stop session %s: %s; removal deletes the sandbox", session, _describe(exc)
            )
        return None

    def follow_output(self, workspace: Workspace, name: str, log: TaskLog) -> _CopyAtEnd:
        return _CopyAtEnd(self, workspace, name, log)

    def output(self, workspace: Workspace, name: str, bounds: OutputBounds) -> ProcessOutput:
        key = (workspace.task_id, name)
        cached = self._outputs.pop(key, None)
        if cached is not None and cached[0] == bounds:
            return cached[1]
        sandbox, paths = self._located(workspace)
        return self._download_output(sandbox, paths, name, workspace.task_id, bounds)[0]

    # --- helpers: processes ----------------------------------------------------------------------------

    def _find_command(self, sandbox: Sandbox, session: str, name: str) -> str | None:
        """The id of the process's command in its session (found by its marker), or None."""
        try:
            found = sandbox.process.get_session(session)
        except DaytonaNotFoundError:
            return None
        except DaytonaError as exc:
            raise _backend_error(exc, f"reading session {session} of {sandbox.name}") from None
        ours = [c.id for c in found.commands or [] if _marker(name) in (c.command or "")]
        return ours[-1] if ours else None

    def _exit_without_session(
        self, workspace: Workspace, paths: _Paths, name: str, cause: Exception | None = None
    ) -> int:
        """The process's command cannot be asked about: the sandbox vanished, or it restarted (a stop ends
        every session) -- then the exit code file the command wrote, if it got that far, still tells."""
        with self._lock:
            self._sandboxes.pop(workspace.task_id, None)
        sandbox = self._sandbox(workspace)  # WorkspaceLost when the sandbox itself is gone
        self._ensure_started(sandbox)
        exit_file = paths.process_file(name, EXIT_SUFFIX)
        response = _sdk(
            f"reading the exit code of {name} in {workspace.handle}",
            lambda: sandbox.fs.download_files([FileDownloadRequest(source=exit_file)])[0],
        )
        text = response.result.decode(errors="replace").strip() if isinstance(response.result, bytes) else ""
        if response.error is None and text.lstrip("-").isdigit():
            logger.info("the session of %s in %s is gone, but it had finished", name, workspace.handle)
            return int(text)
        reason = f" ({_describe(cause)})" if cause is not None else ""
        msg = f"the session of {name} in sandbox {workspace.handle} is gone and it left no exit code{reason}"
        raise WorkspaceLost(msg)

    def _download_output(
        self, sandbox: Sandbox, paths: _Paths, name: str, task_id: str, bounds: OutputBounds
    ) -> tuple[ProcessOutput, str]:
        """The process's stdout and stderr, and what its command printed itself, each bounded: one exec
        cuts every file to its first ``bounds.head`` and last ``bounds.tail`` bytes in the sandbox, one
        request downloads the cut copies -- never a whole file of any size. A kept directory the
        process left comes back in the same request when it is not larger than KEPT_ARCHIVE_LIMIT (see
        ``_carry_out``). What is missing is empty."""
        suffixes = (STDOUT_SUFFIX, STDERR_SUFFIX, LOG_SUFFIX)
        keep = bounds.head + bounds.tail
        cut = " ".join(
            [
                f"cd {_q(paths.task_dir)} || exit 3;",
                f"for f in {' '.join(_q(f'{checked_process(name)}.{x}') for x in suffixes)}; do",
                's=$(wc -c 2>/dev/null < "$f") || s=0; s=$((s + 0));',
                f'if [ "$s" -gt {keep} ]; then {{ head -c {bounds.head} "$f"; tail -c {bounds.tail} "$f"; }}',
                f'> "$f.{KEPT_OUTPUT_SUFFIX}"; else cat "$f" > "$f.{KEPT_OUTPUT_SUFFIX}" 2>/dev/null; fi;',
                'printf "%s " "$s"; done;',
                f"wc -c 2>/dev/null < {_q(f'{checked_process(name)}.{KEPT_SUFFIX}')} || echo -1",
            ]
        )
        try:
            response = sandbox.process.exec(cut)
            sizes = [int(word) for word in (response.result or "").split()]
            if response.exit_code != 0 or len(sizes) != len(suffixes) + 1:
                msg = f"cutting the output files failed (exit {response.exit_code}): {response.result!r:.200}"
                raise BackendError(msg)
            requests = [
                FileDownloadRequest(source=f"{paths.process_file(name, x)}.{KEPT_OUTPUT_SUFFIX}")
                for x in suffixes
            ]
            archive_size = sizes[-1]
            if 0 <= archive_size <= KEPT_ARCHIVE_LIMIT:
                requests.append(FileDownloadRequest(source=paths.process_file(name, KEPT_SUFFIX)))
            elif archive_size > KEPT_ARCHIVE_LIMIT:
                logger.warning(
                    "the kept directory %s left in %s is %d bytes, over %d: not carried out",
                    name,
                    sandbox.name,
                    archive_size,
                    KEPT_ARCHIVE_LIMIT,
                )
            responses = sandbox.fs.download_files(requests)
        except (DaytonaError, BackendError, ValueError) as exc:
            text = f"(the output of {name} is unavailable: {_describe(exc)})"
            return ProcessOutput("", text), ""
        if len(responses) > len(suffixes):
            try:
                self._carry_out(task_id, name, responses[len(suffixes)])
            except (OSError, tarfile.TarError) as exc:
                logger.warning("could not carry the kept directory of %s out: %s", name, exc)
        texts: list[str] = []
        left_out = 0
        for size, response in zip(sizes[: len(suffixes)], responses[: len(suffixes)], strict=True):
            data = response.result if isinstance(response.result, bytes) else b""
            missing = max(0, size - len(data)) if size > keep else 0
            head, tail = (data[: bounds.head], data[bounds.head :]) if missing else (data, b"")
            texts.append(kept_text(head, tail, missing))
            left_out += missing
        return ProcessOutput(texts[0], texts[1], left_out), texts[2]


class _CopyAtEnd:
    """The toolbox streams no output while a process runs here: copy it into the log when it ended."""

    def __init__(self, backend: DaytonaBackend, workspace: Workspace, name: str, log: TaskLog) -> None:
        self.backend, self.workspace, self.name, self.log = backend, workspace, name, log

    def close(self, *, finished: bool) -> None:
        if not finished:
            return
        backend, key = self.backend, (self.workspace.task_id, self.name)
        try:
            sandbox, paths = backend._located(self.workspace)
        except BackendError as exc:
            self.log.write(f"the output of {self.name} is unavailable: {exc}")
            return
        output, logs = backend._download_output(
            sandbox, paths, self.name, self.workspace.task_id, _LOG_BOUNDS
        )
        if logs.strip():
            self.log.write_raw(logs if logs.endswith("\n") else logs + "\n")
        backend._outputs[key] = (_LOG_BOUNDS, output)  # output() needs it next: one download, not two
        for text in (output.stderr, output.stdout):
            if text:
                self.log.write_raw(text if text.endswith("\n") else text + "\n")
