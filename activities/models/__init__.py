"""Model providers behind one interface (`ChatModel`), chosen by a route string such as `scripted`."""

from activities.models.base import ChatModel, Finish, ModelChunk, TextDelta, ToolChoice, UnknownModelRoute
from activities.models.scripted import ScriptedModel
from activities.tools import TOOLS

__all__ = [
    "ChatModel",
    "Finish",
    "ModelChunk",
    "TextDelta",
    "ToolChoice",
    "UnknownModelRoute",
    "resolve_model",
]


def resolve_model(route: str) -> tuple[ChatModel, str]:
    """Turn a route (`scripted`, later `provider:model`) into a provider and the model name it should use."""
    provider, _, model = route.partition(":")
    if provider == "scripted":
        triggers = {name: TOOLS.get(name).triggers for name in TOOLS.names()}
        return ScriptedModel(triggers), model or "scripted"
    raise UnknownModelRoute(
        f"model route {route!r} is not available: this version of Keel ships the offline `scripted` model "
        "only (OpenAI, Anthropic and local providers are the next milestone)"
    )
