"""A systemd unit for the daemon: render it from the packaged template, install it, say how to enable it.

The unit runs ``start --foreground`` (systemd supervises the process; the daemon's own backgrounding is
for people without a service manager) with the settings file given as ``--env-file``.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "UNIT_NAME",
    "ServiceError",
    "enable_instructions",
    "install",
    "render_unit",
    "unit_path",
    "unit_template",
]

UNIT_NAME = "claude-issue-solver.service"
SERVICE = UNIT_NAME.removesuffix(".service")
# Only for system units: these set up a mount namespace, which a user manager can do only with
# unprivileged user namespaces (not everywhere), and a unit that cannot start is worse than none.
SYSTEM_HARDENING = (
    "ProtectSystem=full",
    "ProtectKernelTunables=true",
    "ProtectKernelModules=true",
    "ProtectControlGroups=true",
    "RestrictSUIDSGID=true",
)
# A user manager has no network-online.target and cannot order itself after the system's docker.service;
# the daemon retries (Restart=on-failure) until Docker answers.
SYSTEM_ORDERING = ("Wants=network-online.target", "After=network-online.target docker.service")
_USER_NAME_RE = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_.-]*\$?|[0-9]+)$")
_NEEDS_QUOTES_RE = re.compile(r"[\s\"'\\;]")


class ServiceError(Exception):
    """The unit cannot be rendered or installed; the message says why and what to do."""


def unit_template() -> str:
    """The unit template: packaged data in an installed wheel, else ``contrib/`` of the source checkout."""
    package_dir = Path(__file__).resolve().parents[1]
    for path in (package_dir / "data" / UNIT_NAME, package_dir.parent / "contrib" / UNIT_NAME):
        if path.is_file():
            return path.read_text(encoding="utf-8")
    msg = f"the unit template {UNIT_NAME} is missing from this installation; reinstall claude-issue-solver"
    raise ServiceError(msg)


def render_unit(
    *,
    user_mode: bool,
    env_file: Path,
    executable: Sequence[str] | None = None,
    working_dir: Path | None = None,
    run_as: str | None = None,
) -> str:
    """The unit's text. ``executable`` is the argv that runs the CLI (default: this Python with
    ``-m claude_issue_solver``); ``working_dir`` defaults to the settings file's directory; ``run_as``
    (system units only) is the ``User=`` to run as."""
    argv = list(executable) if executable is not None else [sys.executable, "-m", "claude_issue_solver"]
    if not argv or not argv[0]:
        msg = "no executable to run: expected the command that starts claude-issue-solver"
        raise ServiceError(msg)
    program = Path(argv[0]).expanduser()
    if not program.is_absolute():
        msg = f"the executable {argv[0]!r} is not an absolute path, which systemd requires"
        raise ServiceError(msg)
    argv[0] = str(program)
    env_path = _absolute(env_file)
    workdir = _absolute(working_dir) if working_dir is not None else env_path.parent
    if run_as is not None and user_mode:
        msg = "a user unit always runs as its user: --run-as applies to system units only"
        raise ServiceError(msg)
    if run_as is not None and not _USER_NAME_RE.match(run_as):
        msg = f"{run_as!r} is not a user name or uid systemd accepts for User="
        raise ServiceError(msg)

    single = {
        "@EXEC@": " ".join(_exec_word(word) for word in argv),
        "@ENV_FILE_ARG@": _exec_word(str(env_path)),
        "@ENV_FILE@": _path_value(env_path),
        "@WORKDIR@": _path_value(workdir),
        "@WANTED_BY@": "default.target" if user_mode else "multi-user.target",
    }
    documentation = _documentation()
    whole_lines = {
        "@DOCUMENTATION_LINE@": [f"Documentation={documentation}"] if documentation else [],
        "@ORDERING@": [] if user_mode else list(SYSTEM_ORDERING),
        "@USER_LINE@": [f"User={run_as}"] if run_as else [],
        "@HARDENING@": [] if user_mode else list(SYSTEM_HARDENING),
    }
    lines: list[str] = []
    for line in unit_template().splitlines():
        if line.strip() in whole_lines:
            lines.extend(whole_lines[line.strip()])
            continue
        for placeholder, value in single.items():
            line = line.replace(placeholder, value)
        lines.append(line)
    text = "\n".join(lines) + "\n"
    left = sorted(set(re.findall(r"@[A-Z_]+@", text)))
    if left:
        msg = f"the unit template has placeholders this version does not fill: {', '.join(left)}"
        raise ServiceError(msg)
    return text


def unit_path(user_mode: bool, *, home: Path | None = None) -> Path:
    """Where systemd looks for the unit: the user's config directory, or ``/etc/systemd/system``."""
    if not user_mode:
        return Path("/etc/systemd/system") / UNIT_NAME
    if home is not None:
        config_home = home / ".config"
    else:
        xdg = os.environ.get("XDG_CONFIG_HOME")
        config_home = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".config"
    return config_home / "systemd" / "user" / UNIT_NAME


def install(
    *,
    user_mode: bool,
    env_file: Path,
    home: Path | None = None,
    dest: Path | None = None,
    executable: Sequence[str] | None = None,
    working_dir: Path | None = None,
    run_as: str | None = None,
) -> Path:
    """Write the unit (replacing an earlier one) and return its path; the settings file must exist."""
    env_path = _absolute(env_file)
    if not env_path.is_file():
        msg = (
            f"the settings file {env_path} does not exist: the service reads its settings from it; "
            "create it first (cp .env.example .env) and pass it with --env-file"
        )
        raise ServiceError(msg)
    text = render_unit(
        user_mode=user_mode, env_file=env_path, executable=executable, working_dir=working_dir, run_as=run_as
    )
    path = dest or unit_path(user_mode, home=home)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, text)
    except PermissionError:
        hint = "" if user_mode else "; a system unit needs root (sudo), or install a user unit with --user"
        msg = f"cannot write {path}: permission denied{hint}"
        raise ServiceError(msg) from None
    except OSError as exc:
        msg = f"cannot write {path}: {exc.strerror or exc}"
        raise ServiceError(msg) from None
    return path


def enable_instructions(user_mode: bool) -> str:
    """The commands that load, enable and start the installed unit, and where its log is."""
    if user_mode:
        return "\n".join(
            [
                "Enable and start it (and again after each change to the unit):",
                f"  systemctl --user daemon-reload && systemctl --user enable --now {SERVICE}",
                "Its log:",
                f"  journalctl --user -u {SERVICE} -f",
                "Keep it running while you are logged out, and start it at boot:",
                "  loginctl enable-linger $USER",
            ]
        )
    return "\n".join(
        [
            "Enable and start it, as root (and again after each change to the unit):",
            f"  systemctl daemon-reload && systemctl enable --now {SERVICE}",
            "Its log:",
            f"  journalctl -u {SERVICE} -f",
        ]
    )


# --- helpers ----------------------------------------------------------------------------------------


def _absolute(path: Path) -> Path:
    # Not resolve(): a symlinked settings file or a virtualenv's python must keep the name it was given.
    absolute = path.expanduser().absolute()
    if "\n" in str(absolute):
        msg = f"{absolute!r} contains a newline, which a unit file cannot express"
        raise ServiceError(msg)
    return absolute


def _exec_word(word: str) -> str:
    """One argument of ExecStart=: systemd expands ``%`` specifiers and ``$`` variables, and splits on
    whitespace unless quoted (C-style escapes inside quotes)."""
    if "\n" in word:
        msg = f"{word!r} contains a newline, which a unit file cannot express"
        raise ServiceError(msg)
    word = word.replace("%", "%%").replace("$", "$$")
    if word and not _NEEDS_QUOTES_RE.search(word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _path_value(path: Path) -> str:
    # Path settings take the rest of the line as is (spaces included); only specifiers need escaping.
    return str(path).replace("%", "%%")


def _documentation() -> str | None:
    """A URL for Documentation=: the project's, once packaging declares one; else the README of a checkout."""
    from importlib import metadata

    try:
        meta = metadata.metadata("claude-issue-solver")
        urls = [entry.split(",", 1)[-1].strip() for entry in meta.get_all("Project-URL") or []]
        urls.append(meta.get("Home-page") or "")
    except metadata.PackageNotFoundError:
        urls = []
    for url in urls:
        if url.startswith(("https://", "http://")):
            return url
    readme = Path(__file__).resolve().parents[2] / "README.md"
    return readme.as_uri() if readme.is_file() else None


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)  # systemd and `systemctl cat` read it as any user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
