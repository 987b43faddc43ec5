"""The agent images and the two fakes: fake ``claude`` (script + busybox image) and the fake Messages API.

Fast tests run the fake agent image in real containers; ``slow`` ones debootstrap Debian, build
``Dockerfile.claude`` and drive the real Claude Code CLI against :class:`FakeAnthropic`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests

from tests.fakes.fake_anthropic import (
    AUXILIARY_TEXT,
    SUMMARY_FILE,
    FakeAnthropic,
    primary_working_directory,
)
from tests.fakes.images import (
    FAKE_CLAUDE_SCRIPT,
    HASH_LABEL,
    ImageBuildError,
    build_claude_image,
    fake_agent_image,
)

CLAUDE_VERSION = "2.1.197"
RUN_CMD = ["sh", "-c", 'exec claude "$@" < /task/prompt.md', "claude-run"]
JSON_ARGS = ["-p", "--output-format", "json", "--dangerously-skip-permissions"]
STREAM_ARGS = ["-p", "--output-format", "stream-json", "--verbose", "--dangerously-skip-permissions"]
TEST_LABEL = {"claude-issue-solver.test": "test_agent_images"}


# -- Docker plumbing -------------------------------------------------------------------------------


@dataclass
class Run:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> dict[str, Any]:
        return json.loads(self.stdout)


def _dirs(tmp_path: Path, prompt: bytes, *, writable: bool = True) -> tuple[Path, Path]:
    workspace = tmp_path / "workspace"
    task = tmp_path / "task"
    workspace.mkdir()
    task.mkdir()
    # The agent runs as uid 1000 and the tests as someone else (often root): see the ownership trap.
    workspace.chmod(0o777 if writable else 0o755)
    task.chmod(0o755)
    (task / "prompt.md").write_bytes(prompt)
    (task / "prompt.md").chmod(0o644)
    return workspace, task


def _start(
    client: docker.DockerClient,
    image: str,
    workspace: Path,
    task: Path,
    args: list[str],
    *,
    network: str = "none",
    environment: dict[str, str] | None = None,
) -> Any:
    return client.containers.run(
        image,
        [*RUN_CMD, *args],
        detach=True,
        user="1000:1000",
        cap_drop=["ALL"],
        network_mode=network,
        working_dir="/workspace",
        volumes={
            str(workspace): {"bind": "/workspace", "mode": "rw"},
            str(task): {"bind": "/task", "mode": "ro"},
        },
        environment=environment or {},
        labels=TEST_LABEL,
    )


def _finish(container: Any, timeout: float) -> Run:
    try:
        try:
            status = container.wait(timeout=timeout)
        except requests.exceptions.RequestException:
            container.kill()
            pytest.fail(f"container did not finish within {timeout}s; logs:\n{container.logs().decode()}")
        return Run(
            exit_code=status["StatusCode"],
            stdout=container.logs(stdout=True, stderr=False).decode(),
            stderr=container.logs(stdout=False, stderr=True).decode(),
        )
    finally:
        container.remove(force=True)


def _run(
    client: docker.DockerClient,
    image: str,
    workspace: Path,
    task: Path,
    args: list[str],
    *,
    timeout: float = 60,
    network: str = "none",
    environment: dict[str, str] | None = None,
) -> Run:
    container = _start(client, image, workspace, task, args, network=network, environment=environment)
    return _finish(container, timeout)


class LineReader:
    """Follows a container's stdout on a thread so the test can wait for a line with a deadline."""

    def __init__(self, container: Any) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(container,), daemon=True)
        self._thread.start()

    def _pump(self, container: Any) -> None:
        pending = b""
        try:
            for chunk in container.logs(stream=True, follow=True, stdout=True, stderr=False):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self._lines.put(line.decode())
        finally:
            if pending:
                self._lines.put(pending.decode())
            self._lines.put(None)

    def next_line(self, timeout: float = 30) -> str | None:
        """The next stdout line, or None at the end of the output."""
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no output line within {timeout}s")

    def rest(self, timeout: float = 30) -> list[str]:
        deadline = time.monotonic() + timeout
        lines = []
        while (line := self.next_line(max(0.1, deadline - time.monotonic()))) is not None:
            lines.append(line)
        return lines


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


def _assert_success_shape(result: dict[str, Any]) -> None:
    assert result["type"] == "result"
    assert result["subtype"] == "success"
    assert result["is_error"] is False
    for key in ("session_id", "total_cost_usd", "duration_ms", "num_turns", "usage", "modelUsage", "uuid"):
        assert key in result, key


# -- the fake claude in its image --------------------------------------------------------------------


@pytest.mark.docker
def test_fake_image_is_cached_and_meets_the_contract(
    docker_client: docker.DockerClient, fake_image: str
) -> None:
    image = docker_client.images.get(fake_image)
    assert fake_agent_image(docker_client) == fake_image
    assert docker_client.images.get(fake_image).id == image.id, "an unchanged fake was rebuilt"
    assert len(image.labels[HASH_LABEL]) == 64
    assert image.attrs["Config"]["User"] == "1000"
    assert image.attrs["Config"]["WorkingDir"] == "/workspace"

    out = docker_client.containers.run(
        fake_image,
        ["sh", "-c", "id -u; pwd; command -v claude; claude --version; stat -c %a /tmp; echo $HOME"],
        network_mode="none",
        cap_drop=["ALL"],
        remove=True,
    )
    assert out.decode().split("\n")[:6] == [
        "1000",
        "/workspace",
        "/usr/local/bin/claude",
        f"{CLAUDE_VERSION} (Claude Code)",
        "1777",
        "/home/claude",
    ]


@pytest.mark.docker
def test_edit_changes_the_worktree_and_reports_success(
    docker_client: docker.DockerClient, fake_image: str, tmp_path: Path
) -> None:
    prompt = b"Fix issue #7 please.\n"
    workspace, task = _dirs(tmp_path, prompt)
    run = _run(docker_client, fake_image, workspace, task, [*JSON_ARGS, "--max-turns", "30"])

    assert run.exit_code == 0, run
    result = run.json()
    _assert_success_shape(result)
    assert result["num_turns"] == 3
    assert result["total_cost_usd"] == 0.0123
    assert result["result"] == f"Done. prompt-sha256={_sha(prompt)}"
    assert "Fixed by the fake agent" in (workspace / "CLAUDE_FIX.md").read_text()
    summary = (workspace / ".claude-pr-summary.md").read_text().splitlines()
    assert summary[0] == "Fix issue from fake agent"
    assert len(summary) > 2


@pytest.mark.docker
def test_noop_changes_nothing(docker_client: docker.DockerClient, fake_image: str, tmp_path: Path) -> None:
    prompt = b"FAKE_CLAUDE_SCENARIO=noop\n"
    workspace, task = _dirs(tmp_path, prompt)
    (workspace / "README.md").write_text("already fine\n")
    before = _files(workspace)
    run = _run(docker_client, fake_image, workspace, task, JSON_ARGS)

    assert run.exit_code == 0, run
    result = run.json()
    _assert_success_shape(result)
    assert result["result"] == f"Nothing to change: the code already does this. prompt-sha256={_sha(prompt)}"
    assert _files(workspace) == before


@pytest.mark.docker
def test_invalid_key_is_an_error_inside_a_success_subtype(
    docker_client: docker.DockerClient, fake_image: str, tmp_path: Path
) -> None:
    workspace, task = _dirs(tmp_path, b"Do it.\nFAKE_CLAUDE_SCENARIO=invalid-key\n")
    run = _run(docker_client, fake_image, workspace, task, JSON_ARGS)

    assert run.exit_code == 1
    result = run.json()
    assert (result["subtype"], result["is_error"], result["api_error_status"]) == ("success", True, 401)
    assert result["result"] == "Invalid API key · Fix external API key"
    assert _files(workspace) == {}


@pytest.mark.docker
def test_max_turns_has_errors_and_no_result(
    docker_client: docker.DockerClient, fake_image: str, tmp_path: Path
) -> None:
    workspace, task = _dirs(tmp_path, b"FAKE_CLAUDE_SCENARIO=max-turns")
    run = _run(docker_client, fake_image, workspace, task, [*JSON_ARGS, "--max-turns", "2"])

    assert run.exit_code == 1
    result = run.json()
    assert (result["subtype"], result["is_error"]) == ("error_max_turns", True)
    assert result["errors"] == ["Reached maximum number of turns (2)"]
    assert "result" not in result


@pytest.mark.docker
def test_garbage_is_not_json(docker_client: docker.DockerClient, fake_image: str, tmp_path: Path) -> None:
    workspace, task = _dirs(tmp_path, b"FAKE_CLAUDE_SCENARIO=garbage\n")
    run = _run(docker_client, fake_image, workspace, task, JSON_ARGS)

    assert run.exit_code == 2
    with pytest.raises(json.JSONDecodeError):
        json.loads(run.stdout)
    assert run.stderr.strip()


@pytest.mark.docker
def test_unwritable_worktree_still_says_success(
    docker_client: docker.DockerClient, fake_image: str, tmp_path: Path
) -> None:
    # The ownership trap: the CLI reports is_error:false and only the text tells.
    workspace, task = _dirs(tmp_path, b"FAKE_CLAUDE_SCENARIO=write-fail\n", writable=False)
    if os.geteuid() == 1000:
        pytest.skip("the worktree is owned by uid 1000, so the agent can write it")
    run = _run(docker_client, fake_image, workspace, task, JSON_ARGS)

    assert run.exit_code == 0, run
    result = run.json()
    assert result["is_error"] is False
    assert result["result"].startswith("Tool error: permission denied")
    assert _files(workspace) == {}


@pytest.mark.docker
def test_hostile_prompt_arrives_byte_for_byte(
    docker_client: docker.DockerClient, fake_image: str, tmp_path: Path
) -> None:
    hostile = (
        'Title: it\'s "broken" $(touch /tmp/pwned) `id` ${HOME} \\n \\\\ %s %n\n'
        "'; rm -rf / #\n\tTabs\r\nCRLF, ünïcödé 漢字 🚀, a NUL ->\x00<-\n"
        "--output-format text --version -p\n"
    ).encode()
    # Non-UTF-8 bytes too, then ~1 MB, and no trailing newline.
    prompt = hostile + b"\xff\xfe\x80" + (b"0123456789abcdef" * 65536) + b"end"
    workspace, task = _dirs(tmp_path, prompt)
    run = _run(docker_client, fake_image, workspace, task, JSON_ARGS)

    assert run.exit_code == 0, run
    assert run.json()["result"] == f"Done. prompt-sha256={_sha(prompt)}"


@pytest.mark.docker
def test_stream_json_prints_ordered_ndjson(
    docker_client: docker.DockerClient, fake_image: str, tmp_path: Path
) -> None:
    prompt = b"Stream it.\n"
    workspace, task = _dirs(tmp_path, prompt)
    run = _run(docker_client, fake_image, workspace, task, [*STREAM_ARGS, "--model", "claude-test"])

    assert run.exit_code == 0, run
    messages = [json.loads(line) for line in run.stdout.splitlines()]
    kinds = [(m["type"], m.get("subtype")) for m in messages]
    assert kinds == [
        ("system", "init"),
        ("assistant", None),
        ("assistant", None),
        ("user", None),
        ("result", "success"),
    ]
    init, text, tool_use, tool_result, result = messages
    assert (init["cwd"], init["model"], init["permissionMode"]) == (
        "/workspace",
        "claude-test",
        "bypassPermissions",
    )
    assert text["message"]["content"][0]["type"] == "text"
    block = tool_use["message"]["content"][0]
    assert (block["type"], block["name"], block["input"]["file_path"]) == (
        "tool_use",
        "Write",
        "/workspace/CLAUDE_FIX.md",
    )
    assert tool_result["message"]["content"][0]["tool_use_id"] == block["id"]
    assert result["result"] == f"Done. prompt-sha256={_sha(prompt)}"
    assert len({m["session_id"] for m in messages}) == 1


@pytest.mark.docker
def test_stream_json_requires_verbose(
    docker_client: docker.DockerClient, fake_image: str, tmp_path: Path
) -> None:
    workspace, task = _dirs(tmp_path, b"x")
    run = _run(docker_client, fake_image, workspace, task, ["-p", "--output-format", "stream-json"])
    assert run.exit_code == 1
    assert "requires --verbose" in run.stderr


@pytest.mark.docker
def test_wait_holds_until_released(
    docker_client: docker.DockerClient, fake_image: str, tmp_path: Path
) -> None:
    workspace, task = _dirs(tmp_path, b"FAKE_CLAUDE_SCENARIO=wait\n")
    container = _start(docker_client, fake_image, workspace, task, STREAM_ARGS)
    try:
        reader = LineReader(container)
        init = json.loads(reader.next_line() or "null")
        assert init["subtype"] == "init"
        # The init line arrived on its own: the run is now parked on the release file.
        container.reload()
        assert container.status == "running"
        assert not (workspace / "CLAUDE_FIX.md").exists()

        (workspace / ".fake-claude-release").touch()
        rest = [json.loads(line) for line in reader.rest()]
        assert [m["type"] for m in rest] == ["assistant", "assistant", "user", "result"]
        assert rest[-1]["is_error"] is False
    finally:
        run = _finish(container, timeout=30)
    assert run.exit_code == 0
    assert (workspace / "CLAUDE_FIX.md").exists()
    assert not (workspace / ".fake-claude-release").exists()


@pytest.mark.docker
def test_hang_runs_until_killed(docker_client: docker.DockerClient, fake_image: str, tmp_path: Path) -> None:
    workspace, task = _dirs(tmp_path, b"FAKE_CLAUDE_SCENARIO=hang\n")
    container = _start(docker_client, fake_image, workspace, task, STREAM_ARGS)
    try:
        reader = LineReader(container)
        assert json.loads(reader.next_line() or "null")["subtype"] == "init"
        container.reload()
        assert container.status == "running"
        container.kill()
        assert reader.rest() == []
    finally:
        run = _finish(container, timeout=30)
    assert run.exit_code == 137  # SIGKILL


@pytest.mark.docker
def test_build_failure_surfaces_the_log_tail(docker_client: docker.DockerClient, fake_image: str) -> None:
    # The busybox image has neither apt-get nor apk: the Dockerfile must stop with its own message.
    with pytest.raises(ImageBuildError) as excinfo:
        build_claude_image(docker_client, fake_image, "claude-issue-solver-test-should-fail:latest")
    message = str(excinfo.value)
    assert "neither apt-get nor apk" in message
    assert fake_image in message


# -- the fake claude on the host ---------------------------------------------------------------------


def _host_fake(args: list[str], prompt: bytes, cwd: Path, **env: str) -> subprocess.CompletedProcess[bytes]:
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "IS_SANDBOX": "1", **env}
    # Through `sh` (dash here) rather than the exec bit, which packaging may not keep.
    return subprocess.run(
        ["sh", str(FAKE_CLAUDE_SCRIPT), *args],
        input=prompt,
        cwd=cwd,
        env=environment,
        capture_output=True,
        timeout=30,
        check=False,
    )


def test_fake_claude_runs_on_the_host(tmp_path: Path) -> None:
    prompt = 'Bitte "reparieren" $(echo nope) `x`\n\nÄÖÜ\n'.encode() * 1000
    proc = _host_fake([*JSON_ARGS, "--verbose"], prompt, tmp_path)

    assert proc.returncode == 0, proc.stderr
    # --verbose with json: the whole transcript as one array, the result last.
    messages = json.loads(proc.stdout)
    assert [m["type"] for m in messages] == ["system", "assistant", "assistant", "user", "result"]
    assert messages[-1]["result"] == f"Done. prompt-sha256={_sha(prompt)}"
    assert (tmp_path / "CLAUDE_FIX.md").exists()
    assert (tmp_path / ".claude-pr-summary.md").read_text().startswith("Fix issue from fake agent\n")


def test_fake_claude_version_and_env_scenario(tmp_path: Path) -> None:
    version = _host_fake(["--version"], b"", tmp_path)
    assert version.stdout.decode() == f"{CLAUDE_VERSION} (Claude Code)\n"

    proc = _host_fake(
        ["-p", "--unknown-flag", "--output-format", "text"], b"hi", tmp_path, FAKE_CLAUDE_SCENARIO="noop"
    )
    assert proc.returncode == 0
    assert proc.stdout.decode().startswith("Nothing to change")


@pytest.mark.skipif(os.geteuid() != 0, reason="the refusal only applies to root")
def test_fake_claude_refuses_root_like_the_real_cli(tmp_path: Path) -> None:
    proc = _host_fake(JSON_ARGS, b"x", tmp_path, IS_SANDBOX="")
    assert proc.returncode == 1
    assert b"cannot be used with root/sudo privileges" in proc.stderr


# -- the fake Anthropic API on its own ---------------------------------------------------------------


def _post(api: FakeAnthropic, body: dict[str, Any], key: str = "sk-test") -> tuple[int, bytes]:
    request = urllib.request.Request(
        f"{api.url}/v1/messages?beta=true",
        data=json.dumps(body).encode(),
        headers={"x-api-key": key, "content-type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for chunk in raw.decode().split("\n\n"):
        if not chunk.strip():
            continue
        fields = dict(line.split(": ", 1) for line in chunk.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events


def _blocks(events: list[tuple[str, dict[str, Any]]]) -> tuple[list[dict[str, Any]], str]:
    """Reassemble content blocks the way an SDK does, and return them with the stop reason."""
    blocks: list[dict[str, Any]] = []
    partial: dict[int, str] = {}
    stop_reason = ""
    for name, data in events:
        if name == "content_block_start":
            blocks.append(dict(data["content_block"]))
        elif name == "content_block_delta":
            delta = data["delta"]
            if delta["type"] == "text_delta":
                blocks[data["index"]]["text"] += delta["text"]
            else:
                partial[data["index"]] = partial.get(data["index"], "") + delta["partial_json"]
        elif name == "content_block_stop" and data["index"] in partial:
            blocks[data["index"]]["input"] = json.loads(partial[data["index"]])
        elif name == "message_delta":
            stop_reason = data["delta"]["stop_reason"]
    return blocks, stop_reason


def _conversation(system: Any, messages: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "model": "claude-test",
        "max_tokens": 32000,
        "stream": True,
        "system": system,
        "tools": [{"name": "Write", "input_schema": {"type": "object"}}],
        "messages": messages,
    }


def test_fake_anthropic_scripts_a_conversation() -> None:
    system = [
        {"type": "text", "text": "You are Claude Code."},
        {"type": "text", "text": "Env:\n - Primary working directory: /work/x\n"},
    ]
    with FakeAnthropic(api_key="sk-test", files={"HELLO.md": "hello\n"}) as api:
        head = urllib.request.urlopen(urllib.request.Request(f"{api.url}/", method="HEAD"), timeout=10)
        assert head.status == 200

        messages: list[dict[str, Any]] = [{"role": "user", "content": "make HELLO.md"}]
        status, raw = _post(api, _conversation(system, messages))
        assert status == 200
        events = _events(raw)
        assert [name for name, _ in events][:1] == ["message_start"]
        assert [name for name, _ in events][-2:] == ["message_delta", "message_stop"]
        blocks, stop = _blocks(events)
        assert stop == "tool_use"
        write = blocks[-1]
        assert (write["name"], write["input"]) == (
            "Write",
            {"file_path": "/work/x/HELLO.md", "content": "hello\n"},
        )

        messages += [
            {"role": "assistant", "content": blocks},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": write["id"], "content": "ok"}],
            },
        ]
        blocks, stop = _blocks(_events(_post(api, _conversation(system, messages))[1]))
        assert stop == "tool_use"
        assert blocks[-1]["input"]["file_path"] == f"/work/x/{SUMMARY_FILE}"

        messages += [
            {"role": "assistant", "content": blocks},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": blocks[-1]["id"], "content": "ok"}],
            },
        ]
        blocks, stop = _blocks(_events(_post(api, _conversation(system, messages))[1]))
        assert stop == "end_turn"
        assert [b["type"] for b in blocks] == ["text"]

        assert [r.step for r in api.conversation_requests] == [0, 1, 2]
        assert api.requests[0].kind == "probe"
        assert all(r.headers["x-api-key"] == "sk-test" for r in api.model_calls)


def test_fake_anthropic_side_calls_auth_and_system_message() -> None:
    with FakeAnthropic(api_key="sk-test") as api:
        status, raw = _post(
            api, {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "quota"}]}
        )
        assert status == 200
        assert json.loads(raw)["content"] == [{"type": "text", "text": AUXILIARY_TEXT}]

        title = _conversation("sys", [{"role": "user", "content": "title?"}]) | {"tools": []}
        blocks, stop = _blocks(_events(_post(api, title)[1]))
        assert (blocks, stop) == ([{"type": "text", "text": AUXILIARY_TEXT}], "end_turn")

        status, raw = _post(api, _conversation("sys", []), key="sk-wrong")
        assert status == 401
        assert json.loads(raw) == {
            "type": "error",
            "error": {"type": "authentication_error", "message": "invalid x-api-key"},
        }
        assert [r.kind for r in api.requests] == ["auxiliary", "auxiliary", "unauthorized"]

    via_message = {
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": " - Primary working directory: /w d"}]}
        ]
    }
    assert primary_working_directory(via_message) == "/w d"
    assert primary_working_directory({"system": "x\n - Primary working directory: /abs/p\ny"}) == "/abs/p"
    assert primary_working_directory({"system": "nothing here"}) is None


# -- the real agent image and the real CLI (slow) ----------------------------------------------------


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_claude_image_runs_as_uid_1000(docker_client: docker.DockerClient, claude_image: str) -> None:
    script = (
        "set -e; id -u; pwd; claude --version; git --version >/dev/null && echo git; "
        "git config --system --get-all safe.directory; touch $HOME/.probe && echo home-writable; "
        'echo "$DISABLE_AUTOUPDATER$CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC$DISABLE_TELEMETRY"'
    )
    out = docker_client.containers.run(
        claude_image,
        ["sh", "-c", script],
        user="1000:1000",
        cap_drop=["ALL"],
        network_mode="none",
        remove=True,
    )
    assert out.decode().splitlines() == [
        "1000",
        "/workspace",
        f"{CLAUDE_VERSION} (Claude Code)",
        "git",
        "*",
        "home-writable",
        "111",
    ]
    image = docker_client.images.get(claude_image)
    assert image.attrs["Config"]["User"] == "1000"
    assert image.labels["claude-issue-solver.claude-code-version"] == CLAUDE_VERSION


def _real_cli_env(api: FakeAnthropic, key: str) -> dict[str, str]:
    return {
        "ANTHROPIC_API_KEY": key,
        "ANTHROPIC_BASE_URL": api.url,
        "CLAUDE_CODE_MAX_RETRIES": "0",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_real_cli_end_to_end_against_the_fake_api(
    docker_client: docker.DockerClient, claude_image: str, tmp_path: Path
) -> None:
    workspace, task = _dirs(tmp_path, b"Please add HELLO.md saying hello.\n")
    with FakeAnthropic(api_key="sk-test", files={"HELLO.md": "Hello, world!\n"}) as api:
        run = _run(
            docker_client,
            claude_image,
            workspace,
            task,
            [*JSON_ARGS, "--max-turns", "10"],
            network="host",
            environment=_real_cli_env(api, "sk-test"),
            timeout=180,
        )
        assert run.exit_code == 0, run
        result = run.json()
        _assert_success_shape(result)
        assert (workspace / "HELLO.md").read_text() == "Hello, world!\n"
        assert (workspace / SUMMARY_FILE).read_text().splitlines()[0] == "Add the requested files"
        assert [r.step for r in api.conversation_requests] == [0, 1, 2]
        assert api.requests[0].method == "HEAD"


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_real_cli_with_a_wrong_key_is_an_error(
    docker_client: docker.DockerClient, claude_image: str, tmp_path: Path
) -> None:
    workspace, task = _dirs(tmp_path, b"Please add HELLO.md.\n")
    with FakeAnthropic(api_key="sk-test") as api:
        run = _run(
            docker_client,
            claude_image,
            workspace,
            task,
            JSON_ARGS,
            network="host",
            environment=_real_cli_env(api, "sk-not-the-key"),
            timeout=180,
        )
        assert run.exit_code == 1, run
        result = run.json()
        assert result["is_error"] is True
        assert result.get("api_error_status") == 401
        assert _files(workspace) == {}
        assert {r.kind for r in api.model_calls} == {"unauthorized"}


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_dockerfile_skips_node_when_the_base_has_it(
    docker_client: docker.DockerClient, claude_image: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tests.fakes.images")
    tag = "claude-issue-solver-test-claude-on-node:latest"
    # nocache so the RUN steps execute and their decision shows in the log.
    build_claude_image(docker_client, claude_image, tag, nocache=True)

    decisions = [
        match.group(1)
        for record in caplog.records
        if (match := re.search(r": Dockerfile\.claude: installing: ([^$]*)$", record.getMessage()))
    ]
    assert decisions == ["git ca-certificates"]
    try:
        script = "claude --version; id -u"
        out = docker_client.containers.run(
            tag, ["sh", "-c", script], user="1000:1000", cap_drop=["ALL"], network_mode="none", remove=True
        )
        assert out.decode().splitlines() == [f"{CLAUDE_VERSION} (Claude Code)", "1000"]
    finally:
        # Built without cache on every run: keep repeated runs from piling up images.
        docker_client.images.remove(tag, force=True)
