"""What the Docker backend scopes (#18), with a real Docker daemon: a workspace says whether it started
at the default branch's head (the only state a setup is saved from), before and after a restart; and
the repository's own ``Dockerfile`` (and ``Dockerfile.claude`` on its image) is never built with the
host network, so a ``RUN`` cannot reach what listens on the host's 127.0.0.1."""

from __future__ import annotations

import io
import secrets
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import docker
import pytest

from claude_issue_solver.backends import docker_images
from claude_issue_solver.backends.base import LABEL_OWNER, BackendError, WorkspaceSpec
from claude_issue_solver.backends.docker import DockerBackend
from claude_issue_solver.backends.settings import DockerSettings
from claude_issue_solver.credentials import GitCredential
from claude_issue_solver.logs import TaskLog
from claude_issue_solver.store.queue import Task
from tests.e2e import needs_docker

pytestmark = needs_docker

REPO = "acme/widgets"


def git(*args: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"git {' '.join(args)} failed: {proc.stderr}"
    return proc.stdout.strip()


def commit(seed: Path, files: dict[str, str], message: str) -> None:
    for path, text in files.items():
        (seed / path).write_text(text)
    git("add", "-A", cwd=seed)
    git("-c", "user.name=S", "-c", "user.email=s@example.com", "commit", "-qm", message, cwd=seed)


@pytest.fixture
def seed(tmp_path: Path) -> Path:
    """A checkout whose ``main`` is pushed to ``tmp_path/remote.git`` (the clone URL is its path)."""
    bare, seed = tmp_path / "remote.git", tmp_path / "seed"
    git("init", "--bare", "--quiet", "--initial-branch=main", str(bare))
    git("init", "--quiet", "--initial-branch=main", str(seed))
    commit(seed, {"README.md": "# r\n"}, "init")
    git("push", "-q", str(bare), "main", cwd=seed)
    return seed


def backend_for(tmp_path: Path, image: str | None, **settings: object) -> DockerBackend:
    values: dict[str, object] = {
        "state_dir": tmp_path / "state",
        "network": "none",
        "memory": "256m",
        "cpus": 1.0,
        "pids_limit": 64,
        **settings,
    }
    return DockerBackend(DockerSettings(**values), image=image)  # type: ignore[arg-type]


def spec(tmp_path: Path, task_id: str, number: int) -> WorkspaceSpec:
    return WorkspaceSpec(
        task_id=task_id,
        repo=REPO,
        issue_number=number,
        clone_url=str(tmp_path / "remote.git"),
        default_branch="main",
        branch=f"claude/issue-{number}",
        credential=lambda: GitCredential("x-access-token", "unused"),
    )


def test_a_workspace_says_whether_it_started_at_the_default_branchs_head(
    fake_image: str, seed: Path, tmp_path: Path
) -> None:
    backend = backend_for(tmp_path, fake_image)
    log = TaskLog(tmp_path / "scope.log")
    tag = secrets.token_hex(3)
    bare = str(tmp_path / "remote.git")
    # Issue 8's branch holds an earlier run's commit; issue 9's is where main is (nothing of its own).
    git("push", "-q", bare, "main:claude/issue-9", cwd=seed)
    commit(seed, {"agent.txt": "an earlier run\n"}, "earlier run")
    git("push", "-q", bare, "HEAD:claude/issue-8", cwd=seed)
    git("reset", "-q", "--hard", "HEAD~1", cwd=seed)
    started = {}
    try:
        for number in (7, 8, 9):
            task_id = f"widgets-{number}-{tag}"
            started[number] = backend.prepare(spec(tmp_path, task_id, number), log).from_default
            # The daemon after a restart finds the same answer (not recomputed: main may have moved).
            again = backend_for(tmp_path, fake_image).attach(
                Task(id=task_id, repo=REPO, issue_number=number, title="t")
            )
            assert again is not None and again.from_default is started[number]
        assert started == {7: True, 8: False, 9: True}
    finally:
        for number in (7, 8, 9):
            backend.remove(f"widgets-{number}-{tag}", log)


class _Listener:
    """A loopback HTTP server on the host's 127.0.0.1 that records the paths it was asked for."""

    def __init__(self) -> None:
        seen: list[str] = []
        self.seen = seen

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append(self.path)
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"reached\n")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _Listener:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def listener() -> Iterator[_Listener]:
    with _Listener() as made:
        yield made


def probe(port: int, name: str) -> str:
    """A RUN line that records in /<name> whether the host's 127.0.0.1:<port> answered (busybox nc)."""
    request = f'printf "GET /{name} HTTP/1.0\\r\\n\\r\\n" | nc -w 5 127.0.0.1 {port} | head -1 | grep .'
    return f"RUN ({request} || echo unreachable) > /{name}; cat /proc/net/dev >> /{name}\n"


def test_the_repositorys_dockerfile_is_not_built_with_the_host_network(
    fake_image: str,
    seed: Path,
    tmp_path: Path,
    listener: _Listener,
    docker_client: docker.DockerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A stand-in for Dockerfile.claude (the real one installs Claude Code from npm); on the repository's
    # image its RUN lines are the repository's to steer, so it gets the same network.
    stand_in = tmp_path / "Dockerfile.claude"
    stand_in.write_text(f"ARG BASE_IMAGE\nFROM ${{BASE_IMAGE}}\nUSER root\n{probe(listener.port, 'agent')}")
    monkeypatch.setattr(docker_images, "agent_dockerfile", lambda: stand_in)
    marker = secrets.token_hex(4)
    commit(
        seed,
        {"Dockerfile": f"FROM {fake_image}\nUSER root\nRUN echo {marker}\n{probe(listener.port, 'repo')}"},
        "a Dockerfile",
    )
    git("push", "-q", str(tmp_path / "remote.git"), "main", cwd=seed)
    # DOCKER_NETWORK=host, the worst case: the containers would share the host's network.
    backend = backend_for(tmp_path, None, network="host", base_image=fake_image)
    log = TaskLog(tmp_path / "build.log")
    task_id = f"widgets-7-{secrets.token_hex(3)}"
    backend.prepare(spec(tmp_path, task_id, 7), log)  # fetches the mirror the image is built from
    tags: list[str] = []
    try:
        image = backend.ensure_image(REPO, "main", log)
        tags.append(image)
        tags.extend(t for i in docker_client.images.list() for t in i.tags if "base-acme-widgets" in t)
        out = docker_client.containers.run(
            image, ["cat", "/repo", "/agent"], remove=True, network_mode="none", labels={LABEL_OWNER: "t"}
        ).decode()
        assert out.count("unreachable") == 2, out
        assert listener.seen == []

        # The control: the same RUN line with the host network (as the suite's own builds have) reaches it.
        control = f"FROM {fake_image}\nUSER root\n{probe(listener.port, 'control')}"
        built, _ = docker_client.images.build(
            fileobj=_tar("Dockerfile", control), custom_context=True, network_mode="host", rm=True
        )
        tags.append(built.id)
        assert listener.seen == ["/control"]
    finally:
        backend.remove(task_id, log)
        for tag in tags:
            docker_client.images.remove(tag, force=True)


def test_a_failed_build_names_the_network_it_had(
    fake_image: str, seed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit(seed, {"Dockerfile": f"FROM {fake_image}\nRUN echo needs-the-network && exit 4\n"}, "broken")
    git("push", "-q", str(tmp_path / "remote.git"), "main", cwd=seed)
    backend = backend_for(tmp_path, None, network="host", base_image=fake_image)
    log = TaskLog(tmp_path / "build.log")
    task_id = f"widgets-7-{secrets.token_hex(3)}"
    backend.prepare(spec(tmp_path, task_id, 7), log)
    try:
        with pytest.raises(BackendError) as caught:
            backend.ensure_image(REPO, "main", log)
        assert "the network 'default' from DOCKER_NETWORK, never the host's" in str(caught.value)
        assert "needs-the-network" in str(caught.value)
    finally:
        backend.remove(task_id, log)


def _tar(name: str, text: str) -> io.BytesIO:
    data = text.encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer
