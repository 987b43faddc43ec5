"""What a task's relay is made of: the real credential, a task's grant and its directory, the bounds, the
forwarder's command line."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

CONTAINER_DIR = "/relay"  # where the backend mounts a task's relay directory
SOCKET_NAME = "relay.sock"
FORWARDER_NAME = "relay-forward.js"
FORWARDER_PORT = 47800  # the forwarder's fixed port in the container: ANTHROPIC_BASE_URL names it
SECRET_NAME = "secret"
TOKEN_PREFIX = "cis-relay-"  # an opaque token, recognisable in a log or a leaked file
OAUTH_BETA = "oauth-2025-04-20"  # what the Messages API asks of OAuth callers (the CLI sends it too)
_TASK_ID = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")
UNIX_PATH_MAX = 107  # sun_path is 108 bytes with the NUL
# How many closed tasks' figures are kept for a late ``usage()`` call (oldest dropped first).
_KEPT_CLOSED = 1000
# RFC 9110 hop-by-hop headers, plus what the relay sets itself on each leg.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_NOT_FORWARDED_OUT = _HOP_BY_HOP | {"host", "content-length", "x-api-key", "authorization", "expect"}
_NOT_FORWARDED_BACK = _HOP_BY_HOP | {"content-length"}
_LIMIT_STATUSES = (429, 529)
_CAPTURE_ERROR_BYTES = 64 * 1024  # an error body is read this far for its message
_CAPTURE_JSON_BYTES = 16 * 1024 * 1024  # a non-streamed message body, for its usage


class RelayError(Exception):
    """The relay cannot do what was asked (not started, a bad task id, a socket path too long...)."""


# -- what the operator configured and what a task gets ------------------------------------------------


@dataclass(frozen=True)
class ClaudeCredential:
    """The operator's Claude credential: an API key, or an OAuth token from ``claude setup-token``.

    With both, the API key is used (as the CLI itself does when it sees both)."""

    api_key: str | None = None
    oauth_token: str | None = None

    def __post_init__(self) -> None:
        if not (self.api_key or self.oauth_token):
            msg = "the relay needs a Claude credential: ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN"
            raise RelayError(msg)

    @property
    def is_oauth(self) -> bool:
        return not self.api_key

    @property
    def env_name(self) -> str:
        """The variable a container's CLI reads its (relay) credential from."""
        return "CLAUDE_CODE_OAUTH_TOKEN" if self.is_oauth else "ANTHROPIC_API_KEY"

    def __repr__(self) -> str:  # never print the values
        return f"ClaudeCredential({'oauth' if self.is_oauth else 'api_key'})"


@dataclass(frozen=True)
class RelayGrant:
    """What one task's containers get: a directory to mount at ``/relay`` and the env to set.

    ``env`` holds the token only; the backend adds ``ANTHROPIC_BASE_URL=http://127.0.0.1:<port>`` (it
    chooses the forwarder's port) and starts the command through :func:`forwarded_command`."""

    task_id: str
    directory: Path
    token: str
    env: dict[str, str]

    @property
    def socket(self) -> Path:
        return self.directory / SOCKET_NAME

    def __repr__(self) -> str:
        return f"RelayGrant(task_id={self.task_id!r}, directory={str(self.directory)!r})"


def forwarded_command(
    argv: list[str], *, port: int = FORWARDER_PORT, node: str = "node", mount: str = CONTAINER_DIR
) -> list[str]:
    """``argv`` started through the forwarder copied into the task's relay directory (mounted at
    ``mount``): the command starts once 127.0.0.1:``port`` listens, and its exit code is the result."""
    return [
        node,
        f"{mount}/{FORWARDER_NAME}",
        "--port",
        str(port),
        "--socket",
        f"{mount}/{SOCKET_NAME}",
        "--",
        *argv,
    ]


@dataclass(frozen=True)
class RelayBounds:
    """How long and how much the relay waits for or accepts (the defaults suit the real CLI)."""

    max_body_bytes: int = 32 * 1024 * 1024  # the Messages API's own request limit
    idle_timeout_s: float = 30.0  # a connection that sends nothing (or stops mid-headers) is closed
    body_timeout_s: float = 60.0  # the whole request body must arrive within this
    write_timeout_s: float = 120.0  # a client that stops reading the answer is dropped
    connect_timeout_s: float = 15.0  # to the upstream API
    read_timeout_s: float = 600.0  # upstream silence (the CLI's own default API timeout is 600 s)
    max_connections: int = 256  # to the upstream API, all tasks together


def _check_task_id(task_id: str) -> None:
    if not _TASK_ID.match(task_id):
        msg = f"not a task id the relay accepts (letters, digits, '_', '.', '-'): {task_id!r}"
        raise RelayError(msg)


def _private_dir(path: Path, mode: int) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True, mode=mode)
        if path.is_symlink() or not path.is_dir():
            msg = f"{path} is not a directory"
            raise RelayError(msg)
        os.chmod(path, mode)  # mkdir's mode passes through the umask, and an old one may differ
    except OSError as exc:
        msg = f"cannot prepare the relay directory {path}: {exc.strerror or exc}"
        raise RelayError(msg) from None


def _write_file(path: Path, data: bytes, mode: int) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(temporary, mode)
    os.replace(temporary, path)


def _load_secret(path: Path) -> bytes:
    """The HMAC secret: created once (0600), then read back by every later daemon."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode):
            msg = f"{path} is not a regular file"
            raise RelayError(msg) from None
        if info.st_mode & 0o077:
            os.chmod(path, 0o600)
        value = path.read_bytes().strip()
        if len(value) < 32:
            msg = f"the relay secret {path} is damaged (too short): remove it (running tasks' tokens change)"
            raise RelayError(msg) from None
        return value
    value = secrets.token_hex(32).encode()
    with os.fdopen(fd, "wb") as handle:
        handle.write(value + b"\n")
        handle.flush()
        os.fsync(handle.fileno())
    return value


def forwarder_source() -> bytes:
    """The in-container forwarder (``data/relay-forward.js``)."""
    return resources.files("claude_issue_solver").joinpath("data", FORWARDER_NAME).read_bytes()
