"""``doctor``'s GitHub checks: the credential, each repository's access and the trigger label."""

from __future__ import annotations

import shlex
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from claude_issue_solver.cli.doctor.base import (
    _ROLES,
    APP_PERMISSIONS,
    LABEL_COLOR,
    LABEL_DESCRIPTION,
    TOKEN_GRANTS,
    _failed,
    _Outcome,
    _passed,
    _pygithub_error,
)

if TYPE_CHECKING:
    from github import GithubIntegration

    from claude_issue_solver.github.client import GitHubClient


class GitHubChecks:
    """The GitHub checks of :class:`claude_issue_solver.cli.doctor.core._Doctor` (a mixin: its state)."""

    # --- GitHub ------------------------------------------------------------------------------------

    def github(self) -> GitHubClient:
        if self._client is None:
            from claude_issue_solver.github.client import GitHubClient

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
        from claude_issue_solver.github.client import GitHubError

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
        from claude_issue_solver.github.client import GitHubError

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
        from claude_issue_solver.github.client import GitHubError

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
        from claude_issue_solver.github.client import GitHubError, RateLimited, Transient

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
