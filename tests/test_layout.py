"""The package's layout is its architecture: layers in sub-packages, imports pointing one way.

    cli (the operator's surfaces)  ->  app  ->  run | daemon  ->  github | backends  ->  store | relay
                                   ->  the foundation (config, conventions, credentials, logs, limits, ...)

A module may import its own layer and the layers below it, never one above, nor a sibling of its own
rank (the daemon drives a runner it does not import; the pipeline never imports the daemon). Every
import counts, those inside functions too. Besides: which kind a task is, is asked in one place (the
kinds' registry); no module is longer than 700 lines but the demo's loopback GitHub; and ``status``
and ``--help`` load neither PyGithub, docker, the Daytona SDK nor aiohttp.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "claude_issue_solver"
NAME = "claude_issue_solver"
# The layer of each top-level name of the package, and its rank: lower ranks are imported by higher.
RANKS = {
    "": 0,  # the foundation: the top-level modules below
    "demo_world": 0,
    "store": 1,
    "relay": 1,
    "github": 2,
    "backends": 2,
    "run": 3,
    "daemon": 3,
    "app": 4,
    "cli": 5,
    "__main__": 6,
}
FOUNDATION = {"__init__", "config", "conventions", "credentials", "limits", "logs", "stream_events"}
LONGEST = 700
TASK_KINDS = ("issue", "followup")
LONGER_ALLOWED = {
    "demo_world/github.py",  # the loopback GitHub of the demo
}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        dotted = ".".join((NAME, *parts)).removesuffix(".__init__")
        found[dotted] = path
    return found


def layer(module: str) -> str:
    parts = module.split(".")[1:]
    if not parts:
        return ""
    head = parts[0]
    if len(parts) == 1 and head in FOUNDATION:
        return ""
    assert head in RANKS, f"{module} is in no layer: add it to one (or to RANKS) in {__file__}"
    return head


def imports(path: Path, module: str) -> set[str]:
    """Every module of the package ``path`` imports, at its top or inside a function."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith(NAME)}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    [*package.split(".")[: len(package.split(".")) - node.level + 1], base]
                ).strip(".")
            if not base.startswith(NAME):
                continue
            for alias in node.names:  # "from pkg import module" names a module
                candidate = f"{base}.{alias.name}"
                found.add(
                    candidate
                    if (PACKAGE.parent / candidate.replace(".", "/")).with_suffix(".py").exists()
                    or (PACKAGE.parent / candidate.replace(".", "/")).is_dir()
                    else base
                )
    return found


def test_every_import_points_down_the_layers() -> None:
    wrong = []
    for module, path in modules().items():
        mine = layer(module)
        for target in imports(path, module):
            theirs = layer(target)
            if theirs != mine and RANKS[theirs] >= RANKS[mine]:
                wrong.append(f"{module} ({mine or 'foundation'}) imports {target} ({theirs or 'foundation'})")
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_a_kind_is_chosen_in_one_place() -> None:
    """``task.kind`` is compared only where a kind is chosen: the registry, the queue that makes tasks of
    a kind, and the GitHub side that decides which kind a trigger makes. The pipeline, the texts, the
    rendering and the daemon ask the task's kind instead."""
    allowed = {
        f"{NAME}.run.kinds",
        f"{NAME}.store.queue",
        f"{NAME}.github.watcher",
        f"{NAME}.github.intake",  # the watcher's per-issue part: a labelled issue makes an issue task
        f"{NAME}.github.triggers",
        f"{NAME}.cli.demo",
    }
    found = []
    for module, path in modules().items():
        if module in allowed or module.startswith(f"{NAME}.demo_world"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare):
                names = [node.left, *node.comparators]
                named = [n for n in names if isinstance(n, ast.Name) and n.id in ("FOLLOWUP", "ISSUE")]
                spelled = [n for n in names if isinstance(n, ast.Constant) and n.value in TASK_KINDS]
                if named or (
                    spelled and any(isinstance(n, ast.Attribute) and n.attr == "kind" for n in names)
                ):
                    found.append(f"{module}:{node.lineno}")
    assert not found, "a kind compared outside the registry: " + ", ".join(found)


def test_no_module_is_longer_than_700_lines() -> None:
    long = {
        str(path.relative_to(PACKAGE)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > LONGEST
    }
    assert set(long) <= LONGER_ALLOWED, long


@pytest.mark.parametrize("argv", [["--help"], ["status"], ["queue", "--all"]])
def test_status_and_help_load_no_heavy_library(argv: list[str], tmp_path: Path) -> None:
    """The kinds' texts (a task's trigger in ``queue``) come without the run's heavy libraries too."""
    probe = (
        "import sys\n"
        "from claude_issue_solver.config import load_config\n"
        "from claude_issue_solver.store.queue import TaskQueue\n"
        "from claude_issue_solver.store.state import StateStore\n"
        "queue = TaskQueue(StateStore(load_config(None).state_file))\n"
        "queue.submit('acme/widgets', 1, 'an issue')\n"
        "meta = {'triggers': [{'author': 'a'}]}\n"
        "queue.submit('acme/widgets', 2, 'a request', kind='followup', meta=meta)\n"
        "from claude_issue_solver.cli import main\n"
        f"try:\n    main({argv!r}, standalone_mode=False)\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('github', 'docker', 'daytona', 'daytona_sdk', 'aiohttp') if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "PYTHONPATH": str(PACKAGE.parent),
        "GITHUB_TOKEN": "ghp_" + "0" * 36,
        "GITHUB_REPOS": "acme/widgets",
        "STATE_DIR": str(tmp_path / "state"),
    }
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "HEAVY=\n" in done.stdout + "\n" and "HEAVY=" in done.stdout, done.stdout
    if argv[0] == "queue":
        assert "@a" in done.stdout and "label" in done.stdout  # each kind's trigger, as the kind tells
