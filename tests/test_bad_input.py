"""Bad input gets a 4xx with a message that says what is wrong, never a 500, and starts no run."""

import json
from dataclasses import replace
from typing import Any

import httpx
import pytest
from keel_examples import assistant

from tests.ui_stream import chat_body, parse, user_message

GOOD = chat_body("hello")
PUBLISH = "plan, write and publish a lesson on arrays"


def without(key: str) -> dict[str, Any]:
    return {k: v for k, v in GOOD.items() if k != key}


BAD_BODIES: dict[str, tuple[Any, int, str]] = {
    "no messages field": (without("messages"), 422, "messages"),
    "no chat id": (without("id"), 422, "id"),
    "empty messages": ({**GOOD, "messages": []}, 422, "messages"),
    "messages not a list": ({**GOOD, "messages": "hello"}, 422, "messages"),
    "unknown role": ({**GOOD, "messages": [{"id": "m", "role": "robot", "parts": []}]}, 422, "role"),
    "parts missing": ({**GOOD, "messages": [{"id": "m", "role": "user"}]}, 422, "parts"),
    "last message from the assistant": (
        {
            **GOOD,
            "messages": [
                user_message("hi"),
                {"id": "a", "role": "assistant", "parts": [{"type": "text", "text": "x"}]},
            ],
        },
        400,
        "does not name a run to continue",
    ),
    "assistant message answering an unknown run": (
        {
            **GOOD,
            "messages": [
                user_message("hi"),
                {"id": "run-00000000-0000-0000-0000-000000000000", "role": "assistant", "parts": []},
            ],
        },
        404,
        "no run",
    ),
    "user message without text": (
        {**GOOD, "messages": [{"id": "m", "role": "user", "parts": [{"type": "file", "url": "x"}]}]},
        400,
        "last message must be a user message",
    ),
    "text part without text": (
        {**GOOD, "messages": [{"id": "m", "role": "user", "parts": [{"type": "text", "text": 3}]}]},
        400,
        "text part needs a string",
    ),
    "unknown purpose": ({**GOOD, "purpose": "nope"}, 400, "unknown purpose 'nope'"),
    "max_steps zero": ({**GOOD, "max_steps": 0}, 422, "max_steps"),
    "unknown trigger": ({**GOOD, "trigger": "shout"}, 422, "trigger"),
    "context too large": ({**GOOD, "context": {"blob": "x" * 30_000}}, 400, "context is larger"),
    "message too long": (chat_body("x" * 100_001), 400, "longer than 100000 characters"),
    "a list instead of an object": ([GOOD], 422, ""),
}


@pytest.mark.parametrize("case", BAD_BODIES)
async def test_malformed_chat_bodies_are_4xx_with_a_message(http: httpx.AsyncClient, case: str) -> None:
    body, status, words = BAD_BODIES[case]
    response = await http.post("/api/chat", json=body)
    assert response.status_code == status, response.text
    assert words in response.text
    assert "x-agent-run-id" not in response.headers


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"", "application/json"),
        (b"hello", "text/plain"),
        (b"\xff\xfe", "application/json"),
    ],
)
async def test_unparseable_bodies_are_4xx(http: httpx.AsyncClient, content: bytes, content_type: str) -> None:
    response = await http.post("/api/chat", content=content, headers={"content-type": content_type})
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["detail"]


@pytest.mark.parametrize("run_id", ["nope", "run-00000000-0000-0000-0000-000000000000", "run-" + "a" * 2000])
async def test_unknown_runs_are_404(http: httpx.AsyncClient, run_id: str) -> None:
    response = await http.get(f"/api/runs/{run_id}")
    assert response.status_code == 404
    assert "no run" in response.json()["detail"]


async def test_wrong_method_is_405(http: httpx.AsyncClient) -> None:
    assert (await http.get("/api/chat")).status_code == 405


# --- Strict input: nothing unbounded, non-finite, non-Unicode or too deep gets past the edge ---
#
# Bodies are sent as raw JSON text here: Python's `json` writes NaN and Infinity and escapes a lone surrogate
# as `\ud800`, as a hostile client would send them, and LITERAL marks where a number's text goes verbatim
# (`1e400`, which Python would write as Infinity).

LITERAL = "__literal__"


def raw_json(body: Any, literal: str = "") -> str:
    return json.dumps(body, allow_nan=True).replace(f'"{LITERAL}"', literal)


async def post_raw(http: httpx.AsyncClient, path: str, body: Any, literal: str = "") -> httpx.Response:
    return await http.post(
        path, content=raw_json(body, literal), headers={"content-type": "application/json"}
    )


def errors(response: httpx.Response) -> list[tuple[tuple[Any, ...], str]]:
    """Each 422 error's location and message (the response must be valid JSON to get this far)."""
    return [(tuple(e["loc"]), e["msg"]) for e in response.json()["detail"]]


def assert_refused(response: httpx.Response, loc: tuple[Any, ...], words: str) -> None:
    """A 422 naming the field at `loc` (or a location inside it), with a message saying what is allowed."""
    assert response.status_code == 422, response.text
    found = errors(response)
    assert any(where[: len(loc)] == loc and words in msg for where, msg in found), found
    assert "x-agent-run-id" not in response.headers


def budgets(**limits: Any) -> dict[str, Any]:
    return chat_body("hello", budgets=limits)


def nested(depth: int, leaf: Any = 1) -> Any:
    """`depth` levels of objects and arrays, alternating, around `leaf`."""
    value = leaf
    for level in range(depth):
        value = {"a": value} if level % 2 else [value]
    return value


NAN, INF = float("nan"), float("inf")
BUDGETS = ("body", "budgets")
# name: (body, literal, where the error is, words of the message)
NUMBERS: dict[str, tuple[Any, str, tuple[Any, ...], str]] = {
    "a time budget that overflows a timer (it wedged the workflow)": (
        budgets(max_duration_s=1e14),
        "",
        (*BUDGETS, "max_duration_s"),
        "less than or equal to 2592000",
    ),
    "a time budget of NaN": (budgets(max_duration_s=NAN), "", (*BUDGETS, "max_duration_s"), "finite"),
    "a time budget of zero": (budgets(max_duration_s=0), "", (*BUDGETS, "max_duration_s"), "greater than 0"),
    "a cost budget of 1e400 (it became no limit)": (
        budgets(max_cost_usd=LITERAL),
        "1e400",
        (*BUDGETS, "max_cost_usd"),
        "finite",
    ),
    "a cost budget of -Infinity": (budgets(max_cost_usd=-INF), "", (*BUDGETS, "max_cost_usd"), "finite"),
    "a cost budget over the maximum": (
        budgets(max_cost_usd=1e6),
        "",
        (*BUDGETS, "max_cost_usd"),
        "less than or equal to 10000",
    ),
    "a token budget over the maximum": (
        budgets(max_tokens=10**9),
        "",
        (*BUDGETS, "max_tokens"),
        "less than or equal to 100000000",
    ),
    "a token budget that is not a whole number": (
        budgets(max_tokens=1.5),
        "",
        (*BUDGETS, "max_tokens"),
        "valid integer",
    ),
    "a step budget over the maximum": (
        budgets(max_steps=101),
        "",
        (*BUDGETS, "max_steps"),
        "less than or equal to 100",
    ),
    "max_steps as a string": (chat_body("hello", max_steps="5"), "", ("body", "max_steps"), "valid integer"),
    "max_steps as a boolean": (
        chat_body("hello", max_steps=True),
        "",
        ("body", "max_steps"),
        "valid integer",
    ),
    "max_steps as 5.0": (chat_body("hello", max_steps=5.0), "", ("body", "max_steps"), "valid integer"),
    "a time budget as a boolean": (
        budgets(max_duration_s=True),
        "",
        (*BUDGETS, "max_duration_s"),
        "valid number",
    ),
    "stop after zero calls": (
        chat_body("hello", stop_after_tool_calls={"calculate": 0}),
        "",
        ("body", "stop_after_tool_calls", "calculate"),
        "greater than or equal to 1",
    ),
    "stop after -1 calls": (
        chat_body("hello", stop_after_tool_calls={"calculate": -1}),
        "",
        ("body", "stop_after_tool_calls", "calculate"),
        "greater than or equal to 1",
    ),
    "stop after more calls than a run can make": (
        chat_body("hello", stop_after_tool_calls={"calculate": 10**6}),
        "",
        ("body", "stop_after_tool_calls", "calculate"),
        "less than or equal to 1000",
    ),
    "stop after NaN calls": (
        chat_body("hello", stop_after_tool_calls={"calculate": NAN}),
        "",
        ("body", "stop_after_tool_calls", "calculate"),
        "finite",
    ),
    "Infinity in context": (
        chat_body("hello", context={"x": [INF]}),
        "",
        ("body", "context", "x", 0),
        "finite",
    ),
    "NaN in a message part": (
        {
            **GOOD,
            "messages": [{"id": "m", "role": "user", "parts": [{"type": "text", "text": "hi", "n": NAN}]}],
        },
        "",
        ("body", "messages", 0, "parts", 0, "n"),
        "finite",
    ),
}


@pytest.mark.parametrize("case", NUMBERS)
async def test_every_number_is_a_bounded_finite_number_of_the_right_type(
    http: httpx.AsyncClient, case: str
) -> None:
    body, literal, loc, words = NUMBERS[case]
    assert_refused(await post_raw(http, "/api/chat", body, literal), loc, words)


SURROGATE = "\ud800"
SURROGATES: dict[str, tuple[Any, tuple[Any, ...]]] = {
    "in the chat id (it was a 500)": ({**GOOD, "id": f"chat-{SURROGATE}"}, ("body", "id")),
    "in a message id (it was a 500)": (
        {**GOOD, "messages": [{**user_message("hi"), "id": SURROGATE}]},
        ("body", "messages", 0, "id"),
    ),
    "in the message text (it was a 503 blaming PostgreSQL)": (
        chat_body(f"hello {SURROGATE}"),
        ("body", "messages", 0, "parts", 0, "text"),
    ),
    "in a context key (it started a run)": (chat_body("hello", context={SURROGATE: 1}), ("body", "context")),
    "deep in a context value": (
        chat_body("hello", context={"a": [{"b": "\udfff"}]}),
        ("body", "context", "a", 0, "b"),
    ),
    "in the purpose": (chat_body("hello", purpose=SURROGATE), ("body", "purpose")),
    "in an app's own body field": (
        chat_body("hello", appField={"note": SURROGATE}),
        ("body", "appField", "note"),
    ),
    "in a client tool's description": (
        chat_body("hello", tools=[{"name": "get_location", "description": SURROGATE}]),
        ("body", "tools", 0, "description"),
    ),
}


@pytest.mark.parametrize("case", SURROGATES)
async def test_a_lone_surrogate_anywhere_is_a_422_naming_the_field(
    http: httpx.AsyncClient, case: str
) -> None:
    body, loc = SURROGATES[case]
    response = await post_raw(http, "/api/chat", body)
    assert_refused(response, loc, "lone UTF-16 surrogate")
    assert "PostgreSQL" not in response.text


async def test_a_surrogate_pair_is_just_a_character(http: httpx.AsyncClient) -> None:
    # JSON spells 😀 as "\ud83d\ude00": a pair, which decodes to one character, unlike a lone half.
    response = await post_raw(http, "/api/chat", chat_body("hello 😀", purpose="nope"))
    assert response.status_code == 400 and "unknown purpose" in response.text


DEPTHS: dict[str, tuple[Any, tuple[Any, ...], str]] = {
    "context 33 levels deep": (chat_body("hello", context=nested(33)), ("body", "context"), "deeper than 32"),
    "a tool output in a message part 33 levels deep": (
        {
            **GOOD,
            "messages": [
                {"id": "m", "role": "user", "parts": [{"type": "tool-x", "output": nested(33)}]},
            ],
        },
        ("body", "messages", 0, "parts", 0, "output"),
        "deeper than 32",
    ),
    "a client tool's schema 33 levels deep": (
        chat_body(
            "hello", tools=[{"name": "get_location", "parameters": {"type": "object", "x": nested(32)}}]
        ),
        ("body", "tools", 0, "parameters"),
        "deeper than 32",
    ),
}


@pytest.mark.parametrize("case", DEPTHS)
async def test_json_nested_past_its_depth_is_a_422(http: httpx.AsyncClient, case: str) -> None:
    body, loc, words = DEPTHS[case]
    assert_refused(await post_raw(http, "/api/chat", body), loc, words)


@pytest.mark.parametrize("depth", [64, 600, 950])
async def test_a_body_nested_past_64_levels_is_a_422(http: httpx.AsyncClient, depth: int) -> None:
    # 600 to 950 levels in `context` were a 500 (RecursionError). Built as text: as Python objects, values
    # this deep strain the test's own recursion.
    context = '{"a":' * depth + "1" + "}" * depth
    response = await post_raw(http, "/api/chat", chat_body("hello", context=LITERAL), context)
    assert_refused(response, ("body", "context"), "deeper than 64")


async def test_json_too_deep_to_parse_is_a_4xx(http: httpx.AsyncClient) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    response = await http.post("/api/chat", content=deep, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500, response.text


UNKNOWN_RUN = "/api/runs/run-00000000-0000-0000-0000-000000000000"
# Bodies are checked before the run is looked up: these are 422, not the unknown run's 404.
RUN_BODIES: dict[str, tuple[str, Any, tuple[Any, ...], str]] = {
    "an answer with a lone surrogate": (
        f"{UNKNOWN_RUN}/answer",
        {"text": SURROGATE},
        ("body", "text"),
        "surrogate",
    ),
    "a tool result with NaN": (
        f"{UNKNOWN_RUN}/tool-results/call_1",
        {"output": {"n": NAN}},
        ("body", "output", "n"),
        "finite",
    ),
    "a tool result 33 levels deep": (
        f"{UNKNOWN_RUN}/tool-results/call_1",
        {"output": nested(33)},
        ("body", "output"),
        "deeper than 32",
    ),
    "a tool error that is not text": (
        f"{UNKNOWN_RUN}/tool-results/call_1",
        {"error": 5},
        ("body", "error"),
        "valid string",
    ),
    "a cancel reason with a surrogate": (
        f"{UNKNOWN_RUN}/cancel",
        {"reason": SURROGATE},
        ("body", "reason"),
        "surrogate",
    ),
    "an approval reason with a surrogate": (
        f"{UNKNOWN_RUN}/approvals/call_1",
        {"approved": False, "reason": SURROGATE},
        ("body", "reason"),
        "surrogate",
    ),
    "an approval reason with NaN": (
        f"{UNKNOWN_RUN}/approvals/call_1",
        {"approved": False, "reason": NAN},
        ("body", "reason"),
        "finite",
    ),
}


@pytest.mark.parametrize("case", RUN_BODIES)
async def test_run_control_bodies_are_strict_too(http: httpx.AsyncClient, case: str) -> None:
    path, body, loc, words = RUN_BODIES[case]
    assert_refused(await post_raw(http, path, body), loc, words)


LOOSE_BOOLEANS = ["yes", "on", "Y", "true", 1, 1.0, 0, None]


async def test_an_approval_is_a_json_boolean_and_nothing_else(http: httpx.AsyncClient) -> None:
    response = await http.post("/api/chat", json=chat_body(PUBLISH, purpose="learnpack-lesson-writer"))
    stream = parse(response)
    assert stream.run_status == "waiting_for_approval"
    run = stream.response.headers["x-agent-run-id"]
    call = next(
        c["toolCallId"] for c in stream.of_type("tool-input-available") if c["toolName"] == "publish_package"
    )

    for loose in LOOSE_BOOLEANS:
        refused = await http.post(f"/api/runs/{run}/approvals/{call}", json={"approved": loose})
        assert_refused(refused, ("body", "approved"), "valid boolean")
    state = (await http.get(f"/api/runs/{run}")).json()
    assert state["status"] == "waiting_for_approval"
    assert [a["decided_at"] for a in state["pending_approvals"]] == [None]  # nothing was decided, nothing ran

    denied = await http.post(f"/api/runs/{run}/approvals/{call}", json={"approved": False})
    assert denied.status_code == 200 and denied.json()["approved"] is False


BROKEN_SCHEMA = {"type": "nonsense", "properties": 5}
TOOL_SCHEMAS: dict[str, tuple[dict[str, Any], str, str]] = {
    "parameters that are not JSON Schema (the run failed 123 s later)": (
        {"parameters": BROKEN_SCHEMA},
        "parameters",
        "not a valid JSON Schema",
    ),
    "an inputSchema that is not JSON Schema": (
        {"inputSchema": BROKEN_SCHEMA},
        "inputSchema",
        "not a valid JSON Schema",
    ),
    "an outputSchema that is not JSON Schema": (
        {"outputSchema": {"type": "object", "required": "city"}},
        "outputSchema",
        "not a valid JSON Schema",
    ),
    "a pattern that is not a regular expression": (
        {"parameters": {"type": "object", "properties": {"q": {"type": "string", "pattern": "("}}}},
        "parameters",
        "not a valid JSON Schema",
    ),
    "input that is not an object": ({"inputSchema": {"type": "string"}}, "inputSchema", "object"),
}


@pytest.mark.parametrize("case", TOOL_SCHEMAS)
async def test_client_tool_schemas_are_checked_as_json_schema(http: httpx.AsyncClient, case: str) -> None:
    schemas, field, words = TOOL_SCHEMAS[case]
    body = chat_body("use get_location to find me", tools=[{"name": "get_location", **schemas}])
    response = await http.post("/api/chat", json=body)
    assert_refused(response, ("body", "tools", 0, field), words)
    assert "get_location" in response.text  # the message names the tool


async def run_state(http: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    """Start a run with `body` and return its state once its stream has ended."""
    response = await http.post("/api/chat", json=body)
    assert response.status_code == 200, response.text
    return (await http.get(f"/api/runs/{response.headers['x-agent-run-id']}")).json()


@pytest.mark.parametrize(("top", "inside"), [(5, 2), (2, 5)])
async def test_the_lower_of_two_step_limits_wins(http: httpx.AsyncClient, top: int, inside: int) -> None:
    state = await run_state(http, chat_body("hello", max_steps=top, budgets={"max_steps": inside}))
    assert state["budgets"]["max_steps"] == 2


async def test_a_run_stopped_after_a_tool_call_says_so_in_its_last_message(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/api/chat", json=chat_body("calculate (2 + 3) * 4", stop_after_tool_calls={"calculate": 1})
    )
    stream = parse(response)
    assert stream.run_status == "completed"
    assert stream.text.endswith("[completed] stopped after calculate was called 1 time(s)")


def test_a_request_can_only_lower_a_purposes_stop_after_count() -> None:
    purpose = replace(assistant, stop_after_tool_calls={"calculate": 2, "wait": 1})
    spec = purpose.spec("scripted", stop_after_tool_calls={"calculate": 1, "wait": 3, "current_time": 4})
    assert spec.stop_after_tool_calls == {"calculate": 1, "wait": 1, "current_time": 4}


async def test_values_at_every_limit_are_accepted(http: httpx.AsyncClient) -> None:
    earlier_answer = {
        "id": "a1",
        "role": "assistant",
        "parts": [
            {"type": "tool-get_location", "toolCallId": "c1", "state": "output-available", "input": {}},
            {"type": "text", "text": "done"},
        ],
    }
    earlier_answer["parts"][0]["output"] = nested(32)  # as deep as POST …/tool-results takes
    body = chat_body(
        "hello",
        messages=[user_message("hi", "m0"), earlier_answer, user_message("hello")],
        max_steps=100,
        budgets={
            "max_steps": 100,
            "max_tokens": 100_000_000,
            "max_cost_usd": 10_000,
            "max_duration_s": 2_592_000,
        },
        stop_after_tool_calls={"calculate": 1000},
        context={"deep": nested(31)},  # 32 levels with the context object itself
        tools=[
            {
                "name": "get_location",
                # What zod's toJSONSchema writes for z.object({precise: z.boolean()}).
                "inputSchema": {
                    "$schema": "http://json-schema.org/draft-07/schema#",
                    "type": "object",
                    "properties": {"precise": {"type": "boolean"}},
                    "required": ["precise"],
                    "additionalProperties": False,
                },
            }
        ],
        appField={"anything": [1, 2.5, None, True]},
    )
    state = await run_state(http, body)
    assert state["budgets"] == {
        "max_steps": 10,  # the purpose's own, which is lower
        "max_tokens": 100_000_000,
        "max_cost_usd": 10_000,
        "max_duration_s": 2_592_000,
    }
