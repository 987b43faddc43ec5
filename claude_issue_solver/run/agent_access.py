"""What each process of a task may reach: the Claude credential (or only a relay to it) and the network.

Policy once, for every backend and every process the pipeline starts (issue #18):

- **The agent's processes** (the first run and each test-fix round) reach Claude. Where the backend
  ``relays`` (Docker), they get the task's relay (:mod:`claude_issue_solver.relay`): a socket on this
  host and a per-task token that works only while the task is open; the real credential (an API key or
  an OAuth token) never enters the container, its environment or its config. Elsewhere (Daytona: a cloud
  sandbox cannot reach a socket on this host) they get the credential itself.
- **The network** (``AGENT_EGRESS``): with ``relay-only`` (the default) the agent, test and fix
  processes are ``offline``: nothing but the relay. ``setup`` keeps ``DOCKER_NETWORK``: it installs
  dependencies. With ``open`` every process has the backend's network (the credential still stays out).
- Nothing else: no GitHub token reaches any process, ever.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from claude_issue_solver.backends.base import Backend, BackendError, KeptDir, ProcessSpec
from claude_issue_solver.config import Config, ConfigError

if TYPE_CHECKING:
    from claude_issue_solver.relay import Relay, TaskUsage

__all__ = ["EGRESS_OPEN", "EGRESS_RELAY_ONLY", "QUIET_AGENT_ENV", "AgentAccess", "agent_env"]

log = logging.getLogger(__name__)

EGRESS_RELAY_ONLY = "relay-only"
EGRESS_OPEN = "open"
QUIET_AGENT_ENV = {
    "DISABLE_AUTOUPDATER": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_TELEMETRY": "1",
    "CLAUDE_CODE_MAX_RETRIES": "2",  # a 429 ends the run in seconds, and the queue holds instead
}


def agent_env(config: Config) -> dict[str, str]:
    """The agent's environment where there is no relay: the Claude credential and CLI settings, no other
    secret."""
    env = _settings_env(config)
    if config.anthropic_api_key:
        env["ANTHROPIC_API_KEY"] = config.anthropic_api_key
    if config.claude_code_oauth_token:
        env["CLAUDE_CODE_OAUTH_TOKEN"] = config.claude_code_oauth_token
    if config.anthropic_base_url:
        env["ANTHROPIC_BASE_URL"] = config.anthropic_base_url
    return env


def _settings_env(config: Config) -> dict[str, str]:
    env = dict(QUIET_AGENT_ENV)
    env.update(dict(config.agent_env))
    return env


def make_relay(config: Config, backend: Backend[Any]) -> Relay | None:
    """The daemon's Claude relay, when the backend can use one and there is a credential to guard."""
    if not getattr(backend, "relays", False):
        return None
    if not (config.anthropic_api_key or config.claude_code_oauth_token):
        return None  # nothing to keep out (the demo's stand-in agent calls no API)
    from claude_issue_solver.relay import ClaudeCredential, Relay

    credential = ClaudeCredential(
        api_key=config.anthropic_api_key, oauth_token=config.claude_code_oauth_token
    )
    return Relay(
        config.state_dir.expanduser().resolve() / "relay",
        config.anthropic_base_url or ANTHROPIC_API_URL,
        credential,
        # The uid:gid the backend's processes run as must be able to connect to the socket.
        socket_owner=backend.process_owner(),
    )


ANTHROPIC_API_URL = "https://api.anthropic.com"


class AgentAccess:
    """Builds every ProcessSpec the pipeline starts, with what that kind of process may reach."""

    def __init__(self, config: Config, backend: Backend[Any], relay: Relay | None) -> None:
        self.config = config
        self.backend = backend
        self.relay = relay
        self.offline = config.agent_egress == EGRESS_RELAY_ONLY
        self._direct_env = agent_env(config)  # where there is no relay
        self._taken: dict[str, dict[str, Any]] = {}  # per task: the relay's figures already booked

    def agent(
        self, task_id: str, *, name: str, argv: Sequence[str], stdin: bytes, keep: KeptDir | None
    ) -> ProcessSpec:
        """A Claude Code process of the task (the first run, a fix round): Claude, and nothing else."""
        env, relay_dir = self._claude(task_id)
        return ProcessSpec(
            name=name,
            argv=tuple(argv),
            env=env,
            stdin=stdin,
            keep=keep,
            offline=self.offline,
            relay=relay_dir,
        )

    def command(self, name: str, command: str, *, setup: bool = False) -> ProcessSpec:
        """The repository's own command (setup, a test run): no credential; setup keeps the network."""
        return ProcessSpec(name=name, argv=("sh", "-c", command), env={}, offline=self.offline and not setup)

    def _claude(self, task_id: str) -> tuple[Mapping[str, str], Path | None]:
        if self.relay is None:
            return self._direct_env, None
        from claude_issue_solver.relay import RelayError

        try:
            self.relay.start()  # once, at the first task: idempotent
            if task_id not in self.relay.open_tasks():
                self._taken.pop(task_id, None)  # opened anew: its meter starts from zero
            grant = self.relay.open(task_id)
        except RelayError as exc:
            msg = f"the Claude relay cannot serve task {task_id}: {exc}"
            raise BackendError(msg, retryable=True) from None
        env = _settings_env(self.config)
        env.update(grant.env)  # the task's token in place of the credential; the backend adds the URL
        return env, grant.directory

    def close(self, task_id: str) -> None:
        """The task ended: its token dies. Never raises (it runs on every ending)."""
        if self.relay is None:
            return
        self._taken.pop(task_id, None)
        try:
            self.relay.close(task_id)
        except Exception as exc:  # cleanup runs on every path out of a task
            log.warning("could not close the relay of task %s: %s", task_id, exc)

    def check(self) -> None:
        """What a restart cannot fix, said at ``start``: the relay's sockets must fit a Unix socket path."""
        if self.relay is None:
            return
        from claude_issue_solver.relay import SOCKET_NAME, UNIX_PATH_MAX

        path = self.relay.task_directory("probe") / SOCKET_NAME
        if len(os.fsencode(path)) > UNIX_PATH_MAX:
            msg = (
                f"STATE_DIR {self.config.state_dir} is too long for the Claude relay's sockets "
                f"({path} is over {UNIX_PATH_MAX} bytes): choose a shorter STATE_DIR"
            )
            raise ConfigError(msg)

    def reconcile(self, live: set[str]) -> None:
        """Remove the relay directories an earlier daemon left for tasks that no longer run."""
        if self.relay is None or not self.relay.directory.is_dir():
            return
        for path in self.relay.sweep(live):
            log.info("removed the relay directory %s, which no running task uses", path.name)

    def usage(self, task_id: str) -> TaskUsage | None:
        """What the relay metered for the task so far (None without a relay)."""
        return None if self.relay is None else self.relay.usage(task_id)

    def take_metered(self, task_id: str) -> dict[str, Any] | None:
        """What the relay metered for the task since the last call: the calls, tokens and cost of the run
        that just ended (its fix rounds included). The relay's meter starts from zero whenever it opens
        the task anew (a retry, a restarted daemon); what was taken from the current meter is remembered
        here, as long as the meter itself lives."""
        usage = self.usage(task_id)
        if usage is None:
            return None
        current = _figures(usage)
        taken = self._taken.get(task_id) or dict.fromkeys(current, 0)
        self._taken[task_id] = current
        added = {key: current[key] - taken.get(key, 0) for key in current}
        return added if added["requests"] or added["refused"] else None

    # A daemon service (started first, stopped last): the relay starts with the first task that needs it.
    def start(self) -> None:
        pass

    def reset_seen(self, task_id: str) -> float | None:
        """When the limit the API refused this task's request with lifts, as its headers said; None when
        the relay saw no such refusal for it (or there is no relay)."""
        seen = None if self.relay is None else self.relay.last_limit()
        if seen is None or seen.task_id != task_id or seen.transient:
            return None
        return seen.reset_at

    def stop(self) -> None:
        if self.relay is not None:
            self.relay.stop()


_METERED = (
    "requests",
    "refused",
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "cost_usd",
)


def _figures(usage: TaskUsage) -> dict[str, Any]:
    return {key: getattr(usage, key) for key in _METERED}


def add_metered(total: dict[str, Any] | None, added: dict[str, Any]) -> dict[str, Any]:
    """A task's metered figures over all its runs (``task.meta["metered"]``), with one run's added."""
    merged = {key: (total or {}).get(key, 0) + added.get(key, 0) for key in _METERED}
    merged["cost_usd"] = round(merged["cost_usd"], 6)
    return merged
