"""Agents as tools (`Agent.as_tool`), through the real stack: a call of another agent runs it as a child
AgentRun workflow with its own run id, history and records, linked to its parent, and governed by it —
parallel children, cancel cascades, budgets bounded by what the parent has left, usage rolled up, a depth
limit. The app is tests/apps/delegation.py; the offline scripted model calls a sub-agent by its trigger
words, and gives it the whole request as its task.
"""

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from api.chat_request import pending_answers
from keel import Agent
from keel.app import AppError, build_app
from keel.contracts import STATE_QUERY, RunState
from keel.stack.embedded import EmbeddedPostgres, TemporalDevServer
from keel.storage.store import RunStore
from keel.ui_protocol import UIMessage
from tests.conftest import Keel, wait_for_status
from tests.crash_stack import CrashStack, gateway_client
from tests.ui_stream import UIStream, assert_well_formed, chat, chat_body, is_sub_run_progress, parse_text

APP = "tests.apps.delegation"
Act = Callable[[dict[str, Any], str], Awaitable[None]]


@pytest.fixture
def stack(
    keel: Keel, temporal_server: TemporalDevServer, postgres: EmbeddedPostgres, tmp_path: Path
) -> Iterator[CrashStack]:
    with CrashStack(
        temporal_server, postgres, tmp_path, keel.env["KEEL_CODEC_KEY_FILE"], KEEL_APP=APP
    ) as stack:
        yield stack


@pytest.fixture
async def http(stack: CrashStack) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway_client(stack) as client:
        yield client


async def children_of(pool: asyncpg.Pool, run: str) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT id, purpose_slug, status, detail, started_at, finished_at, prompt_tokens, completion_tokens"
        " FROM agent_runs WHERE parent_run_id = $1 ORDER BY purpose_slug",
        run,
    )


async def until(what: str, check: Any, within: float = 20.0) -> Any:
    for _ in range(int(within / 0.1)):
        if found := await check():
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"never happened: {what}")


def texts_of(progress: dict[str, Any]) -> str:
    """The text a sub-agent's progress shows."""
    return "".join(part["text"] for part in progress["parts"] if part["type"] == "text")


async def llm_tokens(pool: asyncpg.Pool, run: str) -> int:
    total = await pool.fetchval(
        "SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0) FROM llm_calls WHERE agent_run_id = $1",
        run,
    )
    return int(total)


async def test_a_sub_agent_runs_as_a_child_run_and_its_answer_is_the_tool_result(
    http: httpx.AsyncClient, stack: CrashStack, store: RunStore
) -> None:
    stream = await chat(http, chat_body("write a lesson on fractions", purpose="editor"))

    run = stream.response.headers["x-agent-run-id"]
    assert stream.tool_names == ["writer"] and stream.run_status == "completed"
    [child] = await children_of(store.pool, run)
    assert (child["purpose_slug"], child["status"]) == ("writer", "completed")
    # Its own conversation: the writer's instructions, the task the editor's model gave it, its answer.
    system, task, answer = await store.conversation(child["id"], 3)
    assert (system.role, system.content) == ("system", "You write lessons.")
    assert (task.role, task.content) == ("user", "write a lesson on fractions")
    # Its final text is the editor's tool result.
    *progress, output = stream.of_type("tool-output-available")
    assert answer.role == "assistant" and output["output"] == answer.content and "preliminary" not in output
    # Before it, the call's preliminary outputs showed the writer at work: the first names its run, and
    # each later one shows its answer as far as it was written (how far depends on timing).
    assert progress[0]["preliminary"] is True
    assert progress[0]["output"] == {
        "agentRunId": child["id"],
        "agent": "writer",
        "status": "running",
        "detail": None,
        "parts": [],
    }
    assert all(answer.content.startswith(texts_of(p["output"])) for p in progress)
    # A workflow of its own, a child of the editor's, whose memo names its parent.
    client = await stack.temporal()
    described = await client.get_workflow_handle(child["id"]).describe()
    assert described.parent_id == run
    assert (await described.memo())["parent_run_id"] == run
    state = await client.get_workflow_handle(child["id"]).query(STATE_QUERY, result_type=RunState)
    assert state.status == "completed" and state.step == 1
    # A run like any other to the gateway: its id has the form the run endpoints accept.
    through_the_gateway = await http.get(f"/api/runs/{child['id']}")
    assert through_the_gateway.status_code == 200 and through_the_gateway.json()["purpose"] == "writer"


async def test_calls_of_two_sub_agents_in_one_step_run_at_the_same_time(
    http: httpx.AsyncClient, store: RunStore
) -> None:
    stream = await chat(http, chat_body("write and review a lesson in parallel", purpose="editor"))

    run = stream.response.headers["x-agent-run-id"]
    assert sorted(stream.tool_names) == ["reviewer", "writer"] and stream.run_status == "completed"
    reviewer, writer = await children_of(store.pool, run)
    assert (reviewer["purpose_slug"], writer["purpose_slug"]) == ("reviewer", "writer")
    assert reviewer["status"] == writer["status"] == "completed"
    # Both were running at once: each started before the other finished.
    assert reviewer["started_at"] < writer["finished_at"] and writer["started_at"] < reviewer["finished_at"]


async def test_sub_agents_called_in_one_step_share_the_tokens_and_cost_their_parent_has_left(
    http: httpx.AsyncClient, stack: CrashStack, store: RunStore
) -> None:
    budgets = {"max_tokens": 9_001, "max_cost_usd": 0.5}
    stream = await chat(
        http, chat_body("write and review a lesson in parallel", purpose="editor", budgets=budgets)
    )

    run = stream.response.headers["x-agent-run-id"]
    client = await stack.temporal()
    parent = await client.get_workflow_handle(run).query(STATE_QUERY, result_type=RunState)
    children = [
        await client.get_workflow_handle(c["id"]).query(STATE_QUERY, result_type=RunState)
        for c in await children_of(store.pool, run)
    ]
    # Each got half of what the editor had left after its first step: together, never more than that.
    first_step = await store.pool.fetchval(
        "SELECT prompt_tokens + completion_tokens FROM llm_calls WHERE agent_run_id = $1 AND step = 1", run
    )
    assert [c.budgets.max_tokens for c in children] == [(9_001 - first_step) // 2] * 2
    assert [c.budgets.max_cost_usd for c in children] == [0.25, 0.25]  # the scripted model costs nothing
    assert parent.budgets.max_tokens == 9_001


async def test_a_call_deeper_than_the_depth_limit_is_refused_with_an_error_result(
    http: httpx.AsyncClient, store: RunStore
) -> None:
    # The editor allows one level below it: its writer may not call the researcher.
    stream = await chat(http, chat_body("write a lesson and research it", purpose="editor"))

    run = stream.response.headers["x-agent-run-id"]
    [writer] = await children_of(store.pool, run)
    assert writer["status"] == "completed"
    assert await children_of(store.pool, writer["id"]) == []  # no grandchild started
    refused = await store.pool.fetchrow(
        "SELECT status, error_message FROM tool_runs WHERE agent_run_id = $1 AND tool_name = 'researcher'",
        writer["id"],
    )
    assert refused["status"] == "not_run" and "depth limit" in refused["error_message"]
    assert "researcher failed" in stream.of_type("tool-output-available")[-1]["output"]


async def test_a_child_gets_at_most_the_steps_its_parent_has_left_and_its_usage_rolls_up(
    http: httpx.AsyncClient, stack: CrashStack, store: RunStore
) -> None:
    # The chief may take 2 steps; its first calls the writer, which has 1 left: it takes notes and stops.
    stream = await chat(http, chat_body("write notes on fractions", purpose="chief"))

    run = stream.response.headers["x-agent-run-id"]
    [writer] = await children_of(store.pool, run)
    assert writer["status"] == "step_limit"
    client = await stack.temporal()
    child = await client.get_workflow_handle(writer["id"]).query(STATE_QUERY, result_type=RunState)
    assert child.budgets.max_steps == 1 and child.step == 1
    assert stream.of_type("tool-output-error")  # the chief's model hears the writer ran out of steps
    # The chief's usage counts its own LLM calls and its child's.
    parent = await client.get_workflow_handle(run).query(STATE_QUERY, result_type=RunState)
    own, childs = await llm_tokens(store.pool, run), await llm_tokens(store.pool, writer["id"])
    assert childs > 0 and parent.usage.total_tokens == own + childs


async def test_cancelling_the_parent_cancels_the_child_it_waits_for(
    http: httpx.AsyncClient, store: RunStore
) -> None:
    # The publisher's own tool waits for a person: the editor waits for the publisher.
    chatting = asyncio.create_task(chat(http, chat_body("release the lesson on fractions", purpose="editor")))

    async def parked_child() -> asyncpg.Record | None:
        return await store.pool.fetchrow(
            "SELECT id, parent_run_id FROM agent_runs WHERE purpose_slug = 'publisher'"
            " AND status = 'waiting_for_approval' AND parent_run_id IS NOT NULL"
            " ORDER BY started_at DESC LIMIT 1"
        )

    child = await until("the publisher waits for an approval", parked_child)
    cancelled = await http.post(f"/api/runs/{child['parent_run_id']}/cancel", json={"reason": "enough"})
    assert cancelled.status_code == 202, cancelled.text

    await wait_for_status(http, child["parent_run_id"], "cancelled", within=20)
    stream = await asyncio.wait_for(chatting, 20)
    assert stream.run_status == "cancelled"

    async def child_cancelled() -> bool:
        status = await store.pool.fetchval("SELECT status FROM agent_runs WHERE id = $1", child["id"])
        return bool(status == "cancelled")

    await until("the publisher's run is cancelled too", child_cancelled)


def test_an_app_whose_sub_agent_breaks_the_rules_is_refused() -> None:
    broken = Agent(name="broken", instructions="You break.", max_steps=0)
    caller = Agent(name="caller", instructions="You delegate.", tools=[broken.as_tool(description="Breaks.")])

    with pytest.raises(
        AppError, match="agent 'caller': its sub-agent 'broken': max_steps must be at least 1"
    ):
        build_app("tests", [caller])


# --- one run to the person in the chat: the children's progress, approvals and questions go through it ---


async def stream_acting(
    http: httpx.AsyncClient, body: dict[str, Any], when: Callable[[dict[str, Any]], bool], act: Act
) -> UIStream:
    """POST /api/chat and read the stream to its end; the first chunk for which `when` holds is acted on
    (with the run's id) while the stream is still open."""
    lines: list[str] = []
    acted = False
    async with http.stream("POST", "/api/chat", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            lines.append(line)
            if not acted and line.startswith("data: {") and when(json.loads(line[len("data: ") :])):
                acted = True
                await act(json.loads(line[len("data: ") :]), response.headers["x-agent-run-id"])
    assert acted, "the stream never showed what the test waited for"
    stream = parse_text("\n".join(lines), response)
    assert_well_formed(stream)
    return stream


def child_waiting(state: str) -> Callable[[dict[str, Any]], bool]:
    """A sub-agent's progress showing one of its tool calls in `state`."""
    return lambda chunk: (
        is_sub_run_progress(chunk) and any(part.get("state") == state for part in chunk["output"]["parts"])
    )


def part_in(chunk: dict[str, Any], state: str) -> dict[str, Any]:
    return next(part for part in chunk["output"]["parts"] if part.get("state") == state)


async def test_a_childs_approval_shows_in_the_parents_stream_and_is_given_through_the_parent(
    http: httpx.AsyncClient, store: RunStore
) -> None:
    decided: dict[str, Any] = {}

    async def approve_through_the_parent(chunk: dict[str, Any], run: str) -> None:
        # The publisher's run waits: the editor's stream shows its call of publish asking for approval.
        assert chunk["output"]["agent"] == "publisher"
        assert chunk["output"]["status"] == "waiting_for_approval"
        call = part_in(chunk, "approval-requested")
        assert call["type"] == "tool-publish" and call["approval"] == {"id": call["toolCallId"]}
        response = await http.post(f"/api/runs/{run}/approvals/{call['toolCallId']}", json={"approved": True})
        decided.update(response.json(), status_code=response.status_code, child=chunk["output"]["agentRunId"])

    stream = await stream_acting(
        http,
        chat_body("release the lesson on fractions", purpose="editor"),
        child_waiting("approval-requested"),
        approve_through_the_parent,
    )

    assert decided["status_code"] == 200 and decided["approved"] is True and decided["tool_name"] == "publish"
    assert stream.run_status == "completed"
    *_, answer = stream.of_type("tool-output-available")
    assert "preliminary" not in answer and "published" in answer["output"]
    approval = await store.pool.fetchval(
        "SELECT approval FROM tool_runs WHERE agent_run_id = $1 AND tool_name = 'publish' AND attempt = 1",
        decided["child"],
    )
    assert approval == "approved"


async def test_a_childs_question_is_answered_through_the_parent(
    http: httpx.AsyncClient, store: RunStore
) -> None:
    answered: dict[str, Any] = {}

    async def answer_through_the_parent(chunk: dict[str, Any], run: str) -> None:
        question = part_in(chunk, "input-available")
        assert chunk["output"]["agent"] == "interviewer" and question["type"] == "tool-ask_user"
        response = await http.post(f"/api/runs/{run}/answer", json={"text": "about fractions"})
        answered.update(
            response.json(), status_code=response.status_code, child=chunk["output"]["agentRunId"]
        )

    stream = await stream_acting(
        http,
        chat_body("interview me: ask me what the lesson is about", purpose="host"),
        lambda c: child_waiting("input-available")(c) and c["output"]["status"] == "waiting_for_input",
        answer_through_the_parent,
    )

    # The answer went to the run that asked, and says so.
    child = answered.pop("child")
    assert answered == {"status_code": 200, "agent_run_id": child, "status": "answered"}
    assert stream.run_status == "completed"
    _system, _task, _asked, reply, *_ = await store.conversation(child, 10)
    assert (reply.role, reply.content) == ("tool", "about fractions")


async def test_a_decision_nobody_in_the_tree_waits_for_is_refused_with_a_clear_404(
    http: httpx.AsyncClient,
) -> None:
    stream = await chat(http, chat_body("write a lesson on fractions", purpose="editor"))
    run = stream.response.headers["x-agent-run-id"]

    response = await http.post(f"/api/runs/{run}/approvals/call_404", json={"approved": True})

    assert response.status_code in (404, 409), response.text
    assert "call_404" in response.text or "finished" in response.text


async def test_a_stream_resumed_while_a_child_waits_shows_the_child_again(
    http: httpx.AsyncClient, store: RunStore
) -> None:
    # The editor's stream is read until the publisher's run waits, then dropped.
    seen: dict[str, Any] = {}
    lines: list[str] = []
    async with http.stream(
        "POST", "/api/chat", json=chat_body("release the lesson on fractions", purpose="editor")
    ) as response:
        run = response.headers["x-agent-run-id"]
        async for line in response.aiter_lines():
            lines.append(line)
            if line.startswith("data: {") and child_waiting("approval-requested")(json.loads(line[6:])):
                break
    first = parse_text("\n".join(lines), response)
    last_id = max(i for i in first.ids if i is not None)

    # Resuming after the last numbered chunk: nothing of the run's own is repeated, and the child's
    # progress comes again, whole, with its call still waiting.
    async with http.stream(
        "GET", f"/api/runs/{run}/events", headers={"Last-Event-ID": str(last_id)}
    ) as resumed:
        async for line in resumed.aiter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                assert is_sub_run_progress(chunk), f"a chunk the client had: {chunk}"
                seen = chunk
                if child_waiting("approval-requested")(chunk):
                    break
    call = part_in(seen, "approval-requested")

    # And the run finishes once the call is approved (through the parent).
    approved = await http.post(f"/api/runs/{run}/approvals/{call['toolCallId']}", json={"approved": True})
    assert approved.status_code == 200, approved.text
    await wait_for_status(http, run, "completed", within=30)


async def test_a_worker_killed_while_a_child_waits_loses_nothing(stack: CrashStack, store: RunStore) -> None:
    worker, gateway = stack.worker(), stack.gateway()
    await stack.start(worker, gateway)
    async with httpx.AsyncClient(base_url=gateway.url or "", timeout=60) as http:
        chatting = asyncio.create_task(
            chat(http, chat_body("release the lesson on fractions", purpose="editor"))
        )

        async def parked_child() -> asyncpg.Record | None:
            return await store.pool.fetchrow(
                "SELECT r.parent_run_id, t.tool_call_id FROM agent_runs r JOIN tool_runs t ON t.agent_run_id = r.id"
                " WHERE r.purpose_slug = 'publisher' AND r.status = 'waiting_for_approval'"
                " AND t.status = 'waiting_for_approval' ORDER BY r.started_at DESC LIMIT 1"
            )

        parked = await until("the publisher waits for an approval", parked_child)
        worker.kill()  # SIGKILL: parent and child are both mid-run
        await worker.restart()

        approved = await http.post(
            f"/api/runs/{parked['parent_run_id']}/approvals/{parked['tool_call_id']}", json={"approved": True}
        )
        assert approved.status_code == 200, approved.text
        stream = await asyncio.wait_for(chatting, 60)

    assert stream.run_status == "completed"
    [publisher] = [
        c for c in await children_of(store.pool, parked["parent_run_id"]) if c["purpose_slug"] == "publisher"
    ]
    assert publisher["status"] == "completed"


def test_a_resubmitted_message_does_not_take_a_sub_agents_progress_for_an_answer() -> None:
    # useChat holds a sub-agent's progress as the call's preliminary output, with state output-available.
    message = UIMessage.model_validate(
        {
            "id": "run-1",
            "role": "assistant",
            "parts": [
                {
                    "type": "tool-writer",
                    "toolCallId": "c1",
                    "state": "output-available",
                    "input": {},
                    "output": {"agentRunId": "run-2", "agent": "writer", "status": "running"},
                    "preliminary": True,
                },
                {
                    "type": "tool-publish",
                    "toolCallId": "c2",
                    "state": "approval-responded",
                    "input": {},
                    "approval": {"id": "c2", "approved": True},
                },
            ],
        }
    )

    approvals, results = pending_answers(message)

    assert [a.tool_call_id for a in approvals] == ["c2"] and results == []
