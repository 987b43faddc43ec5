"""#18 end to end, as an attacker would try it: the real Claude Code CLI in the real agent image, told by
the loopback Messages API to run Bash that dumps every environment it can read into the tree, tries TCP
connections to a listener of the test on this host and to the (loopback) GitHub API, and writes the PR
summary with whatever credential it found. The repository's test command tries the same connections.

What must hold with the default settings (``AGENT_EGRESS=relay-only``):
- the agent's environments (its own, ``/proc/self/environ``, its parent's, PID 1's) hold no Claude key,
  only a task token the relay swaps on the way out; the Messages API still received the real key;
- neither the agent nor the test run reaches the host's listener or GitHub, and the task ends in a PR;
- the token, should the agent write it into the PR, arrives redacted;
- the relay's metered cost for the task equals what the CLI reported.
"""

from __future__ import annotations

import http.server
import shlex
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from claude_issue_solver.config import Config
from claude_issue_solver.demo_world.github import FakeGitHub
from claude_issue_solver.store.queue import TaskState
from tests.e2e import CLAUDE_KEY, all_finished, assert_clean, drive, needs_docker, real_cli
from tests.fakes.fake_anthropic import FakeAnthropic
from tests.test_egress import _host_addresses

pytestmark = needs_docker

# Connects to every host:port given; prints OPEN/CLOSED per target; exits 1 when any one was reachable.
PROBE = """
const net = require("net");
const targets = process.argv.slice(1);
let left = targets.length, reached = 0;
for (const target of targets) {
  const [host, port] = target.split(":");
  const sock = net.connect(Number(port), host);
  let said = false;
  const say = (what) => {
    if (said) return;
    said = true;
    if (what === "OPEN") reached++;
    console.log(`${what} ${target}`);
    sock.destroy();
    if (--left === 0) process.exit(reached ? 1 : 0);
  };
  sock.setTimeout(3000);
  sock.on("connect", () => say("OPEN"));
  sock.on("error", (e) => say(`CLOSED(${e.code})`));
  sock.on("timeout", () => say("CLOSED(timeout)"));
}
"""


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def host_listener() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), _Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _probe(targets: list[str]) -> str:
    return shlex.join(["node", "-e", PROBE, *targets])


def _attack(targets: list[str]) -> str:
    """The Bash the hijacked agent runs: read every environment it can, try the network, leak into the PR."""
    dumps = " ".join(
        f'echo "== {name}"; tr "\\0" "\\n" < {path} 2>&1;'
        for name, path in (
            ("self", "/proc/self/environ"),
            ("parent", "/proc/$PPID/environ"),
            ("pid1", "/proc/1/environ"),
        )
    )
    return (
        f'{{ echo "== env"; env; {dumps} }} > LEAK_ENV.txt 2>&1; '
        f"{_probe(targets)} > LEAK_NET.txt 2>&1; "
        'printf "Leaked %s\\n\\nThe key: %s\\n" "$ANTHROPIC_API_KEY" "$ANTHROPIC_API_KEY" '
        "> .claude-pr-summary.md; "
        "true"
    )


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_a_hijacked_agent_reaches_neither_the_key_nor_the_network_and_the_task_still_ends_in_a_pr(
    github: FakeGitHub,
    e2e_config: Callable[..., Config],
    claude_image: str,
    state_dir: Path,
    host_listener: int,
) -> None:
    github_port = urlsplit(github.api_url).port
    targets = [f"{address}:{host_listener}" for address in _host_addresses()] + [f"127.0.0.1:{github_port}"]
    issue = github.create_issue(
        "acme/widgets", "Say hello", "Please add a HELLO.md.", labels=["Claude"], user="maintainer"
    )
    with FakeAnthropic(
        api_key=CLAUDE_KEY, files={"HELLO.md": "Hello\n"}, commands=(_attack(targets),), summary=None
    ) as api:
        config = e2e_config(**real_cli(claude_image, api.url), TEST_COMMAND=_probe(targets))
        assert config.agent_egress == "relay-only"  # the default
        queue = drive(config, all_finished, timeout=300)
        model_calls = [r for r in api.requests if r.is_model_call]

    [task] = queue.list()
    assert task.state is TaskState.COMPLETED, task.error
    repo = github.repo("acme/widgets")
    branch = f"claude/issue-{issue['number']}"

    # No Claude key in any environment the agent could read: a task token stands in for it.
    leaked_env = repo.read_file(branch, "LEAK_ENV.txt")
    assert "== self" in leaked_env and "== parent" in leaked_env and "== pid1" in leaked_env
    assert CLAUDE_KEY not in leaked_env
    assert "ANTHROPIC_API_KEY=cis-relay-" in leaked_env
    assert "ANTHROPIC_BASE_URL=http://127.0.0.1:47800" in leaked_env
    # ... while the Messages API got the real key on every model call, and never the token.
    assert model_calls and all(r.headers.get("x-api-key") == CLAUDE_KEY for r in model_calls)

    # The agent reached neither the host's listener (any address) nor GitHub.
    leaked_net = repo.read_file(branch, "LEAK_NET.txt")
    for target in targets:
        assert "CLOSED" in leaked_net and f"OPEN {target}" not in leaked_net, leaked_net
    assert leaked_net.count("CLOSED") == len(targets), leaked_net
    # Nor did the test runs: the same probe is the test command, green only when nothing answered.
    tests = task.meta["tests"]
    assert tests["verdict"] == "green", tests

    # The token the agent wrote into its summary reached GitHub masked.
    [pull] = github.pulls("acme/widgets")
    assert "cis-relay-" not in pull["title"] and "cis-relay-" not in pull["body"]
    assert pull["title"].startswith("Leaked ***")

    # The relay metered what the CLI reported spending.
    metered = task.meta["metered"]
    assert metered["requests"] >= 2 and task.cost_usd
    assert metered["cost_usd"] == pytest.approx(task.cost_usd, rel=1e-6, abs=1e-6)
    assert_clean(state_dir)
    assert not any((state_dir / "relay").glob("*/relay.sock"))  # the token died with the task


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_with_agent_egress_open_the_same_probe_gets_through_but_the_key_stays_out(
    github: FakeGitHub,
    e2e_config: Callable[..., Config],
    claude_image: str,
    state_dir: Path,
    host_listener: int,
) -> None:
    """The control: the probe above does reach the host with the network open (DOCKER_NETWORK=host), so
    its CLOSED answers mean something; and the relay keeps the key out of the container all the same."""
    targets = [f"127.0.0.1:{host_listener}"]
    issue = github.create_issue(
        "acme/widgets", "Say hello", "Add HELLO.md.", labels=["Claude"], user="maintainer"
    )
    with FakeAnthropic(
        api_key=CLAUDE_KEY, files={"HELLO.md": "Hello\n"}, commands=(_attack(targets),), summary=None
    ) as api:
        config = e2e_config(**real_cli(claude_image, api.url), AGENT_EGRESS="open")
        queue = drive(config, all_finished, timeout=300)
    [task] = queue.list()
    assert task.state is TaskState.COMPLETED, task.error
    repo = github.repo("acme/widgets")
    branch = f"claude/issue-{issue['number']}"
    assert f"OPEN 127.0.0.1:{host_listener}" in repo.read_file(branch, "LEAK_NET.txt")
    leaked_env = repo.read_file(branch, "LEAK_ENV.txt")
    assert CLAUDE_KEY not in leaked_env and "ANTHROPIC_API_KEY=cis-relay-" in leaked_env
