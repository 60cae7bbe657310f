"""An agent run, end to end: gateway -> Temporal -> worker -> PostgreSQL -> SSE back to the client."""

import json

import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.worker import Replayer

from activities.models.scripted import DISCLAIMER
from tests.ui_stream import chat, chat_body
from workflows.agent_run import AgentRun

LESSON = "plan and write a lesson on recursion"


def scheduled_activities(history) -> list[str]:
    """Activity types in the order they ran, local activities (markers in history) included."""
    names = []
    for e in history.events:
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            names.append(e.activity_task_scheduled_event_attributes.activity_type.name)
        elif e.marker_recorded_event_attributes.marker_name == "core_local_activity":
            data = e.marker_recorded_event_attributes.details["data"].payloads[0].data
            names.append("local " + json.loads(data)["activity_type"])
    return names


async def test_lesson_run_calls_tools_through_temporal_and_streams_the_answer(
    http: httpx.AsyncClient, temporal: Client
) -> None:
    stream = await chat(http, chat_body(LESSON, purpose="learnpack-lesson-writer"))

    assert stream.tool_names == ["plan_syllabus", "generate_markdown"]
    outputs = [c["output"] for c in stream.of_type("tool-output-available")]
    assert outputs[0]["outline"][0] == "What recursion is and why it matters"
    assert outputs[1]["markdown"].startswith("# Learn recursion\n")
    assert stream.text.startswith(DISCLAIMER)
    assert "## 4. Summary of recursion" in stream.text
    assert stream.of_type("finish")[0]["finishReason"] == "stop"
    assert len(stream.of_type("start-step")) == 3
    assert stream.run_status == "completed"

    run_id = stream.response.headers["x-agent-run-id"]
    assert run_id.startswith("run-")
    state = (await http.get(f"/api/runs/{run_id}")).json()
    assert state["status"] == "completed"
    assert state["step"] == 3
    assert state["purpose"] == "learnpack-lesson-writer"
    assert state["usage"]["prompt_tokens"] > 0 and state["usage"]["completion_tokens"] > 0

    handle = temporal.get_workflow_handle(run_id)
    await handle.result()  # the stream ends with the run; the workflow closes once its last record is written
    description = await handle.describe()
    assert description.workflow_type == "AgentRun"
    assert description.task_queue == "agent-runs"
    assert description.status == WorkflowExecutionStatus.COMPLETED
    history = await handle.fetch_history()
    # The model calls run as local activities, inside the workflow task; its tools are cheap, so they ran
    # inline: local activities too. The last one records the run's outcome in agent_runs (see
    # test_run_records.py), in the workflow task that ends the run.
    assert scheduled_activities(history) == [
        "local call_llm",
        "local run_tool",
        "local call_llm",
        "local run_tool",
        "local call_llm",
        "local record_run",
    ]


async def test_step_limit_ends_the_run_cleanly(http: httpx.AsyncClient, temporal: Client) -> None:
    stream = await chat(http, chat_body(LESSON, purpose="learnpack-lesson-writer", max_steps=1))

    assert stream.tool_names == ["plan_syllabus"]
    # The run ends with a final message saying why, not with an error.
    assert stream.text == "[step_limit] stopped after 1 steps (the step limit) with tool calls still pending"
    assert stream.run_status == "step_limit"
    assert stream.of_type("finish")[0]["finishReason"] == "other"
    assert not stream.of_type("error")
    run_id = stream.response.headers["x-agent-run-id"]
    state = (await http.get(f"/api/runs/{run_id}")).json()
    assert (state["status"], state["step"], state["budgets"]["max_steps"]) == ("step_limit", 1, 1)
    assert "step limit" in state["detail"]
    # Hitting the limit is an outcome, not a crash: the workflow itself completed.
    handle = temporal.get_workflow_handle(run_id)
    await handle.result()
    description = await handle.describe()
    assert description.status == WorkflowExecutionStatus.COMPLETED


async def test_plain_message_gets_one_step_with_text(http: httpx.AsyncClient) -> None:
    stream = await chat(http, chat_body("hello there"))

    assert stream.tool_names == []
    assert len(stream.of_type("start-step")) == 1
    assert stream.text.startswith(DISCLAIMER) and "hello there" in stream.text
    # The scripted model streams in small pieces: deltas of one text part.
    assert len(stream.of_type("text-start")) == len(stream.of_type("text-end")) == 1


async def test_tool_errors_go_back_to_the_model(http: httpx.AsyncClient) -> None:
    stream = await chat(http, chat_body("calculate 7 / 0 please"))

    assert stream.tool_names == ["calculate"]
    error = stream.of_type("tool-output-error")[0]
    assert error["errorText"] == "division by zero"
    assert "calculate failed: division by zero" in stream.text
    assert stream.run_status == "completed"


async def test_calculator(http: httpx.AsyncClient) -> None:
    stream = await chat(http, chat_body("calculate (2 + 3) * 4"))

    assert stream.of_type("tool-input-available")[0]["input"] == {"expression": "(2 + 3) * 4"}
    assert stream.of_type("tool-output-available")[0]["output"]["value"] == 20


async def test_a_heavy_tool_runs_on_the_heavy_workers_queue(
    http: httpx.AsyncClient, temporal: Client
) -> None:
    stream = await chat(http, chat_body("wait 1 second, then tell me"))

    assert stream.of_type("tool-output-available")[0]["output"] == {"waited_seconds": 1.0}
    history = await temporal.get_workflow_handle(stream.response.headers["x-agent-run-id"]).fetch_history()
    tools = [
        e
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == "run_tool"
    ]
    assert len(tools) == 1
    scheduled = tools[0].activity_task_scheduled_event_attributes
    # `wait` is declared heavy: a regular activity on the heavy queue, with a heartbeat to notice a dead worker.
    assert scheduled.task_queue.name == "agent-heavy"
    assert scheduled.heartbeat_timeout.seconds == 10
    # Its id names the result's place in the conversation, so workflow id + activity id is the idempotency key.
    assert scheduled.activity_id.startswith("tool-")


async def test_parallel_inline_tools_take_turns_and_replay(http: httpx.AsyncClient, temporal: Client) -> None:
    stream = await chat(http, chat_body("calculate 6 * 7 and tell me the time in UTC, at the same time"))

    assert sorted(stream.tool_names) == ["calculate", "current_time"]
    assert stream.run_status == "completed"
    handle = temporal.get_workflow_handle(stream.response.headers["x-agent-run-id"])
    await handle.result()
    history = await handle.fetch_history()
    # Both ran inline in one step, one local activity at a time, so a replay resumes them in the same order.
    assert scheduled_activities(history)[:3] == ["local call_llm", "local run_tool", "local run_tool"]
    replayer = Replayer(workflows=[AgentRun], data_converter=temporal.data_converter)
    assert (await replayer.replay_workflow(history, raise_on_replay_failure=False)).replay_failure is None
