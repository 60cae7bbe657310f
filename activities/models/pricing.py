"""What a model call cost: a price table keyed by route, in USD per million tokens (input, output).

The defaults are the providers' published list prices for common models as of 2025; providers change
them, so `KEEL_MODEL_PRICES` adds or overrides entries. Keys are routes without options, and may end in `*` to
cover dated snapshots (`openai:gpt-4o-mini*` covers `gpt-4o-mini-2024-07-18`). The longest matching key
wins. A model with no price is counted in `Usage.unpriced_calls` instead of being silently free.
"""

from collections.abc import Mapping
from fnmatch import fnmatchcase

from keel.contracts import Usage
from keel.routes import Route

Price = tuple[float, float]

DEFAULT_PRICES: dict[str, Price] = {
    "openai:gpt-4o-mini*": (0.15, 0.60),
    "openai:gpt-4o*": (2.50, 10.00),
    "openai:gpt-4.1-nano*": (0.10, 0.40),
    "openai:gpt-4.1-mini*": (0.40, 1.60),
    "openai:gpt-4.1*": (2.00, 8.00),
    "openai:gpt-5-nano*": (0.05, 0.40),
    "openai:gpt-5-mini*": (0.25, 2.00),
    "openai:gpt-5*": (1.25, 10.00),
    "openai:o4-mini*": (1.10, 4.40),
    "openai:o3-mini*": (1.10, 4.40),
    "openai:o3*": (2.00, 8.00),
    "anthropic:claude-opus-4-5*": (5.00, 25.00),
    "anthropic:claude-opus-4*": (15.00, 75.00),
    "anthropic:claude-sonnet-4*": (3.00, 15.00),
    "anthropic:claude-3-7-sonnet*": (3.00, 15.00),
    "anthropic:claude-3-5-sonnet*": (3.00, 15.00),
    "anthropic:claude-haiku-4*": (1.00, 5.00),
    "anthropic:claude-3-5-haiku*": (0.80, 4.00),
    "anthropic:claude-3-haiku*": (0.25, 1.25),
    # Your own hardware, and the offline stand-in: no per-token bill.
    "local:*": (0.0, 0.0),
    "scripted*": (0.0, 0.0),
}


def price_of(route: Route, overrides: Mapping[str, Price] | None = None) -> Price | None:
    table = {**DEFAULT_PRICES, **(overrides or {})}
    key = Route(route.provider, route.model).__str__()
    if key in table:
        return table[key]
    matches = [pattern for pattern in table if fnmatchcase(key, pattern)]
    return table[max(matches, key=len)] if matches else None


def with_cost(usage: Usage, route: Route, overrides: Mapping[str, Price] | None = None) -> Usage:
    price = price_of(route, overrides)
    if price is None:
        return usage.model_copy(update={"cost_usd": 0.0, "unpriced_calls": 1})
    cost = (usage.prompt_tokens * price[0] + usage.completion_tokens * price[1]) / 1_000_000
    return usage.model_copy(update={"cost_usd": round(cost, 8), "unpriced_calls": 0})
