"""Keel inside a company's backend, the server API: `POST /api/runs` starts a run without a chat or a
stream and answers 202 at once; an `Idempotency-Key` names one run per user and body, on every gateway and
across restarts, until it expires; `GET /api/runs/{id}/wait` long-polls until the run is final or waits
for a person. Through the real stack: gateways, a worker, Temporal and PostgreSQL."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.chat_request import RunRequest
from keel.stack.embedded import EmbeddedPostgres, TemporalDevServer
from keel.storage import idempotency
from keel.storage.store import RunStore
from tests.conftest import Keel
from tests.crash_stack import CrashStack, Process
from tests.ui_stream import user_message


def run_body(text: str, purpose: str = "assistant", **extra: Any) -> dict[str, Any]:
    return {"purpose": purpose, "messages": [user_message(text)], **extra}


async def start(http: httpx.AsyncClient, body: dict[str, Any], key: str | None = None) -> httpx.Response:
    headers = {"idempotency-key": key} if key else {}
    return await http.post("/api/runs", json=body, headers=headers)


async def test_a_server_starts_a_run_at_once_and_waits_for_its_end(
    http: httpx.AsyncClient, store: RunStore
) -> None:
    began = time.monotonic()
    response = await start(http, run_body("calculate (2 + 3) * 4", metadata={"order": "A-17", "attempt": 2}))

    assert response.status_code == 202, response.text
    started = response.json()
    run = started["agent_run_id"]
    assert started == {"agent_run_id": run, "status": "running"}
    assert response.headers["x-agent-run-id"] == run and "idempotent-replayed" not in response.headers

    waited = await http.get(f"/api/runs/{run}/wait", params={"timeout": 30})

    assert waited.status_code == 200 and waited.json()["status"] == "completed"
    assert time.monotonic() - began < 30
    state = (await http.get(f"/api/runs/{run}")).json()
    assert state["metadata"] == {"order": "A-17", "attempt": 2} and state["chat_id"] is None
    record = await store.pool.fetchrow("SELECT metadata, chat_id, status FROM agent_runs WHERE id = $1", run)
    assert (record["metadata"], record["chat_id"], record["status"]) == (
        {"order": "A-17", "attempt": 2},
        None,
        "completed",
    )


async def test_wait_answers_when_the_run_waits_for_a_person_and_again_at_its_end(
    http: httpx.AsyncClient,
) -> None:
    body = run_body("plan, write and publish a lesson on deques", purpose="learnpack-lesson-writer")
    run = (await start(http, body)).json()["agent_run_id"]

    waiting = (await http.get(f"/api/runs/{run}/wait", params={"timeout": 30})).json()

    assert waiting["status"] == "waiting_for_approval"
    [pending] = waiting["pending_approvals"]
    decided = await http.post(
        f"/api/runs/{run}/approvals/{pending['tool_call_id']}", json={"approved": False}
    )
    assert decided.status_code == 200
    ended = (await http.get(f"/api/runs/{run}/wait", params={"timeout": 30})).json()
    assert ended["status"] == "completed"


async def test_wait_gives_up_at_its_timeout_with_the_state_as_it_is(gateways: dict[str, str]) -> None:
    async with httpx.AsyncClient(base_url=gateways["slow"], timeout=30) as http:
        # scripted:slow writes this answer in 24 chunks, 4.8 s: the run's workflow task is first extended
        # (and the state query answered) at 3.2 s, well before it ends
        long_story = (
            "tell me a long story, slowly, of how it all works: a worker that dies and comes back, a gateway"
            " that streams each token, a run that waits for a person, and the one who says yes or no"
        )
        run = (await start(http, run_body(long_story))).json()["agent_run_id"]
        began = time.monotonic()

        waited = await http.get(f"/api/runs/{run}/wait", params={"timeout": 0.5})

        assert waited.status_code == 200 and waited.json()["status"] == "running"
        assert 0.4 < time.monotonic() - began < 5
        assert (await http.get(f"/api/runs/{run}/wait", params={"timeout": 60})).json()[
            "status"
        ] == "completed"


@pytest.mark.parametrize(
    ("change", "answer", "says"),
    [
        ({"webhook_url": "https://example.com/hook"}, 422, "no KEEL_WEBHOOK_SECRET to sign webhooks with"),
        ({"metadata": {"blob": "x" * 20_000}}, 422, "metadata takes"),
        ({"purpose": "no-such-agent"}, 400, "no-such-agent"),
        ({"messages": []}, 422, "messages"),
        ({"chat": "extra"}, 422, "chat"),
    ],
)
async def test_a_bad_request_is_refused_with_a_message_and_starts_nothing(
    http: httpx.AsyncClient, store: RunStore, change: dict[str, Any], answer: int, says: str
) -> None:
    marker = uuid.uuid4().hex
    response = await start(http, {**run_body(f"calculate 1 + 1 {marker}"), **change})

    assert response.status_code == answer, response.text
    assert says in response.text
    assert (
        await store.pool.fetchval(
            "SELECT count(*) FROM agent_runs WHERE input_summary LIKE $1", f"%{marker}%"
        )
        == 0
    )


# --- Idempotency-Key: two gateways, concurrent requests, restarts, expiry ---


@pytest.fixture
def stack(
    keel: Keel, temporal_server: TemporalDevServer, postgres: EmbeddedPostgres, tmp_path: Path
) -> Iterator[CrashStack]:
    with CrashStack(temporal_server, postgres, tmp_path, keel.env["KEEL_CODEC_KEY_FILE"]) as stack:
        yield stack


@pytest.fixture
async def two_gateways(stack: CrashStack) -> AsyncIterator[list[Process]]:
    gateways = [stack.gateway("gateway-a"), stack.gateway("gateway-b")]
    await stack.start(stack.worker(), *gateways)
    yield gateways


def client(gateway: Process) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=gateway.url or "", timeout=60)


async def executions(stack: CrashStack, run: str) -> int:
    temporal = await stack.temporal()
    return len([e async for e in temporal.list_workflows(f'WorkflowId = "{run}"')])


async def test_one_key_is_one_run_across_two_gateways_under_concurrent_requests(
    stack: CrashStack, two_gateways: list[Process], store: RunStore
) -> None:
    key, body = f"order-{uuid.uuid4()}", run_body("calculate 6 * 7", metadata={"order": "B-2"})
    async with client(two_gateways[0]) as a, client(two_gateways[1]) as b:
        responses = await asyncio.gather(*(start(http, body, key) for http in [a, b] * 4))

    assert [r.status_code for r in responses] == [202] * 8
    [run] = {r.json()["agent_run_id"] for r in responses}
    # One request started it; the seven others were told they got that run.
    assert sorted(r.headers.get("idempotent-replayed", "") for r in responses) == [""] + ["true"] * 7
    assert await store.pool.fetchval("SELECT count(*) FROM agent_runs WHERE metadata->>'order' = 'B-2'") == 1
    assert await executions(stack, run) == 1


async def test_a_key_outlives_gateway_restarts_refuses_another_body_and_expires(
    stack: CrashStack, two_gateways: list[Process], store: RunStore
) -> None:
    key, body = f"invoice-{uuid.uuid4()}", run_body("calculate 2 ** 10")
    async with client(two_gateways[0]) as a:
        first = (await start(a, body, key)).json()["agent_run_id"]
        await a.get(f"/api/runs/{first}/wait", params={"timeout": 30})
    for gateway in two_gateways:
        gateway.kill()
    await asyncio.gather(*(gateway.restart() for gateway in two_gateways))

    async with client(two_gateways[1]) as b:
        again = await start(b, body, key)
        other_body = await start(b, run_body("calculate 3 ** 10"), key)
        await store.pool.execute(
            "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = $1", key
        )
        after_expiry = await start(b, body, key)

    # The same run, long finished: never started a second time.
    assert again.status_code == 202 and again.json() == {"agent_run_id": first, "status": "completed"}
    assert again.headers["idempotent-replayed"] == "true"
    assert await executions(stack, first) == 1
    assert other_body.status_code == 422 and "already used with another request body" in other_body.text
    assert after_expiry.status_code == 202 and after_expiry.json()["agent_run_id"] != first


async def test_a_key_claimed_by_a_gateway_that_died_before_starting_its_run_starts_it_once(
    stack: CrashStack, two_gateways: list[Process], store: RunStore
) -> None:
    # What a gateway leaves when it dies between claiming the key and starting the run: the key's row.
    key, body = f"crash-{uuid.uuid4()}", run_body("calculate 9 - 2")
    run = f"run-{uuid.uuid4()}"
    digest = idempotency.body_digest(
        RunRequest.model_validate(body).model_dump(mode="json", exclude_unset=True)
    )
    await store.pool.execute(
        "INSERT INTO idempotency_keys (user_key, key, body_sha256, agent_run_id) VALUES ('', $1, $2, $3)",
        key,
        digest,
        run,
    )
    async with client(two_gateways[0]) as a, client(two_gateways[1]) as b:
        responses = await asyncio.gather(start(a, body, key), start(b, body, key))
        assert {r.json()["agent_run_id"] for r in responses} == {run}
        assert (await a.get(f"/api/runs/{run}/wait", params={"timeout": 30})).json()["status"] == "completed"

    assert await executions(stack, run) == 1
