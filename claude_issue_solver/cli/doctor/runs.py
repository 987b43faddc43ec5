"""``doctor``'s checks of what a run brings along: each repository's tests (its settings file, the test
command's program in the agent image) and the operator's rules and MCP servers for the agent."""

from __future__ import annotations

import contextlib
import re
import shlex
from collections.abc import Callable

from claude_issue_solver.backends.base import BackendError
from claude_issue_solver.cli.doctor.base import VERSION_TIMEOUT, _failed, _Outcome, _passed


class RunChecks:
    """The run checks of :class:`claude_issue_solver.cli.doctor.core._Doctor` (a mixin: its state)."""

    # --- the repositories' tests ------------------------------------------------------------------------

    def tests(self, repo: str) -> _Outcome:
        """The repository's settings file parsed (keys known) and, on Docker, the test command's program
        found in the agent's image (``command -v``, as the agent's user, no network)."""
        from claude_issue_solver.github.client import GitHubError
        from claude_issue_solver.run.repo_settings import SETTINGS_PATH, RepoSettingsError, load_plan

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

    # --- the operator's rules and MCP servers (run.operator_rules) -------------------------------------

    def _operator_steps(self) -> list[tuple[str, Callable[[], _Outcome]]]:
        steps: list[tuple[str, Callable[[], _Outcome]]] = []
        if self.config.append_system_prompt_file is not None:
            steps.append(("agent rules", self.agent_rules))
        if self.config.mcp_config is not None:
            steps.append(("MCP servers", self.mcp_servers))
        return steps

    def agent_rules(self) -> _Outcome:
        from claude_issue_solver.run.operator_rules import OperatorRulesError, read_rules

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
        from claude_issue_solver.run.operator_rules import OperatorRulesError, load_mcp_config, reach_problems

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
