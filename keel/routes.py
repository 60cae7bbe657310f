"""Model routes (which provider and model answers, written as one string) and the providers they may name.

    scripted                          the offline stand-in
    scripted:slow                     the same, writing five chunks a second
    openai:gpt-4o-mini                OpenAI's Chat Completions API (OPENAI_API_KEY, OPENAI_BASE_URL)
    anthropic:claude-sonnet-4-5       Anthropic's Messages API (ANTHROPIC_API_KEY, ANTHROPIC_BASE_URL)
    local:llama3.1:8b                 any OpenAI-compatible server at KEEL_LOCAL_BASE_URL
    local:phi3?tools=json             the same, for a model without native tool calling (json tool mode)
    test:<name>                       keel.testing's scripted model (only in the worker an AgentTest starts)
    openai:gpt-4o-mini,anthropic:claude-haiku-4-5    a fallback chain, tried in order

Pure parsing, no I/O: the settings, the gateway and the activities all use it.

Provider names live here, implementations in `activities/models/`. A name is part of the route syntax, a
contract: routes are written in settings and agents, checked at startup by the gateway and `keel.app`
(which load no vendor SDK), and kept in run records and in every run's workflow input. So `REGISTRY` has
one line per provider: its name and what its routes may say; the environment variables holding its
credentials (every provider's error messages are scrubbed of them, so they must be known without loading
any provider); and where its implementation is, as `module:function`, an import path that only the worker
resolves, on the provider's first use (`activities.models.provider_for`). Nothing in `keel/` imports it.
A new provider: its module in `activities/models/` (its ChatModel and the function that builds it from a
route and the settings) and one line here.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

ToolMode = Literal["native", "json"]


@dataclass(frozen=True)
class Provider:
    """One model provider a route may name: what its routes may say, and where its implementation is."""

    name: str
    # `module:function` building its ChatModel from a route and the settings (activities.models.ProviderSetup).
    implementation: str
    # The only model names it takes (`scripted`, `scripted:slow`), or None: any name, which a route must give.
    models: tuple[str, ...] | None = None
    # Whether `?tools=json` may ask for json tool mode (activities/models/json_tools.py) in front of it.
    json_tools: bool = True
    # Environment variables holding its credentials, read by the worker: the first is the API key its
    # implementation is given (and which an authentication failure's hint names).
    secrets: tuple[str, ...] = ()


REGISTRY: Mapping[str, Provider] = {
    provider.name: provider
    for provider in (
        Provider("openai", "activities.models.openai_chat:openai_model", secrets=("OPENAI_API_KEY",)),
        Provider(
            "anthropic",
            "activities.models.anthropic_messages:anthropic_model",
            secrets=("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"),
        ),
        Provider("local", "activities.models.openai_chat:local_model", secrets=("KEEL_LOCAL_API_KEY",)),
        Provider(
            "scripted", "activities.models.scripted:scripted_model", models=("", "slow"), json_tools=False
        ),
        # keel.testing's model. Json tool mode would wrap it around a script that already says what to call.
        Provider("test", "keel.testing:model_for_route", json_tools=False),
    )
}
PROVIDERS = tuple(REGISTRY)


class RouteError(ValueError):
    pass


@dataclass(frozen=True)
class Route:
    provider: str
    model: str
    # "json": the model is not given tools through its API; it is prompted to write tool calls as JSON.
    tool_mode: ToolMode = "native"

    def __str__(self) -> str:
        # Only a provider with a model of its own by default (`scripted`) has routes without a model name.
        text = f"{self.provider}:{self.model}" if self.model else self.provider
        return text + ("?tools=json" if self.tool_mode == "json" else "")


def parse_route(text: str) -> Route:
    text = text.strip()
    body, _, options = text.partition("?")
    # Only the first colon separates the provider: model names may hold colons (Ollama's `llama3.1:8b`).
    name, _, model = body.partition(":")
    name, model = name.strip().lower(), model.strip()
    provider = REGISTRY.get(name)
    if provider is None:
        raise RouteError(
            f"model route {text!r}: unknown provider {name!r}; a route is `provider:model` with provider "
            f"one of {', '.join(PROVIDERS)}"
        )
    if provider.models is None and not model:
        raise RouteError(f"model route {text!r} names no model: write `{name}:<model>`")
    tool_mode = _tool_mode(text, options)
    if provider.models is not None and model not in provider.models:
        spelled = " or ".join(f"`{Route(name, known)}`" for known in provider.models)
        raise RouteError(f"model route {text!r}: the {name} model is {spelled}")
    if tool_mode == "json" and not provider.json_tools:
        raise RouteError(f"model route {text!r}: the {name} model has no json tool mode")
    return Route(name, model, tool_mode)


def _tool_mode(text: str, options: str) -> ToolMode:
    """The tool mode the route's options (`tools=native|json`, after the `?`) ask for."""
    tool_mode: ToolMode = "native"
    for option in filter(None, (o.strip() for o in options.split("&"))):
        key, _, value = option.partition("=")
        if key.strip() != "tools" or value.strip() not in ("native", "json"):
            raise RouteError(
                f"model route {text!r}: unknown option {option!r}; the one option is tools=native|json"
            )
        tool_mode = "json" if value.strip() == "json" else "native"
    return tool_mode


def parse_chain(text: str) -> tuple[Route, ...]:
    """A comma-separated fallback chain; a single route is a chain of one."""
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or not all(parts):
        raise RouteError(f"model route {text!r}: empty route in the list; separate routes with single commas")
    return tuple(parse_route(p) for p in parts)
