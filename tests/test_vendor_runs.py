"""Whole agent runs through Temporal with a worker whose providers are the fake vendors.

The worker (`vendor_worker` in conftest.py) holds real-looking API keys in its environment and runs on its
own task queue; runs are started the way the gateway starts them (conversation in PostgreSQL first, then
the workflow), with the route set per run.
"""

import contextlib
import json

import pytest
from keel_examples import assistant
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle

from keel.contracts import Budgets, LlmStepResult, Message, RunState
from keel.run_start import first_messages, run_input, start_run
from keel.storage.store import RunStore
from tests.conftest import FAKE_ANTHROPIC_KEY, FAKE_OPENAI_KEY, NO_CONTEXT, VendorWorker

pytestmark = pytest.mark.usefixtures("vendor_worker")


async def run(
    temporal: Client,
    store: RunStore,
    worker: VendorWorker,
    route: str,
    text: str,
    budgets: Budgets | None = None,
) -> tuple[RunState, WorkflowHandle]:
    messages = first_messages(assistant, NO_CONTEXT, [Message(role="user", content=text)])
    workflow_input = run_input(assistant.spec(route, budgets), messages)
    await store.put_messages(workflow_input.agent_run_id, 0, messages)
    handle = await start_run(temporal, workflow_input, worker.task_queue)
    with contextlib.suppress(WorkflowFailureError):
        await handle.result()  # a failed run still answers the state query
    return await handle.query("state", result_type=RunState), handle


async def llm_results(
    temporal: Client, store: RunStore, handle: WorkflowHandle
) -> list[tuple[LlmStepResult, int, float]]:
    """Each model call's result from history (its local activity's marker), with its final attempt number
    and the seconds that attempt waited after the one before it ended (0 for a first attempt), from the run's
    llm_calls records."""
    out = []
    for event in (await handle.fetch_history()).events:
        details = event.marker_recorded_event_attributes.details
        if event.event_type != EventType.EVENT_TYPE_MARKER_RECORDED or "data" not in details:
            continue
        marker = json.loads(details["data"].payloads[0].data)
        if marker["activity_type"] != "call_llm":
            continue
        [result] = await temporal.data_converter.decode(details["result"].payloads, [LlmStepResult])
        attempts = await store.pool.fetch(
            "SELECT started_at, finished_at FROM llm_calls WHERE agent_run_id = $1 AND seq = $2 ORDER BY attempt",
            handle.id,
            result.reply_seq,
        )
        waited = (
            (attempts[-1]["started_at"] - attempts[-2]["finished_at"]).total_seconds()
            if len(attempts) > 1
            else 0.0
        )
        out.append((result, marker["attempt"], waited))
    return out


@pytest.mark.parametrize(
    "route", ["openai:gpt-4o-mini", "anthropic:claude-haiku-4-5", "local:qwen2.5:7b?tools=json"]
)
async def test_an_agent_run_with_tools_end_to_end(
    route: str, temporal: Client, store: RunStore, vendor_worker: VendorWorker
) -> None:
    state, handle = await run(temporal, store, vendor_worker, route, "calculate 2 + 3")

    assert state.status == "completed", state.detail
    conversation = await store.conversation(state.agent_run_id, 10)
    [result] = [m for m in conversation if m.role == "tool"]
    assert json.loads(result.content) == {"expression": "2 + 3", "value": 5}
    assert 'calculate returned: {"expression": "2 + 3", "value": 5}' in conversation[-1].content
    steps = await llm_results(temporal, store, handle)
    assert [r.model for r, _, _ in steps] == [route, route]
    assert all(r.request_id and r.request_id.startswith("req_fake_") for r, _, _ in steps)
    # Cost per call, summed per run by the workflow.
    assert state.usage.cost_usd == pytest.approx(sum(r.usage.cost_usd for r, _, _ in steps))
    assert (state.usage.cost_usd > 0) == (not route.startswith("local"))


async def test_the_cost_budget_ends_a_run_gracefully(
    temporal: Client, store: RunStore, vendor_worker: VendorWorker
) -> None:
    # The first step (a priced gpt-4o-mini call) costs more than a millionth of a dollar.
    state, handle = await run(
        temporal, store, vendor_worker, "openai:gpt-4o-mini", "calculate 2 + 3", Budgets(max_cost_usd=1e-6)
    )

    assert state.status == "budget_exceeded"
    assert state.step == 1 and state.usage.cost_usd > 1e-6
    assert state.detail.startswith("the cost budget is used up ($")
    assert state.budgets_left.cost_usd == 0


async def test_a_429_is_retried_after_the_providers_retry_after(
    temporal: Client, store: RunStore, vendor_worker: VendorWorker
) -> None:
    state, handle = await run(temporal, store, vendor_worker, "openai:status429x1", "calculate 4 + 4")

    assert state.status == "completed", state.detail
    (first, attempts, waited), _ = await llm_results(temporal, store, handle)
    assert attempts == 2
    # Retry-After said 1.5 s; the retry policy alone would have waited 1 s.
    assert 1.45 <= waited < 3, waited


async def test_an_overload_reported_inside_the_stream_is_retried_and_the_run_completes(
    temporal: Client, store: RunStore, vendor_worker: VendorWorker
) -> None:
    # The first answer is HTTP 200 whose first chunk is {"error": {"type": "server_error", ...}}.
    state, handle = await run(temporal, store, vendor_worker, "openai:errorfirstx1", "calculate 6 + 6")

    assert state.status == "completed", state.detail
    (_, attempts, _), _ = await llm_results(temporal, store, handle)
    assert attempts == 2  # the same route, asked again by Temporal


async def test_a_fallback_route_answers_when_the_first_is_refused(
    temporal: Client, store: RunStore, vendor_worker: VendorWorker
) -> None:
    chain = "openai:status401,anthropic:claude-haiku-4-5"
    state, handle = await run(temporal, store, vendor_worker, chain, "calculate 1 + 1")

    assert state.status == "completed", state.detail
    assert [r.model for r, _, _ in await llm_results(temporal, store, handle)] == [
        "anthropic:claude-haiku-4-5"
    ] * 2


async def test_a_malformed_tool_call_goes_back_to_the_model(
    temporal: Client, store: RunStore, vendor_worker: VendorWorker
) -> None:
    state, _ = await run(temporal, store, vendor_worker, "openai:malformed", "calculate 3 + 3")

    assert state.status == "completed", state.detail
    conversation = await store.conversation(state.agent_run_id, 10)
    [result] = [m for m in conversation if m.role == "tool"]
    assert result.is_error and "calculate was not run: the arguments are not valid JSON" in result.content
    assert "calculate failed" in conversation[-1].content


async def test_a_refused_key_fails_the_run_clearly_and_stays_secret(
    temporal: Client, store: RunStore, vendor_worker: VendorWorker
) -> None:
    state, handle = await run(temporal, store, vendor_worker, "openai:status401", "calculate 5 + 5")

    assert state.status == "failed"
    assert state.detail and "openai answered HTTP 401" in state.detail
    assert "check OPENAI_API_KEY" in state.detail
    history = (await handle.fetch_history()).to_json()
    events = await handle.query("events", 0)
    for place in (history, state.model_dump_json(), json.dumps(events), vendor_worker.log.read_text()):
        assert FAKE_OPENAI_KEY not in place and FAKE_ANTHROPIC_KEY not in place
