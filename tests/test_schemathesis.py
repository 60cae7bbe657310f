"""The gateway's OpenAPI schema, checked by schemathesis (property-based): for every operation, generated
requests (valid and invalid) never get a 5xx, and every answer has a documented status, content type and
shape. Against the `auth` gateway with an admin's token, so authorisation is on and every route is reached
past it; a bounded number of examples per operation keeps it to a few seconds.

Schemathesis generates only what JSON Schema describes: never NaN or infinities, never lone UTF-16
surrogates (it leaves them out on purpose), never JSON nested hundreds of levels deep, and those are what
broke the gateway (500s, a 503 blaming PostgreSQL, a wedged workflow). So a second, plain hypothesis test
puts exactly such values into every field of every body the API takes, and checks the answer is a 4xx that
names the field, never a 5xx."""

import json
import time

import httpx
import jwt
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

# Loaded while pytest collects this module, at a shallow stack: loaded lazily inside the test (by
# schemathesis.openapi.from_dict), pytest's assertion rewriting of its large schema module once failed
# with CPython 3.11's "SystemError: AST constructor recursion depth mismatch".
from schemathesis.specs.openapi import schemas as _openapi_schemas  # noqa: F401

from tests.conftest import AUTH_JWT_SECRET, Keel

MAX_EXAMPLES = 30
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_the_gateway_keeps_to_its_openapi_schema(gateways: dict[str, str]) -> None:
    url = gateways["auth"]
    admin = jwt.encode(
        {"sub": "schemathesis", "role": "admin", "exp": int(time.time()) + 3600}, AUTH_JWT_SECRET, "HS256"
    )
    headers = {"authorization": f"Bearer {admin}"}
    schema = schemathesis.openapi.from_dict(httpx.get(f"{url}/openapi.json", timeout=10).json())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    failures: list[str] = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(mode))
            @settings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def check(case: schemathesis.Case) -> None:
                # The generated credentials are random (they get 401, as the security tests check): use
                # the admin's, so every request reaches the route itself.
                for name in [h for h in case.headers or {} if h.lower() in ("authorization", "x-api-key")]:
                    del case.headers[name]
                case.call_and_validate(base_url=url, headers=headers, checks=CHECKS, timeout=30)

            try:
                check()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # an operation with no input can't be sent wrong
            except Exception as err:  # collect every operation's failures, then report them together
                failures.append(f"{operation.label} ({mode.value}): {err}")
    _delete_schedules(url, headers)
    if failures:
        pytest.fail("\n\n".join(failures))


def _delete_schedules(url: str, headers: dict[str, str]) -> None:
    """The valid examples created real schedules, some firing every second: none outlives the test."""
    listed = httpx.get(f"{url}/api/schedules", headers=headers, timeout=30)
    for schedule in listed.json() if listed.status_code == 200 else []:
        httpx.delete(f"{url}/api/schedules/{schedule['schedule_id']}", headers=headers, timeout=30)


# --- What schemathesis never sends: JSON that Python's parser accepts and nothing after it can hold ---

# As JSON text. Python reads all of these (1e400 as infinity); none is a finite number.
NOT_FINITE = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e999"])
# Text with a lone surrogate or a NUL, as JSON text (json.dumps escapes both: "\\ud800", "\\u0000").
BAD_TEXT = st.tuples(
    st.text(max_size=6),
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF) | st.just("\x00"),
    st.text(max_size=6),
).map(lambda parts: json.dumps("".join(parts)))
# Past every depth limit (32 in a free-form value, 64 in a body), up to what the parser refuses (~1000).
TOO_DEEP = st.tuples(st.integers(33, 1500), st.booleans()).map(
    lambda d: "[" * d[0] + "0" + "]" * d[0] if d[1] else '{"a":' * d[0] + "0" + "}" * d[0]
)


@st.composite
def hostile_values(draw: st.DrawFn) -> tuple[str, bool]:
    """JSON text holding one thing the gateway must refuse, inside up to three levels of ordinary JSON;
    and whether that must be a 422 (a body too deep to parse at all is a 400)."""
    kind = draw(st.sampled_from(["number", "text", "key", "deep"]))
    value = {
        "number": lambda: draw(NOT_FINITE),
        "text": lambda: draw(BAD_TEXT),
        "key": lambda: "{" + draw(BAD_TEXT) + ": 1}",
        "deep": lambda: draw(TOO_DEEP),
    }[kind]()
    for in_a_list in draw(st.lists(st.booleans(), max_size=3)):
        value = f"[1, {value}]" if in_a_list else f'{{"k": {value}}}'
    return value, kind != "deep"


HOSTILE = "__hostile__"
RUN = "/api/runs/run-00000000-0000-0000-0000-000000000000"


def chat_body(**fields: object) -> dict[str, object]:
    # An unknown purpose: a body that passes validation is refused (400) before any run starts.
    message = {"id": "m1", "role": "user", "parts": [{"type": "text", "text": "hello"}]}
    return {"id": "chat-fuzz", "messages": [message], "purpose": "no-such-purpose", **fields}


def message(**fields: object) -> dict[str, object]:
    return chat_body(
        messages=[{"id": "m1", "role": "user", "parts": [{"type": "text", "text": "hi"}], **fields}]
    )


# name: (route, body with HOSTILE where the value goes, the field the answer must name)
TARGETS: dict[str, tuple[str, dict[str, object], tuple[str | int, ...]]] = {
    "chat id": ("/api/chat", chat_body(id=HOSTILE), ("id",)),
    "messageId": ("/api/chat", chat_body(messageId=HOSTILE), ("messageId",)),
    "purpose": ("/api/chat", chat_body(purpose=HOSTILE), ("purpose",)),
    "trigger": ("/api/chat", chat_body(trigger=HOSTILE), ("trigger",)),
    "context": ("/api/chat", chat_body(context={"k": HOSTILE}), ("context", "k")),
    "max_steps": ("/api/chat", chat_body(max_steps=HOSTILE), ("max_steps",)),
    "budgets.max_steps": ("/api/chat", chat_body(budgets={"max_steps": HOSTILE}), ("budgets", "max_steps")),
    "budgets.max_tokens": (
        "/api/chat",
        chat_body(budgets={"max_tokens": HOSTILE}),
        ("budgets", "max_tokens"),
    ),
    "budgets.max_cost_usd": (
        "/api/chat",
        chat_body(budgets={"max_cost_usd": HOSTILE}),
        ("budgets", "max_cost_usd"),
    ),
    "budgets.max_duration_s": (
        "/api/chat",
        chat_body(budgets={"max_duration_s": HOSTILE}),
        ("budgets", "max_duration_s"),
    ),
    "stop_after_tool_calls": (
        "/api/chat",
        chat_body(stop_after_tool_calls={"calculate": HOSTILE}),
        ("stop_after_tool_calls", "calculate"),
    ),
    "message id": ("/api/chat", message(id=HOSTILE), ("messages", 0, "id")),
    "message metadata": ("/api/chat", message(metadata=HOSTILE), ("messages", 0, "metadata")),
    "message text": (
        "/api/chat",
        message(parts=[{"type": "text", "text": HOSTILE}]),
        ("messages", 0, "parts", 0, "text"),
    ),
    "a tool part's output": (
        "/api/chat",
        message(parts=[{"type": "tool-x", "output": HOSTILE}]),
        ("messages", 0, "parts", 0, "output"),
    ),
    "tool description": (
        "/api/chat",
        chat_body(tools=[{"name": "t", "description": HOSTILE}]),
        ("tools", 0, "description"),
    ),
    "tool schema": (
        "/api/chat",
        chat_body(tools=[{"name": "t", "parameters": {"type": "object", "properties": {"q": HOSTILE}}}]),
        ("tools", 0, "parameters", "properties", "q"),
    ),
    "an app's own field": ("/api/chat", chat_body(appField=HOSTILE), ("appField",)),
    "approved": (f"{RUN}/approvals/call_1", {"approved": HOSTILE}, ("approved",)),
    "approval reason": (f"{RUN}/approvals/call_1", {"approved": False, "reason": HOSTILE}, ("reason",)),
    "answer": (f"{RUN}/answer", {"text": HOSTILE}, ("text",)),
    "tool result": (f"{RUN}/tool-results/call_1", {"output": HOSTILE}, ("output",)),
    "tool error": (f"{RUN}/tool-results/call_1", {"error": HOSTILE}, ("error",)),
    "cancel reason": (f"{RUN}/cancel", {"reason": HOSTILE}, ("reason",)),
}


def overlaps(a: tuple[object, ...], b: tuple[object, ...]) -> bool:
    """One location inside the other: the error names the field, or a place within it."""
    shorter = min(len(a), len(b))
    return a[:shorter] == b[:shorter]


def test_values_json_schema_cannot_describe_are_a_4xx_naming_the_field(keel: Keel) -> None:
    with httpx.Client(base_url=keel.gateway_url, timeout=30) as client:

        @given(target=st.sampled_from(list(TARGETS)), hostile=hostile_values())
        # The findings that started this test: each was a 5xx, a 503 blaming PostgreSQL, or a run that
        # started wedged or with no limit at all.
        @example(target="budgets.max_duration_s", hostile=("1e14", True))
        @example(target="budgets.max_duration_s", hostile=("NaN", True))
        @example(target="budgets.max_cost_usd", hostile=("1e400", True))
        @example(target="chat id", hostile=('"chat-\\ud800"', True))
        @example(target="message text", hostile=('"hello \\ud800"', True))
        @example(target="context", hostile=('{"\\ud800": 1}', True))
        @example(target="context", hostile=("[" * 600 + "]" * 600, True))
        @example(target="approved", hostile=('"yes"', True))
        @settings(max_examples=1000, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def check(target: str, hostile: tuple[str, bool]) -> None:
            route, body, field = TARGETS[target]
            value, must_be_422 = hostile
            text = json.dumps(body).replace(f'"{HOSTILE}"', value)
            response = client.post(route, content=text, headers={"content-type": "application/json"})
            assert 400 <= response.status_code < 500, (route, field, value[:200], response.text[:500])
            detail = response.json()["detail"]  # always JSON, whatever the request held
            if must_be_422:
                assert response.status_code == 422, (route, field, value[:200], response.text[:500])
                assert any(overlaps(("body", *field), tuple(e["loc"])) for e in detail), (field, detail)

        check()
