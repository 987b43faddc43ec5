"""``doctor``: check what ``start`` depends on, one thing at a time, and say how to fix what fails.

Every check runs on its own: one that fails (or crashes) never stops the others, and its exception
becomes a readable line, not a traceback. Nothing is written to GitHub: access is judged from what
GitHub reports (the repository's ``permissions``, a classic token's scopes, an App installation's
permissions) and from read-only requests. Every line passes through the secret redactor before it
leaves this module, so no credential is ever shown.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import quote, urlsplit

from claude_issue_solver.backends.base import BackendError
from claude_issue_solver.config import Config, ConfigError, load_config, resolve_env_file
from claude_issue_solver.logs import REDACTOR, Redactor

if TYPE_CHECKING:
    from github import GithubIntegration

    from claude_issue_solver.backends.docker import DockerBackend
    from claude_issue_solver.github import GitHubClient

__all__ = ["Check", "diagnose", "render", "run_checks", "to_json"]

PASS_MARK = "✔"
FAIL_MARK = "✘"
VERSION_TIMEOUT = 60  # seconds for `claude --version` in the agent image (it starts in well under one)
LABEL_COLOR = "d97757"
LABEL_DESCRIPTION = "Ask Claude to solve this issue"
APP_PERMISSIONS = ("contents", "issues", "pull_requests")
TOKEN_GRANTS = "Contents, Issues and Pull requests: Read and write (Metadata: Read)"
_VERSION_RE = re.compile(r"\b(\d+\.\d+\.\d+)\b")
_PINNED_RE = re.compile(r"^ARG CLAUDE_CODE_VERSION=(\S+)", re.MULTILINE)
_ROLES = (
    ("admin", "admin"),
    ("maintain", "maintain"),
    ("push", "write"),
    ("triage", "triage"),
    ("pull", "read"),
)


@dataclass(frozen=True)
class Check:
    """One line of the report. ``fix`` says what to do; every failed check has one."""

    name: str
    ok: bool
    detail: str
    fix: str | None = None


class _Outcome(NamedTuple):
    ok: bool
    detail: str
    fix: str | None = None


def _passed(detail: str) -> _Outcome:
    return _Outcome(True, detail)


def _failed(detail: str, fix: str) -> _Outcome:
    return _Outcome(False, detail, fix)


def diagnose(
    env_file: Path | None = None, *, environ: Mapping[str, str] | None = None, build: bool = False
) -> list[Check]:
    """Load the configuration as ``start`` would and run every check; a configuration that does not
    parse is itself the (only) failed check, since every other check needs it."""
    env = os.environ if environ is None else environ
    source: Path | None = None
    try:
        source = resolve_env_file(env_file, env)
        config = load_config(source, env)
    except ConfigError as exc:
        where = source or "the environment or a .env file (--env-file PATH)"
        fix = f"correct it in {where}; every key is explained in .env.example"
        return [Check("configuration", False, str(exc), fix)]
    return run_checks(config, env_file=source, build=build)


def run_checks(config: Config, *, env_file: Path | None = None, build: bool = False) -> list[Check]:
    """Every check for this configuration, in report order.

    ``env_file`` is where the settings came from (named in the fixes). ``build`` builds a missing agent
    image instead of only reporting what would be built (that can take minutes).
    """
    return _Doctor(config, env_file, build).run()


def render(checks: list[Check]) -> str:
    """One ``✔``/``✘`` line per check, the fix indented under each failure, and a summary line."""
    lines: list[str] = []
    for check in checks:
        mark = PASS_MARK if check.ok else FAIL_MARK
        lines.append(_indented(f"{mark} {check.name}: {check.detail}"))
        if not check.ok and check.fix:
            lines.append(_indented(f"    fix: {check.fix}"))
    failed = sum(not c.ok for c in checks)
    if failed:
        lines.append(f"{failed} of {len(checks)} checks failed")
    else:
        lines.append(f"all {len(checks)} checks passed")
    return "\n".join(lines)


def to_json(checks: list[Check]) -> list[dict[str, Any]]:
    return [asdict(check) for check in checks]


def _indented(text: str) -> str:
    # Multi-line details (a build's tail) stay visibly part of their check.
    first, *rest = text.splitlines() or [""]
    return "\n".join([first, *(f"      {line}" for line in rest)])


class _Doctor:
    """The checks of one run, sharing what they learn (the GitHub client, the login, the Docker client)."""

    def __init__(self, config: Config, env_file: Path | None, build: bool) -> None:
        self.config = config
        self.build = build
        self.env_file = env_file
        self.where = str(env_file) if env_file else "your .env file (or the environment)"
        self.redact = Redactor(config.secrets())
        self.api_url = config.github_api_url
        self.web_url = _web_url(config.github_api_url)
        self.is_app = bool(config.github_app_id and config.github_app_private_key_path)
        self._client: GitHubClient | None = None
        self._integration: GithubIntegration | None = None
        self._docker: DockerBackend | None = None
        self._login: str | None = None
        self._credential_ok = False
        self._visible: dict[str, bool] = {}

    def run(self) -> list[Check]:
        label = self.config.trigger_label
        steps: list[tuple[str, Callable[[], _Outcome]]] = [
            ("configuration", self.configuration),
            ("state directory", self.state_directory),
            ("GitHub credential", self.github_credential),
        ]
        for repo in self.config.github_repos:
            steps.append((f"repository {repo}", partial(self.repository, repo)))
            steps.append((f"label {label!r} on {repo}", partial(self.label, repo)))
        steps.append(("Claude credential", self.claude_credential))
        if self.config.backend == "docker":
            steps += [("Docker", self.docker), ("agent image", self.agent_image), ("git", self.git)]
        elif self.config.backend == "daytona":
            steps.append(("Daytona", self.daytona))
        return [self._run_one(name, step) for name, step in steps]

    def _run_one(self, name: str, step: Callable[[], _Outcome]) -> Check:
        try:
            outcome = step()
        except Exception as exc:  # a check must never take the report down with it
            outcome = _failed(
                f"the check itself failed: {type(exc).__name__}: {exc}",
                "this is unexpected: run doctor again, and if it repeats, report this line",
            )
        fix = self._clean(outcome.fix) if outcome.fix else None
        return Check(name, outcome.ok, self._clean(outcome.detail), fix)

    def _clean(self, text: str) -> str:
        # Both redactors: ours knows this config's secrets, the process-wide one any minted App token.
        return REDACTOR(self.redact(text))

    # --- configuration and local state -------------------------------------------------------------

    def configuration(self) -> _Outcome:
        try:
            self.config.require_daemon_settings()
        except ConfigError as exc:
            return _failed(str(exc), f"set it in {self.where}; every key is explained in .env.example")
        repos = self.config.github_repos
        source = "from the environment"
        if self.env_file:
            source = f"from {self.env_file} and the environment"
        count = f"{len(repos)} repositor{'y' if len(repos) == 1 else 'ies'}"
        return _passed(
            f"settings {source}; {count}, label {self.config.trigger_label!r}, BACKEND={self.config.backend}"
        )

    def state_directory(self) -> _Outcome:
        path = self.config.state_dir.expanduser()
        # The nearest existing ancestor is where the daemon's mkdir would have to succeed; testing there
        # keeps doctor from creating anything.
        existing = path
        while not existing.exists() and existing.parent != existing:
            existing = existing.parent
        fix_elsewhere = f"set STATE_DIR in {self.where} to a directory this user can write"
        if not existing.is_dir():
            return _failed(f"{path} cannot be created: {existing} is not a directory", fix_elsewhere)
        try:
            with tempfile.NamedTemporaryFile(dir=existing, prefix=".doctor-"):
                pass
        except OSError as exc:
            user = _user_name()
            return _failed(
                f"cannot write in {existing}: {exc.strerror or exc}",
                f"`sudo mkdir -p {shlex.quote(str(path))} && sudo chown {user} {shlex.quote(str(path))}`, "
                f"or {fix_elsewhere}",
            )
        if existing == path:
            return _passed(f"{path} is writable")
        return _passed(f"{path} does not exist yet; it will be created in {existing}, which is writable")

    # --- GitHub ------------------------------------------------------------------------------------

    def github(self) -> GitHubClient:
        if self._client is None:
            from claude_issue_solver.github import GitHubClient

            self._client = GitHubClient(self.config)
        return self._client

    def integration(self) -> GithubIntegration:
        if self._integration is None:
            from github import Auth, GithubIntegration

            assert self.config.github_app_id and self.config.github_app_private_key_path
            key = self.config.github_app_private_key_path.read_text()
            self._integration = GithubIntegration(
                auth=Auth.AppAuth(int(self.config.github_app_id), key),
                base_url=self.api_url,
                timeout=15,
                seconds_between_requests=None,
                seconds_between_writes=None,
            )
        return self._integration

    def github_credential(self) -> _Outcome:
        outcome = self._app_credential() if self.is_app else self._token_credential()
        self._credential_ok = outcome.ok
        return outcome

    def _token_credential(self) -> _Outcome:
        if not self.config.github_token:
            return _failed(
                "no GitHub credential is configured",
                f"set GITHUB_TOKEN in {self.where} to {self._token_advice()}; "
                "or GITHUB_APP_ID and GITHUB_APP_PRIVATE_KEY_PATH for a GitHub App",
            )
        from claude_issue_solver.github import GitHubError

        try:
            response = self.github().request("", "GET", "/user")
        except GitHubError as exc:
            return self._github_failure(exc, credential_check=True)
        self._login = str((response.data or {}).get("login") or "?")
        kind = "fine-grained token" if self.config.github_token.startswith("github_pat_") else "token"
        scopes = response.headers.get("x-oauth-scopes")
        if scopes is not None:
            kind = f"classic token (scopes: {scopes or 'none'})"
        rate = response.rate
        left = f"; {rate[0]}/{rate[1]} requests left this hour" if rate else ""
        return _passed(f"{kind} of {self._login} accepted by {self.api_url}{left}")

    def _app_credential(self) -> _Outcome:
        import jwt
        from github import GithubException

        app_id = self.config.github_app_id
        if not str(app_id).isdigit():
            return _failed(
                f"GITHUB_APP_ID={app_id} is not a number",
                f"set GITHUB_APP_ID in {self.where} to the App ID shown on the App's settings page",
            )
        try:
            app = self.integration().get_app()
        except OSError as exc:
            return _failed(
                f"cannot read GITHUB_APP_PRIVATE_KEY_PATH={self.config.github_app_private_key_path}: "
                f"{exc.strerror or exc}",
                "make the .pem file readable by this user, or point GITHUB_APP_PRIVATE_KEY_PATH at it",
            )
        except GithubException as exc:
            return _failed(
                f"GitHub App {app_id} was refused by {self.api_url}: {_pygithub_error(exc)}",
                "check that GITHUB_APP_ID is the App's ID and the key is one of its private keys "
                "(the App's settings -> Private keys -> Generate a private key)",
            )
        except (ValueError, TypeError, jwt.PyJWTError) as exc:  # the key does not parse: no JWT
            return _failed(
                f"the App's private key cannot be used: {exc}",
                "point GITHUB_APP_PRIVATE_KEY_PATH at the .pem file GitHub generated, unchanged",
            )
        return _passed(f"GitHub App {app.slug} (id {app_id}) accepted by {self.api_url}")

    def repository(self, repo: str) -> _Outcome:
        from claude_issue_solver.github import GitHubError

        self._visible[repo] = False
        if not self._credential_ok:
            # Every request would fail the same way; the credential's own check says why and what to do.
            return _failed("not checked: the GitHub credential does not work", "fix it first (see above)")
        client = self.github()
        try:
            response = client.request(repo, "GET", f"/repos/{repo}")
            self._visible[repo] = True
            data = response.data or {}
            client.request(
                repo, "GET", f"/repos/{repo}/issues", params={"state": "open", "per_page": 1}
            )  # proves the credential may read issues (an App or fine-grained token may not)
        except GitHubError as exc:
            return self._github_failure(exc, repo=repo)

        problems: list[tuple[str, str]] = []
        if data.get("archived"):
            problems.append(("it is archived (read-only)", f"unarchive {repo} (Settings -> General)"))
        if data.get("has_issues") is False:
            problems.append(
                ("its Issues are turned off", f"turn on Issues for {repo} (Settings -> General -> Features)")
            )
        if self.is_app:
            problems += self._app_permissions(repo)
            granted = f"the App's installation has {', '.join(APP_PERMISSIONS)}: write"
        else:
            problems += self._token_permissions(repo, data, response.headers.get("x-oauth-scopes"))
            granted = f"{self._login or 'the token'} has write access (push, comment, open pull requests)"
            if self.config.github_token and self.config.github_token.startswith("github_pat_"):
                granted += f"; the fine-grained token itself must grant {TOKEN_GRANTS} here"
        if problems:
            return _failed("; ".join(p for p, _ in problems), " ".join(f for _, f in problems))
        return _passed(f"visible, issues readable; {granted}")

    def _token_permissions(
        self, repo: str, data: Mapping[str, Any], scopes: str | None
    ) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        if scopes is not None:  # only classic tokens report scopes
            have = {s.strip() for s in scopes.split(",") if s.strip()}
            if "repo" not in have and not ("public_repo" in have and not data.get("private")):
                problems.append(
                    (
                        f"the classic token's scopes ({scopes or 'none'}) do not include repo",
                        f"create a classic token with the repo scope at {self.web_url}/settings/tokens/new, "
                        f"or {self._fine_grained_advice()}, and set GITHUB_TOKEN in {self.where}",
                    )
                )
        permissions = data.get("permissions")
        login = self._login or "the token's user"
        if not isinstance(permissions, Mapping):
            problems.append(
                (
                    "GitHub did not report this credential's permissions on it",
                    f"make sure {login} is a collaborator with write access to {repo}",
                )
            )
        elif not permissions.get("push"):
            role = next((name for flag, name in _ROLES if permissions.get(flag)), "no")
            problems.append(
                (
                    f"{login} has {role} access: it cannot push branches, comment or open pull requests",
                    f"give {login} write access to {repo} (Settings -> Collaborators and teams), "
                    "or use a token of an account that has it",
                )
            )
        return problems

    def _app_permissions(self, repo: str) -> list[tuple[str, str]]:
        from github import GithubException

        owner, name = repo.split("/", 1)
        try:
            permissions = self.integration().get_repo_installation(owner, name).permissions or {}
        except GithubException as exc:
            return [
                (
                    f"the App's installation on {repo} cannot be read: {_pygithub_error(exc)}",
                    f"install the App on {repo} (the App's settings -> Install App)",
                )
            ]
        missing = [
            f"{p}: {permissions.get(p) or 'none'}" for p in APP_PERMISSIONS if permissions.get(p) != "write"
        ]
        if not missing:
            return []
        return [
            (
                f"the App's installation lacks write access ({', '.join(missing)})",
                "give the App Contents, Issues and Pull requests: Read and write (its settings -> "
                "Permissions & events), then accept the new permissions on the installation",
            )
        ]

    def label(self, repo: str) -> _Outcome:
        from claude_issue_solver.github import GitHubError

        label = self.config.trigger_label
        if not self._visible.get(repo):
            # Asking would only repeat the repository's failure, and a 404 would read as "no label".
            return _failed(f"not checked: {repo} is not visible", f"see the check of repository {repo} above")
        try:
            response = self.github().request(repo, "GET", f"/repos/{repo}/labels/{quote(label, safe='')}")
        except GitHubError as exc:
            if exc.status == 404:
                return _failed(f"{repo} has no label {label!r}", self._create_label_fix(repo))
            return self._github_failure(exc, repo=repo)
        name = str((response.data or {}).get("name") or label)
        # GitHub matches label names case-insensitively, and so does the watcher.
        return _passed("exists" if name == label else f"exists (as {name!r})")

    def _create_label_fix(self, repo: str) -> str:
        label = self.config.trigger_label
        host = urlsplit(self.web_url).netloc or "github.com"
        gh_host = "" if host == "github.com" else f"GH_HOST={host} "
        command = (
            f"{gh_host}gh label create {shlex.quote(label)} --repo {repo} --color {LABEL_COLOR} "
            f"--description {shlex.quote(LABEL_DESCRIPTION)}"
        )
        return f"create it: `{command}`, or on {self.web_url}/{repo}/labels -> New label"

    def _github_failure(
        self, exc: Exception, *, repo: str | None = None, credential_check: bool = False
    ) -> _Outcome:
        from claude_issue_solver.github import GitHubError, RateLimited, Transient

        if isinstance(exc, RateLimited):
            until = time.strftime("%H:%M:%S", time.localtime(exc.until))
            return _failed(
                f"GitHub's rate limit for this credential is used up until {until}",
                "wait until then (the daemon backs off by itself), "
                "or give the daemon a credential of its own",
            )
        if isinstance(exc, Transient):
            return _failed(
                str(exc),
                f"check that GITHUB_API_URL={self.api_url} is right and reachable from this host "
                "(proxy, DNS, firewall), then run doctor again",
            )
        status = exc.status if isinstance(exc, GitHubError) else None
        if status == 401:
            if credential_check:
                return _failed(
                    f"the token was rejected by {self.api_url} (HTTP 401 Bad credentials)",
                    f"it is wrong, expired or revoked: create a new one, {self._token_advice()}, "
                    f"and set GITHUB_TOKEN in {self.where}",
                )
            return _failed(
                "the GitHub credential was rejected (HTTP 401)", "fix the GitHub credential first (see above)"
            )
        if repo is not None and (status in (403, 404) or (self.is_app and status is None)):
            if self.is_app:
                fix = f"install the App on {repo} (the App's settings -> Install App -> choose {repo})"
            else:
                fix = (
                    f"check the name in GITHUB_REPOS, and that {self._login or 'the token'} can see {repo} "
                    "(a fine-grained token must list it under Repository access)"
                )
            return _failed(str(exc), fix)
        return _failed(str(exc), f"check the GitHub settings in {self.where}, then run doctor again")

    def _fine_grained_advice(self) -> str:
        return (
            f"a fine-grained token from {self.web_url}/settings/personal-access-tokens/new "
            f"with {TOKEN_GRANTS} on every repository in GITHUB_REPOS"
        )

    def _token_advice(self) -> str:
        return f"{self._fine_grained_advice()}, or a classic token with the repo scope"

    # --- the agent -----------------------------------------------------------------------------------

    def claude_credential(self) -> _Outcome:
        present = [
            key
            for key, value in (
                ("ANTHROPIC_API_KEY", self.config.anthropic_api_key),
                ("CLAUDE_CODE_OAUTH_TOKEN", self.config.claude_code_oauth_token),
            )
            if value
        ]
        if not present:
            return _failed(
                "neither ANTHROPIC_API_KEY nor CLAUDE_CODE_OAUTH_TOKEN is set",
                f"set ANTHROPIC_API_KEY (an API key from console.anthropic.com) or CLAUDE_CODE_OAUTH_TOKEN "
                f"(from `claude setup-token`, for a Claude subscription) in {self.where}",
            )
        gateway = (
            f"; API calls go to {self.config.anthropic_base_url}" if self.config.anthropic_base_url else ""
        )
        return _passed(f"{' and '.join(present)} set (value not shown){gateway}")

    # --- Docker --------------------------------------------------------------------------------------

    def backend(self) -> DockerBackend:
        if self._docker is None:
            from claude_issue_solver.app import docker_settings
            from claude_issue_solver.backends.docker import DockerBackend

            self._docker = DockerBackend(docker_settings(self.config))
        return self._docker

    def docker(self) -> _Outcome:
        try:
            backend = self.backend()
            backend.check()
            version = backend.client.version().get("Version", "?")
        except BackendError as exc:
            host = os.environ.get("DOCKER_HOST")
            return _failed(
                str(exc),
                "start Docker (`sudo systemctl start docker`) and let this user use it "
                "(`sudo usermod -aG docker $USER`, then log in again)"
                + (f"; DOCKER_HOST={host} is set: is that where the daemon listens?" if host else ""),
            )
        where = os.environ.get("DOCKER_HOST") or "the default socket"
        return _passed(f"Docker {version} answers at {where}")

    def agent_image(self) -> _Outcome:
        import docker.errors

        try:
            backend = self.backend()
            backend.check()
        except BackendError:
            return _failed("not checked: the Docker daemon does not answer", "start Docker first (see above)")
        configured = self.config.docker_image
        if configured:
            if not backend.image_present(configured):
                return _failed(
                    f"DOCKER_IMAGE={configured} is not on this host (agent images are never pulled)",
                    f"`docker pull {configured}` (or build it), or unset DOCKER_IMAGE in {self.where} "
                    "to have Dockerfile.claude built",
                )
            return self._run_version(configured)

        base = self.config.docker_base_image
        if self.build:
            try:
                tag = self._build_default_image()
            except (BackendError, docker.errors.DockerException) as exc:
                return _failed(
                    f"building the agent image on {base} failed: {exc}",
                    f"make {base} available (`docker pull {base}`) or set DOCKER_BASE_IMAGE, "
                    "then run `doctor --build` again; or set DOCKER_IMAGE to an image of your own",
                )
            return self._run_version(tag, prefix=f"built {tag} from Dockerfile.claude on {base}; ")
        own = "a repository with a Dockerfile at its root gets it built on its own image instead"
        tag = backend.agent_image_tag(base)
        if tag is None:
            return _passed(
                f"DOCKER_IMAGE is unset: Dockerfile.claude will be built on {base} at the first task; "
                f"{base} is not on this host yet and will be pulled then ({own}; `doctor --build` builds now)"
            )
        if backend.image_present(tag):
            return self._run_version(
                tag, prefix=f"DOCKER_IMAGE is unset; built from Dockerfile.claude on {base}: "
            )
        return _passed(
            f"DOCKER_IMAGE is unset: Dockerfile.claude will be built on {base} (present) as {tag} at the "
            f"first task, which takes a few minutes once ({own}; `doctor --build` builds now)"
        )

    def _build_default_image(self) -> str:
        # The same inputs and tag as DockerBackend.ensure_image, so the daemon reuses what this builds.
        return self.backend().build_agent_image(self.config.docker_base_image)

    def _run_version(self, image: str, *, prefix: str = "") -> _Outcome:
        """``claude --version`` in ``image`` as the agent runs: the same user, no network."""
        import docker.errors
        import requests

        from claude_issue_solver.backends.docker import AGENT_UID, agent_ids

        uid, gid = agent_ids()
        client = self.backend().client
        fix = (
            f"the image needs `claude` on PATH, runnable by uid {uid}: build it from Dockerfile.claude, "
            f"or unset DOCKER_IMAGE in {self.where}"
        )
        try:
            container = client.containers.create(
                image,
                ["claude", "--version"],
                user=f"{uid}:{gid}",
                environment={"HOME": "/tmp"} if uid != AGENT_UID else {},
                network_mode="none",
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
            )
        except docker.errors.DockerException as exc:
            return _failed(f"{image}: cannot create a container: {exc}", fix)
        try:
            container.start()
            code = container.wait(timeout=VERSION_TIMEOUT).get("StatusCode")
            output = container.logs(stdout=True, stderr=True).decode("utf-8", "replace").strip()
        except requests.exceptions.RequestException:
            return _failed(f"{image}: `claude --version` did not finish within {VERSION_TIMEOUT}s", fix)
        except docker.errors.DockerException as exc:
            return _failed(f"{image}: `claude --version` could not run: {exc}", fix)
        finally:
            # A leftover container is not worth failing the check over; it carries no secret.
            with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
                container.remove(force=True)
        first = output.splitlines()[0] if output else ""
        found = _VERSION_RE.search(first)
        if code != 0 or found is None:
            tail = "\n".join(output.splitlines()[-5:]) or "(no output)"
            return _failed(f"{prefix}{image}: `claude --version` as uid {uid} exited {code}:\n{tail}", fix)
        pinned = _pinned_version()
        note = f" (Dockerfile.claude pins {pinned})" if pinned and pinned != found.group(1) else ""
        return _passed(f"{prefix}{image}: `claude --version` as uid {uid}, no network: {first}{note}")

    def git(self) -> _Outcome:
        path = shutil.which("git")
        fix = "install git on this host (`sudo apt-get install git`): the daemon runs fetch, commit and push"
        if path is None:
            return _failed("git is not on PATH", fix)
        try:
            proc = subprocess.run(
                [path, "--version"], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return _failed(f"{path} --version failed: {exc}", fix)
        if proc.returncode != 0:
            return _failed(f"{path} --version exited {proc.returncode}: {proc.stderr.strip()}", fix)
        return _passed(f"{proc.stdout.strip()} at {path}")

    # --- Daytona -------------------------------------------------------------------------------------

    def daytona(self) -> _Outcome:
        try:
            from claude_issue_solver.backends.daytona import DaytonaBackend  # type: ignore[import-not-found]
        except ModuleNotFoundError as exc:
            if exc.name == "claude_issue_solver.backends.daytona":
                return _failed(
                    "Daytona backend not installed: this version has no claude_issue_solver.backends.daytona",
                    f"set BACKEND=docker in {self.where}, or upgrade claude-issue-solver",
                )
            return _failed(f"the Daytona backend cannot load: {exc}", "`pip install 'daytona>=0.226,<0.300'`")
        try:
            from claude_issue_solver.app import daytona_settings

            DaytonaBackend(daytona_settings(self.config)).check()
        except BackendError as exc:
            return _failed(
                str(exc),
                f"check DAYTONA_API_KEY (a key from the Daytona dashboard -> Keys) and "
                f"DAYTONA_API_URL={self.config.daytona_api_url} in {self.where}",
            )
        target = f", target {self.config.daytona_target}" if self.config.daytona_target else ""
        return _passed(f"{self.config.daytona_api_url} accepts the key{target}")


# --- helpers --------------------------------------------------------------------------------------------


def _web_url(api_url: str) -> str:
    """Where people sign in: github.com for the public API, the server itself for Enterprise Server."""
    if urlsplit(api_url).hostname == "api.github.com":
        return "https://github.com"
    return api_url.removesuffix("/api/v3")


def _user_name() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return str(os.getuid())


def _pygithub_error(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    data = getattr(exc, "data", None)
    message = data.get("message") if isinstance(data, Mapping) else None
    return f"HTTP {status}" + (f" ({message})" if message else "")


def _pinned_version() -> str | None:
    from claude_issue_solver.backends.base import agent_dockerfile

    try:
        found = _PINNED_RE.search(agent_dockerfile().read_text())
    except OSError:
        return None
    return found.group(1) if found else None
