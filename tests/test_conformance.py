"""The conformance suite: the same scenarios over every provider, with the same normalized outcome.

Each scenario runs through the real `call_llm` activity (in Temporal's ActivityEnvironment, with the
conversation in PostgreSQL), so what is compared is what a run records: the LlmStepResult the workflow
gets and the reply message stored for the gateway. The fake vendors' brain is the scripted model, so the
scripted model's own answer is the reference every provider must reproduce through its SDK and wire format.
"""

import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from temporalio.testing import ActivityEnvironment

from activities.agent_activities import AgentActivities
from activities.models import Finish, TextDelta, resolve_model
from keel.contracts import LlmStepInput, LlmStepResult, Message, ToolCall
from keel.routes import parse_route
from keel.settings import Settings
from keel.storage.store import RunStore
from tests.conftest import EXAMPLES

SYSTEM = Message(role="system", content="You are a helpful assistant.")
TOOL_NAMES = ["calculate", "current_time"]
ROUTES = [
    "scripted",
    "openai:gpt-4o-mini",
    "anthropic:claude-haiku-4-5",
    "local:llama3.1:8b",
    "local:qwen2.5:7b?tools=json",
]


@dataclass(frozen=True)
class Scenario:
    messages: list[Message]
    # A model name the fake vendors act on (`empty`: answer nothing), instead of the route's own.
    model: str | None = None


SCENARIOS = {
    "plain answer": Scenario([Message(role="user", content="hello there")]),
    "one tool call": Scenario([Message(role="user", content="calculate 2 + 3")]),
    "parallel tool calls": Scenario(
        [Message(role="user", content="calculate 2 + 3 and tell me the time, in parallel")]
    ),
    "tool error fed back": Scenario(
        [
            Message(role="user", content="calculate 7 / 0"),
            Message(
                role="assistant",
                tool_calls=[ToolCall(id="call_1", name="calculate", arguments={"expression": "7 / 0"})],
            ),
            Message(
                role="tool",
                tool_call_id="call_1",
                name="calculate",
                content="division by zero",
                is_error=True,
            ),
        ]
    ),
    "empty answer": Scenario([Message(role="user", content="hello")], model="empty"),
}


@dataclass(frozen=True)
class Outcome:
    text: str
    calls: list[ToolCall]
    finish_reason: str


async def reference(scenario: Scenario) -> Outcome:
    if scenario.model == "empty":
        return Outcome("", [], "stop")
    model, _ = resolve_model("scripted", triggers=EXAMPLES.triggers())
    tools = [EXAMPLES.tools[n].spec() for n in TOOL_NAMES]
    chunks = [c async for c in model.stream(messages=[SYSTEM, *scenario.messages], model="", tools=tools)]
    finish = chunks[-1]
    assert isinstance(finish, Finish)
    text = "".join(c.text for c in chunks if isinstance(c, TextDelta))
    return Outcome(text, [c for c in chunks if isinstance(c, ToolCall)], finish.reason)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("name", SCENARIOS)
async def test_every_provider_gives_the_same_outcome(
    name: str, route: str, vendor_settings: Settings, store: RunStore, tmp_path: Path
) -> None:
    scenario = SCENARIOS[name]
    if scenario.model:
        if route == "scripted":
            pytest.skip("the scripted model always writes its disclaimer, so it never answers empty")
        route = str(replace(parse_route(route), model=scenario.model))
    expected = await reference(scenario)
    run_id = f"run-conformance-{uuid.uuid4()}"
    conversation = [SYSTEM, *scenario.messages]
    await store.put_messages(run_id, 0, conversation)
    step = LlmStepInput(
        agent_run_id=run_id, step=1, model=route, tools=TOOL_NAMES, reply_seq=len(conversation)
    )

    activities = AgentActivities(store=store, data_dir=tmp_path, app=EXAMPLES)
    result: LlmStepResult = await ActivityEnvironment().run(activities.call_llm, step)

    reply = (await store.conversation(run_id, step.reply_seq + 1))[-1]
    assert Outcome(reply.content, result.tool_calls, result.finish_reason) == expected
    assert reply.tool_calls == expected.calls
    assert result.has_text == bool(expected.text)
    # The run records which route answered, what it was billed and the provider's request id.
    assert result.model == route
    assert result.usage.prompt_tokens > 0 and result.usage.completion_tokens > 0
    if route.startswith("scripted"):
        assert result.request_id is None and result.usage.cost_usd == 0
    else:
        assert result.request_id and result.request_id.startswith("req_fake_")
    if route.startswith(("openai", "anthropic")) and scenario.model != "empty":
        assert result.usage.cost_usd > 0 and result.usage.unpriced_calls == 0
