"""GitHub access through PyGithub: authentication (a token or a GitHub App), classified errors,
raw conditional requests for cheap polling, and short-lived credentials for ``git push``.

``GITHUB_API_URL`` is the base URL throughout, so GitHub Enterprise Server and the loopback GitHub in
the tests work the same way.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from claude_issue_solver.config import Config
from claude_issue_solver.credentials import GitCredential
from claude_issue_solver.github.request_budget import Priority, RequestBudget, Throttled
from claude_issue_solver.logs import REDACTOR

if TYPE_CHECKING:  # PyGithub is imported when a client is made: `status` and `--help` never load it
    from github import Auth, Github, GithubIntegration

log = logging.getLogger(__name__)
_T = TypeVar("_T")

TIMEOUT = 15
# A work request GitHub rate-limits is sent again after the client's pause, this many times at most.
RATE_LIMIT_RETRIES = 2
TOKEN_REFRESH_MARGIN = 300  # seconds before an App installation token expires that we mint a new one
_LINK_NEXT = re.compile(r'<([^>]+)>;\s*rel="next"')
_ISSUE_EDITS = """
query($owner: String!, $name: String!, $number: Int!) {
  repository(owner: $owner, name: $name) {
    issue(number: $number) {
      createdAt
      lastEditedAt
      editor { login }
      userContentEdits(first: 100) {
        totalCount
        nodes { editedAt deletedAt editor { login } diff }
      }
    }
  }
}
"""


class GitHubError(Exception):
    """A GitHub request failed. ``status`` is the HTTP status (None for a connection failure).

    ``str()`` names the request and the reason; ``reason`` is the reason alone, for places that already
    say which repository it was about (``status``, the start-up check).
    """

    def __init__(self, message: str, status: int | None = None, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason or message


class Transient(GitHubError):
    """5xx, a timeout, a refused connection: worth trying again after a back-off."""


class Refused(GitHubError):
    """401, 404, or 403 without a rate-limit signal: the credential or a setting must change; trying
    again cannot help."""


class RateLimited(GitHubError):
    """403/429 with a rate-limit signal. ``until`` is the wall-clock time GitHub told us to wait for.

    ``status`` is None when the request was not sent at all: the whole client waits (see
    :mod:`claude_issue_solver.github.request_budget`)."""

    def __init__(self, message: str, status: int | None, until: float) -> None:
        shown = time.strftime("%H:%M:%SZ", time.gmtime(until))
        answer = f"HTTP {status}" if status else "the whole client waits"
        super().__init__(message, status, reason=f"rate limited by GitHub ({answer}) until {shown}")
        self.until = until


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    data: Any

    @property
    def rate(self) -> tuple[int, int] | None:
        remaining, limit = self.headers.get("x-ratelimit-remaining"), self.headers.get("x-ratelimit-limit")
        if remaining is None or limit is None:
            return None
        try:
            return int(remaining), int(limit)
        except ValueError:
            return None


def classify(status: int, headers: Mapping[str, str], body: str, what: str, now: float) -> GitHubError:
    """Turn an error response into the exception the caller acts on."""
    try:
        payload = json.loads(body) if body else {}
        message = str(payload.get("message", ""))
        # Validation failures put the useful part ("A pull request already exists ...") in errors[].
        details = [e.get("message", "") if isinstance(e, dict) else str(e) for e in payload.get("errors", [])]
        message = "; ".join(m for m in [message, *details] if m)
    except (ValueError, AttributeError):
        message = body[:200]
    detail = f"{what}: HTTP {status}" + (f" ({message})" if message else "")
    if status in (403, 429):
        retry_after = headers.get("retry-after")
        if retry_after and retry_after.strip().isdigit():
            until = now + int(retry_after)
        elif headers.get("x-ratelimit-remaining") == "0" and headers.get("x-ratelimit-reset", "").isdigit():
            until = max(now, float(headers["x-ratelimit-reset"])) + 1
        elif status == 429 or "rate limit" in message.lower():
            until = now + 60  # a secondary limit without a hint: a minute
        else:
            until = None
        if until is not None:
            return RateLimited(detail, status, until)
    answer = f"HTTP {status}: {message}" if message else f"HTTP {status}"
    if status >= 500:
        return Transient(detail, status, reason=f"GitHub is failing ({answer})")
    if status in _REFUSALS:
        reason = f"{_REFUSALS[status]} ({answer})"
        return Refused(f"{what}: {reason}", status, reason=reason)
    return GitHubError(detail, status, reason=answer)


_REFUSALS = {
    401: "GitHub rejected the credential",
    403: "the credential lacks permission",
    404: "not found, or the credential cannot see it",
}


def describe_unreachable(exc: BaseException, base_url: str) -> str:
    """One readable line for a request that got no HTTP answer (urllib3's own text is a paragraph)."""
    import requests
    from urllib3.exceptions import NameResolutionError, NewConnectionError, SSLError, TimeoutError

    host = urlsplit(base_url).netloc or base_url
    chain = _exception_chain(exc)
    if any(isinstance(e, NameResolutionError) for e in chain):
        return f"cannot reach GitHub at {host}: the host name does not resolve (check GITHUB_API_URL)"
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return f"cannot reach GitHub at {host}: connection refused (check GITHUB_API_URL)"
    if any(isinstance(e, TimeoutError | requests.Timeout | socket.timeout) for e in chain):
        return f"cannot reach GitHub at {host}: no answer within {TIMEOUT}s"
    if any(isinstance(e, SSLError | ssl.SSLError) for e in chain):
        return f"cannot reach GitHub at {host}: the TLS handshake failed"
    found = next((e for e in reversed(chain) if isinstance(e, OSError | NewConnectionError)), exc)
    why = found.strerror if isinstance(found, OSError) and found.strerror else type(found).__name__
    return f"cannot reach GitHub at {host}: {why}"


def _exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it wraps: causes, contexts, urllib3's ``reason``, requests' first argument."""
    found: list[BaseException] = []
    todo: list[object] = [exc]
    while todo:
        current = todo.pop(0)
        if not isinstance(current, BaseException) or any(current is e for e in found):
            continue
        found.append(current)
        todo += [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
    return found


class GitHubClient:
    """One place that knows how to talk to GitHub as us, per repository."""

    def __init__(
        self, config: Config, *, clock: Any = time.time, sleep: Callable[[float], None] | None = None
    ) -> None:
        self.config = config
        self.clock = clock
        self._lock = threading.Lock()
        # One PyGithub client (one HTTP connection pool) per credential: the token, or each installation.
        self._clients: dict[tuple[str, bool], Github] = {}
        # Every request takes a slot of GITHUB_REQUESTS_PER_MINUTE first; a rate limit pauses them all.
        self.budget = RequestBudget(config.github_requests_per_minute, clock=clock, sleep=sleep)
        self._sleep = sleep or time.sleep  # a retry's back-off
        self._local = threading.local()  # this thread's request priority and count
        # GitHub's x-poll-interval per repository, as last sent (the poll schedule honours it).
        self.on_poll_interval: Callable[[str, int], None] | None = None
        self._git_tokens: dict[int, tuple[str, float]] = {}  # by installation
        self._repo_info: dict[str, dict[str, Any]] = {}
        self._app: Auth.AppAuth | None = None
        self._integration: GithubIntegration | None = None
        self._installations: dict[str, int] = {}
        # Told the outcome of every raw request ("304", "counted", "error"): the metrics count them.
        self.on_response: Callable[[str], None] | None = None
        if config.github_app_id and config.github_app_private_key_path:
            from github import Auth, GithubIntegration

            key = config.github_app_private_key_path.read_text()
            self._app = Auth.AppAuth(int(config.github_app_id), key)
            self._integration = GithubIntegration(
                auth=self._app, base_url=config.github_api_url, timeout=TIMEOUT
            )
        elif config.github_token:
            REDACTOR.add(config.github_token)

    # --- clients --------------------------------------------------------------------------------

    def api(self, repo: str, *, retry: bool = True) -> Github:
        """A PyGithub client for ``repo``. ``retry=False`` for the poller, which backs off by itself."""
        key = (str(self._installation_id(repo)) if self._app else "", retry)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                from github import Github

                from claude_issue_solver.github.retries import budgeted_retry

                client = Github(
                    auth=self._auth_for(repo),
                    base_url=self.config.github_api_url,
                    timeout=TIMEOUT,
                    retry=budgeted_retry(self._before_retry) if retry else None,
                    per_page=100,
                    seconds_between_requests=None,
                    seconds_between_writes=None,
                )
                self._clients[key] = client
            return client

    def _auth_for(self, repo: str) -> Auth.Auth:
        from github import Auth

        if self._app is None:
            assert self.config.github_token
            return Auth.Token(self.config.github_token)
        return self._app.get_installation_auth(self._installation_id(repo))

    def _installation_id(self, repo: str) -> int:
        integration = self._integration
        assert integration is not None
        cached = self._installations.get(repo.lower())
        if cached is None:
            owner, name = repo.split("/", 1)
            what = f"GET /repos/{repo}/installation"
            try:
                cached = self._library_call(what, lambda: integration.get_repo_installation(owner, name).id)
            except Refused:
                msg = f"the GitHub App is not installed on {repo}, or cannot see it"
                raise Refused(msg) from None
            self._installations[repo.lower()] = cached
        return cached

    def _library_call(self, what: str, call: Callable[[], _T]) -> _T:
        """One request sent by a PyGithub method (the App's ``GithubIntegration``, a GraphQL mutation):
        inside the budget like any other, counted, and its failure classified (a 5xx is passing, not a
        crash; a rate limit pauses the client)."""
        self._take_slot(what)
        try:
            answer = call()
        except Exception as exc:
            self._observe("error")
            classified = self._classified(exc, what)
            if isinstance(classified, RateLimited):
                self._rate_limited(classified)
            raise classified from None
        self._observe("counted")
        return answer

    @property
    def is_app(self) -> bool:
        return self._app is not None

    def app_repositories(self) -> list[str]:
        """Every repository of every installation of the App (``GET /app/installations``, then
        ``GET /installation/repositories`` as each installation), sorted; remembers each one's
        installation so no per-repository lookup follows."""
        if self._integration is None:
            msg = "listing the App's repositories needs GITHUB_APP_ID and GITHUB_APP_PRIVATE_KEY_PATH"
            raise Refused(msg)
        from github import GithubException

        found: dict[str, tuple[str, int]] = {}
        self._take_slot("listing the App's installations")
        try:
            for installation in self._integration.get_installations():
                for repo in installation.get_repos():
                    found[repo.full_name.lower()] = (repo.full_name, installation.id)
        except GithubException as exc:
            body = exc.data if isinstance(exc.data, str) else json.dumps(exc.data or {})
            raise classify(
                exc.status, exc.headers or {}, body, "listing the App's installations", self.clock()
            ) from None
        except Exception as exc:
            reason = REDACTOR(describe_unreachable(exc, self.config.github_api_url))
            raise Transient(f"listing the App's installations: {reason}", reason=reason) from None
        with self._lock:
            self._installations.update({key: inst for key, (_, inst) in found.items()})
        return sorted((name for name, _ in found.values()), key=str.lower)

    def git_credential(self, repo: str) -> GitCredential:
        """A credential for one git command: the token, or a fresh App installation token."""
        if self._app is None:
            assert self.config.github_token
            return GitCredential("x-access-token", self.config.github_token)
        installation = self._installation_id(repo)
        with self._lock:
            token, expires = self._git_tokens.get(installation, ("", 0.0))
        if not token or expires - self.clock() < TOKEN_REFRESH_MARGIN:
            integration = self._integration
            assert integration is not None
            # One token serves every repository of its installation: an organisation's thousand
            # repositories mint one an hour, not one per repository pushed to.
            access = self._library_call(
                f"POST /app/installations/{installation}/access_tokens",
                lambda: integration.get_access_token(installation),
            )
            token = access.token
            expires = access.expires_at.timestamp() if access.expires_at else self.clock() + 3600
            REDACTOR.add(token, until=expires)  # a ghs_ token: its shape is masked after that
            with self._lock:
                self._git_tokens[installation] = (token, expires)
        return GitCredential("x-access-token", token)

    # --- the request budget -----------------------------------------------------------------------

    @contextlib.contextmanager
    def priority(self, priority: Priority) -> Iterator[None]:
        """The requests of this thread in the block are ``priority`` (a poll, a webhook's poll)."""
        before = getattr(self._local, "priority", Priority.WORK)
        self._local.priority = priority
        try:
            yield
        finally:
            self._local.priority = before

    @property
    def sent(self) -> int:
        """Requests this thread has sent (a poll's cost is the difference)."""
        return int(getattr(self._local, "sent", 0))

    def _take_slot(self, what: str) -> None:
        """Wait for a slot of the request budget; a pause GitHub asked for refuses it (not sent)."""
        try:
            self.budget.acquire(getattr(self._local, "priority", Priority.WORK))
        except Throttled as exc:
            raise RateLimited(f"{what}: {exc}", None, exc.until) from None
        self._local.sent = self.sent + 1

    def holds_work(self) -> str | None:
        """Why a task started now would meet GitHub's refusal (a pause it asked for, longer than work
        waits), or None."""
        refusal = self.budget.refuses_work()
        if refusal is None:
            return None
        shown = time.strftime("%H:%M:%SZ", time.gmtime(refusal.until))
        return f"GitHub asked for no requests until {shown} ({refusal.why})"

    def _before_retry(self, backoff: float) -> None:
        """PyGithub is about to send a failed request again (a 5xx, a dropped connection): the failed
        try is counted, the back-off slept, and the retry takes a budget slot of its own."""
        self._observe("error")
        if backoff > 0:
            self._sleep(backoff)
        self._take_slot(f"{getattr(self._local, 'what', 'a request')} (again)")

    def _after_pause(self, exc: RateLimited, what: str) -> None:
        """A retried request GitHub answered with a rate limit is sent again once the whole client's
        pause is over, if it is short enough for work to wait (the budget's ``WORK_WAIT``); otherwise,
        or for a poll or background request, GitHub's answer is the error."""
        try:
            self._take_slot(what)
        except RateLimited:
            raise exc from None

    def _rate_limited(self, exc: RateLimited) -> None:
        """GitHub said to wait: every request of this client waits, not only this repository's."""
        if exc.status is None:
            return  # not sent: the pause is known already
        if self.budget.pause(exc.until, exc.reason):
            log.warning("%s: no request to GitHub until then", exc.reason)

    # --- raw requests -----------------------------------------------------------------------------

    def request(
        self,
        repo: str,
        verb: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
        retry: bool = False,
    ) -> Response:
        """One request; 304 and 2xx come back, everything else is raised as a classified error."""
        what = f"{verb} {url.split('?')[0]}"
        if body is not None:
            # Everything we write to GitHub (comments, pull requests, reviews) may carry words the agent
            # wrote: no configured secret, minted token or token-shaped string leaves unredacted.
            body = redacted(body)
        self._take_slot(what)
        self._local.what = what  # a retry's slot names it
        waited = 0
        while True:
            try:
                response = self._request(repo, verb, url, what, params, headers, body, retry)
                break
            except RateLimited as exc:
                self._observe("error")
                self._rate_limited(exc)
                if not retry or waited >= RATE_LIMIT_RETRIES:
                    raise
                waited += 1
                self._after_pause(exc, what)
            except GitHubError:
                self._observe("error")
                raise
        self._observe("304" if response.status == 304 else "counted")
        hint = response.headers.get("x-poll-interval", "")
        if hint.strip().isdigit() and self.on_poll_interval is not None:
            self.on_poll_interval(repo, int(hint))
        return response

    def _observe(self, outcome: str) -> None:
        if self.on_response is not None:
            self.on_response(outcome)

    def _request(
        self,
        repo: str,
        verb: str,
        url: str,
        what: str,
        params: Mapping[str, Any] | None,
        headers: Mapping[str, str] | None,
        body: Any,
        retry: bool,
    ) -> Response:
        try:
            status, response_headers, text = self.api(repo, retry=retry).requester.requestJson(
                verb, url, parameters=dict(params or {}), headers=dict(headers or {}), input=body
            )
        except GitHubError:
            raise
        except Exception as exc:
            raise self._classified(exc, what) from None
        if status == 304 or 200 <= status < 300:
            data = json.loads(text) if text else None
            return Response(status, response_headers, data)
        raise classify(status, response_headers, text, what, self.clock())

    def _classified(self, exc: Exception, what: str) -> GitHubError:
        from github import GithubException

        # An error answer to a PyGithub method (the App's, a GraphQL mutation): classified like any other.
        if isinstance(exc, GithubException):
            body = exc.data if isinstance(exc.data, str) else json.dumps(exc.data or {})
            return classify(exc.status, exc.headers or {}, body, what, self.clock())
        # requests' and urllib3's connection errors, timeouts
        reason = REDACTOR(describe_unreachable(exc, self.config.github_api_url))
        return Transient(f"{what}: {reason}", reason=reason)

    def set_draft(self, repo: str, pull: Mapping[str, Any], draft: bool) -> bool:
        """Turn an open pull request into a draft (``draft``) or mark it ready for review; its new state.

        The REST API cannot change an existing pull request's draft state; GitHub's GraphQL API can
        (``convertPullRequestToDraft``, ``markPullRequestReadyForReview``, by the PR's ``node_id``), and
        PyGithub's own methods send those mutations. ``pull`` is the REST JSON already fetched (at least
        ``node_id`` and ``number``), so no request reads the PR again.
        """
        from github.PullRequest import PullRequest

        mutation = "convertPullRequestToDraft" if draft else "markPullRequestReadyForReview"
        what = f"GraphQL {mutation} of {repo}#{pull.get('number')}"
        pr = self.api(repo).create_from_raw_data(PullRequest, dict(pull))
        answer = self._library_call(what, pr.convert_to_draft if draft else pr.mark_ready_for_review)
        return bool((answer.get("pullRequest") or {}).get("isDraft"))

    def paginate(self, repo: str, url: str, params: Mapping[str, Any] | None = None) -> Iterator[Response]:
        """Follow ``Link: rel="next"`` pages of a list endpoint."""
        response: Response | None = self.request(repo, "GET", url, params={"per_page": 100, **(params or {})})
        while response is not None:
            yield response
            response = self.next_page(repo, response)

    def next_page(self, repo: str, response: Response) -> Response | None:
        match = _LINK_NEXT.search(response.headers.get("link", ""))
        return self.request(repo, "GET", match.group(1)) if match else None

    # --- reads the pipeline needs ---------------------------------------------------------------

    def repo_info(self, repo: str) -> dict[str, Any]:
        """clone_url and default_branch (cached: they do not change under us)."""
        info = self._repo_info.get(repo.lower())
        if info is None:
            data = self.request(repo, "GET", f"/repos/{repo}", retry=True).data
            info = {"clone_url": data["clone_url"], "default_branch": data.get("default_branch") or "main"}
            self._repo_info[repo.lower()] = info
        return info

    def issue(self, repo: str, number: int) -> dict[str, Any]:
        return self.request(repo, "GET", f"/repos/{repo}/issues/{number}", retry=True).data

    def comments(self, repo: str, number: int, since: str | None = None) -> list[dict[str, Any]]:
        params = {"since": since} if since else {}
        out: list[dict[str, Any]] = []
        for page in self.paginate(repo, f"/repos/{repo}/issues/{number}/comments", params):
            out.extend(page.data or [])
        return out

    def events(self, repo: str, number: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for page in self.paginate(repo, f"/repos/{repo}/issues/{number}/events"):
            out.extend(page.data or [])
        return out

    def graphql(self, repo: str, query: str, variables: Mapping[str, Any], what: str) -> dict[str, Any]:
        """One GraphQL query as ``repo``'s credential; its ``data``. An answer with ``errors`` (a node
        not found, a field the server does not know) raises :class:`GitHubError` like a REST failure."""
        url = self.api(repo).requester.graphql_url
        response = self.request(repo, "POST", url, body={"query": query, "variables": dict(variables)})
        answer = response.data if isinstance(response.data, dict) else {}
        errors = answer.get("errors") or []
        if errors or not isinstance(answer.get("data"), dict):
            first = errors[0] if errors and isinstance(errors[0], dict) else {}
            message = str(first.get("message") or "no data in the answer")
            reason = f"GraphQL: {message}"
            if first.get("type") == "NOT_FOUND":
                raise Refused(f"{what}: {reason}", 404, reason=reason)
            raise GitHubError(f"{what}: {reason}", response.status, reason=reason)
        return answer["data"]

    def issue_edits(self, repo: str, number: int) -> dict[str, Any]:
        """An issue's body edit history (GraphQL; REST has none): ``lastEditedAt``, ``editor``, and
        ``userContentEdits`` (newest first, at most 100; each node's ``diff`` is that revision's whole
        text, ``None`` when someone deleted the revision from the history)."""
        owner, name = repo.split("/", 1)
        data = self.graphql(
            repo,
            _ISSUE_EDITS,
            {"owner": owner, "name": name, "number": number},
            f"the edits of {repo}#{number}",
        )
        return ((data.get("repository") or {}).get("issue")) or {}

    def permission(self, repo: str, login: str) -> str:
        data = self.request(repo, "GET", f"/repos/{repo}/collaborators/{login}/permission", retry=True).data
        return str(data.get("permission", "none"))


def redacted(value: Any) -> Any:
    """``value`` with every string in it passed through the secret redactor (JSON-shaped data)."""
    if isinstance(value, str):
        return REDACTOR(value)
    if isinstance(value, dict):
        return {key: redacted(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redacted(item) for item in value]
    return value
