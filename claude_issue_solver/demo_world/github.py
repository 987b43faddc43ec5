"""A loopback GitHub: enough of the REST API and of git smart HTTP to drive the daemon for real.

Why this exists: the daemon talks to GitHub through PyGithub and pushes branches with plain ``git``.
Mocking either client would test our assumptions about GitHub rather than the clients' real
behaviour (pagination through ``Link`` headers, ``ETag``/``304`` polling, rate-limit headers, the
exception a 401 or 422 turns into, git asking ``GIT_ASKPASS`` after a 401...). So this module runs a
small HTTP server on 127.0.0.1 that answers with the JSON shapes PyGithub reads, keeps an in-memory
model of issues, comments, labels, events and pull requests, and serves *real* bare git repositories
through ``git http-backend``. Tests and the ``demo`` command point real clients at it.

Deliberate simplifications (documented so nobody relies on them by accident):

* Any valid user token may read and write any repository; permissions set with
  :meth:`FakeGitHub.set_permission` are reported by the API, and they only *block* a git push when a
  login was explicitly given less than ``write``.
* Installation tokens are limited to the repositories of their installation (404 elsewhere), as on
  GitHub, and ``GET /user`` refuses them (403 "Resource not accessible by integration").
* Rate limits are one "core" bucket per credential; ``/rate_limit`` and ``304`` answers are free.
* GraphQL (``POST /api/graphql``) knows the two mutations the REST API lacks,
  ``markPullRequestReadyForReview`` and ``convertPullRequestToDraft``, and one query: an issue's text
  and edit history (``repository { issue { lastEditedAt editor userContentEdits … } }``); it leaves
  the core bucket alone. Every body edit is recorded with its editor (the first one also records the
  text as created, as GitHub does); a title edit is a ``renamed`` event with ``rename.from``/``to``.
* Merging (:meth:`FakeGitHub.merge_pull`) into the default branch closes the issues the pull request's
  description names with a closing keyword, as GitHub does.
* Timestamps have one-second resolution, like GitHub's.

Typical use::

    with FakeGitHub(tmp_path) as fake:
        fake.create_repo("octo/demo")
        fake.create_issue("octo/demo", "Fix it", labels=["Claude"])
        gh = Github(auth=Auth.Token("test-token"), base_url=fake.api_url)
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import logging
import os
import re
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, quote, unquote, urlencode, urlsplit

import jwt

from claude_issue_solver.demo_world.github_reviews import ReviewsApi
from claude_issue_solver.demo_world.loopback import LoopbackFake, LoopbackHandler, LoopbackServer

__all__ = [
    "API_PREFIX",
    "DEFAULT_LABELS",
    "DEFAULT_LOGIN",
    "GRAPHQL_PATH",
    "PERMISSIONS",
    "FakeGitHub",
    "FakeRepo",
    "RecordedRequest",
]

_log = logging.getLogger(__name__)

#: Path prefix of the REST API, as on GitHub Enterprise Server (PyGithub's ``base_url`` ends with it).
API_PREFIX = "/api/v3"
#: The GraphQL endpoint beside it, as on GitHub Enterprise Server (PyGithub derives it from ``base_url``).
GRAPHQL_PATH = "/api/graphql"
#: Login owning the tokens passed to :class:`FakeGitHub` unless told otherwise.
DEFAULT_LOGIN = "claude-bot"
#: Repository roles, strongest first (the values :meth:`FakeGitHub.set_permission` accepts).
PERMISSIONS = ("admin", "maintain", "write", "triage", "read", "none")
REACTIONS = ("+1", "-1", "laugh", "confused", "heart", "hooray", "rocket", "eyes")
#: Labels every new repository starts with: (name, color, description).
DEFAULT_LABELS: tuple[tuple[str, str, str], ...] = (
    ("Claude", "d97757", "Ask Claude to solve this issue"),
    ("bug", "d73a4a", "Something isn't working"),
    ("enhancement", "a2eeef", "New feature or request"),
    ("documentation", "0075ca", "Improvements or additions to documentation"),
)

_DOCS_URL = "https://docs.github.com/rest"
_RATE_LIMIT_WINDOW = 3600
_MAX_JWT_LIFETIME = 600
_GIT_ROUTE = re.compile(
    r"/(?P<owner>[A-Za-z0-9_.-]+)/(?P<name>[A-Za-z0-9_.-]+?)(?:\.git)?"
    r"(?P<rest>/(?:info/refs|HEAD|git-upload-pack|git-receive-pack|objects/.+))"
)
# The legacy ``permission`` field of the collaborator-permission endpoint only knows four values.
_LEGACY_PERMISSION = {
    "admin": "admin",
    "maintain": "write",
    "write": "write",
    "triage": "read",
    "read": "read",
    "none": "none",
}
_ROLE_FLAGS = {
    "admin": ("admin", "maintain", "push", "triage", "pull"),
    "maintain": ("maintain", "push", "triage", "pull"),
    "write": ("push", "triage", "pull"),
    "triage": ("triage", "pull"),
    "read": ("pull",),
    "none": (),
}


# --------------------------------------------------------------------------------------------------
# Public records


@dataclass(frozen=True)
class RecordedRequest:
    """One request the server answered, kept so tests can assert on traffic (counts, polling, auth).

    ``counted`` is True when the request consumed rate limit (a ``304``, an injected fault, a git
    request, ``/rate_limit`` and failed authentication do not). ``auth`` is the scheme the client sent:
    ``"token"``, ``"bearer"``, ``"jwt"`` (a bearer JSON web token), ``"basic"`` or ``"none"``.
    """

    method: str
    path: str
    query: dict[str, list[str]]
    status: int
    conditional: bool
    counted: bool
    auth: str
    login: str | None = None
    kind: str = "api"  # "api" | "git" | "other"
    chunked: bool = False
    injected: bool = False


def _run_git(git_dir: Path, *args: str, input: bytes | None = None, check: bool = True) -> str:
    """Run git against a bare repository with user/system config ignored, so results are reproducible."""
    proc = subprocess.run(
        ["git", f"--git-dir={git_dir}", *args],
        input=input,
        capture_output=True,
        env=_git_env(),
        check=False,
        timeout=120,
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout.decode(errors="replace")


def _git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "LANG": "C",
    }
    if "HOME" in os.environ:
        env["HOME"] = os.environ["HOME"]
    if extra:
        env.update(extra)
    return env


@dataclass
class FakeRepo:
    """Handle on a repository of the fake: its identity, URLs and the bare git repository on disk."""

    owner: str
    name: str
    id: int
    path: Path
    clone_url: str
    html_url: str
    default_branch: str
    private: bool

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"

    def git(self, *args: str) -> str:
        """Run a git command in the bare repository and return its stdout (raises on failure)."""
        return _run_git(self.path, *args)

    def branches(self) -> dict[str, str]:
        """Branch name -> commit sha, read from the bare repository (so pushes show up here)."""
        out = _run_git(self.path, "for-each-ref", "--format=%(refname:lstrip=2) %(objectname)", "refs/heads")
        return dict(line.split(" ", 1) for line in out.splitlines() if line)

    def branch_sha(self, branch: str) -> str | None:
        """The commit a branch points at, or None if the branch does not exist."""
        out = _run_git(
            self.path, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}", check=False
        )
        return out.strip() or None

    def read_file(self, ref: str, path: str) -> str:
        """Content of ``path`` at ``ref`` (a branch or sha)."""
        return _run_git(self.path, "show", f"{ref}:{path}")


# --------------------------------------------------------------------------------------------------
# Internal model


@dataclass
class _Label:
    id: int
    name: str
    color: str
    description: str
    default: bool = False


@dataclass
class _Comment:
    id: int
    number: int
    body: str
    user: str
    created_at: datetime
    updated_at: datetime
    author_association: str


@dataclass
class _ReviewComment:
    """A comment on a line of a pull request's diff (``in_reply_to`` when it answers another)."""

    id: int
    number: int  # the pull request
    body: str
    user: str
    path: str
    line: int
    diff_hunk: str
    commit_id: str
    created_at: datetime
    updated_at: datetime
    author_association: str
    in_reply_to: int | None = None
    review_id: int | None = None
    side: str = "RIGHT"
    start_line: int | None = None


@dataclass
class _Review:
    id: int
    number: int
    body: str
    user: str
    state: str  # COMMENTED | APPROVED | CHANGES_REQUESTED
    commit_id: str
    submitted_at: datetime
    author_association: str


@dataclass
class _Reaction:
    id: int
    user: str
    content: str
    created_at: datetime


@dataclass
class _Event:
    id: int
    event: str
    actor: str
    created_at: datetime
    label: tuple[str, str] | None = None  # (name, color) as they were when the event happened
    rename: tuple[str, str] | None = None  # a ``renamed`` event's (from, to) titles


@dataclass
class _Edit:
    """One revision of an issue's body, as GraphQL's ``userContentEdits`` lists it (the whole text)."""

    id: int
    edited_at: datetime
    editor: str
    body: str | None
    deleted_at: datetime | None = None
    deleted_by: str | None = None


@dataclass
class _Pull:
    id: int
    head_ref: str
    head_sha: str
    base_ref: str
    draft: bool
    merged_at: datetime | None = None
    fork: str | None = None  # owner/name of the fork the head lives in (None: a branch of this repository)

    @property
    def fork_owner(self) -> str | None:
        """Who the fork belongs to (None: a branch of this repository)."""
        return None if self.fork is None else self.fork.partition("/")[0]


@dataclass
class _Issue:
    id: int
    number: int
    title: str
    body: str | None
    user: str
    state: str
    locked: bool
    labels: list[str]  # lower-case keys into _RepoState.labels
    created_at: datetime
    updated_at: datetime
    author_association: str
    closed_at: datetime | None = None
    closed_by: str | None = None
    state_reason: str | None = None
    pull: _Pull | None = None
    events: list[_Event] = field(default_factory=list)
    edits: list[_Edit] = field(default_factory=list)  # oldest first; empty until the body is edited


@dataclass
class _RepoState:
    repo: FakeRepo
    created_at: datetime
    labels: dict[str, _Label] = field(default_factory=dict)
    issues: dict[int, _Issue] = field(default_factory=dict)
    comments: dict[int, _Comment] = field(default_factory=dict)
    review_comments: dict[int, _ReviewComment] = field(default_factory=dict)
    reviews: dict[int, _Review] = field(default_factory=dict)
    # ("issues" | "pulls", comment id) -> reactions on that comment
    reactions: dict[tuple[str, int], list[_Reaction]] = field(default_factory=dict)
    permissions: dict[str, str] = field(default_factory=dict)  # lower-case login -> role
    refuse_pulls: tuple[int, str, str] | None = None  # (status, message, detail)
    next_number: int = 1
    statuses: list[_Status] = field(default_factory=list)  # commit statuses, oldest first


@dataclass
class _Status:
    """A commit status (``POST /repos/{o}/{r}/statuses/{sha}``)."""

    id: int
    sha: str
    state: str  # error | failure | pending | success
    context: str
    description: str | None
    target_url: str | None
    creator: str
    created_at: datetime


@dataclass
class _TokenInfo:
    login: str
    installation_id: int | None = None
    expires_at: float | None = None  # wall-clock epoch: clients compare it with their real clock


@dataclass
class _App:
    app_id: str
    public_key: str
    slug: str
    token_ttl: float
    owner: str


@dataclass
class _Installation:
    id: int
    app_id: str
    account: str
    repos: frozenset[str] | None  # lower-case full names, None = all repositories of the account
    created_at: datetime


@dataclass
class _Bucket:
    limit: int
    remaining: int
    reset: int


@dataclass
class _Fault:
    prefix: str
    status: int
    remaining: int
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass(frozen=True)
class _Identity:
    kind: str  # "user" | "installation" | "app"
    login: str
    bucket: str
    installation_id: int | None = None
    app_id: str | None = None


@dataclass
class _Request:
    method: str
    path: str
    raw_query: str
    headers: Mapping[str, str]
    body: bytes
    chunked: bool
    client: str

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(self.raw_query, keep_blank_values=True)


@dataclass
class _Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = "application/json; charset=utf-8"


@dataclass
class _Context:
    """What gets recorded about a request, filled in while it is handled."""

    auth: str = "none"
    login: str | None = None
    counted: bool = False
    conditional: bool = False
    kind: str = "other"
    injected: bool = False


class _HttpError(Exception):
    """Raised by handlers; turned into a GitHub-shaped JSON error response."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors
        self.headers = dict(headers or {})


@dataclass
class _Call:
    """A routed API request: the request, who made it, and helpers to read parameters."""

    request: _Request
    identity: _Identity
    sub_path: str

    def param(self, name: str, default: str | None = None) -> str | None:
        values = self.request.query.get(name)
        return values[0] if values else default

    def json(self) -> Any:
        if not self.request.body:
            return {}
        try:
            return json.loads(self.request.body)
        except ValueError as exc:
            raise _HttpError(400, "Problems parsing JSON") from exc

    def json_object(self) -> dict[str, Any]:
        data = self.json()
        if not isinstance(data, dict):
            raise _HttpError(400, "Problems parsing JSON")
        return data


def _iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise _HttpError(422, f"Invalid value for 'since': {value!r}") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _split_full_name(full_name: str) -> tuple[str, str]:
    owner, sep, name = full_name.partition("/")
    if not sep or not owner or not name or "/" in name:
        raise ValueError(f"expected 'owner/name', got {full_name!r}")
    return owner, name


def _validation_failed(*errors: dict[str, Any]) -> _HttpError:
    return _HttpError(422, "Validation Failed", errors=list(errors))


# GitHub's closing keywords: a merged pull request's description closes the issues they name.
_CLOSING_KEYWORD = re.compile(r"\b(?:close[sd]?|fix(?:e[sd])?|resolve[sd]?)\s*:?\s+#(?P<number>\d+)\b", re.I)

# The GraphQL mutations the fake answers, each with the draft flag it leaves on the pull request.
_DRAFT_MUTATIONS = {"markPullRequestReadyForReview": False, "convertPullRequestToDraft": True}
_MUTATION_RE = re.compile(
    r"\s*mutation\b[^{]*\{\s*(?P<name>[A-Za-z_]\w*)\s*\(\s*input\s*:\s*\$(?P<var>[A-Za-z_]\w*)\s*\)"
    r"\s*\{(?P<selection>.*)\}\s*\}\s*",
    re.DOTALL,
)


def _parse_selection(text: str) -> dict[str, Any]:
    """A GraphQL selection set (``a b { c }``, no arguments, aliases or fragments) as nested dicts."""
    tokens = re.findall(r"[A-Za-z_]\w*|[{}]|\S", text)
    position = 0

    def fields() -> dict[str, Any]:
        nonlocal position
        out: dict[str, Any] = {}
        while position < len(tokens) and tokens[position] != "}":
            token = tokens[position]
            if not re.fullmatch(r"[A-Za-z_]\w*", token):
                raise ValueError(f'Parse error on "{token}"')
            position += 1
            if position < len(tokens) and tokens[position] == "{":
                position += 1
                out[token] = fields()
                if position >= len(tokens):
                    raise ValueError('Parse error on end of input (expected "}")')
                position += 1
            else:
                out[token] = None
        return out

    selected = fields()
    if position != len(tokens):
        raise ValueError(f'Parse error on "{tokens[position]}"')
    return selected


def _select(values: dict[str, Any], selection: dict[str, Any], type_name: str = "Payload") -> dict[str, Any]:
    """The fields of ``values`` that ``selection`` asks for, as GraphQL answers only what was asked."""
    out: dict[str, Any] = {}
    for name, sub in selection.items():
        if name not in values:
            raise ValueError(f"Field '{name}' doesn't exist on type '{type_name}'")
        value = values[name]
        if isinstance(value, dict):
            if sub is None:
                raise ValueError(f"Field must have selections (field '{name}' returns an object)")
            out[name] = _select(value, sub, name[:1].upper() + name[1:])
        elif sub is not None:
            raise ValueError(f"Selections can't be made on scalars (field '{name}')")
        else:
            out[name] = value
    return out


@dataclass(frozen=True)
class _Field:
    """One field of a GraphQL query: ``alias: name(args) { selection }``."""

    name: str
    alias: str | None
    args: dict[str, Any]
    selection: tuple[_Field, ...] | None


class _GraphQLError(Exception):
    """A query GitHub refuses as a whole (an unknown field, a missing argument): no ``data``."""


class _GraphQLNotFound(Exception):
    """A node the query names does not exist: its field is ``null`` and ``errors`` says why."""


@dataclass(frozen=True)
class _Variable:
    name: str


_QUERY_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\$?[A-Za-z_]\w*|-?\d+|\.\.\.|[{}():!\[\],=@]|\S')


def _parse_query(text: str) -> tuple[_Field, ...]:
    """A GraphQL query document (``query Name($v: T!) { … }`` or ``{ … }``): fields with arguments,
    aliases and variables; no fragments or directives."""
    tokens = [t for t in _QUERY_TOKEN.findall(text) if t != ","]
    position = 0

    def peek() -> str | None:
        return tokens[position] if position < len(tokens) else None

    def take(expected: str | None = None) -> str:
        nonlocal position
        token = peek()
        if token is None:
            raise _GraphQLError("Parse error on end of input")
        if expected is not None and token != expected:
            raise _GraphQLError(f'Parse error on "{token}" (expected "{expected}")')
        position += 1
        return token

    def value() -> Any:
        token = take()
        if token.startswith('"'):
            return json.loads(token)
        if token.startswith("$"):
            return _Variable(token[1:])
        if re.fullmatch(r"-?\d+", token):
            return int(token)
        return {"true": True, "false": False, "null": None}.get(token, token)

    def selection() -> tuple[_Field, ...]:
        take("{")
        fields: list[_Field] = []
        while peek() != "}":
            name = take()
            if not re.fullmatch(r"[A-Za-z_]\w*", name):
                raise _GraphQLError(f'Parse error on "{name}"')
            alias = None
            if peek() == ":":
                take(":")
                alias, name = name, take()
            args: dict[str, Any] = {}
            if peek() == "(":
                take("(")
                while peek() != ")":
                    key = take()
                    take(":")
                    args[key] = value()
                take(")")
            sub = selection() if peek() == "{" else None
            fields.append(_Field(name, alias, args, sub))
        take("}")
        return tuple(fields)

    if peek() == "query":
        take("query")
        if peek() not in ("(", "{"):
            take()  # the operation's name
        if peek() == "(":  # variable definitions: their types are not checked here
            depth = 0
            while True:
                token = take()
                depth += token == "("
                depth -= token == ")"
                if depth == 0:
                    break
    fields = selection()
    if peek() is not None:
        raise _GraphQLError(f'Parse error on "{peek()}"')
    return fields


def _resolve(
    values: dict[str, Any],
    fields: tuple[_Field, ...],
    variables: dict[str, Any],
    path: list[str | int],
    errors: list[dict[str, Any]],
) -> dict[str, Any]:
    """Answer ``fields`` from ``values`` (an object: its ``__typename`` and fields, each a value or a
    function of the field's arguments), as GitHub's GraphQL does: only what was asked."""
    type_name = values.get("__typename", "Object")
    out: dict[str, Any] = {}
    for f in fields:
        key = f.alias or f.name
        if f.name not in values:
            raise _GraphQLError(f"Field '{f.name}' doesn't exist on type '{type_name}'")
        args = {k: variables.get(v.name) if isinstance(v, _Variable) else v for k, v in f.args.items()}
        found = values[f.name]
        try:
            found = found(args) if callable(found) else found
        except _GraphQLNotFound as exc:
            errors.append(
                {
                    "type": "NOT_FOUND",
                    "path": [*path, key],
                    "locations": [{"line": 1, "column": 1}],
                    "message": str(exc),
                }
            )
            out[key] = None
            continue
        out[key] = _resolved_value(found, f, variables, [*path, key], errors)
    return out


def _resolved_value(
    found: Any, f: _Field, variables: dict[str, Any], path: list[str | int], errors: list[dict[str, Any]]
) -> Any:
    if found is None:
        return None
    if isinstance(found, list):
        return [_resolved_value(item, f, variables, [*path, n], errors) for n, item in enumerate(found)]
    if isinstance(found, dict):
        if f.selection is None:
            raise _GraphQLError(
                f"Field must have selections (field '{f.name}' returns {found['__typename']})"
            )
        return _resolve(found, f.selection, variables, path, errors)
    if f.selection is not None:
        raise _GraphQLError(f"Selections can't be made on scalars (field '{f.name}')")
    return found


def _node_id(prefix: str, number: int) -> str:
    return prefix + base64.b64encode(f"{prefix}{number}".encode()).decode().rstrip("=")


# --------------------------------------------------------------------------------------------------
# HTTP plumbing


class _Handler(LoopbackHandler):
    """Reads a whole request, hands it to :class:`FakeGitHub`, writes the response with a length.

    HTTP/1.1 with keep-alive, like GitHub: PyGithub pools connections and git sends
    ``Expect: 100-continue`` and chunked bodies, which only HTTP/1.1 servers handle.
    """

    def dispatch(self) -> None:
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        body = self.read_body()
        split = urlsplit(self.path)
        request = _Request(
            method=self.command,
            path=split.path,
            raw_query=split.query,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            chunked=chunked,
            client=self.client_address[0],
        )
        response = self.server.fake._handle(request)
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        if response.status not in (204, 304):
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if response.status not in (204, 304) and response.body:
            self.wfile.write(response.body)


# --------------------------------------------------------------------------------------------------
# The fake


_HandlerFn = Callable[..., _Response]


class FakeGitHub(ReviewsApi, LoopbackFake[RecordedRequest]):
    """In-memory GitHub served over loopback HTTP; see the module docstring for scope and caveats.

    The socket is bound in the constructor so :attr:`api_url` and clone URLs are known before
    :meth:`start`. All state sits behind one re-entrant lock; every public method is thread-safe.
    """

    def __init__(
        self,
        root: Path,
        *,
        tokens: Iterable[str] = ("test-token",),
        login: str = DEFAULT_LOGIN,
        host: str = "127.0.0.1",
        port: int = 0,
        rate_limit: int = 5000,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        """``root``: where bare repositories are created (``root/owner/name.git``).

        ``tokens`` are personal access tokens owned by ``login``; ``clock`` (returning aware datetimes)
        lets tests control timestamps.
        """
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._ids = itertools.count(1001)
        self._user_ids: dict[str, int] = {}
        self._repos: dict[str, _RepoState] = {}
        self._tokens: dict[str, _TokenInfo] = {t: _TokenInfo(login) for t in tokens}
        self._apps: dict[str, _App] = {}
        self._installations: dict[int, _Installation] = {}
        self._rate_limit = rate_limit
        self._buckets: dict[str, _Bucket] = {}
        self._default_remaining: int | None = None  # set_rate_limit() for credentials not seen yet
        self._default_reset: int | None = None
        self._faults: list[_Fault] = []
        self._delays: dict[str, float] = {}
        self._poll_intervals: dict[str, int] = {}  # path prefix -> X-Poll-Interval seconds
        self._requests: list[RecordedRequest] = []
        self._server = LoopbackServer(self, (host, port), _Handler)
        bound_host, bound_port = self._server.server_address[:2]
        self.web_url = f"http://{bound_host}:{bound_port}"
        self.api_url = f"{self.web_url}{API_PREFIX}"
        self._routes = self._build_routes()

    # ---- lifecycle -------------------------------------------------------------------------------

    # ---- credentials -----------------------------------------------------------------------------

    def add_token(self, token: str, login: str = DEFAULT_LOGIN) -> None:
        """Accept ``token`` as a personal access token of ``login`` (API and git)."""
        with self._lock:
            self._tokens[token] = _TokenInfo(login)

    def revoke_token(self, token: str) -> None:
        """Make ``token`` invalid from now on (401 "Bad credentials"), e.g. to test token rotation."""
        with self._lock:
            self._tokens.pop(token, None)

    def add_app(
        self,
        app_id: int | str,
        public_key_pem: str | bytes,
        *,
        slug: str = "fake-app",
        token_ttl: float = 3600,
    ) -> None:
        """Register a GitHub App whose JWTs (RS256, ``iss`` = app id) are verified with ``public_key_pem``.

        Until :meth:`install_app` is called the app counts as installed on every account, so the
        simple flow needs no extra setup. Installation tokens live ``token_ttl`` seconds.
        """
        key = public_key_pem.decode() if isinstance(public_key_pem, bytes) else public_key_pem
        with self._lock:
            self._apps[str(app_id)] = _App(str(app_id), key, slug, token_ttl, owner="fake-app-owner")

    def install_app(self, app_id: int | str, account: str, *, repos: Iterable[str] | None = None) -> int:
        """Install an app on ``account`` (all its repositories, or only ``repos``); returns the id."""
        with self._lock:
            if str(app_id) not in self._apps:
                raise KeyError(f"unknown app {app_id}")
            inst = _Installation(
                id=next(self._ids),
                app_id=str(app_id),
                account=account,
                repos=None if repos is None else frozenset(r.lower() for r in repos),
                created_at=self._now(),
            )
            self._installations[inst.id] = inst
            return inst.id

    # ---- repositories ----------------------------------------------------------------------------

    def create_repo(
        self,
        full_name: str,
        files: Mapping[str, str | bytes] | None = None,
        *,
        default_branch: str = "main",
        private: bool = True,
    ) -> FakeRepo:
        """Create a real bare repository with one commit holding ``files`` (default: a README.md).

        ``files={}`` creates an empty repository (no commit). The repository starts with the
        :data:`DEFAULT_LABELS` and accepts pushes over HTTP.
        """
        owner, name = _split_full_name(full_name)
        path = self.root / owner / f"{name}.git"
        with self._lock:
            if full_name.lower() in self._repos:
                raise ValueError(f"repository {full_name} already exists")
            path.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                ["git", "init", "--bare", "--quiet", f"--initial-branch={default_branch}", str(path)],
                check=True,
                capture_output=True,
                env=_git_env(),
            )
            _run_git(path, "config", "http.receivepack", "true")
            repo = FakeRepo(
                owner=owner,
                name=name,
                id=next(self._ids),
                path=path,
                clone_url=f"{self.web_url}/{owner}/{name}.git",
                html_url=f"{self.web_url}/{owner}/{name}",
                default_branch=default_branch,
                private=private,
            )
            state = _RepoState(repo=repo, created_at=self._now())
            for label_name, color, description in DEFAULT_LABELS:
                state.labels[label_name.lower()] = _Label(
                    next(self._ids), label_name, color, description, True
                )
            self._repos[full_name.lower()] = state
        content = {"README.md": f"# {name}\n"} if files is None else files
        if content:
            self.commit_files(full_name, default_branch, content, message="Initial commit")
        return repo

    def repo(self, full_name: str) -> FakeRepo:
        """The handle of an existing repository (KeyError if unknown)."""
        with self._lock:
            return self._state(full_name).repo

    def commit_files(
        self,
        full_name: str,
        branch: str,
        files: Mapping[str, str | bytes],
        *,
        message: str = "Update files",
        parent: str | None = None,
        author: str = "Fake GitHub <noreply@example.invalid>",
    ) -> str:
        """Commit ``files`` onto ``branch`` directly in the bare repository; returns the new sha.

        The branch is created from ``parent`` (a ref or sha; default: the branch itself if it exists,
        else the default branch, else a root commit). Handy to prepare branches without a clone.
        """
        repo = self.repo(full_name)
        start = parent or (branch if repo.branch_sha(branch) else repo.default_branch)
        start_sha = _run_git(
            repo.path, "rev-parse", "--verify", "--quiet", f"{start}^{{commit}}", check=False
        )
        stamp = f"{int(self._now().timestamp())} +0000"
        msg = message.encode()
        stream = bytearray()
        stream += f"commit refs/heads/{branch}\n".encode()
        stream += f"author {author} {stamp}\ncommitter {author} {stamp}\n".encode()
        stream += f"data {len(msg)}\n".encode() + msg + b"\n"
        if start_sha.strip():
            stream += f"from {start_sha.strip()}\n".encode()
        for path, data in files.items():
            blob = data.encode() if isinstance(data, str) else data
            stream += f"M 100644 inline {path}\ndata {len(blob)}\n".encode() + blob + b"\n"
        stream += b"\n"
        _run_git(repo.path, "fast-import", "--quiet", "--force", input=bytes(stream))
        sha = repo.branch_sha(branch)
        assert sha is not None
        return sha

    def set_permission(self, full_name: str, login: str, permission: str) -> None:
        """Give ``login`` a role on the repository (one of :data:`PERMISSIONS`)."""
        if permission not in PERMISSIONS:
            raise ValueError(f"permission must be one of {PERMISSIONS}, got {permission!r}")
        with self._lock:
            self._state(full_name).permissions[login.lower()] = permission
            self._changed.notify_all()

    # ---- issues, labels, comments (server-side actions, as if done on github.com) ---------------

    def create_issue(
        self,
        full_name: str,
        title: str,
        body: str = "",
        *,
        user: str = "alice",
        labels: Iterable[str] = (),
        labeled_by: str | None = None,
        state: str = "open",
        locked: bool = False,
        is_pull_request: bool = False,
        author_association: str = "OWNER",
    ) -> dict[str, Any]:
        """Open an issue (or a pull request without a real branch when ``is_pull_request``).

        Each initial label gets a ``labeled`` event by ``labeled_by`` (default: the author), which is
        what the daemon checks to know who asked for Claude. Returns the issue JSON.
        """
        with self._lock:
            st = self._state(full_name)
            now = self._now()
            issue = _Issue(
                id=next(self._ids),
                number=st.next_number,
                title=title,
                body=body,
                user=user,
                state=state,
                locked=locked,
                labels=[],
                created_at=now,
                updated_at=now,
                author_association=author_association,
            )
            st.next_number += 1
            if state == "closed":
                issue.closed_at, issue.closed_by, issue.state_reason = now, user, "completed"
            if is_pull_request:
                sha = st.repo.branch_sha(st.repo.default_branch) or ""
                issue.pull = _Pull(
                    next(self._ids), f"feature-{issue.number}", sha, st.repo.default_branch, False
                )
            st.issues[issue.number] = issue
            for label in labels:
                self._apply_label(st, issue, label, labeled_by or user)
            self._changed.notify_all()
            return self._issue_json(st, issue)

    def add_label(self, full_name: str, number: int, label: str, *, actor: str) -> None:
        """Label an issue as ``actor`` (records a ``labeled`` event, bumps ``updated_at``)."""
        with self._lock:
            st = self._state(full_name)
            self._apply_label(st, self._issue(st, number), label, actor)
            self._changed.notify_all()

    def remove_label(self, full_name: str, number: int, label: str, *, actor: str) -> None:
        """Remove a label as ``actor`` (records an ``unlabeled`` event, bumps ``updated_at``)."""
        with self._lock:
            st = self._state(full_name)
            self._drop_label(st, self._issue(st, number), label, actor)
            self._changed.notify_all()

    def edit_issue(
        self,
        full_name: str,
        number: int,
        *,
        title: str | None = None,
        body: str | None = None,
        state: str | None = None,
        locked: bool | None = None,
        actor: str | None = None,
    ) -> None:
        """Change an issue like a user would on github.com (``actor`` defaults to the author)."""
        with self._lock:
            st = self._state(full_name)
            issue = self._issue(st, number)
            self._edit(issue, actor or issue.user, title=title, body=body, state=state, locked=locked)
            self._changed.notify_all()

    def add_comment(
        self,
        full_name: str,
        number: int,
        body: str,
        *,
        user: str = "alice",
        author_association: str = "OWNER",
    ) -> dict[str, Any]:
        """Comment on an issue or pull request; returns the comment JSON."""
        with self._lock:
            st = self._state(full_name)
            comment = self._new_comment(st, self._issue(st, number), body, user, author_association)
            self._changed.notify_all()
            return self._comment_json(st, comment)

    def edit_comment(self, full_name: str, comment_id: int, body: str) -> dict[str, Any]:
        """Edit a conversation comment like its author would (bumps its ``updated_at``)."""
        with self._lock:
            st = self._state(full_name)
            comment = st.comments[comment_id]
            comment.body = body
            comment.updated_at = max(self._now(), comment.updated_at)
            self._touch(st.issues[comment.number])
            self._changed.notify_all()
            return self._comment_json(st, comment)

    def add_review_comment(
        self,
        full_name: str,
        number: int,
        body: str,
        *,
        path: str,
        line: int = 1,
        user: str = "alice",
        author_association: str = "OWNER",
        diff_hunk: str | None = None,
        in_reply_to: int | None = None,
    ) -> dict[str, Any]:
        """Comment on a line of pull request ``number``'s diff (a reply when ``in_reply_to``)."""
        with self._lock:
            st = self._state(full_name)
            issue = self._issue(st, number)
            if issue.pull is None:
                raise KeyError(f"{full_name}#{number} is not a pull request")
            comment = self._new_review_comment(
                st, issue, body, user, author_association, path, line, diff_hunk, in_reply_to
            )
            self._changed.notify_all()
            return self._review_comment_json(st, comment)

    def add_review(
        self,
        full_name: str,
        number: int,
        body: str,
        *,
        user: str = "alice",
        state: str = "COMMENTED",
        author_association: str = "OWNER",
    ) -> dict[str, Any]:
        """Submit a review of pull request ``number`` with ``body``."""
        with self._lock:
            st = self._state(full_name)
            issue = self._issue(st, number)
            assert issue.pull is not None
            now = self._touch(issue)
            head = self._pull_head(st.repo, issue.pull)
            review = _Review(next(self._ids), number, body, user, state, head, now, author_association)
            st.reviews[review.id] = review
            self._changed.notify_all()
            return self._review_json(st, review)

    def review_comments(self, full_name: str, number: int) -> list[dict[str, Any]]:
        """Review comments of a pull request, oldest first."""
        with self._lock:
            st = self._state(full_name)
            return [
                self._review_comment_json(st, c)
                for c in sorted(st.review_comments.values(), key=lambda c: c.id)
                if c.number == number
            ]

    def reactions(self, full_name: str, kind: str, comment_id: int) -> list[dict[str, Any]]:
        """Reactions on a comment; ``kind`` is ``issues`` (conversation) or ``pulls`` (review line)."""
        with self._lock:
            st = self._state(full_name)
            return [self._reaction_json(r) for r in st.reactions.get((kind, comment_id), [])]

    def merge_pull(self, full_name: str, number: int, *, actor: str = "alice") -> None:
        """Merge pull request ``number`` (its head fast-forwards the base, like a merge without conflict).

        As on GitHub, a merge into the default branch closes the open issues its description names
        with a closing keyword (``Fixes #1``, ``closes #2``, ``Resolved #3``).
        """
        with self._lock:
            st = self._state(full_name)
            issue = self._issue(st, number)
            assert issue.pull is not None
            head = st.repo.branch_sha(issue.pull.head_ref)
            assert head is not None
            st.repo.git("update-ref", f"refs/heads/{issue.pull.base_ref}", head)
            self._edit(issue, actor, state="closed")
            issue.pull.merged_at = self._now()
            if issue.pull.base_ref == st.repo.default_branch:
                for found in _CLOSING_KEYWORD.finditer(issue.body or ""):
                    closed = st.issues.get(int(found["number"]))
                    if closed is not None and closed.pull is None and closed.state == "open":
                        self._edit(closed, actor, state="closed")
            self._changed.notify_all()

    def issue(self, full_name: str, number: int) -> dict[str, Any]:
        """The issue JSON, as ``GET /repos/{o}/{r}/issues/{n}`` would return it."""
        with self._lock:
            st = self._state(full_name)
            return self._issue_json(st, self._issue(st, number))

    def comments(self, full_name: str, number: int) -> list[dict[str, Any]]:
        """Comments of an issue, oldest first."""
        with self._lock:
            st = self._state(full_name)
            self._issue(st, number)
            return [self._comment_json(st, c) for c in self._issue_comments(st, number)]

    def events(self, full_name: str, number: int) -> list[dict[str, Any]]:
        """Events of an issue, oldest first."""
        with self._lock:
            st = self._state(full_name)
            issue = self._issue(st, number)
            return [self._event_json(st, e) for e in issue.events]

    def open_fork_pull(
        self,
        full_name: str,
        files: Mapping[str, str | bytes],
        *,
        title: str,
        user: str,
        head_ref: str = "patch-1",
        base: str | None = None,
        body: str = "",
        fork_branch: str | None = None,  # the same as head_ref
        message: str | None = None,
    ) -> dict[str, Any]:
        """A person's pull request from their fork (``user/<name>``): its commit (``files`` on the base
        branch) exists in this repository only as ``refs/pull/N/head``, as on GitHub."""
        head_ref = fork_branch or head_ref
        repo = self.repo(full_name)
        base_ref = base or repo.default_branch
        scratch = f"cis-fork-scratch-{next(self._ids)}"
        sha = self.commit_files(full_name, scratch, files, message=message or title, parent=base_ref)
        with self._lock:
            st = self._state(full_name)
            repo.git("update-ref", "-d", f"refs/heads/{scratch}")
            now = self._now()
            fork = f"{user}/{repo.name}"
            issue = _Issue(
                id=next(self._ids),
                number=st.next_number,
                title=title,
                body=body,
                user=user,
                state="open",
                locked=False,
                labels=[],
                created_at=now,
                updated_at=now,
                author_association="CONTRIBUTOR",
                pull=_Pull(next(self._ids), head_ref, sha, base_ref, False, fork=fork),
            )
            st.next_number += 1
            st.issues[issue.number] = issue
            self._sync_pull_refs(st)
            return self._pull_json(st, issue)

    def pulls(self, full_name: str) -> list[dict[str, Any]]:
        """All pull requests (any state), oldest first."""
        with self._lock:
            st = self._state(full_name)
            return [
                self._pull_json(st, i) for i in sorted(st.issues.values(), key=lambda i: i.number) if i.pull
            ]

    # ---- fault injection -------------------------------------------------------------------------

    def fail_next(
        self,
        path_prefix: str,
        status: int,
        count: int = 1,
        *,
        headers: Mapping[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        """Answer the next ``count`` requests whose path starts with ``path_prefix`` with ``status``.

        Checked before authentication, like a failing proxy in front of GitHub. Examples: a 502
        burst; ``403 {"message": "API rate limit exceeded ..."}`` with ``X-RateLimit-Remaining: 0``
        and ``X-RateLimit-Reset``; ``429`` with ``Retry-After``. Injected answers are not counted.
        """
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        payload = body if body is not None else {"message": phrase}
        with self._lock:
            self._faults.append(_Fault(path_prefix, status, count, dict(headers or {}), payload))

    def secondary_limit(
        self, path_prefix: str, *, status: int = 403, retry_after: int | None = 60, count: int = 1
    ) -> None:
        """Answer the next ``count`` matching requests as GitHub's secondary rate limit does: 403 (or
        429) with the documented message, ``Retry-After`` when given, and ``X-RateLimit-Remaining``
        not at zero (the primary limit is fine)."""
        headers = {"X-RateLimit-Remaining": "4999", "X-RateLimit-Limit": "5000"}
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        body = {
            "message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try "
            "again. If you reach out to GitHub Support for help, please include the request ID "
            "0000:1111:2222:3333:44444444.",
            "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"
            "#about-secondary-rate-limits",
        }
        self.fail_next(path_prefix, status, count, headers=headers, body=body)

    def set_poll_interval(self, path_prefix: str, seconds: int) -> None:
        """Send ``X-Poll-Interval: seconds`` on answers to matching API paths (as GitHub does on its
        events and notifications listings); ``seconds <= 0`` stops it."""
        with self._lock:
            if seconds > 0:
                self._poll_intervals[path_prefix] = seconds
            else:
                self._poll_intervals.pop(path_prefix, None)

    def set_delay(self, path_prefix: str, seconds: float) -> None:
        """Delay answers to matching paths (longest prefix wins); ``seconds <= 0`` removes the delay."""
        with self._lock:
            if seconds > 0:
                self._delays[path_prefix] = seconds
            else:
                self._delays.pop(path_prefix, None)

    def set_rate_limit(
        self,
        remaining: int,
        *,
        limit: int | None = None,
        reset_in: float = _RATE_LIMIT_WINDOW,
        token: str | None = None,
    ) -> None:
        """Set the remaining core quota of one credential (or of all, including future ones).

        At zero, counted requests get GitHub's 403 "API rate limit exceeded" until the reset time.
        """
        with self._lock:
            reset = int(time.time() + reset_in)
            if token is None:
                self._rate_limit = limit or self._rate_limit
                keys = list(self._buckets)
                self._default_remaining = remaining
                self._default_reset = reset
            else:
                keys = [token]
            for key in keys:
                self._buckets[key] = _Bucket(limit or self._rate_limit, remaining, reset)

    def refuse_pull_creation(
        self,
        full_name: str,
        status: int = 422,
        message: str = "Validation Failed",
        *,
        detail: str = "Pull request creation refused (fault injected by FakeGitHub).",
    ) -> None:
        """Make ``POST /pulls`` fail with ``status`` until :meth:`allow_pull_creation`."""
        with self._lock:
            self._state(full_name).refuse_pulls = (status, message, detail)

    def allow_pull_creation(self, full_name: str) -> None:
        with self._lock:
            self._state(full_name).refuse_pulls = None

    def reject_pushes(self, full_name: str, reason: str = "pushes are disabled on this repository") -> None:
        """Make every push fail via a pre-receive hook printing ``reason`` (git shows ``remote: ...``)."""
        repo = self.repo(full_name)
        hooks = repo.path / "hooks"
        hooks.mkdir(exist_ok=True)
        (repo.path / "fake-github-reject-reason").write_text(reason + "\n")
        hook = hooks / "pre-receive"
        hook.write_text('#!/bin/sh\ncat "$GIT_DIR/fake-github-reject-reason" >&2\nexit 1\n')
        hook.chmod(0o755)

    def allow_pushes(self, full_name: str) -> None:
        repo = self.repo(full_name)
        (repo.path / "hooks" / "pre-receive").unlink(missing_ok=True)

    # ---- traffic ---------------------------------------------------------------------------------

    def reset_counts(self) -> None:
        """Forget recorded requests and refill every rate-limit bucket."""
        with self._lock:
            self._requests.clear()
            self._buckets.clear()
            self._default_remaining = None
            self._default_reset = None

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Block until ``predicate()`` is true (re-checked after every request or change) or timeout.

        The predicate runs under the fake's lock, so it may call the fake's accessors.
        """
        with self._changed:
            return self._changed.wait_for(predicate, timeout)

    # ==============================================================================================
    # Internals: model helpers (callers hold the lock)

    def _now(self) -> datetime:
        return self._clock().astimezone(UTC).replace(microsecond=0)

    def _state(self, full_name: str) -> _RepoState:
        try:
            return self._repos[full_name.lower()]
        except KeyError:
            raise KeyError(f"unknown repository {full_name}") from None

    @staticmethod
    def _issue(st: _RepoState, number: int) -> _Issue:
        try:
            return st.issues[int(number)]
        except (KeyError, ValueError):
            raise KeyError(f"unknown issue {st.repo.full_name}#{number}") from None

    def _touch(self, issue: _Issue) -> datetime:
        now = max(self._now(), issue.updated_at)
        issue.updated_at = now
        return now

    def _ensure_label(self, st: _RepoState, name: str) -> _Label:
        """GitHub creates unknown labels on the fly when they are applied to an issue."""
        key = name.lower()
        if key not in st.labels:
            st.labels[key] = _Label(next(self._ids), name, "ededed", "")
        return st.labels[key]

    def _apply_label(self, st: _RepoState, issue: _Issue, name: str, actor: str) -> None:
        label = self._ensure_label(st, name)
        key = label.name.lower()
        if key in issue.labels:
            return
        issue.labels.append(key)
        now = self._touch(issue)
        issue.events.append(_Event(next(self._ids), "labeled", actor, now, (label.name, label.color)))

    def _drop_label(self, st: _RepoState, issue: _Issue, name: str, actor: str) -> bool:
        key = name.lower()
        if key not in issue.labels:
            return False
        issue.labels.remove(key)
        label = st.labels.get(key) or _Label(0, name, "ededed", "")
        now = self._touch(issue)
        issue.events.append(_Event(next(self._ids), "unlabeled", actor, now, (label.name, label.color)))
        return True

    def _edit(
        self,
        issue: _Issue,
        actor: str,
        *,
        title: str | None = None,
        body: str | None = None,
        state: str | None = None,
        locked: bool | None = None,
        state_reason: str | None = None,
        set_body: bool = False,
    ) -> None:
        changed = False
        if title is not None and title != issue.title:
            now = self._touch(issue)
            issue.events.append(_Event(next(self._ids), "renamed", actor, now, rename=(issue.title, title)))
            issue.title, changed = title, True
        if (body is not None or set_body) and body != issue.body:
            now = self._touch(issue)
            if not issue.edits:  # as on GitHub, the first edit also records the text as it was created
                issue.edits.append(_Edit(next(self._ids), issue.created_at, issue.user, issue.body or ""))
            issue.edits.append(_Edit(next(self._ids), now, actor, body or ""))
            issue.body, changed = body, True
        if state is not None and state != issue.state:
            if state not in ("open", "closed"):
                raise _validation_failed({"resource": "Issue", "field": "state", "code": "invalid"})
            issue.state, changed = state, True
            now = self._touch(issue)
            if state == "closed":
                issue.closed_at, issue.closed_by = now, actor
                issue.state_reason = state_reason or "completed"
                issue.events.append(_Event(next(self._ids), "closed", actor, now))
            else:
                issue.closed_at, issue.closed_by = None, None
                issue.state_reason = "reopened"
                issue.events.append(_Event(next(self._ids), "reopened", actor, now))
        if locked is not None and locked != issue.locked:
            issue.locked, changed = locked, True
            now = self._touch(issue)
            issue.events.append(_Event(next(self._ids), "locked" if locked else "unlocked", actor, now))
        if changed:
            self._touch(issue)

    def _new_comment(
        self, st: _RepoState, issue: _Issue, body: str, user: str, author_association: str
    ) -> _Comment:
        now = self._touch(issue)
        comment = _Comment(next(self._ids), issue.number, body, user, now, now, author_association)
        st.comments[comment.id] = comment
        return comment

    def _new_review_comment(
        self,
        st: _RepoState,
        issue: _Issue,
        body: str,
        user: str,
        association: str,
        path: str,
        line: int,
        diff_hunk: str | None,
        in_reply_to: int | None,
    ) -> _ReviewComment:
        assert issue.pull is not None
        now = self._touch(issue)
        head = self._pull_head(st.repo, issue.pull)
        hunk = diff_hunk if diff_hunk is not None else f"@@ -{line},1 +{line},1 @@"
        comment = _ReviewComment(
            next(self._ids),
            issue.number,
            body,
            user,
            path,
            line,
            hunk,
            head,
            now,
            now,
            association,
            in_reply_to,
        )
        st.review_comments[comment.id] = comment
        return comment

    @staticmethod
    def _issue_comments(st: _RepoState, number: int) -> list[_Comment]:
        return sorted((c for c in st.comments.values() if c.number == number), key=lambda c: c.id)

    def _role(self, st: _RepoState, login: str) -> str:
        if login.lower() == st.repo.owner.lower():
            return st.permissions.get(login.lower(), "admin")
        return st.permissions.get(login.lower(), "read")

    # ---- JSON renderers (GitHub's shapes, as read by PyGithub) -----------------------------------

    def _user_json(self, login: str) -> dict[str, Any]:
        uid = self._user_ids.setdefault(login.lower(), 500 + len(self._user_ids))
        quoted = quote(login, safe="")
        return {
            "login": login,
            "id": uid,
            "node_id": _node_id("U_", uid),
            "avatar_url": f"{self.web_url}/avatars/{quoted}",
            "gravatar_id": "",
            "url": f"{self.api_url}/users/{quoted}",
            "html_url": f"{self.web_url}/{quoted}",
            "type": "Bot" if login.endswith("[bot]") else "User",
            "site_admin": False,
        }

    def _repo_json(self, st: _RepoState, viewer: _Identity | None = None) -> dict[str, Any]:
        repo = st.repo
        api = f"{self.api_url}/repos/{repo.full_name}"
        open_issues = sum(1 for i in st.issues.values() if i.state == "open")
        if viewer is None:
            flags: tuple[str, ...] = _ROLE_FLAGS["read"]
        elif viewer.kind == "installation":
            flags = _ROLE_FLAGS["write"]
        else:
            flags = _ROLE_FLAGS[self._role(st, viewer.login)]
        return {
            "id": repo.id,
            "node_id": _node_id("R_", repo.id),
            "name": repo.name,
            "full_name": repo.full_name,
            "owner": self._user_json(repo.owner),
            "private": repo.private,
            "visibility": "private" if repo.private else "public",
            "description": None,
            "fork": False,
            "archived": False,
            "disabled": False,
            "html_url": repo.html_url,
            "url": api,
            "clone_url": repo.clone_url,
            "git_url": repo.clone_url.replace("http://", "git://", 1),
            "ssh_url": f"git@127.0.0.1:{repo.full_name}.git",
            "svn_url": repo.html_url,
            "issues_url": f"{api}/issues{{/number}}",
            "pulls_url": f"{api}/pulls{{/number}}",
            "labels_url": f"{api}/labels{{/name}}",
            "default_branch": repo.default_branch,
            "has_issues": True,
            "has_projects": False,
            "has_wiki": False,
            "open_issues_count": open_issues,
            "open_issues": open_issues,
            "forks_count": 0,
            "stargazers_count": 0,
            "watchers_count": 0,
            "size": 0,
            "language": None,
            "topics": [],
            "created_at": _iso(st.created_at),
            "updated_at": _iso(st.created_at),
            "pushed_at": _iso(st.created_at),
            "permissions": {flag: flag in flags for flag in ("admin", "maintain", "push", "triage", "pull")},
        }

    def _label_json(self, st: _RepoState, label: _Label) -> dict[str, Any]:
        return {
            "id": label.id,
            "node_id": _node_id("LA_", label.id),
            "url": f"{self.api_url}/repos/{st.repo.full_name}/labels/{quote(label.name, safe='')}",
            "name": label.name,
            "color": label.color,
            "default": label.default,
            "description": label.description or None,
        }

    def _issue_json(self, st: _RepoState, issue: _Issue) -> dict[str, Any]:
        full = st.repo.full_name
        api = f"{self.api_url}/repos/{full}/issues/{issue.number}"
        kind = "pull" if issue.pull else "issues"
        comment_count = sum(1 for c in st.comments.values() if c.number == issue.number)
        data: dict[str, Any] = {
            "url": api,
            "repository_url": f"{self.api_url}/repos/{full}",
            "labels_url": f"{api}/labels{{/name}}",
            "comments_url": f"{api}/comments",
            "events_url": f"{api}/events",
            "html_url": f"{self.web_url}/{full}/{kind}/{issue.number}",
            "timeline_url": f"{api}/timeline",
            "id": issue.id,
            "node_id": _node_id("I_", issue.id),
            "number": issue.number,
            "title": issue.title,
            "user": self._user_json(issue.user),
            "labels": [self._label_json(st, st.labels[k]) for k in issue.labels if k in st.labels],
            "state": issue.state,
            "state_reason": issue.state_reason,
            "locked": issue.locked,
            "active_lock_reason": None,
            "assignee": None,
            "assignees": [],
            "milestone": None,
            "comments": comment_count,
            "created_at": _iso(issue.created_at),
            "updated_at": _iso(issue.updated_at),
            "closed_at": _iso(issue.closed_at),
            "closed_by": self._user_json(issue.closed_by) if issue.closed_by else None,
            "author_association": issue.author_association,
            "body": issue.body,
            "performed_via_github_app": None,
            "reactions": self._reactions(f"{api}/reactions"),
        }
        if issue.pull:
            pulls = f"{self.api_url}/repos/{full}/pulls/{issue.number}"
            html = f"{self.web_url}/{full}/pull/{issue.number}"
            data["draft"] = issue.pull.draft
            data["pull_request"] = {
                "url": pulls,
                "html_url": html,
                "diff_url": f"{html}.diff",
                "patch_url": f"{html}.patch",
                "merged_at": _iso(issue.pull.merged_at),
            }
        return data

    @staticmethod
    def _reactions(url: str) -> dict[str, Any]:
        keys = ("+1", "-1", "laugh", "hooray", "confused", "heart", "rocket", "eyes")
        return {"url": url, "total_count": 0, **dict.fromkeys(keys, 0)}

    def _comment_json(self, st: _RepoState, comment: _Comment) -> dict[str, Any]:
        full = st.repo.full_name
        issue = st.issues.get(comment.number)
        kind = "pull" if issue and issue.pull else "issues"
        url = f"{self.api_url}/repos/{full}/issues/comments/{comment.id}"
        return {
            "id": comment.id,
            "node_id": _node_id("IC_", comment.id),
            "url": url,
            "html_url": f"{self.web_url}/{full}/{kind}/{comment.number}#issuecomment-{comment.id}",
            "issue_url": f"{self.api_url}/repos/{full}/issues/{comment.number}",
            "body": comment.body,
            "user": self._user_json(comment.user),
            "created_at": _iso(comment.created_at),
            "updated_at": _iso(comment.updated_at),
            "author_association": comment.author_association,
            "performed_via_github_app": None,
            "reactions": self._reactions(f"{url}/reactions"),
        }

    def _review_comment_json(self, st: _RepoState, comment: _ReviewComment) -> dict[str, Any]:
        full = st.repo.full_name
        url = f"{self.api_url}/repos/{full}/pulls/comments/{comment.id}"
        data: dict[str, Any] = {
            "id": comment.id,
            "node_id": _node_id("PRRC_", comment.id),
            "url": url,
            "pull_request_review_id": comment.review_id,
            "html_url": f"{self.web_url}/{full}/pull/{comment.number}#discussion_r{comment.id}",
            "pull_request_url": f"{self.api_url}/repos/{full}/pulls/{comment.number}",
            "diff_hunk": comment.diff_hunk,
            "path": comment.path,
            "position": comment.line,
            "original_position": comment.line,
            "line": comment.line,
            "original_line": comment.line,
            "side": comment.side,
            "start_line": comment.start_line,
            "commit_id": comment.commit_id,
            "original_commit_id": comment.commit_id,
            "body": comment.body,
            "user": self._user_json(comment.user),
            "created_at": _iso(comment.created_at),
            "updated_at": _iso(comment.updated_at),
            "author_association": comment.author_association,
            "reactions": self._reactions(f"{url}/reactions"),
        }
        if comment.in_reply_to is not None:
            data["in_reply_to_id"] = comment.in_reply_to
        return data

    def _review_json(self, st: _RepoState, review: _Review) -> dict[str, Any]:
        full = st.repo.full_name
        return {
            "id": review.id,
            "node_id": _node_id("PRR_", review.id),
            "user": self._user_json(review.user),
            "body": review.body,
            "state": review.state,
            "html_url": f"{self.web_url}/{full}/pull/{review.number}#pullrequestreview-{review.id}",
            "pull_request_url": f"{self.api_url}/repos/{full}/pulls/{review.number}",
            "commit_id": review.commit_id,
            "submitted_at": _iso(review.submitted_at),
            "author_association": review.author_association,
        }

    def _reaction_json(self, reaction: _Reaction) -> dict[str, Any]:
        return {
            "id": reaction.id,
            "node_id": _node_id("REA_", reaction.id),
            "user": self._user_json(reaction.user),
            "content": reaction.content,
            "created_at": _iso(reaction.created_at),
        }

    def _event_json(self, st: _RepoState, event: _Event) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": event.id,
            "node_id": _node_id("LE_", event.id),
            "url": f"{self.api_url}/repos/{st.repo.full_name}/issues/events/{event.id}",
            "actor": self._user_json(event.actor),
            "event": event.event,
            "commit_id": None,
            "commit_url": None,
            "created_at": _iso(event.created_at),
            "performed_via_github_app": None,
        }
        if event.label:
            data["label"] = {"name": event.label[0], "color": event.label[1]}
        if event.rename:
            data["rename"] = {"from": event.rename[0], "to": event.rename[1]}
        return data

    def _pull_json(self, st: _RepoState, issue: _Issue) -> dict[str, Any]:
        pull = issue.pull
        assert pull is not None
        repo = st.repo
        full = repo.full_name
        api = f"{self.api_url}/repos/{full}/pulls/{issue.number}"
        issue_api = f"{self.api_url}/repos/{full}/issues/{issue.number}"
        html = f"{self.web_url}/{full}/pull/{issue.number}"
        repo_json = self._repo_json(st)
        owner_json = self._user_json(repo.owner)

        def part(ref: str, sha: str) -> dict[str, Any]:
            return {
                "label": f"{repo.owner}:{ref}",
                "ref": ref,
                "sha": sha,
                "user": owner_json,
                "repo": repo_json,
            }

        head_sha = self._pull_head(repo, pull)
        base_sha = repo.branch_sha(pull.base_ref) or ""
        head = part(pull.head_ref, head_sha)
        if pull.fork is not None:  # a person's fork: GitHub names the fork's owner and repository there
            fork_owner, _, fork_name = pull.fork.partition("/")
            head.update(
                label=f"{fork_owner}:{pull.head_ref}",
                user=self._user_json(fork_owner),
                repo={**repo_json, "name": fork_name, "full_name": pull.fork, "fork": True},
            )
        return {
            "url": api,
            "id": pull.id,
            "node_id": _node_id("PR_", pull.id),
            "html_url": html,
            "diff_url": f"{html}.diff",
            "patch_url": f"{html}.patch",
            "issue_url": issue_api,
            "commits_url": f"{api}/commits",
            "review_comments_url": f"{api}/comments",
            "review_comment_url": f"{self.api_url}/repos/{full}/pulls/comments{{/number}}",
            "comments_url": f"{issue_api}/comments",
            "statuses_url": f"{self.api_url}/repos/{full}/statuses/{head_sha}",
            "number": issue.number,
            "state": issue.state,
            "locked": issue.locked,
            "title": issue.title,
            "user": self._user_json(issue.user),
            "body": issue.body,
            "labels": [self._label_json(st, st.labels[k]) for k in issue.labels if k in st.labels],
            "milestone": None,
            "active_lock_reason": None,
            "created_at": _iso(issue.created_at),
            "updated_at": _iso(issue.updated_at),
            "closed_at": _iso(issue.closed_at),
            "merged_at": _iso(pull.merged_at),
            "merge_commit_sha": None,
            "assignee": None,
            "assignees": [],
            "requested_reviewers": [],
            "requested_teams": [],
            "head": head,
            "base": part(pull.base_ref, base_sha),
            "_links": {
                "self": {"href": api},
                "html": {"href": html},
                "issue": {"href": issue_api},
                "comments": {"href": f"{issue_api}/comments"},
            },
            "author_association": issue.author_association,
            "auto_merge": None,
            "draft": pull.draft,
            "merged": pull.merged_at is not None,
            "mergeable": None,
            "rebaseable": None,
            "mergeable_state": "unknown",
            "merged_by": None,
            "comments": sum(1 for c in st.comments.values() if c.number == issue.number),
            "review_comments": sum(1 for c in st.review_comments.values() if c.number == issue.number),
            "maintainer_can_modify": False,
            "commits": 1,
            "additions": 0,
            "deletions": 0,
            "changed_files": 0,
        }

    def _installation_json(self, inst: _Installation) -> dict[str, Any]:
        app = self._apps[inst.app_id]
        account = self._user_json(inst.account)
        return {
            "id": inst.id,
            "account": account,
            "repository_selection": "all" if inst.repos is None else "selected",
            "access_tokens_url": f"{self.api_url}/app/installations/{inst.id}/access_tokens",
            "repositories_url": f"{self.api_url}/installation/repositories",
            "html_url": f"{self.web_url}/settings/installations/{inst.id}",
            "app_id": int(app.app_id) if app.app_id.isdigit() else app.app_id,
            "app_slug": app.slug,
            "client_id": f"Iv1.{app.app_id}",
            "target_id": account["id"],
            "target_type": "User",
            "permissions": {
                "contents": "write",
                "issues": "write",
                "pull_requests": "write",
                "metadata": "read",
            },
            "events": [],
            "created_at": _iso(inst.created_at),
            "updated_at": _iso(inst.created_at),
            "single_file_name": None,
            "has_multiple_single_files": False,
            "single_file_paths": [],
            "suspended_by": None,
            "suspended_at": None,
        }

    # ==============================================================================================
    # Internals: request handling

    def _handle(self, req: _Request) -> _Response:
        """Entry point from the HTTP handler: delay, faults, then API or git; records the outcome."""
        ctx = _Context()
        delay = self._delay_for(req.path)
        if delay:
            time.sleep(delay)
        try:
            fault = self._take_fault(req.path)
            if fault is not None:
                ctx.injected = True
                response = fault
            elif req.path == API_PREFIX or req.path.startswith(API_PREFIX + "/"):
                ctx.kind = "api"
                response = self._handle_api(req, ctx)
            elif req.path == GRAPHQL_PATH:
                ctx.kind = "graphql"
                response = self._handle_graphql(req, ctx)
            elif (m := _GIT_ROUTE.fullmatch(req.path)) is not None:
                ctx.kind = "git"
                response = self._handle_git(req, ctx, m["owner"], m["name"], m["rest"])
            else:
                response = self._error(_HttpError(404, "Not Found"))
        except Exception as exc:  # a bug in the fake must show up as a clear 500, not a hung client
            _log.exception("fake github: error handling %s %s", req.method, req.path)
            response = self._error(_HttpError(500, f"FakeGitHub internal error: {exc!r}"))
        with self._lock:
            self._requests.append(
                RecordedRequest(
                    method=req.method,
                    path=req.path,
                    query=req.query,
                    status=response.status,
                    conditional=ctx.conditional,
                    counted=ctx.counted,
                    auth=ctx.auth,
                    login=ctx.login,
                    kind=ctx.kind,
                    chunked=req.chunked,
                    injected=ctx.injected,
                )
            )
            self._changed.notify_all()
        return response

    def _delay_for(self, path: str) -> float:
        with self._lock:
            matches = [p for p in self._delays if path.startswith(p)]
            return self._delays[max(matches, key=len)] if matches else 0.0

    def _take_fault(self, path: str) -> _Response | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and path.startswith(fault.prefix):
                    fault.remaining -= 1
                    self._faults = [f for f in self._faults if f.remaining > 0]
                    return _Response(
                        fault.status, json.dumps(fault.body).encode(), headers=list(fault.headers.items())
                    )
        return None

    @staticmethod
    def _json(data: Any, status: int = 200, headers: list[tuple[str, str]] | None = None) -> _Response:
        return _Response(status, json.dumps(data).encode(), headers=list(headers or []))

    @staticmethod
    def _error(err: _HttpError) -> _Response:
        body: dict[str, Any] = {
            "message": err.message,
            "documentation_url": _DOCS_URL,
            "status": str(err.status),
        }
        if err.errors is not None:
            body["errors"] = err.errors
        return _Response(err.status, json.dumps(body).encode(), headers=list(err.headers.items()))

    # ---- authentication and rate limits ----------------------------------------------------------

    def _credential(self, req: _Request) -> tuple[str, str | None]:
        """(scheme, secret) from the Authorization header; Basic yields its password."""
        header = req.headers.get("authorization", "").strip()
        if not header:
            return "none", None
        scheme, _, value = header.partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if scheme == "basic":
            try:
                decoded = base64.b64decode(value).decode()
            except ValueError:
                return "basic", None
            return "basic", decoded.partition(":")[2]
        if scheme in ("token", "bearer"):
            return scheme, value
        return scheme, None

    def _identify(self, secret: str | None) -> _Identity | None:
        """Who a token or JWT belongs to, or None if it is unknown, expired or badly signed."""
        if not secret:
            return None
        with self._lock:
            info = self._tokens.get(secret)
            if info is not None:
                if info.expires_at is not None and info.expires_at <= time.time():
                    return None
                kind = "user" if info.installation_id is None else "installation"
                return _Identity(kind, info.login, secret, info.installation_id)
        if secret.count(".") == 2:
            return self._verify_jwt(secret)
        return None

    def _verify_jwt(self, token: str) -> _Identity | None:
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return None
        with self._lock:
            app = self._apps.get(str(claims.get("iss")))
        if app is None:
            return None
        try:
            verified = jwt.decode(
                token,
                app.public_key,
                algorithms=["RS256"],
                leeway=60,
                options={"require": ["exp", "iat", "iss"], "verify_iss": False},
            )
        except jwt.PyJWTError:
            return None
        if int(verified["exp"]) - int(verified["iat"]) > _MAX_JWT_LIFETIME + 60:
            return None
        return _Identity("app", f"{app.slug}[bot]", f"app:{app.app_id}", app_id=app.app_id)

    def _bucket(self, key: str) -> _Bucket:
        now = int(time.time())
        bucket = self._buckets.get(key)
        if bucket is None:
            remaining = self._default_remaining if self._default_remaining is not None else self._rate_limit
            reset = self._default_reset or now + _RATE_LIMIT_WINDOW
            bucket = self._buckets[key] = _Bucket(self._rate_limit, remaining, reset)
        if now >= bucket.reset:
            bucket.remaining, bucket.reset = bucket.limit, now + _RATE_LIMIT_WINDOW
        return bucket

    @staticmethod
    def _rate_headers(bucket: _Bucket) -> list[tuple[str, str]]:
        return [
            ("X-RateLimit-Limit", str(bucket.limit)),
            ("X-RateLimit-Remaining", str(bucket.remaining)),
            ("X-RateLimit-Reset", str(bucket.reset)),
            ("X-RateLimit-Used", str(bucket.limit - bucket.remaining)),
            ("X-RateLimit-Resource", "core"),
        ]

    # ---- REST API --------------------------------------------------------------------------------

    def _build_routes(self) -> list[tuple[str, re.Pattern[str], _HandlerFn, str]]:
        """(method, path pattern under /api/v3, handler, auth) where auth is user|app|any."""
        repo = r"/repos/(?P<owner>[^/]+)/(?P<name>[^/]+)"
        table: list[tuple[str, str, _HandlerFn, str]] = [
            ("GET", r"/user", self._api_get_user, "user"),
            ("GET", r"/users/(?P<login>[^/]+)", self._api_get_named_user, "user"),
            ("GET", r"/rate_limit", self._api_rate_limit, "any"),
            ("GET", r"/app", self._api_get_app, "app"),
            ("GET", r"/app/installations", self._api_list_installations, "app"),
            ("GET", r"/app/installations/(?P<inst_id>\d+)", self._api_get_installation, "app"),
            ("POST", r"/app/installations/(?P<inst_id>\d+)/access_tokens", self._api_access_token, "app"),
            ("GET", repo + r"/installation", self._api_repo_installation, "app"),
            ("GET", r"/installation/repositories", self._api_installation_repositories, "user"),
            ("GET", repo, self._api_get_repo, "user"),
            ("GET", repo + r"/branches", self._api_list_branches, "user"),
            ("GET", repo + r"/branches/(?P<branch>.+)", self._api_get_branch, "user"),
            ("GET", repo + r"/contents", self._api_get_contents, "user"),
            ("GET", repo + r"/contents/(?P<path>.+)", self._api_get_contents, "user"),
            ("GET", repo + r"/issues", self._api_list_issues, "user"),
            ("POST", repo + r"/issues", self._api_create_issue, "user"),
            ("GET", repo + r"/issues/comments", self._api_list_repo_comments, "user"),
            ("GET", repo + r"/issues/comments/(?P<cid>\d+)", self._api_get_comment, "user"),
            ("PATCH", repo + r"/issues/comments/(?P<cid>\d+)", self._api_edit_comment, "user"),
            ("DELETE", repo + r"/issues/comments/(?P<cid>\d+)", self._api_delete_comment, "user"),
            ("GET", repo + r"/issues/(?P<number>\d+)", self._api_get_issue, "user"),
            ("PATCH", repo + r"/issues/(?P<number>\d+)", self._api_edit_issue, "user"),
            ("GET", repo + r"/issues/(?P<number>\d+)/comments", self._api_list_comments, "user"),
            ("POST", repo + r"/issues/(?P<number>\d+)/comments", self._api_create_comment, "user"),
            ("GET", repo + r"/issues/(?P<number>\d+)/events", self._api_list_events, "user"),
            ("GET", repo + r"/issues/(?P<number>\d+)/labels", self._api_issue_labels, "user"),
            ("POST", repo + r"/issues/(?P<number>\d+)/labels", self._api_add_labels, "user"),
            ("PUT", repo + r"/issues/(?P<number>\d+)/labels", self._api_set_labels, "user"),
            ("DELETE", repo + r"/issues/(?P<number>\d+)/labels", self._api_clear_labels, "user"),
            (
                "DELETE",
                repo + r"/issues/(?P<number>\d+)/labels/(?P<label>[^/]+)",
                self._api_remove_label,
                "user",
            ),
            ("PUT", repo + r"/issues/(?P<number>\d+)/lock", self._api_lock, "user"),
            ("DELETE", repo + r"/issues/(?P<number>\d+)/lock", self._api_unlock, "user"),
            ("GET", repo + r"/labels", self._api_list_labels, "user"),
            ("POST", repo + r"/labels", self._api_create_label, "user"),
            ("GET", repo + r"/labels/(?P<label>[^/]+)", self._api_get_label, "user"),
            ("GET", repo + r"/collaborators/(?P<login>[^/]+)/permission", self._api_permission, "user"),
            ("GET", repo + r"/pulls", self._api_list_pulls, "user"),
            ("GET", repo + r"/pulls/comments", self._api_list_repo_review_comments, "user"),
            ("PATCH", repo + r"/pulls/comments/(?P<cid>\d+)", self._api_edit_review_comment, "user"),
            ("GET", repo + r"/pulls/(?P<number>\d+)/comments", self._api_list_review_comments, "user"),
            (
                "POST",
                repo + r"/pulls/(?P<number>\d+)/comments/(?P<cid>\d+)/replies",
                self._api_reply_review_comment,
                "user",
            ),
            ("GET", repo + r"/pulls/(?P<number>\d+)/reviews", self._api_list_reviews, "user"),
            (
                "GET",
                repo + r"/(?P<kind>issues|pulls)/comments/(?P<cid>\d+)/reactions",
                self._api_list_reactions,
                "user",
            ),
            (
                "POST",
                repo + r"/(?P<kind>issues|pulls)/comments/(?P<cid>\d+)/reactions",
                self._api_create_reaction,
                "user",
            ),
            ("POST", repo + r"/statuses/(?P<sha>[^/]+)", self._api_create_status, "user"),
            ("GET", repo + r"/commits/(?P<ref>.+)/status", self._api_combined_status, "user"),
            ("GET", repo + r"/commits/(?P<ref>.+)/statuses", self._api_list_statuses, "user"),
            ("POST", repo + r"/pulls", self._api_create_pull, "user"),
            ("GET", repo + r"/pulls/(?P<number>\d+)", self._api_get_pull, "user"),
            ("PATCH", repo + r"/pulls/(?P<number>\d+)", self._api_edit_pull, "user"),
        ]
        table += self.review_routes(repo)  # the Reviews API, pull request diffs (github_reviews.py)
        return [(method, re.compile(pattern), handler, auth) for method, pattern, handler, auth in table]

    def _handle_api(self, req: _Request, ctx: _Context) -> _Response:
        sub_path = req.path[len(API_PREFIX) :] or "/"
        if len(sub_path) > 1:
            sub_path = sub_path.rstrip("/")
        ctx.conditional = "if-none-match" in req.headers
        scheme, secret = self._credential(req)
        identity = self._identify(secret)
        ctx.auth = "jwt" if identity is not None and identity.kind == "app" else scheme
        if identity is None:
            if scheme == "bearer" and secret and secret.count(".") == 2:
                return self._error(_HttpError(401, "A JSON web token could not be decoded"))
            return self._error(_HttpError(401, "Bad credentials"))
        ctx.login = identity.login
        route = next(
            (
                (r, m)
                for r in self._routes
                if r[0] == req.method and (m := r[1].fullmatch(sub_path)) is not None
            ),
            None,
        )
        if route is None:
            return self._error(_HttpError(404, "Not Found"))
        (_, _, handler, auth), match = route
        if auth == "app" and identity.kind != "app":
            return self._error(_HttpError(401, "A JSON web token could not be decoded"))
        if auth == "user" and identity.kind == "app":
            return self._error(_HttpError(401, "Bad credentials"))
        counts = sub_path != "/rate_limit"
        with self._lock:
            bucket = self._bucket(identity.bucket)
            if counts and bucket.remaining <= 0:
                return self._error(
                    _HttpError(
                        403,
                        f"API rate limit exceeded for user ID {self._user_json(identity.login)['id']}.",
                        headers=dict(self._rate_headers(bucket)),
                    )
                )
            call = _Call(req, identity, sub_path)
            groups = {k: unquote(v) for k, v in match.groupdict().items()}
            try:
                response = handler(call, **groups)
            except _HttpError as err:
                response = self._error(err)
            except KeyError:
                response = self._error(_HttpError(404, "Not Found"))
            if response.status < 300 and response.body:
                etag = '"' + hashlib.sha256(response.body).hexdigest() + '"'
                response.headers.append(("ETag", etag))
                if req.method == "GET" and self._etag_matches(req.headers.get("if-none-match", ""), etag):
                    response = _Response(304, headers=[("ETag", etag)])
            if counts and response.status != 304:
                bucket.remaining -= 1
                ctx.counted = True
            response.headers.extend(self._rate_headers(bucket))
            hinted = [p for p in self._poll_intervals if req.path.startswith(p)]
            if hinted and response.status < 400:
                response.headers.append(("X-Poll-Interval", str(self._poll_intervals[max(hinted, key=len)])))
            self._changed.notify_all()
            return response

    # ---- GraphQL API: the two draft mutations the REST API lacks ----------------------------------

    def _handle_graphql(self, req: _Request, ctx: _Context) -> _Response:
        """``POST /api/graphql``: ``markPullRequestReadyForReview`` and ``convertPullRequestToDraft``, and
        queries of an issue's edit history (:meth:`_graphql_query`).

        Authenticated like the REST routes; answered as GitHub does: HTTP 200 with ``{"data": …}``, or
        ``{"errors": […]}`` (with ``"data"`` when the query was valid but failed, e.g. ``NOT_FOUND``).
        Only the named-mutation form with an ``$input`` variable is understood (the one PyGithub, ``gh``
        and octokit send); the selection set is honoured for the pull request's scalar fields.
        GraphQL has a rate limit of its own on GitHub, so these calls leave the core bucket alone.
        """
        if req.method != "POST":
            return self._error(_HttpError(404, "Not Found"))
        scheme, secret = self._credential(req)
        identity = self._identify(secret)
        ctx.auth = "jwt" if identity is not None and identity.kind == "app" else scheme
        if identity is None or identity.kind == "app":
            return self._error(_HttpError(401, "Bad credentials"))
        ctx.login = identity.login
        try:
            payload = json.loads(req.body or b"{}")
        except ValueError:
            return self._error(_HttpError(400, "Problems parsing JSON"))
        if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
            return self._json(
                {"errors": [{"message": "A query attribute must be specified and must be a string."}]}
            )
        if not payload["query"].lstrip().startswith("mutation"):
            variables = payload.get("variables") or {}
            return self._graphql_query(
                payload["query"], variables if isinstance(variables, dict) else {}, identity
            )
        match = _MUTATION_RE.fullmatch(payload["query"])
        if match is None:
            message = (
                "FakeGitHub answers only `mutation …($input: …Input!) { name(input: $input) { … } }` "
                f"for {', '.join(sorted(_DRAFT_MUTATIONS))}"
            )
            return self._json({"errors": [{"message": message}]})
        name = match["name"]
        if name not in _DRAFT_MUTATIONS:
            message = f"Field '{name}' doesn't exist on type 'Mutation'"
            return self._json({"errors": [{"message": message, "extensions": {"code": "undefinedField"}}]})
        try:
            selection = _parse_selection(match["selection"])
        except ValueError as exc:
            return self._json({"errors": [{"message": str(exc)}]})
        variables = payload.get("variables") or {}
        given = variables.get(match["var"]) if isinstance(variables, dict) else None
        node_id = given.get("pullRequestId") if isinstance(given, dict) else None
        if not isinstance(node_id, str):
            message = (
                f"Variable ${match['var']} of type {name[:1].upper()}{name[1:]}Input! was provided invalid "
                "value for pullRequestId (Expected value to not be null)"
            )
            return self._json({"errors": [{"message": message, "extensions": {"problems": []}}]})
        with self._lock:
            found = next(
                (
                    (st, issue)
                    for st in self._repos.values()
                    for issue in st.issues.values()
                    if issue.pull is not None
                    and _node_id("PR_", issue.pull.id) == node_id
                    and (
                        identity.kind != "installation"
                        or self._installation_covers(
                            self._installations.get(identity.installation_id or -1), st
                        )
                    )
                ),
                None,
            )
            if found is None:
                error = {
                    "type": "NOT_FOUND",
                    "path": [name],
                    "locations": [{"line": 1, "column": 1}],
                    "message": f"Could not resolve to a node with the global id of '{node_id}'",
                }
                return self._json({"data": {name: None}, "errors": [error]})
            st, issue = found
            assert issue.pull is not None
            draft = _DRAFT_MUTATIONS[name]
            fields = {
                "id": node_id,
                "number": issue.number,
                "isDraft": draft,
                "url": f"{self.web_url}/{st.repo.full_name}/pull/{issue.number}",
                "title": issue.title,
                "state": "MERGED" if issue.pull.merged_at else issue.state.upper(),
            }
            try:  # a query that asks for an unknown field is refused before anything changes
                result = _select(
                    {"clientMutationId": given.get("clientMutationId"), "pullRequest": fields}, selection
                )
            except ValueError as exc:
                return self._json({"errors": [{"message": str(exc)}]})
            if issue.pull.draft != draft:
                issue.pull.draft = draft
                self._touch(issue)
            self._changed.notify_all()
        return self._json({"data": {name: result}})

    def _graphql_query(self, query: str, variables: dict[str, Any], identity: _Identity) -> _Response:
        """A query of ``repository(owner, name) { issue(number) { … } }``: the issue's text, its edit
        history (``userContentEdits``, newest first, each node holding the whole body of that revision in
        ``diff``, the created text included once it was edited), ``lastEditedAt`` and ``editor``."""
        try:
            fields = _parse_query(query)
        except _GraphQLError as exc:
            return self._json({"errors": [{"message": str(exc)}]})
        errors: list[dict[str, Any]] = []
        with self._lock:
            root = {
                "__typename": "Query",
                "repository": lambda args: self._graphql_repository(args, identity),
            }
            try:
                data = _resolve(root, fields, variables, [], errors)
            except _GraphQLError as exc:
                return self._json({"errors": [{"message": str(exc)}]})
        return self._json({"data": data, "errors": errors} if errors else {"data": data})

    def _graphql_repository(self, args: dict[str, Any], identity: _Identity) -> dict[str, Any]:
        full = f"{args.get('owner')}/{args.get('name')}"
        st = self._repos.get(full.lower())
        if st is None or (
            identity.kind == "installation"
            and not self._installation_covers(self._installations.get(identity.installation_id or -1), st)
        ):
            raise _GraphQLNotFound(f"Could not resolve to a Repository with the name '{full}'.")

        def issue(args: dict[str, Any]) -> dict[str, Any]:
            found = st.issues.get(int(args.get("number") or 0))
            if found is None or found.pull is not None:
                raise _GraphQLNotFound(
                    f"Could not resolve to an Issue with the number of {args.get('number')}."
                )
            return self._graphql_issue(found)

        return {
            "__typename": "Repository",
            "name": st.repo.name,
            "nameWithOwner": st.repo.full_name,
            "owner": {"__typename": "RepositoryOwner", "login": st.repo.owner},
            "issue": issue,
        }

    def _graphql_issue(self, issue: _Issue) -> dict[str, Any]:
        def actor(login: str | None) -> dict[str, Any] | None:
            return {"__typename": "Actor", "login": login} if login else None

        def edits(args: dict[str, Any]) -> dict[str, Any]:
            first, last = args.get("first"), args.get("last")
            if first is None and last is None:
                msg = (
                    "You must provide a `first` or `last` value to properly paginate the "
                    "`userContentEdits` connection."
                )
                raise _GraphQLError(msg)
            for name, count in (("first", first), ("last", last)):
                if count is not None and not 0 <= int(count) <= 100:
                    msg = (
                        f"Requesting {count} records on the `userContentEdits` connection exceeds the "
                        f"`{name}` limit of 100 records."
                    )
                    raise _GraphQLError(msg)
            newest_first = list(reversed(issue.edits))
            shown = newest_first[: int(first)] if first is not None else newest_first[-int(last or 0) :]
            nodes = [
                {
                    "__typename": "UserContentEdit",
                    "id": _node_id("UCE_", e.id),
                    "createdAt": _iso(e.edited_at),
                    "updatedAt": _iso(e.deleted_at or e.edited_at),
                    "editedAt": _iso(e.edited_at),
                    "deletedAt": _iso(e.deleted_at),
                    "deletedBy": actor(e.deleted_by),
                    "editor": actor(e.editor),
                    "diff": None if e.deleted_at else e.body,
                }
                for e in shown
            ]
            return {
                "__typename": "UserContentEditConnection",
                "totalCount": len(issue.edits),
                "nodes": nodes,
                "pageInfo": {
                    "__typename": "PageInfo",
                    "hasNextPage": len(shown) < len(newest_first) and first is not None,
                    "hasPreviousPage": len(shown) < len(newest_first) and last is not None,
                    "startCursor": None,
                    "endCursor": None,
                },
            }

        last_edit = issue.edits[-1] if issue.edits else None
        return {
            "__typename": "Issue",
            "id": _node_id("I_", issue.id),
            "number": issue.number,
            "title": issue.title,
            "body": issue.body or "",
            "createdAt": _iso(issue.created_at),
            "updatedAt": _iso(issue.updated_at),
            "lastEditedAt": _iso(last_edit.edited_at) if last_edit else None,
            "editor": actor(last_edit.editor) if last_edit else None,
            "author": actor(issue.user),
            "includesCreatedEdit": bool(issue.edits),
            "userContentEdits": edits,
        }

    @staticmethod
    def _etag_matches(header: str, etag: str) -> bool:
        candidates = [c.strip().removeprefix("W/") for c in header.split(",")]
        return etag in candidates or "*" in candidates

    def _paginate(self, call: _Call, items: list[Any], render: Callable[[Any], dict[str, Any]]) -> _Response:
        """Slice ``items`` by ``page``/``per_page`` and add GitHub's ``Link`` header."""
        try:
            per_page = max(1, min(int(call.param("per_page", "30") or 30), 100))
            page = max(1, int(call.param("page", "1") or 1))
        except ValueError as exc:
            raise _HttpError(422, "Invalid pagination parameters") from exc
        last = max(1, -(-len(items) // per_page))
        chosen = items[(page - 1) * per_page : page * per_page]
        params = [(k, v) for k, v in parse_qsl(call.request.raw_query, keep_blank_values=True) if k != "page"]

        def link(p: int, rel: str) -> str:
            return f'<{self.api_url}{call.sub_path}?{urlencode([*params, ("page", str(p))])}>; rel="{rel}"'

        links = []
        if page > 1:
            links += [link(page - 1, "prev"), link(1, "first")]
        if page < last:
            links += [link(page + 1, "next"), link(last, "last")]
        headers = [("Link", ", ".join(links))] if links else []
        return self._json([render(item) for item in chosen], headers=headers)

    def _repo_for(self, call: _Call, owner: str, name: str) -> _RepoState:
        """The repository, or 404 when unknown or outside an installation token's reach."""
        st = self._repos.get(f"{owner}/{name}".lower())
        if st is None:
            raise _HttpError(404, "Not Found")
        if call.identity.kind == "installation" and not self._installation_covers(
            self._installations.get(call.identity.installation_id or -1), st
        ):
            raise _HttpError(404, "Not Found")
        return st

    @staticmethod
    def _installation_covers(inst: _Installation | None, st: _RepoState) -> bool:
        if inst is None or inst.account.lower() != st.repo.owner.lower():
            return False
        return inst.repos is None or st.repo.full_name.lower() in inst.repos

    def _issue_for(self, st: _RepoState, number: str) -> _Issue:
        issue = st.issues.get(int(number))
        if issue is None:
            raise _HttpError(404, "Not Found")
        return issue

    # ---- users, rate limit, apps ----

    def _api_get_user(self, call: _Call) -> _Response:
        if call.identity.kind == "installation":
            raise _HttpError(403, "Resource not accessible by integration")
        data = self._user_json(call.identity.login)
        data.update({"name": call.identity.login, "email": None, "bio": None, "public_repos": 0})
        return self._json(data)

    def _api_get_named_user(self, call: _Call, login: str) -> _Response:
        return self._json(self._user_json(login))

    def _api_rate_limit(self, call: _Call) -> _Response:
        bucket = self._bucket(call.identity.bucket)
        core = {
            "limit": bucket.limit,
            "remaining": bucket.remaining,
            "reset": bucket.reset,
            "used": bucket.limit - bucket.remaining,
            "resource": "core",
        }
        later = int(time.time()) + 60
        search = {"limit": 30, "remaining": 30, "reset": later, "used": 0, "resource": "search"}
        graphql = {"limit": 5000, "remaining": 5000, "reset": later, "used": 0, "resource": "graphql"}
        return self._json({"resources": {"core": core, "search": search, "graphql": graphql}, "rate": core})

    def _app_of(self, call: _Call) -> _App:
        return self._apps[call.identity.app_id or ""]

    def _api_get_app(self, call: _Call) -> _Response:
        app = self._app_of(call)
        return self._json(
            {
                "id": int(app.app_id) if app.app_id.isdigit() else app.app_id,
                "slug": app.slug,
                "node_id": _node_id("A_", len(app.app_id)),
                "name": app.slug,
                "owner": self._user_json(app.owner),
                "description": "",
                "external_url": self.web_url,
                "html_url": f"{self.web_url}/apps/{app.slug}",
                "created_at": _iso(self._now()),
                "updated_at": _iso(self._now()),
                "permissions": {"contents": "write", "issues": "write", "pull_requests": "write"},
                "events": [],
            }
        )

    def _api_list_installations(self, call: _Call) -> _Response:
        app = self._app_of(call)
        mine = [i for i in self._installations.values() if i.app_id == app.app_id]
        return self._paginate(call, mine, self._installation_json)

    def _own_installation(self, call: _Call, inst_id: str) -> _Installation:
        inst = self._installations.get(int(inst_id))
        if inst is None or inst.app_id != call.identity.app_id:
            raise _HttpError(404, "Not Found")
        return inst

    def _api_get_installation(self, call: _Call, inst_id: str) -> _Response:
        return self._json(self._installation_json(self._own_installation(call, inst_id)))

    def _api_installation_repositories(self, call: _Call) -> _Response:
        """GitHub's shape: ``{"total_count", "repository_selection", "repositories": [...]}``, paged."""
        inst = self._installations.get(call.identity.installation_id or -1)
        if call.identity.kind != "installation" or inst is None:
            raise _HttpError(403, "You must authenticate with an installation access token.")
        covered = sorted(
            (st for st in self._repos.values() if self._installation_covers(inst, st)),
            key=lambda st: st.repo.full_name.lower(),
        )
        page = self._paginate(call, covered, lambda st: self._repo_json(st, call.identity))
        listed = json.loads(page.body)
        body = {
            "total_count": len(covered),
            "repository_selection": "all" if inst.repos is None else "selected",
            "repositories": listed,
        }
        return self._json(body, headers=page.headers)

    def _api_repo_installation(self, call: _Call, owner: str, name: str) -> _Response:
        st = self._repo_for(call, owner, name)
        app = self._app_of(call)
        mine = [i for i in self._installations.values() if i.app_id == app.app_id]
        for inst in mine:
            if self._installation_covers(inst, st):
                return self._json(self._installation_json(inst))
        if mine:  # explicitly installed elsewhere only
            raise _HttpError(404, "Not Found")
        # Never explicitly installed: behave as if installed on every account (created on first use).
        inst = _Installation(next(self._ids), app.app_id, st.repo.owner, None, self._now())
        self._installations[inst.id] = inst
        return self._json(self._installation_json(inst))

    def _api_access_token(self, call: _Call, inst_id: str) -> _Response:
        inst = self._own_installation(call, inst_id)
        app = self._app_of(call)
        token = "ghs_" + secrets.token_urlsafe(27).replace("-", "A").replace("_", "b")[:36]
        expires = time.time() + app.token_ttl
        self._tokens[token] = _TokenInfo(f"{app.slug}[bot]", installation_id=inst.id, expires_at=expires)
        body = call.json_object()
        return self._json(
            {
                "token": token,
                "expires_at": _iso(datetime.fromtimestamp(expires, UTC)),
                "permissions": body.get("permissions") or self._installation_json(inst)["permissions"],
                "repository_selection": "all" if inst.repos is None else "selected",
            },
            status=201,
        )

    # ---- repositories and branches ----

    def _api_get_repo(self, call: _Call, owner: str, name: str) -> _Response:
        st = self._repo_for(call, owner, name)
        return self._json(self._repo_json(st, call.identity))

    def _branch_json(self, st: _RepoState, branch: str, sha: str) -> dict[str, Any]:
        api = f"{self.api_url}/repos/{st.repo.full_name}"
        return {
            "name": branch,
            "commit": {"sha": sha, "url": f"{api}/commits/{sha}"},
            "protected": False,
            "_links": {
                "self": f"{api}/branches/{quote(branch)}",
                "html": f"{st.repo.html_url}/tree/{branch}",
            },
        }

    def _api_list_branches(self, call: _Call, owner: str, name: str) -> _Response:
        st = self._repo_for(call, owner, name)
        branches = sorted(st.repo.branches().items())
        return self._paginate(call, branches, lambda item: self._branch_json(st, *item))

    def _api_get_branch(self, call: _Call, owner: str, name: str, branch: str) -> _Response:
        st = self._repo_for(call, owner, name)
        sha = st.repo.branch_sha(branch)
        if sha is None:
            raise _HttpError(404, "Branch not found")
        return self._json(self._branch_json(st, branch, sha))

    # ---- commit statuses ----------------------------------------------------------------------------

    _STATUS_STATES = ("error", "failure", "pending", "success")

    def _commit_of(self, st: _RepoState, ref: str) -> str | None:
        """The full sha ``ref`` (a sha, a branch, a tag) names, as GitHub resolves it; None when none."""
        if "\0" in ref or ref.startswith("-"):
            return None
        out = _run_git(st.repo.path, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False)
        return out.strip() or None

    def _status_json(self, st: _RepoState, status: _Status) -> dict[str, Any]:
        stamp = _iso(status.created_at)
        return {
            "url": f"{self.api_url}/repos/{st.repo.full_name}/statuses/{status.sha}",
            "avatar_url": None,
            "id": status.id,
            "node_id": _node_id("SC_", status.id),
            "state": status.state,
            "description": status.description,
            "target_url": status.target_url,
            "context": status.context,
            "created_at": stamp,
            "updated_at": stamp,
            "creator": self._user_json(status.creator),
        }

    def _api_create_status(self, call: _Call, owner: str, name: str, sha: str) -> _Response:
        """As GitHub: 422 for an unknown state, a description over 140 characters, or a sha that is no
        commit of the repository; the status is kept, the newest of a context wins in the combined view."""
        st = self._repo_for(call, owner, name)
        data = call.json_object()
        state = data.get("state")
        if state not in self._STATUS_STATES:
            raise _validation_failed(
                {
                    "resource": "Status",
                    "field": "state",
                    "code": "custom",
                    "message": "state is not included in the list",
                }
            )
        description = data.get("description")
        if description is not None and (not isinstance(description, str) or len(description) > 140):
            raise _validation_failed(
                {
                    "resource": "Status",
                    "field": "description",
                    "code": "custom",
                    "message": "description is too long (maximum is 140 characters)",
                }
            )
        full = self._commit_of(st, sha) if re.fullmatch(r"[0-9a-fA-F]{4,40}", sha) else None
        if full is None or not full.startswith(sha.lower()):
            raise _HttpError(422, f"No commit found for SHA: {sha}")
        context = data.get("context") or "default"
        target = data.get("target_url")
        status = _Status(
            next(self._ids),
            full,
            str(state),
            str(context),
            description,
            target if isinstance(target, str) else None,
            call.identity.login,
            self._now(),
        )
        st.statuses.append(status)
        return self._json(self._status_json(st, status), status=201)

    def _statuses_for(
        self, call: _Call, owner: str, name: str, ref: str
    ) -> tuple[_RepoState, str, list[_Status]]:
        st = self._repo_for(call, owner, name)
        sha = self._commit_of(st, ref)
        if sha is None:
            raise _HttpError(422, f"No commit found for SHA: {ref}")
        return st, sha, [s for s in reversed(st.statuses) if s.sha == sha]  # newest first

    def _api_list_statuses(self, call: _Call, owner: str, name: str, ref: str) -> _Response:
        st, _sha, found = self._statuses_for(call, owner, name, ref)
        return self._json([self._status_json(st, s) for s in found])

    def _api_combined_status(self, call: _Call, owner: str, name: str, ref: str) -> _Response:
        """The newest status of each context and their combined state: failure when any is error or
        failure, pending when there is none or any is pending, else success."""
        st, sha, found = self._statuses_for(call, owner, name, ref)
        latest: dict[str, _Status] = {}
        for status in found:
            latest.setdefault(status.context, status)
        states = {s.state for s in latest.values()}
        if states & {"error", "failure"}:
            combined = "failure"
        elif not states or "pending" in states:
            combined = "pending"
        else:
            combined = "success"
        api = f"{self.api_url}/repos/{st.repo.full_name}"
        return self._json(
            {
                "state": combined,
                "statuses": [self._status_json(st, s) for s in latest.values()],
                "sha": sha,
                "total_count": len(latest),
                "repository": self._repo_json(st),
                "commit_url": f"{api}/commits/{sha}",
                "url": f"{api}/commits/{sha}/status",
            }
        )

    def statuses(self, full_name: str, sha: str) -> list[dict[str, Any]]:
        """Every status posted on ``sha`` (a full sha), oldest first (test inspection)."""
        with self._lock:
            st = self._state(full_name)
            return [self._status_json(st, s) for s in st.statuses if s.sha == sha]

    def _api_get_contents(self, call: _Call, owner: str, name: str, path: str = "") -> _Response:
        """A file (base64, as GitHub sends it) or a directory listing at ``ref`` (default branch)."""
        st = self._repo_for(call, owner, name)
        ref = call.param("ref") or st.repo.default_branch
        path = path.strip("/")
        spec = f"{ref}:{path}" if path else f"{ref}^{{tree}}"
        kind = _run_git(st.repo.path, "cat-file", "-t", spec, check=False).strip()
        if kind == "blob":
            data = subprocess.run(
                ["git", f"--git-dir={st.repo.path}", "cat-file", "blob", spec],
                capture_output=True,
                env=_git_env(),
                check=True,
            ).stdout
            return self._json(
                {
                    "type": "file",
                    "encoding": "base64",
                    "name": path.rsplit("/", 1)[-1],
                    "path": path,
                    "size": len(data),
                    "content": base64.encodebytes(data).decode(),
                }
            )
        if kind == "tree":
            entries = []
            for line in _run_git(st.repo.path, "ls-tree", spec).splitlines():
                meta, entry = line.split("\t", 1)
                entry_type = meta.split()[1]
                entries.append(
                    {
                        "type": "dir" if entry_type == "tree" else "file",
                        "name": entry,
                        "path": f"{path}/{entry}" if path else entry,
                    }
                )
            return self._json(entries)
        raise _HttpError(404, "Not Found")

    def _api_permission(self, call: _Call, owner: str, name: str, login: str) -> _Response:
        st = self._repo_for(call, owner, name)
        if login.lower().endswith("[bot]") and login.lower() not in st.permissions:
            raise _HttpError(404, "Not Found")  # a bot or an App is no collaborator: GitHub answers 404
        role = self._role(st, login)
        user = self._user_json(login)
        user["permissions"] = {
            flag: flag in _ROLE_FLAGS[role] for flag in ("admin", "maintain", "push", "triage", "pull")
        }
        user["role_name"] = role
        return self._json({"permission": _LEGACY_PERMISSION[role], "role_name": role, "user": user})

    # ---- issues ----

    def _api_list_issues(self, call: _Call, owner: str, name: str) -> _Response:
        st = self._repo_for(call, owner, name)
        state = call.param("state", "open")
        if state not in ("open", "closed", "all"):
            raise _validation_failed({"resource": "Issue", "field": "state", "code": "invalid"})
        wanted = [w.strip().lower() for w in (call.param("labels") or "").split(",") if w.strip()]
        since = call.param("since")
        creator = call.param("creator")
        items = [i for i in st.issues.values() if state == "all" or i.state == state]
        if wanted:
            items = [i for i in items if all(w in i.labels for w in wanted)]
        if since:
            cutoff = _parse_time(since)
            items = [i for i in items if i.updated_at >= cutoff]
        if creator:
            items = [i for i in items if i.user.lower() == creator.lower()]
        items = self._sorted(call, items, st)
        return self._paginate(call, items, lambda i: self._issue_json(st, i))

    def _sorted(self, call: _Call, items: list[_Issue], st: _RepoState) -> list[_Issue]:
        sort = call.param("sort", "created")
        direction = call.param("direction", "desc")
        if sort == "updated":
            key: Callable[[_Issue], Any] = lambda i: (i.updated_at, i.number)  # noqa: E731
        elif sort == "comments":
            key = lambda i: (sum(1 for c in st.comments.values() if c.number == i.number), i.number)  # noqa: E731
        else:
            key = lambda i: (i.created_at, i.number)  # noqa: E731
        return sorted(items, key=key, reverse=direction != "asc")

    def _api_create_issue(self, call: _Call, owner: str, name: str) -> _Response:
        st = self._repo_for(call, owner, name)
        data = call.json_object()
        if not data.get("title"):
            raise _validation_failed({"resource": "Issue", "field": "title", "code": "missing_field"})
        actor = call.identity.login
        issue_json = self.create_issue(
            st.repo.full_name,
            str(data["title"]),
            data.get("body") or "",
            user=actor,
            labels=[str(x) for x in data.get("labels") or []],
            author_association="NONE",
        )
        return self._json(issue_json, status=201)

    def _api_get_issue(self, call: _Call, owner: str, name: str, number: str) -> _Response:
        st = self._repo_for(call, owner, name)
        return self._json(self._issue_json(st, self._issue_for(st, number)))

    @staticmethod
    def _label_names(raw: Any) -> list[str]:
        if isinstance(raw, dict):
            raw = raw.get("labels", [])
        if not isinstance(raw, list):
            raise _HttpError(422, "Invalid request: labels must be a list")
        return [str(x["name"] if isinstance(x, dict) else x) for x in raw]

    def _replace_labels(self, st: _RepoState, issue: _Issue, names: list[str], actor: str) -> None:
        wanted = {n.lower() for n in names}
        for key in list(issue.labels):
            if key not in wanted:
                self._drop_label(st, issue, key, actor)
        for label_name in names:
            self._apply_label(st, issue, label_name, actor)

    def _api_edit_issue(self, call: _Call, owner: str, name: str, number: str) -> _Response:
        st = self._repo_for(call, owner, name)
        issue = self._issue_for(st, number)
        data = call.json_object()
        actor = call.identity.login
        self._edit(
            issue,
            actor,
            title=data.get("title"),
            body=data.get("body"),
            set_body="body" in data,
            state=data.get("state"),
            state_reason=data.get("state_reason"),
        )
        if "labels" in data:
            self._replace_labels(st, issue, self._label_names(data["labels"]), actor)
        return self._json(self._issue_json(st, issue))

    def _api_lock(self, call: _Call, owner: str, name: str, number: str) -> _Response:
        st = self._repo_for(call, owner, name)
        self._edit(self._issue_for(st, number), call.identity.login, locked=True)
        return _Response(204)

    def _api_unlock(self, call: _Call, owner: str, name: str, number: str) -> _Response:
        st = self._repo_for(call, owner, name)
        self._edit(self._issue_for(st, number), call.identity.login, locked=False)
        return _Response(204)

    # ---- comments ----

    def _api_list_comments(self, call: _Call, owner: str, name: str, number: str) -> _Response:
        st = self._repo_for(call, owner, name)
        issue = self._issue_for(st, number)
        comments = self._issue_comments(st, issue.number)
        since = call.param("since")
        if since:
            cutoff = _parse_time(since)
            comments = [c for c in comments if c.updated_at >= cutoff]
        return self._paginate(call, comments, lambda c: self._comment_json(st, c))

    def _api_list_repo_comments(self, call: _Call, owner: str, name: str) -> _Response:
        st = self._repo_for(call, owner, name)
        comments = sorted(st.comments.values(), key=lambda c: c.id)
        since = call.param("since")
        if since:
            cutoff = _parse_time(since)
            comments = [c for c in comments if c.updated_at >= cutoff]
        if call.param("sort") == "updated":
            comments.sort(key=lambda c: (c.updated_at, c.id))
        if call.param("direction") == "desc":
            comments.reverse()
        return self._paginate(call, comments, lambda c: self._comment_json(st, c))

    def _api_create_comment(self, call: _Call, owner: str, name: str, number: str) -> _Response:
        st = self._repo_for(call, owner, name)
        issue = self._issue_for(st, number)
        body = call.json_object().get("body")
        if not isinstance(body, str) or not body:
            raise _validation_failed({"resource": "IssueComment", "field": "body", "code": "missing_field"})
        association = "OWNER" if call.identity.login.lower() == st.repo.owner.lower() else "NONE"
        comment = self._new_comment(st, issue, body, call.identity.login, association)
        return self._json(self._comment_json(st, comment), status=201)

    def _comment_for(self, st: _RepoState, cid: str) -> _Comment:
        comment = st.comments.get(int(cid))
        if comment is None:
            raise _HttpError(404, "Not Found")
        return comment

    def _api_get_comment(self, call: _Call, owner: str, name: str, cid: str) -> _Response:
        st = self._repo_for(call, owner, name)
        return self._json(self._comment_json(st, self._comment_for(st, cid)))

    def _api_edit_comment(self, call: _Call, owner: str, name: str, cid: str) -> _Response:
        st = self._repo_for(call, owner, name)
        comment = self._comment_for(st, cid)
        body = call.json_object().get("body")
        if not isinstance(body, str) or not body:
            raise _validation_failed({"resource": "IssueComment", "field": "body", "code": "missing_field"})
        comment.body = body
        issue = st.issues[comment.number]
        comment.updated_at = max(self._now(), comment.updated_at)
        self._touch(issue)
        return self._json(self._comment_json(st, comment))

    def _api_delete_comment(self, call: _Call, owner: str, name: str, cid: str) -> _Response:
        st = self._repo_for(call, owner, name)
        comment = self._comment_for(st, cid)
        del st.comments[comment.id]
        self._touch(st.issues[comment.number])
        return _Response(204)

    def _api_list_events(self, call: _Call, owner: str, name: str, number: str) -> _Response:
        st = self._repo_for(call, owner, name)
        issue = self._issue_for(st, number)
        return self._paginate(call, list(issue.events), lambda e: self._event_json(st, e))

    # ---- labels ----

    def _api_issue_labels(self, call: _Call, owner: str, name: str, number: str) -> _Response:
        st = self._repo_for(call, owner, name)
        issue = self._issue_for(st, number)
        labels = [st.labels[k] for k in issue.labels if k in st.labels]
        return self._paginate(call, labels, lambda label: self._label_json(st, label))

    def _api_add_labels(self, call: _Call, owner: str, name: str, number: str) -> _Response:
        st = self._repo_for(call, owner, name)
        issue = self._issue_for(st, number)
        for label_name in self._label_names(call.json()):
            self._apply_label(st, issue, label_name, call.identity.login)
        return self._json([self._label_json(st, st.labels[k]) for k in issue.labels])

    def _api_set_labels(self, call: _Call, owner: str, name: str, number: str) -> _Response:
        st = self._repo_for(call, owner, name)
        issue = self._issue_for(st, number)
        self._replace_labels(st, issue, self._label_names(call.json()), call.identity.login)
        return self._json([self._label_json(st, st.labels[k]) for k in issue.labels])

    def _api_clear_labels(self, call: _Call, owner: str, name: str, number: str) -> _Response:
        st = self._repo_for(call, owner, name)
        self._replace_labels(st, self._issue_for(st, number), [], call.identity.login)
        return _Response(204)

    def _api_remove_label(self, call: _Call, owner: str, name: str, number: str, label: str) -> _Response:
        st = self._repo_for(call, owner, name)
        issue = self._issue_for(st, number)
        if not self._drop_label(st, issue, label, call.identity.login):
            raise _HttpError(404, "Label does not exist")
        return self._json([self._label_json(st, st.labels[k]) for k in issue.labels])

    def _api_list_labels(self, call: _Call, owner: str, name: str) -> _Response:
        st = self._repo_for(call, owner, name)
        labels = sorted(st.labels.values(), key=lambda label: label.id)
        return self._paginate(call, labels, lambda label: self._label_json(st, label))

    def _api_get_label(self, call: _Call, owner: str, name: str, label: str) -> _Response:
        st = self._repo_for(call, owner, name)
        found = st.labels.get(label.lower())
        if found is None:
            raise _HttpError(404, "Not Found")
        return self._json(self._label_json(st, found))

    def _api_create_label(self, call: _Call, owner: str, name: str) -> _Response:
        st = self._repo_for(call, owner, name)
        data = call.json_object()
        label_name = data.get("name")
        if not isinstance(label_name, str) or not label_name:
            raise _validation_failed({"resource": "Label", "field": "name", "code": "missing_field"})
        if label_name.lower() in st.labels:
            raise _validation_failed({"resource": "Label", "code": "already_exists", "field": "name"})
        color = str(data.get("color") or "ededed").lstrip("#")
        label = _Label(next(self._ids), label_name, color, str(data.get("description") or ""))
        st.labels[label_name.lower()] = label
        return self._json(self._label_json(st, label), status=201)

    # ---- pull requests ----

    def _api_list_pulls(self, call: _Call, owner: str, name: str) -> _Response:
        st = self._repo_for(call, owner, name)
        state = call.param("state", "open")
        head = call.param("head")
        base = call.param("base")
        items = [i for i in st.issues.values() if i.pull and (state == "all" or i.state == state)]
        if head:
            head_owner, sep, head_ref = head.rpartition(":")
            if sep and head_owner.lower() != st.repo.owner.lower():
                items = []
            items = [i for i in items if i.pull and i.pull.head_ref == head_ref]
        if base:
            items = [i for i in items if i.pull and i.pull.base_ref == base]
        items = self._sorted(call, items, st)
        return self._paginate(call, items, lambda i: self._pull_json(st, i))

    def _api_create_pull(self, call: _Call, owner: str, name: str) -> _Response:
        st = self._repo_for(call, owner, name)
        if st.refuse_pulls is not None:
            status, message, detail = st.refuse_pulls
            errors = [{"resource": "PullRequest", "code": "custom", "message": detail}]
            raise _HttpError(status, message, errors=errors)
        data = call.json_object()
        for required in ("head", "base", "title"):
            if not data.get(required):
                raise _validation_failed(
                    {"resource": "PullRequest", "field": required, "code": "missing_field"}
                )
        head_owner, sep, head_ref = str(data["head"]).rpartition(":")
        base_ref = str(data["base"])
        repo = st.repo
        if sep and head_owner.lower() != repo.owner.lower():
            raise _validation_failed({"resource": "PullRequest", "field": "head", "code": "invalid"})
        base_sha = repo.branch_sha(base_ref)
        if base_sha is None:
            raise _validation_failed({"resource": "PullRequest", "field": "base", "code": "invalid"})
        head_sha = repo.branch_sha(head_ref)
        if head_sha is None:
            raise _validation_failed({"resource": "PullRequest", "field": "head", "code": "invalid"})
        for other in st.issues.values():
            if other.pull and other.state == "open" and other.pull.head_ref == head_ref:
                raise _validation_failed(
                    {
                        "resource": "PullRequest",
                        "code": "custom",
                        "message": f"A pull request already exists for {repo.owner}:{head_ref}.",
                    }
                )
        ahead = _run_git(repo.path, "rev-list", "--count", f"{base_sha}..{head_sha}").strip()
        if ahead == "0":
            raise _validation_failed(
                {
                    "resource": "PullRequest",
                    "code": "custom",
                    "message": f"No commits between {base_ref} and {head_ref}",
                }
            )
        now = self._now()
        issue = _Issue(
            id=next(self._ids),
            number=st.next_number,
            title=str(data["title"]),
            body=data.get("body"),
            user=call.identity.login,
            state="open",
            locked=False,
            labels=[],
            created_at=now,
            updated_at=now,
            author_association="OWNER"
            if call.identity.login.lower() == repo.owner.lower()
            else "CONTRIBUTOR",
            pull=_Pull(next(self._ids), head_ref, head_sha, base_ref, bool(data.get("draft", False))),
        )
        st.next_number += 1
        st.issues[issue.number] = issue
        self._sync_pull_refs(st)
        return self._json(self._pull_json(st, issue), status=201)

    def _pull_for(self, st: _RepoState, number: str) -> _Issue:
        issue = self._issue_for(st, number)
        if issue.pull is None:
            raise _HttpError(404, "Not Found")
        return issue

    def _api_get_pull(self, call: _Call, owner: str, name: str, number: str) -> _Response:
        st = self._repo_for(call, owner, name)
        issue = self._pull_for(st, number)
        return self.diff_response(call, st, issue) or self._json(self._pull_json(st, issue))

    def _api_edit_pull(self, call: _Call, owner: str, name: str, number: str) -> _Response:
        st = self._repo_for(call, owner, name)
        issue = self._pull_for(st, number)
        data = call.json_object()
        self._edit(
            issue,
            call.identity.login,
            title=data.get("title"),
            body=data.get("body"),
            set_body="body" in data,
            state=data.get("state"),
        )
        assert issue.pull is not None
        if data.get("base"):
            if st.repo.branch_sha(str(data["base"])) is None:
                raise _validation_failed({"resource": "PullRequest", "field": "base", "code": "invalid"})
            issue.pull.base_ref = str(data["base"])
            self._touch(issue)
        return self._json(self._pull_json(st, issue))

    # ---- review comments, reviews, reactions ----

    def _since_sorted(self, call: _Call, items: list[Any]) -> list[Any]:
        """``since`` (by ``updated_at``), ``sort`` and ``direction`` as GitHub's listings do."""
        since = call.param("since")
        if since:
            cutoff = _parse_time(since)
            items = [c for c in items if c.updated_at >= cutoff]
        items = sorted(items, key=lambda c: c.id)
        if call.param("sort") == "updated":
            items.sort(key=lambda c: (c.updated_at, c.id))
        if call.param("direction") == "desc":
            items.reverse()
        return items

    def _api_list_repo_review_comments(self, call: _Call, owner: str, name: str) -> _Response:
        st = self._repo_for(call, owner, name)
        items = self._since_sorted(call, list(st.review_comments.values()))
        return self._paginate(call, items, lambda c: self._review_comment_json(st, c))

    def _api_list_review_comments(self, call: _Call, owner: str, name: str, number: str) -> _Response:
        st = self._repo_for(call, owner, name)
        issue = self._pull_for(st, number)
        items = self._since_sorted(call, [c for c in st.review_comments.values() if c.number == issue.number])
        return self._paginate(call, items, lambda c: self._review_comment_json(st, c))

    def _api_reply_review_comment(
        self, call: _Call, owner: str, name: str, number: str, cid: str
    ) -> _Response:
        st = self._repo_for(call, owner, name)
        issue = self._pull_for(st, number)
        parent = st.review_comments.get(int(cid))
        if parent is None or parent.number != issue.number:
            raise _HttpError(404, "Not Found")
        body = call.json_object().get("body")
        if not isinstance(body, str) or not body:
            raise _validation_failed(
                {"resource": "PullRequestReviewComment", "field": "body", "code": "missing_field"}
            )
        # GitHub threads a reply under the thread's first comment, whichever comment was answered.
        root = parent.in_reply_to or parent.id
        association = "OWNER" if call.identity.login.lower() == st.repo.owner.lower() else "NONE"
        comment = self._new_review_comment(
            st,
            issue,
            body,
            call.identity.login,
            association,
            parent.path,
            parent.line,
            parent.diff_hunk,
            root,
        )
        return self._json(self._review_comment_json(st, comment), status=201)

    def _api_edit_review_comment(self, call: _Call, owner: str, name: str, cid: str) -> _Response:
        st = self._repo_for(call, owner, name)
        comment = st.review_comments.get(int(cid))
        if comment is None:
            raise _HttpError(404, "Not Found")
        body = call.json_object().get("body")
        if not isinstance(body, str) or not body:
            raise _validation_failed(
                {"resource": "PullRequestReviewComment", "field": "body", "code": "missing_field"}
            )
        comment.body = body
        comment.updated_at = max(self._now(), comment.updated_at)
        self._touch(st.issues[comment.number])
        return self._json(self._review_comment_json(st, comment))

    def _api_list_reviews(self, call: _Call, owner: str, name: str, number: str) -> _Response:
        st = self._repo_for(call, owner, name)
        issue = self._pull_for(st, number)
        items = sorted((r for r in st.reviews.values() if r.number == issue.number), key=lambda r: r.id)
        return self._paginate(call, items, lambda r: self._review_json(st, r))

    def _reaction_target(self, st: _RepoState, kind: str, cid: str) -> tuple[str, int]:
        comments: Mapping[int, Any] = st.comments if kind == "issues" else st.review_comments
        if int(cid) not in comments:
            raise _HttpError(404, "Not Found")
        return kind, int(cid)

    def _api_list_reactions(self, call: _Call, owner: str, name: str, kind: str, cid: str) -> _Response:
        st = self._repo_for(call, owner, name)
        key = self._reaction_target(st, kind, cid)
        return self._paginate(call, st.reactions.get(key, []), self._reaction_json)

    def _api_create_reaction(self, call: _Call, owner: str, name: str, kind: str, cid: str) -> _Response:
        st = self._repo_for(call, owner, name)
        key = self._reaction_target(st, kind, cid)
        content = call.json_object().get("content")
        if content not in REACTIONS:
            raise _validation_failed({"resource": "Reaction", "field": "content", "code": "invalid"})
        existing = st.reactions.setdefault(key, [])
        for reaction in existing:
            if reaction.user.lower() == call.identity.login.lower() and reaction.content == content:
                return self._json(self._reaction_json(reaction), status=200)  # GitHub: 200 when it exists
        reaction = _Reaction(next(self._ids), call.identity.login, str(content), self._now())
        existing.append(reaction)
        return self._json(self._reaction_json(reaction), status=201)

    # ---- git smart HTTP --------------------------------------------------------------------------

    def _handle_git(self, req: _Request, ctx: _Context, owner: str, name: str, rest: str) -> _Response:
        """Authenticate like GitHub, then run ``git http-backend`` as a CGI program."""
        is_push = rest == "/git-receive-pack" or (
            rest == "/info/refs" and req.query.get("service", [""])[0] == "git-receive-pack"
        )
        scheme, secret = self._credential(req)
        ctx.auth = scheme
        identity = self._identify(secret) if scheme == "basic" else None
        if identity is not None and identity.kind == "app":
            identity = None  # a JWT is not a git credential
        ctx.login = identity.login if identity else None
        with self._lock:
            st = self._repos.get(f"{owner}/{name}".lower())
            if st is not None and identity is not None and identity.kind == "installation":
                inst = self._installations.get(identity.installation_id or -1)
                if not self._installation_covers(inst, st):
                    st = None
            needs_auth = st is None or st.repo.private or is_push
            if st is not None and not is_push:
                self._sync_pull_refs(st)  # refs/pull/N/head, as GitHub keeps them
            explicit_role = st.permissions.get(identity.login.lower()) if st and identity else None
        if identity is None and needs_auth:
            return _Response(
                401,
                b"Invalid username or token. Password authentication is not supported for Git operations.\n",
                headers=[("WWW-Authenticate", 'Basic realm="GitHub"')],
                content_type="text/plain",
            )
        if st is None:
            return _Response(404, b"Repository not found.\n", content_type="text/plain")
        if is_push and identity is not None and explicit_role in ("read", "triage", "none"):
            message = f"Permission to {st.repo.full_name}.git denied to {identity.login}.\n"
            return _Response(403, message.encode(), content_type="text/plain")
        if not is_push:
            with self._lock:
                self._sync_pull_refs(st)
        return self._run_http_backend(req, st.repo, rest, identity)

    @staticmethod
    def _pull_head(repo: FakeRepo, pull: _Pull) -> str:
        """A pull request's head commit: its branch's (of this repository), or the fork's as pushed."""
        if pull.fork is not None:
            return pull.head_sha
        return repo.branch_sha(pull.head_ref) or pull.head_sha

    def _sync_pull_refs(self, st: _RepoState) -> None:
        """``refs/pull/N/head`` of every pull request at its head, as GitHub keeps them (read-only refs a
        clone can fetch, a fork's pull request too)."""
        wanted = {
            f"refs/pull/{issue.number}/head": self._pull_head(st.repo, issue.pull)
            for issue in st.issues.values()
            if issue.pull is not None
        }
        out = _run_git(st.repo.path, "for-each-ref", "--format=%(refname) %(objectname)", "refs/pull")
        have = dict(line.split(" ", 1) for line in out.splitlines() if line)
        for ref, sha in wanted.items():
            if sha and have.get(ref) != sha:
                _run_git(st.repo.path, "update-ref", ref, sha)

    def _run_http_backend(
        self, req: _Request, repo: FakeRepo, rest: str, identity: _Identity | None
    ) -> _Response:
        env = _git_env(
            {
                "GIT_PROJECT_ROOT": str(self.root),
                "GIT_HTTP_EXPORT_ALL": "1",
                "PATH_INFO": f"/{repo.owner}/{repo.name}.git{rest}",
                "QUERY_STRING": req.raw_query,
                "REQUEST_METHOD": req.method,
                "CONTENT_TYPE": req.headers.get("content-type", ""),
                "CONTENT_LENGTH": str(len(req.body)),
                "REMOTE_USER": identity.login if identity else "",
                "REMOTE_ADDR": req.client,
                "GATEWAY_INTERFACE": "CGI/1.1",
                "SERVER_PROTOCOL": "HTTP/1.1",
            }
        )
        if "content-encoding" in req.headers:
            env["HTTP_CONTENT_ENCODING"] = req.headers["content-encoding"]
        if "git-protocol" in req.headers:
            env["GIT_PROTOCOL"] = req.headers["git-protocol"]
        proc = subprocess.run(
            ["git", "http-backend"], input=req.body, capture_output=True, env=env, check=False, timeout=600
        )
        if proc.stderr:
            _log.debug("git http-backend: %s", proc.stderr.decode(errors="replace").strip())
        head, sep, body = proc.stdout.partition(b"\r\n\r\n")
        if not sep:
            head, sep, body = proc.stdout.partition(b"\n\n")
        if not sep:
            message = f"git http-backend failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}"
            return _Response(500, message.encode(), content_type="text/plain")
        status = 200
        content_type = "application/octet-stream"
        headers: list[tuple[str, str]] = []
        for line in head.decode("latin-1").splitlines():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key.lower() == "status":
                status = int(value.split()[0])
            elif key.lower() == "content-type":
                content_type = value
            elif key and key.lower() != "content-length":
                headers.append((key, value))
        return _Response(status, body, headers=headers, content_type=content_type)
