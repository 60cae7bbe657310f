"""The one provider interface every model implements, and the normalized chunks it streams.

A provider turns Keel's `Message`s and `ToolSpec`s into its vendor's request and the vendor's stream back
into `TextDelta`, `ToolCall` and a final `Finish`. Nothing vendor-specific leaves the provider.
"""

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from keel.contracts import Message, ToolCall, ToolSpec, Usage
from keel.text import clip

ToolChoice = Literal["auto", "none", "required"]


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class Finish:
    reason: str  # "stop" | "tool_calls" | "length" | "content_filter" | "error"
    usage: Usage
    # The provider's id for the request: its request-id header, else the response's own id.
    request_id: str | None = None
    # The route that answered, set by the fallback chain (`openai:gpt-4o-mini`).
    route: str | None = None


ModelChunk = TextDelta | ToolCall | Finish


class ChatModel(Protocol):
    """A model provider. `stream` yields text deltas and tool calls, and ends with exactly one Finish."""

    provider: str

    def stream(
        self,
        *,
        messages: list[Message],
        model: str,
        tools: list[ToolSpec],
        tool_choice: ToolChoice = "auto",
    ) -> AsyncIterator[ModelChunk]: ...


class UnknownModelRoute(ValueError):
    pass


def parse_arguments(raw: str | dict[str, Any] | None) -> tuple[dict[str, Any], str | None]:
    """A tool call's arguments as an object, or ({}, what was wrong) for the model to hear about.

    Tolerates what real models send: an empty string for "no arguments" and JSON encoded twice.
    """
    if raw is None or raw == "":
        return {}, None
    value: Any = raw
    for _ in range(2):  # a second pass undoes double encoding ("{\"a\": 1}")
        if not isinstance(value, str):
            break
        try:
            value = json.loads(value)
        except ValueError as err:
            return {}, f"the arguments are not valid JSON ({err}): {clip(str(raw), 500)}"
    if not isinstance(value, dict):
        return {}, f"the arguments must be a JSON object, not {type(value).__name__}: {clip(str(raw), 500)}"
    return value, None


def tool_call(call_id: str, name: str, raw_arguments: str | dict[str, Any] | None) -> ToolCall:
    arguments, problem = parse_arguments(raw_arguments)
    return ToolCall(id=call_id, name=name, arguments=arguments, arguments_error=problem)


def finish_reason(vendor_reason: str | None, has_tool_calls: bool) -> str:
    """One vocabulary for why an answer ended, whatever the vendor calls it."""
    if has_tool_calls:
        return "tool_calls"  # some servers say "stop" even when they called tools
    return _FINISH_REASONS.get(vendor_reason or "stop", vendor_reason or "stop")


_FINISH_REASONS = {
    "stop": "stop",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "tool_calls": "stop",  # said, yet no call came through: nothing to run
    "tool_use": "stop",
    "function_call": "stop",
    "length": "length",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "content_filter": "content_filter",
    "refusal": "content_filter",
}
