"""AGENT_EGRESS on Docker: an ``offline`` process reaches nothing over the network, whatever it tries.

Real containers (the fake agent image: busybox, whose ``wget`` and ``nc`` are the probes), real
listeners of the test on this host. Each probe is checked against a control run with the network
open, so a probe that could never succeed proves nothing.
"""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("docker")

from claude_issue_solver.backends.base import ProcessSpec
from tests import backend_steps as steps
from tests import test_docker_backend as docker_tests
from tests.test_docker_backend import Harness

# The Docker backend tests' fixtures: a backend over this test's state dir, the fake image, a remote.
client = docker_tests.client
agent_image = docker_tests.agent_image
remote = docker_tests.remote
harness = docker_tests.harness

pytestmark = pytest.mark.docker


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"reached-the-host"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def listener() -> Iterator[int]:
    """An HTTP listener of the test on every address of this host (127.0.0.1 included)."""
    server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _host_addresses() -> list[str]:
    """This host's own addresses: loopback, and the non-loopback one its default route uses, if any."""
    found = ["127.0.0.1"]
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing address
        address = probe.getsockname()[0]
        if address and not address.startswith("127."):
            found.append(address)
    except OSError:
        pass
    finally:
        probe.close()
    return found


def _probe_script(port: int, addresses: list[str]) -> str:
    lines = [
        # busybox's nc, not its wget: the static wget crashes resolving names under host networking.
        f'if printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 3 {address} {port} 2>/dev/null | grep -q reached; '
        f'then echo " OPEN {address}"; else echo " CLOSED {address}"; fi'
        for address in addresses
    ]
    return "\n".join(lines)


def _run(harness: Harness, *, offline: bool, network: str, script: str, tag: str) -> str:
    backend = harness.backend(network=network)
    job = harness.job("edit", task_id=f"egress-{tag}")
    workspace = backend.prepare(job.workspace, harness.log(job))
    spec = ProcessSpec(name="probe", argv=("sh", "-c", script), env={}, offline=offline)
    backend.start_process(workspace, spec, harness.log(job))
    result = steps.wait(backend, workspace, harness.log(job), seconds=60, name="probe")
    assert result is not None and result.exit_code == 0, result
    return result.stdout


def test_an_offline_process_reaches_no_listener_of_the_host(harness: Harness, listener: int) -> None:
    addresses = _host_addresses()
    script = _probe_script(listener, addresses)

    opened = _run(harness, offline=False, network="host", script=script, tag="open")
    assert "OPEN 127.0.0.1" in opened, opened  # the probe works: with the host's network it gets through

    closed = _run(harness, offline=True, network="host", script=script, tag="closed")
    for address in addresses:
        assert f"CLOSED {address}" in closed, closed
    assert "OPEN" not in closed


def test_an_offline_process_has_only_loopback(harness: Harness, tmp_path: Path) -> None:
    """No interface but lo, no route: not the LAN, not 169.254.169.254, not the internet."""
    script = "cat /proc/net/route; echo; ls /sys/class/net"
    out = _run(harness, offline=True, network="host", script=script, tag="ifaces")
    routes = [line for line in out.splitlines()[1:] if line.strip() and "\t" in line]
    assert routes == [], out
    assert out.split()[-1] == "lo" and "eth0" not in out
