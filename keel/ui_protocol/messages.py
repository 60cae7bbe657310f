"""The AI SDK's `UIMessage` and its parts, typed: what `useChat` posts as a chat's history, and what Keel's
Python client assembles from a stream and posts back (api/chat_request.py reads them, keel/client.py
writes them).

Each part type declares its required fields and the ones Keel reads or writes; the rest (provider metadata,
a text part's streaming state, what later AI SDK versions add) are kept as they came, unchecked, so a
client's message is never refused for a field Keel doesn't use. Types are strict, as JSON's are: `"true"`
is not a boolean, and an approval is only ever a real `true` or `false`.

`tool-<name>` parts (a tool the server declared) and `dynamic-tool` parts (one it didn't, its name in
`toolName`) share their fields; `data-<name>` parts are the message's data parts (see chunks.py).
"""

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Discriminator, Field, Tag

from keel.ui_protocol._wire import Typed, WireModel

ToolState = Literal[
    "input-streaming",
    "input-available",
    "approval-requested",
    "approval-responded",
    "output-available",
    "output-error",
    "output-denied",
]
"""Where a tool call stands, as the AI SDK's client shows it."""


class BasePart(Typed):
    """A part of a UI message; the fields it doesn't declare are kept as they came."""

    model_config = ConfigDict(extra="allow", strict=True)


class TextUIPart(BasePart):
    type: Literal["text"] = "text"
    text: str


class ReasoningUIPart(BasePart):
    type: Literal["reasoning"] = "reasoning"
    text: str


class StepStartUIPart(BasePart):
    """Where a step of the agent began (the AI SDK writes one per `start-step` chunk)."""

    type: Literal["step-start"] = "step-start"


class FileUIPart(BasePart):
    type: Literal["file"] = "file"
    media_type: str
    url: str
    filename: str | None = None


class SourceUrlUIPart(BasePart):
    type: Literal["source-url"] = "source-url"
    source_id: str
    url: str
    title: str | None = None


class SourceDocumentUIPart(BasePart):
    type: Literal["source-document"] = "source-document"
    source_id: str
    media_type: str
    title: str
    filename: str | None = None


class ToolApproval(WireModel):
    """A tool call's approval: requested (`id` only), then responded (`approved`, with a `reason`)."""

    model_config = ConfigDict(extra="allow", strict=True)

    id: str
    approved: bool | None = None
    reason: str | None = None


class ToolCallPart(BasePart):
    """What every tool part holds: the call, where it stands, and its outcome once it has one."""

    type: str
    tool_call_id: str
    state: ToolState
    input: Any = None
    output: Any = None
    error_text: str | None = None
    approval: ToolApproval | None = None


class ToolUIPart(ToolCallPart):
    """A call of a tool the server declared: its name is in the type, `tool-<name>`."""

    type: Annotated[str, Field(pattern=r"^tool-")]

    @property
    def tool_name(self) -> str:
        return self.type.removeprefix("tool-")


class DynamicToolUIPart(ToolCallPart):
    """A call of a tool the client didn't know in advance: its name is in `toolName`."""

    type: Literal["dynamic-tool"] = "dynamic-tool"
    tool_name: str


class DataUIPart(BasePart):
    type: Annotated[str, Field(pattern=r"^data-")]
    id: str | None = None
    data: Any = None


def _part_type(value: Any) -> str | None:
    """The union's tag: the part's type, with `tool-<name>` and `data-<name>` by their prefix."""
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if not isinstance(kind, str):
        return None
    for prefix in ("tool-", "data-"):
        if kind.startswith(prefix):
            return prefix
    return kind


UIMessagePart = Annotated[
    Annotated[TextUIPart, Tag("text")]
    | Annotated[ReasoningUIPart, Tag("reasoning")]
    | Annotated[StepStartUIPart, Tag("step-start")]
    | Annotated[FileUIPart, Tag("file")]
    | Annotated[SourceUrlUIPart, Tag("source-url")]
    | Annotated[SourceDocumentUIPart, Tag("source-document")]
    | Annotated[ToolUIPart, Tag("tool-")]
    | Annotated[DynamicToolUIPart, Tag("dynamic-tool")]
    | Annotated[DataUIPart, Tag("data-")],
    Discriminator(_part_type),
]
"""Any part of a UI message, told apart by its `type`."""


class UIMessage(WireModel):
    model_config = ConfigDict(extra="allow", strict=True)

    id: str
    role: Literal["system", "user", "assistant"]
    metadata: Any = None
    parts: list[UIMessagePart]
