"""The real Claude Code CLI (2.1.197, in the real agent image) against the loopback Messages API in its
limit modes, and :func:`claude_issue_solver.limits.classify` reading what it really printed.

Facts observed here (``CLAUDE_CODE_MAX_RETRIES=0``; each run makes ``HEAD /`` and then exactly one
``POST /v1/messages``, so a refused run costs the API one request):

- **429 with an API key** (``retry-after``, ``anthropic-ratelimit-*-reset`` sent): exit 1, empty stderr;
  stream-json prints ``system/init``, an ``assistant`` line with ``"error": "rate_limit"``, model
  ``<synthetic>``, text ``API Error: Request rejected (429) · <the API's message>``, then the result
  (``subtype: "success"``, ``is_error: true``, ``api_error_status: 429``, ``total_cost_usd: 0``). No
  ``rate_limit_event`` and no reset time: the CLI reads rate-limit headers only for claude.ai logins.
  The json format prints only that result. The reset time must come from the API itself
  (:func:`limits.probe_reset` reads the same headers from one ``max_tokens: 1`` request).
- **429 with an OAuth token** (``CLAUDE_CODE_OAUTH_TOKEN``, the subscription login) and the
  ``anthropic-ratelimit-unified-*`` headers (``status: rejected``, ``reset`` epoch, ``representative-claim:
  five_hour``): a ``rate_limit_event`` line ``{"rate_limit_info": {"status": "rejected", "resetsAt": <the
  header's epoch>, "rateLimitType": "five_hour", "overageStatus": …, "isUsingOverage": false}}`` comes
  before the synthetic assistant line (``"error": "rate_limit"``) whose text, like the result's, is
  ``You've hit your session limit · resets 11:41am (UTC)`` — the time in the container's zone.
- **529 overloaded_error**: ``"error": "server_error"`` (not "overloaded") on the synthetic line, text
  ``API Error: 529 Overloaded. This is a server-side issue, usually temporary — try again in a moment…``,
  ``api_error_status: 529``. **500**: the same with ``API Error: 500 Internal server error…`` and 500.
- ``--max-budget-usd`` far below one turn's cost: ``subtype: "error_max_budget_usd"``, ``is_error: true``,
  ``total_cost_usd`` above the cap, exit 1.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import docker
import pytest

from claude_issue_solver.limits import BudgetExhausted, LimitHit, Transient, classify, probe_reset
from tests.fakes.fake_anthropic import FakeAnthropic
from tests.test_agent_images import CLAUDE_VERSION, JSON_ARGS, STREAM_ARGS, Run, _dirs, _run

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1500)]

API_KEY = "sk-test"
OAUTH_TOKEN = "sk-ant-oat01-test-token"


def _env(api: FakeAnthropic, *, oauth: bool = False) -> dict[str, str]:
    credential = {"CLAUDE_CODE_OAUTH_TOKEN": OAUTH_TOKEN} if oauth else {"ANTHROPIC_API_KEY": API_KEY}
    return {
        **credential,
        "ANTHROPIC_BASE_URL": api.url,
        "CLAUDE_CODE_MAX_RETRIES": "0",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }


def _cli(
    client: docker.DockerClient, image: str, tmp_path: Path, api: FakeAnthropic, args: list[str], **env: Any
) -> Run:
    tmp_path.mkdir(parents=True, exist_ok=True)
    workspace, task = _dirs(tmp_path, b"Please add HELLO.md saying hello.\n")
    return _run(
        client, image, workspace, task, args, network="host", environment=_env(api, **env), timeout=180
    )


def _lines(run: Run) -> list[dict[str, Any]]:
    return [json.loads(line) for line in run.stdout.splitlines() if line.strip()]


def test_rate_limit_with_an_api_key(
    docker_client: docker.DockerClient, claude_image: str, tmp_path: Path
) -> None:
    with FakeAnthropic(api_key=API_KEY) as api:
        api.limits.rate_limit(retry_after=120)
        started = time.time()
        run = _cli(docker_client, claude_image, tmp_path / "stream", api, STREAM_ARGS)
        events = _lines(run)

        assert run.exit_code == 1 and run.stderr == "", run
        assert [e["type"] for e in events] == ["system", "assistant", "result"]
        assert events[0]["claude_code_version"] == CLAUDE_VERSION
        assert events[1]["error"] == "rate_limit"
        assert events[1]["message"]["model"] == "<synthetic>"
        assert events[2]["api_error_status"] == 429 and events[2]["is_error"] is True
        assert "rate_limit_event" not in run.stdout and "resetsAt" not in run.stdout

        verdict = classify(run.stdout, exit_code=run.exit_code, stderr=run.stderr, now=started)
        assert isinstance(verdict, LimitHit)
        assert (verdict.kind, verdict.resets_at, verdict.source) == ("rate", None, "api_error_status")
        assert verdict.message.startswith("API Error: Request rejected (429) · Number of requests")
        assert len(api.model_calls) == 1

        # The CLI gave no reset time: the API's own headers give it.
        probe = probe_reset(api.url, API_KEY, now=started)
        assert probe.limited and probe.resets_at == started + 120

        json_run = _cli(docker_client, claude_image, tmp_path / "json", api, JSON_ARGS)
        assert json_run.exit_code == 1
        assert classify(json_run.stdout, exit_code=1, now=started) == LimitHit(
            "rate", None, verdict.message, "api_error_status"
        )


def test_usage_limit_of_a_subscription_login(
    docker_client: docker.DockerClient, claude_image: str, tmp_path: Path
) -> None:
    resets_at = float(int(time.time()) + 90 * 60)
    with FakeAnthropic(api_key=OAUTH_TOKEN) as api:
        api.limits.usage_limit(resets_at=resets_at)
        run = _cli(docker_client, claude_image, tmp_path, api, STREAM_ARGS, oauth=True)
        events = _lines(run)

        assert run.exit_code == 1, run
        assert [e["type"] for e in events] == ["system", "rate_limit_event", "assistant", "result"]
        info = events[1]["rate_limit_info"]
        assert (info["status"], info["resetsAt"], info["rateLimitType"]) == (
            "rejected",
            resets_at,
            "five_hour",
        )
        text = events[3]["result"]
        assert text.startswith("You've hit your session limit · resets ") and text.endswith("(UTC)")

        verdict = classify(run.stdout, exit_code=run.exit_code, stderr=run.stderr, now=time.time())
        assert verdict == LimitHit("usage", resets_at, text, "rate_limit_event")
        # The text alone (text output format, a wrapper's log) gives the end of the same minute.
        from_text = classify(text, exit_code=1, now=time.time())
        assert isinstance(from_text, LimitHit) and from_text.resets_at == resets_at - resets_at % 60 + 60
        assert len(api.model_calls) == 1
        assert api.model_calls[0].headers["authorization"] == f"Bearer {OAUTH_TOKEN}"


@pytest.mark.parametrize(("status", "kind"), [(529, "overloaded"), (500, "server")])
def test_overload_and_server_errors_are_transient(
    docker_client: docker.DockerClient, claude_image: str, tmp_path: Path, status: int, kind: str
) -> None:
    with FakeAnthropic(api_key=API_KEY) as api:
        if status == 529:
            api.limits.overloaded()
        else:
            api.limits.server_error(status)
        run = _cli(docker_client, claude_image, tmp_path, api, STREAM_ARGS)
        events = _lines(run)

        assert run.exit_code == 1, run
        assert events[1]["error"] == "server_error"
        assert events[-1]["api_error_status"] == status
        verdict = classify(run.stdout, exit_code=run.exit_code, stderr=run.stderr, now=time.time())
        assert isinstance(verdict, Transient)
        assert (verdict.kind, verdict.status) == (kind, status)
        assert verdict.message.startswith(f"API Error: {status} ")
        assert len(api.model_calls) == 1

        # Switched back at run time, the same fake serves a normal run.
        api.limits.clear()
        again = _cli(docker_client, claude_image, tmp_path / "again", api, [*JSON_ARGS, "--max-turns", "10"])
        assert again.exit_code == 0, again
        assert classify(again.stdout, exit_code=0, now=time.time()) is None


def test_max_budget_stop(docker_client: docker.DockerClient, claude_image: str, tmp_path: Path) -> None:
    with FakeAnthropic(api_key=API_KEY) as api:
        run = _cli(
            docker_client,
            claude_image,
            tmp_path,
            api,
            [*JSON_ARGS, "--max-turns", "10", "--max-budget-usd", "0.0001"],
        )
        result = json.loads(run.stdout)
        assert run.exit_code == 1, run
        assert result["subtype"] == "error_max_budget_usd"
        assert result["total_cost_usd"] > 0.0001
        verdict = classify(run.stdout, exit_code=run.exit_code, now=time.time())
        assert isinstance(verdict, BudgetExhausted)
        assert verdict.spent == result["total_cost_usd"]
