"""The offline scripted model: deterministic, honest about what it is, and driven by trigger words."""

import json

from activities.models import Finish, TextDelta, resolve_model
from activities.models.scripted import DISCLAIMER
from keel.contracts import Message, ToolCall
from tests.conftest import EXAMPLES

LESSON_TOOLS = [EXAMPLES.tools[n].spec() for n in ("plan_syllabus", "generate_markdown", "publish_package")]


async def reply(messages: list[Message], tools=LESSON_TOOLS) -> list:
    model, name = resolve_model("scripted", triggers=EXAMPLES.triggers())
    return [chunk async for chunk in model.stream(messages=messages, model=name, tools=tools)]


def user(text: str) -> Message:
    return Message(role="user", content=text)


async def test_calls_the_first_triggered_tool_with_arguments_from_the_message() -> None:
    chunks = await reply([Message(role="system", content="x"), user("Plan and write a lesson on recursion.")])

    assert chunks[0] == ToolCall(id="call_1", name="plan_syllabus", arguments={"topic": "recursion"})
    assert isinstance(chunks[-1], Finish) and chunks[-1].reason == "tool_calls"


async def test_fills_arguments_from_earlier_tool_results_and_moves_on() -> None:
    plan = {"topic": "recursion", "title": "Learn recursion", "outline": ["A", "B"]}
    messages = [
        user("plan and write a lesson on recursion"),
        Message(role="assistant", tool_calls=[ToolCall(id="call_1", name="plan_syllabus", arguments={})]),
        Message(role="tool", tool_call_id="call_1", name="plan_syllabus", content=json.dumps(plan)),
    ]

    chunks = await reply(messages)

    assert chunks[0] == ToolCall(
        id="call_2", name="generate_markdown", arguments={"title": "Learn recursion", "outline": ["A", "B"]}
    )


async def test_answers_in_small_chunks_once_every_wanted_tool_ran() -> None:
    messages = [
        user("calculate 2 + 2"),
        Message(role="assistant", tool_calls=[ToolCall(id="call_1", name="calculate", arguments={})]),
        Message(role="tool", tool_call_id="call_1", name="calculate", content='{"value": 4}'),
    ]

    chunks = await reply(messages, tools=[EXAMPLES.tools["calculate"].spec()])

    deltas = [c.text for c in chunks if isinstance(c, TextDelta)]
    assert len(deltas) > 3
    text = "".join(deltas)
    assert text.startswith(DISCLAIMER)
    assert 'calculate returned: {"value": 4}' in text
    assert chunks[-1].reason == "stop" and chunks[-1].usage.completion_tokens > 0


async def test_is_deterministic() -> None:
    messages = [user("plan a lesson about graphs")]
    assert await reply(messages) == await reply(messages)


async def test_trigger_words_match_whole_words_only() -> None:
    # "summary" must not trigger a tool whose trigger is "sum"; "timestamps" must not trigger "time".
    chunks = await reply(
        [user("give me a summary of timestamps")], tools=[EXAMPLES.tools[n].spec() for n in EXAMPLES.tools]
    )
    assert not any(isinstance(c, ToolCall) for c in chunks)


async def test_skips_a_tool_whose_required_arguments_it_cannot_derive() -> None:
    # generate_markdown needs an outline, which only plan_syllabus provides; with nothing planned, no call.
    chunks = await reply([user("write markdown")], tools=[EXAMPLES.tools["generate_markdown"].spec()])
    assert not any(isinstance(c, ToolCall) for c in chunks)


async def test_n_times_calls_the_tool_once_a_step_n_times() -> None:
    tools = [EXAMPLES.tools["calculate"].spec()]
    messages = [user("calculate 2 + 2, 3 times")]
    for _ in range(3):
        chunks = await reply(messages, tools)
        call = chunks[0]
        assert (call.name, call.arguments) == ("calculate", {"expression": "2 + 2"})
        messages += [
            Message(role="assistant", tool_calls=[call]),
            Message(role="tool", tool_call_id=call.id, name="calculate", content='{"value": 4}'),
        ]
    # Three calls made: the fourth step answers.
    assert "I ran 3 tool call(s)" in "".join(
        c.text for c in await reply(messages, tools) if isinstance(c, TextDelta)
    )
