"""Wiring: build the daemon from a validated config, and run it in the foreground.

This is the only module that knows every part; the parts know only their neighbours' interfaces. The
backend is chosen here and imported only when chosen, so the Docker path never imports the Daytona SDK.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from claude_issue_solver.backends.base import Backend, BackendError
from claude_issue_solver.backends.settings import DaytonaSettings, DockerSettings
from claude_issue_solver.config import Config, ConfigError
from claude_issue_solver.daemon.housekeeping import Housekeeper
from claude_issue_solver.daemon.loop import Daemon
from claude_issue_solver.daemon.pidfile import AlreadyRunning, PidFile
from claude_issue_solver.daemon.supervise import Readiness
from claude_issue_solver.logs import setup_logging
from claude_issue_solver.store.queue import Task, TaskQueue
from claude_issue_solver.store.state import StateError, StateStore, UnusableStateDir

if TYPE_CHECKING:
    from claude_issue_solver.daemon.listener import Listener
    from claude_issue_solver.github.client import GitHubClient
    from claude_issue_solver.github.watcher import Watcher
    from claude_issue_solver.run.agent_access import AgentAccess
    from claude_issue_solver.run.prewarm import Prewarmer

log = logging.getLogger(__name__)

EXIT_FAILED = 1  # the same codes as the CLI's
EXIT_CONFIG = 2


class StartRefused(Exception):
    """The daemon will not start; ``code`` is its exit code (2: a setting must change first)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def docker_settings(config: Config) -> DockerSettings:
    """The Docker backend's settings: no secret at all (the agent's credential comes with each process)."""
    return DockerSettings(
        state_dir=config.state_dir,
        image=config.docker_image,
        base_image=config.docker_base_image,
        memory=config.docker_memory,
        cpus=config.docker_cpus,
        network=config.docker_network,
        pids_limit=config.docker_pids_limit,
    )


def daytona_settings(config: Config) -> DaytonaSettings:
    """The Daytona backend's settings: its own API key, and no other secret."""
    return DaytonaSettings(
        state_dir=config.state_dir,
        api_key=config.daytona_api_key,
        api_url=config.daytona_api_url,
        target=config.daytona_target,
        snapshot=config.daytona_snapshot,
        cpu=config.daytona_cpu,
        memory_gb=config.daytona_memory_gb,
        disk_gb=config.daytona_disk_gb,
        auto_delete_minutes=config.daytona_auto_delete_minutes,
        poll_interval=config.daytona_poll_interval,
        task_timeout=config.task_timeout,
        anthropic_base_url=config.anthropic_base_url,
        network_allow_list=config.daytona_network_allow_list,
    )


def make_backend(config: Config) -> Backend[Any]:
    """The configured backend, importing its module (and SDK) only now."""
    if config.backend == "docker":
        from claude_issue_solver.backends.docker import DockerBackend

        return DockerBackend(docker_settings(config))
    if config.backend == "daytona":
        return daytona_module().DaytonaBackend(daytona_settings(config))
    msg = f"BACKEND={config.backend!r} is not valid: expected docker or daytona"
    raise ConfigError(msg)


DAYTONA_EXTRA = "pip install 'claude-issue-solver[daytona]'"


def daytona_module() -> Any:
    """``backends.daytona``, imported now; ConfigError (one line naming the extra) without its SDK."""
    try:
        from claude_issue_solver.backends import daytona
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "daytona":
            raise
        msg = f"BACKEND=daytona needs the Daytona SDK, an optional extra: {DAYTONA_EXTRA}"
        raise ConfigError(msg) from None
    return daytona


@dataclass
class Parts:
    queue: TaskQueue
    daemon: Daemon
    backend: Backend[Any]
    watcher: Watcher
    listener: Listener | None = None
    access: AgentAccess | None = None  # what the agent's processes reach (the Claude relay)


def build(config: Config, *, backend: Backend[Any] | None = None) -> Parts:
    """Every part of a running daemon, wired together (tests pass their own backend)."""
    from claude_issue_solver.github.client import GitHubClient
    from claude_issue_solver.github.publisher import Publisher
    from claude_issue_solver.github.watcher import Watcher
    from claude_issue_solver.run.agent import AgentError
    from claude_issue_solver.run.pipeline import Pipeline

    store = StateStore(config.state_file)
    queue = TaskQueue.for_config(store, config)
    client = GitHubClient(config)
    backend = backend or make_backend(config)
    try:
        pipeline = Pipeline(config, queue, backend, client, Publisher(client))
    except AgentError as exc:
        raise ConfigError(str(exc)) from None
    daemon: Daemon

    def queued(task: Task) -> None:
        pipeline.announce(task)
        daemon.wake()  # a task a webhook brought in starts now, not at the next tick

    watcher = Watcher(config, client, queue, on_queued=queued, on_closed=pipeline.forget_sessions)
    daemon = Daemon(
        queue,
        pipeline,
        watcher=watcher.poll_due,
        poll_interval=config.poll_interval,
        poll_one=watcher.poll_now,
        next_poll_in=watcher.next_poll_in,
        held=client.holds_work,
    )
    parts = Parts(queue=queue, daemon=daemon, backend=backend, watcher=watcher, access=pipeline.access)
    # The Claude relay goes last (stopped first is fine: a running container's requests wait for the
    # next daemon in its forwarder).
    housekeeper = Housekeeper(store, config.state_dir, config.log_dir)
    prewarmer = _prewarmer(config, parts, client, pipeline.access)
    daemon.services = (housekeeper, prewarmer, pipeline.access)
    if config.listen_address is not None:
        parts.listener = _listener(config, parts, client, watcher)
        daemon.services = (parts.listener, housekeeper, prewarmer, pipeline.access)
    return parts


def _prewarmer(config: Config, parts: Parts, client: GitHubClient, access: AgentAccess) -> Prewarmer:
    """Pre-warming (PREWARM_INTERVAL): each watched repository's setup, cached ahead of its tasks."""
    from claude_issue_solver.run.prewarm import Prewarmer

    watcher = parts.watcher
    return Prewarmer(config, parts.queue, parts.backend, client, access, lambda: list(watcher.repos))


def _listener(config: Config, parts: Parts, client: GitHubClient, watcher: Watcher) -> Listener:
    """The HTTP listener and what it shows; binds its port now, so a port in use stops ``start``."""
    from claude_issue_solver.daemon.health import HealthCheck
    from claude_issue_solver.daemon.listener import Listener, ListenerError
    from claude_issue_solver.daemon.metrics import Metrics, StateCollector
    from claude_issue_solver.github.watcher import ALL_REPOS
    from claude_issue_solver.github.webhooks import WebhookReceiver

    store = parts.queue.store

    def repos() -> list[str]:
        return list(watcher.repos)

    metrics = Metrics(
        StateCollector(
            store, repos=repos, poll_interval=config.poll_interval, daily_budget=config.daily_budget_usd
        )
    )
    client.on_response = lambda outcome: metrics.github_requests.labels(outcome).inc()
    parts.daemon.on_finished = metrics.task_finished

    def poke(full_name: str) -> None:
        # The poller ignores a repository it does not watch: a delivery about one changes nothing.
        parts.daemon.poke(full_name)

    receiver = None
    if config.webhooks:
        assert config.webhook_secret  # daemon_problems() refuses to start without one
        receiver = WebhookReceiver(
            store,
            config.webhook_secret,
            max_bytes=config.webhook_max_bytes,
            on_repository=poke,
            on_installation=lambda: parts.daemon.poke(ALL_REPOS),
            on_result=lambda result: metrics.deliveries.labels(result).inc(),
            on_sources=watcher.schedule.delivery,
        )
    health = HealthCheck(
        store, repos=repos, poll_interval=config.poll_interval, backend_check=parts.backend.check
    )
    host, port = config.listen_address or ("127.0.0.1", 0)
    try:
        return Listener(
            host, port, metrics=metrics, health=health, webhooks=receiver, webhook_path=config.webhook_path
        )
    except ListenerError as exc:
        raise ConfigError(str(exc)) from None


def run_daemon(config: Config, *, to_stderr: bool = True, readiness: Readiness | None = None) -> int:
    """Run the daemon until a signal stops it: the body of ``start --foreground``. Returns its exit code.

    Before it reports ready (the pid in the pidfile, ``ready`` on ``readiness``) it checks every
    repository once: what only a change of settings can fix (a rejected credential, a repository that
    is missing or out of reach, no permission) raises :class:`StartRefused` with code 2, so neither
    ``start`` nor systemd reports or retries a daemon that cannot work; a transient failure (GitHub
    down, a timeout) only warns, and the daemon retries with back-off.
    """
    readiness = readiness or Readiness(None)
    setup_logging(config.log_dir, level=config.log_level, to_stderr=to_stderr, secrets=config.secrets())
    pidfile = PidFile(config.pid_file)
    try:
        pidfile.acquire()
    except AlreadyRunning as exc:
        _refuse(str(exc), EXIT_FAILED)
    parts: Parts | None = None
    try:
        try:
            parts = build(config)
            parts.backend.check()
            if parts.access is not None:
                parts.access.check()  # the relay's socket paths: a STATE_DIR too long is for the operator
            parts.queue.store.read()  # surfaces (and quarantines) a corrupt state file now, loudly
        except (ConfigError, UnusableStateDir) as exc:
            _refuse(f"cannot start: {exc}", EXIT_CONFIG)
        except (BackendError, StateError) as exc:
            _refuse(f"cannot start: {exc}", EXIT_FAILED)
        _check_repositories(parts.watcher, readiness)
        parts.daemon.install_signal_handlers()

        def ready() -> None:
            pidfile.write(os.getpid())
            readiness.ready()

        parts.daemon.on_ready = ready
        log.info(
            "starting: watching %s for label %r, backend %s, state in %s",
            ", ".join(parts.watcher.repos),
            config.trigger_label,
            config.backend,
            config.state_dir,
        )
        return parts.daemon.run()
    finally:
        if parts is not None:
            parts.watcher.close()  # the poll threads, after the daemon stopped calling them
        if parts is not None and parts.listener is not None:
            parts.listener.stop()  # stopped already after a run; this closes it after a refusal
        pidfile.release()


def _check_repositories(watcher: Watcher, readiness: Readiness) -> None:
    checks = watcher.check_all()
    refused = [c for c in checks if c.refused]
    if refused:
        _refuse("cannot start: " + "; ".join(f"{c.repo}: {c.error}" for c in refused), EXIT_CONFIG)
    for check in checks:
        if not check.ok:
            warning = f"{check.repo}: {check.error}; starting anyway, retrying with back-off"
            log.warning("%s", warning)
            readiness.note(warning)


def _refuse(message: str, code: int) -> NoReturn:
    log.error("%s", message)
    raise StartRefused(message, code)
