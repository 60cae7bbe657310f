"""Model routes: which provider and model answers, written as one string.

    scripted                          the offline stand-in
    scripted:slow                     the same, writing five chunks a second
    openai:gpt-4o-mini                OpenAI's Chat Completions API (OPENAI_API_KEY, OPENAI_BASE_URL)
    anthropic:claude-sonnet-4-5       Anthropic's Messages API (ANTHROPIC_API_KEY, ANTHROPIC_BASE_URL)
    local:llama3.1:8b                 any OpenAI-compatible server at KEEL_LOCAL_BASE_URL
    local:phi3?tools=json             the same, for a model without native tool calling (json tool mode)
    test:<name>                       keel.testing's scripted model (only in the worker an AgentTest starts)
    openai:gpt-4o-mini,anthropic:claude-haiku-4-5    a fallback chain, tried in order

Pure parsing, no I/O: the settings, the gateway and the activities all use it.
"""

from dataclasses import dataclass
from typing import Literal

PROVIDERS = ("openai", "anthropic", "local", "scripted", "test")
ToolMode = Literal["native", "json"]


class RouteError(ValueError):
    pass


@dataclass(frozen=True)
class Route:
    provider: str
    model: str
    # "json": the model is not given tools through its API; it is prompted to write tool calls as JSON.
    tool_mode: ToolMode = "native"

    def __str__(self) -> str:
        text = (
            self.provider
            if self.provider == "scripted" and not self.model
            else f"{self.provider}:{self.model}"
        )
        return text + ("?tools=json" if self.tool_mode == "json" else "")


def parse_route(text: str) -> Route:
    text = text.strip()
    body, _, options = text.partition("?")
    # Only the first colon separates the provider: model names may hold colons (Ollama's `llama3.1:8b`).
    provider, _, model = body.partition(":")
    provider, model = provider.strip().lower(), model.strip()
    if provider not in PROVIDERS:
        raise RouteError(
            f"model route {text!r}: unknown provider {provider!r}; a route is `provider:model` with provider "
            f"one of {', '.join(PROVIDERS)}"
        )
    if provider != "scripted" and not model:
        raise RouteError(f"model route {text!r} names no model: write `{provider}:<model>`")
    tool_mode: ToolMode = "native"
    for option in filter(None, (o.strip() for o in options.split("&"))):
        key, _, value = option.partition("=")
        if key.strip() != "tools" or value.strip() not in ("native", "json"):
            raise RouteError(
                f"model route {text!r}: unknown option {option!r}; the one option is tools=native|json"
            )
        tool_mode = "json" if value.strip() == "json" else "native"
    if provider == "scripted" and model not in ("", "slow"):
        raise RouteError(f"model route {text!r}: the scripted model is `scripted` or `scripted:slow`")
    if provider == "scripted" and tool_mode == "json":
        raise RouteError(f"model route {text!r}: the scripted model has no json tool mode")
    return Route(provider, model, tool_mode)


def parse_chain(text: str) -> tuple[Route, ...]:
    """A comma-separated fallback chain; a single route is a chain of one."""
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or not all(parts):
        raise RouteError(f"model route {text!r}: empty route in the list; separate routes with single commas")
    return tuple(parse_route(p) for p in parts)
