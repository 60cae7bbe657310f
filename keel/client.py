"""A client for the gateway's chat API that speaks the UI message stream the way `useChat` does.

It streams `POST /api/chat`, assembles the assistant message from the chunks (like the AI SDK's
`readUIMessageStream`), and answers a waiting run the AI SDK way: the history plus the assistant message
with approval responses or tool outputs added, posted again. The `keel run` command is built on it.
"""

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from keel.ui_protocol import (
    ErrorChunk,
    FinishChunk,
    RunDataChunk,
    StartChunk,
    TextDeltaChunk,
    TextStartChunk,
    TextUIPart,
    ToolApproval,
    ToolApprovalRequestChunk,
    ToolInputAvailableChunk,
    ToolOutputAvailableChunk,
    ToolOutputDeniedChunk,
    ToolOutputErrorChunk,
    ToolUIPart,
    UIMessage,
    UIMessageChunk,
    decode,
)


@dataclass
class AssistantMessage:
    """The assistant message of one run, assembled across the streams that carried it."""

    id: str = ""
    parts: list[TextUIPart | ToolUIPart] = field(default_factory=list)
    status: str = "running"
    detail: str | None = None
    finish_reason: str | None = None
    errors: list[str] = field(default_factory=list)
    # Each text part by the id its chunks name it with (a later `text-start` of the same id wins).
    _texts: dict[str, TextUIPart] = field(default_factory=dict, repr=False)

    def tools(self) -> dict[str, ToolUIPart]:
        return {p.tool_call_id: p for p in self.parts if isinstance(p, ToolUIPart)}

    def apply(self, chunk: UIMessageChunk) -> None:
        tools = self.tools()
        match chunk:
            case StartChunk(message_id=message_id):
                self.id = message_id or self.id
            case TextStartChunk(id=text_id):
                self._texts[text_id] = TextUIPart(text="")
                self.parts.append(self._texts[text_id])
            case TextDeltaChunk(id=text_id, delta=delta):
                self._texts[text_id].text += delta
            case ToolInputAvailableChunk():
                self.parts.append(
                    ToolUIPart(
                        type=f"tool-{chunk.tool_name}",
                        tool_call_id=chunk.tool_call_id,
                        state="input-available",
                        input=chunk.input,
                    )
                )
            case ToolApprovalRequestChunk(tool_call_id=call_id, approval_id=approval_id):
                part = tools[call_id]
                part.state, part.approval = "approval-requested", ToolApproval(id=approval_id)
            case ToolOutputAvailableChunk(tool_call_id=call_id, output=output, preliminary=True):
                # A sub-agent's progress so far (SubRunProgress): kept, each replacing the one before, and
                # the call stays unfinished — a part posted back as output-available would be its result.
                tools[call_id].output = output
                _mark_preliminary(tools[call_id], True)
            case ToolOutputAvailableChunk(tool_call_id=call_id, output=output):
                tools[call_id].state, tools[call_id].output = "output-available", output
                _mark_preliminary(tools[call_id], False)
            case ToolOutputErrorChunk(tool_call_id=call_id, error_text=error_text):
                tools[call_id].state, tools[call_id].error_text = "output-error", error_text
            case ToolOutputDeniedChunk(tool_call_id=call_id):
                tools[call_id].state = "output-denied"
            case RunDataChunk(data=run):
                self.status, self.detail = run.status, run.detail
            case ErrorChunk(error_text=error_text):
                self.errors.append(error_text)
            case FinishChunk(finish_reason=finish_reason):
                self.finish_reason = finish_reason

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.parts if isinstance(p, TextUIPart))

    def as_ui_message(self) -> dict[str, Any]:
        """The message as `useChat` posts it back: its text and tool parts, with the answers added to them."""
        return UIMessage(id=self.id, role="assistant", parts=list(self.parts)).wire()


def _mark_preliminary(part: ToolUIPart, preliminary: bool) -> None:
    """`preliminary: true` on a part whose output is progress, as the AI SDK's client marks it; gone once
    the call has its result. (A part's fields it doesn't declare are its extra ones.)"""
    extra = part.model_extra if part.model_extra is not None else {}
    if preliminary:
        extra["preliminary"] = True
    else:
        extra.pop("preliminary", None)


class ChatError(Exception):
    """The gateway refused a request; the message is its own explanation."""


class ChatClient:
    def __init__(self, base_url: str, *, timeout: float = 600, token: str | None = None) -> None:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(
            base_url=base_url, timeout=httpx.Timeout(timeout, connect=10), headers=headers
        )

    def close(self) -> None:
        self.http.close()

    def start(
        self, text: str, *, purpose: str | None = None, chat_id: str | None = None
    ) -> tuple[dict[str, Any], AssistantMessage]:
        """A chat's first request body, and the message its stream will fill."""
        question = UIMessage(id=f"msg-{uuid.uuid4().hex[:12]}", role="user", parts=[TextUIPart(text=text)])
        body: dict[str, Any] = {
            "id": chat_id or f"chat-{uuid.uuid4().hex[:12]}",
            "messages": [question.wire()],
            "trigger": "submit-message",
        }
        if purpose:
            body["purpose"] = purpose
        return body, AssistantMessage()

    def stream(self, body: dict[str, Any], message: AssistantMessage) -> Iterator[UIMessageChunk]:
        """POST /api/chat; yields each chunk after applying it to `message`."""
        with self.http.stream("POST", "/api/chat", json=body) as response:
            if response.status_code != 200:
                response.read()
                raise ChatError(_detail(response))
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = decode(line.removeprefix("data: "))
                message.apply(chunk)
                yield chunk

    @staticmethod
    def answer(body: dict[str, Any], message: AssistantMessage) -> dict[str, Any]:
        """The next request: the history with the assistant message (and the user's answers in it)."""
        return {**body, "messages": [*body["messages"], message.as_ui_message()]}

    def post(self, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self.http.post(path, json=payload or {})
        if response.status_code >= 400:
            raise ChatError(_detail(response))
        answer: dict[str, Any] = response.json()
        return answer

    def get(self, path: str, **params: Any) -> Any:
        response = self.http.get(path, params={k: v for k, v in params.items() if v is not None})
        if response.status_code >= 400:
            raise ChatError(_detail(response))
        return response.json()


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = response.text
    if isinstance(detail, list):  # pydantic's 422 list
        detail = "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail)
    return f"HTTP {response.status_code}: {detail}"
