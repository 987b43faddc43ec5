"""What the Messages API's answers cost: the price of each model, and a task's usage summed up."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# -- metering -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Price:
    """Dollars per million tokens (and per web search request)."""

    input: float
    output: float
    cache_write_5m: float
    cache_write_1h: float
    cache_read: float
    web_search: float = 0.01


# The table Claude Code 2.1.197 prices its runs with (its modelUsage/total_cost_usd), so the relay's
# figure equals the CLI's. Matched in this order on the lower-cased model id, as the CLI matches.
_SONNET = Price(3, 15, 3.75, 6, 0.3)
_OPUS_4 = Price(15, 75, 18.75, 30, 1.5)
_OPUS_45 = Price(5, 25, 6.25, 10, 0.5)
_OPUS_FAST = Price(30, 150, 37.5, 60, 3)  # "speed": "fast" on Opus 4.6/4.7
_TIER_10 = Price(10, 50, 12.5, 20, 1)
_HAIKU_45 = Price(1, 5, 1.25, 2, 0.1)
_HAIKU_35 = Price(0.8, 4, 1, 1.6, 0.08)
_FAMILIES: tuple[tuple[str, re.Pattern[str], Price], ...] = tuple(
    (name, re.compile(pattern), price)
    for name, pattern, price in (
        ("claude-fable-5", r"claude-fable-5", _TIER_10),
        ("claude-mythos-5", r"claude-mythos-5", _TIER_10),
        ("claude-opus-4-8", r"claude-opus-4-8", _OPUS_45),
        ("claude-opus-4-7", r"claude-opus-4-7", _OPUS_45),
        ("claude-opus-4-6", r"claude-opus-4-6", _OPUS_45),
        ("claude-opus-4-5", r"claude-opus-4-5", _OPUS_45),
        ("claude-opus-4-1", r"claude-opus-4-1", _OPUS_4),
        ("claude-opus-4-0", r"claude-opus-4(?!-\d(?!\d))", _OPUS_4),
        ("claude-sonnet-5", r"claude-sonnet-5", _SONNET),
        ("claude-sonnet-4-6", r"claude-sonnet-4-6", _SONNET),
        ("claude-sonnet-4-5", r"claude-sonnet-4-5", _SONNET),
        ("claude-sonnet-4-0", r"claude-sonnet-4(?!-\d(?!\d))", _SONNET),
        ("claude-haiku-4-5", r"claude-haiku-4-5", _HAIKU_45),
        ("claude-3-7-sonnet", r"claude-3-7-sonnet", _SONNET),
        ("claude-3-5-sonnet", r"claude-3-5-sonnet", _SONNET),
        ("claude-3-5-haiku", r"claude-3-5-haiku", _HAIKU_35),
    )
)
# A model the table does not know is priced as the CLI does without a better guess: Opus 4.5's rates.
_FALLBACK = ("unknown", _OPUS_45)


def price_for(model: str, *, speed: str | None = None) -> tuple[str, Price, bool]:
    """(family, price, known) for a model id (``claude-sonnet-4-5-20250929``, ``us.anthropic.…``)."""
    lowered = model.lower()
    for name, pattern, price in _FAMILIES:
        if pattern.search(lowered):
            if speed == "fast" and name in ("claude-opus-4-6", "claude-opus-4-7"):
                return name, _OPUS_FAST, True
            if speed == "fast" and name == "claude-opus-4-8":
                return name, _TIER_10, True
            return name, price, True
    return _FALLBACK[0], _FALLBACK[1], False


def _num(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return int(value)


def cost_usd(model: str, usage: Mapping[str, Any]) -> float:
    """What one answer's ``usage`` costs, the way Claude Code computes it: input, output, cache reads,
    cache writes (the 1-hour part at its own rate when ``cache_creation`` says so) and web searches."""
    _, price, _ = price_for(model, speed=usage.get("speed") if isinstance(usage.get("speed"), str) else None)
    written = _num(usage.get("cache_creation_input_tokens"))
    breakdown = usage.get("cache_creation")
    hour = 0
    if isinstance(breakdown, dict):
        hour = min(_num(breakdown.get("ephemeral_1h_input_tokens")), written)
    server = usage.get("server_tool_use")
    searches = _num(server.get("web_search_requests")) if isinstance(server, dict) else 0
    return (
        _num(usage.get("input_tokens")) / 1e6 * price.input
        + _num(usage.get("output_tokens")) / 1e6 * price.output
        + _num(usage.get("cache_read_input_tokens")) / 1e6 * price.cache_read
        + hour / 1e6 * price.cache_write_1h
        + (written - hour) / 1e6 * price.cache_write_5m
        + searches * price.web_search
    )


@dataclass
class ModelUsage:
    """What one model's answers used, summed over a task's requests."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    web_search_requests: int = 0
    cost_usd: float = 0.0
    priced: bool = True  # False: the price table does not know the model (Opus 4.5 rates were used)

    def add(self, usage: Mapping[str, Any], cost: float) -> None:
        self.requests += 1
        self.input_tokens += _num(usage.get("input_tokens"))
        self.output_tokens += _num(usage.get("output_tokens"))
        self.cache_creation_input_tokens += _num(usage.get("cache_creation_input_tokens"))
        self.cache_read_input_tokens += _num(usage.get("cache_read_input_tokens"))
        server = usage.get("server_tool_use")
        self.web_search_requests += _num(server.get("web_search_requests")) if isinstance(server, dict) else 0
        self.cost_usd += cost


@dataclass
class TaskUsage(ModelUsage):
    """A task's metered use since it was opened: totals, and ``models`` (per model id).

    ``requests`` counts metered answers (model calls that returned usage); ``refused`` the model calls the
    API answered with an error status (429, 529, 4xx...), which cost nothing."""

    refused: int = 0
    models: dict[str, ModelUsage] = field(default_factory=dict)

    def record(self, model: str, usage: Mapping[str, Any]) -> float:
        speed = usage.get("speed")
        cost = cost_usd(model, usage)
        self.add(usage, cost)
        per_model = self.models.setdefault(model, ModelUsage())
        per_model.add(usage, cost)
        per_model.priced = price_for(model, speed=speed if isinstance(speed, str) else None)[2]
        self.priced = self.priced and per_model.priced
        return cost
