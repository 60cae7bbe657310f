"""The `scripted` model: an honest, offline, deterministic stand-in for an LLM.

No language model is involved and every answer says so. It picks tools by their names or trigger words in
the latest user message, one tool per step in the purpose's order (all of them at once, as parallel calls,
when the message says "in parallel" or "at the same time"; each of them N times, one call a step, when
it says "N times"), fills arguments from earlier tool results (by
parameter name) or from the message itself, and once every wanted tool has run it writes a final answer
from the results. It streams its text in small chunks, like a real provider.

Asked for structured output, it gives its final answer as a JSON object built from the answer's schema,
deterministically: for each property, what an earlier tool result says under that name (when it fits the
property's schema), else the simplest value the schema allows (the first enum value, the minimum, false,
and strings that say no LLM was called).
"""

import asyncio
import json
import math
import re
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from typing import Any

import jsonschema

from activities.models.base import (
    Finish,
    ModelChunk,
    OutputDelta,
    OutputRequest,
    ProviderSetup,
    TextDelta,
    ToolChoice,
)
from keel.contracts import OUTPUT_FEEDBACK_PREFIX, Message, ToolCall, ToolSpec, Usage
from keel.text import clip

DISCLAIMER = "[scripted offline model: no LLM was called]"
_CHUNK_WORDS = 3
_PARALLEL = re.compile(r"\b(in parallel|at the same time)\b", re.IGNORECASE)
_REPEAT = re.compile(r"\b(\d{1,5}) times\b", re.IGNORECASE)
SLOW_CHUNK_DELAY = 0.2


def scripted_model(setup: ProviderSetup) -> "ScriptedModel":
    """`scripted` routes; `scripted:slow` writes five chunks a second: for watching a stream, or cancelling
    mid-answer."""
    delay = SLOW_CHUNK_DELAY if setup.route.model == "slow" else 0.0
    return ScriptedModel(setup.triggers, chunk_delay=delay)


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
        output: OutputRequest | None = None,
    ) -> AsyncIterator[ModelChunk]:
        usage_in = sum(_estimate_tokens(m.content) for m in messages)
        no_tools = tool_choice == "none" or (output is not None and output.now)
        calls = [] if no_tools else self.next_tool_calls(messages, tools)
        if calls:
            for call in calls:
                yield call
            written = sum(_estimate_tokens(str(c)) for c in calls)
            yield Finish("tool_calls", Usage(prompt_tokens=usage_in, completion_tokens=written))
            return
        if output is None:
            text, piece_type = self.answer(messages), TextDelta
        else:
            answer = example_object(output.spec.json_schema, _tool_results(messages))
            text, piece_type = json.dumps(answer, ensure_ascii=False), OutputDelta
        words = text.split(" ")
        for i in range(0, len(words), _CHUNK_WORDS):
            piece = " ".join(words[i : i + _CHUNK_WORDS])
            yield piece_type(piece if i + _CHUNK_WORDS >= len(words) else piece + " ")
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
    """The latest user message's text and the messages that came after it. A structured answer sent back
    for fixing is not a new request: the turn is still the user's."""
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message.role == "user" and not message.content.startswith(OUTPUT_FEEDBACK_PREFIX):
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


# --- structured output: an object of the schema's shape ---

_STRING_FORMATS = {
    "date": "2000-01-01",
    "date-time": "2000-01-01T00:00:00Z",
    "time": "00:00:00",
    "email": "scripted@example.com",
    "uri": "https://example.com/",
    "uuid": "00000000-0000-0000-0000-000000000000",
}


def example_object(schema: dict[str, Any], results: list[dict[str, Any]]) -> Any:
    """A value of the schema's shape, the same every time for the same tool results (newest first)."""
    return _example(schema, schema, results, None)


def _example(node: Any, root: dict[str, Any], results: list[dict[str, Any]], name: str | None) -> Any:
    if not isinstance(node, dict):
        return None  # `true`: anything goes
    node = _inline_ref(node, root)
    if name is not None:
        found = next((r[name] for r in results if name in r and _fits(r[name], node, root)), None)
        if found is not None:
            return found
    if "const" in node:
        return node["const"]
    if node.get("enum"):
        return node["enum"][0]
    if "default" in node:
        return node["default"]
    for union in ("anyOf", "oneOf"):
        if node.get(union):
            options = [o for o in node[union] if not (isinstance(o, dict) and o.get("type") == "null")]
            return _example((options or node[union])[0], root, results, name)
    if node.get("allOf"):
        merged: dict[str, Any] = {}
        for part in node["allOf"]:
            merged.update(_inline_ref(part, root) if isinstance(part, dict) else {})
        return _example(merged, root, results, name)
    kind = node.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in node:
        return {key: _example(sub, root, results, key) for key, sub in node.get("properties", {}).items()}
    if kind == "array":
        count = max(node.get("minItems", 0), min(1, node.get("maxItems", 1)))
        return [_example(node.get("items", {}), root, results, None) for _ in range(count)]
    if kind == "string":
        return _example_string(node)
    if kind in ("integer", "number"):
        return _example_number(node, kind == "integer")
    return False if kind == "boolean" else None


def _inline_ref(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if not (isinstance(ref, str) and ref.startswith("#/")):
        return node
    target: Any = root
    for key in ref[2:].split("/"):
        target = target.get(key, {}) if isinstance(target, dict) else {}
    rest = {k: v for k, v in node.items() if k != "$ref"}
    return _inline_ref({**target, **rest}, root) if isinstance(target, dict) else rest


def _fits(value: Any, node: dict[str, Any], root: dict[str, Any]) -> bool:
    schema = {**node, "$defs": root.get("$defs", {})}
    valid: bool = jsonschema.validators.validator_for(root)(schema).is_valid(value)
    return valid


def _example_string(node: dict[str, Any]) -> str:
    text = _STRING_FORMATS.get(node.get("format", ""), DISCLAIMER)
    text = text.ljust(node.get("minLength", 0), ".")
    return text[: node["maxLength"]] if "maxLength" in node else text


def _example_number(node: dict[str, Any], integer: bool) -> int | float:
    value: float = 0
    if "exclusiveMinimum" in node:
        value = max(value, node["exclusiveMinimum"] + (1 if integer else 0.5))
    if "minimum" in node:
        value = max(value, node["minimum"])
    if "exclusiveMaximum" in node:
        value = min(value, node["exclusiveMaximum"] - (1 if integer else 0.5))
    if "maximum" in node:
        value = min(value, node["maximum"])
    if node.get("multipleOf"):
        value = math.ceil(value / node["multipleOf"]) * node["multipleOf"]
    return math.ceil(value) if integer else float(value)


def _estimate_tokens(text: str) -> int:
    # A rough, deterministic count (about four characters a token); the scripted model has no tokenizer.
    return (len(text) + 3) // 4
