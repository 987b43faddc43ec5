"""What a repository's tests are: ``.github/claude-issue-solver.yml``, the daemon's defaults, or a guess.

The file is read from the default branch through the GitHub API (never from the task's branch, which
the agent may have changed, and never executed on this host), parsed with PyYAML's ``safe_load``:

```yaml
setup: pip install -e .[test]   # a shell command that installs dependencies (optional)
test: python -m pytest -q       # a shell command; exit 0 = green
test_timeout: 300               # seconds per setup or test run (optional)
test_results: build/junit/*.xml # the JUnit XML file(s) the test command writes (a glob, optional)
coverage: coverage.xml          # the Cobertura XML file the test command writes (optional)
```

Without a file (or without ``test:`` in it) the daemon's ``SETUP_COMMAND`` / ``TEST_COMMAND`` /
``TEST_TIMEOUT`` apply; without those, :func:`detect` looks at the default branch's files for the usual
test runners. The commands run later, inside the agent's container or sandbox (:mod:`test_gate`).
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any

import yaml

from claude_issue_solver.config import Config
from claude_issue_solver.github.client import GitHubClient, GitHubError

__all__ = [
    "SETTINGS_PATH",
    "SETUP_INPUTS",
    "RepoSettingsError",
    "TestPlan",
    "detect",
    "load_plan",
    "parse_settings",
]

SETTINGS_PATH = ".github/claude-issue-solver.yml"
KEYS = ("setup", "test", "test_timeout", "setup_inputs", "test_results", "coverage")
# The detected pytest: the gate adds --junitxml itself (TestPlan.runner), so its results are per test.
PYTEST = "pytest"
_FILE_LIMIT = 64 * 1024  # a settings file, a package.json or a Makefile larger than this is not read
# npm init's placeholder test script: not a test suite.
_NPM_PLACEHOLDER = re.compile(r"no test specified")
_MAKE_TEST_TARGET = re.compile(r"^test\s*:", re.MULTILINE)
# What a setup command installs from, next to the detection that knows these ecosystems: the setup
# cache (test_gate.setup_key) is keyed by the setup command and the content of each of these that
# exists. Root-level files only, by name (a backend's read_file does not glob): a lock file in a
# subdirectory (requirements/dev.txt, a workspace member's package.json) is not part of the key.
SETUP_INPUTS = (
    "pyproject.toml",
    "setup.py",
    "setup.cfg",
    "requirements.txt",
    "requirements-dev.txt",
    "requirements-test.txt",
    "dev-requirements.txt",
    "test-requirements.txt",
    "poetry.lock",
    "uv.lock",
    "Pipfile",
    "Pipfile.lock",
    "package.json",
    "package-lock.json",
    "yarn.lock",
    "pnpm-lock.yaml",
    "go.mod",
    "go.sum",
    "Cargo.toml",
    "Cargo.lock",
    "Gemfile",
    "Gemfile.lock",
    "composer.json",
    "composer.lock",
    "Makefile",
    SETTINGS_PATH,
)


class RepoSettingsError(Exception):
    """The repository's settings file is not usable; the message quotes the problem for the issue."""


@dataclass(frozen=True)
class TestPlan:
    """What runs before and after the agent, and where that came from (said in the log and the PR)."""

    __test__ = False  # not a pytest test class, whatever its name

    setup: str | None
    test: str | None
    timeout: int
    source: str  # e.g. "the repository's .github/claude-issue-solver.yml", "detected: go.mod"
    # More files whose contents key the setup cache (``setup_inputs:``), beyond SETUP_INPUTS at the root.
    setup_inputs: tuple[str, ...] = ()
    results: str | None = None  # the JUnit XML files the test command writes (``test_results:``), a glob
    runner: str | None = None  # "pytest" when detected: the gate asks it for JUnit XML itself
    coverage: str | None = None  # the Cobertura XML file the test command writes (``coverage:``)

    def to_dict(self) -> dict[str, Any]:
        return {
            "setup": self.setup,
            "test": self.test,
            "timeout": self.timeout,
            "source": self.source,
            "setup_inputs": list(self.setup_inputs),
            "results": self.results,
            "runner": self.runner,
            "coverage": self.coverage,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TestPlan:
        return cls(
            data.get("setup"),
            data.get("test"),
            int(data.get("timeout") or 600),
            data.get("source", ""),
            tuple(data.get("setup_inputs") or ()),
            data.get("results") or None,
            data.get("runner") or None,
            data.get("coverage") or None,
        )


def parse_settings(text: str) -> dict[str, Any]:
    """The file's settings, checked; RepoSettingsError names every problem (YAML errors quoted)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        msg = f"{SETTINGS_PATH} is not valid YAML: {exc}"
        raise RepoSettingsError(msg) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        msg = f"{SETTINGS_PATH} must be a mapping of {', '.join(KEYS)}, not a {type(data).__name__}"
        raise RepoSettingsError(msg)
    problems = []
    unknown = sorted(str(k) for k in data if k not in KEYS)
    if unknown:
        problems.append(f"unknown key(s) {', '.join(unknown)} (known: {', '.join(KEYS)})")
    for key in ("setup", "test"):
        value = data.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            problems.append(f"{key}: must be a non-empty shell command (a string), not {value!r}")
    timeout = data.get("test_timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 1):
        problems.append(f"test_timeout: must be a whole number of seconds >= 1, not {timeout!r}")
    inputs = data.get("setup_inputs")
    if inputs is not None and not (
        isinstance(inputs, list) and all(isinstance(i, str) and _relative_path(i) for i in inputs)
    ):
        problems.append(
            "setup_inputs: must be a list of file paths relative to the repository's root "
            f"(e.g. [frontend/package-lock.json]), not {inputs!r}"
        )
    results = data.get("test_results")
    if results is not None and not (isinstance(results, str) and _relative_glob(results)):
        problems.append(
            "test_results: must be a glob of JUnit XML files relative to the repository's root "
            f"(e.g. build/test-results/*.xml), not {results!r}"
        )
    coverage = data.get("coverage")
    if coverage is not None and not (isinstance(coverage, str) and _relative_path(coverage.strip())):
        problems.append(
            "coverage: must be the path of a Cobertura XML file relative to the repository's root "
            f"(e.g. coverage.xml), not {coverage!r}"
        )
    if problems:
        msg = f"{SETTINGS_PATH}: " + "; ".join(problems)
        raise RepoSettingsError(msg)
    return {k: (v.strip() if isinstance(v, str) else v) for k, v in data.items() if v is not None}


def _relative_path(path: str) -> bool:
    parts = path.split("/")
    return bool(path.strip()) and not path.startswith("/") and all(p not in ("", ".", "..") for p in parts)


def _relative_glob(pattern: str) -> bool:
    return _relative_path(pattern.strip()) and not any(c in pattern for c in "\0\n")


def load_plan(client: GitHubClient, repo: str, ref: str, config: Config) -> TestPlan:
    """The plan for a task on ``repo``: its file, else the daemon's settings, else a guess (``detect``)."""
    text = _file(client, repo, SETTINGS_PATH, ref)
    own = parse_settings(text) if text is not None else {}
    timeout = int(own.get("test_timeout") or config.test_timeout)
    inputs = tuple(own.get("setup_inputs") or ())
    results, coverage = own.get("test_results") or config.test_results, own.get("coverage")
    if own.get("test"):
        where = f"the repository's {SETTINGS_PATH}"
        return TestPlan(own.get("setup"), own["test"], timeout, where, inputs, results, coverage=coverage)
    setup = own.get("setup") or config.setup_command
    if config.test_command:
        return TestPlan(setup, config.test_command, timeout, "the daemon's TEST_COMMAND", inputs, results)
    found = detect(client, repo, ref)
    if found is None:
        return TestPlan(setup, None, timeout, "no test command found", inputs)
    command, why = found
    runner = PYTEST if " -m pytest" in command and results is None else None
    if setup is None:
        why += "; no setup command was given, so the tests run with what the image has"
    return TestPlan(setup, command, timeout, f"detected ({why})", inputs, results, runner)


def detect(client: GitHubClient, repo: str, ref: str) -> tuple[str, str] | None:
    """The usual test command for the files at the root of ``ref``, and why; None when nothing fits."""
    listing = _listing(client, repo, ref)
    files = {name for name, kind in listing if kind == "file"}
    dirs = {name for name, kind in listing if kind == "dir"}
    python_config = files & {"pyproject.toml", "setup.py", "setup.cfg", "pytest.ini", "tox.ini"}
    test_dirs = dirs & {"tests", "test"}
    if python_config and (test_dirs or "pytest.ini" in files):
        why = f"{sorted(python_config)[0]} and {sorted(test_dirs or {'pytest.ini'})[0]}"
        # python3: stock Debian and Ubuntu images have no `python`. A src/ layout is importable from
        # src without installing it (an install would need the network, which test runs do not have).
        if "src" in dirs:
            return "PYTHONPATH=src python3 -m pytest", why + "; a src/ layout: src is put on PYTHONPATH"
        return "python3 -m pytest", why
    if "package.json" in files:
        script = _npm_test_script(_file(client, repo, "package.json", ref))
        if script:
            return "npm test", "package.json has a test script"
    if "go.mod" in files:
        return "go test ./...", "go.mod"
    if "Cargo.toml" in files:
        return "cargo test", "Cargo.toml"
    if "Makefile" in files:
        makefile = _file(client, repo, "Makefile", ref) or ""
        if _MAKE_TEST_TARGET.search(makefile):
            return "make test", "the Makefile has a test target"
    return None


def _npm_test_script(text: str | None) -> str | None:
    try:
        scripts = (json.loads(text or "") or {}).get("scripts") or {}
    except (ValueError, AttributeError):
        return None
    script = scripts.get("test") if isinstance(scripts, dict) else None
    if not isinstance(script, str) or not script.strip() or _NPM_PLACEHOLDER.search(script):
        return None
    return script


def _file(client: GitHubClient, repo: str, path: str, ref: str) -> str | None:
    """A text file's content at ``ref``; None when there is none (or it is too large to be settings)."""
    return repository_text(client, repo, path, ref, limit=_FILE_LIMIT)


def repository_text(client: GitHubClient, repo: str, path: str, ref: str, *, limit: int) -> str | None:
    """A text file of the repository at ``ref`` (the contents API); None when there is none, it is not a
    regular file, or it is over ``limit`` bytes."""
    try:
        data = client.request(
            repo, "GET", f"/repos/{repo}/contents/{path}", params={"ref": ref}, retry=True
        ).data
    except GitHubError as exc:
        if exc.status == 404:
            return None
        raise
    if not isinstance(data, dict) or data.get("type") != "file" or int(data.get("size") or 0) > limit:
        return None
    try:
        return base64.b64decode(data.get("content") or "").decode("utf-8", "replace")
    except ValueError:
        return None


def _listing(client: GitHubClient, repo: str, ref: str) -> list[tuple[str, str]]:
    try:
        data = client.request(repo, "GET", f"/repos/{repo}/contents", params={"ref": ref}, retry=True).data
    except GitHubError as exc:
        if exc.status == 404:  # an empty repository
            return []
        raise
    return [(str(e.get("name")), str(e.get("type"))) for e in data or [] if isinstance(e, dict)]
