"""`keel run`'s nested progress of a sub-agent, fed with a recorded chunk sequence: the stream a run that
delegates sends (its call's preliminary outputs are `SubRunProgress` snapshots, each repeating the child's
whole message so far). The printer prints each child's block under its call — its text only as it grows,
its tool calls, a grandchild's block inside it, its end — and hands an approval the child waits for to
`keel run` once. The client keeps a preliminary output on its part without finishing the call."""

import io
from typing import Any

from keel.cli.main import Out, _show
from keel.cli.sub_runs import SubRunPrinter
from keel.client import AssistantMessage
from keel.contracts import RunStatus
from keel.ui_protocol import (
    StartChunk,
    SubRunProgress,
    TextDeltaChunk,
    TextEndChunk,
    TextStartChunk,
    TextUIPart,
    ToolApproval,
    ToolInputAvailableChunk,
    ToolOutputAvailableChunk,
    ToolUIPart,
    UIMessageChunk,
)
from keel.ui_protocol.messages import ToolState

CHILD, GRANDCHILD = "run-writer-1", "run-researcher-1"


def progress(run: str, agent: str, *parts: Any, status: RunStatus = RunStatus.running) -> dict[str, Any]:
    wired = [p.wire() if hasattr(p, "wire") else p for p in parts]
    return SubRunProgress(agent_run_id=run, agent=agent, status=status, parts=wired).wire()


def snapshot(output: dict[str, Any]) -> ToolOutputAvailableChunk:
    return ToolOutputAvailableChunk(tool_call_id="call-w", output=output, preliminary=True)


def notes(state: ToolState, **outcome: Any) -> ToolUIPart:
    return ToolUIPart(type="tool-take_notes", tool_call_id="n1", state=state, input={"topic": "x"}, **outcome)


def researching(output: dict[str, Any]) -> dict[str, Any]:
    part = ToolUIPart(
        type="tool-researcher", tool_call_id="r1", state="input-available", input={"input": "x"}
    )
    return {**part.wire(), "output": output, "preliminary": True}


WAITING = snapshot(
    progress(
        CHILD,
        "writer",
        TextUIPart(text="Draft one.\nSecond line."),
        notes("output-available", output={"notes": "n"}),
        {**researching({}), "state": "output-available", "output": "Found it.", "preliminary": None},
        ToolUIPart(
            type="tool-publish",
            tool_call_id="p1",
            state="approval-requested",
            input={"title": "t"},
            approval=ToolApproval(id="p1"),
        ),
        status=RunStatus.waiting_for_approval,
    )
)

RECORDED: list[UIMessageChunk] = [
    StartChunk(message_id="run-editor-1"),
    ToolInputAvailableChunk(tool_call_id="call-w", tool_name="writer", input={"input": "write it"}),
    snapshot(progress(CHILD, "writer")),
    snapshot(progress(CHILD, "writer", TextUIPart(text="Draft"))),
    snapshot(progress(CHILD, "writer", TextUIPart(text="Draft one.\nSecond"))),
    snapshot(
        progress(CHILD, "writer", TextUIPart(text="Draft one.\nSecond line."), notes("input-available"))
    ),
    snapshot(
        progress(
            CHILD,
            "writer",
            TextUIPart(text="Draft one.\nSecond line."),
            notes("output-available", output={"notes": "n"}),
            researching(progress(GRANDCHILD, "researcher", TextUIPart(text="Found it."))),
        )
    ),
    WAITING,
    WAITING,  # the next snapshot: the child still waits, and is asked about once
    ToolOutputAvailableChunk(tool_call_id="call-w", output="The lesson."),
    TextStartChunk(id="t1"),
    TextDeltaChunk(id="t1", delta="Done."),
    TextEndChunk(id="t1"),
]

EXPECTED = """\
→ writer({"input": "write it"})
┌ writer · run-writer-1
│ Draft one.
│ Second line.
│ → take_notes({"topic": "x"})
│ ✓ take_notes: {"notes": "n"}
│ → researcher({"input": "x"})
│ ┌ researcher · run-researcher-1
│ │ Found it.
│ └ researcher: completed
│ ✓ researcher: Found it.
│ → publish({"title": "t"})
│ ? publish({"title": "t"}) waits for approval
└ writer: completed
✓ writer: The lesson.
Done.
"""


def play(chunks: list[UIMessageChunk]) -> tuple[str, AssistantMessage, list[tuple[str, str]]]:
    """The chunks through the client's message and `keel run`'s printer, as `keel run` streams them."""
    screen = io.StringIO()
    out = Out(screen)
    asked: list[tuple[str, str]] = []
    printer = SubRunPrinter(out, lambda child, part: asked.append((child, part["toolCallId"])))
    message = AssistantMessage()

    def applied() -> Any:
        for chunk in chunks:
            message.apply(chunk)
            yield chunk

    _show(applied(), message, out, printer)
    return screen.getvalue(), message, asked


def test_a_sub_agents_progress_prints_as_a_nested_block_with_only_what_is_new() -> None:
    screen, _, asked = play(RECORDED)

    assert screen == EXPECTED
    # The child's approval was handed over once, however many snapshots show it waiting.
    assert asked == [(CHILD, "p1")]


def test_the_client_keeps_a_preliminary_output_and_the_call_stays_unfinished() -> None:
    _, message, _ = play(RECORDED[:5])

    part = message.tools()["call-w"]
    assert part.state == "input-available" and part.output["agentRunId"] == CHILD
    assert part.output["parts"] == [{"type": "text", "text": "Draft one.\nSecond"}]
    # Posted back, it is a call still at work: not a result the gateway would take as the call's output.
    [posted] = message.as_ui_message()["parts"]
    assert posted["state"] == "input-available" and posted["preliminary"] is True

    _, finished, _ = play(RECORDED[:10])
    part = finished.tools()["call-w"]
    assert (part.state, part.output) == ("output-available", "The lesson.")
    assert "preliminary" not in finished.as_ui_message()["parts"][0]


def test_children_running_side_by_side_take_turns_each_turn_named() -> None:
    def of(call: str, run: str, agent: str, text: str) -> ToolOutputAvailableChunk:
        output = progress(run, agent, TextUIPart(text=text))
        return ToolOutputAvailableChunk(tool_call_id=call, output=output, preliminary=True)

    screen, _, _ = play(
        [
            ToolInputAvailableChunk(tool_call_id="w", tool_name="writer", input={}),
            ToolInputAvailableChunk(tool_call_id="r", tool_name="reviewer", input={}),
            of("w", "run-w", "writer", "Once"),
            of("r", "run-r", "reviewer", "Looks"),
            of("w", "run-w", "writer", "Once upon"),
            ToolOutputAvailableChunk(tool_call_id="w", output="A story."),
            of("r", "run-r", "reviewer", "Looks good."),
            ToolOutputAvailableChunk(tool_call_id="r", output="Fine."),
        ]
    )

    assert screen == (
        "→ writer({})\n→ reviewer({})\n"
        "┌ writer · run-w\n│ Once\n┌ reviewer · run-r\n│ Looks\n├ writer\n│  upon\n"
        "└ writer: completed\n✓ writer: A story.\n"
        "├ reviewer\n│  good.\n└ reviewer: completed\n✓ reviewer: Fine.\n"
    )
