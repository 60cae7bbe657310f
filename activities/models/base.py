"""The one provider interface every model implements, and the normalized chunks it streams.

A provider turns Keel's `Message`s and `ToolSpec`s into its vendor's request and the vendor's stream back
into `TextDelta`, `ToolCall` and a final `Finish`. Nothing vendor-specific leaves the provider.
"""

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol

from keel.contracts import Message, ToolCall, ToolSpec, Usage

ToolChoice = Literal["auto", "none", "required"]


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class Finish:
    reason: str  # "stop" | "tool_calls" | "length" | "content_filter" | "error"
    usage: Usage
    request_id: str | None = None


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
