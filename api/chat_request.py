"""What `POST /api/chat` accepts: the body the AI SDK's `useChat` sends, plus Keel's own fields.

UI messages are turned into Keel `Message`s here, so nothing downstream knows about the AI SDK's shapes.
"""

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from keel.contracts import ApprovalDecision, Budgets, ClientTool, Message, ToolCall, ToolResultSubmission

MAX_TEXT = 100_000
MAX_CONTEXT_BYTES = 20_000


def has_nul(value: Any) -> bool:
    """True when a NUL character is anywhere in the value: PostgreSQL can store none in text or jsonb."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(has_nul(k) or has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(has_nul(v) for v in value)
    return False


class NoNul(BaseModel):
    """A request body that refuses NUL characters anywhere in it (422), before they reach PostgreSQL."""

    @model_validator(mode="after")
    def _no_nul(self) -> "NoNul":
        if has_nul(self.model_dump()):
            raise ValueError("text must not contain NUL characters (\\u0000)")
        return self


class UIMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str = Field(max_length=200)
    role: Literal["system", "user", "assistant"]
    # Parts stay loosely typed: the AI SDK adds part types over time and unknown ones are skipped.
    parts: list[dict[str, Any]] = Field(max_length=1_000)


class RequestBudgets(BaseModel):
    """Limits for this run; each can only lower the purpose's own."""

    max_steps: int | None = Field(None, ge=1, le=100)
    max_tokens: int | None = Field(None, ge=1)
    max_cost_usd: float | None = Field(None, gt=0)
    max_duration_s: float | None = Field(None, gt=0)


class ClientToolDeclaration(BaseModel):
    """A tool the frontend runs itself. `parameters` (or the AI SDK's `inputSchema`) is a JSON schema."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str = Field("", max_length=2000)
    parameters: dict[str, Any] | None = None
    inputSchema: dict[str, Any] | None = None  # noqa: N815 (the AI SDK's spelling)
    outputSchema: dict[str, Any] | None = None  # noqa: N815


class ChatRequest(NoNul):
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
    budgets: RequestBudgets | None = Field(None, description="Lower the purpose's budgets for this run")
    stop_after_tool_calls: dict[str, int] | None = Field(
        None,
        description="stopWhen: end the run once a tool was called this many times, e.g. {'publish_package': 1}",
    )
    tools: list[ClientToolDeclaration] | None = Field(
        None, max_length=64, description="Client-side tools the frontend runs itself"
    )

    def requested_budgets(self) -> Budgets | None:
        requested = self.budgets or RequestBudgets()
        if self.max_steps is not None:
            requested = requested.model_copy(update={"max_steps": self.max_steps})
        if requested == RequestBudgets():
            return None
        fields = requested.model_dump()
        # The purpose's step limit stands unless the request lowers it.
        return Budgets(**{**fields, "max_steps": fields["max_steps"] or 1_000_000})

    def client_tools(self) -> list[ClientTool]:
        return [
            ClientTool(
                name=t.name,
                description=t.description,
                parameters=t.parameters or t.inputSchema or {"type": "object", "properties": {}},
                output_schema=t.outputSchema,
            )
            for t in self.tools or []
        ]


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
            continue  # a call without a result (or only an approval) can't be replayed to a model
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


def pending_answers(ui: UIMessage) -> tuple[list[ApprovalDecision], list[ToolResultSubmission]]:
    """What an assistant message resubmitted by the AI SDK answers: approval responses and tool results."""
    approvals: list[ApprovalDecision] = []
    results: list[ToolResultSubmission] = []
    for part in ui.parts:
        kind, call_id = part.get("type", ""), part.get("toolCallId")
        if not (isinstance(kind, str) and kind.startswith("tool-") and isinstance(call_id, str)):
            continue
        state, approval = part.get("state"), part.get("approval")
        if (
            state == "approval-responded"
            and isinstance(approval, dict)
            and isinstance(approval.get("approved"), bool)
        ):
            reason = approval.get("reason")
            approvals.append(
                ApprovalDecision(
                    tool_call_id=call_id,
                    approved=approval["approved"],
                    reason=reason if isinstance(reason, str) else None,
                    approver="chat",
                )
            )
        elif state == "output-available":
            results.append(ToolResultSubmission(tool_call_id=call_id, output=part.get("output")))
        elif state == "output-error":
            results.append(
                ToolResultSubmission(tool_call_id=call_id, error=str(part.get("errorText") or "failed"))
            )
    return approvals, results
