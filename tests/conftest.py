"""Shared fixtures: isolation from the person running the tests, a private state directory, and a
config built from explicit settings."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from claude_issue_solver.config import AGENT_ENV_PREFIXES, ENV_FILE_VARIABLE, SETTINGS, Config, load_config
from claude_issue_solver.store.queue import TaskQueue
from claude_issue_solver.store.state import StateStore

# Child processes started by tests import the package from this checkout even when it is not installed.
ROOT = Path(__file__).resolve().parents[1]
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)

# The Daytona SDK is an optional extra (`pip install -e '.[test,daytona]'`, as scripts/test does): without
# it the Daytona modules cannot be imported, so they are not collected, and the header says so.
try:
    import daytona  # noqa: F401
except ModuleNotFoundError:
    collect_ignore_glob = ["test_*daytona*.py"]


def pytest_report_header() -> str | None:
    if "collect_ignore_glob" in globals():
        return "the Daytona SDK is not installed: its tests are left out (pip install -e '.[test,daytona]')"
    return None


# -- isolation from the person running the tests ------------------------------------------------------
#
# A test never sees the user's ./.env, HOME, XDG_* directories or exported credentials (a `.env` in the
# checkout once failed two tests and printed 40 warnings). What could steer the daemon, the agent, the
# Daytona SDK, the fakes or git is removed from the test process's own environment, so every child
# process a test starts inherits the scrubbed one (they get os.environ, or a copy of it).
#
# Twice: once for the whole run (module imports at collection time and session fixtures happen before
# any test), then per test with a MonkeyPatch, so that each test has its own cwd, HOME and XDG_* dirs and
# a variable one test leaked cannot reach the next.

# Variable families that configure the daemon, the Claude CLI, the Daytona SDK and git.
SCRUBBED_PREFIXES: tuple[str, ...] = (
    "GITHUB_",
    "ANTHROPIC_",
    "DAYTONA_",
    "CLAUDE_",  # CLAUDE_CODE_*, CLAUDE_CONFIG_DIR, CLAUDE_ISSUE_SOLVER_ENV and the daemon's CLAUDE_* keys
    "GIT_",  # GIT_DIR/GIT_INDEX_FILE (pytest run from a git hook), GIT_AUTHOR_* (also daemon keys)
    "FAKE_CLAUDE_",  # the fake agent's scenario switch
    "XDG_",  # replaced below by private dirs; XDG_*_DIRS (system search paths) are just removed
    *AGENT_ENV_PREFIXES,  # what the daemon hands through to the agent (DISABLE_*, API_TIMEOUT_MS, ...)
)
# Every key the daemon reads (STATE_DIR, POLL_INTERVAL, BACKEND, DOCKER_IMAGE, ...), and which .env to read.
SCRUBBED_KEYS: frozenset[str] = frozenset({ENV_FILE_VARIABLE, *(s.key for s in SETTINGS)})
XDG_HOMES = ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME", "XDG_RUNTIME_DIR")


def is_scrubbed(name: str) -> bool:
    """Whether the isolation removes ``name`` from the tests' environment (DOCKER_HOST, PATH... stay)."""
    return name in SCRUBBED_KEYS or name.startswith(SCRUBBED_PREFIXES)


@dataclass(frozen=True)
class Isolation:
    """Where a test runs: its working directory and its HOME, both empty and its own."""

    cwd: Path
    home: Path
    dirs: dict[str, str]  # HOME and each XDG_*_HOME / XDG_RUNTIME_DIR -> its path


def _isolate(base: Path, patch: pytest.MonkeyPatch) -> Isolation:
    dirs = {"HOME": base / "home", **{name: base / name.lower() for name in XDG_HOMES}}
    for path in [*dirs.values(), base / "cwd"]:
        path.mkdir(parents=True, exist_ok=True)
        # XDG_RUNTIME_DIR must be private to its owner (XDG base directory spec); the rest may as well be.
        path.chmod(0o700)
    for name in [n for n in os.environ if is_scrubbed(n)]:
        patch.delenv(name)
    for name, path in dirs.items():
        patch.setenv(name, str(path))
    patch.chdir(base / "cwd")
    return Isolation(cwd=base / "cwd", home=dirs["HOME"], dirs={k: str(v) for k, v in dirs.items()})


_session_undo: list[Callable[[], None]] = []


@pytest.hookimpl(tryfirst=True)  # before pytest's tmp_path factory reads --basetemp
def pytest_configure(config: pytest.Config) -> None:
    """The run-wide half: scrub os.environ and leave the checkout before any test module is imported.

    Paths given on the command line were resolved against the invocation directory already.
    """
    base = Path(tempfile.mkdtemp(prefix="claude-issue-solver-tests-"))
    patch = pytest.MonkeyPatch()
    _isolate(base, patch)
    if getattr(config.option, "numprocesses", None):
        # pytest-xdist's controller starts its workers in its own cwd: they must find the checkout (its
        # pyproject.toml and testpaths). Each worker leaves it in its own pytest_configure, as here.
        patch.chdir(config.invocation_params.dir)
        if config.option.basetemp is None:
            # Each worker's tmp_path gains "popen-gwN/": under pytest's usual /tmp/pytest-of-USER/pytest-N/
            # a state directory's relay socket would pass the 107 bytes a Unix socket path may have.
            short = tempfile.mkdtemp(prefix="cis-", dir="/tmp")
            config.option.basetemp = short
            _session_undo.append(lambda: shutil.rmtree(short, ignore_errors=True))
    _session_undo.extend([patch.undo, lambda: shutil.rmtree(base, ignore_errors=True)])


def pytest_unconfigure(config: pytest.Config) -> None:
    while _session_undo:
        _session_undo.pop(0)()


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Isolation:
    """Every test: its own empty cwd, HOME and XDG_* dirs; no credential or daemon setting in os.environ."""
    return _isolate(tmp_path_factory.mktemp("isolated"), monkeypatch)


@pytest.fixture(autouse=True)
def no_running_relay() -> Iterator[None]:
    """A daemon a test built (and drove with run_once) started its Claude relay: stop it with the test."""
    yield
    if "claude_issue_solver.relay" in sys.modules:
        sys.modules["claude_issue_solver.relay"].stop_all()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.fixture
def make_config(state_dir: Path, tmp_path: Path) -> Callable[..., Config]:
    def make(**settings: str) -> Config:
        # Tests drive a frozen clock through many requests: the request budget (which would wait for a
        # minute that never passes) is out of the way unless a test sets it (test_request_budget does).
        env = {
            "HOME": str(tmp_path),
            "STATE_DIR": str(state_dir),
            "GITHUB_REQUESTS_PER_MINUTE": "1000000",
            **settings,
        }
        return load_config(environ=env, cwd=tmp_path)

    return make


@pytest.fixture
def store(state_dir: Path) -> StateStore:
    return StateStore(state_dir / "state.json")


@pytest.fixture
def queue(store: StateStore) -> TaskQueue:
    return TaskQueue(store, max_concurrent=3)


def python() -> str:
    return sys.executable


pytest_plugins = ["tests.github_fixtures", "tests.docker_fixtures", "tests.e2e"]
