"""OpenAI's Chat Completions API through the official `openai` SDK, streaming.

Serves two providers (registered in keel.routes): `openai:<model>` (OPENAI_API_KEY, OPENAI_BASE_URL,
`openai_model`) and `local:<model>`, any OpenAI-compatible server (vLLM, Ollama, llama.cpp's server) at
KEEL_LOCAL_BASE_URL, which needs no key (`local_model`).

Structured output: OpenAI gets `response_format` with the answer's JSON schema (strict when the schema can
be made strict). A local server gets the schema in the system prompt instead: servers differ in which
response formats they take and in whether a constrained format still lets the model call tools, while
words work everywhere and the answer is validated either way.
"""

import asyncio
import copy
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from openai import AsyncOpenAI

from activities.models.base import (
    Finish,
    ModelChunk,
    OutputDelta,
    OutputRequest,
    ProviderSetup,
    TextDelta,
    ToolChoice,
    finish_reason,
    tool_call,
    with_output_instructions,
)
from activities.models.errors import provider_failures, stream_cut
from keel.contracts import Message, OutputSpec, ToolSpec, Usage

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
    def __init__(
        self,
        provider: str,
        *,
        base_url: str | None,
        api_key: str | None,
        timeout: float,
        prompted_output: bool = False,
    ) -> None:
        self.provider = provider
        self._base_url = base_url
        self._api_key = api_key
        self._timeout = timeout
        # Structured output asked for in the system prompt instead of a response format (see above).
        self._prompted_output = prompted_output

    async def stream(
        self,
        *,
        messages: list[Message],
        model: str,
        tools: list[ToolSpec],
        tool_choice: ToolChoice = "auto",
        output: OutputRequest | None = None,
    ) -> AsyncIterator[ModelChunk]:
        if output is not None and self._prompted_output:
            messages = with_output_instructions(messages, output)
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
            # An answer that failed validation is fixed without tools (still listed: the conversation
            # names them).
            request["tool_choice"] = "none" if output is not None and output.now else tool_choice
        if output is not None and not self._prompted_output:
            request["response_format"] = response_format(output.spec)
        # With structured output wanted, whatever the model writes is (a piece of) its answer.
        text_chunk = OutputDelta if output is not None else TextDelta
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
                        yield text_chunk(choice.delta.content)
                    if refusal := getattr(choice.delta, "refusal", None):
                        # A model that declines a structured answer says why in words instead.
                        yield TextDelta(refusal)
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


def openai_model(setup: ProviderSetup) -> OpenAIChatModel:
    """`openai:<model>` routes: OpenAI, or a proxy of it at OPENAI_BASE_URL."""
    return OpenAIChatModel(
        setup.route.provider,
        base_url=setup.settings.openai_base_url,
        api_key=setup.api_key,
        timeout=setup.settings.model_timeout,
    )


def local_model(setup: ProviderSetup) -> OpenAIChatModel:
    """`local:<model>` routes: an OpenAI-compatible server of your own, at KEEL_LOCAL_BASE_URL."""
    return OpenAIChatModel(
        setup.route.provider,
        base_url=setup.settings.local_base_url,
        # A local server ignores the key, but the SDK insists on one.
        api_key=setup.api_key or "no-key-needed",
        timeout=setup.settings.model_timeout,
        prompted_output=True,
    )


def response_format(spec: OutputSpec) -> dict[str, Any]:
    """OpenAI's `response_format` for a structured answer: strict (the model can only write a matching
    object) when the schema allows it, else the schema as guidance, the answer being validated anyway."""
    strict = strict_schema(spec.json_schema)
    return {
        "type": "json_schema",
        "json_schema": {
            "name": spec.name,
            "schema": strict or spec.json_schema,
            "strict": strict is not None,
        },
    }


# What OpenAI's strict mode accepts in a schema; a schema using anything else is sent without `strict`.
_STRICT_KEYWORDS = {
    "type", "properties", "required", "additionalProperties", "items", "enum", "const", "anyOf", "$ref",
    "$defs", "description", "title", "default", "pattern", "format", "minimum", "maximum",
    "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minItems", "maxItems",
}  # fmt: skip


class _NotStrict(Exception):
    pass


def strict_schema(schema: dict[str, Any]) -> dict[str, Any] | None:
    """The schema in the form strict mode demands, or None when it has no such form.

    Strict mode wants every object closed (`additionalProperties: false`) and every property required:
    an object that allows extra keys (a `dict[str, X]` field) can't be strict, while an optional field
    stays what it was for validation (which uses the original schema): the model just always sends it,
    null where pydantic made it nullable. Defaults mean nothing then and go; a `$ref` with words next
    to it (a field's description) is inlined, which strict mode also wants."""
    try:
        return _strict(copy.deepcopy(schema), schema)
    except _NotStrict:
        return None


def _strict(node: Any, root: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(node, dict) or set(node) - _STRICT_KEYWORDS:
        raise _NotStrict
    if "$ref" in node and len(node) > 1:
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        return _strict({**copy.deepcopy(_resolve(root, node["$ref"])), **siblings}, root)
    node.pop("default", None)
    if isinstance(node.get("$defs"), dict):
        node["$defs"] = {name: _strict(d, root) for name, d in node["$defs"].items()}
    if node.get("type") == "object" or "properties" in node:
        if node.get("additionalProperties", False) is not False:
            raise _NotStrict
        properties = node.get("properties", {})
        node["properties"] = {name: _strict(p, root) for name, p in properties.items()}
        node["required"] = list(properties)
        node["additionalProperties"] = False
    if "items" in node:
        node["items"] = _strict(node["items"], root)
    if "anyOf" in node:
        if not isinstance(node["anyOf"], list):
            raise _NotStrict
        node["anyOf"] = [_strict(v, root) for v in node["anyOf"]]
    return node


def _resolve(root: dict[str, Any], ref: Any) -> Any:
    if not isinstance(ref, str) or not ref.startswith("#/"):
        raise _NotStrict
    node: Any = root
    for key in ref[2:].split("/"):
        if not isinstance(node, dict) or key not in node:
            raise _NotStrict
        node = node[key]
    return node


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
