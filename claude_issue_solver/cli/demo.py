"""``claude-issue-solver demo``: the whole loop on one machine, with no GitHub account and no secrets.

A loopback GitHub (:class:`~claude_issue_solver.demo_world.github.FakeGitHub`) serves a small sample
repository with one labelled issue; the real daemon, pipeline and Docker backend turn it into a pull
request; the result is printed. With a Claude credential in the environment the real ``claude`` CLI does
the work; without one, or with ``stand_in``, a scripted stand-in does (and says so before anything runs).

The stand-in (``demo_world/fake_claude.sh`` in a busybox image, run as model
:data:`~claude_issue_solver.run.messages.STAND_IN_MODEL`) fixes the sample's bug for real, adds a test, and
the pull request and comment name it as a stand-in, never as Claude. The sample is a shell project whose
settings file names its test command (``sh check.sh``) and JUnit XML, so the test gate runs it in
whichever agent image (neither has Python): red before the change on the issue's test only, green after.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from claude_issue_solver.config import AGENT_ENV_PREFIXES, Config, ConfigError, load_config
from claude_issue_solver.logs import LOGGER_NAME, setup_logging, tail_lines, task_log_path
from claude_issue_solver.run.messages import STAND_IN_MODEL
from claude_issue_solver.store.queue import FOLLOWUP, Task, TaskState

if TYPE_CHECKING:
    from docker import DockerClient

    from claude_issue_solver.backends.docker import DockerBackend
    from claude_issue_solver.demo_world.github import FakeGitHub

log = logging.getLogger(__name__)

REPO = "demo/calculator"
REQUESTER = "alice"
# What the maintainer asks on the pull request with --follow-up (the stand-in's one follow-up skill).
FOLLOW_UP_REQUEST = "@claude please also add a test that subtracting a number from itself gives 0."
CREDENTIALS = ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN")
STAND_IN_NOTICE = (
    "No Claude credential found: using a scripted stand-in agent, not Claude. "
    "Set ANTHROPIC_API_KEY to run the real CLI."
)
STAND_IN_HINT = (
    "To see the loop without Claude (offline, no credential used): claude-issue-solver demo --stand-in"
)
FORCED_STAND_IN_NOTICE = (
    "--stand-in: using a scripted stand-in agent, not Claude; no Claude credential is used or passed on."
)
# The user's settings that shape the real agent; everything else about the daemon is the demo's own,
# so a .env written for production (repos, token, state dir) cannot leak into it.
_PASSED_THROUGH = (
    *CREDENTIALS,
    "ANTHROPIC_BASE_URL",
    "CLAUDE_MODEL",
    "CLAUDE_MAX_TURNS",
    "CLAUDE_EXTRA_ARGS",
    "CLAUDE_APPEND_SYSTEM_PROMPT",
    "DOCKER_IMAGE",
    "DOCKER_BASE_IMAGE",
    "DOCKER_NETWORK",
    "DOCKER_MEMORY",
    "DOCKER_CPUS",
    "DOCKER_PIDS_LIMIT",
)
_LOG_TAIL_LINES = 20

# A shell project, so its tests run in any agent image: the stand-in's busybox and the real CLI's
# Debian base both have `sh` (neither has Python). check.sh writes JUnit XML, which the test gate reads
# per test: the baseline fails only test_subtract (the issue's bug), and the fixed branch is green.
SAMPLE_FILES = {
    "README.md": (
        "# calculator\n\nA tiny calculator in POSIX sh: `. ./calc.sh; subtract 5 3`.\n\n"
        "Run the tests with `sh check.sh` (JUnit XML in `build/junit.xml`).\n"
    ),
    ".gitignore": "build/\n",
    ".github/claude-issue-solver.yml": (
        "# What claude-issue-solver runs to verify a change (before it, for the baseline, and after it).\n"
        "test: sh check.sh\n"
        "test_results: build/junit.xml\n"
        "test_timeout: 60\n"
    ),
    "calc.sh": """\
# A tiny calculator: source it (`. ./calc.sh`), then `add 2 3` prints 5.

add() {
    echo $(($1 + $2))
}

subtract() {
    echo $(($1 + $2))
}

multiply() {
    echo $(($1 * $2))
}
""",
    "check.sh": """\
# The calculator's tests: `sh check.sh`. One line per test, JUnit XML in build/junit.xml (what CI test
# reporters read), exit 1 when a test fails.
. ./calc.sh

passed=0
failed=0
cases=""

xml() {
    printf '%s' "$1" | sed -e 's/&/\\&amp;/g' -e 's/</\\&lt;/g' -e 's/"/\\&quot;/g'
}

# check NAME EXPECTED COMMAND [ARGS...]
check() {
    name=$1
    expected=$2
    shift 2
    got=$("$@")
    if [ "$got" = "$expected" ]; then
        echo "ok   $name: $* = $got"
        passed=$((passed + 1))
        cases="$cases    <testcase classname=\\"calc\\" name=\\"$name\\"/>
"
    else
        echo "FAIL $name: $* = $got, expected $expected"
        failed=$((failed + 1))
        message=$(xml "$* = $got, expected $expected")
        failure="<failure message=\\"$message\\"/>"
        cases="$cases    <testcase classname=\\"calc\\" name=\\"$name\\">$failure</testcase>
"
    fi
}

check test_add 5 add 2 3
check test_subtract 2 subtract 5 3
check test_multiply 12 multiply 4 3

mkdir -p build
{
    echo '<?xml version="1.0" encoding="UTF-8"?>'
    echo "<testsuite name=\\"calc\\" tests=\\"$((passed + failed))\\" failures=\\"$failed\\">"
    printf '%s' "$cases"
    echo '</testsuite>'
} >build/junit.xml
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
""",
}
ISSUE_TITLE = "subtract() adds instead of subtracting"
ISSUE_BODY = (
    "`subtract 5 3` (from `calc.sh`) prints `8`; it should print `2`, so `sh check.sh` fails on "
    "`test_subtract`.\n\n"
    "Please fix `subtract` in `calc.sh`, keep the existing tests as they are, and add a test to "
    "`check.sh` that would have caught it.\n"
)


class DemoError(Exception):
    """The demo cannot go on; the message is the one line the user sees."""


def run_demo(
    workdir: Path | None = None,
    *,
    out: TextIO = sys.stdout,
    keep: bool = False,
    timeout: float = 600,
    environ: Mapping[str, str] | None = None,
    stand_in: bool = False,
    follow_up: bool = False,
) -> int:
    """Run one issue through the daemon against a loopback GitHub and print the result; 0 on success.

    ``workdir`` holds the fake GitHub's bare repositories (``github/``) and the daemon's ``STATE_DIR``
    (``state/``); by default a temporary directory. Both are removed at the end unless ``keep``.
    ``environ`` (default ``os.environ``) is read only for the Claude credential and the agent's settings;
    Docker itself is found the usual way (``DOCKER_HOST`` in the process environment). ``stand_in``
    runs the scripted stand-in even when a Claude credential is set. ``follow_up``: once the pull request
    is open, the maintainer asks for more on it (``@claude …``) and the same daemon continues the work on
    the same branch, pull request and Claude session; that answer and commit are printed too.
    """
    env = dict(os.environ if environ is None else environ)
    real = not stand_in and any(env.get(key, "").strip() for key in CREDENTIALS)
    if stand_in:
        print(FORCED_STAND_IN_NOTICE, file=out, flush=True)
    elif not real:
        print(STAND_IN_NOTICE, file=out, flush=True)
    owned = workdir is None
    root = Path(tempfile.mkdtemp(prefix="claude-issue-solver-demo-")) if workdir is None else workdir
    created = [root] if owned else [root / "github", root / "state"]
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(_remove_or_show, created, root, keep, out)
        try:
            return _run(root, env, real, out, timeout, cleanup, follow_up=follow_up)
        except DemoError as exc:
            print(f"demo failed: {exc}", file=out, flush=True)
            return 1
        except KeyboardInterrupt:
            print("demo interrupted", file=out, flush=True)
            return 1
    raise AssertionError("unreachable")  # pragma: no cover - the with block always returns


def _run(
    root: Path,
    env: dict[str, str],
    real: bool,
    out: TextIO,
    timeout: float,
    cleanup: contextlib.ExitStack,
    *,
    follow_up: bool = False,
) -> int:
    from claude_issue_solver.demo_world.github import FakeGitHub

    client = _docker_client()
    cleanup.callback(client.close)
    if real:
        settings = {
            key: env[key] for key in env if key in _PASSED_THROUGH or key.startswith(AGENT_ENV_PREFIXES)
        }
        if "DOCKER_NETWORK" not in settings:
            settings["DOCKER_NETWORK"] = _network_for_real_agent(client)
            if settings["DOCKER_NETWORK"] == "host":
                print("Docker has no bridge network here: the agent's container uses the host's.", file=out)
        image = settings.get("DOCKER_IMAGE") or (
            f"built from Dockerfile.claude on {settings.get('DOCKER_BASE_IMAGE', 'node:20-bookworm-slim')} "
            "(minutes the first time)"
        )
        print(
            f"Claude credential found: the real claude CLI will work on the issue (image {image}); "
            "`demo --stand-in` runs the scripted stand-in instead.",
            file=out,
        )
    else:
        # None of the user's settings: no credential reaches the stand-in's container, and no CLAUDE_* or
        # DOCKER_* value meant for the real CLI changes how it runs. No network at all: it needs none,
        # and nothing in the container may reach the host. Its model name is how the daemon knows it.
        settings = {
            "DOCKER_IMAGE": _stand_in_image(client),
            "DOCKER_NETWORK": "none",
            "CLAUDE_MODEL": STAND_IN_MODEL,
        }

    token = f"ghp_{secrets.token_hex(20)}"  # throwaway: valid only for this run's loopback GitHub
    github = FakeGitHub(root / "github", tokens=(token,)).start()
    cleanup.callback(github.stop)
    github.create_repo(REPO, SAMPLE_FILES)
    github.set_permission(REPO, REQUESTER, "write")
    issue = github.create_issue(REPO, ISSUE_TITLE, ISSUE_BODY, labels=["Claude", "bug"], user=REQUESTER)
    print(
        f"Loopback GitHub at {github.web_url}: {REPO}, issue #{issue['number']} {ISSUE_TITLE!r}, "
        f"labelled Claude by {REQUESTER} (write access).",
        file=out,
    )

    try:
        config = load_config(
            environ={
                **settings,
                "GITHUB_TOKEN": token,
                "GITHUB_API_URL": github.api_url,
                "GITHUB_REPOS": REPO,
                "STATE_DIR": str(root / "state"),
                "POLL_INTERVAL": "1",
                "MAX_CONCURRENT": "1",
                "MAX_ATTEMPTS": "1",  # a demo should report a failure, not retry it
                "TASK_TIMEOUT": str(max(1, int(timeout))),
                "LOG_LEVEL": "INFO",
            },
            cwd=root,  # no .env here: only the settings above count
        )
    except ConfigError as exc:
        raise DemoError(str(exc)) from None

    print("Running the daemon until the task is done (its log follows on stderr; Ctrl-C stops it).", file=out)
    out.flush()

    asked_at: dict[str, str] = {}  # the branch's head when the maintainer asked

    def ask(task: Task) -> None:
        pr = int(task.meta["pr_number"])
        asked_at["sha"] = github.repo(REPO).branch_sha(task.branch or "") or ""
        github.add_comment(REPO, pr, FOLLOW_UP_REQUEST, user=REQUESTER, author_association="COLLABORATOR")
        print(f"{REQUESTER} on pull request #{pr}: {FOLLOW_UP_REQUEST!r}", file=out, flush=True)

    tasks = _run_daemon_until_done(config, client, timeout, cleanup, ask=ask if follow_up else None)
    first, *later = tasks
    code = _report(first, github, config.log_dir, out, timeout)
    if code == 0 and follow_up:
        code = _report_follow_up(later, first, asked_at.get("sha", ""), github, config.log_dir, out, timeout)
    if code and real:
        print(STAND_IN_HINT, file=out, flush=True)
    return code


def _docker_client() -> DockerClient:
    import docker
    import docker.errors
    import requests

    try:
        client = docker.from_env()
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        msg = (
            f"Docker is not reachable ({reason}); start it (`sudo systemctl start docker`, "
            "or `sudo dockerd &`) or point DOCKER_HOST at a running daemon"
        )
        raise DemoError(msg) from None
    return client


def _network_for_real_agent(client: DockerClient) -> str:
    """The agent must reach the Anthropic API; the loopback GitHub should be reachable from the host only.

    Docker's bridge gives both: internet through NAT, and a container's 127.0.0.1 that is its own. Only a
    daemon started without a bridge (``dockerd --bridge=none``) leaves host networking, where the
    container could connect to the loopback GitHub but holds no token to use it.
    """
    if any(network.name == "bridge" for network in client.networks.list(names=["bridge"])):
        return "bridge"
    return "host"


def _stand_in_image(client: DockerClient) -> str:
    from claude_issue_solver.demo_world.images import ImageBuildError, fake_agent_image

    try:
        return fake_agent_image(client)
    except ImageBuildError as exc:
        if "busybox" in str(exc):
            msg = "the stand-in agent needs a static busybox on this host: apt-get install busybox-static"
            raise DemoError(msg) from None
        first = str(exc).splitlines()[0]
        raise DemoError(f"could not build the stand-in agent image: {first}") from None


def _run_daemon_until_done(
    config: Config,
    client: DockerClient,
    timeout: float,
    cleanup: contextlib.ExitStack,
    *,
    ask: Callable[[Task], None] | None = None,
) -> list[Task]:
    """``start --foreground``'s body, stopped by us as soon as the tasks have finished (or timed out):
    the issue's, and with ``ask`` (called once that one opened its pull request) the follow-up's.
    Returns them oldest first."""
    from claude_issue_solver.app import build, docker_settings
    from claude_issue_solver.backends.base import BackendError
    from claude_issue_solver.backends.docker import DockerBackend

    cleanup.enter_context(_package_logging())
    setup_logging(config.log_dir, level=config.log_level, to_stderr=True, secrets=config.secrets())
    backend = DockerBackend(docker_settings(config), client=client)
    try:
        parts = build(config, backend=backend)
        backend.check()
    except (ConfigError, BackendError) as exc:
        raise DemoError(f"cannot start the daemon: {exc}") from None
    # Runs even after Ctrl-C or a timeout, when the agent's container was left running on purpose.
    cleanup.callback(_remove_leftovers, backend)

    stopped_by_us = threading.Event()
    done = threading.Event()

    asked = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while not done.wait(0.2):
            tasks = parts.queue.list()
            finished = bool(tasks) and not any(t.state.live for t in tasks)
            if finished and ask is not None and not asked.is_set():
                first = min(tasks, key=lambda t: t.seq)
                if first.state is TaskState.COMPLETED and first.meta.get("pr_number"):
                    asked.set()
                    ask(first)
                    deadline = time.monotonic() + timeout  # the follow-up gets the same time again
                    continue
            if finished and asked.is_set() and not any(t.kind == FOLLOWUP for t in tasks):
                continue  # the request is not picked up yet (the next poll, within a second)
            if finished or time.monotonic() > deadline:
                log.info("demo: %s; stopping the daemon", "task finished" if finished else "out of time")
                stopped_by_us.set()
                parts.daemon.handle_signal(signal.SIGTERM)
                return

    watcher = threading.Thread(target=watch, name="demo-watch", daemon=True)
    with _signal_handlers(parts.daemon.install_signal_handlers):
        watcher.start()
        try:
            parts.daemon.run()
        finally:
            done.set()
            watcher.join()
    if not stopped_by_us.is_set():
        raise KeyboardInterrupt
    tasks = sorted(parts.queue.list(), key=lambda t: t.seq)
    if not tasks:
        raise DemoError("the daemon never picked up the issue (see the log above)")
    return tasks


def _report(task: Task, github: FakeGitHub, log_dir: Path, out: TextIO, timeout: float) -> int:
    from claude_issue_solver.github.markers import marked_task

    comments = [c for c in github.comments(REPO, task.issue_number) if marked_task(c["body"]) == task.id]
    if task.state.live:
        print(f"demo failed: the task did not finish within {timeout:.0f}s (see the log above)", file=out)
        return 1
    if task.state is not TaskState.COMPLETED:
        print(f"demo failed: the task {task.state.value}: {task.error}", file=out)
        print("\nLast lines of the task log:", file=out)
        print("".join(tail_lines(task_log_path(log_dir, task.id), _LOG_TAIL_LINES)).rstrip(), file=out)
        return 1
    pulls = [p for p in github.pulls(REPO) if p["html_url"] == task.pr_url]
    if not pulls:
        print("demo failed: the task finished without a pull request (the agent changed nothing)", file=out)
        for comment in comments:
            print(f"\nComment on issue #{task.issue_number}:\n{comment['body']}", file=out)
        return 1
    pull = pulls[0]
    head, base = pull["head"]["ref"], pull["base"]["ref"]
    diff = github.repo(REPO).git("diff", f"{base}...{head}")
    rule = "-" * 72
    print(f"\n{rule}\nPull request #{pull['number']}: {pull['title']}", file=out)
    print(f"URL:    {pull['html_url']}\nBranch: {head} -> {base}", file=out)
    sha = github.repo(REPO).branch_sha(head) or ""
    for status in github.statuses(REPO, sha)[-1:]:  # the latest: what the PR's checks list shows
        print(f"Status: {status['context']}: {status['state']} ({status['description']})", file=out)
    print(f"\n{pull['body'].rstrip()}", file=out)
    print(f"\n{rule}\ngit diff {base}...{head}\n\n{diff.rstrip()}", file=out)
    for comment in comments:
        author = comment["user"]["login"]
        print(f"\n{rule}\nComment on issue #{task.issue_number} by {author}:\n\n{comment['body']}", file=out)
    print(rule, file=out, flush=True)
    return 0


def _report_follow_up(
    later: list[Task],
    first: Task,
    before: str,
    github: FakeGitHub,
    log_dir: Path,
    out: TextIO,
    timeout: float,
) -> int:
    """The follow-up's answer on the pull request and the commit it added to the same branch."""
    from claude_issue_solver.github.markers import marked_task

    rule = "-" * 72
    if not later:
        print(
            f"demo failed: the request on the pull request was not picked up within {timeout:.0f}s", file=out
        )
        return 1
    task = later[0]
    if task.state is not TaskState.COMPLETED:
        state = "did not finish in time" if task.state.live else f"{task.state.value}: {task.error}"
        print(f"demo failed: the follow-up {state}", file=out)
        print("\nLast lines of the task log:", file=out)
        print("".join(tail_lines(task_log_path(log_dir, task.id), _LOG_TAIL_LINES)).rstrip(), file=out)
        return 1
    pr = int(first.meta["pr_number"])
    repo = github.repo(REPO)
    head = repo.branch_sha(task.branch or "") or ""
    session = task.meta.get("resumed_session")
    resumed = (
        f"resumed Claude session {session}"
        if session and not task.meta.get("fresh_session")
        else ("a fresh session (the earlier one could not be resumed)")
    )
    print(f"\n{rule}\nFollow-up on pull request #{pr}: the same branch {task.branch}, {resumed}", file=out)
    if before and head and before != head:
        print(f"\ngit log {before[:12]}..{task.branch}\n", file=out)
        print(repo.git("log", "--format=%h %an: %s", f"{before}..{head}").rstrip(), file=out)
        print(f"\n{repo.git('diff', before, head).rstrip()}", file=out)
    for comment in github.comments(REPO, pr):
        if marked_task(comment["body"]) == task.id:
            print(f"\n{rule}\nAnswer on pull request #{pr} by {comment['user']['login']}:\n", file=out)
            print(comment["body"], file=out)
    print(rule, file=out, flush=True)
    return 0


# --- cleanup ------------------------------------------------------------------------------------------


def _remove_leftovers(backend: DockerBackend) -> None:
    from claude_issue_solver.run.policy import reconcile

    try:
        removed = reconcile(backend, set())  # no task of the demo outlives it
    except Exception as exc:  # cleanup must never hide the demo's own outcome
        log.warning("demo: could not remove leftovers: %s", exc)
    else:
        for item in removed:
            log.info("demo: removed %s", item)


def _remove_or_show(paths: list[Path], root: Path, keep: bool, out: TextIO) -> None:
    from claude_issue_solver.backends import git as gitops

    if keep:
        print(f"Kept: state in {root / 'state'}, bare repository at {root / 'github' / REPO}.git", file=out)
        return
    for path in paths:
        try:
            gitops.force_rmtree(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            print(f"could not remove {path}: {exc}", file=out)


@contextlib.contextmanager
def _signal_handlers(install: Callable[[], None]) -> Iterator[None]:
    """Let the daemon take Ctrl-C and SIGTERM for its run, then give the caller its handlers back."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach only the main thread: whoever runs us there keeps them
        return
    kinds = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
    saved = {kind: signal.getsignal(kind) for kind in kinds}
    install()
    try:
        yield
    finally:
        for kind, handler in saved.items():
            signal.signal(kind, handler)


@contextlib.contextmanager
def _package_logging() -> Iterator[None]:
    """setup_logging() takes over the package's logger; hand it back as it was (tests share a process)."""
    logger = logging.getLogger(LOGGER_NAME)
    saved = (list(logger.handlers), logger.level, logger.propagate)
    try:
        yield
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
        handlers, logger.level, logger.propagate = saved
        for handler in handlers:
            logger.addHandler(handler)


__all__ = ["FORCED_STAND_IN_NOTICE", "STAND_IN_HINT", "STAND_IN_NOTICE", "run_demo"]
