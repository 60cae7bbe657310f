"""OpenAI's Chat Completions API through the official `openai` SDK, streaming.

Serves two kinds of routes: `openai:<model>` (OPENAI_API_KEY, OPENAI_BASE_URL) and `local:<model>`, any
OpenAI-compatible server (vLLM, Ollama, llama.cpp's server) at KEEL_LOCAL_BASE_URL, which needs no key.
"""

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from openai import AsyncOpenAI

from activities.models.base import Finish, ModelChunk, TextDelta, ToolChoice, finish_reason, tool_call
from activities.models.errors import provider_failures, stream_cut
from keel.contracts import Message, ToolSpec, Usage

_clients: dict[tuple[Any, ...], AsyncOpenAI] = {}


def openai_client(*, base_url: str | None, api_key: str | None, timeout: float) -> AsyncOpenAI:
    """One client per configuration and event loop, so connections are reused across calls.

    `max_retries=0`: retries are Temporal's, with backoff and history, not hidden inside the SDK.
    `api_key=None` and `base_url=None` let the SDK read OPENAI_API_KEY and OPENAI_BASE_URL itself.
    """
    key = (id(asyncio.get_running_loop()), base_url, api_key, timeout)
    if key not in _clients:
        _clients[key] = AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0)
    return _clients[key]


@dataclass
class _PendingCall:
    """A tool call being assembled from its streamed pieces."""

    id: str | None = None
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class OpenAIChatModel:
    def __init__(self, provider: str, *, base_url: str | None, api_key: str | None, timeout: float) -> None:
        self.provider = provider
        self._base_url = base_url
        self._api_key = api_key
        self._timeout = timeout

    async def stream(
        self,
        *,
        messages: list[Message],
        model: str,
        tools: list[ToolSpec],
        tool_choice: ToolChoice = "auto",
    ) -> AsyncIterator[ModelChunk]:
        request: dict[str, Any] = {
            "model": model,
            "messages": to_openai_messages(messages),
            "stream": True,
            # Usage arrives in one last chunk only when asked for.
            "stream_options": {"include_usage": True},
        }
        if tools:
            request["tools"] = [
                {
                    "type": "function",
                    "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
                }
                for t in tools
            ]
            request["tool_choice"] = tool_choice
        with provider_failures(self.provider):
            client = openai_client(base_url=self._base_url, api_key=self._api_key, timeout=self._timeout)
            stream = await client.chat.completions.create(**request)
            request_id = stream.response.headers.get("x-request-id")
            pending: dict[int, _PendingCall] = {}
            vendor_reason: str | None = None
            usage = Usage()
            async for chunk in stream:
                request_id = request_id or chunk.id
                if chunk.usage is not None:
                    usage = Usage(
                        prompt_tokens=chunk.usage.prompt_tokens,
                        completion_tokens=chunk.usage.completion_tokens,
                    )
                for choice in chunk.choices:
                    if choice.index != 0:
                        continue
                    if choice.delta.content:
                        yield TextDelta(choice.delta.content)
                    for piece in choice.delta.tool_calls or ():
                        _add_piece(pending, piece)
                    vendor_reason = choice.finish_reason or vendor_reason
        if vendor_reason is None:
            # No finish_reason: the connection closed cleanly in the middle of the answer.
            raise stream_cut(self.provider)
        calls = [
            tool_call(p.id or f"call_{uuid.uuid4().hex[:16]}", p.name, "".join(p.arguments))
            for _, p in sorted(pending.items())
        ]
        for call in calls:
            yield call
        yield Finish(finish_reason(vendor_reason, bool(calls)), usage, request_id)


def _add_piece(pending: dict[int, _PendingCall], piece: Any) -> None:
    """Fold one streamed tool-call delta into its call: `index` says which call, arguments come in pieces."""
    index = getattr(piece, "index", None)
    if index is None:  # a server that leaves out the index sends each call whole, one after the other
        index = len(pending)
    call = pending.setdefault(index, _PendingCall())
    call.id = call.id or piece.id
    function = piece.function
    if function is None:
        return
    if function.name and function.name != call.name:
        # Names normally come whole in the first piece; a few servers stream them too.
        call.name = function.name if not call.name else call.name + function.name
    if function.arguments:
        call.arguments.append(function.arguments)


def to_openai_messages(messages: list[Message]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "assistant":
            if not m.content and not m.tool_calls:
                continue  # an empty answer from an earlier turn tells the model nothing
            entry: dict[str, Any] = {"role": "assistant", "content": m.content or None}
            if m.tool_calls:
                entry["tool_calls"] = [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {
                            "name": c.name,
                            "arguments": json.dumps(c.arguments, ensure_ascii=False),
                        },
                    }
                    for c in m.tool_calls
                ]
            out.append(entry)
        elif m.role == "tool":
            # Chat Completions has no error flag on tool results, so the text says it.
            content = f"Error: {m.content}" if m.is_error else m.content
            out.append({"role": "tool", "tool_call_id": m.tool_call_id, "content": content})
        else:
            out.append({"role": m.role, "content": m.content})
    return out
