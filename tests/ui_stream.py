"""Reading an AI SDK UI message stream the way the AI SDK's client does, strictly.

A stream is read twice over: as the JSON objects on the wire (`UIStream.chunks`, which tests compare where
they assert the wire format) and as Keel's typed chunks (`UIStream.typed`, decoded by keel/ui_protocol,
which refuses a chunk type or field the protocol doesn't have). ALLOWED_FIELDS states the AI SDK's strict
schemas again, apart from Keel's models, so a field added to a model by mistake can't pass unseen.
"""

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from keel.client import AssistantMessage
from keel.ui_protocol import (
    RunDataChunk,
    TextDeltaChunk,
    ToolApproval,
    ToolInputAvailableChunk,
    UIMessageChunk,
    decode,
)

ALLOWED_FIELDS = {
    "start": {"messageId", "messageMetadata"},
    "finish": {"finishReason", "messageMetadata"},
    "start-step": set(),
    "finish-step": set(),
    "text-start": {"id"},
    "text-delta": {"id", "delta"},
    "text-end": {"id"},
    "tool-input-available": {"toolCallId", "toolName", "input"},
    "tool-output-available": {"toolCallId", "output", "preliminary"},
    "tool-output-error": {"toolCallId", "errorText"},
    "tool-approval-request": {"approvalId", "toolCallId"},
    "tool-output-denied": {"toolCallId"},
    "error": {"errorText"},
}


@dataclass
class UIStream:
    response: httpx.Response
    # Each chunk as JSON on the wire, and as its model.
    chunks: list[dict[str, Any]] = field(default_factory=list)
    typed: list[UIMessageChunk] = field(default_factory=list)
    # Each chunk's SSE `id:` (None when it had none).
    ids: list[int | None] = field(default_factory=list)
    done: bool = False

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [c for c in self.chunks if c["type"] == kind]

    @property
    def text(self) -> str:
        return "".join(c.delta for c in self.typed if isinstance(c, TextDeltaChunk))

    @property
    def run_status(self) -> str:
        return [c for c in self.typed if isinstance(c, RunDataChunk)][-1].data.status

    @property
    def tool_names(self) -> list[str]:
        return [c.tool_name for c in self.typed if isinstance(c, ToolInputAvailableChunk)]


def parse(response: httpx.Response) -> UIStream:
    return parse_text(response.text, response)


def parse_text(text: str, response: httpx.Response) -> UIStream:
    stream = UIStream(response)
    for event in text.split("\n\n"):
        data = [line[len("data: ") :] for line in event.split("\n") if line.startswith("data: ")]
        ids = [line[len("id: ") :] for line in event.split("\n") if line.startswith("id: ")]
        if not data:
            continue
        assert not stream.done, "nothing may follow [DONE]"
        payload = "\n".join(data)
        if payload == "[DONE]":
            stream.done = True
        else:
            stream.chunks.append(json.loads(payload))
            stream.typed.append(decode(payload))
            stream.ids.append(int(ids[-1]) if ids else None)
    return stream


def is_sub_run_progress(chunk: dict[str, Any]) -> bool:
    """A sub-agent's progress: a preliminary output (the first, at the child's start, is numbered; the
    ones the live tail sends are not)."""
    return chunk["type"] == "tool-output-available" and chunk.get("preliminary") is True


def assert_well_formed(stream: UIStream, *, resumed: bool = False) -> None:
    """The rules the AI SDK client enforces, plus Keel's own: one start, one finish, [DONE] last."""
    assert stream.response.headers["content-type"].startswith("text/event-stream")
    assert stream.response.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert stream.done, "the stream must end with [DONE]"
    chunks = stream.chunks
    assert chunks[0]["type"] == "start" and chunks[-1]["type"] == "finish"
    assert [c["type"] for c in chunks].count("start") == 1
    # Every chunk has an id, and ids only grow: but errors reported by the stream itself, and a
    # sub-agent's progress (sent whole again on a resume, never resumed from), have none.
    for chunk, chunk_id in zip(chunks, stream.ids, strict=True):
        assert chunk_id is not None or chunk["type"] == "error" or is_sub_run_progress(chunk), chunk
    ids = [i for c, i in zip(chunks, stream.ids, strict=True) if c["type"] != "error"]
    numbered = [i for i in ids if i is not None]
    assert numbered == sorted(set(numbered)), "SSE ids strictly increase"
    open_texts: set[str] = set()
    known_calls: set[str] = set()
    settled_calls: set[str] = set()
    in_step = False
    for chunk in chunks:
        kind = chunk["type"]
        if kind.startswith("data-"):
            assert set(chunk) <= {"type", "id", "data", "transient"}
            continue
        assert kind in ALLOWED_FIELDS, f"unknown chunk type {kind}"
        assert set(chunk) - {"type"} <= ALLOWED_FIELDS[kind], f"extra fields in {chunk}"
        if kind == "start-step":
            assert not in_step, "start-step inside a step"
            in_step = True
        elif kind == "finish-step":
            assert in_step and not open_texts, "finish-step without its start, or with text still open"
            in_step = False
        elif kind == "text-start":
            assert chunk["id"] not in open_texts
            open_texts.add(chunk["id"])
        elif kind in ("text-delta", "text-end"):
            assert chunk["id"] in open_texts, f"{kind} without its text-start"
            if kind == "text-end":
                open_texts.remove(chunk["id"])
        elif kind == "tool-input-available":
            known_calls.add(chunk["toolCallId"])
        elif kind in (
            "tool-output-available",
            "tool-output-error",
            "tool-output-denied",
            "tool-approval-request",
        ):
            assert chunk["toolCallId"] in known_calls or resumed, f"{kind} for an unknown call"
            # A preliminary output never follows the call's outcome: it would take the result's place.
            assert chunk["toolCallId"] not in settled_calls, f"{kind} after the call's outcome"
            if kind != "tool-approval-request" and not is_sub_run_progress(chunk):
                settled_calls.add(chunk["toolCallId"])
    assert not open_texts and not in_step


def user_message(text: str, message_id: str = "m1") -> dict[str, Any]:
    return {"id": message_id, "role": "user", "parts": [{"type": "text", "text": text}]}


def chat_body(text: str, chat_id: str | None = None, **extra: Any) -> dict[str, Any]:
    """A first message in a new chat (each call a new chat, unless `chat_id` says otherwise)."""
    chat_id = chat_id or f"chat-{uuid.uuid4().hex[:12]}"
    return {"id": chat_id, "messages": [user_message(text)], "trigger": "submit-message", **extra}


async def chat(http: httpx.AsyncClient, body: dict[str, Any]) -> UIStream:
    """POST /api/chat and check the stream. A body ending with the assistant's message continues a run,
    so its stream may speak of tool calls made in the stream before it."""
    response = await http.post("/api/chat", json=body)
    assert response.status_code == 200, response.text
    stream = parse(response)
    assert_well_formed(stream, resumed=body["messages"][-1]["role"] == "assistant")
    return stream


def assistant_message(
    *streams: UIStream, approvals: dict[str, bool] | None = None, outputs: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The assistant UI message `useChat` assembles from one or more streams of the same run, with the
    user's approval responses and client-side tool outputs added, as `addToolApprovalResponse` and
    `addToolResult` leave it. Assembled by the same code the `keel` command uses."""
    message = AssistantMessage()
    for stream in streams:
        for chunk in stream.typed:
            message.apply(chunk)
    tools = message.tools()
    for call_id, approved in (approvals or {}).items():
        tools[call_id].state = "approval-responded"
        tools[call_id].approval = ToolApproval(id=call_id, approved=approved)
    for call_id, output in (outputs or {}).items():
        tools[call_id].state, tools[call_id].output = "output-available", output
    return message.as_ui_message()
