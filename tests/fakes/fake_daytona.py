"""A loopback Daytona: the control-plane API and the sandbox toolbox, doing the work for real.

Why this exists: the Daytona backend talks to Daytona only through the official ``daytona`` SDK, and
mocking the SDK would test our assumptions about it rather than what it sends and how it reads the
answers (the JSON field names, the multipart formats of file transfers, the exception a 404 or a 429
turns into). So this module serves, on 127.0.0.1, the HTTP paths the SDK (0.226.x) calls and does the
work for real: each sandbox is a directory, commands are real ``bash`` processes, git operations run
the real ``git`` against whatever URL they are given (the loopback GitHub in the tests).

Point the real SDK at it with::

    fake = FakeDaytona(tmp_path / "daytona").start()
    daytona = Daytona(DaytonaConfig(api_key=fake.api_key, api_url=fake.api_url, target="us",
                                    use_deprecated_polling=True))  # no Socket.IO here

What it answers (paths as the SDK's generated clients send them):

* Control plane under ``/api``: ``POST /sandbox`` (from a snapshot), ``GET /sandbox`` (``labels``
  filter, one page), ``GET|DELETE /sandbox/{idOrName}``, ``POST /sandbox/{id}/start|stop``,
  ``GET /sandbox/{id}/toolbox-proxy-url``, ``PUT /sandbox/{id}/labels``,
  ``POST /sandbox/{id}/network-settings``,
  ``POST /sandbox/{id}/autostop|autodelete|autoarchive/{minutes}``, ``POST /snapshots``,
  ``GET /snapshots``, ``GET|DELETE /snapshots/{idOrName}``. No Socket.IO, no object storage (so no
  snapshot whose Dockerfile ``COPY``s local files).
* The toolbox under ``/toolbox/{sandboxId}`` (the sandboxes' ``toolboxProxyUrl``): ``/work-dir``,
  ``/user-home-dir``, ``/version``, ``/process/execute``, ``/process/session[/{sid}[/exec|/command/
  {cid}[/logs]]]``, ``/git/clone|status|add|commit|push|branches|checkout|remotes``,
  ``/files`` (list, delete), ``/files/info``, ``/files/folder``, ``/files/permissions``,
  ``/files/bulk-upload`` (multipart in) and ``/files/bulk-download`` (multipart out).

How a sandbox maps onto the host (deliberately explicit, so nobody relies on it by accident):

* Each sandbox is a directory ``root/sandboxes/<id>`` standing for its ``/``. Its home (and work
  directory) is ``<dir>/home/daytona``, its ``/tmp`` is ``<dir>/tmp``, and ``<dir>/usr/local/bin``
  holds ``claude`` (the fake CLI, ``fake_claude.sh``) and comes first on the ``PATH`` of its commands.
* ``/work-dir`` and ``/user-home-dir`` report the *host* path of that home, so absolute paths a client
  builds from them work unchanged in file and git calls and inside commands. Other paths given to file
  and git calls: an absolute path outside the sandbox directory is taken as relative to the sandbox's
  ``/`` (``/home/daytona/x`` -> ``<dir>/home/daytona/x``); a relative path is relative to the home.
  Nothing may resolve outside the sandbox directory (403), so an agent's symlink cannot read the host.
* Command strings are not rewritten: a command runs as ``bash -c <command>`` with the home as working
  directory and an environment made of ``PATH``, ``HOME``, ``TMPDIR``, ``LANG``, the sandbox's
  ``env`` and the request's ``envs`` -- none of the test process's environment leaks in. Processes run
  as the test's own user (so as root in a root container: the fake ``claude`` then needs
  ``IS_SANDBOX=1``, like the real one).
* Session commands run one ``bash`` each (the real daemon feeds them to one long-lived shell; state
  such as ``cd`` does not carry over here). As on the real daemon, the command text is written to
  ``<dir>/.daytona/sessions/<sid>/<cid>/cmd.sh`` inside the sandbox, with its output next to it, and
  deleting a session terminates its process groups (SIGTERM, then SIGKILL).
* git credentials given to clone/push reach git through a ``GIT_ASKPASS`` helper outside the sandbox
  and that process's environment, as the real daemon does: never a URL or ``.git/config``. Hooks are
  disabled for clone and push (``core.hooksPath=/dev/null``), also like the daemon.

Egress (the sandbox firewall): ``networkBlockAll``, ``networkAllowList`` (IPv4 CIDRs) and
``domainAllowList`` are taken at creation and changed by ``POST /sandbox/{id}/network-settings`` as the
SDK documents it: a list given replaces that list and unblocks, ``networkBlockAll: false`` opens
everything (clearing both lists), ``true`` blocks everything. The fake cannot hold a process's sockets
to it, but it enforces it where it does the network work itself -- the toolbox's git clone and push
fail ("Could not resolve host") when the remote's host is not allowed -- and it records which egress
the sandbox had when each command, session command, clone or push ran (:meth:`FakeDaytona.egress_log`).

Faults for tests: :meth:`FakeDaytona.fail_next` (the next requests under a path prefix answer with a
status), :meth:`FakeDaytona.vanish` (a sandbox disappears: 404 from then on). Every request is recorded
in :attr:`FakeDaytona.requests` (with the sandbox it concerned) so tests can count them.
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import ipaddress
import json
import logging
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from claude_issue_solver.demo_world.images import FAKE_CLAUDE_SCRIPT
from claude_issue_solver.demo_world.loopback import LoopbackFake, LoopbackHandler, LoopbackServer

__all__ = ["FAKE_CLAUDE", "Egress", "EgressEvent", "FakeDaytona", "RecordedRequest"]

_log = logging.getLogger(__name__)

#: The fake Claude Code CLI every sandbox gets as ``claude``.
FAKE_CLAUDE = FAKE_CLAUDE_SCRIPT  # the same fake CLI as the fake agent image
API_PREFIX = "/api"
TOOLBOX_PREFIX = "/toolbox"
SANDBOX_USER = "daytona"
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_GIT_TIMEOUT = 120.0
_KILL_GRACE = 1.0
_SOURCE_API = "DAYTONA_API"
_SOURCE_DAEMON = "DAYTONA_DAEMON"
_ASKPASS = """#!/bin/sh
case "$1" in
    Username*) printf '%s\\n' "$FAKE_DAYTONA_GIT_USERNAME" ;;
    *) printf '%s\\n' "$FAKE_DAYTONA_GIT_PASSWORD" ;;
esac
"""
# git status --porcelain=v2 letters -> the toolbox's FileStatus values.
_STATUS_NAMES = {
    ".": "Unmodified",
    "M": "Modified",
    "T": "Modified",
    "A": "Added",
    "D": "Deleted",
    "R": "Renamed",
    "C": "Copied",
    "U": "Updated but unmerged",
    "?": "Untracked",
}


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake answered. ``sandbox_id`` is the sandbox it concerned, when there was one."""

    method: str
    path: str
    query: dict[str, list[str]]
    status: int
    sandbox_id: str | None = None

    @property
    def toolbox(self) -> bool:
        return self.path.startswith(TOOLBOX_PREFIX + "/")


@dataclass(frozen=True)
class Egress:
    """A sandbox's outbound network policy, as Daytona stores it."""

    block_all: bool = False
    allow_list: str | None = None  # IPv4 CIDRs, comma-separated
    domains: str | None = None  # domain names (``*.example.com`` wildcards), comma-separated

    @property
    def open(self) -> bool:
        return not self.block_all and not self.allow_list and not self.domains

    def reaches(self, host: str) -> bool:
        """Whether a connection to ``host`` (a name or an IPv4 address) gets out."""
        if self.open:
            return True
        if self.block_all:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            names = [d.strip().lower() for d in (self.domains or "").split(",") if d.strip()]
            host = host.lower()
            return any(host == n or (n.startswith("*.") and host.endswith(n[1:])) for n in names)
        cidrs = [c.strip() for c in (self.allow_list or "").split(",") if c.strip()]
        return any(address in ipaddress.ip_network(c, strict=False) for c in cidrs)

    def changed(self, body: Mapping[str, Any]) -> Egress:
        """This policy after an update with ``body`` (the SDK's documented semantics)."""
        block_all, allow_list, domains = self.block_all, self.allow_list, self.domains
        if body.get("networkBlockAll") is True:
            block_all = True
        elif body.get("networkBlockAll") is False:
            block_all, allow_list, domains = False, None, None
        if body.get("networkAllowList") is not None:
            block_all, allow_list = False, str(body["networkAllowList"]) or None
        if body.get("domainAllowList") is not None:
            block_all, domains = False, str(body["domainAllowList"]) or None
        return Egress(block_all, allow_list, domains)


@dataclass(frozen=True)
class EgressEvent:
    """What happened under which egress: ``what`` is ``create``, ``network-settings``, ``exec`` (a
    command), ``session:<sessionId>`` (a session command started), ``git-clone`` or ``git-push``."""

    sandbox_id: str
    what: str
    egress: Egress


class _Failure(Exception):
    """Ends a request with an error answer: ``{"message", "statusCode", "code"?, "source"}``."""

    def __init__(self, status: int, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


@dataclass
class _Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def json(self) -> dict[str, Any]:
        if not self.body:
            return {}
        try:
            data = json.loads(self.body)
        except ValueError:
            raise _Failure(400, "the request body is not JSON") from None
        if not isinstance(data, dict):
            raise _Failure(400, "the request body is not a JSON object")
        return data


@dataclass
class _Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


def _json(status: int, data: Any) -> _Response:
    return _Response(status, json.dumps(data).encode())


@dataclass
class _Command:
    id: str
    command: str
    directory: Path
    process: subprocess.Popen[bytes] | None = None
    exit_code: int | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def output(self, name: str) -> str:
        try:
            return (self.directory / name).read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "command": self.command, "exitCode": self.exit_code}


@dataclass
class _Session:
    id: str
    commands: dict[str, _Command] = field(default_factory=dict)


@dataclass
class _Sandbox:
    id: str
    name: str
    dir: Path
    labels: dict[str, str]
    env: dict[str, str]
    snapshot: str | None
    created_at: str
    state: str = "started"
    auto_stop_interval: int = 15
    auto_archive_interval: int = 10080
    auto_delete_interval: int = -1
    egress: Egress = field(default_factory=Egress)
    sessions: dict[str, _Session] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.dir / "home" / SANDBOX_USER

    @property
    def bin(self) -> Path:
        return self.dir / "usr" / "local" / "bin"

    @property
    def tmp(self) -> Path:
        return self.dir / "tmp"


@dataclass
class _Snapshot:
    id: str
    name: str
    image_name: str | None
    dockerfile: str | None
    created_at: str
    state: str = "active"


@dataclass
class _Fault:
    prefix: str
    status: int
    remaining: int
    message: str
    method: str | None
    retry_after: int | None


class _Handler(LoopbackHandler):
    """Reads a whole request, hands it to :class:`FakeDaytona`, writes the answer with a length."""

    def dispatch(self) -> None:
        body = self.read_body()
        split = urlsplit(self.path)
        request = _Request(
            method=self.command,
            path=unquote(split.path),
            query=parse_qs(split.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        response = self.server.fake._handle(request)
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        if response.status != 204:
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if response.status != 204 and response.body:
            self.wfile.write(response.body)


_Route = tuple[str, re.Pattern[str], Callable[..., _Response]]


class FakeDaytona(LoopbackFake[RecordedRequest]):
    """Daytona's API and toolbox over loopback HTTP; see the module docstring for scope and mapping.

    The socket is bound in the constructor, so :attr:`api_url` is known before :meth:`start`. All
    state sits behind one re-entrant lock; every public method is thread-safe.
    """

    def __init__(
        self,
        root: Path,
        *,
        api_key: str = "dtn-test-key",
        snapshots: Iterable[str] = ("claude-issue-solver",),
        claude: Path | None = FAKE_CLAUDE,
        host: str = "127.0.0.1",
        port: int = 0,
        organization_id: str = "org-fake",
    ) -> None:
        """``root``: where sandbox directories are made. ``snapshots``: names that exist (active) from
        the start; creating a sandbox from any other snapshot fails as on Daytona. ``claude``: the
        script each sandbox gets as ``claude`` (None: none)."""
        self.root = Path(root)
        self.api_key = api_key
        self.organization_id = organization_id
        self._claude = claude
        self._lock = threading.RLock()
        self._sandboxes: dict[str, _Sandbox] = {}
        self._snapshots: dict[str, _Snapshot] = {}
        self._faults: list[_Fault] = []
        self._requests: list[RecordedRequest] = []
        self._deleted: list[str] = []
        self._egress_log: list[EgressEvent] = []
        self._known: set[str] = set()  # every sandbox id ever made, to attribute requests after it is gone
        self._private = self.root / ".fake-daytona"  # outside every sandbox: the askpass helper
        self._private.mkdir(parents=True, exist_ok=True)
        os.chmod(self._private, 0o700)
        self._askpass = self._private / "askpass.sh"
        self._askpass.write_text(_ASKPASS)
        self._askpass.chmod(0o700)
        for name in snapshots:
            self._add_snapshot(name, image_name="claude-issue-solver:fake", dockerfile=None, state="active")
        self._server = LoopbackServer(self, (host, port), _Handler)
        bound_host, bound_port = self._server.server_address[:2]
        self.url = f"http://{bound_host}:{bound_port}"
        self.api_url = f"{self.url}{API_PREFIX}"
        self.toolbox_url = f"{self.url}{TOOLBOX_PREFIX}"
        self._api_routes: list[_Route] = self._build_api_routes()
        self._toolbox_routes: list[_Route] = self._build_toolbox_routes()

    # ---- lifecycle -------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop serving, cut keep-alive connections and kill every process a sandbox still runs."""
        super().stop()
        with self._lock:
            sandboxes = list(self._sandboxes.values())
        for sandbox in sandboxes:
            self._kill_all(sandbox)

    # ---- what tests look at and change -----------------------------------------------------------

    @property
    def sandboxes(self) -> dict[str, dict[str, Any]]:
        """A snapshot of the existing sandboxes: id -> {name, labels, env, state, snapshot, dir}."""
        with self._lock:
            return {
                sb.id: {
                    "name": sb.name,
                    "labels": dict(sb.labels),
                    "env": dict(sb.env),
                    "state": sb.state,
                    "snapshot": sb.snapshot,
                    "dir": sb.dir,
                }
                for sb in self._sandboxes.values()
            }

    @property
    def deleted(self) -> list[str]:
        """Ids of the sandboxes deleted through the API, oldest first."""
        with self._lock:
            return list(self._deleted)

    @property
    def snapshots(self) -> dict[str, dict[str, Any]]:
        """name -> {id, state, image_name, dockerfile}."""
        with self._lock:
            return {
                s.name: {"id": s.id, "state": s.state, "image_name": s.image_name, "dockerfile": s.dockerfile}
                for s in self._snapshots.values()
            }

    def egress(self, sandbox_id: str) -> Egress:
        """The sandbox's outbound network policy now."""
        with self._lock:
            return self._sandboxes[sandbox_id].egress

    def egress_log(self, sandbox_id: str) -> list[tuple[str, Egress]]:
        """Every network change of the sandbox and every command and git call it ran, with the egress
        it had then, oldest first (see :class:`EgressEvent`)."""
        with self._lock:
            return [(e.what, e.egress) for e in self._egress_log if e.sandbox_id == sandbox_id]

    def _note_egress(self, sandbox: _Sandbox, what: str) -> None:
        with self._lock:
            self._egress_log.append(EgressEvent(sandbox.id, what, sandbox.egress))

    def requests_for(self, sandbox_id: str) -> list[RecordedRequest]:
        """Recorded requests about one sandbox (its creation, its API calls and its toolbox calls)."""
        return [r for r in self.requests if r.sandbox_id == sandbox_id]

    def reset_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def fail_next(
        self,
        path_prefix: str,
        status: int,
        count: int = 1,
        *,
        method: str | None = None,
        message: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        """Answer the next ``count`` authenticated requests whose path starts with ``path_prefix`` (e.g.
        ``/api/sandbox`` or ``/toolbox/``), and whose method is ``method`` if given, with ``status``
        instead of doing the work. ``retry_after`` adds that header -- note that urllib3 then retries
        idempotent requests of the SDK by itself (after sleeping that long)."""
        with self._lock:
            text = message or f"injected fault: {status} {HTTPStatus(status).phrase}"
            self._faults.append(_Fault(path_prefix, status, count, text, method, retry_after))

    def vanish(self, sandbox_id: str) -> None:
        """The sandbox disappears behind everyone's back (deleted in the dashboard, lost by the runner):
        its processes die and every request about it answers 404 from now on."""
        with self._lock:
            sandbox = self._sandboxes.pop(sandbox_id)
        self._kill_all(sandbox)
        shutil.rmtree(sandbox.dir, ignore_errors=True)

    def set_state(self, sandbox_id: str, state: str) -> None:
        """Force a sandbox's state (``stopped`` kills its processes and sessions, as a stop does)."""
        with self._lock:
            sandbox = self._sandboxes[sandbox_id]
        if state != "started":
            self._kill_all(sandbox)
        with self._lock:
            sandbox.state = state

    # ---- dispatch --------------------------------------------------------------------------------

    def _handle(self, request: _Request) -> _Response:
        sandbox_id: str | None = None
        try:
            if request.headers.get("authorization") != f"Bearer {self.api_key}":
                raise _Failure(401, "Invalid credentials: the API key is missing or not valid")
            response = self._fault(request)
            if response is None:
                response, sandbox_id = self._route(request)
                if (
                    request.method == "POST"
                    and request.path == API_PREFIX + "/sandbox"
                    and response.status == 200
                ):
                    sandbox_id = json.loads(response.body)["id"]
        except _Failure as failure:
            response = self._failure(request, failure)
        except Exception as exc:  # a bug in the fake: answer like a server would, and say so in the log
            _log.exception("fake daytona: %s %s failed", request.method, request.path)
            response = self._failure(request, _Failure(500, f"internal error: {exc}"))
        if sandbox_id is None:
            sandbox_id = self._sandbox_in_path(request.path)
        with self._lock:
            self._requests.append(
                RecordedRequest(request.method, request.path, request.query, response.status, sandbox_id)
            )
        return response

    def _fault(self, request: _Request) -> _Response | None:
        with self._lock:
            for fault in self._faults:
                if (
                    fault.remaining > 0
                    and request.path.startswith(fault.prefix)
                    and fault.method in (None, request.method)
                ):
                    fault.remaining -= 1
                    break
            else:
                return None
            self._faults = [f for f in self._faults if f.remaining > 0]
        response = _json(fault.status, {"message": fault.message, "statusCode": fault.status})
        if fault.retry_after is not None:
            response.headers.append(("Retry-After", str(fault.retry_after)))
        return response

    def _failure(self, request: _Request, failure: _Failure) -> _Response:
        body: dict[str, Any] = {
            "message": failure.message,
            "statusCode": failure.status,
            "path": request.path,
            "method": request.method,
            "timestamp": _now(),
            "source": _SOURCE_DAEMON if request.path.startswith(TOOLBOX_PREFIX + "/") else _SOURCE_API,
        }
        if failure.code:
            body["code"] = failure.code
        return _json(failure.status, body)

    def _route(self, request: _Request) -> tuple[_Response, str | None]:
        path = request.path
        if path.startswith(TOOLBOX_PREFIX + "/"):
            sandbox_id, _, rest = path[len(TOOLBOX_PREFIX) + 1 :].partition("/")
            sandbox = self._sandbox(sandbox_id)
            if sandbox.state != "started":
                raise _Failure(409, f"sandbox {sandbox.id} is {sandbox.state}, not started")
            return self._match(self._toolbox_routes, request, "/" + rest, sandbox), sandbox.id
        if path == API_PREFIX or path.startswith(API_PREFIX + "/"):
            return self._match(self._api_routes, request, path[len(API_PREFIX) :] or "/"), None
        raise _Failure(404, f"no route for {request.method} {path}")

    def _match(self, routes: list[_Route], request: _Request, path: str, *extra: Any) -> _Response:
        for method, pattern, handler in routes:
            found = pattern.fullmatch(path)
            if found and method == request.method:
                return handler(request, *extra, **found.groupdict())
        raise _Failure(404, f"no route for {request.method} {path}")

    def _sandbox_in_path(self, path: str) -> str | None:
        for prefix in (TOOLBOX_PREFIX + "/", API_PREFIX + "/sandbox/"):
            if path.startswith(prefix):
                key = path[len(prefix) :].split("/", 1)[0]
                with self._lock:
                    found = self._lookup(key)
                    return found.id if found else (key if key in self._known else None)
        return None

    # ---- the control plane -----------------------------------------------------------------------

    def _build_api_routes(self) -> list[_Route]:
        sandbox = r"/sandbox/(?P<key>[^/]+)"
        return [
            ("POST", re.compile(r"/sandbox"), self._create_sandbox),
            ("GET", re.compile(r"/sandbox"), self._list_sandboxes),
            ("GET", re.compile(sandbox), self._get_sandbox),
            ("DELETE", re.compile(sandbox), self._delete_sandbox),
            ("POST", re.compile(sandbox + r"/start"), self._start_sandbox),
            ("POST", re.compile(sandbox + r"/stop"), self._stop_sandbox),
            ("GET", re.compile(sandbox + r"/toolbox-proxy-url"), self._toolbox_proxy_url),
            ("PUT", re.compile(sandbox + r"/labels"), self._replace_labels),
            ("POST", re.compile(sandbox + r"/network-settings"), self._update_network),
            (
                "POST",
                re.compile(sandbox + r"/(?P<what>autostop|autodelete|autoarchive)/(?P<minutes>-?\d+)"),
                self._set_interval,
            ),
            ("POST", re.compile(r"/snapshots"), self._create_snapshot),
            ("GET", re.compile(r"/snapshots"), self._list_snapshots),
            ("GET", re.compile(r"/snapshots/(?P<key>[^/]+)"), self._get_snapshot),
            ("DELETE", re.compile(r"/snapshots/(?P<key>[^/]+)"), self._delete_snapshot),
        ]

    def _lookup(self, key: str) -> _Sandbox | None:
        found = self._sandboxes.get(key)
        if found is None:
            found = next((s for s in self._sandboxes.values() if s.name == key), None)
        return found

    def _sandbox(self, key: str) -> _Sandbox:
        with self._lock:
            found = self._lookup(key)
        if found is None:
            raise _Failure(404, f"Sandbox with ID or name {key} not found")
        return found

    def _sandbox_json(self, sandbox: _Sandbox, *, listed: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": sandbox.id,
            "organizationId": self.organization_id,
            "name": sandbox.name,
            "snapshot": sandbox.snapshot,
            "user": SANDBOX_USER,
            "labels": dict(sandbox.labels),
            "public": False,
            "networkBlockAll": sandbox.egress.block_all,
            "target": "us",
            "cpu": 2,
            "gpu": 0,
            "memory": 4,
            "disk": 10,
            "state": sandbox.state,
            "desiredState": "destroyed" if sandbox.state == "destroyed" else sandbox.state,
            "autoStopInterval": sandbox.auto_stop_interval,
            "autoArchiveInterval": sandbox.auto_archive_interval,
            "autoDeleteInterval": sandbox.auto_delete_interval,
            "createdAt": sandbox.created_at,
            "updatedAt": _now(),
            "daemonVersion": "fake",
            "toolboxProxyUrl": self.toolbox_url,
        }
        if not listed:  # as on Daytona, the list leaves out env, volumes and network details
            data["env"] = dict(sandbox.env)
            data["kvm"] = False
            data["networkAllowList"] = sandbox.egress.allow_list
            data["domainAllowList"] = sandbox.egress.domains
            data["volumes"] = []
        return data

    def _create_sandbox(self, request: _Request) -> _Response:
        body = request.json()
        snapshot = body.get("snapshot")
        if body.get("buildInfo"):
            raise _Failure(400, "the fake builds no images: create the sandbox from a snapshot")
        with self._lock:
            if snapshot is not None:
                known = self._snapshot(snapshot)
                if known is None or known.state != "active":
                    raise _Failure(400, f"Snapshot {snapshot} not found or not active")
            name = body.get("name")
            if name and self._lookup(name) is not None:
                raise _Failure(409, f"Sandbox with name {name} already exists")
            sandbox_id = str(uuid.uuid4())
            sandbox = _Sandbox(
                id=sandbox_id,
                name=name or sandbox_id,
                dir=self.root / "sandboxes" / sandbox_id,
                labels={str(k): str(v) for k, v in (body.get("labels") or {}).items()},
                env={str(k): str(v) for k, v in (body.get("env") or {}).items()},
                snapshot=snapshot,
                created_at=_now(),
            )
            for key, attr in (
                ("autoStopInterval", "auto_stop_interval"),
                ("autoArchiveInterval", "auto_archive_interval"),
                ("autoDeleteInterval", "auto_delete_interval"),
            ):
                if body.get(key) is not None:
                    setattr(sandbox, attr, int(body[key]))
            sandbox.egress = Egress().changed(body)
            for directory in (sandbox.home, sandbox.bin, sandbox.tmp):
                directory.mkdir(parents=True, exist_ok=True)
            if self._claude is not None:
                shutil.copyfile(self._claude, sandbox.bin / "claude")
                (sandbox.bin / "claude").chmod(0o755)
            self._sandboxes[sandbox_id] = sandbox
            self._known.add(sandbox_id)
            self._note_egress(sandbox, "create")
        return _json(200, self._sandbox_json(sandbox))

    def _list_sandboxes(self, request: _Request) -> _Response:
        wanted: dict[str, str] = {}
        raw = request.arg("labels")
        if raw:
            try:
                wanted = {str(k): str(v) for k, v in json.loads(raw).items()}
            except (ValueError, AttributeError):
                raise _Failure(400, "labels must be a JSON object") from None
        with self._lock:
            items = [
                self._sandbox_json(sb, listed=True)
                for sb in self._sandboxes.values()
                if all(sb.labels.get(k) == v for k, v in wanted.items())
            ]
        limit = request.arg("limit")
        if limit:
            items = items[: int(limit)]
        return _json(200, {"items": items, "nextCursor": None})

    def _get_sandbox(self, request: _Request, key: str) -> _Response:
        return _json(200, self._sandbox_json(self._sandbox(key)))

    def _delete_sandbox(self, request: _Request, key: str) -> _Response:
        sandbox = self._sandbox(key)
        with self._lock:
            self._sandboxes.pop(sandbox.id, None)
            self._deleted.append(sandbox.id)
        self._kill_all(sandbox)
        shutil.rmtree(sandbox.dir, ignore_errors=True)
        sandbox.state = "destroyed"
        return _json(200, self._sandbox_json(sandbox))

    def _start_sandbox(self, request: _Request, key: str) -> _Response:
        sandbox = self._sandbox(key)
        with self._lock:
            sandbox.state = "started"
        return _json(200, self._sandbox_json(sandbox))

    def _stop_sandbox(self, request: _Request, key: str) -> _Response:
        sandbox = self._sandbox(key)
        self._kill_all(sandbox)  # processes do not survive a stop; the disk does
        with self._lock:
            sandbox.state = "stopped"
        return _json(200, self._sandbox_json(sandbox))

    def _toolbox_proxy_url(self, request: _Request, key: str) -> _Response:
        self._sandbox(key)
        return _json(200, {"url": self.toolbox_url})

    def _replace_labels(self, request: _Request, key: str) -> _Response:
        sandbox = self._sandbox(key)
        labels = request.json().get("labels") or {}
        with self._lock:
            sandbox.labels = {str(k): str(v) for k, v in labels.items()}
        return _json(200, {"labels": dict(sandbox.labels)})

    def _update_network(self, request: _Request, key: str) -> _Response:
        sandbox = self._sandbox(key)
        body = request.json()
        if all(body.get(k) is None for k in ("networkBlockAll", "networkAllowList", "domainAllowList")):
            raise _Failure(
                400, "at least one of networkBlockAll, networkAllowList, domainAllowList is required"
            )
        for cidr in str(body.get("networkAllowList") or "").split(","):
            if cidr.strip():
                try:
                    ipaddress.IPv4Network(cidr.strip(), strict=False)
                except ValueError:
                    raise _Failure(400, f"invalid CIDR in networkAllowList: {cidr.strip()}") from None
        with self._lock:
            sandbox.egress = sandbox.egress.changed(body)
            self._note_egress(sandbox, "network-settings")
        return _json(200, self._sandbox_json(sandbox))

    def _set_interval(self, request: _Request, key: str, what: str, minutes: str) -> _Response:
        sandbox = self._sandbox(key)
        attr = {"autostop": "auto_stop_interval", "autodelete": "auto_delete_interval"}.get(
            what, "auto_archive_interval"
        )
        with self._lock:
            setattr(sandbox, attr, int(minutes))
        return _Response(200)

    # snapshots

    def _add_snapshot(
        self, name: str, *, image_name: str | None, dockerfile: str | None, state: str
    ) -> _Snapshot:
        snapshot = _Snapshot(str(uuid.uuid4()), name, image_name, dockerfile, _now(), state)
        self._snapshots[snapshot.id] = snapshot
        return snapshot

    def _snapshot(self, key: str) -> _Snapshot | None:
        found = self._snapshots.get(key)
        return found or next((s for s in self._snapshots.values() if s.name == key), None)

    def _snapshot_json(self, snapshot: _Snapshot) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": snapshot.id,
            "organizationId": self.organization_id,
            "general": False,
            "name": snapshot.name,
            "imageName": snapshot.image_name,
            "state": snapshot.state,
            "size": None,
            "entrypoint": None,
            "cpu": 2,
            "gpu": 0,
            "mem": 4,
            "disk": 10,
            "errorReason": None,
            "createdAt": snapshot.created_at,
            "updatedAt": _now(),
            "lastUsedAt": None,
            "sourceSandboxId": None,
            "regionIds": ["us"],
        }
        if snapshot.dockerfile is not None:
            data["buildInfo"] = {
                "dockerfileContent": snapshot.dockerfile,
                "contextHashes": [],
                "snapshotRef": f"fake-registry/{snapshot.name}:{snapshot.id[:8]}",
                "createdAt": snapshot.created_at,
                "updatedAt": snapshot.created_at,
            }
        return data

    def _create_snapshot(self, request: _Request) -> _Response:
        body = request.json()
        name = body.get("name")
        if not name:
            raise _Failure(400, "name is required")
        build = body.get("buildInfo") or {}
        if build.get("contextHashes"):
            raise _Failure(400, "the fake has no object storage: no COPY of local files")
        with self._lock:
            if self._snapshot(name) is not None:
                raise _Failure(409, f"Snapshot with name {name} already exists")
            # Pending at first, active from the next look on: the SDK's wait loop runs once.
            snapshot = self._add_snapshot(
                name,
                image_name=body.get("imageName"),
                dockerfile=build.get("dockerfileContent"),
                state="pending",
            )
            data = self._snapshot_json(snapshot)
            snapshot.state = "active"
        return _json(200, data)

    def _list_snapshots(self, request: _Request) -> _Response:
        with self._lock:
            items = [self._snapshot_json(s) for s in self._snapshots.values()]
        return _json(200, {"items": items, "total": len(items), "page": 1, "totalPages": 1})

    def _get_snapshot(self, request: _Request, key: str) -> _Response:
        with self._lock:
            snapshot = self._snapshot(key)
            if snapshot is None:
                raise _Failure(404, f"Snapshot {key} not found")
            return _json(200, self._snapshot_json(snapshot))

    def _delete_snapshot(self, request: _Request, key: str) -> _Response:
        with self._lock:
            snapshot = self._snapshot(key)
            if snapshot is None:
                raise _Failure(404, f"Snapshot {key} not found")
            del self._snapshots[snapshot.id]
        return _Response(200)

    # ---- the toolbox -----------------------------------------------------------------------------

    def _build_toolbox_routes(self) -> list[_Route]:
        session = r"/process/session/(?P<sid>[^/]+)"
        command = session + r"/command/(?P<cid>[^/]+)"
        return [
            ("GET", re.compile(r"/work-dir"), self._home_dir),
            ("GET", re.compile(r"/user-home-dir"), self._home_dir),
            ("GET", re.compile(r"/version"), lambda request, sandbox: _json(200, {"version": "fake"})),
            ("POST", re.compile(r"/process/execute"), self._execute),
            ("POST", re.compile(r"/process/session"), self._create_session),
            ("GET", re.compile(r"/process/session"), self._list_sessions),
            ("GET", re.compile(session), self._get_session),
            ("DELETE", re.compile(session), self._delete_session),
            ("POST", re.compile(session + r"/exec"), self._session_exec),
            ("GET", re.compile(command), self._get_command),
            ("GET", re.compile(command + r"/logs"), self._command_logs),
            ("POST", re.compile(r"/git/clone"), self._git_clone),
            ("GET", re.compile(r"/git/status"), self._git_status),
            ("POST", re.compile(r"/git/add"), self._git_add),
            ("POST", re.compile(r"/git/commit"), self._git_commit),
            ("POST", re.compile(r"/git/push"), self._git_push),
            ("GET", re.compile(r"/git/branches"), self._git_branches),
            ("POST", re.compile(r"/git/branches"), self._git_create_branch),
            ("POST", re.compile(r"/git/checkout"), self._git_checkout),
            ("GET", re.compile(r"/git/remotes"), self._git_remotes),
            ("GET", re.compile(r"/files"), self._list_files),
            ("DELETE", re.compile(r"/files"), self._delete_file),
            ("GET", re.compile(r"/files/info"), self._file_info),
            ("POST", re.compile(r"/files/folder"), self._create_folder),
            ("POST", re.compile(r"/files/permissions"), self._set_permissions),
            ("POST", re.compile(r"/files/bulk-upload"), self._bulk_upload),
            ("POST", re.compile(r"/files/bulk-download"), self._bulk_download),
        ]

    # paths and processes

    def _path(self, sandbox: _Sandbox, raw: str | None, *, follow: bool = True) -> Path:
        """A sandbox path on the host (see the module docstring); refuses anything outside the sandbox."""
        if not raw:
            raise _Failure(400, "path is required", code="INVALID_FILE_PATH")
        given = Path(raw)
        if given.is_absolute():
            candidate = given if _within(given, sandbox.dir) else sandbox.dir / raw.lstrip("/")
        else:
            candidate = sandbox.home / raw
        candidate = Path(os.path.normpath(candidate))
        checked = candidate if follow else candidate.parent
        if not _within(Path(os.path.realpath(checked)), Path(os.path.realpath(sandbox.dir))):
            raise _Failure(403, f"{raw} is outside the sandbox", code="FILE_ACCESS_DENIED")
        return candidate

    def _env(self, sandbox: _Sandbox, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {
            "PATH": f"{sandbox.bin}:{_DEFAULT_PATH}",
            "HOME": str(sandbox.home),
            "TMPDIR": str(sandbox.tmp),
            "USER": SANDBOX_USER,
            "LANG": "C.UTF-8",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_TERMINAL_PROMPT": "0",
        }
        env.update(sandbox.env)
        env.update(extra or {})
        return env

    def _kill_all(self, sandbox: _Sandbox) -> None:
        with self._lock:
            sessions = list(sandbox.sessions.values())
            sandbox.sessions.clear()
        for session in sessions:
            _terminate(session)

    def _home_dir(self, request: _Request, sandbox: _Sandbox) -> _Response:
        return _json(200, {"dir": str(sandbox.home)})

    def _execute(self, request: _Request, sandbox: _Sandbox) -> _Response:
        body = request.json()
        command = body.get("command")
        if not isinstance(command, str):
            raise _Failure(400, "command is required")
        cwd = self._path(sandbox, body["cwd"]) if body.get("cwd") else sandbox.home
        timeout = body.get("timeout") or None
        envs = {str(k): str(v) for k, v in (body.get("envs") or {}).items()}
        self._note_egress(sandbox, "exec")
        try:
            proc = subprocess.run(
                ["bash", "-c", command],
                cwd=cwd,
                env=self._env(sandbox, envs),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired:
            raise _Failure(
                408, f"command timed out after {timeout}s", code="PROCESS_EXECUTION_TIMEOUT"
            ) from None
        except OSError as exc:
            raise _Failure(400, f"cannot run the command: {exc}") from None
        return _json(200, {"exitCode": proc.returncode, "result": proc.stdout.decode("utf-8", "replace")})

    # sessions

    def _session(self, sandbox: _Sandbox, sid: str) -> _Session:
        with self._lock:
            session = sandbox.sessions.get(sid)
        if session is None:
            raise _Failure(404, "session not found")
        return session

    def _session_json(self, session: _Session) -> dict[str, Any]:
        with self._lock:
            commands = [c.to_json() for c in session.commands.values()]
        return {"sessionId": session.id, "commands": commands}

    def _create_session(self, request: _Request, sandbox: _Sandbox) -> _Response:
        sid = request.json().get("sessionId")
        if not sid or "/" in sid:
            raise _Failure(400, "sessionId is required")
        with self._lock:
            if sid in sandbox.sessions:
                raise _Failure(409, f"session {sid} already exists")
            sandbox.sessions[sid] = _Session(sid)
        return _Response(201)

    def _list_sessions(self, request: _Request, sandbox: _Sandbox) -> _Response:
        with self._lock:
            sessions = list(sandbox.sessions.values())
        return _json(200, [self._session_json(s) for s in sessions])

    def _get_session(self, request: _Request, sandbox: _Sandbox, sid: str) -> _Response:
        return _json(200, self._session_json(self._session(sandbox, sid)))

    def _delete_session(self, request: _Request, sandbox: _Sandbox, sid: str) -> _Response:
        with self._lock:
            session = sandbox.sessions.pop(sid, None)
        if session is None:
            raise _Failure(404, "session not found")
        _terminate(session)
        shutil.rmtree(sandbox.dir / ".daytona" / "sessions" / sid, ignore_errors=True)
        return _Response(204)

    def _session_exec(self, request: _Request, sandbox: _Sandbox, sid: str) -> _Response:
        body = request.json()
        command = body.get("command")
        if not isinstance(command, str):
            raise _Failure(400, "command is required")
        run_async = bool(body.get("runAsync") or body.get("async"))
        session = self._session(sandbox, sid)
        cid = str(uuid.uuid4())
        directory = sandbox.dir / ".daytona" / "sessions" / sid / cid
        directory.mkdir(parents=True, exist_ok=True)
        # Like the real daemon: the command text is kept on the sandbox's disk beside its output.
        script = directory / "cmd.sh"
        script.write_text(command)
        script.chmod(0o600)
        entry = _Command(cid, command, directory)
        self._note_egress(sandbox, f"session:{sid}")
        with open(directory / "stdout", "wb") as out, open(directory / "stderr", "wb") as err:
            try:
                entry.process = subprocess.Popen(
                    ["bash", "-c", command],
                    cwd=sandbox.home,
                    env=self._env(sandbox),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,  # one process group per command, so a delete kills it all
                )
            except OSError as exc:
                raise _Failure(400, f"cannot run the command: {exc}") from None
        with self._lock:
            session.commands[cid] = entry
        threading.Thread(
            target=self._reap, args=(entry,), name=f"fake-daytona-{cid[:8]}", daemon=True
        ).start()
        if run_async:
            return _json(202, {"cmdId": cid})
        entry.done.wait()
        stdout, stderr = entry.output("stdout"), entry.output("stderr")
        return _json(
            200,
            {
                "cmdId": cid,
                "output": stdout + stderr,
                "stdout": stdout,
                "stderr": stderr,
                "exitCode": entry.exit_code,
            },
        )

    def _reap(self, entry: _Command) -> None:
        assert entry.process is not None
        code = entry.process.wait()
        with self._lock:
            entry.exit_code = code
        entry.done.set()

    def _command(self, sandbox: _Sandbox, sid: str, cid: str) -> _Command:
        session = self._session(sandbox, sid)
        with self._lock:
            entry = session.commands.get(cid)
        if entry is None:
            raise _Failure(404, "command not found")
        return entry

    def _get_command(self, request: _Request, sandbox: _Sandbox, sid: str, cid: str) -> _Response:
        entry = self._command(sandbox, sid, cid)
        with self._lock:
            return _json(200, entry.to_json())

    def _command_logs(self, request: _Request, sandbox: _Sandbox, sid: str, cid: str) -> _Response:
        entry = self._command(sandbox, sid, cid)
        if request.arg("follow") in ("true", "True", "1"):
            raise _Failure(400, "the fake does not stream logs (follow needs a websocket)")
        stdout, stderr = entry.output("stdout"), entry.output("stderr")
        return _json(200, {"output": stdout + stderr, "stdout": stdout, "stderr": stderr})

    # git

    def _git(
        self,
        sandbox: _Sandbox,
        args: list[str],
        cwd: Path,
        *,
        credential: tuple[str, str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        full_env = self._env(sandbox, env)
        if credential is not None:
            full_env["GIT_ASKPASS"] = str(self._askpass)
            full_env["FAKE_DAYTONA_GIT_USERNAME"] = credential[0]
            full_env["FAKE_DAYTONA_GIT_PASSWORD"] = credential[1]
        try:
            return subprocess.run(
                ["git", *args],
                cwd=cwd,
                env=full_env,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=_GIT_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise _Failure(400, f"git {args[0]} timed out") from None

    def _repo(self, sandbox: _Sandbox, raw: str | None) -> Path:
        path = self._path(sandbox, raw)
        if not (path / ".git").exists():
            raise _Failure(404, f"repository does not exist: {raw}", code="GIT_REPO_NOT_FOUND")
        return path

    def _git_or_fail(
        self, sandbox: _Sandbox, args: list[str], cwd: Path, credential: tuple[str, str] | None = None
    ) -> str:
        proc = self._git(sandbox, args, cwd, credential=credential)
        if proc.returncode != 0:
            output = proc.stderr + proc.stdout
            if credential is not None:  # as the daemon does: git's output never carries the secret back
                for secret in credential:
                    if secret:
                        output = output.replace(secret, "***")
            status, code = _classify_git(output)
            operation = next(a for a in args if not a.startswith("-") and "=" not in a)
            raise _Failure(status, f"git {operation} failed: {output.strip()}", code=code)
        return proc.stdout

    def _reach(self, sandbox: _Sandbox, url: str) -> None:
        """Fail as git does when the sandbox's firewall keeps it from the remote's host."""
        host = urlsplit(url).hostname
        if host and not sandbox.egress.reaches(host):
            message = f"fatal: unable to access '{url}': Could not resolve host: {host}"
            raise _Failure(502, f"git failed: {message}", code="GIT_TRANSPORT_FAILED")

    def _credential(self, body: Mapping[str, Any]) -> tuple[str, str] | None:
        username, password = body.get("username"), body.get("password")
        return (str(username), str(password)) if username is not None and password is not None else None

    def _git_clone(self, request: _Request, sandbox: _Sandbox) -> _Response:
        body = request.json()
        url, target = body.get("url"), self._path(sandbox, body.get("path"))
        if not url:
            raise _Failure(400, "url is required")
        if target.exists() and any(target.iterdir()):
            raise _Failure(
                409, f"{body.get('path')} already exists and is not empty", code="GIT_BRANCH_EXISTS"
            )
        self._note_egress(sandbox, "git-clone")
        self._reach(sandbox, str(url))
        target.parent.mkdir(parents=True, exist_ok=True)
        args = ["-c", "core.hooksPath=/dev/null", "-c", "credential.helper=", "clone", "--single-branch"]
        if body.get("branch"):
            args += ["--branch", str(body["branch"])]
        if body.get("depth"):
            args += ["--depth", str(int(body["depth"]))]
        args += ["--", str(url), str(target)]
        self._git_or_fail(sandbox, args, sandbox.home, self._credential(body))
        if body.get("commit_id"):
            self._git_or_fail(sandbox, ["checkout", "--quiet", str(body["commit_id"])], target)
        return _Response(200)

    def _git_status(self, request: _Request, sandbox: _Sandbox) -> _Response:
        repo = self._repo(sandbox, request.arg("path"))
        out = self._git_or_fail(
            sandbox, ["status", "--porcelain=v2", "--branch", "-z", "--untracked-files=all"], repo
        )
        data: dict[str, Any] = {"currentBranch": "", "fileStatus": [], "ahead": 0, "behind": 0}
        upstream = None
        entries = out.split("\0")
        index = 0
        while index < len(entries):
            entry = entries[index]
            index += 1
            if entry.startswith("# branch.head "):
                head = entry[len("# branch.head ") :]
                data["currentBranch"] = "HEAD" if head == "(detached)" else head
                data["detached"] = head == "(detached)"
            elif entry.startswith("# branch.upstream "):
                upstream = entry[len("# branch.upstream ") :]
            elif entry.startswith("# branch.ab "):
                ahead, behind = entry[len("# branch.ab ") :].split()
                data["ahead"], data["behind"] = int(ahead), -int(behind)
            elif entry[:2] in ("1 ", "2 ", "u "):
                fields = entry.split(" ", 10 if entry[0] == "u" else (9 if entry[0] == "2" else 8))
                code, name = fields[1], fields[-1]
                extra = ""
                if entry[0] == "2":
                    extra = entries[index]
                    index += 1
                data["fileStatus"].append(
                    {
                        "name": name,
                        "extra": extra,
                        "staging": _STATUS_NAMES.get(code[0], "Modified"),
                        "worktree": _STATUS_NAMES.get(code[1], "Modified"),
                    }
                )
            elif entry.startswith("? "):
                name = entry[2:]
                data["fileStatus"].append(
                    {"name": name, "extra": "", "staging": "Untracked", "worktree": "Untracked"}
                )
        data["branchPublished"] = upstream is not None
        if upstream is not None:
            data["upstream"] = upstream
        return _json(200, data)

    def _git_add(self, request: _Request, sandbox: _Sandbox) -> _Response:
        body = request.json()
        repo = self._repo(sandbox, body.get("path"))
        files = [str(f) for f in body.get("files") or []]
        if files:
            self._git_or_fail(sandbox, ["add", "--", *files], repo)
        return _Response(200)

    def _git_commit(self, request: _Request, sandbox: _Sandbox) -> _Response:
        body = request.json()
        repo = self._repo(sandbox, body.get("path"))
        author, email_address = str(body.get("author") or ""), str(body.get("email") or "")
        if not author or not email_address:
            raise _Failure(400, "author and email are required")
        args = ["commit", "--quiet", "--no-verify", "--file=-"]
        if body.get("allow_empty"):
            args.append("--allow-empty")
        env = {
            "GIT_AUTHOR_NAME": author,
            "GIT_AUTHOR_EMAIL": email_address,
            "GIT_COMMITTER_NAME": author,
            "GIT_COMMITTER_EMAIL": email_address,
        }
        full_env = self._env(sandbox, env)
        proc = subprocess.run(
            ["git", *args],
            cwd=repo,
            env=full_env,
            input=str(body.get("message") or ""),
            capture_output=True,
            text=True,
            errors="replace",
            timeout=_GIT_TIMEOUT,
            check=False,
        )
        if proc.returncode != 0:
            output = (proc.stdout + proc.stderr).strip()
            if "nothing to commit" in output or "nothing added to commit" in output:
                output = "cannot create empty commit: clean working tree"  # go-git's words
            raise _Failure(400, f"git commit failed: {output}")
        sha = self._git_or_fail(sandbox, ["rev-parse", "HEAD"], repo).strip()
        return _json(200, {"hash": sha})

    def _git_push(self, request: _Request, sandbox: _Sandbox) -> _Response:
        body = request.json()
        repo = self._repo(sandbox, body.get("path"))
        branch = body.get("branch")
        if branch:
            ref = f"refs/heads/{branch}"
        else:
            head = self._git(sandbox, ["symbolic-ref", "HEAD"], repo)
            if head.returncode != 0:
                raise _Failure(404, "cannot push a detached HEAD", code="GIT_BRANCH_NOT_FOUND")
            ref = head.stdout.strip()
        args = ["-c", "core.hooksPath=/dev/null", "-c", "credential.helper=", "push"]
        if body.get("set_upstream"):
            args.append("--set-upstream")
        remote = str(body.get("remote") or "origin")
        args += [remote, f"{ref}:{ref}"]
        self._note_egress(sandbox, "git-push")
        self._reach(sandbox, self._git(sandbox, ["remote", "get-url", "--push", remote], repo).stdout.strip())
        self._git_or_fail(sandbox, args, repo, self._credential(body))
        return _Response(200)

    def _git_branches(self, request: _Request, sandbox: _Sandbox) -> _Response:
        repo = self._repo(sandbox, request.arg("path"))
        out = self._git_or_fail(sandbox, ["branch", "--format=%(refname:short)"], repo)
        current = self._git(sandbox, ["symbolic-ref", "--quiet", "--short", "HEAD"], repo).stdout.strip()
        return _json(200, {"branches": [b for b in out.splitlines() if b], "current": current or None})

    def _git_create_branch(self, request: _Request, sandbox: _Sandbox) -> _Response:
        body = request.json()
        repo = self._repo(sandbox, body.get("path"))
        # go-git's Checkout{Create: true}, as the daemon does: the new branch is checked out.
        self._git_or_fail(sandbox, ["checkout", "--quiet", "-b", str(body.get("name") or "")], repo)
        return _Response(201)

    def _git_checkout(self, request: _Request, sandbox: _Sandbox) -> _Response:
        body = request.json()
        repo = self._repo(sandbox, body.get("path"))
        self._git_or_fail(sandbox, ["checkout", "--quiet", str(body.get("branch") or "")], repo)
        return _Response(200)

    def _git_remotes(self, request: _Request, sandbox: _Sandbox) -> _Response:
        repo = self._repo(sandbox, request.arg("path"))
        names = self._git_or_fail(sandbox, ["remote"], repo).split()
        remotes = [
            {"name": n, "url": self._git_or_fail(sandbox, ["remote", "get-url", n], repo).strip()}
            for n in names
        ]
        return _json(200, {"remotes": remotes})

    # files

    def _file_json(self, path: Path) -> dict[str, Any]:
        info = path.lstat()
        modified = datetime.fromtimestamp(info.st_mtime, UTC).isoformat()
        return {
            "name": path.name,
            "path": str(path),
            "isDir": stat.S_ISDIR(info.st_mode),
            "size": info.st_size,
            "mode": stat.filemode(info.st_mode),
            "permissions": oct(stat.S_IMODE(info.st_mode))[2:],
            "owner": str(info.st_uid),
            "group": str(info.st_gid),
            "modTime": modified,
            "modifiedAt": modified,
        }

    def _list_files(self, request: _Request, sandbox: _Sandbox) -> _Response:
        path = self._path(sandbox, request.arg("path"))
        if not path.is_dir():
            raise _Failure(404, f"{request.arg('path')} is not a directory", code="FILE_NOT_FOUND")
        return _json(200, [self._file_json(p) for p in sorted(path.iterdir())])

    def _file_info(self, request: _Request, sandbox: _Sandbox) -> _Response:
        path = self._path(sandbox, request.arg("path"), follow=False)
        if not path.exists() and not path.is_symlink():
            raise _Failure(404, f"{request.arg('path')} does not exist", code="FILE_NOT_FOUND")
        return _json(200, self._file_json(path))

    def _delete_file(self, request: _Request, sandbox: _Sandbox) -> _Response:
        path = self._path(sandbox, request.arg("path"), follow=False)
        if path.is_dir() and not path.is_symlink():
            if request.arg("recursive") not in ("true", "True", "1"):
                raise _Failure(400, f"{request.arg('path')} is a directory: delete it recursively")
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            raise _Failure(404, f"{request.arg('path')} does not exist", code="FILE_NOT_FOUND")
        return _Response(204)

    def _create_folder(self, request: _Request, sandbox: _Sandbox) -> _Response:
        path = self._path(sandbox, request.arg("path"))
        mode = int(request.arg("mode") or "755", 8)
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)
        return _Response(201)

    def _set_permissions(self, request: _Request, sandbox: _Sandbox) -> _Response:
        path = self._path(sandbox, request.arg("path"))
        if not path.exists():
            raise _Failure(404, f"{request.arg('path')} does not exist", code="FILE_NOT_FOUND")
        if request.arg("mode"):
            path.chmod(int(request.arg("mode") or "644", 8))
        return _Response(200)

    def _bulk_upload(self, request: _Request, sandbox: _Sandbox) -> _Response:
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            raise _Failure(400, "expected multipart/form-data")
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + request.body
        )
        paths: dict[str, str] = {}
        contents: dict[str, bytes] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            match = re.fullmatch(r"files\[(\d+)\]\.(path|file)", str(name or ""))
            if not match:
                continue
            payload = part.get_payload(decode=True) or b""
            if match.group(2) == "path":
                paths[match.group(1)] = payload.decode()
            else:
                contents[match.group(1)] = payload
        if set(paths) != set(contents):
            raise _Failure(400, "every files[i].path needs a files[i].file")
        for key, raw in paths.items():
            target = self._path(sandbox, raw)
            if target.is_dir():
                raise _Failure(400, f"{raw} is a directory")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(contents[key])
        return _json(200, {"files": sorted(paths.values()), "errors": []})

    def _bulk_download(self, request: _Request, sandbox: _Sandbox) -> _Response:
        wanted = request.json().get("paths") or []
        boundary = f"fake-daytona-{secrets.token_hex(12)}"
        parts: list[bytes] = []
        for raw in wanted:
            disposition = 'form-data; name="{}"; filename="{}"'
            quoted = str(raw).replace("\\", "\\\\").replace('"', '\\"')
            try:
                path = self._path(sandbox, raw)
                if not path.is_file():
                    raise _Failure(404, f"{raw}: no such file", code="FILE_NOT_FOUND")
                data = path.read_bytes()
                header = (
                    f"Content-Disposition: {disposition.format('file', quoted)}\r\n"
                    "Content-Type: application/octet-stream\r\n"
                    f"Content-Length: {len(data)}\r\n\r\n"
                )
            except _Failure as failure:
                data = json.dumps(
                    {
                        "message": failure.message,
                        "statusCode": failure.status,
                        "code": failure.code,
                        "source": _SOURCE_DAEMON,
                    }
                ).encode()
                header = (
                    f"Content-Disposition: {disposition.format('error', quoted)}\r\n"
                    "Content-Type: application/json\r\n\r\n"
                )
            parts.append(f"--{boundary}\r\n".encode() + header.encode() + data + b"\r\n")
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        return _Response(200, body, content_type=f"multipart/form-data; boundary={boundary}")


# --- helpers -----------------------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _classify_git(output: str) -> tuple[int, str | None]:
    """The status and error code the daemon gives a failed git command, from git's own output."""
    text = output.lower()
    if any(
        s in text for s in ("authentication failed", "could not read username", "could not read password")
    ):
        return 401, "GIT_AUTH_FAILED"
    if "remote branch" in text and "not found" in text:
        return 404, "GIT_BRANCH_NOT_FOUND"
    if any(s in text for s in ("repository not found", "returned error: 404", "does not appear to be a git")):
        return 404, "GIT_REPO_NOT_FOUND"
    if "remote rejected" in text or "hook declined" in text:
        return 422, "GIT_REMOTE_REJECTED"
    if any(s in text for s in ("non-fast-forward", "fetch first", "updates were rejected", "stale info")):
        return 409, "GIT_PUSH_REJECTED"
    if "could not resolve host" in text or "failed to connect" in text or "couldn't connect" in text:
        return 502, "GIT_TRANSPORT_FAILED"
    return 400, None


def _terminate(session: _Session) -> None:
    """SIGTERM each command's process group, then SIGKILL what is left after a grace period."""
    running = [
        (c, c.process.pid) for c in session.commands.values() if c.process is not None and c.exit_code is None
    ]
    for _, pid in running:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + _KILL_GRACE
    for command, pid in running:
        if not command.done.wait(max(0.0, deadline - time.monotonic())):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            command.done.wait(5)
