"""Configuration: read once from the environment and a ``.env`` file, validated into a typed object.

Every key is declared once in ``SETTINGS`` (name, parser, default, whether it is secret) so that the
parser, the error messages, ``status``'s redacted view and ``.env.example`` cannot drift apart.

A key that is blank, in the file or in the environment, is treated as not set: ``cp .env.example .env``
must give the defaults, computed ones (``STATE_DIR``) included. Every bad key is reported at once.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

ENV_FILE_VARIABLE = "CLAUDE_ISSUE_SOLVER_ENV"
BACKENDS = ("docker", "daytona")
AGENT_EGRESS = ("relay-only", "open")  # the agent's network: the Claude relay only, or DOCKER_NETWORK
ON_RED_TESTS = ("draft", "comment")  # what a still-red run publishes: a draft PR, or only a comment
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MASK = "***"

# GitHub: owner is 1-39 alphanumerics or single hyphens; repository names allow ".", "_" and "-".
_REPO_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38}/[A-Za-z0-9._-]{1,100}$")
_MEMORY_RE = re.compile(r"^[0-9]+[bkmgBKMG]?$")


class ConfigProblem(NamedTuple):
    """One thing wrong with the configuration: the key it is about and a line saying what is expected."""

    key: str
    message: str

    def __str__(self) -> str:
        return self.message


class ConfigError(Exception):
    """One or more configuration values are missing or malformed.

    ``problems`` holds one line per problem, each naming the key and the expected form. A single
    problem is the whole message; several are a count, then one indented line each.
    """

    def __init__(self, problems: str | Sequence[str | ConfigProblem]) -> None:
        self.problems: tuple[str, ...] = (
            (problems,) if isinstance(problems, str) else tuple(str(p) for p in problems)
        )
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            message = "\n  ".join([f"{len(self.problems)} configuration problems:", *self.problems])
        super().__init__(message)


# --- parsers: each takes the raw string and returns the value or raises ValueError(expected form) ---


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(f"an integer >= {minimum}") from None
        if value < minimum:
            raise ValueError(f"an integer >= {minimum}")
        return value

    return parse


def _optional_int_at_least(minimum: int) -> Callable[[str], int | None]:
    inner = _int_at_least(minimum)

    def parse(raw: str) -> int | None:
        return inner(raw) if raw.strip() else None

    return parse


def _float_above_zero(raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ValueError("a number > 0 (e.g. 2 or 1.5)") from None
    if value <= 0:
        raise ValueError("a number > 0 (e.g. 2 or 1.5)")
    return value


_NO_CAP = ("none", "off", "unlimited")


def _optional_usd(raw: str) -> float | None:
    """An amount of US dollars > 0 (a leading ``$`` allowed); ``none``/``off``/``unlimited``: no cap.

    The one rule for every budget key (``CLAUDE_MAX_BUDGET_USD``, ``DAILY_BUDGET_USD``).
    """
    expected = "an amount of US dollars > 0, e.g. 5 or 12.50 (blank or none: no cap)"
    text = raw.strip()
    if not text or text.lower() in _NO_CAP:
        return None
    try:
        amount = float(text.removeprefix("$").strip())
    except ValueError:
        raise ValueError(expected) from None
    if not math.isfinite(amount) or amount <= 0:
        raise ValueError(expected)
    return amount


def _optional_cap(raw: str) -> int | None:
    """A per-repository cap: an integer >= 1; blank or none: no cap."""
    text = raw.strip()
    if not text or text.lower() in _NO_CAP:
        return None
    try:
        value = int(text)
    except ValueError:
        raise ValueError("an integer >= 1 (blank or none: no cap)") from None
    if value < 1:
        raise ValueError("an integer >= 1 (blank or none: no cap)")
    return value


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("true or false")


def _text(raw: str) -> str:
    return raw.strip()


def _optional_text(raw: str) -> str | None:
    return raw.strip() or None


def repo_name_is_valid(repo: str) -> bool:
    return bool(_REPO_RE.match(repo))


def _repos(raw: str) -> tuple[str, ...]:
    if raw.strip() == "*":
        return ()  # every repository of the GitHub App's installations: see Config.app_wide
    repos = tuple(part.strip() for part in raw.split(",") if part.strip())
    for repo in repos:
        if not _REPO_RE.match(repo):
            raise ValueError(f"comma-separated owner/name pairs (got {repo!r})")
    if len(set(r.lower() for r in repos)) != len(repos):
        raise ValueError("comma-separated owner/name pairs without duplicates")
    return repos


def _url(raw: str) -> str:
    value = raw.strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError("an http:// or https:// URL")
    return value


def _optional_url(raw: str) -> str | None:
    return _url(raw) if raw.strip() else None


def _optional_cidrs(raw: str) -> str | None:
    """IPv4 networks, comma-separated (what Daytona's network allow list takes), normalised."""
    parts = [p.strip() for p in raw.split(",") if p.strip()]
    try:
        networks = [ipaddress.IPv4Network(p, strict=False) for p in parts]
    except ValueError:
        raise ValueError("IPv4 networks separated by commas, e.g. 140.82.112.0/20,10.1.0.0/16") from None
    return ",".join(str(n) for n in networks) or None


def _choice(options: tuple[str, ...], *, upper: bool = False) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().upper() if upper else raw.strip().lower()
        if value not in options:
            raise ValueError(" or ".join(options))
        return value

    return parse


def _label(raw: str) -> str:
    value = raw.strip()
    if not value or "," in value:
        raise ValueError("a non-empty label name without commas")
    return value


def _phrase(raw: str) -> str:
    value = raw.strip()
    if not value or any(c.isspace() for c in value):
        raise ValueError("a non-empty word such as @claude (no spaces)")
    return value


def _path(raw: str) -> Path:
    value = raw.strip()
    if not value:
        raise ValueError("a directory path")
    return Path(value).expanduser()


def _optional_path(raw: str) -> Path | None:
    return Path(raw.strip()).expanduser() if raw.strip() else None


def _memory(raw: str) -> str:
    value = raw.strip()
    if not _MEMORY_RE.match(value):
        raise ValueError("a size such as 4g or 512m")
    return value


def _network(raw: str) -> str:
    value = raw.strip()
    if not value or any(c.isspace() for c in value):
        raise ValueError("a Docker network mode: bridge, host, none or a network name")
    return value


def _listen_address(raw: str) -> tuple[str, int]:
    value = raw.strip()
    if value.isdigit():
        value = ":" + value
    host, sep, port = value.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"  # a port alone binds loopback
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError("host:port, e.g. 127.0.0.1:8080 (a port alone binds 127.0.0.1)")
    return host, int(port)


def _optional_listen_address(raw: str) -> tuple[str, int] | None:
    return _listen_address(raw) if raw.strip() else None


def _url_path(raw: str) -> str:
    value = raw.strip()
    if not value.startswith("/") or any(c.isspace() or c in "?#" for c in value):
        raise ValueError("a URL path starting with /, e.g. /webhook")
    return value


def _users(raw: str) -> tuple[str, ...]:
    return tuple(u.strip().lower() for u in raw.split(",") if u.strip())


@dataclass(frozen=True)
class Setting:
    """One configuration key: how to parse it, its default, and whether its value is secret."""

    key: str
    parse: Callable[[str], Any]
    default: Any
    secret: bool = False

    @property
    def field_name(self) -> str:
        return self.key.lower()


SETTINGS: tuple[Setting, ...] = (
    # GitHub access and what to watch
    Setting("GITHUB_TOKEN", _optional_text, None, secret=True),
    Setting("GITHUB_APP_ID", _optional_text, None),
    Setting("GITHUB_APP_PRIVATE_KEY_PATH", _optional_path, None),
    Setting("GITHUB_REPOS", _repos, ()),
    Setting("GITHUB_API_URL", _url, "https://api.github.com"),
    Setting("TRIGGER_LABEL", _label, "Claude"),
    Setting("TRUSTED_USERS", _users, ()),
    Setting("TRIGGER_PHRASE", _phrase, "@claude"),
    Setting("ALLOW_UNTRUSTED_LABELERS", _bool, False),
    # pull-request reviews (#22)
    Setting("REVIEW_LABEL", _label, "claude-review"),
    Setting("REVIEW_ON_OPEN", _bool, False),
    Setting("REVIEW_PROMPT", _optional_path, None),
    # the daemon
    Setting("POLL_INTERVAL", _int_at_least(1), 60),
    Setting("GITHUB_REQUESTS_PER_MINUTE", _int_at_least(10), 500),
    Setting("MAX_CONCURRENT", _int_at_least(1), 3),
    Setting("MAX_ATTEMPTS", _int_at_least(1), 2),
    Setting("TASK_TIMEOUT", _int_at_least(1), 3600),
    Setting("BACKEND", _choice(BACKENDS), "docker"),
    Setting("STATE_DIR", _path, None),  # default depends on XDG_STATE_HOME, see _default_state_dir
    Setting("LOG_LEVEL", _choice(LOG_LEVELS, upper=True), "INFO"),
    # costs and fair turns
    Setting("DAILY_BUDGET_USD", _optional_usd, None),
    Setting("REPO_MAX_CONCURRENT", _optional_cap, None),
    Setting("REPO_MAX_PER_HOUR", _optional_cap, None),
    # the HTTP listener: webhooks, /metrics, /healthz (off unless LISTEN_ADDRESS is set)
    Setting("LISTEN_ADDRESS", _optional_listen_address, None),
    Setting("WEBHOOKS", _bool, True),
    Setting("WEBHOOK_SECRET", _optional_text, None, secret=True),
    Setting("WEBHOOK_PATH", _url_path, "/webhook"),
    Setting("WEBHOOK_MAX_BYTES", _int_at_least(1024), 1_048_576),
    Setting("WEBHOOK_POLL_INTERVAL", _int_at_least(1), 1800),
    # the agent
    Setting("ANTHROPIC_API_KEY", _optional_text, None, secret=True),
    Setting("CLAUDE_CODE_OAUTH_TOKEN", _optional_text, None, secret=True),
    Setting("ANTHROPIC_BASE_URL", _optional_url, None),
    Setting("CLAUDE_MODEL", _optional_text, None),
    Setting("CLAUDE_MAX_TURNS", _optional_int_at_least(1), None),
    Setting("CLAUDE_MAX_BUDGET_USD", _optional_usd, None),
    Setting("CLAUDE_EXTRA_ARGS", _text, ""),
    Setting("CLAUDE_APPEND_SYSTEM_PROMPT", _optional_text, None),
    Setting("APPEND_SYSTEM_PROMPT_FILE", _optional_path, None),  # the operator's rules (operator_rules)
    Setting("MCP_CONFIG", _optional_path, None),  # the operator's MCP servers (operator_rules)
    Setting("AGENT_EGRESS", _choice(AGENT_EGRESS), "relay-only"),
    Setting("PROMPT_TEMPLATE_DIR", _optional_path, None),
    Setting("GIT_AUTHOR_NAME", _text, "Claude Issue Solver"),
    Setting("GIT_AUTHOR_EMAIL", _text, "claude-issue-solver@users.noreply.github.com"),
    # The repository's tests (issue #12): defaults for .github/claude-issue-solver.yml
    Setting("SETUP_COMMAND", _optional_text, None),
    Setting("TEST_COMMAND", _optional_text, None),
    Setting("TEST_TIMEOUT", _int_at_least(1), 600),
    Setting("TEST_FIX_ROUNDS", _int_at_least(0), 2),
    Setting("ON_RED_TESTS", _choice(ON_RED_TESTS), "draft"),
    Setting("SETUP_CACHE", _bool, True),
    Setting("TEST_RESULTS", _optional_text, None),
    Setting("TEST_STATUS", _bool, True),
    Setting("COMMIT_MAX_FILES", _int_at_least(1), 1000),
    Setting("COMMIT_MAX_LINES", _int_at_least(1), 100_000),
    Setting("PREWARM_INTERVAL", _int_at_least(0), 1800),  # seconds; 0: no pre-warming (prewarm)
    # the Docker backend
    Setting("DOCKER_IMAGE", _optional_text, None),
    Setting("DOCKER_BASE_IMAGE", _text, "node:20-bookworm-slim"),
    Setting("DOCKER_MEMORY", _memory, "4g"),
    Setting("DOCKER_CPUS", _float_above_zero, 2.0),
    Setting("DOCKER_NETWORK", _network, "bridge"),
    Setting("DOCKER_PIDS_LIMIT", _int_at_least(16), 512),
    # the Daytona backend
    Setting("DAYTONA_API_KEY", _optional_text, None, secret=True),
    Setting("DAYTONA_API_URL", _url, "https://app.daytona.io/api"),
    Setting("DAYTONA_TARGET", _optional_text, None),
    Setting("DAYTONA_SNAPSHOT", _text, "claude-issue-solver"),
    Setting("DAYTONA_CPU", _int_at_least(1), 2),
    Setting("DAYTONA_MEMORY_GB", _int_at_least(1), 4),
    Setting("DAYTONA_DISK_GB", _int_at_least(1), 10),
    Setting("DAYTONA_AUTO_DELETE_MINUTES", _int_at_least(-1), 1440),
    Setting("DAYTONA_POLL_INTERVAL", _float_above_zero, 2.0),
    Setting("DAYTONA_NETWORK_ALLOW_LIST", _optional_cidrs, None),
)

_BY_KEY = {s.key: s for s in SETTINGS}
# Settings the Claude CLI reads from its environment that we pass through to the agent unchanged.
AGENT_ENV_PREFIXES = ("CLAUDE_CODE_", "API_TIMEOUT_MS", "DISABLE_", "ANTHROPIC_MODEL")


@dataclass(frozen=True)
class Config:
    """The validated configuration. Build it with :func:`load_config`."""

    github_token: str | None = None
    github_app_id: str | None = None
    github_app_private_key_path: Path | None = None
    github_repos: tuple[str, ...] = ()
    github_api_url: str = "https://api.github.com"
    trigger_label: str = "Claude"
    trusted_users: tuple[str, ...] = ()
    trigger_phrase: str = "@claude"
    allow_untrusted_labelers: bool = False
    review_label: str = "claude-review"
    review_on_open: bool = False
    review_prompt: Path | None = None
    poll_interval: int = 60
    github_requests_per_minute: int = 500
    max_concurrent: int = 3
    max_attempts: int = 2
    task_timeout: int = 3600
    backend: str = "docker"
    state_dir: Path = field(default_factory=lambda: _default_state_dir(os.environ))
    log_level: str = "INFO"
    daily_budget_usd: float | None = None
    repo_max_concurrent: int | None = None
    repo_max_per_hour: int | None = None
    listen_address: tuple[str, int] | None = None
    webhooks: bool = True
    webhook_secret: str | None = None
    webhook_path: str = "/webhook"
    webhook_max_bytes: int = 1_048_576
    webhook_poll_interval: int = 1800
    anthropic_api_key: str | None = None
    claude_code_oauth_token: str | None = None
    anthropic_base_url: str | None = None
    claude_model: str | None = None
    claude_max_turns: int | None = None
    claude_max_budget_usd: float | None = None
    claude_extra_args: str = ""
    claude_append_system_prompt: str | None = None
    append_system_prompt_file: Path | None = None  # its text is appended to the agent's system prompt
    mcp_config: Path | None = None  # a JSON file of MCP servers: --mcp-config, --strict-mcp-config
    agent_egress: str = "relay-only"  # relay-only: agent, test and fix processes reach only the relay
    prompt_template_dir: Path | None = None
    git_author_name: str = "Claude Issue Solver"
    git_author_email: str = "claude-issue-solver@users.noreply.github.com"
    setup_command: str | None = None
    test_command: str | None = None
    test_timeout: int = 600
    test_fix_rounds: int = 2
    on_red_tests: str = "draft"
    setup_cache: bool = True  # restore a saved setup instead of running it (where the backend can)
    test_results: str | None = None  # a glob of the JUnit XML files the test command writes
    test_status: bool = True  # a commit status (claude-issue-solver/tests) on the pushed head
    commit_max_files: int = 1000  # a commit with more changed files is refused, not pushed
    commit_max_lines: int = 100_000  # likewise for more added lines (git's diffstat)
    prewarm_interval: int = 1800  # run setup ahead of tasks, per repository, this often (0: never)
    docker_image: str | None = None
    docker_base_image: str = "node:20-bookworm-slim"
    docker_memory: str = "4g"
    docker_cpus: float = 2.0
    docker_network: str = "bridge"
    docker_pids_limit: int = 512
    daytona_api_key: str | None = None
    daytona_api_url: str = "https://app.daytona.io/api"
    daytona_target: str | None = None
    daytona_snapshot: str = "claude-issue-solver"
    daytona_cpu: int = 2
    daytona_memory_gb: int = 4
    daytona_disk_gb: int = 10
    daytona_auto_delete_minutes: int = 1440
    daytona_poll_interval: float = 2.0
    daytona_network_allow_list: str | None = None  # IPv4 CIDRs, normalised, comma-separated
    # Extra CLAUDE_CODE_* / DISABLE_* variables found in the environment, passed to the agent as-is.
    agent_env: tuple[tuple[str, str], ...] = ()
    # The .env file these settings were read from (absolute), or None: the environment only.
    settings_file: Path | None = None

    @property
    def app_wide(self) -> bool:
        """Watch every repository of every installation of the GitHub App (no GITHUB_REPOS, or ``*``)."""
        return bool(self.github_app_id and self.github_app_private_key_path) and not self.github_repos

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "daemon.pid"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    def secrets(self) -> list[str]:
        """Every secret value in force, for the log redaction filter."""
        values = [getattr(self, s.field_name) for s in SETTINGS if s.secret]
        return [v for v in values if isinstance(v, str) and v]

    def redacted(self) -> dict[str, str]:
        """Each key with its value as a person may see it: secrets as ``***``."""
        shown: dict[str, str] = {}
        for setting in SETTINGS:
            value = getattr(self, setting.field_name)
            if setting.secret:
                shown[setting.key] = MASK if value else ""
            elif setting.key == "LISTEN_ADDRESS" and value is not None:
                shown[setting.key] = f"{value[0]}:{value[1]}"
            elif isinstance(value, tuple):
                shown[setting.key] = ",".join(value)
            elif isinstance(value, bool):
                shown[setting.key] = "true" if value else "false"
            elif value is None:
                shown[setting.key] = ""
            else:
                shown[setting.key] = str(value)
        return shown

    def daemon_problems(self) -> list[ConfigProblem]:
        """What ``start`` needs beyond parsing, one line per missing piece: a GitHub credential and
        something to watch (and a Daytona key for that backend)."""
        problems: list[ConfigProblem] = []

        def problem(key: str, message: str) -> None:
            problems.append(ConfigProblem(key, message))

        if bool(self.github_app_id) != bool(self.github_app_private_key_path):
            key = "GITHUB_APP_PRIVATE_KEY_PATH" if self.github_app_id else "GITHUB_APP_ID"
            problem(key, "GITHUB_APP_ID and GITHUB_APP_PRIVATE_KEY_PATH go together: set both or neither")
        elif not self.github_token and not self.github_app_id:
            problem(
                "GITHUB_TOKEN",
                "GITHUB_TOKEN is not set: expected a GitHub token with repo access "
                "(or GITHUB_APP_ID and GITHUB_APP_PRIVATE_KEY_PATH for a GitHub App)",
            )
        if self.github_app_private_key_path and not self.github_app_private_key_path.is_file():
            problem(
                "GITHUB_APP_PRIVATE_KEY_PATH",
                f"GITHUB_APP_PRIVATE_KEY_PATH={self.github_app_private_key_path} does not exist: "
                "expected the path of the App's .pem private key",
            )
        if not self.github_repos and not (self.github_app_id and self.github_app_private_key_path):
            problem(
                "GITHUB_REPOS",
                "GITHUB_REPOS is not set: expected comma-separated owner/name pairs, e.g. acme/widgets "
                "(or, with a GitHub App, * or nothing for every repository it is installed on)",
            )
        if self.listen_address and self.webhooks and not self.webhook_secret:
            problem(
                "WEBHOOK_SECRET",
                "WEBHOOK_SECRET is not set: the listener on LISTEN_ADDRESS takes GitHub webhooks only "
                "when signed; set the secret you give GitHub (e.g. openssl rand -hex 32), or WEBHOOKS=false "
                "for /metrics and /healthz alone",
            )
        if self.backend == "daytona" and not self.daytona_api_key:
            problem(
                "DAYTONA_API_KEY",
                "DAYTONA_API_KEY is not set: expected a Daytona API key when BACKEND=daytona",
            )
        return problems

    def require_daemon_settings(self) -> None:
        """Raise :class:`ConfigError` listing every one of :meth:`daemon_problems`, if there are any."""
        problems = self.daemon_problems()
        if problems:
            raise ConfigError(problems)


def _default_state_dir(environ: Mapping[str, str]) -> Path:
    home = environ.get("HOME") or "~"
    base = environ.get("XDG_STATE_HOME") or str(Path(home) / ".local" / "state")
    return Path(base).expanduser() / "claude-issue-solver"


def resolve_env_file(
    env_file: Path | None, environ: Mapping[str, str], cwd: Path | None = None
) -> Path | None:
    """Which ``.env`` file to read: the explicit one, then ``$CLAUDE_ISSUE_SOLVER_ENV``, then ``./.env``."""
    if env_file is not None:
        if not env_file.is_file():
            msg = f"--env-file {env_file} does not exist: expected a readable .env file"
            raise ConfigError(msg)
        return env_file
    named = environ.get(ENV_FILE_VARIABLE, "").strip()
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            msg = f"{ENV_FILE_VARIABLE}={named} does not exist: expected a readable .env file"
            raise ConfigError(msg)
        return path
    local = (cwd or Path.cwd()) / ".env"
    return local if local.is_file() else None


def settings_source(config: Config, cwd: Path | None = None) -> str:
    """Where ``config`` came from, in words: the settings file, or where one was looked for."""
    if config.settings_file is not None:
        return f"{config.settings_file} (the environment wins over it)"
    here = cwd or Path.cwd()
    return (
        f"none found (looked for --env-file, ${ENV_FILE_VARIABLE}, ./.env in {here}); "
        "using the environment only"
    )


def _read_env_file(path: Path) -> tuple[dict[str, str], list[ConfigProblem]]:
    """The file's ``KEY=value`` pairs, and one problem per line that does not parse."""
    from dotenv.parser import parse_stream

    try:
        with path.open(encoding="utf-8") as handle:
            bindings = list(parse_stream(handle))
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"cannot read env file {path}: {exc}"
        raise ConfigError(msg) from None
    values = {b.key: b.value for b in bindings if b.key is not None and b.value is not None}
    # The line itself is not shown: it may hold a secret.
    problems = [
        ConfigProblem(
            str(path), f"{path}, line {b.original.line}: cannot be parsed: expected KEY=value (quotes closed)"
        )
        for b in bindings
        if b.error
    ]
    return values, problems


def read_env_file(path: Path) -> dict[str, str]:
    return _read_env_file(path)[0]


def check_config(
    env_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    cwd: Path | None = None,
) -> tuple[Config, list[ConfigProblem]]:
    """Read and validate every key, collecting the problems instead of stopping at the first.

    Returns the configuration, with every bad key left at its default, and one line per problem
    (empty when all is well). Only a settings file that is missing or unreadable raises
    :class:`ConfigError`, since then there is nothing to check. ``doctor`` uses this to list every
    problem at once; everything else uses :func:`load_config`.
    """
    env = dict(os.environ if environ is None else environ)
    path = resolve_env_file(env_file, env, cwd)
    file_values, problems = _read_env_file(path) if path else ({}, [])
    # Blank is "not set" at every layer, so a blank line in the file (or an empty variable in the
    # environment, as compose files produce) leaves the key at its default, computed ones included.
    merged = {k: v for k, v in file_values.items() if v.strip()}
    merged.update((k, v) for k, v in env.items() if v.strip())

    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = merged.get(setting.key)
        if raw is None:
            continue
        try:
            values[setting.field_name] = setting.parse(raw)
        except ValueError as exc:
            shown = "(hidden)" if setting.secret else repr(raw)
            problems.append(ConfigProblem(setting.key, f"{setting.key}={shown} is not valid: expected {exc}"))
    if "state_dir" not in values:
        values["state_dir"] = _default_state_dir(merged)
    values["agent_env"] = tuple(
        sorted((k, v) for k, v in merged.items() if k.startswith(AGENT_ENV_PREFIXES) and k not in _BY_KEY)
    )
    values["settings_file"] = path.absolute() if path else None
    known = {f.name for f in fields(Config)}
    return Config(**{k: v for k, v in values.items() if k in known}), problems


def load_config(
    env_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    cwd: Path | None = None,
) -> Config:
    """Merge the ``.env`` file with the environment (a value set in the environment wins) and validate
    every key; a :class:`ConfigError` lists every bad key, one per line."""
    config, problems = check_config(env_file, environ, cwd=cwd)
    if problems:
        raise ConfigError(problems)
    return config
