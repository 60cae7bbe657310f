"""Handoffs (`Agent(handoffs=[...])`): a `transfer_to_<agent>` call gives the conversation to another agent
and the same run goes on with that agent's instructions, tools and limits.

Through the real stack (gateway, Temporal dev server, worker, PostgreSQL) with the offline scripted model,
which calls `transfer_to_billing` when the user's message says "transfer to billing"; and with keel.testing
(the real workflow and activities on Temporal's test server), whose script makes the model call tools the
scripted model would never pick: a tool of the agent before the handoff, two handoffs in one step, a
handoff the agent may not make, a cycle. The app is tests/apps/handoffs.py.
"""

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from activities.agent_activities import instructions_in_force
from keel import Agent, tool
from keel.app import AppError, build_app, load_app
from keel.contracts import HandedOff
from keel.stack.embedded import EmbeddedPostgres, TemporalDevServer
from keel.storage.store import RunStore
from keel.testing import AgentTest, call
from tests.apps.handoffs import billing, triage
from tests.conftest import Keel
from tests.crash_stack import CrashStack, gateway_client
from tests.ui_stream import assert_well_formed, chat, chat_body

APP = "tests.apps.handoffs"
TRIAGE = "You sort requests out and hand each to the agent that handles it."
BILLING = "You handle invoices and refunds."


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


async def test_triage_hands_over_to_billing_whose_tools_and_step_limit_then_hold(
    http: httpx.AsyncClient, store: RunStore
) -> None:
    stream = await chat(http, chat_body("transfer to billing and find invoice 42", purpose="triage"))

    assert_well_formed(stream)
    run = stream.response.headers["x-agent-run-id"]
    # Triage handed over; billing's own tool then ran (triage has no such tool).
    assert stream.tool_names == ["transfer_to_billing", "find_invoice"]
    [handoff] = stream.of_type("data-handoff")
    assert handoff["id"].startswith("handoff-")
    assert handoff["data"] == {"fromAgent": "triage", "toAgent": "billing", "title": "Billing"}
    # Inline where it fell: after the handoff call's result, before billing's tool call.
    chunks = stream.chunks
    assert (
        chunks.index(stream.of_type("tool-output-available")[0])
        < chunks.index(handoff)
        < chunks.index(stream.of_type("tool-input-available")[1])
    )
    # Billing allows 2 steps (triage 10): the run ends by billing's limit.
    assert stream.run_status == "step_limit"
    state = (await http.get(f"/api/runs/{run}")).json()
    assert state["purpose"] == "billing" and state["budgets"]["max_steps"] == 2

    # The conversation keeps both agents' instructions; the model is shown billing's, first, alone.
    stored = await store.conversation(run, 2**31 - 1)
    [marked] = [m for m in stored if m.name == "handoff"]
    assert (marked.role, marked.content) == ("system", BILLING)
    assert stored[0].content == TRIAGE
    shown = instructions_in_force(stored)
    assert shown[0].role == "system" and shown[0].content == BILLING and shown[0].name is None
    assert TRIAGE not in [m.content for m in shown]
    assert len(shown) == len(stored) - 1


async def test_after_a_handoff_the_tools_of_the_agent_before_are_not_offered() -> None:
    async with AgentTest(APP) as t:
        run = await t.run(
            "hand me over",
            agent="triage",
            script=[call("transfer_to_billing"), call("search_faq", topic="refunds"), "Done."],
        )
    handed, refused = run.tool_calls
    assert (handed.name, handed.status, handed.result) == (
        "transfer_to_billing",
        "ok",
        "triage handed the conversation to billing",
    )
    assert refused.status == "error" and "there is no tool named 'search_faq'" in refused.result
    assert run.state is not None and run.state.purpose == "billing"
    # Billing's limit of 2 steps ends the run, though the script had an answer left.
    assert run.status == "step_limit"
    # What the model saw in its second step: billing's instructions first, triage's gone.
    second = run.model.seen[1]
    assert second[0].content == BILLING and TRIAGE not in [m.content for m in second]
    assert run.model.seen[0][0].content == TRIAGE
    assert [e.to_agent for e in run.events if isinstance(e, HandedOff)] == ["billing"]


async def test_a_handoff_the_agent_may_not_make_and_a_second_in_one_step_are_refused() -> None:
    async with AgentTest(APP) as t:
        run = await t.run(
            "hand me over twice",
            agent="triage",
            script=[
                # Triage may not hand to itself (only billing hands to triage), then two at once: the first
                # wins, the second is refused.
                call("transfer_to_triage"),
                [call("transfer_to_billing"), call("transfer_to_billing")],
                "Done.",
            ],
        )
    not_offered, first, second = run.tool_calls
    assert not_offered.status == "error" and "no tool named 'transfer_to_triage'" in not_offered.result
    assert first.status == "ok"
    assert second.status == "error" and "one handoff per step" in second.result
    assert [e.to_agent for e in run.events if isinstance(e, HandedOff)] == ["billing"]


async def test_a_cycle_of_handoffs_is_bounded_by_the_agents_limits() -> None:
    async with AgentTest(APP) as t:
        run = await t.run(
            "go round",
            agent="triage",
            script=[call("transfer_to_billing"), call("transfer_to_triage")] * 10 + ["Done."],
        )
    # triage -> billing -> triage -> billing: after step 3 billing holds the run, and its limit is 2 steps.
    assert [(e.from_agent, e.to_agent) for e in run.events if isinstance(e, HandedOff)] == [
        ("triage", "billing"),
        ("billing", "triage"),
        ("triage", "billing"),
    ]
    assert run.status == "step_limit" and run.state is not None and run.state.step == 3


def test_the_snapshot_holds_every_agent_reachable_by_handoffs_once() -> None:
    app = load_app(APP)
    spec = triage.spec("scripted", agents=app.reachable)

    assert spec.handoffs == ["billing"] and "transfer_to_billing" in spec.tools
    assert sorted(spec.handoff_agents) == ["billing", "triage"]
    assert spec.handoff_agents["billing"].instructions == BILLING
    assert spec.handoff_agents["billing"].purpose.handoffs == ["triage"]
    assert all(not a.purpose.handoff_agents for a in spec.handoff_agents.values())
    # An agent without handoffs has no map: its snapshot is what it was before handoffs.
    assert Agent(name="plain", instructions="x").spec("scripted").handoff_agents == {}
    offered = app.tools["transfer_to_billing"].spec()
    assert offered.description == "Hand the conversation over to Billing: Invoices, payments and refunds."
    assert offered.parameters["properties"] == {}
    assert billing.spec("scripted", agents=app.reachable).handoff_agents.keys() == {"billing", "triage"}


@tool
def transfer_to_billing() -> str:
    """A tool that takes the name of a handoff tool."""
    return "no"


@pytest.mark.parametrize(
    ("agents", "problem"),
    [
        (
            [Agent(name="a", instructions="x", handoffs=["nobody"])],
            "agent 'a': it hands off to 'nobody', which is not an agent of the app",
        ),
        ([Agent(name="a", instructions="x", handoffs=["a"])], "agent 'a': it hands off to itself"),
        (
            [Agent(name="a", instructions="x", handoffs=[Agent(name="b", instructions="y", max_steps=0)])],
            "agent 'b': max_steps must be at least 1",
        ),
        (
            [
                Agent(name="a", instructions="x", tools=[transfer_to_billing], handoffs=["billing"]),
                Agent(name="billing", instructions="y"),
            ],
            "agent 'a': its tool 'transfer_to_billing' has the name of the tool that hands off to that agent",
        ),
    ],
)
def test_an_app_whose_handoffs_break_the_rules_is_refused(agents: list[Agent], problem: str) -> None:
    with pytest.raises(AppError, match=problem):
        build_app("tests", agents)
