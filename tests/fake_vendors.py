"""A local HTTP server that speaks OpenAI's and Anthropic's wire formats, for the official SDKs to talk to.

    POST /v1/chat/completions   OpenAI Chat Completions (also what `local:` routes call), SSE chunks
    POST /v1/messages           Anthropic Messages, SSE events

Its "brain" is Keel's scripted model: the server turns the vendor request back into a conversation, asks
the scripted model, and streams the answer in the vendor's format, so every provider can be held to the
same outcome. It splits text and tool-call arguments into small pieces, puts usage in the last chunk, and
honours `stream_options.include_usage`. When the request carries no tools but a system prompt in Keel's
json tool mode, it answers with the JSON tool calls that mode asks for.

The model name asks for misbehaviour, optionally only for its first n requests (`status429x1`; the count
is per model name for the whole session, so give each such test a model name of its own):

    status<code>   answer HTTP <code> (429 with retry-after-ms; 401 echoing the key it was sent)
    quota          the account is out of credit (OpenAI: 429 insufficient_quota; Anthropic: 400 billing_error)
    cut            stop the stream mid-answer by dropping the connection
    malformed      tool-call arguments that are not valid JSON
    empty          no text and no tool calls
    errorfirst     an overload reported inside the stream, as its very first event (OpenAI: a chunk
                   `{"error": {"type": "server_error", ...}}`; Anthropic: an `error` event, overloaded_error)
    errorlate      the same overload, after the first few words of the answer
    invalidfirst   a bad-request error inside the stream, first (invalid_request_error)
    badchunk       after the first few words, a chunk whose data is not valid JSON, then the stream ends
    badoutput      a structured answer that never validates (its first required property left out)
    badoutputonce  the same, until the conversation holds Keel's validation errors: then a valid answer

A name may end in `-<tag>` (`status429x1-cooldown`), which changes nothing but the name, so a test gets a
count of its own. And a provider's rate limit:

    limit<n>per<s>s[-<tag>]   at most n requests in any s seconds (a rolling window), answered normally;
                              past it HTTP 429 with retry-after(-ms) saying when the oldest leaves the window

Structured output is answered the way each vendor asks for it: OpenAI's `response_format` json_schema (the
answer as the message's content), Anthropic's forced output tool (the answer as that tool's input), and
for local routes the schema in the system prompt (the answer as content, in a code fence as chatty models
write it). The brain builds the object from the schema and the tool results.

Any other model name just answers. Nothing here reaches the internet.
"""

import json
import re
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from activities.models.base import OUTPUT_INSTRUCTIONS, Finish, OutputDelta, OutputRequest, TextDelta
from activities.models.json_tools import TOOL_RESULTS_HEADER
from activities.models.scripted import ScriptedModel
from keel.app import load_app
from keel.contracts import (
    OUTPUT_FEEDBACK_PREFIX,
    OUTPUT_TOOL,
    Message,
    OutputSpec,
    ToolCall,
    ToolSpec,
    Usage,
)
from keel.stack.embedded import free_port

_PIECE = 6  # characters per streamed piece of arguments; small, so every call spans several chunks
_BEHAVIOUR = re.compile(
    r"^(status(?P<status>\d{3})|quota|cut|malformed|empty|errorfirst|errorlate|invalidfirst|badchunk"
    r"|badoutputonce|badoutput)"
    r"(x(?P<times>\d+))?(-\w+)?$"
)
_LIMIT = re.compile(r"^limit(?P<n>\d+)per(?P<s>\d+(\.\d+)?)s(-\w+)?$")
# How many pieces of text a stream writes before `errorlate` and `badchunk` break it.
_WORDS_BEFORE_TROUBLE = 3
# What each in-stream error mode reports, as (type, message); Anthropic calls an overload overloaded_error.
_STREAM_ERRORS = {
    "errorfirst": ("server_error", "server is overloaded"),
    "errorlate": ("server_error", "server is overloaded"),
    "invalidfirst": ("invalid_request_error", "Invalid value for 'messages[1].content': expected a string."),
}


@dataclass
class Answer:
    text: str
    calls: list[ToolCall]
    usage: Usage
    # The structured answer's JSON, when one was asked for and given.
    output: str = ""


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    # When it arrived (time.time()), and whether a `limit...` model refused it with a 429.
    at: float = field(default_factory=time.time)
    refused: bool = False


@dataclass
class FakeVendors:
    url: str
    requests: list[Recorded] = field(default_factory=list)
    # Requests per model name, so `status429x1` fails the first request and its retry succeeds.
    seen: Counter[str] = field(default_factory=Counter)
    # The times of the requests each `limit...` model answered, for its rolling window.
    accepted: dict[str, list[float]] = field(default_factory=dict)

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    def last(self, model: str) -> Recorded:
        return next(r for r in reversed(self.requests) if r.body.get("model") == model)

    def count(self, model: str) -> int:
        return sum(1 for r in self.requests if r.body.get("model") == model)

    def of(self, model: str) -> list[Recorded]:
        return [r for r in self.requests if r.body.get("model") == model]


def _brain() -> ScriptedModel:
    return ScriptedModel(load_app().triggers())


async def _think(
    messages: list[Message], tools: list[ToolSpec], output: OutputRequest | None = None
) -> Answer:
    text, calls, usage, answer = "", [], Usage(), ""
    wanted = {} if output is None else {"output": output}
    async for chunk in _brain().stream(messages=messages, model="brain", tools=tools, **wanted):
        if isinstance(chunk, OutputDelta):
            answer += chunk.text
        elif isinstance(chunk, TextDelta):
            text += chunk.text
        elif isinstance(chunk, ToolCall):
            calls.append(chunk)
        elif isinstance(chunk, Finish):
            usage = chunk.usage
    return Answer(text, calls, usage, answer)


# --- structured output, as the fake model sees it ---


def _output_request(schema: dict[str, Any], now: bool) -> OutputRequest:
    return OutputRequest(OutputSpec(name="answer", json_schema=schema), now=now)


def _prompted_output(system: str) -> OutputRequest | None:
    """The output Keel asked for in words (local routes, json tool mode), from the system prompt."""
    marker = OUTPUT_INSTRUCTIONS + "\n"
    if marker not in system:
        return None
    schema, _ = json.JSONDecoder().raw_decode(system, system.index(marker) + len(marker))
    return _output_request(schema, now="Give your final answer now" in system)


def _with_behaviour(answer: Answer, behaviour: str | None, messages: list[Message], schema: Any) -> Answer:
    """`badoutput` spoils every structured answer; `badoutputonce` only those before Keel's feedback."""
    fixing = any(m.role == "user" and m.content.startswith(OUTPUT_FEEDBACK_PREFIX) for m in messages)
    if not answer.output or behaviour not in ("badoutput", "badoutputonce"):
        return answer
    if behaviour == "badoutputonce" and fixing:
        return answer
    value = json.loads(answer.output)
    value.pop((schema.get("required") or list(value))[0], None)  # a required property left out
    return Answer(answer.text, answer.calls, answer.usage, json.dumps(value))


def _behaviour(vendors: FakeVendors, model: str) -> tuple[str | None, int | None]:
    """The misbehaviour the model name asks for, if it still applies to this request."""
    match = _BEHAVIOUR.match(model)
    if not match:
        return None, None
    vendors.seen[model] += 1
    times = match.group("times")
    if times is not None and vendors.seen[model] > int(times):
        return None, None
    status = match.group("status")
    return ("status", int(status)) if status else (match.group(1), None)  # type: ignore[return-value]


def _over_limit(vendors: FakeVendors, model: str) -> float | None:
    """For a `limit<n>per<s>s` model: None if this request fits its window (it is counted), otherwise the
    seconds until the oldest request of the window leaves it."""
    match = _LIMIT.match(model)
    if not match:
        return None
    n, window, now = int(match.group("n")), float(match.group("s")), time.time()
    times = [t for t in vendors.accepted.get(model, []) if t > now - window]
    if len(times) >= n:
        vendors.accepted[model] = times
        return times[0] + window - now
    vendors.accepted[model] = [*times, now]
    return None


def _rate_limited(vendors: FakeVendors, model: str, vendor: str) -> Response | None:
    """The 429 a `limit...` model answers past its limit, with the wait its window asks for."""
    wait = _over_limit(vendors, model)
    if wait is None:
        return None
    vendors.requests[-1].refused = True
    headers = {"retry-after-ms": str(max(1, round(wait * 1000))), "retry-after": str(max(1, round(wait)))}
    message = f"Rate limit reached for requests. Please try again in {wait:.1f}s."
    if vendor == "anthropic":
        body: dict[str, Any] = {"type": "error", "error": {"type": "rate_limit_error", "message": message}}
    else:
        body = {
            "error": {"message": message, "type": "requests", "param": None, "code": "rate_limit_exceeded"}
        }
    return JSONResponse(body, status_code=429, headers=headers)


def _status_response(status: int, vendor: str, request: Request) -> Response:
    key = request.headers.get("authorization", "") or request.headers.get("x-api-key", "")
    message = {
        401: f"Incorrect API key provided: {key.removeprefix('Bearer ')}",
        400: "This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens.",
        404: "The model does not exist or you do not have access to it.",
        429: "Rate limit reached for requests. Please try again in 1.5s.",
    }.get(status, "The server had an error while processing your request.")
    headers = {"retry-after-ms": "1500", "retry-after": "2"} if status == 429 else {}
    if vendor == "anthropic":
        kind = {401: "authentication_error", 429: "rate_limit_error", 400: "invalid_request_error"}.get(
            status, "api_error"
        )
        body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
        headers["request-id"] = f"req_fake_{status}"
    else:
        code = {401: "invalid_api_key", 400: "context_length_exceeded", 429: "rate_limit_exceeded"}.get(
            status
        )
        body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
        headers["x-request-id"] = f"req_fake_{status}"
    return JSONResponse(body, status_code=status, headers=headers)


def _quota_response(vendor: str) -> Response:
    """An account out of credit: OpenAI says so with a 429 that no retry can fix, Anthropic with a 400."""
    if vendor == "anthropic":
        error = {"type": "billing_error", "message": "Your credit balance is too low to access the API."}
        return JSONResponse({"type": "error", "error": error}, status_code=400)
    error = {
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "type": "insufficient_quota",
        "param": None,
        "code": "insufficient_quota",
    }
    return JSONResponse({"error": error}, status_code=429, headers={"retry-after": "2"})


def _openai_stream_error(behaviour: str) -> str:
    kind, message = _STREAM_ERRORS[behaviour]
    error = {"message": message, "type": kind, "param": None, "code": None}
    return f"data: {json.dumps({'error': error})}\n\n"


def _anthropic_stream_error(behaviour: str) -> str:
    kind, message = _STREAM_ERRORS[behaviour]
    if kind == "server_error":
        kind, message = "overloaded_error", "Overloaded"
    return _sse("error", {"type": "error", "error": {"type": kind, "message": message}})


# Chunks cut off inside their JSON, as a broken proxy might pass them on.
_OPENAI_BAD_CHUNK = 'data: {"id": "chatcmpl-fake", "object": "chat.completion.chu\n\n'
_ANTHROPIC_BAD_CHUNK = (
    'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, "delta": {"type": "te\n\n'
)


def _pieces(text: str, size: int) -> Iterator[str]:
    for i in range(0, len(text), size):
        yield text[i : i + size]


def _words(text: str) -> Iterator[str]:
    words = text.split(" ")
    for i, word in enumerate(words):
        yield word if i == len(words) - 1 else word + " "


# --- json tool mode, as the fake model sees it ---


def _json_mode_tools(system: str) -> list[ToolSpec] | None:
    marker = "These are the tools, with their parameters as JSON Schema:\n"
    if marker not in system:
        return None
    listing, _ = json.JSONDecoder().raw_decode(system, system.index(marker) + len(marker))
    return [ToolSpec(**t) for t in listing]


def _from_json_mode(messages: list[Message]) -> list[Message]:
    """Undo json tool mode's rendering: JSON calls back into tool_calls, 'Tool results:' into tool messages."""
    out: list[Message] = []
    for m in messages:
        if m.role == "assistant" and "[" in m.content:
            start = m.content.index("[")
            try:
                calls = json.loads(m.content[start:])
            except ValueError:
                calls = None
            if isinstance(calls, list):
                tool_calls = [ToolCall(id=c["id"], name=c["name"], arguments=c["arguments"]) for c in calls]
                out.append(
                    Message(role="assistant", content=m.content[:start].strip(), tool_calls=tool_calls)
                )
                continue
        if m.role == "user" and m.content.startswith(TOOL_RESULTS_HEADER):
            for line in m.content.splitlines()[1:]:
                r = json.loads(line)
                out.append(
                    Message(
                        role="tool",
                        tool_call_id=r["id"],
                        name=r["name"],
                        is_error=r["is_error"],
                        content=r["content"],
                    )
                )
            continue
        out.append(m)
    return out


def _as_json_mode(answer: Answer, behaviour: str | None) -> Answer:
    if not answer.calls:
        return answer
    calls = [
        {"type": "tool_call", "id": c.id, "name": c.name, "arguments": c.arguments} for c in answer.calls
    ]
    text = json.dumps(calls)
    if behaviour == "malformed":
        text = text[:-3]  # cut off the closing brackets
    # Fenced, as chatty models like to write it.
    return Answer(f"```json\n{text}\n```", [], answer.usage)


# --- OpenAI Chat Completions ---


def _openai_conversation(body: dict[str, Any]) -> tuple[list[Message], list[ToolSpec]]:
    messages: list[Message] = []
    for m in body["messages"]:
        if m["role"] == "assistant":
            calls = [
                ToolCall(
                    id=c["id"], name=c["function"]["name"], arguments=json.loads(c["function"]["arguments"])
                )
                for c in m.get("tool_calls") or []
            ]
            messages.append(Message(role="assistant", content=m.get("content") or "", tool_calls=calls))
        elif m["role"] == "tool":
            content = m["content"]
            is_error = content.startswith("Error: ")
            messages.append(
                Message(
                    role="tool",
                    tool_call_id=m["tool_call_id"],
                    content=content.removeprefix("Error: "),
                    is_error=is_error,
                )
            )
        else:
            messages.append(Message(role=m["role"], content=m["content"]))
    for m in messages:  # scripted reads tool results by name
        if m.role == "tool":
            m.name = next(c.name for a in messages for c in a.tool_calls if c.id == m.tool_call_id)
    tools = [
        ToolSpec(
            name=t["function"]["name"],
            description=t["function"]["description"],
            parameters=t["function"]["parameters"],
        )
        for t in body.get("tools") or []
    ]
    return messages, tools


async def _openai(request: Request) -> Response:
    vendors: FakeVendors = request.app.state.vendors
    raw = await request.body()
    body = json.loads(raw)
    vendors.requests.append(Recorded(request.url.path, dict(request.headers), body))
    model = body["model"]
    if (refusal := _rate_limited(vendors, model, "openai")) is not None:
        return refusal
    behaviour, status = _behaviour(vendors, model)
    if behaviour == "status":
        return _status_response(status or 500, "openai", request)
    if behaviour == "quota":
        return _quota_response("openai")
    messages, tools = _openai_conversation(body)
    system = next((m.content for m in messages if m.role == "system"), "")
    json_tools = None if tools else _json_mode_tools(system)
    response_format = (body.get("response_format") or {}).get("json_schema")
    if response_format is not None:
        output = _output_request(response_format["schema"], now=body.get("tool_choice") == "none")
    else:
        output = _prompted_output(system)
    if json_tools is not None:
        answer = _as_json_mode(await _think(_from_json_mode(messages), json_tools, output), behaviour)
    else:
        answer = await _think(messages, tools, output)
    if output is not None:
        answer = _with_behaviour(answer, behaviour, messages, output.spec.json_schema)
        # Asked in words, the fake answers as chatty local models do: in a code fence.
        content = answer.output if response_format is not None else f"```json\n{answer.output}\n```"
        answer = Answer(content if answer.output else answer.text, answer.calls, answer.usage)
    if behaviour == "empty":
        answer = Answer("", [], answer.usage)
    number = len(vendors.requests)
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    def chunk(delta: dict[str, Any] | None, finish: str | None = None, usage: Usage | None = None) -> str:
        payload: dict[str, Any] = {
            "id": f"chatcmpl-fake{number}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_fake",
            "choices": []
            if delta is None
            else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if usage is not None:
            payload["usage"] = {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            }
        return f"data: {json.dumps(payload)}\n\n"

    async def events() -> AsyncIterator[str]:
        if behaviour in ("errorfirst", "invalidfirst"):
            yield _openai_stream_error(behaviour)
            return
        yield chunk({"role": "assistant", "content": ""})
        for i, piece in enumerate(_words(answer.text) if answer.text else ()):
            if i == _WORDS_BEFORE_TROUBLE and behaviour in ("errorlate", "badchunk"):
                yield _openai_stream_error(behaviour) if behaviour == "errorlate" else _OPENAI_BAD_CHUNK
                return
            yield chunk({"content": piece})
        for index, call in enumerate(answer.calls):
            head = {
                "index": index,
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            yield chunk({"tool_calls": [head]})
            arguments = json.dumps(call.arguments)
            if behaviour == "malformed":
                arguments = arguments[:-1] + ', "unterminated'  # not JSON any more
            for i, piece in enumerate(_pieces(arguments, _PIECE)):
                if behaviour == "cut" and i == 2:
                    raise ConnectionAbortedError("fake vendor drops the connection mid-stream")
                yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
        if behaviour == "cut":
            raise ConnectionAbortedError("fake vendor drops the connection mid-stream")
        yield chunk({}, "tool_calls" if answer.calls else "stop")
        if include_usage:
            yield chunk(None, usage=answer.usage)
        yield "data: [DONE]\n\n"

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"x-request-id": f"req_fake_openai_{number}"}
    )


# --- Anthropic Messages ---


def _anthropic_conversation(body: dict[str, Any]) -> tuple[list[Message], list[ToolSpec]]:
    messages: list[Message] = []
    if body.get("system"):
        messages.append(Message(role="system", content=body["system"]))
    names: dict[str, str] = {}
    for m in body["messages"]:
        blocks = m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]
        text = "".join(b["text"] for b in blocks if b["type"] == "text")
        if m["role"] == "assistant":
            calls = [
                ToolCall(id=b["id"], name=b["name"], arguments=b["input"])
                for b in blocks
                if b["type"] == "tool_use"
            ]
            names.update({c.id: c.name for c in calls})
            messages.append(Message(role="assistant", content=text, tool_calls=calls))
            continue
        for b in blocks:
            if b["type"] == "tool_result":
                messages.append(
                    Message(
                        role="tool",
                        tool_call_id=b["tool_use_id"],
                        name=names[b["tool_use_id"]],
                        content=b.get("content", ""),
                        is_error=b.get("is_error", False),
                    )
                )
        if text:
            messages.append(Message(role="user", content=text))
    tools = [
        ToolSpec(name=t["name"], description=t["description"], parameters=t["input_schema"])
        for t in body.get("tools") or []
    ]
    return messages, tools


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


async def _anthropic(request: Request) -> Response:
    vendors: FakeVendors = request.app.state.vendors
    raw = await request.body()
    body = json.loads(raw)
    vendors.requests.append(Recorded(request.url.path, dict(request.headers), body))
    model = body["model"]
    if (refusal := _rate_limited(vendors, model, "anthropic")) is not None:
        return refusal
    behaviour, status = _behaviour(vendors, model)
    if behaviour == "status":
        return _status_response(status or 500, "anthropic", request)
    if behaviour == "quota":
        return _quota_response("anthropic")
    messages, tools = _anthropic_conversation(body)
    output_tool = next((t for t in tools if t.name == OUTPUT_TOOL), None)
    output = None
    if output_tool is not None:
        tools = [t for t in tools if t.name != OUTPUT_TOOL]
        output = _output_request(output_tool.parameters, now=body["tool_choice"]["type"] == "tool")
    answer = await _think(messages, tools, output)
    if output is not None:
        answer = _with_behaviour(answer, behaviour, messages, output.spec.json_schema)
    if behaviour == "empty":
        answer = Answer("", [], answer.usage)
    number = len(vendors.requests)
    # The structured answer is the forced tool's input, as the Messages API gives it.
    calls = answer.calls
    if answer.output:
        calls = [*calls, ToolCall(id=f"toolu_fake{number}", name=OUTPUT_TOOL, arguments={})]

    async def events() -> AsyncIterator[str]:
        if behaviour in ("errorfirst", "invalidfirst"):
            yield _anthropic_stream_error(behaviour)
            return
        message = {
            "id": f"msg_fake{number}",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": answer.usage.prompt_tokens, "output_tokens": 1},
        }
        yield _sse("message_start", {"type": "message_start", "message": message})
        index = 0
        if answer.text:
            yield _sse(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            )
            yield _sse("ping", {"type": "ping"})
            for i, piece in enumerate(_words(answer.text)):
                if i == _WORDS_BEFORE_TROUBLE and behaviour in ("errorlate", "badchunk"):
                    yield (
                        _anthropic_stream_error(behaviour)
                        if behaviour == "errorlate"
                        else _ANTHROPIC_BAD_CHUNK
                    )
                    return
                delta = {"type": "text_delta", "text": piece}
                yield _sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
            yield _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
            index = 1
        for call in calls:
            block = {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}
            yield _sse(
                "content_block_start", {"type": "content_block_start", "index": index, "content_block": block}
            )
            arguments = answer.output if call.name == OUTPUT_TOOL else json.dumps(call.arguments)
            if behaviour == "malformed":
                arguments = arguments[:-1] + ', "unterminated'
            for i, piece in enumerate(["", *_pieces(arguments, _PIECE)]):  # the real API starts with ""
                if behaviour == "cut" and i == 2:
                    raise ConnectionAbortedError("fake vendor drops the connection mid-stream")
                delta = {"type": "input_json_delta", "partial_json": piece}
                yield _sse(
                    "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
                )
            yield _sse("content_block_stop", {"type": "content_block_stop", "index": index})
            index += 1
        if behaviour == "cut":
            raise ConnectionAbortedError("fake vendor drops the connection mid-stream")
        stop = "tool_use" if calls else "end_turn"
        yield _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": answer.usage.completion_tokens},
            },
        )
        yield _sse("message_stop", {"type": "message_stop"})

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"request-id": f"req_fake_anthropic_{number}"}
    )


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # runs in a thread; the test process owns its signals
        pass


def start_fake_vendors() -> tuple[FakeVendors, "_Server", threading.Thread]:
    port = free_port()
    vendors = FakeVendors(url=f"http://127.0.0.1:{port}")
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", _openai, methods=["POST"]),
            Route("/v1/messages", _anthropic, methods=["POST"]),
        ]
    )
    app.state.vendors = vendors
    server = _Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical", lifespan="off"))
    thread = threading.Thread(target=server.run, name="fake-vendors", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the fake vendor server did not start")
        time.sleep(0.01)
    return vendors, server, thread


def stop_fake_vendors(server: "_Server", thread: threading.Thread) -> None:
    server.should_exit = True
    thread.join(timeout=10)
