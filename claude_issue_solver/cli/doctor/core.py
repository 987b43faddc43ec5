"""``doctor``: check what ``start`` depends on, one thing at a time, and say how to fix what fails.

Every check runs on its own: one that fails (or crashes) never stops the others, and its exception
becomes a readable line, not a traceback. Nothing is written to GitHub: access is judged from what
GitHub reports (the repository's ``permissions``, a classic token's scopes, an App installation's
permissions) and from read-only requests. Every line passes through the secret redactor before it
leaves this module, so no credential is ever shown.
"""

from __future__ import annotations

import os
import shlex
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from claude_issue_solver.cli.doctor.agent import AgentChecks
from claude_issue_solver.cli.doctor.base import (
    FAIL_MARK,
    PASS_MARK,
    Check,
    _failed,
    _Outcome,
    _passed,
    _user_name,
    _web_url,
)
from claude_issue_solver.cli.doctor.github import GitHubChecks
from claude_issue_solver.cli.doctor.runs import RunChecks
from claude_issue_solver.config import Config, ConfigError, check_config, settings_source
from claude_issue_solver.logs import REDACTOR, Redactor

if TYPE_CHECKING:
    from github import GithubIntegration

    from claude_issue_solver.backends.docker import DockerBackend
    from claude_issue_solver.github.client import GitHubClient


__all__ = ["Check", "diagnose", "render", "run_checks", "to_json"]


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


class _Doctor(GitHubChecks, RunChecks, AgentChecks):
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
        from claude_issue_solver.github.client import GitHubError

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
