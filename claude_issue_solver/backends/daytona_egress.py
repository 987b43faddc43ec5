"""The Daytona backend's egress: a sandbox's outbound network, narrowed to the Claude API for an offline
process and opened again before anything that needs the network (a part of
:class:`claude_issue_solver.backends.daytona.DaytonaBackend`)."""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

from daytona import (
    Sandbox,
)

from claude_issue_solver.backends.base import (
    BackendError,
    Workspace,
    WorkspaceSpec,
)
from claude_issue_solver.backends.daytona_common import (
    DEFAULT_API_HOST,
    _sdk,
)
from claude_issue_solver.logs import TaskLog

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Egress:
    """A sandbox's outbound network, as ``Sandbox.update_network_settings`` takes it (None: not sent)."""

    shown: str  # for the task log
    block_all: bool | None = None  # False: open to everything (and clears the allow lists)
    allow_list: str | None = None  # IPv4 CIDRs, comma-separated
    domains: str | None = None  # domain names, comma-separated

    def apply(self, sandbox: Sandbox) -> None:
        sandbox.update_network_settings(
            network_block_all=self.block_all,
            network_allow_list=self.allow_list,
            domain_allow_list=self.domains,
        )


class DaytonaEgress:
    """The egress part of the Daytona backend (a mixin: it uses the backend's settings, lock and egress
    cache)."""

    def _open(self) -> _Egress:
        """What a sandbox reaches when nothing offline runs: everything, or DAYTONA_NETWORK_ALLOW_LIST."""
        cidrs = self.settings.network_allow_list
        if cidrs:
            return _Egress(f"limited to DAYTONA_NETWORK_ALLOW_LIST ({cidrs})", allow_list=cidrs)
        return _Egress("open", block_all=False)

    def _narrowed(self) -> _Egress:
        """What an offline process's sandbox reaches: the Claude API's host alone."""
        url = self.settings.anthropic_base_url
        host = (urlsplit(url).hostname if url else None) or DEFAULT_API_HOST
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return _Egress(f"only {host}", domains=host)
        if address.version != 4:
            msg = (
                f"ANTHROPIC_BASE_URL's host {host} is an IPv6 address: Daytona's network allow lists take "
                "IPv4 networks and domain names, so an offline process's sandbox cannot be limited to it"
            )
            raise BackendError(msg)
        return _Egress(f"only {host}", allow_list=f"{address}/32")

    def _set_egress(
        self,
        workspace: Workspace | WorkspaceSpec,
        sandbox: Sandbox,
        *,
        offline: bool,
        log: TaskLog,
        why: str,
    ) -> None:
        """Narrow the sandbox's egress to the Claude API (offline) or open it, unless this daemon did
        so last. Idempotent: Daytona answers a repeat with the same setting."""
        wanted = self._narrowed() if offline else self._open()
        task_id = workspace.task_id
        with self._lock:
            if self._egress.get(task_id) == wanted:
                return
            self._egress.pop(task_id, None)  # unknown until Daytona confirms the change
        _sdk(f"setting the egress of {sandbox.name} ({wanted.shown})", lambda: wanted.apply(sandbox))
        with self._lock:
            self._egress[task_id] = wanted
        log.write(f"sandbox {sandbox.name}: egress {wanted.shown}, {why}")
