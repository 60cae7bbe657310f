"""Keel's `/mcp` driven by the official `mcp` Python client (its streamable HTTP transport and
`ClientSession`), through the real gateway, workers, Temporal and PostgreSQL: every agent is a tool, a call
runs the agent and answers with its final text, progress carries the run's steps, approvals and questions
come to the client as elicitations (or, for a client without elicitation, as the run id and how to
decide), cancelling the call cancels the run, /mcp is authenticated as /api is, an agent's structured
output is the tool's `structuredContent`, and a run started over MCP survives kill -9 of its worker."""

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.session import ClientRequestContext, ClientSession, ElicitationFnT
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from activities.models.scripted import DISCLAIMER, ScriptedModel
from api.mcp_server import RUN_ID_META
from keel.stack.embedded import EmbeddedPostgres, TemporalDevServer
from keel.storage.store import RunStore
from tests.conftest import Keel
from tests.crash_stack import CrashStack, until
from tests.test_run_records import pick, records
from tests.test_security import bearer, token, user_id

PUBLISH = "plan, write and publish a lesson on tail calls"
COLOUR = "ask me my favourite colour"
LONG = (
    "hello there, tell me everything you know about durable execution, about workers that die in the"
    " middle of a sentence, and about gateways that come back on the same port a moment later"
)


@asynccontextmanager
async def mcp_client(
    base_url: str, headers: dict[str, str] | None = None, elicit: ElicitationFnT | None = None
) -> AsyncIterator[ClientSession]:
    """An initialized session of the official client with Keel's /mcp (elicitation declared when `elicit`
    is given)."""
    async with (
        create_mcp_http_client(headers=headers) as http,
        streamable_http_client(f"{base_url}/mcp", http_client=http) as (read, write),
        ClientSession(read, write, elicitation_callback=elicit) as session,
    ):
        await session.initialize()
        yield session


class Progress:
    """The progress notifications of one call."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.values: list[float] = []

    async def __call__(self, progress: float, total: float | None, message: str | None) -> None:
        self.values.append(progress)
        self.messages.append(message or "")

    @property
    def run_id(self) -> str | None:
        found = re.search(r"started run (run-[0-9a-f-]+)", " ".join(self.messages))
        return found.group(1) if found else None


class Person:
    """Who answers the elicitations: records what was asked, answers as told."""

    def __init__(self, action: str, content: dict[str, Any] | None = None, *, hang: bool = False) -> None:
        self.action, self.content, self.hang = action, content, hang
        self.asked: list[types.ElicitRequestFormParams] = []
        self.reached = asyncio.Event()

    async def __call__(
        self, context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult | types.ErrorData:
        assert isinstance(params, types.ElicitRequestFormParams)
        self.asked.append(params)
        self.reached.set()
        if self.hang:
            await asyncio.Event().wait()  # someone who never answers
        return types.ElicitResult(action=self.action, content=self.content)  # type: ignore[arg-type]


def text_of(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


def run_of(result: types.CallToolResult) -> str:
    run_id = (result.meta or {}).get(RUN_ID_META)
    assert isinstance(run_id, str) and run_id.startswith("run-"), result
    return run_id


async def test_every_agent_is_a_tool_with_a_message_in(keel: Keel) -> None:
    async with mcp_client(keel.gateway_url) as session:
        listed = await session.list_tools()

    tools = {t.name: t for t in listed.tools}
    assert set(tools) == {"assistant", "learnpack-lesson-writer", "lesson-reviewer", "course-editor"}
    for tool in tools.values():
        assert tool.input_schema["required"] == ["message"]
        assert set(tool.input_schema["properties"]) == {"message", "context"}
        assert tool.output_schema is None  # no example agent has an output_type
        assert tool.description and tool.description.startswith("Keel agent")


async def test_an_agent_call_answers_with_its_final_text_and_reports_its_steps(
    keel: Keel, http: httpx.AsyncClient
) -> None:
    progress = Progress()
    async with mcp_client(keel.gateway_url) as session:
        result = await session.call_tool(
            "assistant", {"message": "calculate (2 + 3) * 4"}, progress_callback=progress
        )

    assert not result.is_error, text_of(result)
    assert "20" in text_of(result) and DISCLAIMER in text_of(result)
    run_id = run_of(result)
    assert progress.run_id == run_id
    assert {"step 1", "calling calculate", "calculate finished", "run completed"} <= set(progress.messages)
    assert progress.values == sorted(progress.values) and len(set(progress.values)) == len(progress.values)
    # An ordinary run: its state, its chat (one per call) and its record.
    state = (await http.get(f"/api/runs/{run_id}")).json()
    assert state["status"] == "completed" and state["purpose"] == "assistant"
    assert state["chat_id"].startswith("mcp-")
    listed = (await http.get("/api/runs", params={"chat_id": state["chat_id"]})).json()
    assert [r["agent_run_id"] for r in listed] == [run_id]


async def test_arguments_that_do_not_fit_start_no_run_and_say_why(keel: Keel) -> None:
    async with mcp_client(keel.gateway_url) as session:
        missing = await session.call_tool("assistant", {"context": {"plan": "pro"}})
        extra = await session.call_tool("assistant", {"message": "hi", "temperature": 2})
        with pytest.raises(Exception, match="no tool 'nobody'"):
            await session.call_tool("nobody", {"message": "hi"})

    assert missing.is_error and "`message` must be a string" in text_of(missing)
    assert extra.is_error and "unknown arguments ['temperature']" in text_of(extra)


async def test_an_approval_accepted_in_the_client_lets_the_tool_run(
    keel: Keel, http: httpx.AsyncClient
) -> None:
    person = Person("accept", {"reason": "looks right"})
    async with mcp_client(keel.gateway_url, elicit=person) as session:
        result = await session.call_tool("learnpack-lesson-writer", {"message": PUBLISH})

    assert not result.is_error, text_of(result)
    assert "publish_package returned" in text_of(result)
    [asked] = person.asked
    assert "publish_package" in asked.message and "tail calls" in asked.message  # the arguments shown
    state = (await http.get(f"/api/runs/{run_of(result)}")).json()
    [approval] = state["approvals"]
    assert (approval["tool_name"], approval["approved"], approval["reason"]) == (
        "publish_package",
        True,
        "looks right",
    )


async def test_an_approval_declined_in_the_client_denies_the_tool(keel: Keel) -> None:
    person = Person("decline")
    async with mcp_client(keel.gateway_url, elicit=person) as session:
        result = await session.call_tool("learnpack-lesson-writer", {"message": PUBLISH})

    assert len(person.asked) == 1
    assert not result.is_error, text_of(result)  # the run completed: the model was told it was denied
    assert "publish_package did not run: denied" in text_of(result)


async def test_the_agents_question_is_answered_through_elicitation(keel: Keel) -> None:
    person = Person("accept", {"answer": "green"})
    async with mcp_client(keel.gateway_url, elicit=person) as session:
        result = await session.call_tool("assistant", {"message": COLOUR})

    [asked] = person.asked
    assert asked.requested_schema["required"] == ["answer"]
    assert not result.is_error, text_of(result)
    assert "ask_user returned: green" in text_of(result)


async def test_a_client_without_elicitation_gets_the_run_id_and_how_to_decide(
    keel: Keel, http: httpx.AsyncClient
) -> None:
    async with mcp_client(keel.gateway_url) as session:
        result = await session.call_tool("learnpack-lesson-writer", {"message": PUBLISH})

    assert result.is_error
    run_id = run_of(result)
    state = (await http.get(f"/api/runs/{run_id}")).json()
    assert state["status"] == "waiting_for_approval"  # parked, not denied
    [pending] = state["pending_approvals"]
    assert f"/api/runs/{run_id}/approvals/{pending['tool_call_id']}" in text_of(result)
    assert f"keel approve {run_id} {pending['tool_call_id']}" in text_of(result)
    # And it can be decided that way.
    decided = await http.post(
        f"/api/runs/{run_id}/approvals/{pending['tool_call_id']}", json={"approved": True}
    )
    assert decided.status_code == 200, decided.text
    await until(lambda: _status(http, run_id, "completed"), "the parked run completes after the approval")


async def test_a_dismissed_elicitation_leaves_the_run_parked(keel: Keel, http: httpx.AsyncClient) -> None:
    async with mcp_client(keel.gateway_url, elicit=Person("cancel")) as session:
        result = await session.call_tool("learnpack-lesson-writer", {"message": PUBLISH})

    assert result.is_error and "stays parked" in text_of(result)
    run_id = run_of(result)
    assert (await http.get(f"/api/runs/{run_id}")).json()["status"] == "waiting_for_approval"
    await http.post(f"/api/runs/{run_id}/cancel", json={"reason": "test over"})


async def test_cancelling_the_call_cancels_the_run(keel: Keel, http: httpx.AsyncClient) -> None:
    person, progress = Person("accept", hang=True), Progress()
    async with mcp_client(keel.gateway_url, elicit=person) as session:
        call = asyncio.create_task(
            session.call_tool("learnpack-lesson-writer", {"message": PUBLISH}, progress_callback=progress)
        )
        await asyncio.wait_for(person.reached.wait(), 60)
        call.cancel()  # the client sends notifications/cancelled
        with pytest.raises(asyncio.CancelledError):
            await call
        run_id = progress.run_id
        assert run_id is not None
        await until(lambda: _status(http, run_id, "cancelled"), "the run is cancelled")

    detail = (await http.get(f"/api/runs/{run_id}")).json()["detail"]
    assert "the MCP client cancelled the tool call" in detail


async def _status(http: httpx.AsyncClient, run_id: str, status: str) -> bool:
    state = (await http.get(f"/api/runs/{run_id}")).json()
    return bool(state["status"] == status)


async def test_mcp_is_authenticated_as_api_is_and_runs_belong_to_their_caller(
    gateways: dict[str, str],
) -> None:
    url = gateways["auth"]
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        refused = await http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == "Bearer"
        wrong = await http.post("/mcp", json={}, headers=bearer("not-a-token"))
        assert wrong.status_code == 401

        alice, bob = user_id("alice"), user_id("bob")
        async with mcp_client(url, headers=bearer(token(alice))) as session:
            result = await session.call_tool("assistant", {"message": "calculate (2 + 3) * 4"})
        run_id = run_of(result)

        mine = await http.get(f"/api/runs/{run_id}", headers=bearer(token(alice)))
        assert mine.status_code == 200 and mine.json()["user_id"] == alice
        assert (await http.get(f"/api/runs/{run_id}", headers=bearer(token(bob)))).status_code == 404


@pytest.fixture(scope="module")
async def structured(
    keel: Keel,
    temporal_server: TemporalDevServer,
    postgres: EmbeddedPostgres,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[str]:
    """The gateway of a stack serving tests/apps/structured.py, whose agents answer with an object."""
    base = tmp_path_factory.mktemp("mcp-structured")
    app = "tests.apps.structured:AGENTS"
    with CrashStack(temporal_server, postgres, base, keel.env["KEEL_CODEC_KEY_FILE"], KEEL_APP=app) as stack:
        gateway = stack.gateway()
        await stack.start(stack.worker(), gateway)
        yield gateway.url or ""


async def test_structured_output_is_the_tools_structured_content(structured: str) -> None:
    async with mcp_client(structured) as session:
        tools = {t.name: t for t in (await session.list_tools()).tools}
        result = await session.call_tool("tracker", {"message": "Please track order 1234."})

    schema = tools["tracker"].output_schema
    assert schema is not None and schema["title"] == "Shipment"
    assert not result.is_error, text_of(result)
    shipment = {"order_number": 1234, "status": "in_transit", "carrier": "DHL", "days_late": 2}
    assert result.structured_content == shipment  # and the client validated it against the schema


async def llm_call_running(store: RunStore, run_id: str) -> bool:
    sql = "SELECT EXISTS (SELECT 1 FROM llm_calls WHERE agent_run_id = $1 AND status = 'running')"
    return bool(await store.pool.fetchval(sql, run_id))


async def test_an_mcp_started_run_survives_kill_9_of_its_worker_and_completes_once(
    keel: Keel,
    temporal_server: TemporalDevServer,
    postgres: EmbeddedPostgres,
    tmp_path: Path,
    store: RunStore,
) -> None:
    with CrashStack(
        temporal_server, postgres, tmp_path, keel.env["KEEL_CODEC_KEY_FILE"], KEEL_MODEL="scripted:slow"
    ) as stack:
        worker, gateway = stack.worker(), stack.gateway()
        await stack.start(worker, gateway)
        progress = Progress()
        async with mcp_client(gateway.url or "") as session:
            call = asyncio.create_task(
                session.call_tool("assistant", {"message": LONG}, progress_callback=progress)
            )
            run_id = await until(lambda: progress.run_id, "the run's id in the first progress")
            await until(lambda: llm_call_running(store, run_id), "the LLM call under way")
            await asyncio.sleep(1)  # a few words into the reply
            worker.kill()
            await worker.restart()
            result = await asyncio.wait_for(call, 90)

    assert not result.is_error, text_of(result)
    conversation = await store.conversation(run_id, 100)
    assert [m.role for m in conversation] == ["system", "user", "assistant"]
    reply = conversation[-1].content
    assert reply == ScriptedModel({}).answer(conversation[:-1]) and reply.count(DISCLAIMER) == 1
    assert text_of(result) == reply  # the whole reply, once
    rec = await records(store.pool, run_id)
    assert [pick(r, "seq", "attempt") for r in rec["llm"]] == [(2, 1), (2, 2)]
    assert rec["run"]["status"] == "completed"


async def test_a_2026_client_is_asked_with_input_required_and_answers_on_its_retry(
    keel: Keel, http: httpx.AsyncClient
) -> None:
    # mcp.Client speaks 2026-07-28 to a server that serves it: no server-to-client requests, so the call
    # answers InputRequiredResult (the run's id as its state) and the client calls again with the answers.
    person = Person("accept", {"reason": "fine by me"})
    async with Client(f"{keel.gateway_url}/mcp", elicitation_callback=person) as client:
        assert client.session.protocol_version == "2026-07-28"
        result = await client.call_tool("learnpack-lesson-writer", {"message": PUBLISH})
    declined = Person("decline")
    async with Client(f"{keel.gateway_url}/mcp", elicitation_callback=declined) as client:
        colour = await client.call_tool("assistant", {"message": COLOUR})

    assert [a.message.split(" wants to call ")[1].split(" ")[0] for a in person.asked] == ["publish_package"]
    assert not result.is_error and "publish_package returned" in text_of(result)
    [approval] = (await http.get(f"/api/runs/{run_of(result)}")).json()["approvals"]
    assert (approval["approved"], approval["reason"]) == (True, "fine by me")
    assert len(declined.asked) == 1 and "ask_user returned: (the user declined to answer)" in text_of(colour)


async def test_a_2026_call_resumes_only_its_callers_run_of_its_agent(
    keel: Keel, http: httpx.AsyncClient
) -> None:
    async with mcp_client(keel.gateway_url) as session:
        parked = await session.call_tool("learnpack-lesson-writer", {"message": PUBLISH})
    async with Client(f"{keel.gateway_url}/mcp") as client:
        wrong_agent = await client.session.call_tool(
            "assistant", {"message": "x"}, request_state=run_of(parked), allow_input_required=True
        )
        unknown = await client.session.call_tool(
            "assistant", {"message": "x"}, request_state="run-nope", allow_input_required=True
        )

    assert isinstance(wrong_agent, types.CallToolResult) and wrong_agent.is_error
    assert "no run" in text_of(wrong_agent)
    assert isinstance(unknown, types.CallToolResult) and unknown.is_error
    await http.post(f"/api/runs/{run_of(parked)}/cancel", json={"reason": "test over"})
