"""Model providers behind one interface (`ChatModel`), chosen by a route such as `openai:gpt-4o-mini`.

`resolve_model` turns a route, or a comma-separated fallback chain of them, into one `ChatModel`: the
chain (`chain.py`) picks the route for the current attempt and classifies failures for Temporal
(`errors.py`); each provider lives in its own module.
"""

import os
from collections.abc import Mapping

from activities.models.base import (
    ChatModel,
    Finish,
    ModelChunk,
    OutputDelta,
    OutputRequest,
    TextDelta,
    ToolChoice,
    UnknownModelRoute,
)
from activities.models.chain import FallbackChain
from activities.models.json_tools import JsonToolMode
from activities.models.scripted import ScriptedModel
from keel.routes import Route, RouteError, parse_chain
from keel.settings import Settings, get_settings

__all__ = [
    "ChatModel",
    "Finish",
    "ModelChunk",
    "OutputDelta",
    "OutputRequest",
    "TextDelta",
    "ToolChoice",
    "UnknownModelRoute",
    "provider_for",
    "resolve_model",
]


def resolve_model(
    route: str,
    settings: Settings | None = None,
    *,
    attempt: int | None = None,
    triggers: Mapping[str, tuple[str, ...]] | None = None,
) -> tuple[ChatModel, str]:
    """The model for a route or fallback chain, and the name to show for it.

    `attempt` defaults to the running activity's attempt number (1 outside an activity); `triggers` are the
    tools' trigger words, which the offline scripted model goes by.
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
    )
    return chain, route


SLOW_SCRIPTED_CHUNK_DELAY = 0.2


def provider_for(
    route: Route, settings: Settings, triggers: Mapping[str, tuple[str, ...]] | None = None
) -> tuple[ChatModel, str]:
    """One route's provider and the model name to send it. Keys come from the worker's environment.

    Vendor SDKs are imported on first use: together they add seconds to a worker's startup.
    """
    model: ChatModel
    if route.provider == "scripted":
        # `scripted:slow` writes five chunks a second: for watching a stream, or cancelling mid-answer.
        delay = SLOW_SCRIPTED_CHUNK_DELAY if route.model == "slow" else 0.0
        return ScriptedModel(triggers or {}, chunk_delay=delay), route.model or "scripted"
    if route.provider == "test":
        # keel.testing's model: a script registered in this process by the test run it serves.
        from keel.testing import model_for_route

        return model_for_route(route.model), route.model
    if route.provider == "openai":
        from activities.models.openai_chat import OpenAIChatModel

        model = OpenAIChatModel(
            "openai",
            base_url=settings.openai_base_url,
            api_key=os.environ.get("OPENAI_API_KEY"),
            timeout=settings.model_timeout,
        )
    elif route.provider == "local":
        from activities.models.openai_chat import OpenAIChatModel

        model = OpenAIChatModel(
            "local",
            base_url=settings.local_base_url,
            # A local server ignores the key, but the SDK insists on one.
            api_key=os.environ.get("KEEL_LOCAL_API_KEY") or "no-key-needed",
            timeout=settings.model_timeout,
        )
    else:
        from activities.models.anthropic_messages import AnthropicModel

        model = AnthropicModel(
            base_url=settings.anthropic_base_url,
            api_key=os.environ.get("ANTHROPIC_API_KEY"),
            timeout=settings.model_timeout,
            max_tokens=settings.anthropic_max_tokens,
        )
    return (JsonToolMode(model) if route.tool_mode == "json" else model), route.model
