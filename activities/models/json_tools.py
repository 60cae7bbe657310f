"""JSON tool mode (`?tools=json` on a route): tool calling for models that have none of their own.

The model gets no tools through its API. Instead the system prompt lists the tools and asks for tool calls
as a JSON array in Keel's own shape; the answer is read tolerantly (code fences, prose around the JSON, a
lone object, a `{"tool_calls": [...]}` wrapper). Earlier calls and their results are written back into the
conversation as the same JSON, since such models know no `tool` role.

A reply that plainly tries to call a tool but is not valid JSON becomes a call carrying `arguments_error`:
`run_tool` answers it with an error result, the model sees what was wrong and can try again, and the
run's step limit bounds how often. It never fails the run.

Structured output is asked for in the same system prompt (the schema, and "reply with that object alone");
a reply with no tool call is then the answer, streamed on as `OutputDelta` and validated by the caller.
"""

import json
import re
from collections.abc import AsyncIterator
from typing import Any

from activities.models.base import (
    ChatModel,
    Finish,
    ModelChunk,
    OutputDelta,
    OutputRequest,
    TextDelta,
    ToolChoice,
    output_instructions,
    parse_arguments,
)
from keel.contracts import Message, ToolCall, ToolSpec
from keel.text import clip

TOOL_RESULTS_HEADER = "Tool results:"
_FENCE = re.compile(r"^\s*```[\w-]*\s*$", re.MULTILINE)
# What a reply that tries to call a tool looks like, even when its JSON is broken.
_CALL_ATTEMPT = re.compile(r'"type"\s*:\s*"tool_call"|"name"\s*:\s*"[^"]*"\s*,\s*"arguments"\s*:')
_NAME = re.compile(r'"name"\s*:\s*"([^"]+)"')


class JsonToolMode:
    """Wraps any provider; the provider itself is asked for plain text only."""

    def __init__(self, inner: ChatModel) -> None:
        self.inner = inner
        self.provider = inner.provider

    async def stream(
        self,
        *,
        messages: list[Message],
        model: str,
        tools: list[ToolSpec],
        tool_choice: ToolChoice = "auto",
        output: OutputRequest | None = None,
    ) -> AsyncIterator[ModelChunk]:
        no_tools = tool_choice == "none" or (output is not None and output.now)
        offered = [] if no_tools else tools
        prompt = to_json_mode_messages(messages, offered, output)
        text: list[str] = []
        finish: Finish | None = None
        # Buffered: until the answer is complete there is no telling prose from a tool call.
        async for chunk in self.inner.stream(messages=prompt, model=model, tools=[]):
            if isinstance(chunk, TextDelta):
                text.append(chunk.text)
            elif isinstance(chunk, Finish):
                finish = chunk
        if finish is None:
            return  # the caller reports the missing Finish
        used_ids = {c.id for m in messages for c in m.tool_calls}
        prose, calls = parse_tool_reply("".join(text), used_ids) if offered else ("".join(text), [])
        if prose:
            yield OutputDelta(prose) if output is not None and not calls else TextDelta(prose)
        for call in calls:
            yield call
        yield Finish("tool_calls" if calls else finish.reason, finish.usage, finish.request_id)


def instructions(tools: list[ToolSpec]) -> str:
    listing = json.dumps(
        [{"name": t.name, "description": t.description, "parameters": t.parameters} for t in tools],
        ensure_ascii=False,
    )
    example = json.dumps(
        [
            {
                "type": "tool_call",
                "id": "call_1",
                "name": tools[0].name,
                "arguments": {"<parameter>": "<value>"},
            }
        ]
    )
    return (
        "You can call tools. These are the tools, with their parameters as JSON Schema:\n"
        f"{listing}\n\n"
        "To call tools, reply with nothing but a JSON array of tool calls, exactly in this shape:\n"
        f"{example}\n"
        "Give each call a new id. Several calls in one reply run at the same time. The results come back "
        f'in a message that starts with "{TOOL_RESULTS_HEADER}". When you need no tool, answer in plain '
        "text without any JSON tool call."
    )


def to_json_mode_messages(
    messages: list[Message], tools: list[ToolSpec], output: OutputRequest | None = None
) -> list[Message]:
    """The conversation as plain system/user/assistant text, with consecutive roles merged.

    Merging matters: many local models' chat templates refuse two user messages in a row.
    """
    out: list[Message] = []

    def add(role: str, content: str) -> None:
        if out and out[-1].role == role:
            out[-1] = Message(role=out[-1].role, content=f"{out[-1].content}\n\n{content}")
        else:
            out.append(Message(role=role, content=content))  # type: ignore[arg-type]

    # One system message: many chat templates accept no other, and only as the first message.
    system = [m.content for m in messages if m.role == "system" and m.content]
    system += [instructions(tools)] if tools else []
    system += [output_instructions(output)] if output is not None else []
    if system:
        add("system", "\n\n".join(system))
    for m in messages:
        if m.role == "system":
            continue
        elif m.role == "assistant":
            calls = [
                {"type": "tool_call", "id": c.id, "name": c.name, "arguments": c.arguments}
                for c in m.tool_calls
            ]
            parts = [m.content] if m.content else []
            parts += [json.dumps(calls, ensure_ascii=False)] if calls else []
            if parts:
                add("assistant", "\n".join(parts))
        elif m.role == "tool":
            result = {
                "type": "tool_result",
                "id": m.tool_call_id,
                "name": m.name,
                "is_error": m.is_error,
                "content": m.content,
            }
            body = json.dumps(result, ensure_ascii=False)
            # Results of one step share one message: header once, then one result per line.
            if out and out[-1].role == "user" and out[-1].content.startswith(TOOL_RESULTS_HEADER):
                out[-1] = Message(role="user", content=f"{out[-1].content}\n{body}")
            else:
                add("user", f"{TOOL_RESULTS_HEADER}\n{body}")
        else:
            add("user", m.content)
    return out


def parse_tool_reply(
    text: str, used_ids: set[str] | frozenset[str] = frozenset()
) -> tuple[str, list[ToolCall]]:
    """Split a reply into its prose and its tool calls.

    JSON that is not tool-call shaped (the user asked for a JSON document, say) stays prose.
    """
    found = _find_calls(text)
    if found is None:
        if _CALL_ATTEMPT.search(text):
            # It meant to call a tool and the JSON is broken: tell the model, don't guess.
            named = _NAME.search(text)
            feedback = (
                "your tool call was not valid JSON, so no tool ran. Reply with only a JSON array of tool "
                f"calls in the shape shown in the instructions. You wrote: {clip(text.strip(), 500)}"
            )
            call = ToolCall(
                id=_new_id(used_ids),
                name=named.group(1) if named else "unknown_tool",
                arguments_error=feedback,
            )
            return "", [call]
        return text.strip(), []
    raw_calls, start, end = found
    calls: list[ToolCall] = []
    taken = set(used_ids)
    for raw in raw_calls:
        call_id = raw.get("id")
        if not isinstance(call_id, str) or not call_id or call_id in taken:
            call_id = _new_id(taken)
        taken.add(call_id)
        name = raw.get("name")
        arguments, problem = parse_arguments(raw.get("arguments", raw.get("parameters")))
        if not isinstance(name, str) or not name:
            name, problem = "unknown_tool", "the tool call has no name"
        calls.append(ToolCall(id=call_id, name=name, arguments=arguments, arguments_error=problem))
    prose = _FENCE.sub("", text[:start] + text[end:]).strip()
    return prose, calls


def _find_calls(text: str) -> tuple[list[dict[str, Any]], int, int] | None:
    """The first JSON value in the text that is tool-call shaped, with where it starts and ends."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[\[{]", text):
        try:
            value, end = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        calls = _as_calls(value)
        if calls is not None:
            return calls, match.start(), end
    return None


def _as_calls(value: Any) -> list[dict[str, Any]] | None:
    if isinstance(value, dict) and isinstance(value.get("tool_calls"), list):
        value = value["tool_calls"]
    items = value if isinstance(value, list) else [value]
    if items and all(isinstance(i, dict) and _is_call(i) for i in items):
        return items
    return None


def _is_call(item: dict[str, Any]) -> bool:
    return item.get("type") == "tool_call" or (
        "name" in item and ("arguments" in item or "parameters" in item)
    )


def _new_id(taken: set[str] | frozenset[str]) -> str:
    number = len(taken) + 1
    while f"call_{number}" in taken:
        number += 1
    return f"call_{number}"
