"""People stay in charge: approvals, questions, client-side tools, cancellation and budgets, each through the
real Temporal server (and the real `temporal` CLI where a person would use it)."""

import asyncio
import json
import subprocess
from typing import Any

import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus

from keel.stack.embedded import TemporalDevServer, find_temporal_bin
from tests.conftest import Keel, wait_for_status
from tests.ui_stream import UIStream, assistant_message, chat, chat_body, parse_text, user_message

PUBLISH = "plan, write and publish a lesson on tail calls"
# Runs made here, replayed at the end of the module to prove the workflow is deterministic.
RECORDED: list[str] = []


def run_id(stream: UIStream) -> str:
    RECORDED.append(stream.response.headers["x-agent-run-id"])
    return stream.response.headers["x-agent-run-id"]


def call_id(stream: UIStream, tool: str) -> str:
    return next(c["toolCallId"] for c in stream.of_type("tool-input-available") if c["toolName"] == tool)


def resubmission(first: dict[str, Any], *streams: UIStream, **answers: Any) -> dict[str, Any]:
    """What useChat POSTs after addToolApprovalResponse / addToolResult: the history plus the answered message."""
    return {"id": first["id"], "messages": [*first["messages"], assistant_message(*streams, **answers)]}


def temporal_cli(server: TemporalDevServer, *args: str) -> str:
    result = subprocess.run(
        [str(find_temporal_bin()), *args, "--address", server.address, "--output", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


async def test_publishing_waits_for_approval_and_the_resubmission_resumes_the_same_run(
    http: httpx.AsyncClient, keel: Keel
) -> None:
    body = chat_body(PUBLISH, purpose="learnpack-lesson-writer")
    first = await chat(http, body)

    publish = call_id(first, "publish_package")
    assert first.tool_names == ["plan_syllabus", "generate_markdown", "publish_package"]
    assert first.of_type("tool-approval-request") == [
        {"type": "tool-approval-request", "approvalId": publish, "toolCallId": publish}
    ]
    assert first.of_type("finish") == [{"type": "finish", "finishReason": "tool-calls"}]
    assert first.run_status == "waiting_for_approval"
    folder = keel.data_dir / "packages" / "learn-tail-calls"
    assert not folder.exists()
    state = (await http.get(f"/api/runs/{run_id(first)}")).json()
    assert state["status"] == "waiting_for_approval"
    pending = state["pending_approvals"][0]
    assert (pending["tool_call_id"], pending["tool_name"]) == (publish, "publish_package")
    assert len(pending["arguments_sha256"]) == 64

    second = await chat(http, resubmission(body, first, approvals={publish: True}))

    assert run_id(second) == run_id(first), "the resubmission continues the waiting run"
    kinds = [c["type"] for c in second.chunks]
    assert kinds.index("tool-output-available") < kinds.index("start-step")
    assert second.of_type("tool-output-available")[0]["output"]["slug"] == "learn-tail-calls"
    assert "publish_package returned" in second.text and second.run_status == "completed"
    assert (folder / "README.md").read_text().startswith("# Learn tail calls")
    record = (await http.get(f"/api/runs/{run_id(first)}")).json()["approvals"][0]
    assert (record["approved"], record["approver"], record["expired"]) == (True, "chat", False)
    assert record["decided_at"] >= record["requested_at"]


async def test_a_denied_call_does_not_run_and_the_model_is_told(http: httpx.AsyncClient, keel: Keel) -> None:
    body = chat_body("plan, write and publish a lesson on denial", purpose="learnpack-lesson-writer")
    first = await chat(http, body)
    agent_run_id, publish = run_id(first), call_id(first, "publish_package")

    unknown = await http.post(f"/api/runs/{agent_run_id}/approvals/call_99", json={"approved": True})
    assert unknown.status_code == 404 and "no approval was requested" in unknown.text
    url = f"/api/runs/{agent_run_id}/approvals/{publish}"
    decided = await http.post(url, json={"approved": False, "reason": "not today"})
    assert decided.status_code == 200, decided.text
    assert (decided.json()["approved"], decided.json()["reason"]) == (False, "not today")
    # A second decision: the call is decided, and by now the run has gone on to finish.
    again = await http.post(url, json={"approved": True})
    assert again.status_code == 409

    rest = await chat(http, resubmission(body, first, approvals={publish: False}))

    assert rest.of_type("tool-output-denied") == [{"type": "tool-output-denied", "toolCallId": publish}]
    assert "publish_package failed: publish_package did not run: denied by api: not today" in rest.text
    assert not (keel.data_dir / "packages" / "learn-denial").exists()


async def test_an_approval_signal_from_the_temporal_cli(
    http: httpx.AsyncClient, temporal_server: TemporalDevServer, keel: Keel
) -> None:
    first = await chat(
        http, chat_body("plan, write and publish a lesson on signals", purpose="learnpack-lesson-writer")
    )
    agent_run_id, publish = run_id(first), call_id(first, "publish_package")

    decision = {"tool_call_id": publish, "approved": True, "reason": "ok from the CLI", "approver": "ops"}
    temporal_cli(
        temporal_server,
        "workflow",
        "signal",
        "--workflow-id",
        agent_run_id,
        "--name",
        "approval",
        "--input",
        json.dumps(decision),
    )

    # The signal above was plain JSON although payloads are encrypted; reading the (sealed) answer back
    # takes the gateway's codec endpoint, as an operator would use it.
    await wait_for_status(http, agent_run_id, "completed")
    output = temporal_cli(
        temporal_server,
        "workflow",
        "query",
        "--workflow-id",
        agent_run_id,
        "--name",
        "state",
        "--codec-endpoint",
        f"{keel.gateway_url}/codec",
    )
    state = json.loads(output)["queryResult"][0]
    assert state["status"] == "completed"
    assert state["approvals"][0]["approver"] == "ops" and state["approvals"][0]["reason"] == "ok from the CLI"


async def test_the_agent_asks_and_the_user_answers(http: httpx.AsyncClient) -> None:
    body = chat_body("ask me what my favourite colour is")
    first = await chat(http, body)
    agent_run_id, ask = run_id(first), call_id(first, "ask_user")
    assert first.run_status == "waiting_for_input"
    state = (await http.get(f"/api/runs/{agent_run_id}")).json()
    assert state["pending_question"]["tool_call_id"] == ask

    answered = await http.post(f"/api/runs/{agent_run_id}/answer", json={"text": "blue"})
    assert answered.status_code == 200, answered.text
    assert (await http.post(f"/api/runs/{agent_run_id}/answer", json={"text": "red"})).status_code == 409

    rest = await chat(http, resubmission(body, first, outputs={ask: "blue"}))
    assert rest.of_type("tool-output-available")[0] == {
        "type": "tool-output-available",
        "toolCallId": ask,
        "output": "blue",
    }
    assert "ask_user returned: blue" in rest.text and rest.run_status == "completed"


async def test_a_purpose_that_cannot_wait_ends_as_needs_input(http: httpx.AsyncClient) -> None:
    stream = await chat(http, chat_body("ask me which lesson to write", purpose="learnpack-lesson-writer"))

    assert stream.tool_names == ["ask_user"]
    assert stream.run_status == "needs_input"
    assert stream.text.startswith("[needs_input] the agent needs your input:")


async def test_a_client_side_tool_result_comes_back_through_the_resubmission(http: httpx.AsyncClient) -> None:
    tool = {
        "name": "get_location",
        "description": "The user's city, from the browser",
        "inputSchema": {"type": "object", "properties": {}},
        "outputSchema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
    body = chat_body("use get_location to find me", tools=[tool])
    first = await chat(http, body)
    agent_run_id, located = run_id(first), call_id(first, "get_location")
    assert first.run_status == "waiting_for_tool_result"
    assert (await http.get(f"/api/runs/{agent_run_id}")).json()["pending_tool_results"][0][
        "tool_name"
    ] == "get_location"

    rest = await chat(http, resubmission(body, first, outputs={located: {"city": "Lisbon"}}))

    assert rest.of_type("tool-output-available")[0]["output"] == {"city": "Lisbon"}
    assert 'get_location returned: {"city": "Lisbon"}' in rest.text


async def test_a_client_tool_whose_schema_takes_anything_for_a_property_is_called(
    http: httpx.AsyncClient,
) -> None:
    # `true` is a valid JSON Schema (anything goes); the offline model used to crash on it.
    tool = {"name": "get_location", "inputSchema": {"type": "object", "properties": {"near": True}}}

    first = await chat(http, chat_body("use get_location to find me", tools=[tool]))

    assert first.tool_names == ["get_location"] and first.run_status == "waiting_for_tool_result"


async def test_a_client_tool_result_that_breaks_its_schema_is_an_error_for_the_model(
    http: httpx.AsyncClient,
) -> None:
    tool = {"name": "get_location", "outputSchema": {"type": "object", "required": ["city"]}}
    first = await chat(http, chat_body("use get_location to find me", tools=[tool]))
    agent_run_id, located = run_id(first), call_id(first, "get_location")

    sent = await http.post(
        f"/api/runs/{agent_run_id}/tool-results/{located}", json={"output": {"town": "Porto"}}
    )
    assert sent.status_code == 200, sent.text
    assert (
        await http.post(f"/api/runs/{agent_run_id}/tool-results/{located}", json={"output": {}})
    ).status_code == 409

    state = await wait_for_status(http, agent_run_id, "completed")
    assert state["step"] == 2


async def test_cancel_stops_a_running_tool_and_keeps_what_was_done(
    http: httpx.AsyncClient, temporal: Client
) -> None:
    body = chat_body("wait 8 seconds please")
    streaming = asyncio.create_task(http.post("/api/chat", json=body))
    agent_run_id = await _started_run(http, body["id"])
    await _until_activity_started(temporal, agent_run_id, "run_tool")

    cancelled = await http.post(f"/api/runs/{agent_run_id}/cancel", json={"reason": "changed my mind"})
    assert cancelled.status_code == 202, cancelled.text
    response = await asyncio.wait_for(streaming, timeout=6)  # well before the 8 s wait would end

    assert '"status":"cancelled"' in response.text
    assert "[cancelled] cancelled: changed my mind" in response.text
    state = (await http.get(f"/api/runs/{agent_run_id}")).json()
    assert (state["status"], state["detail"]) == ("cancelled", "cancelled: changed my mind")
    history = await temporal.get_workflow_handle(agent_run_id).fetch_history()
    assert any(e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED for e in history.events)
    assert (await http.post(f"/api/runs/{agent_run_id}/cancel", json={})).status_code == 409
    RECORDED.append(agent_run_id)


async def test_cancel_during_an_llm_call_keeps_the_text_written_so_far(gateways: dict[str, str]) -> None:
    async with httpx.AsyncClient(base_url=gateways["slow"], timeout=30) as http:
        body = chat_body("hello there, tell me everything")  # scripted:slow writes ~5 chunks a second
        lines: list[str] = []
        cancelled: httpx.Response | None = None
        async with http.stream("POST", "/api/chat", json=body) as response:
            agent_run_id = response.headers["x-agent-run-id"]
            async for line in response.aiter_lines():
                lines.append(line)
                if '"type":"text-delta"' in line and cancelled is None:  # the model is answering: cancel it
                    cancelled = await http.post(f"/api/runs/{agent_run_id}/cancel", json={})
                    assert cancelled.status_code == 202, cancelled.text

    text = parse_text("\n".join(lines), response).text
    partial = text.split("[cancelled]")[0]
    assert partial.startswith("[scripted offline model")  # the reply's beginning was kept and shown
    assert len(partial) < 150  # and it was cut short: the whole reply is far longer
    assert text.endswith("[cancelled] cancelled")
    # The gateway's interrupt stops the call at once (tests/test_interrupts.py); should it be lost, the run
    # takes the cancel signal when the worker next extends its workflow task, and cancels the call then.
    RECORDED.append(agent_run_id)


async def test_temporal_cancellation_from_the_cli_ends_the_run_as_cancelled(
    http: httpx.AsyncClient, temporal: Client, temporal_server: TemporalDevServer
) -> None:
    body = chat_body("wait 8 seconds please")
    streaming = asyncio.create_task(http.post("/api/chat", json=body))
    agent_run_id = await _started_run(http, body["id"])
    await _until_activity_started(temporal, agent_run_id, "run_tool")

    temporal_cli(temporal_server, "workflow", "cancel", "--workflow-id", agent_run_id)
    response = await asyncio.wait_for(streaming, timeout=6)

    assert '"status":"cancelled"' in response.text
    # The stream ends with the run; the workflow closes once the run's last record is written, just after.
    for _ in range(100):
        description = await temporal.get_workflow_handle(agent_run_id).describe()
        if description.status != WorkflowExecutionStatus.RUNNING:
            break
        await asyncio.sleep(0.05)
    assert description.status == WorkflowExecutionStatus.CANCELED
    RECORDED.append(agent_run_id)


async def test_the_time_budget_ends_a_run_gracefully(http: httpx.AsyncClient) -> None:
    stream = await chat(http, chat_body("wait 8 seconds please", budgets={"max_duration_s": 1}))

    assert stream.run_status == "budget_exceeded"
    assert stream.text == "[budget_exceeded] the time budget of 1 s is used up"
    assert not stream.of_type("error")
    run_id(stream)


async def test_the_token_budget_ends_a_run_gracefully(http: httpx.AsyncClient) -> None:
    stream = await chat(
        http, chat_body(PUBLISH, purpose="learnpack-lesson-writer", budgets={"max_tokens": 40})
    )

    assert stream.tool_names == ["plan_syllabus"]
    assert stream.run_status == "budget_exceeded"
    assert "the token budget is used up" in stream.text
    state = (await http.get(f"/api/runs/{run_id(stream)}")).json()
    assert state["budgets_left"]["tokens"] == 0


async def test_stop_when_a_tool_was_called(http: httpx.AsyncClient) -> None:
    stream = await chat(
        http,
        chat_body(PUBLISH, purpose="learnpack-lesson-writer", stop_after_tool_calls={"plan_syllabus": 1}),
    )

    assert stream.tool_names == ["plan_syllabus"]
    assert stream.run_status == "completed"
    assert (
        stream.of_type("data-run")[-1]["data"]["detail"] == "stopped after plan_syllabus was called 1 time(s)"
    )
    run_id(stream)


async def test_double_texting_is_rejected_while_a_run_waits(http: httpx.AsyncClient) -> None:
    body = chat_body(PUBLISH, purpose="learnpack-lesson-writer")
    first = await chat(http, body)

    again = await http.post(
        "/api/chat", json={**body, "messages": [*body["messages"], user_message("hello?", "m2")]}
    )

    assert again.status_code == 409
    assert f"already has an active run {run_id(first)}" in again.text


async def test_regenerating_the_answer_of_a_waiting_run_replaces_that_run(http: httpx.AsyncClient) -> None:
    body = chat_body(PUBLISH, purpose="learnpack-lesson-writer")
    first = await chat(http, body)
    replaced = run_id(first)

    # useChat's regenerate(): the history up to the user message, naming the answer it replaces.
    again = await chat(http, {**body, "trigger": "regenerate-message", "messageId": replaced})

    assert run_id(again) != replaced and again.run_status == "waiting_for_approval"
    state = (await http.get(f"/api/runs/{replaced}")).json()
    assert (state["status"], state["detail"]) == (
        "cancelled",
        "cancelled: replaced: the user asked for a new answer",
    )


async def test_regenerate_needs_the_history_up_to_a_user_message(http: httpx.AsyncClient) -> None:
    body = chat_body(PUBLISH, purpose="learnpack-lesson-writer")
    first = await chat(http, body)
    with_the_answer = [*body["messages"], assistant_message(first)]

    refused = await http.post(
        "/api/chat",
        json={
            **body,
            "messages": with_the_answer,
            "trigger": "regenerate-message",
            "messageId": run_id(first),
        },
    )

    assert refused.status_code == 400
    assert "regenerate-message needs the history up to the user message" in refused.json()["detail"]
    assert (await http.get(f"/api/runs/{run_id(first)}")).json()["status"] == "waiting_for_approval"


async def test_a_run_terminated_through_temporal_reads_as_failed_and_frees_its_chat(
    http: httpx.AsyncClient, temporal: Client
) -> None:
    body = chat_body(PUBLISH, purpose="learnpack-lesson-writer")
    first = await chat(http, body)
    terminated = first.response.headers["x-agent-run-id"]

    # An operator terminates it (Web UI, `temporal workflow terminate`): its loop never says it ended.
    await temporal.get_workflow_handle(terminated).terminate(reason="stuck")

    state = (await http.get(f"/api/runs/{terminated}")).json()
    assert state["status"] == "failed" and state["pending_approvals"] == []
    assert state["detail"] == "the workflow ended as terminated outside the agent loop"
    assert (await http.post(f"/api/runs/{terminated}/cancel", json={})).status_code == 409
    nothing_to_resume = await http.get(f"/api/chat/{body['id']}/stream")
    assert nothing_to_resume.status_code == 204
    again = await chat(http, {**body, "messages": [*body["messages"], user_message("once more", "m2")]})
    assert run_id(again) != terminated


async def test_double_texting_can_interrupt_the_active_run(gateways: dict[str, str]) -> None:
    async with httpx.AsyncClient(base_url=gateways["interrupt"], timeout=30) as http:
        body = chat_body(PUBLISH, purpose="learnpack-lesson-writer")
        first = await chat(http, body)

        second = await chat(
            http, {**body, "messages": [*body["messages"], user_message("plan a lesson on queues", "m2")]}
        )

        assert (await http.get(f"/api/runs/{run_id(first)}")).json()[
            "detail"
        ] == "cancelled: interrupted by a new message"
        assert run_id(second) != run_id(first)
        assert (
            second.tool_names == ["plan_syllabus", "generate_markdown"] and second.run_status == "completed"
        )


async def test_double_texting_can_queue_the_new_message(gateways: dict[str, str]) -> None:
    async with httpx.AsyncClient(base_url=gateways["enqueue"], timeout=30) as http:
        body = chat_body(PUBLISH, purpose="learnpack-lesson-writer")
        first = await chat(http, body)
        publish = call_id(first, "publish_package")
        follow_up = {
            **body,
            "messages": [*body["messages"], user_message("now plan a lesson on queues", "m2")],
        }
        queued = asyncio.create_task(http.post("/api/chat", json=follow_up))
        queued_id = await _started_run(http, body["id"], not_in={run_id(first)})
        assert (await http.get(f"/api/runs/{queued_id}")).json()["detail"] == f"queued behind {run_id(first)}"

        # The first run finishes (approved), then the queued one runs.
        decided = await http.post(f"/api/runs/{run_id(first)}/approvals/{publish}", json={"approved": True})
        assert decided.status_code == 200
        response = await asyncio.wait_for(queued, timeout=20)
        assert response.headers["x-agent-run-id"] == queued_id
        assert '"status":"completed"' in response.text and '"toolName":"plan_syllabus"' in response.text
        RECORDED.append(queued_id)


async def test_recorded_histories_replay_deterministically(temporal: Client) -> None:
    from temporalio.worker import Replayer

    from workflows.agent_run import AgentRun

    assert len(RECORDED) >= 8
    replayer = Replayer(workflows=[AgentRun], data_converter=temporal.data_converter)
    for agent_run_id in dict.fromkeys(RECORDED):
        history = await temporal.get_workflow_handle(agent_run_id).fetch_history()
        result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        assert result.replay_failure is None, (agent_run_id, result.replay_failure)


async def _started_run(http: httpx.AsyncClient, chat_id: str, not_in: set[str] = frozenset()) -> str:
    """The run a chat request started, found the way an operator would: by chat id in the database."""
    for _ in range(100):
        response = await http.get("/api/runs", params={"chat_id": chat_id})
        runs = [r["agent_run_id"] for r in response.json()] if response.status_code == 200 else []
        if fresh := [r for r in runs if r not in not_in]:
            return fresh[0]
        await asyncio.sleep(0.05)
    raise AssertionError("the run did not start")


async def _until_activity_started(temporal: Client, agent_run_id: str, activity: str) -> None:
    for _ in range(200):
        description = await temporal.get_workflow_handle(agent_run_id).describe()
        pending = description.raw_description.pending_activities
        if any(p.activity_type.name == activity and p.last_started_time.seconds for p in pending):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{activity} never started in {agent_run_id}")
