"""The `scripted` model: an honest, offline, deterministic stand-in for an LLM.

No language model is involved and every answer says so. It picks tools by their names or trigger words in
the latest user message, one tool per step in the purpose's order (all of them at once, as parallel calls,
when the message says "in parallel" or "at the same time"; each of them N times, one call a step, when
it says "N times"), fills arguments from earlier tool results (by
parameter name) or from the message itself, and once every wanted tool has run it writes a final answer
from the results. It streams its text in small chunks, like a real provider.
"""

import asyncio
import json
import re
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from typing import Any

from activities.models.base import Finish, ModelChunk, TextDelta, ToolChoice
from keel.contracts import Message, ToolCall, ToolSpec, Usage
from keel.text import clip

DISCLAIMER = "[scripted offline model: no LLM was called]"
_CHUNK_WORDS = 3
_PARALLEL = re.compile(r"\b(in parallel|at the same time)\b", re.IGNORECASE)
_REPEAT = re.compile(r"\b(\d{1,5}) times\b", re.IGNORECASE)


class ScriptedModel:
    provider = "scripted"

    def __init__(self, triggers: Mapping[str, tuple[str, ...]], *, chunk_delay: float = 0.0) -> None:
        self._triggers = triggers
        self._chunk_delay = chunk_delay

    async def stream(
        self,
        *,
        messages: list[Message],
        model: str,
        tools: list[ToolSpec],
        tool_choice: ToolChoice = "auto",
    ) -> AsyncIterator[ModelChunk]:
        usage_in = sum(_estimate_tokens(m.content) for m in messages)
        calls = [] if tool_choice == "none" else self.next_tool_calls(messages, tools)
        if calls:
            for call in calls:
                yield call
            written = sum(_estimate_tokens(str(c)) for c in calls)
            yield Finish("tool_calls", Usage(prompt_tokens=usage_in, completion_tokens=written))
            return
        text = self.answer(messages)
        words = text.split(" ")
        for i in range(0, len(words), _CHUNK_WORDS):
            piece = " ".join(words[i : i + _CHUNK_WORDS])
            yield TextDelta(piece if i + _CHUNK_WORDS >= len(words) else piece + " ")
            if self._chunk_delay:
                await asyncio.sleep(self._chunk_delay)
        yield Finish("stop", Usage(prompt_tokens=usage_in, completion_tokens=_estimate_tokens(text)))

    def next_tool_call(self, messages: list[Message], tools: list[ToolSpec]) -> ToolCall | None:
        calls = self.next_tool_calls(messages, tools)
        return calls[0] if calls else None

    def next_tool_calls(self, messages: list[Message], tools: list[ToolSpec]) -> list[ToolCall]:
        turn = _latest_turn(messages)
        if turn is None:
            return []
        request, since = turn
        called = Counter(c.name for m in since for c in m.tool_calls)
        repeat = _REPEAT.search(request)
        times = int(repeat.group(1)) if repeat else 1
        calls: list[ToolCall] = []
        for spec in tools:
            if called[spec.name] >= times or not self._wanted(spec, request):
                continue
            arguments = _arguments(spec, request, _tool_results(messages))
            if arguments is None:
                continue
            call_number = 1 + sum(len(m.tool_calls) for m in messages) + len(calls)
            calls.append(ToolCall(id=f"call_{call_number}", name=spec.name, arguments=arguments))
            if not _PARALLEL.search(request):
                break
        return calls

    def answer(self, messages: list[Message]) -> str:
        turn = _latest_turn(messages)
        if turn is None:
            return f"{DISCLAIMER} There is no user message to answer."
        request, since = turn
        results = [m for m in since if m.role == "tool"]
        if not results:
            return (
                f"{DISCLAIMER} You said: “{clip(request, 200)}”. I only run this purpose's tools when "
                "your message names them or their trigger words; set KEEL_MODEL to a real model for "
                "open-ended answers."
            )
        lines = [f"{DISCLAIMER} I ran {len(results)} tool call(s):"]
        markdown = _latest_markdown(results)
        for m in results:
            if m.is_error:
                lines.append(f"- {m.name} failed: {clip(m.content, 300)}")
            elif markdown and (_json_object(m.content) or {}).get("markdown") == markdown:
                lines.append(f"- {m.name} wrote the Markdown below")
            else:
                lines.append(f"- {m.name} returned: {clip(m.content, 300)}")
        if markdown:
            lines += ["", markdown]
        return "\n".join(lines)

    def _wanted(self, spec: ToolSpec, request: str) -> bool:
        words = (spec.name, *self._triggers.get(spec.name, ()))
        return any(re.search(rf"\b{re.escape(w.lower())}s?\b", request.lower()) for w in words)


def _latest_turn(messages: list[Message]) -> tuple[str, list[Message]] | None:
    """The latest user message's text and the messages that came after it."""
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].role == "user":
            return messages[index].content, messages[index + 1 :]
    return None


def _tool_results(messages: list[Message]) -> list[dict[str, Any]]:
    """Successful tool results that are JSON objects, newest first."""
    objects = (_json_object(m.content) for m in reversed(messages) if m.role == "tool" and not m.is_error)
    return [o for o in objects if o is not None]


def _arguments(spec: ToolSpec, request: str, results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Arguments for a tool, or None when a required one can't be derived."""
    properties: dict[str, Any] = spec.parameters.get("properties", {})
    required = set(spec.parameters.get("required", []))
    arguments: dict[str, Any] = {}
    for name, schema in properties.items():
        value = next((r[name] for r in results if name in r), None)
        if value is None:
            # A property's schema may be `true` or `false` (valid JSON Schema): no type to go by.
            kind = schema.get("type") if isinstance(schema, dict) else None
            value = _from_request(name, kind, request, name in required)
        if value is not None:
            arguments[name] = value
        elif name in required:
            return None
    return arguments


def _from_request(name: str, kind: str | None, request: str, required: bool) -> Any:
    if name == "expression":
        candidates = re.findall(r"[\d.\s()+\-*/%^]+", request)
        expressions = [c.strip() for c in candidates if re.search(r"\d", c) and re.search(r"[+\-*/%^]", c)]
        return max(expressions, key=len) if expressions else None
    if name in ("topic", "subject", "title", "query"):
        match = re.search(r"\b(?:on|about)\s+(.+?)[\s.?!]*$", request, re.IGNORECASE)
        return (match.group(1) if match else request).strip()[:200]
    if kind in ("integer", "number"):
        number = re.search(r"\d+", request)
        return int(number.group()) if number else None
    if kind == "string" and required:
        # The whole message is a poor guess, but better than no call; optional ones keep their default.
        return request[:2000]
    return None


def _latest_markdown(results: list[Message]) -> str | None:
    for m in reversed(results):
        value = (_json_object(m.content) or {}).get("markdown")
        if not m.is_error and isinstance(value, str):
            return value
    return None


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _estimate_tokens(text: str) -> int:
    # A rough, deterministic count (about four characters a token); the scripted model has no tokenizer.
    return (len(text) + 3) // 4
