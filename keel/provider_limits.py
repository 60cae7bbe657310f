"""Provider limits (`KEEL_PROVIDER_LIMITS`): what a deployment may ask of each model route, and which
configured pattern governs a route.

    {"openai:*": {"rpm": 500, "tpm": 200000, "concurrency": 20}, "openai:gpt-4o": {"rpm": 100}}

A pattern is `provider:*` (every model of a provider), `provider:model` (one model), `provider:prefix*`
(models whose name starts so) or `*` (every route). The most specific pattern that matches a route governs
it alone: an exact name beats any prefix, a longer prefix a shorter one, and `*` comes last.

Pure, no I/O: the settings validate with it, the workflow decides with it whether a step must ask for
capacity, and the activities and storage (keel/storage/provider_limits.py) account with it.
"""

from collections.abc import Iterable, Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from keel.routes import RouteError, parse_chain, parse_route

Priority = Literal["interactive", "batch"]


class RouteLimit(BaseModel):
    """One pattern's limits; each is optional, at least one must be given."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rpm: int | None = Field(None, gt=0, description="requests per minute")
    tpm: int | None = Field(None, gt=0, description="tokens per minute, prompt and completion together")
    concurrency: int | None = Field(None, gt=0, description="calls in flight at once")

    @model_validator(mode="after")
    def _says_something(self) -> "RouteLimit":
        if self.rpm is None and self.tpm is None and self.concurrency is None:
            raise ValueError("give at least one of rpm, tpm, concurrency")
        return self


def check_pattern(pattern: str) -> str:
    """The pattern as written, if it could ever match a route; ValueError saying why not otherwise."""
    if pattern == "*":
        return pattern
    provider, colon, model = pattern.partition(":")
    if not colon or not model:
        raise ValueError(f"pattern {pattern!r}: write `provider:model`, `provider:*` or `*`")
    if "*" in model[:-1] or "?" in pattern or "," in pattern:
        raise ValueError(f"pattern {pattern!r}: `*` may only end it; no `?` options and no chains")
    try:
        parse_route(f"{provider}:{model.rstrip('*') or 'x'}")
    except RouteError as err:
        raise ValueError(f"pattern {pattern!r}: {err}") from None
    return pattern


def route_key(route: str) -> str:
    """`openai:gpt-4o?tools=json` -> `openai:gpt-4o`: what patterns are matched against."""
    return route.partition("?")[0].strip()


def _specificity(pattern: str, key: str) -> int | None:
    """How closely `pattern` matches the route key (higher is closer), or None if it doesn't."""
    if pattern == "*":
        return 0
    if not pattern.endswith("*"):
        return 10_000 if pattern == key else None
    prefix = pattern[:-1]
    return 1 + len(prefix) if key.startswith(prefix) else None


def governing_pattern(route: str, patterns: Iterable[str]) -> str | None:
    """The most specific configured pattern matching `route`, or None when no limit applies to it."""
    key = route_key(route)
    best: tuple[int, str] | None = None
    for pattern in patterns:
        score = _specificity(pattern, key)
        if score is not None and (best is None or score > best[0]):
            best = (score, pattern)
    return best[1] if best else None


def chain_patterns(model: str, patterns: Iterable[str]) -> list[str | None]:
    """For each route of a fallback chain, in order, the pattern governing it (None: unlimited)."""
    known = list(patterns)
    try:
        routes = parse_chain(model)
    except RouteError:
        return []  # call_llm refuses the route itself, with a clear error
    return [governing_pattern(str(route), known) for route in routes]


def is_limited(model: str, patterns: Iterable[str]) -> bool:
    """Whether any route of the chain has a configured limit, so a step must ask for capacity first."""
    return any(p is not None for p in chain_patterns(model, patterns))


def parse_limits(raw: Mapping[str, object]) -> dict[str, RouteLimit]:
    """Validated limits by pattern (ValueError naming the bad entry)."""
    limits: dict[str, RouteLimit] = {}
    for pattern, value in raw.items():
        check_pattern(pattern)
        if isinstance(value, RouteLimit):
            limits[pattern] = value
            continue
        if not isinstance(value, Mapping):
            raise ValueError(f'{pattern!r}: expected an object like {{"rpm": 500}}')
        try:
            limits[pattern] = RouteLimit.model_validate(value)
        except ValidationError as err:
            problem = err.errors()[0]
            where = ".".join(map(str, problem["loc"]))
            message = str(problem["msg"]).removeprefix("Value error, ")
            raise ValueError(f"{pattern!r}: {where + ': ' if where else ''}{message}") from None
    return limits
