"""Anthropic's Messages API through the official `anthropic` SDK, streaming (`anthropic:<model>` routes).

The key (ANTHROPIC_API_KEY) and base URL (ANTHROPIC_BASE_URL) come from the worker's environment
(`anthropic_model`, registered in keel.routes); without a key the SDK finds other credentials itself
(ANTHROPIC_AUTH_TOKEN).

Structured output goes through a forced tool: a synthetic tool (OUTPUT_TOOL) whose input schema is the
answer's. While the agent's tools may still be needed, tool_choice `any` makes the model either call one of
them or give its answer through that tool (never plain text); an answer that failed validation is fixed
with tool_choice naming the output tool. Its input streams out as the answer's text (`OutputDelta`) and
the call itself never reaches the workflow, so it can't be taken for one of the agent's tools.
"""

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from anthropic import AsyncAnthropic

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
)
from activities.models.errors import provider_failures, stream_cut
from keel.contracts import OUTPUT_TOOL, Message, ToolSpec, Usage

_clients: dict[tuple[Any, ...], AsyncAnthropic] = {}
_TOOL_CHOICE = {"auto": {"type": "auto"}, "none": {"type": "none"}, "required": {"type": "any"}}


def anthropic_client(*, base_url: str | None, api_key: str | None, timeout: float) -> AsyncAnthropic:
    """One client per configuration and event loop; `max_retries=0` leaves retries to Temporal.

    With `api_key=None` the SDK looks for credentials itself (ANTHROPIC_AUTH_TOKEN, profiles).
    """
    key = (id(asyncio.get_running_loop()), base_url, api_key, timeout)
    if key not in _clients:
        _clients[key] = AsyncAnthropic(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0)
    return _clients[key]


@dataclass
class _ToolUse:
    id: str
    name: str
    initial_input: dict[str, Any]
    json: list[str] = field(default_factory=list)


class AnthropicModel:
    provider = "anthropic"

    def __init__(self, *, base_url: str | None, api_key: str | None, timeout: float, max_tokens: int) -> None:
        self._base_url = base_url
        self._api_key = api_key
        self._timeout = timeout
        self._max_tokens = max_tokens

    async def stream(
        self,
        *,
        messages: list[Message],
        model: str,
        tools: list[ToolSpec],
        tool_choice: ToolChoice = "auto",
        output: OutputRequest | None = None,
    ) -> AsyncIterator[ModelChunk]:
        system, turns = to_anthropic_messages(messages)
        request: dict[str, Any] = {
            "model": model,
            "max_tokens": self._max_tokens,
            "messages": turns,
            "stream": True,
        }
        if system:
            request["system"] = system
        if tools:
            request["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": t.parameters} for t in tools
            ]
            request["tool_choice"] = _TOOL_CHOICE[tool_choice]
        if output is not None:
            request["tools"] = [*request.get("tools", []), output_tool(output)]
            answer_now = output.now or not tools
            request["tool_choice"] = {"type": "tool", "name": OUTPUT_TOOL} if answer_now else {"type": "any"}
        tool_uses: dict[int, _ToolUse] = {}
        # The output tool's calls: the structured answer, streamed as text as it comes.
        answers: dict[int, _ToolUse] = {}
        stop_reason: str | None = None
        finished = False
        prompt_tokens = completion_tokens = 0
        with provider_failures(self.provider):
            client = anthropic_client(base_url=self._base_url, api_key=self._api_key, timeout=self._timeout)
            stream = await client.messages.create(**request)
            request_id = stream.response.headers.get("request-id")
            async for event in stream:
                if event.type == "message_start":
                    request_id = request_id or event.message.id
                    prompt_tokens = _input_tokens(event.message.usage)
                    completion_tokens = event.message.usage.output_tokens or 0
                elif event.type == "content_block_start":
                    block = event.content_block
                    if block.type == "tool_use" and block.name == OUTPUT_TOOL and output is not None:
                        answers[event.index] = _ToolUse(block.id, block.name, dict(block.input or {}))
                    elif block.type == "tool_use":
                        tool_uses[event.index] = _ToolUse(block.id, block.name, dict(block.input or {}))
                    elif block.type == "text" and block.text:
                        yield TextDelta(block.text)
                elif event.type == "content_block_delta":
                    delta = event.delta
                    if delta.type == "text_delta" and delta.text:
                        yield TextDelta(delta.text)
                    elif delta.type == "input_json_delta" and event.index in answers:
                        answers[event.index].json.append(delta.partial_json)
                        if delta.partial_json:
                            yield OutputDelta(delta.partial_json)
                    elif delta.type == "input_json_delta" and event.index in tool_uses:
                        tool_uses[event.index].json.append(delta.partial_json)
                elif event.type == "message_delta":
                    stop_reason = event.delta.stop_reason or stop_reason
                    # Both counts are cumulative; output_tokens here is the final one.
                    completion_tokens = event.usage.output_tokens or completion_tokens
                    prompt_tokens = max(prompt_tokens, _input_tokens(event.usage))
                elif event.type == "message_stop":
                    finished = True
        if not finished:
            raise stream_cut(self.provider)
        for use in answers.values():
            if not "".join(use.json):  # the input came whole in the block's start, not in pieces
                yield OutputDelta(json.dumps(use.initial_input, ensure_ascii=False))
        calls = [
            tool_call(use.id, use.name, "".join(use.json) if use.json else use.initial_input)
            for _, use in sorted(tool_uses.items())
        ]
        for call in calls:
            yield call
        usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        yield Finish(finish_reason(stop_reason, bool(calls)), usage, request_id)


def anthropic_model(setup: ProviderSetup) -> AnthropicModel:
    """`anthropic:<model>` routes."""
    settings = setup.settings
    return AnthropicModel(
        base_url=settings.anthropic_base_url,
        api_key=setup.api_key,
        timeout=settings.model_timeout,
        max_tokens=settings.anthropic_max_tokens,
    )


def output_tool(output: OutputRequest) -> dict[str, Any]:
    """The synthetic tool through which the model gives its structured answer."""
    spec = output.spec
    return {
        "name": OUTPUT_TOOL,
        "description": (
            f"Give your final answer, a {spec.name}, as this tool's input. Call it once, when you need no "
            "other tool any more."
        ),
        "input_schema": spec.json_schema,
    }


def _input_tokens(usage: Any) -> int:
    # Prompt tokens are input_tokens plus whatever was written to or read from the prompt cache.
    return sum(
        getattr(usage, name, None) or 0
        for name in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )


def to_anthropic_messages(messages: list[Message]) -> tuple[str, list[dict[str, Any]]]:
    """Keel's messages as Anthropic's: one system string, and user/assistant turns that alternate.

    Tool results travel as `tool_result` blocks of a user turn; consecutive blocks of one role are merged
    into one turn, which the Messages API requires.
    """
    system = "\n\n".join(m.content for m in messages if m.role == "system" and m.content)
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    for m in messages:
        if m.role == "user":
            add("user", [{"type": "text", "text": m.content}] if m.content else [])
        elif m.role == "assistant":
            blocks: list[dict[str, Any]] = [{"type": "text", "text": m.content}] if m.content else []
            blocks += [
                {"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments} for c in m.tool_calls
            ]
            add("assistant", blocks)
        elif m.role == "tool":
            result: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": m.tool_call_id,
                "is_error": m.is_error,
            }
            if m.content:
                result["content"] = m.content
            add("user", [result])
    return system, turns
