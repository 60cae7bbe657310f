"""The one provider interface every model implements, and the normalized chunks it streams.

A provider turns Keel's `Message`s and `ToolSpec`s into its vendor's request and the vendor's stream back
into `TextDelta`, `ToolCall` and a final `Finish`. Nothing vendor-specific leaves the provider.

Structured output: a provider asked for it (`output=OutputRequest`) asks its vendor for an answer of the
schema's shape its own way, and streams that answer as `OutputDelta`s, whichever way the vendor sent it
(content constrained by a response format, a synthetic tool's input, prompted JSON).
"""

import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from keel.contracts import Message, OutputSpec, ToolCall, ToolSpec, Usage
from keel.routes import Route
from keel.settings import Settings
from keel.text import clip

ToolChoice = Literal["auto", "none", "required"]


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class OutputDelta(TextDelta):
    """A piece of the structured answer's JSON. It is text too: it streams live and is stored as the
    reply's content like any other text."""


@dataclass(frozen=True)
class OutputRequest:
    """Structured output wanted from this call: the run's snapshot of the answer's schema."""

    spec: OutputSpec
    # The model's last answer failed validation: it must answer now, without tools.
    now: bool = False


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
    """A model provider. `stream` yields text deltas and tool calls, and ends with exactly one Finish.

    `output` is passed only when the run wants structured output, so a provider without support for it
    still serves every other run."""

    provider: str

    def stream(
        self,
        *,
        messages: list[Message],
        model: str,
        tools: list[ToolSpec],
        tool_choice: ToolChoice = "auto",
        output: OutputRequest | None = None,
    ) -> AsyncIterator[ModelChunk]: ...


@dataclass(frozen=True)
class ProviderSetup:
    """What a provider's model is built from, for one route (`ProviderFactory`)."""

    route: Route
    settings: Settings
    # The value of the provider's API key variable (its first `secrets` in keel.routes) in the worker's
    # environment, if set; None lets an SDK look for credentials its own way.
    api_key: str | None = None
    # The tools' trigger words, which the offline scripted model goes by.
    triggers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


# A provider's implementation, as its registration in keel.routes names it (`module:function`). Json tool
# mode is put in front of the model it returns when the route asks for it; the model name the route gives
# is passed to each `stream` call.
ProviderFactory = Callable[[ProviderSetup], ChatModel]


class UnknownModelRoute(ValueError):
    pass


# How prompted structured output begins (local servers, json tool mode): the schema follows it.
OUTPUT_INSTRUCTIONS = "Your final answer must be one JSON object that matches this JSON Schema:"


def output_instructions(output: OutputRequest) -> str:
    """Structured output asked for in words, for models whose API has no way to ask for it."""
    text = (
        f"{OUTPUT_INSTRUCTIONS}\n{json.dumps(output.spec.json_schema, ensure_ascii=False)}\n"
        "When you give your final answer, reply with that JSON object alone: no other words around it."
    )
    return text + (" Give your final answer now, without calling any tool." if output.now else "")


def with_output_instructions(messages: list[Message], output: OutputRequest) -> list[Message]:
    """The conversation with the output instructions added to its first system message (many local chat
    templates accept one system message only, and only first)."""
    instructions = output_instructions(output)
    first = next((i for i, m in enumerate(messages) if m.role == "system"), None)
    if first is None:
        return [Message(role="system", content=instructions), *messages]
    merged = messages[first].model_copy(update={"content": f"{messages[first].content}\n\n{instructions}"})
    return [*messages[:first], merged, *messages[first + 1 :]]


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
