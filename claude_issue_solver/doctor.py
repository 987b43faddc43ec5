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
from claude_issue_solver.config import Config, ConfigError, check_config, settings_source
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
ANTHROPIC_API_URL = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"
ANTHROPIC_TIMEOUT = 15  # seconds for GET /v1/models, which answers in well under one
CONSOLE_KEYS_URL = "https://console.anthropic.com/settings/keys"
# `claude setup-token` prints sk-ant-oat01- and a long base64url tail.
_OAUTH_TOKEN_RE = re.compile(r"^sk-ant-oat\d+-[A-Za-z0-9_-]{40,}$")
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
    env_file: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    build: bool = False,
    progress: Callable[[str], None] | None = None,
) -> list[Check]:
    """Load the configuration as ``start`` would and run every check.

    A configuration that does not parse is reported in full, one failed ``configuration`` check per
    problem (with what ``start`` would also miss), and nothing else runs: every other check would
    judge a setting the person did not mean.
    """
    env = os.environ if environ is None else environ
    try:
        config, problems = check_config(env_file, env)
    except ConfigError as exc:
        fix = "point --env-file or $CLAUDE_ISSUE_SOLVER_ENV at a readable .env file, or unset it"
        return [Check("configuration", False, problem, fix) for problem in exc.problems]
    if problems:
        bad = {problem.key for problem in problems}
        problems += [p for p in config.daemon_problems() if p.key not in bad]
        where = config.settings_file or "the environment or a .env file (--env-file PATH)"
        fix = f"correct it in {where}; every key is explained in .env.example"
        redact = Redactor(config.secrets())
        return [Check("configuration", False, REDACTOR(redact(str(p))), fix) for p in problems]
    return run_checks(config, env_file=config.settings_file, build=build, progress=progress)


def run_checks(
    config: Config,
    *,
    env_file: Path | None = None,
    build: bool = False,
    progress: Callable[[str], None] | None = None,
) -> list[Check]:
    """Every check for this configuration, in report order.

    ``env_file`` is where the settings came from (named in the fixes; default: ``config.settings_file``).
    ``build`` builds a missing agent image instead of only reporting what would be built (that can take
    minutes: ``progress`` gets a line per build step as it starts).
    """
    doctor = _Doctor(config, env_file or config.settings_file, build)
    doctor.progress = progress
    return doctor.run()


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


class _ProgressLog:
    """A build's step lines, as they come, to ``doctor --build``'s caller (a TaskLog's ``write``)."""

    def __init__(self, progress: Callable[[str], None] | None) -> None:
        self.progress = progress
        self.started = time.monotonic()

    def write(self, line: str) -> None:
        if self.progress is not None:
            self.progress(f"[{time.monotonic() - self.started:4.0f}s] {line}")


class _Doctor:
    """The checks of one run, sharing what they learn (the GitHub client, the login, the Docker client)."""

    progress: Callable[[str], None] | None = None  # doctor --build: a line per build step

    def __init__(self, config: Config, env_file: Path | None, build: bool) -> None:
        self.config = config
        self.build = build
        self.env_file = env_file
        self.where = (
            str(env_file)
            if env_file
            else "a .env file (none was read: pass --env-file PATH) or the environment"
        )
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
        self._app_repos: list[str] = []

    def run(self) -> list[Check]:
        label = self.config.trigger_label
        steps: list[tuple[str, Callable[[], _Outcome]]] = [
            ("state directory", self.state_directory),
            ("GitHub credential", self.github_credential),
        ]
        repos = self.config.github_repos
        checks = [*self.configuration(), *(self._run_one(name, step) for name, step in steps)]
        if self.config.app_wide and self._credential_ok:
            # App-wide: the repositories are whatever the App's installations list (as the daemon does).
            listed = self._run_one("GitHub App installations", self.app_installations)
            checks.append(listed)
            repos = tuple(self._app_repos)
        steps = []
        for repo in repos:
            steps.append((f"repository {repo}", partial(self.repository, repo)))
            steps.append((f"label {label!r} on {repo}", partial(self.label, repo)))
            steps.append((f"tests of {repo}", partial(self.tests, repo)))
        steps.append(("Claude credential", self.claude_credential))
        steps += self._operator_steps()
        if self.config.backend == "docker":
            steps += [("Docker", self.docker), ("agent image", self.agent_image), ("git", self.git)]
        elif self.config.backend == "daytona":
            steps.append(("Daytona", self.daytona))
        return [*checks, *(self._run_one(name, step) for name, step in steps)]

    def app_installations(self) -> _Outcome:
        from claude_issue_solver.github import GitHubError

        try:
            self._app_repos = self.github().app_repositories()
        except GitHubError as exc:
            return self._github_failure(exc)
        if not self._app_repos:
            return _failed(
                "the GitHub App is installed on no repository (GITHUB_REPOS empty or *: all it is on)",
                "install the App on the repositories to watch, or list them in GITHUB_REPOS",
            )
        return _passed(f"installed on {len(self._app_repos)}: {', '.join(self._app_repos)}")

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

    def configuration(self) -> list[Check]:
        """One failed check per setting ``start`` would refuse, all at once; else one passed check."""
        problems = self.config.daemon_problems()
        if problems:
            fix = f"set it in {self.where}; every key is explained in .env.example"
            return [Check("configuration", False, self._clean(str(p)), self._clean(fix)) for p in problems]
        repos = self.config.github_repos
        count = f"{len(repos)} repositor{'y' if len(repos) == 1 else 'ies'}"
        if self.config.app_wide:
            count = "every repository the GitHub App is installed on"
        source = (
            f"settings from {self.env_file} and the environment"
            if self.env_file
            else f"settings file: {settings_source(self.config)}"
        )
        detail = f"{source}; {count}, label {self.config.trigger_label!r}, BACKEND={self.config.backend}"
        return [Check("configuration", True, self._clean(detail))]

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

    # --- the repositories' tests ------------------------------------------------------------------------

    def tests(self, repo: str) -> _Outcome:
        """The repository's settings file parsed (keys known) and, on Docker, the test command's program
        found in the agent's image (``command -v``, as the agent's user, no network)."""
        from claude_issue_solver.github import GitHubError
        from claude_issue_solver.repo_settings import SETTINGS_PATH, RepoSettingsError, load_plan

        if not self._credential_ok:
            return _failed("not checked: no working GitHub credential", "fix the GitHub credential first")
        try:
            branch = self.github().repo_info(repo)["default_branch"]
            plan = load_plan(self.github(), repo, branch, self.config)
        except RepoSettingsError as exc:
            return _failed(str(exc), f"correct {SETTINGS_PATH} on {repo}'s default branch")
        except GitHubError as exc:
            return self._github_failure(exc)
        if plan.test is None:
            return _passed(
                f"no test command ({plan.source}): pull requests will say they are not verified; add `test:` "
                f"to {SETTINGS_PATH} or set TEST_COMMAND to have them verified"
            )
        detail = f"`{plan.test}` ({plan.source})" + (f", setup `{plan.setup}`" if plan.setup else "")
        program = _program(plan.test)
        if self.config.backend != "docker" or program is None:
            return _passed(detail)
        image = self.config.docker_image
        try:
            backend = self.backend()
            backend.check()
            if image is None:
                image = backend.agent_image_tag(self.config.docker_base_image)
                if image is not None and not backend.image_present(image):
                    image = None
        except BackendError:
            return _passed(f"{detail}; its program not looked for: Docker does not answer")
        if image is None:
            return _passed(
                f"{detail}; `{program}` not looked for: the agent image is not built yet (doctor --build)"
            )
        found = self._command_v(image, program)
        if found is None:
            return _passed(f"{detail}; `{program}` not looked for: {image} could not run it")
        if found:
            return _passed(f"{detail}; `{program}` found in {image} ({found})")
        fix = (
            f"install `{program}` in the agent image (DOCKER_BASE_IMAGE, or a Dockerfile at {repo}'s root), "
            f"or make `test:` in {SETTINGS_PATH} use a program the image has"
        )
        if plan.setup:
            return _passed(
                f"{detail}; `{program}` is not in {image}: setup must install it, or every run is red"
            )
        return _failed(
            f"{detail}; `{program}` is not in {image}: every test run would fail with exit 127, so no pull "
            "request of this repository could be verified",
            fix,
        )

    def _command_v(self, image: str, program: str) -> str | None:
        """Where ``program`` is in ``image`` (``command -v`` as the agent's user, no network); "" when it
        is not there; None when the image could not run it."""
        import docker.errors
        import requests

        from claude_issue_solver.backends.docker import agent_ids

        uid, gid = agent_ids()
        try:
            container = self.backend().client.containers.create(
                image,
                ["sh", "-c", 'command -v "$1" || exit 3', "sh", program],
                user=f"{uid}:{gid}",
                network_mode="none",
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
            )
        except docker.errors.DockerException:
            return None
        try:
            container.start()
            code = container.wait(timeout=VERSION_TIMEOUT).get("StatusCode")
            output = container.logs(stdout=True, stderr=False).decode("utf-8", "replace").strip()
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            return None
        finally:
            with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
                container.remove(force=True)
        if code == 0 and output:
            return output.splitlines()[-1]
        return "" if code in (1, 3, 127) else None

    def claude_credential(self) -> _Outcome:
        api_key = self.config.anthropic_api_key
        oauth_token = self.config.claude_code_oauth_token
        if not api_key and not oauth_token:
            return _failed(
                "neither ANTHROPIC_API_KEY nor CLAUDE_CODE_OAUTH_TOKEN is set",
                f"set ANTHROPIC_API_KEY (an API key from console.anthropic.com) or CLAUDE_CODE_OAUTH_TOKEN "
                f"(from `claude setup-token`, for a Claude subscription) in {self.where}",
            )
        if not api_key:
            assert oauth_token
            return self._oauth_token(oauth_token)
        outcome = self._api_key(api_key)
        if oauth_token and outcome.ok:
            # Claude Code prefers an API key from the environment over an OAuth token.
            unused = "; CLAUDE_CODE_OAUTH_TOKEN is set too but unused (Claude Code prefers the API key)"
            return outcome._replace(detail=outcome.detail + unused)
        return outcome

    def _api_key(self, key: str) -> _Outcome:
        """``GET /v1/models`` with the key: it proves the key and the route without spending tokens."""
        base = self.config.anthropic_base_url or ANTHROPIC_API_URL
        custom = self.config.anthropic_base_url is not None
        answer = self._get_models(base, {"x-api-key": key})
        if isinstance(answer, _Outcome):
            return answer
        status, message = answer
        gateway = f" (or the key the gateway at {base} expects)" if custom else ""
        if status == 200:
            return _passed(
                f"ANTHROPIC_API_KEY accepted by {base} (checked by listing models: no tokens spent)"
            )
        if status == 401:
            return _failed(
                f"ANTHROPIC_API_KEY was rejected by {base} (HTTP 401{message})",
                "it is wrong, revoked or was pasted incompletely: create a key at "
                f"{CONSOLE_KEYS_URL}{gateway} and set ANTHROPIC_API_KEY in {self.where}",
            )
        if status == 403:
            return _failed(
                f"ANTHROPIC_API_KEY is not allowed to use {base} (HTTP 403{message})",
                "the key's organization or workspace may not use the API (disabled, or not from here): "
                f"check it at {CONSOLE_KEYS_URL}, or use another key{gateway} in ANTHROPIC_API_KEY in "
                f"{self.where}",
            )
        if status == 429:
            return _passed(
                f"ANTHROPIC_API_KEY accepted by {base}, which is rate-limiting it right now "
                f"(HTTP 429{message})"
            )
        if status == 404 and custom:
            return _passed(
                f"ANTHROPIC_API_KEY set, but not verified: {base} has no GET /v1/models (HTTP 404), as some "
                "gateways do not; the first task will show whether the key works there"
            )
        if status >= 500:
            return _failed(
                f"{base} answered HTTP {status}{message}: the API is having trouble, the key was not checked",
                "run doctor again in a few minutes (https://status.anthropic.com shows outages)",
            )
        return _failed(
            f"{base} answered GET /v1/models with HTTP {status}{message}",
            f"check ANTHROPIC_BASE_URL in {self.where}: it must be the API's base URL, without /v1",
        )

    def _oauth_token(self, token: str) -> _Outcome:
        """An OAuth token cannot be checked without a model call (which spends the subscription's usage):
        check its shape, and that the API is reachable, and say what was not checked."""
        fix = (
            f"run `claude setup-token` again and paste the whole token (one line, no quotes) as "
            f"CLAUDE_CODE_OAUTH_TOKEN in {self.where}"
        )
        if token.startswith("sk-ant-api"):
            return _failed(
                "CLAUDE_CODE_OAUTH_TOKEN holds an API key (sk-ant-api…), not an OAuth token",
                f"move it to ANTHROPIC_API_KEY in {self.where}, or {fix}",
            )
        if not _OAUTH_TOKEN_RE.match(token):
            if not token.startswith("sk-ant-oat"):
                shape = "it does not start with sk-ant-oat"
            elif re.search(r"[\s\"']", token):
                shape = "it contains spaces or quotes"
            else:
                shape = "it looks cut short"
            return _failed(f"CLAUDE_CODE_OAUTH_TOKEN is not a `claude setup-token` token: {shape}", fix)
        base = self.config.anthropic_base_url or ANTHROPIC_API_URL
        # No credential is sent: any HTTP answer (a 401 here) proves the route works.
        answer = self._get_models(base, {})
        if isinstance(answer, _Outcome):
            return answer
        return _passed(
            f"CLAUDE_CODE_OAUTH_TOKEN has the shape of a `claude setup-token` token and {base} is reachable; "
            "the token itself was not checked (that would need a model call, which spends usage): "
            "the first task will show whether it is still valid"
        )

    def _get_models(self, base: str, credential: dict[str, str]) -> tuple[int, str] | _Outcome:
        """``GET {base}/v1/models``: the status and the API's error message, or a failed outcome when
        ``base`` cannot be reached."""
        import requests

        url = f"{base}/v1/models"
        fix = (
            f"check that {base} is reachable from this host (network, proxy: HTTPS_PROXY, DNS, firewall)"
            + (f", and ANTHROPIC_BASE_URL in {self.where}" if self.config.anthropic_base_url else "")
        )
        try:
            response = requests.get(
                url,
                headers={**credential, "anthropic-version": ANTHROPIC_VERSION},
                params={"limit": 1},
                timeout=ANTHROPIC_TIMEOUT,
                # A redirect to another host would carry the key there: never follow one.
                allow_redirects=False,
            )
        except requests.exceptions.Timeout:
            return _failed(f"{base} did not answer within {ANTHROPIC_TIMEOUT}s", fix)
        except requests.exceptions.RequestException as exc:
            return _failed(f"cannot reach {base}: {_network_reason(exc)}", fix)
        if response.is_redirect:
            where = response.headers.get("location", "elsewhere")
            return _failed(
                f"{url} redirects to {where} (HTTP {response.status_code})",
                f"set ANTHROPIC_BASE_URL in {self.where} to the address it redirects to",
            )
        return response.status_code, _api_error_message(response)

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
        return self.backend().build_agent_image(self.config.docker_base_image, _ProgressLog(self.progress))

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
        from claude_issue_solver.gitops import can_replay

        too_old = can_replay()
        if too_old is not None:
            return _failed(
                too_old,
                "upgrade git (Ubuntu: `sudo add-apt-repository ppa:git-core/ppa && sudo apt-get install "
                "git`), or run the daemon's container image (INSTALL.md)",
            )
        return _passed(f"{proc.stdout.strip()} at {path}")

    # --- the operator's rules and MCP servers (operator_rules) -----------------------------------------

    def _operator_steps(self) -> list[tuple[str, Callable[[], _Outcome]]]:
        steps: list[tuple[str, Callable[[], _Outcome]]] = []
        if self.config.append_system_prompt_file is not None:
            steps.append(("agent rules", self.agent_rules))
        if self.config.mcp_config is not None:
            steps.append(("MCP servers", self.mcp_servers))
        return steps

    def agent_rules(self) -> _Outcome:
        from claude_issue_solver.operator_rules import OperatorRulesError, read_rules

        path = self.config.append_system_prompt_file
        assert path is not None
        try:
            text = read_rules(path)
        except OperatorRulesError as exc:
            return _failed(str(exc), f"fix the file, or unset APPEND_SYSTEM_PROMPT_FILE in {self.where}")
        lines = len(text.splitlines())
        return _passed(
            f"{path}: {lines} line(s), {len(text.encode())} bytes, appended to every run's system prompt"
        )

    def mcp_servers(self) -> _Outcome:
        from claude_issue_solver.operator_rules import OperatorRulesError, load_mcp_config, reach_problems

        path = self.config.mcp_config
        assert path is not None
        try:
            _, servers, _ = load_mcp_config(path)
        except OperatorRulesError as exc:
            return _failed(
                str(exc),
                'fix the file (the format of `claude --mcp-config`: {"mcpServers": {"name": {"command": '
                f'"...", "args": [...]}}}}), or unset MCP_CONFIG in {self.where}',
            )
        cannot, may_not = reach_problems(servers, self.config.agent_egress)
        if cannot:
            return _failed(
                "; ".join(cannot),
                "run the server as a stdio server installed in the agent's image (DOCKER_IMAGE or "
                f"Dockerfile.claude), or set AGENT_EGRESS=open in {self.where} (the agent gets the network)",
            )
        names = ", ".join(s.describe() for s in servers)
        note = ("; " + "; ".join(may_not)) if may_not else ""
        return _passed(f"{len(servers)} server(s), the only ones the agent gets: {names}{note}")

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
            if (exc.name or "").split(".")[0] == "daytona":
                from claude_issue_solver.app import DAYTONA_EXTRA

                return _failed("the Daytona SDK is not installed (an optional extra)", f"`{DAYTONA_EXTRA}`")
            return _failed(f"the Daytona backend cannot load: {exc}", "reinstall claude-issue-solver")
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


def _program(command: str) -> str | None:
    """The program a shell command runs first (after ``VAR=value`` assignments); None for a path in the
    repository (``./check.sh``) or a shell construct it cannot tell."""
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    for word in words:
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", word):
            continue
        if "/" in word or not re.fullmatch(r"[\w.+-]+", word):
            return None
        return word
    return None


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


def _network_reason(exc: BaseException) -> str:
    """The root cause of a requests/urllib3 connection error, in a few words instead of its repr chain."""
    import socket

    import requests

    seen: set[int] = set()
    current: BaseException | None = exc
    deepest = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        deepest = current
        reason = getattr(current, "reason", None)
        args_cause = current.args[0] if current.args and isinstance(current.args[0], BaseException) else None
        current = current.__cause__ or (reason if isinstance(reason, BaseException) else None) or args_cause
    if isinstance(deepest, socket.gaierror):
        return "the host name does not resolve"
    if isinstance(exc, requests.exceptions.SSLError):
        return f"TLS failed ({deepest})"
    if isinstance(deepest, OSError) and deepest.strerror:
        return deepest.strerror
    return str(deepest) or type(deepest).__name__


def _api_error_message(response: Any) -> str:
    """`` (<type>: <message>)`` from the API's error body, or "" when it has none."""
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        return ""
    if not isinstance(error, Mapping):
        return ""
    parts = [str(error[k]) for k in ("type", "message") if error.get(k)]
    text = ": ".join(parts)
    if len(text) > 200:  # a gateway's message can be a page long
        text = text[:199] + "…"
    return f" ({text})" if text else ""


def _pinned_version() -> str | None:
    from claude_issue_solver.backends.base import agent_dockerfile

    try:
        found = _PINNED_RE.search(agent_dockerfile().read_text())
    except OSError:
        return None
    return found.group(1) if found else None
