"""What `POST /api/chat` accepts: the body the AI SDK's `useChat` sends, plus Keel's own fields.

UI messages are turned into Keel `Message`s here, so nothing downstream knows about the AI SDK's shapes.
"""

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from keel.contracts import Message, ToolCall

MAX_TEXT = 100_000
MAX_CONTEXT_BYTES = 20_000


class UIMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str = Field(max_length=200)
    role: Literal["system", "user", "assistant"]
    # Parts stay loosely typed: the AI SDK adds part types over time and unknown ones are skipped.
    parts: list[dict[str, Any]] = Field(max_length=1_000)


class ChatRequest(BaseModel):
    # useChat may send fields of its own (and apps add theirs through `body`); they are ignored.
    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1, max_length=200, description="The chat id")
    messages: list[UIMessage] = Field(min_length=1, max_length=500)
    trigger: Literal["submit-message", "regenerate-message"] = "submit-message"
    messageId: str | None = Field(None, max_length=200)  # noqa: N815 (the AI SDK's spelling)
    purpose: str | None = Field(None, max_length=100, description="A purpose slug; `assistant` by default")
    context: dict[str, Any] | None = Field(None, description="Application context shown to the model")
    max_steps: int | None = Field(
        None, ge=1, le=100, description="Lower the purpose's step limit for this run"
    )


class BadChatRequest(ValueError):
    """A body that is valid JSON of the right shape but can't start a run; answered with 400."""


def to_conversation(request: ChatRequest) -> list[Message]:
    """The chat history as Keel messages. The purpose's system prompt is added by the caller.

    System messages from the client are dropped: the purpose owns the system prompt.
    """
    conversation: list[Message] = []
    for ui in request.messages:
        if ui.role == "user":
            conversation.append(Message(role="user", content=_text(ui)))
        elif ui.role == "assistant":
            conversation.extend(_assistant_messages(ui))
    last = request.messages[-1]
    if last.role != "user" or not conversation or not conversation[-1].content.strip():
        raise BadChatRequest("the last message must be a user message with a text part")
    if request.context is not None and len(json.dumps(request.context)) > MAX_CONTEXT_BYTES:
        raise BadChatRequest(f"context is larger than {MAX_CONTEXT_BYTES} bytes of JSON")
    if any(len(m.content) > MAX_TEXT for m in conversation):
        raise BadChatRequest(f"a message is longer than {MAX_TEXT} characters")
    return conversation


def _text(ui: UIMessage) -> str:
    texts = []
    for part in ui.parts:
        if part.get("type") == "text":
            if not isinstance(part.get("text"), str):
                raise BadChatRequest(f"message {ui.id}: a text part needs a string `text`")
            texts.append(part["text"])
    return "\n".join(texts)


def _assistant_messages(ui: UIMessage) -> list[Message]:
    """An assistant UI message becomes its text and tool calls, followed by the tool results it shows."""
    calls: list[ToolCall] = []
    results: list[Message] = []
    for part in ui.parts:
        kind = part.get("type", "")
        if not (isinstance(kind, str) and kind.startswith("tool-") and part.get("toolCallId")):
            continue
        state = part.get("state")
        if state not in ("output-available", "output-error"):
            continue  # a call without a result can't be replayed to a model
        name = kind.removeprefix("tool-")
        arguments = part.get("input") if isinstance(part.get("input"), dict) else {}
        calls.append(ToolCall(id=str(part["toolCallId"]), name=name, arguments=arguments))
        failed = state == "output-error"
        output = part.get("errorText") if failed else part.get("output")
        results.append(
            Message(
                role="tool",
                content=output if isinstance(output, str) else json.dumps(output),
                tool_call_id=str(part["toolCallId"]),
                name=name,
                is_error=failed,
            )
        )
    text = _text(ui)
    if not text and not calls:
        return []
    return [Message(role="assistant", content=text, tool_calls=calls), *results]
