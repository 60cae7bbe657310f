"""Agents as tools (`Agent.as_tool`), through the real stack: a call of another agent runs it as a child
AgentRun workflow with its own run id, history and records, linked to its parent, and governed by it —
parallel children, cancel cascades, budgets bounded by what the parent has left, usage rolled up, a depth
limit. The app is tests/apps/delegation.py; the offline scripted model calls a sub-agent by its trigger
words, and gives it the whole request as its task.
"""

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from keel import Agent
from keel.app import AppError, build_app
from keel.contracts import STATE_QUERY, RunState
from keel.stack.embedded import EmbeddedPostgres, TemporalDevServer
from keel.storage.store import RunStore
from tests.conftest import Keel, wait_for_status
from tests.crash_stack import CrashStack
from tests.ui_stream import chat, chat_body

APP = "tests.apps.delegation"


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
    processes = [stack.worker(), stack.gateway()]
    await stack.start(*processes)
    async with httpx.AsyncClient(base_url=processes[-1].url or "", timeout=60) as client:
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
    [output] = stream.of_type("tool-output-available")
    assert answer.role == "assistant" and output["output"] == answer.content
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
    assert "researcher failed" in stream.of_type("tool-output-available")[0]["output"]


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
