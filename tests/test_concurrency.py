"""A chat under fire: requests at the same instant, on several gateways, keep its promises.

Each test fires its requests together (asyncio.gather; where the double-texting policy is the same, over
several gateway processes, which share nothing but PostgreSQL and Temporal) and then checks the invariant
from the gateway, the run records and Temporal:

- one owner per chat, and at most one active run under `reject`; the loser of a race gets 409 (the same
  user) or 404 (another user), never another user's run;
- `enqueue` builds one queue in arrival order, and its runs go one at a time, each once; a queued run can be
  cancelled at once and the runs behind it keep their place; `interrupt` leaves exactly one active run;
- one decision per tool call (approval, answer, client tool result), one end however many cancels, and a
  decision that meets a run already over is a 409 saying how it ended;
- what Temporal closes outside a run's loop (terminated) never leaves a record `running` or a queue stuck,
  nor does a start Temporal refused, nor a record whose workflow never started (keel/storage/reconciler.py, every
  second in the tests), nor a run whose own numbers broke its loop.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import Client, WorkflowFailureError

from keel.contracts import Budgets, Message, PurposeSpec
from keel.run_start import run_input, start_run
from keel.stack.embedded import EmbeddedPostgres, TemporalDevServer
from keel.storage.store import RunStore
from tests.conftest import Keel, wait_for_status
from tests.crash_stack import CrashStack, until
from tests.test_security import bearer, token, user_id
from tests.ui_stream import chat_body, parse, user_message

PUBLISH = "plan, write and publish a lesson on concurrency"
LESSON = {"purpose": "learnpack-lesson-writer"}


def same_chat(chat_id: str, text: str, **extra: Any) -> dict[str, Any]:
    """A first message in chat `chat_id` (a fresh message id each time)."""
    return {
        **chat_body(text, chat_id, **extra),
        "messages": [user_message(text, f"m-{uuid.uuid4().hex[:8]}")],
    }


async def at_once(*requests: Awaitable[httpx.Response]) -> list[httpx.Response]:
    return list(await asyncio.gather(*requests))


async def chat_runs(store: RunStore, chat_id: str) -> list[str]:
    """The chat's runs, oldest first."""
    return [r["agent_run_id"] for r in reversed(await store.chat_runs(chat_id, 100))]


async def record(store: RunStore, agent_run_id: str) -> dict[str, Any]:
    row = await store.pool.fetchrow("SELECT * FROM agent_runs WHERE id = $1", agent_run_id)
    assert row is not None, f"no record of {agent_run_id}"
    return dict(row)


@pytest.fixture
async def clients(keel: Keel, gateways: dict[str, str]) -> AsyncIterator[Callable[[str], httpx.AsyncClient]]:
    """An HTTP client per gateway, by name (`keel` is the session's own)."""
    urls = {"keel": keel.gateway_url, **gateways}
    opened = {name: httpx.AsyncClient(base_url=url, timeout=60) for name, url in urls.items()}
    yield opened.__getitem__
    for client in opened.values():
        await client.aclose()


async def waiting_for_approval(http: httpx.AsyncClient, chat_id: str) -> tuple[str, str]:
    """A run of the chat that waits for the approval of publish_package: its id and the call's."""
    response = await http.post("/api/chat", json=same_chat(chat_id, PUBLISH, **LESSON))
    assert response.status_code == 200, response.text
    stream = parse(response)
    assert stream.run_status == "waiting_for_approval"
    call = next(c["toolCallId"] for c in stream.of_type("tool-approval-request"))
    return response.headers["x-agent-run-id"], call


# --- one owner, one active run ---


async def test_messages_at_once_on_a_new_chat_start_one_run_whichever_gateway_they_reach(
    clients: Callable[[str], httpx.AsyncClient], store: RunStore
) -> None:
    chat_id = f"chat-{uuid.uuid4().hex[:12]}"
    gateways = ["keel", "slow", "temporal-ui"]  # all `reject`, the default

    responses = await at_once(
        *(
            clients(gateways[i % 3]).post("/api/chat", json=same_chat(chat_id, PUBLISH, **LESSON))
            for i in range(18)
        )
    )

    assert sorted(r.status_code for r in responses) == [200] + [409] * 17
    started = [r.headers["x-agent-run-id"] for r in responses if r.status_code == 200]
    assert await chat_runs(store, chat_id) == started
    assert all(f"already has an active run {started[0]}" in r.text for r in responses if r.status_code == 409)


async def test_two_users_racing_for_one_new_chat_never_see_each_others_run(
    gateways: dict[str, str], store: RunStore
) -> None:
    alice, bob = bearer(token(user_id("alice"))), bearer(token(user_id("bob")))
    chat_id = f"chat-{uuid.uuid4().hex[:12]}"
    async with httpx.AsyncClient(base_url=gateways["auth"], timeout=60) as http:
        post = lambda who: http.post("/api/chat", json=same_chat(chat_id, PUBLISH, **LESSON), headers=who)  # noqa: E731

        responses = await at_once(post(alice), post(bob), post(alice), post(bob))

        [won] = [r for r in responses if r.status_code == 200]
        owner, other = (
            (alice, bob) if won.request.headers["authorization"] == alice["authorization"] else (bob, alice)
        )
        losers = [(r.request.headers["authorization"], r.status_code) for r in responses if r is not won]
        assert sorted(code for _, code in losers) == [404, 404, 409]
        assert all(code == 409 for who, code in losers if who == owner["authorization"])
        resumed = await http.get(f"/api/chat/{chat_id}/stream", headers=owner)
        assert (
            resumed.status_code == 200 and resumed.headers["x-agent-run-id"] == won.headers["x-agent-run-id"]
        )
        assert (await http.get(f"/api/chat/{chat_id}/stream", headers=other)).status_code == 404
    assert await chat_runs(store, chat_id) == [won.headers["x-agent-run-id"]]


# --- enqueue and interrupt ---


async def test_enqueue_makes_one_queue_in_arrival_order_and_runs_it_one_at_a_time(
    clients: Callable[[str], httpx.AsyncClient], store: RunStore
) -> None:
    http, chat_id = clients("enqueue"), f"chat-{uuid.uuid4().hex[:12]}"
    first, call = await waiting_for_approval(http, chat_id)
    # Each stream lasts until its run has run, after the first one: send them all, then let the first go.
    sending = [
        asyncio.create_task(http.post("/api/chat", json=same_chat(chat_id, f"calculate {k} + {k}")))
        for k in range(1, 6)
    ]
    runs = await until(lambda: _all_six(store, chat_id), "the five queued runs")

    # One queue, in the order the chat took them: each run waits for the one before it.
    behind = {r: (await record(store, r))["queued_behind"] for r in runs[1:]}
    assert behind == dict(zip(runs[1:], runs[:-1], strict=True))
    approved = await http.post(f"/api/runs/{first}/approvals/{call}", json={"approved": True})
    assert approved.status_code == 200, approved.text
    responses = await asyncio.gather(*sending)

    assert all(parse(r).run_status == "completed" for r in responses)
    assert sorted(r.headers["x-agent-run-id"] for r in responses) == sorted(runs[1:])
    # One at a time: each run's first model call came after the run before it had finished.
    for before, after in zip(runs, runs[1:], strict=False):
        finished = (await record(store, before))["finished_at"]
        began = await store.pool.fetchval(
            "SELECT min(started_at) FROM llm_calls WHERE agent_run_id = $1", after
        )
        assert finished is not None and began >= finished, (before, after)


async def _all_six(store: RunStore, chat_id: str) -> list[str] | None:
    runs = await chat_runs(store, chat_id)
    return runs if len(runs) == 6 else None


async def test_interrupt_leaves_exactly_one_active_run(
    clients: Callable[[str], httpx.AsyncClient], store: RunStore
) -> None:
    http, chat_id = clients("interrupt"), f"chat-{uuid.uuid4().hex[:12]}"
    await waiting_for_approval(http, chat_id)

    responses = await at_once(
        *(http.post("/api/chat", json=same_chat(chat_id, PUBLISH, **LESSON)) for _ in range(5))
    )

    assert [r.status_code for r in responses] == [200] * 5
    statuses = [(await http.get(f"/api/runs/{r}")).json()["status"] for r in await chat_runs(store, chat_id)]
    assert sorted(statuses) == ["cancelled"] * 5 + ["waiting_for_approval"]


async def test_a_queued_run_is_cancelled_at_once_and_the_run_behind_it_keeps_its_place(
    clients: Callable[[str], httpx.AsyncClient], store: RunStore
) -> None:
    http, chat_id = clients("enqueue"), f"chat-{uuid.uuid4().hex[:12]}"
    first, call = await waiting_for_approval(http, chat_id)
    second = asyncio.create_task(http.post("/api/chat", json=same_chat(chat_id, "calculate 1 + 1")))
    await until(lambda: _count(store, chat_id, 2), "the second run")
    third = asyncio.create_task(http.post("/api/chat", json=same_chat(chat_id, "calculate 2 + 2")))
    runs = await until(lambda: _count(store, chat_id, 3), "the third run")

    cancelled = await http.post(f"/api/runs/{runs[1]}/cancel", json={"reason": "not this one"})

    assert cancelled.status_code == 202
    assert (await second).status_code == 200 and parse(await second).run_status == "cancelled"
    # The first run still waits for its approval; the third one is still queued, now behind the first.
    assert (await http.get(f"/api/runs/{first}")).json()["status"] == "waiting_for_approval"
    assert (await http.get(f"/api/runs/{runs[2]}")).json()["step"] == 0
    assert (
        await http.post(f"/api/runs/{first}/approvals/{call}", json={"approved": False})
    ).status_code == 200
    assert parse(await third).run_status == "completed"


async def _count(store: RunStore, chat_id: str, n: int) -> list[str] | None:
    runs = await chat_runs(store, chat_id)
    return runs if len(runs) >= n else None


# --- decisions ---


async def test_one_decision_per_tool_call_however_many_arrive_at_once(http: httpx.AsyncClient) -> None:
    agent_run_id, call = await waiting_for_approval(http, f"chat-{uuid.uuid4().hex[:12]}")

    responses = await at_once(
        *(
            http.post(f"/api/runs/{agent_run_id}/approvals/{call}", json={"approved": i % 2 == 0})
            for i in range(10)
        )
    )

    assert sorted(r.status_code for r in responses) == [200] + [409] * 9
    [accepted] = [r.json() for r in responses if r.status_code == 200]
    [decided] = (await http.get(f"/api/runs/{agent_run_id}")).json()["approvals"]
    assert decided["approved"] == accepted["approved"]


async def test_one_answer_and_one_tool_result_however_many_arrive_at_once(http: httpx.AsyncClient) -> None:
    asked = parse(await http.post("/api/chat", json=chat_body("ask me my favourite colour")))
    tool = {"name": "get_location", "inputSchema": {"type": "object", "properties": {}}}
    located = parse(await http.post("/api/chat", json=chat_body("use get_location to find me", tools=[tool])))
    question_run, tool_run = (s.response.headers["x-agent-run-id"] for s in (asked, located))
    call = next(c["toolCallId"] for c in located.of_type("tool-input-available"))

    answers, results = await asyncio.gather(
        at_once(
            *(http.post(f"/api/runs/{question_run}/answer", json={"text": f"colour {i}"}) for i in range(10))
        ),
        at_once(
            *(
                http.post(f"/api/runs/{tool_run}/tool-results/{call}", json={"output": {"city": f"city {i}"}})
                for i in range(10)
            )
        ),
    )

    assert sorted(r.status_code for r in answers) == [200] + [409] * 9
    assert sorted(r.status_code for r in results) == [200] + [409] * 9
    for run in (question_run, tool_run):
        assert (await wait_for_status(http, run, "completed"))["step"] == 2


async def test_cancels_at_once_end_the_run_once(http: httpx.AsyncClient, store: RunStore) -> None:
    agent_run_id, _ = await waiting_for_approval(http, f"chat-{uuid.uuid4().hex[:12]}")

    responses = await at_once(
        *(http.post(f"/api/runs/{agent_run_id}/cancel", json={"reason": f"reason {i}"}) for i in range(10))
    )

    # Accepted (202) while the run was still going, 409 once it had ended; it ends once, for one reason.
    assert {r.status_code for r in responses} <= {202, 409} and 202 in {r.status_code for r in responses}
    state = await wait_for_status(http, agent_run_id, "cancelled")
    assert state["detail"] in {f"cancelled: reason {i}" for i in range(10)}
    recorded = await until(lambda: _ended_as(store, agent_run_id, "cancelled"), "the run's record to end")
    assert recorded["detail"] == state["detail"]


async def test_a_decision_that_meets_a_run_already_over_is_a_409_saying_how_it_ended(
    http: httpx.AsyncClient,
) -> None:
    runs = [await waiting_for_approval(http, f"chat-{uuid.uuid4().hex[:12]}") for _ in range(4)]

    # The decision and the cancel race; whichever wins, the decision is never a 404 or a 5xx.
    raced = await at_once(
        *(
            request
            for run, call in runs
            for request in (
                http.post(f"/api/runs/{run}/cancel", json={}),
                http.post(f"/api/runs/{run}/approvals/{call}", json={"approved": False}),
            )
        )
    )
    decisions = raced[1::2]
    assert {r.status_code for r in decisions} <= {200, 409}, [r.text for r in decisions]
    for response in decisions:
        if response.status_code == 409:
            assert "has already finished (cancelled)" in response.json()["detail"]

    run, call = runs[0]
    await wait_for_status(http, run, "cancelled", "completed")
    late = await http.post(f"/api/runs/{run}/approvals/{call}", json={"approved": True})
    assert late.status_code == 409 and "has already finished" in late.json()["detail"]


# --- what Temporal closes outside a run's loop ---


async def test_a_run_terminated_outside_its_loop_ends_its_record_and_lets_its_queue_go_on(
    clients: Callable[[str], httpx.AsyncClient], store: RunStore, temporal: Client
) -> None:
    http, chat_id = clients("enqueue"), f"chat-{uuid.uuid4().hex[:12]}"
    first, _ = await waiting_for_approval(http, chat_id)
    queued = asyncio.create_task(http.post("/api/chat", json=same_chat(chat_id, "calculate 3 + 4")))
    await until(lambda: _count(store, chat_id, 2), "the queued run")

    await temporal.get_workflow_handle(first).terminate(reason="stuck, says an operator")

    assert parse(await asyncio.wait_for(queued, 30)).run_status == "completed"
    ended = await until(lambda: _ended(store, first), "the terminated run's record to end")
    assert ended["detail"] == "the workflow ended as terminated outside the agent loop"


async def _ended(store: RunStore, agent_run_id: str) -> dict[str, Any] | None:
    return await _ended_as(store, agent_run_id, "failed")


async def _ended_as(store: RunStore, agent_run_id: str, status: str) -> dict[str, Any] | None:
    row = await record(store, agent_run_id)
    return row if row["status"] == status else None


async def test_a_record_whose_workflow_never_started_is_ended(store: RunStore) -> None:
    # What a gateway that died between writing the record and starting the workflow leaves behind.
    agent_run_id = f"run-{uuid.uuid4()}"
    await store.pool.execute(
        "INSERT INTO agent_runs (id, purpose_slug, status, started_at) VALUES ($1, 'assistant', 'running', $2)",
        agent_run_id,
        datetime.now(UTC) - timedelta(minutes=5),
    )

    ended = await until(lambda: _ended(store, agent_run_id), "the reconciler to end the record")

    assert (ended["error_type"], ended["detail"]) == ("NotStarted", "the run's workflow never started")


@pytest.fixture
def stack(
    keel: Keel, temporal_server: TemporalDevServer, postgres: EmbeddedPostgres, tmp_path: Path
) -> Iterator[CrashStack]:
    with CrashStack(temporal_server, postgres, tmp_path, keel.env["KEEL_CODEC_KEY_FILE"]) as stack:
        yield stack


async def test_a_start_temporal_refuses_leaves_no_run_behind(
    stack: CrashStack, postgres: EmbeddedPostgres, store: RunStore, tmp_path: Path
) -> None:
    # A gateway on a Temporal of its own, which then goes away.
    own = await asyncio.to_thread(TemporalDevServer.start)
    try:
        gateway = stack.gateway()
        gateway.env["TEMPORAL_ADDRESS"] = own.address
        await stack.start(gateway)
    finally:
        await asyncio.to_thread(own.stop)
    body = chat_body("hello there")
    async with httpx.AsyncClient(base_url=gateway.url or "", timeout=60) as http:
        response = await http.post("/api/chat", json=body)

    assert response.status_code == 503 and "no run was started" in response.json()["detail"]
    assert await chat_runs(store, body["id"]) == []
    [row] = await store.pool.fetch("SELECT status, error_type FROM agent_runs WHERE chat_id = $1", body["id"])
    assert (row["status"], row["error_type"]) == ("failed", "NotStarted")


async def test_a_run_whose_own_numbers_break_its_loop_ends_as_failed(
    http: httpx.AsyncClient, keel: Keel, store: RunStore, temporal: Client
) -> None:
    # Past the gateway's checks (which refuse such a budget), straight to Temporal: the loop must not wedge.
    messages = [Message(role="user", content="hello there")]
    budgets = Budgets(max_steps=3, max_duration_s=1e14)
    run = run_input(PurposeSpec(slug="assistant", model="scripted", tools=[], budgets=budgets), messages)
    agent_run_id = run.agent_run_id
    await store.put_messages(agent_run_id, 0, messages)
    handle = await start_run(temporal, run, keel.env["KEEL_TASK_QUEUE"])

    with pytest.raises(WorkflowFailureError) as failed:
        await asyncio.wait_for(handle.result(), 20)

    assert "the run could not go on: OverflowError" in str(failed.value.cause)
    state = (await http.get(f"/api/runs/{agent_run_id}")).json()
    assert state["status"] == "failed" and state["detail"].startswith(
        "the run could not go on: OverflowError"
    )
