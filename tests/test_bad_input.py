"""Bad input gets a 4xx with a message that says what is wrong, never a 500, and starts no run."""

from typing import Any

import httpx
import pytest

from tests.ui_stream import chat_body, user_message

GOOD = chat_body("hello")


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
