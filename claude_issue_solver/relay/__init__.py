"""The Claude credential relay: a Messages-API proxy that keeps the real credential in the daemon.

(:mod:`.base`: what a task's relay is made of; :mod:`.proxy`: the proxy; :mod:`.metering`: what it reads
from the answers; :mod:`.pricing`: what they cost.)

A task's containers never hold the operator's ``ANTHROPIC_API_KEY`` / ``CLAUDE_CODE_OAUTH_TOKEN``. They get
a per-task token instead and reach the API through a Unix socket the daemon listens on; the relay checks
the token, swaps it for the real credential, streams the answer back unbuffered, and meters what the
task spent (tokens and dollars, from the answers' ``usage``) and the limits the API announced.

    relay = Relay(state_dir / "relay", "https://api.anthropic.com", ClaudeCredential(api_key=key))
    relay.start()
    grant = relay.open(task_id)   # grant.directory -> bind-mount at /relay; grant.env -> the container
    ...                           # the container runs: node /relay/relay-forward.js --port 47800
    ...                           #   --socket /relay/relay.sock -- claude -p ...
    relay.usage(task_id).cost_usd
    relay.close(task_id)          # the token dies; the socket and its directory go
    relay.stop()

Layout under ``directory`` (0700, the daemon's): ``secret`` (0600, made once: tokens are
HMAC-SHA256(secret, task id), so a restarted daemon accepts the token of a container still running) and
one directory per open task, ``<key>/`` (0711: the container's user may pass through it, not list or
write it) holding ``relay.sock`` (0600, owned by ``socket_owner`` when given: the agent's uid) and a
copy of ``relay-forward.js``, the in-container forwarder (TCP 127.0.0.1:<port> -> the socket).

Served by aiohttp (already installed with the Daytona SDK): one asyncio loop in one thread serves every
task's socket and every connection, streams both ways, and bounds idle connections, bodies and writes
(:class:`RelayBounds`). Requests are answered in the loop; callers use the thread-safe methods below.
"""

from __future__ import annotations

from claude_issue_solver.relay.base import (
    CONTAINER_DIR,
    FORWARDER_NAME,
    FORWARDER_PORT,
    OAUTH_BETA,
    SOCKET_NAME,
    UNIX_PATH_MAX,
    ClaudeCredential,
    RelayBounds,
    RelayError,
    RelayGrant,
    forwarded_command,
    forwarder_source,
)
from claude_issue_solver.relay.metering import LimitSeen
from claude_issue_solver.relay.pricing import ModelUsage, Price, TaskUsage, cost_usd, price_for
from claude_issue_solver.relay.proxy import Relay, stop_all

__all__ = [
    "CONTAINER_DIR",
    "FORWARDER_NAME",
    "FORWARDER_PORT",
    "OAUTH_BETA",
    "SOCKET_NAME",
    "UNIX_PATH_MAX",
    "ClaudeCredential",
    "LimitSeen",
    "ModelUsage",
    "Price",
    "Relay",
    "RelayBounds",
    "RelayError",
    "RelayGrant",
    "TaskUsage",
    "cost_usd",
    "forwarded_command",
    "forwarder_source",
    "price_for",
    "stop_all",
]
