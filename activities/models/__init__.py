"""Model providers behind one interface (`ChatModel`), chosen by a route such as `openai:gpt-4o-mini`.

`resolve_model` turns a route, or a comma-separated fallback chain of them, into one `ChatModel`: the
chain (`chain.py`) picks the route for the current attempt and classifies failures for Temporal
(`errors.py`); each provider lives in its own module.

Which providers exist is registered in `keel.routes` (`REGISTRY`): a provider's name and route syntax are
a contract the gateway checks without loading any provider, and its registration names the function that
builds its model (a `ProviderFactory`). `provider_for` imports that function on the provider's first use:
vendor SDKs add seconds to a worker's startup, and a worker pays only for the providers its routes name.
A new provider is a module here with its `ChatModel` and its factory, and one line in `keel.routes`.
"""

import importlib
import os
from collections.abc import Mapping

from activities.models.base import (
    ChatModel,
    Finish,
    ModelChunk,
    OutputDelta,
    OutputRequest,
    ProviderFactory,
    ProviderSetup,
    TextDelta,
    ToolChoice,
    UnknownModelRoute,
)
from activities.models.chain import FallbackChain
from activities.models.json_tools import JsonToolMode
from keel.routes import REGISTRY, Provider, Route, RouteError, parse_chain
from keel.settings import Settings, get_settings

__all__ = [
    "ChatModel",
    "Finish",
    "ModelChunk",
    "OutputDelta",
    "OutputRequest",
    "ProviderFactory",
    "ProviderSetup",
    "TextDelta",
    "ToolChoice",
    "UnknownModelRoute",
    "implementation",
    "provider_for",
    "resolve_model",
]


def resolve_model(
    route: str,
    settings: Settings | None = None,
    *,
    attempt: int | None = None,
    triggers: Mapping[str, tuple[str, ...]] | None = None,
    first_route: int = 0,
) -> tuple[FallbackChain, str]:
    """The model for a route or fallback chain, and the name to show for it.

    `attempt` defaults to the running activity's attempt number (1 outside an activity); `triggers` are the
    tools' trigger words, which the offline scripted model goes by; `first_route` skips the chain's
    routes before it (provider limits granted the call that one).
    """
    settings = settings or get_settings()
    try:
        routes = parse_chain(route)
    except RouteError as err:
        raise UnknownModelRoute(str(err)) from None
    chain = FallbackChain(
        routes,
        lambda r: provider_for(r, settings, triggers or {}),
        prices=settings.model_prices,
        attempt=attempt,
        first_route=first_route,
    )
    return chain, route


def provider_for(
    route: Route, settings: Settings, triggers: Mapping[str, tuple[str, ...]] | None = None
) -> tuple[ChatModel, str]:
    """One route's provider and the model name to send it. Keys come from the worker's environment."""
    provider = REGISTRY[route.provider]
    setup = ProviderSetup(route, settings, api_key=_api_key(provider), triggers=triggers or {})
    model = implementation(provider)(setup)
    return (JsonToolMode(model) if route.tool_mode == "json" else model), route.model


def implementation(provider: Provider) -> ProviderFactory:
    """The factory a provider's registration names (`module:function`), its module imported if need be."""
    module_name, _, function_name = provider.implementation.partition(":")
    factory = getattr(importlib.import_module(module_name), function_name, None)
    if not callable(factory):
        raise TypeError(
            f"provider {provider.name!r} is registered with implementation {provider.implementation!r}, "
            "which is not a function of that module"
        )
    built: ProviderFactory = factory
    return built


def _api_key(provider: Provider) -> str | None:
    return os.environ.get(provider.secrets[0]) if provider.secrets else None
