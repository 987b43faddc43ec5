"""``doctor``: check what ``start`` depends on, one thing at a time, and say how to fix what fails.

Every check runs on its own: one that fails (or crashes) never stops the others, and its exception
becomes a readable line, not a traceback. Nothing is written to GitHub: access is judged from what
GitHub reports (the repository's ``permissions``, a classic token's scopes, an App installation's
permissions) and from read-only requests. Every line passes through the secret redactor before it
leaves this module, so no credential is ever shown.
"""

from claude_issue_solver.cli.doctor.core import Check, diagnose, render, run_checks, to_json

__all__ = ["Check", "diagnose", "render", "run_checks", "to_json"]
