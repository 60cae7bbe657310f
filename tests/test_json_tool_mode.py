"""json tool mode: the prompt it writes and the tolerant reading of what a model answers."""

import json

import pytest

from activities.models.json_tools import TOOL_RESULTS_HEADER, parse_tool_reply, to_json_mode_messages
from keel.contracts import Message, ToolCall
from tests.conftest import EXAMPLES

CALL = {"type": "tool_call", "id": "call_1", "name": "calculate", "arguments": {"expression": "2 + 3"}}
EXPECTED = [ToolCall(id="call_1", name="calculate", arguments={"expression": "2 + 3"})]


@pytest.mark.parametrize(
    "reply",
    [
        json.dumps([CALL]),
        json.dumps(CALL),
        json.dumps({"tool_calls": [CALL]}),
        f"```json\n{json.dumps([CALL], indent=2)}\n```",
        f"```\n{json.dumps(CALL)}\n```\n",
        # Arguments encoded as a string, as models used to OpenAI's wire format write them.
        json.dumps([{**CALL, "arguments": json.dumps(CALL["arguments"])}]),
    ],
)
def test_reads_tool_calls_in_any_reasonable_wrapping(reply: str) -> None:
    assert parse_tool_reply(reply) == ("", EXPECTED)


def test_keeps_the_prose_around_a_call() -> None:
    prose, calls = parse_tool_reply(f"Let me work that out.\n```json\n{json.dumps([CALL])}\n```\nOne moment.")
    assert calls == EXPECTED
    assert prose == "Let me work that out.\n\nOne moment."


def test_parallel_calls_and_fresh_ids() -> None:
    second = {"type": "tool_call", "name": "current_time", "arguments": {}}
    _, calls = parse_tool_reply(json.dumps([CALL, second, CALL]), used_ids={"call_2"})
    assert [c.name for c in calls] == ["calculate", "current_time", "calculate"]
    # Missing and repeated ids are replaced; ids already used in the conversation are not reused.
    assert len({c.id for c in calls} | {"call_2"}) == 4


def test_json_that_is_not_a_tool_call_is_an_answer() -> None:
    reply = 'Here is the config you asked for:\n```json\n{"name": "keel", "version": 2}\n```'
    assert parse_tool_reply(reply) == (reply, [])
    assert parse_tool_reply("The answer is 5.") == ("The answer is 5.", [])


def test_a_broken_call_becomes_an_error_for_the_model_not_a_crash() -> None:
    prose, calls = parse_tool_reply(
        '[{"type": "tool_call", "id": "call_1", "name": "calculate", "arguments": {"expr'
    )
    assert prose == ""
    [call] = calls
    assert call.name == "calculate" and call.arguments == {}
    assert call.arguments_error and "not valid JSON" in call.arguments_error


def test_arguments_that_are_not_an_object_are_reported() -> None:
    [call] = parse_tool_reply(json.dumps([{**CALL, "arguments": [1, 2]}]))[1]
    assert call.arguments_error and "must be a JSON object" in call.arguments_error


def test_the_conversation_is_rewritten_as_plain_text_turns() -> None:
    messages = [
        Message(role="system", content="You are helpful."),
        Message(role="system", content="Application context: {}"),
        Message(role="user", content="calculate 7 / 0 and 1 + 1 in parallel"),
        Message(
            role="assistant",
            tool_calls=[
                ToolCall(id="call_1", name="calculate", arguments={"expression": "7 / 0"}),
                ToolCall(id="call_2", name="calculate", arguments={"expression": "1 + 1"}),
            ],
        ),
        Message(
            role="tool", tool_call_id="call_1", name="calculate", content="division by zero", is_error=True
        ),
        Message(role="tool", tool_call_id="call_2", name="calculate", content='{"value": 2}'),
        Message(role="user", content="thanks"),
    ]

    out = to_json_mode_messages(messages, [EXAMPLES.tools["calculate"].spec()])

    assert [m.role for m in out] == ["system", "user", "assistant", "user"]
    system = out[0].content
    assert system.startswith("You are helpful.\n\nApplication context: {}\n\nYou can call tools.")
    assert '"name": "calculate"' in system
    assert json.loads(out[2].content)[0] == {
        "type": "tool_call",
        "id": "call_1",
        "name": "calculate",
        "arguments": {"expression": "7 / 0"},
    }
    results, thanks = out[3].content.split("\n\n")
    lines = results.splitlines()
    assert lines[0] == TOOL_RESULTS_HEADER
    assert json.loads(lines[1])["is_error"] is True and json.loads(lines[2])["content"] == '{"value": 2}'
    assert thanks == "thanks"
