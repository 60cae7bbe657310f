"""Record the workflow histories (AgentRun, WebhookDelivery, ScheduledRun) of this checkout's code, for tests/test_replay.py to replay with later code.

    python -m tests.record_histories tests/histories/<version>

A run still in flight when a new worker version deploys is replayed by the new code, so every version's
histories must replay deterministically with the code that follows it (changes go behind
`workflow.patched`). This drives one run per scenario through a real stack — Temporal dev server, embedded
PostgreSQL, the worker and the gateway as `make dev` runs them, payloads unencrypted — and writes each
finished run's history as JSON.
"""

import asyncio
import base64
import json
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from temporalio.client import Client

from keel.settings import Settings
from keel.stack.embedded import EmbeddedPostgres, TemporalDevServer, free_port, stop_process_group
from keel.temporal import connect_temporal
from tests.conftest import _healthy, _spawn, _wait_for, wait_for_status
from tests.ui_stream import chat_body, parse

Scenario = Callable[[httpx.AsyncClient], Awaitable[str]]
SUGGEST_AFTER = 30


async def _start(http: httpx.AsyncClient, text: str, **extra: object) -> tuple[str, list[dict[str, object]]]:
    response = await http.post("/api/chat", json=chat_body(text, **extra))
    response.raise_for_status()
    return response.headers["x-agent-run-id"], parse(response).chunks


async def inline_tool(http: httpx.AsyncClient) -> str:
    run_id, _ = await _start(http, "calculate (2 + 3) * 4 and tell me the time")
    return run_id


async def approved_publish(http: httpx.AsyncClient) -> str:
    run_id, chunks = await _start(
        http, "plan, write and publish a lesson on tail calls", purpose="learnpack-lesson-writer"
    )
    call = next(c["toolCallId"] for c in chunks if c.get("type") == "tool-approval-request")
    (await http.post(f"/api/runs/{run_id}/approvals/{call}", json={"approved": True})).raise_for_status()
    await wait_for_status(http, run_id, "completed", within=30)
    return run_id


async def denied_publish(http: httpx.AsyncClient) -> str:
    run_id, chunks = await _start(
        http, "plan, write and publish a lesson on queues", purpose="learnpack-lesson-writer"
    )
    call = next(c["toolCallId"] for c in chunks if c.get("type") == "tool-approval-request")
    decision = {"approved": False, "reason": "not yet"}
    (await http.post(f"/api/runs/{run_id}/approvals/{call}", json=decision)).raise_for_status()
    await wait_for_status(http, run_id, "completed", within=30)
    return run_id


async def answered_question(http: httpx.AsyncClient) -> str:
    run_id, _ = await _start(http, "ask me which city I mean")
    await wait_for_status(http, run_id, "waiting_for_input", within=30)
    (await http.post(f"/api/runs/{run_id}/answer", json={"text": "Lisbon"})).raise_for_status()
    await wait_for_status(http, run_id, "completed", within=30)
    return run_id


async def cancelled_during_a_tool(http: httpx.AsyncClient) -> str:
    task = asyncio.create_task(_start(http, "wait 5 seconds"))
    for _ in range(200):
        runs = (await http.get("/api/runs", params={"status": "running"})).json()
        if runs:
            break
        await asyncio.sleep(0.05)
    run_id = runs[0]["agent_run_id"]
    await asyncio.sleep(1)
    (await http.post(f"/api/runs/{run_id}/cancel", json={"reason": "changed my mind"})).raise_for_status()
    await task
    await wait_for_status(http, run_id, "cancelled", within=30)
    return run_id


async def continued_as_new(http: httpx.AsyncClient) -> str:
    # Eight steps pass the server's lowered suggestion (see record). Each waits for a heavy tool, so each
    # ends a workflow task and the run hears the suggestion there (a run whose steps are all local hears it
    # only when its worker extends the task, every few seconds).
    run_id, _ = await _start(http, "wait 1 second, 4 times")
    return run_id


async def step_limit(http: httpx.AsyncClient) -> str:
    run_id, _ = await _start(http, "calculate 1 + 1", max_steps=1)
    return run_id


async def _waiting_and_queued(http: httpx.AsyncClient) -> tuple[str, str, str, asyncio.Task[httpx.Response]]:
    """A run waiting for its approval and one queued behind it in the same chat (the gateway enqueues)."""
    body = chat_body("plan, write and publish a lesson on stacks", purpose="learnpack-lesson-writer")
    response = await http.post("/api/chat", json=body)
    response.raise_for_status()
    first = response.headers["x-agent-run-id"]
    call = next(str(c["toolCallId"]) for c in parse(response).of_type("tool-approval-request"))
    follow_up = chat_body("calculate 2 + 2", body["id"])
    follow_up["messages"][0]["id"] = "m2"
    queued = asyncio.create_task(http.post("/api/chat", json=follow_up))
    for _ in range(200):
        runs = (await http.get("/api/runs", params={"chat_id": body["id"]})).json()
        if len(runs) == 2:
            return first, call, runs[0]["agent_run_id"], queued
        await asyncio.sleep(0.05)
    raise AssertionError("the second run was never queued")


async def cancelled_while_queued(http: httpx.AsyncClient) -> str:
    first, call, second, queued = await _waiting_and_queued(http)
    (await http.post(f"/api/runs/{second}/cancel", json={"reason": "not this one"})).raise_for_status()
    await queued
    (await http.post(f"/api/runs/{first}/approvals/{call}", json={"approved": False})).raise_for_status()
    return second


async def released_its_queue(http: httpx.AsyncClient) -> str:
    first, call, _, queued = await _waiting_and_queued(http)
    (await http.post(f"/api/runs/{first}/approvals/{call}", json={"approved": False})).raise_for_status()
    await queued
    return first


async def structured_output(http: httpx.AsyncClient) -> str:
    run_id, _ = await _start(http, "Please track order 1234.", purpose="tracker")
    return run_id


async def own_stop_when(http: httpx.AsyncClient) -> str:
    run_id, _ = await _start(http, "where is order A-17", purpose="shop-tracker")
    return run_id


async def sub_agent(http: httpx.AsyncClient) -> str:
    run_id, _ = await _start(http, "write a lesson on fractions", purpose="editor")
    return run_id


async def sub_agent_approved_through_its_parent(http: httpx.AsyncClient) -> str:
    """The publisher's run waits for an approval; it is given through the editor's run."""
    run_id = ""
    async with http.stream(
        "POST", "/api/chat", json=chat_body("release the lesson on fractions", purpose="editor")
    ) as response:
        run_id = response.headers["x-agent-run-id"]
        async for line in response.aiter_lines():
            chunk = json.loads(line[6:]) if line.startswith("data: {") else {}
            output = chunk.get("output") if chunk.get("preliminary") else None
            asking = [p for p in (output or {}).get("parts", []) if p.get("state") == "approval-requested"]
            if asking:
                call = asking[0]["toolCallId"]
                decided = await http.post(f"/api/runs/{run_id}/approvals/{call}", json={"approved": True})
                decided.raise_for_status()
    await wait_for_status(http, run_id, "completed", within=30)
    return run_id


async def webhooks(http: httpx.AsyncClient) -> str:
    """A server's run with its own webhook endpoint (the receiver this recorder runs): the run starts
    WebhookDelivery child workflows, recorded too (see `_record_other_workflows`)."""
    body = {
        "purpose": "assistant",
        "messages": [{"id": "m1", "role": "user", "parts": [{"type": "text", "text": "calculate 2 + 2"}]}],
        "metadata": {"recorded": True},
        "webhook_url": f"http://127.0.0.1:{RECEIVER_PORT}/hooks",
    }
    started = await http.post("/api/runs", json=body, headers={"idempotency-key": "recorded-webhooks"})
    started.raise_for_status()
    run_id: str = started.json()["agent_run_id"]
    await wait_for_status(http, run_id, "completed", within=30)
    return run_id


async def scheduled(http: httpx.AsyncClient) -> str:
    """A schedule's firing, triggered now: the ScheduledRun workflow, whose child is an ordinary run."""
    body = {
        "schedule_id": "recorded",
        "purpose": "assistant",
        "message": "what time is it",
        "interval_seconds": 3600,
    }
    (await http.post("/api/schedules", json=body)).raise_for_status()
    (await http.post("/api/schedules/recorded/pause")).raise_for_status()
    return "schedule:recorded"


async def handoff(http: httpx.AsyncClient) -> str:
    run_id, _ = await _start(http, "transfer to billing and find invoice 42", purpose="triage")
    return run_id


SCENARIOS: dict[str, Scenario] = {
    "inline-tool": inline_tool,
    "approved-publish": approved_publish,
    "denied-publish": denied_publish,
    "answered-question": answered_question,
    "cancelled-during-a-tool": cancelled_during_a_tool,
    "step-limit": step_limit,
    "continued-as-new": continued_as_new,
    "cancelled-while-queued": cancelled_while_queued,
    "released-its-queue": released_its_queue,
    "structured-output": structured_output,
    "own-stop-when": own_stop_when,
    "sub-agent": sub_agent,
    "sub-agent-approved-through-its-parent": sub_agent_approved_through_its_parent,
    "handoff": handoff,
    "webhooks": webhooks,
    "scheduled-run": scheduled,
}
# The webhook receiver this recorder runs while it records (it answers 200 to anything).
RECEIVER_PORT = free_port()
# The other workflows Keel runs, recorded after the scenarios: every finished one, by type.
OTHER_WORKFLOWS = ("WebhookDelivery", "ScheduledRun")


def record(out: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="keel-record-"))
    # Continue-as-new is suggested after 50 history events instead of thousands, so the longer scenarios
    # record it too.
    temporal = TemporalDevServer.start(
        extra_args=["--dynamic-config-value", f"limit.historyCount.suggestContinueAsNew={SUGGEST_AFTER}"]
    )
    postgres = EmbeddedPostgres.start(work / "pg")
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KEEL_")},
        "TEMPORAL_ADDRESS": temporal.address,
        "DATABASE_URL": postgres.uri,
        "KEEL_DATA_DIR": str(work / "data"),
        "KEEL_PORT": str(port),
        "KEEL_MODEL": "scripted",
        "KEEL_APP": "tests.apps.recorded:AGENTS",
        "KEEL_WORKER_METRICS_PORT": "0",
        # A second message on a busy chat queues, for the queue scenarios; the others use a chat each.
        "KEEL_DOUBLE_TEXTING": "enqueue",
        # Webhooks to the recorder's own receiver on 127.0.0.1.
        "KEEL_WEBHOOK_SECRET": "whsec_" + base64.b64encode(os.urandom(32)).decode(),
        "KEEL_WEBHOOK_ALLOW_PRIVATE": "true",
    }
    processes = [
        _spawn([sys.executable, "worker.py"], env, work / "worker.log"),
        _spawn([sys.executable, "worker.py", "--queue", "heavy"], env, work / "heavy.log"),
        _spawn([sys.executable, "-m", "api"], env, work / "gateway.log"),
    ]
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for("the gateway", lambda: _healthy(url), processes[-1], work / "gateway.log")
        asyncio.run(_record_scenarios(url, temporal.address, out))
    finally:
        for proc in processes:
            stop_process_group(proc)
        postgres.stop()
        temporal.stop()


async def _record_scenarios(url: str, temporal_address: str, out: Path) -> None:
    client = await connect_temporal(Settings(TEMPORAL_ADDRESS=temporal_address))
    out.mkdir(parents=True, exist_ok=True)
    receiver = await asyncio.start_server(_answer_ok, "127.0.0.1", RECEIVER_PORT)
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        for name, scenario in SCENARIOS.items():
            run_id = await scenario(http)
            if run_id.startswith("schedule:"):
                await client.get_schedule_handle(run_id.removeprefix("schedule:")).trigger()
                continue  # its firing is recorded with the other workflows
            await client.get_workflow_handle(run_id).result()  # only finished runs are recorded
            # Every Temporal run of the agent run, oldest first: more than one if it continued as new. Found
            # by following each run back to the one it continued (visibility may not list them all yet).
            histories = [await client.get_workflow_handle(run_id).fetch_history()]
            while (
                previous := histories[0]
                .events[0]
                .workflow_execution_started_event_attributes.continued_execution_run_id
            ):
                histories.insert(0, await client.get_workflow_handle(run_id, run_id=previous).fetch_history())
            for number, history in enumerate(histories, start=1):
                suffix = f"-{number}" if len(histories) > 1 else ""
                (out / f"{name}{suffix}.json").write_text(history.to_json())
            print(f"{name}: {run_id}, {len(histories)} Temporal run(s)")
    await _record_other_workflows(client, out)
    receiver.close()


async def _record_other_workflows(client: Client, out: Path) -> None:
    """Every WebhookDelivery and ScheduledRun, once finished: what the scenarios started besides runs."""
    for workflow_type in OTHER_WORKFLOWS:
        query = f'WorkflowType = "{workflow_type}"'
        for _ in range(300):  # visibility lags a little behind the starts
            if [e async for e in client.list_workflows(query)]:
                break
            await asyncio.sleep(0.1)
        executions = sorted([e async for e in client.list_workflows(query)], key=lambda e: e.start_time)
        for number, execution in enumerate(executions, start=1):
            handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
            await handle.result()
            (out / f"{workflow_type}-{number}.json").write_text((await handle.fetch_history()).to_json())
        print(f"{workflow_type}: {len(executions)} workflow(s)")


async def _answer_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    length = next(
        (
            int(v)
            for k, _, v in (h.partition(":") for h in head.split("\r\n"))
            if k.lower() == "content-length"
        ),
        0,
    )
    await reader.readexactly(length)
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
    await writer.drain()
    writer.close()


if __name__ == "__main__":
    record(Path(sys.argv[1]))
