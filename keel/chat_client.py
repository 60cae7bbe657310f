"""A client for the gateway's chat API that speaks the UI message stream the way `useChat` does.

It streams `POST /api/chat`, assembles the assistant message from the chunks (like the AI SDK's
`readUIMessageStream`), and answers a waiting run the AI SDK way: the history plus the assistant message
with approval responses or tool outputs added, posted again. The `keel run` command is built on it.
"""

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class ToolPart:
    tool_call_id: str
    tool_name: str
    input: Any
    state: str = "input-available"
    output: Any = None
    error_text: str | None = None
    approval: dict[str, Any] | None = None

    def as_ui_part(self) -> dict[str, Any]:
        part: dict[str, Any] = {
            "type": f"tool-{self.tool_name}",
            "toolCallId": self.tool_call_id,
            "state": self.state,
            "input": self.input,
        }
        if self.state == "output-available":
            part["output"] = self.output
        if self.state == "output-error":
            part["errorText"] = self.error_text
        if self.approval is not None:
            part["approval"] = self.approval
        return part


@dataclass
class AssistantMessage:
    """The assistant message of one run, assembled across the streams that carried it."""

    id: str = ""
    parts: list[dict[str, Any] | ToolPart] = field(default_factory=list)
    status: str = "running"
    detail: str | None = None
    finish_reason: str | None = None
    errors: list[str] = field(default_factory=list)

    def tools(self) -> dict[str, ToolPart]:
        return {p.tool_call_id: p for p in self.parts if isinstance(p, ToolPart)}

    def apply(self, chunk: dict[str, Any]) -> None:
        kind = chunk.get("type")
        tools = self.tools()
        if kind == "start":
            self.id = chunk.get("messageId") or self.id
        elif kind == "text-start":
            self.parts.append({"type": "text", "text": "", "_id": chunk["id"]})
        elif kind == "text-delta":
            text = next(
                p for p in reversed(self.parts) if isinstance(p, dict) and p.get("_id") == chunk["id"]
            )
            text["text"] += chunk["delta"]
        elif kind == "tool-input-available":
            self.parts.append(ToolPart(chunk["toolCallId"], chunk["toolName"], chunk.get("input")))
        elif kind == "tool-approval-request":
            part = tools[chunk["toolCallId"]]
            part.state, part.approval = "approval-requested", {"id": chunk["approvalId"]}
        elif kind == "tool-output-available":
            part = tools[chunk["toolCallId"]]
            part.state, part.output = "output-available", chunk.get("output")
        elif kind == "tool-output-error":
            part = tools[chunk["toolCallId"]]
            part.state, part.error_text = "output-error", chunk.get("errorText")
        elif kind == "tool-output-denied":
            tools[chunk["toolCallId"]].state = "output-denied"
        elif kind == "data-run":
            self.status, self.detail = chunk["data"]["status"], chunk["data"].get("detail")
        elif kind == "error":
            self.errors.append(chunk.get("errorText", ""))
        elif kind == "finish":
            self.finish_reason = chunk.get("finishReason")

    @property
    def text(self) -> str:
        return "".join(p["text"] for p in self.parts if isinstance(p, dict) and p.get("type") == "text")

    def as_ui_message(self) -> dict[str, Any]:
        parts = [
            p.as_ui_part() if isinstance(p, ToolPart) else {"type": "text", "text": p["text"]}
            for p in self.parts
        ]
        return {"id": self.id, "role": "assistant", "parts": parts}


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
        body: dict[str, Any] = {
            "id": chat_id or f"chat-{uuid.uuid4().hex[:12]}",
            "messages": [
                {
                    "id": f"msg-{uuid.uuid4().hex[:12]}",
                    "role": "user",
                    "parts": [{"type": "text", "text": text}],
                }
            ],
            "trigger": "submit-message",
        }
        if purpose:
            body["purpose"] = purpose
        return body, AssistantMessage()

    def stream(self, body: dict[str, Any], message: AssistantMessage) -> Iterator[dict[str, Any]]:
        """POST /api/chat; yields each chunk after applying it to `message`."""
        with self.http.stream("POST", "/api/chat", json=body) as response:
            if response.status_code != 200:
                response.read()
                raise ChatError(_detail(response))
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line.removeprefix("data: "))
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
        return response.json()

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
