"""``doctor``'s agent checks: Claude's credential, and Docker (its image, host git) or Daytona."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from claude_issue_solver.backends.base import BackendError
from claude_issue_solver.cli.doctor.base import (
    _OAUTH_TOKEN_RE,
    _VERSION_RE,
    ANTHROPIC_API_URL,
    ANTHROPIC_TIMEOUT,
    ANTHROPIC_VERSION,
    CONSOLE_KEYS_URL,
    VERSION_TIMEOUT,
    _api_error_message,
    _failed,
    _network_reason,
    _Outcome,
    _passed,
    _pinned_version,
)

if TYPE_CHECKING:
    from claude_issue_solver.backends.docker import DockerBackend


class _ProgressLog:
    """A build's step lines, as they come, to ``doctor --build``'s caller (a TaskLog's ``write``)."""

    def __init__(self, progress: Callable[[str], None] | None) -> None:
        self.progress = progress
        self.started = time.monotonic()

    def write(self, line: str) -> None:
        if self.progress is not None:
            self.progress(f"[{time.monotonic() - self.started:4.0f}s] {line}")


class AgentChecks:
    """The agent checks of :class:`claude_issue_solver.cli.doctor.core._Doctor` (a mixin: its state)."""

    # --- the agent -----------------------------------------------------------------------------------

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
                init=True,  # as the agent's containers run: a Docker with no init binary fails here
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
        from claude_issue_solver.backends.git import can_replay

        too_old = can_replay()
        if too_old is not None:
            return _failed(
                too_old,
                "upgrade git (Ubuntu: `sudo add-apt-repository ppa:git-core/ppa && sudo apt-get install "
                "git`), or run the daemon's container image (INSTALL.md)",
            )
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
