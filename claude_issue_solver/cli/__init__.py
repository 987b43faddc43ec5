"""The operator's surfaces: the command line, doctor, the status rendering, the service unit, the demo."""

from claude_issue_solver.cli.main import main

__all__ = ["main"]
