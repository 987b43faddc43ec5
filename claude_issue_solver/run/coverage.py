"""Total line coverage from a Cobertura XML file (``coverage:`` in the repository's settings file).

Cobertura is what coverage.py (``coverage xml``, ``pytest --cov-report=xml``), Istanbul/nyc/Jest
(``cobertura`` reporter), gcovr, JaCoCo converters and ``gocover-cobertura`` write, and what GitLab and
Codecov read. Only the root ``<coverage>`` element's totals are used: ``lines-covered`` /
``lines-valid`` when both are there, else ``line-rate``. The file was written in a tree the agent and
the repository's own code wrote, so it is untrusted input: it is read through ``Backend.read_file``
(no link followed, at most :data:`FILE_LIMIT` bytes) and parsed with ``defusedxml`` (every DTD, entity
declaration and external reference refused). Anything else is a :class:`CoverageError` with one
readable line, never a crash.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["FILE_LIMIT", "Coverage", "CoverageError", "delta_text", "parse_cobertura"]

FILE_LIMIT = 32 * 1024 * 1024  # bytes of a coverage file read (a larger one is cut: a parse error)


class CoverageError(Exception):
    """The file is not usable Cobertura XML; the message says why, in one line."""


@dataclass(frozen=True)
class Coverage:
    """A run's total line coverage: ``percent`` (0-100) and, when the file says, the line counts."""

    percent: float
    covered: int | None = None
    valid: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"percent": round(self.percent, 2), "covered": self.covered, "valid": self.valid}

    @classmethod
    def from_dict(cls, data: Any) -> Coverage | None:
        if not isinstance(data, dict) or not isinstance(data.get("percent"), (int, float)):
            return None
        return cls(float(data["percent"]), data.get("covered"), data.get("valid"))

    def text(self) -> str:
        lines = f" ({self.covered} of {self.valid} lines)" if self.valid else ""
        return f"{self.percent:.1f}%{lines}"


def parse_cobertura(data: bytes) -> Coverage:
    """The total line coverage of a Cobertura XML document. Raises CoverageError."""
    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import fromstring

    try:
        root = fromstring(data)
    except DefusedXmlException as exc:
        msg = f"refused: {type(exc).__name__} (DTDs, entities and external references are not read)"
        raise CoverageError(msg) from None
    except Exception as exc:  # ParseError, and whatever else expat says about junk
        msg = f"not XML: {exc}"
        raise CoverageError(msg) from None
    if root.tag != "coverage":
        msg = f"not Cobertura XML: the root element is <{root.tag}>, not <coverage>"
        raise CoverageError(msg)
    covered, valid = _count(root.get("lines-covered")), _count(root.get("lines-valid"))
    if covered is not None and valid is not None and covered <= valid:
        return Coverage(100.0 * covered / valid if valid else 100.0, covered, valid)
    rate = root.get("line-rate")
    try:
        value = float(rate) if rate is not None else math.nan
    except ValueError:
        value = math.nan
    if not (0.0 <= value <= 1.0):
        msg = f"no usable total: line-rate={rate!r}, lines-covered={root.get('lines-covered')!r}"
        raise CoverageError(msg)
    return Coverage(100.0 * value)


def _count(text: str | None) -> int | None:
    if text is None or not text.strip().isdigit():
        return None
    return int(text)


def delta_text(after: Coverage | None, before: Coverage | None) -> str | None:
    """ "82.5% (+1.3 points against the baseline's 81.2%)"; None without a figure after."""
    if after is None:
        return None
    if before is None:
        return after.text()
    delta = after.percent - before.percent
    sign = "+" if delta >= 0.05 else ("-" if delta <= -0.05 else "±")
    return f"{after.text()}, {sign}{abs(delta):.1f} points against {before.percent:.1f}% before"
