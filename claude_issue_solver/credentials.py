"""The git credential: what GitHub hands out and the backends pass to exactly one git command."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GitCredential"]


@dataclass(frozen=True)
class GitCredential:
    """A short-lived credential for one git command against GitHub over HTTPS."""

    username: str
    password: str

    def __repr__(self) -> str:  # never shows the secret, even in a traceback's locals
        return f"GitCredential(username={self.username!r}, password='***')"
