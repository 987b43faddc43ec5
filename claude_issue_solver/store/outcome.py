"""How a run ends and what it watches while it works: the types the daemon and its runner share.

Kept apart from both so that the pipeline (the runner) does not import the daemon that drives it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from claude_issue_solver.store.queue import TaskState

__all__ = ["Outcome", "TaskControl"]


@dataclass
class TaskControl:
    """What a runner watches while it works.

    ``detach`` is set when the daemon shuts down: leave the work running (it is recorded as running and
    picked up again on the next start) and return ``None``. ``cancel`` is set when an operator cancels the
    task: stop the work, clean up, return a ``CANCELLED`` outcome.
    """

    detach: threading.Event = field(default_factory=threading.Event)
    cancel: threading.Event = field(default_factory=threading.Event)

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True as soon as either event is set."""
        deadline = time.monotonic() + seconds
        while True:
            if self.detach.is_set() or self.cancel.is_set():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.cancel.wait(min(remaining, 0.2))


@dataclass
class Outcome:
    """How a run ended. ``PENDING`` means: put the task back in line (its run was lost)."""

    state: TaskState
    error: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
