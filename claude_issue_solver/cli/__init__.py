"""The operator's surfaces: the command line, doctor, the status rendering, the service unit, the demo."""

from claude_issue_solver.cli import setup, tasks  # noqa: F401  (their commands join main)
from claude_issue_solver.cli.main import main

__all__ = ["main"]
