"""A long run stays far inside Temporal's history limits: 300 steps over a 2 MB conversation continue as new
when the server suggests it, carrying their state, and the run keeps its id, its events and its stream.

This module runs its own Temporal dev server, whose dynamic config suggests continue-as-new after a few
hundred history events instead of thousands, and its own worker and gateway on that server.
"""

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.worker import Replayer

from keel.contracts import Budgets, Message, RunEvent, RunState
from keel.run_start import run_input, start_run
from keel.settings import Settings
from keel.stack.embedded import EmbeddedPostgres, TemporalDevServer, free_port, stop_process_group
from keel.storage.store import RunStore
from keel.temporal import connect_temporal
from tests.conftest import Keel, _healthy, _spawn, _wait_for
from tests.long_run_app import chapter_writer, front_desk
from tests.ui_stream import parse
from workflows.agent_run import AgentRun

SUGGEST_AFTER_EVENTS = 400
STEPS = 300


@dataclass(frozen=True)
class LongRunStack:
    temporal_address: str
    gateway_url: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def long_run_stack(
    postgres: EmbeddedPostgres, keel: Keel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LongRunStack]:
    base = tmp_path_factory.mktemp("long-runs")
    server = TemporalDevServer.start(
        extra_args=[
            "--dynamic-config-value",
            f"limit.historyCount.suggestContinueAsNew={SUGGEST_AFTER_EVENTS}",
        ]
    )
    port = free_port()
    env = {
        **keel.env,
        "TEMPORAL_ADDRESS": server.address,
        "DATABASE_URL": postgres.uri,
        "KEEL_DATA_DIR": str(base / "data"),
        "KEEL_PORT": str(port),
        "KEEL_TASK_QUEUE": "agent-runs-long",
        "KEEL_HEAVY_TASK_QUEUE": "agent-heavy-long",
        "KEEL_HEAVY_WORKER_METRICS_PORT": str(free_port()),
        "KEEL_WORKER_METRICS_PORT": str(free_port()),
        "KEEL_APP": "tests.long_run_app",
    }
    worker_log, heavy_log, gateway_log = base / "worker.log", base / "heavy-worker.log", base / "gateway.log"
    worker = _spawn([sys.executable, "worker.py"], env, worker_log)
    heavy = _spawn([sys.executable, "worker.py", "--queue", "heavy"], env, heavy_log)
    gateway = _spawn([sys.executable, "-m", "api"], env, gateway_log)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for("worker", lambda: b"worker polling" in worker_log.read_bytes(), worker, worker_log)
        _wait_for("heavy worker", lambda: b"worker polling" in heavy_log.read_bytes(), heavy, heavy_log)
        _wait_for("gateway", lambda: _healthy(url), gateway, gateway_log)
        yield LongRunStack(temporal_address=server.address, gateway_url=url, env=env)
    finally:
        stop_process_group(gateway)
        stop_process_group(heavy)
        stop_process_group(worker)
        server.stop()


async def test_a_300_step_run_over_2_mb_continues_as_new_and_completes(
    long_run_stack: LongRunStack, store: RunStore, tmp_path: Path
) -> None:
    temporal = await connect_temporal(
        Settings(**{k: v for k, v in long_run_stack.env.items() if k.isupper()})
    )
    purpose = chapter_writer.spec("scripted", Budgets(max_steps=STEPS + 5))
    messages = [Message(role="user", content=f"write chapter 1, {STEPS} times")]
    run = run_input(purpose, messages, heavy_task_queue=long_run_stack.env["KEEL_HEAVY_TASK_QUEUE"])
    run_id = run.agent_run_id
    await store.put_messages(run_id, 0, messages)
    await start_run(temporal, run, "agent-runs-long")

    # A client watching the whole run through the gateway: its stream follows the run across new histories.
    async with httpx.AsyncClient(base_url=long_run_stack.gateway_url, timeout=120) as http:
        stream = parse(await http.get(f"/api/runs/{run_id}/events"))
    assert len(stream.of_type("start-step")) == STEPS + 1
    assert len(stream.of_type("tool-output-available")) == STEPS
    assert stream.of_type("finish")[-1]["finishReason"] == "stop"
    assert f"I ran {STEPS} tool call(s)" in stream.text

    handle = temporal.get_workflow_handle(run_id)
    state = await handle.query("state", result_type=RunState)
    assert (state.status, state.step) == ("completed", STEPS + 1)
    # The events survived every continue-as-new: numbered from 1, none missing.
    events = await handle.query("events", 0, result_type=list[RunEvent])
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert sum(e.type == "tool_result" for e in events) == STEPS

    conversation = await store.conversation(run_id, 10_000)
    assert sum(len(m.content) for m in conversation if m.role == "tool") >= 2_000_000

    # Several Temporal runs under one workflow id, each history short and small.
    runs = [r async for r in temporal.list_workflows(f'WorkflowId = "{run_id}"')]
    replayer = Replayer(workflows=[AgentRun], data_converter=temporal.data_converter)
    assert len(runs) >= 3
    for execution in runs:
        history = await temporal.get_workflow_handle(run_id, run_id=execution.run_id).fetch_history()
        assert len(history.events) < SUGGEST_AFTER_EVENTS + 50
        assert sum(e.ByteSize() for e in history.events) < 400_000
        ended = history.events[-1].event_type
        assert ended in (
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW,
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
        )
        # Each of them replays deterministically, the ones that start from carried state included.
        replayed = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        if replayed.replay_failure is not None:
            kept = tmp_path / f"{execution.run_id}.json"
            kept.write_text(history.to_json())
            raise AssertionError(f"{replayed.replay_failure} (history in {kept})")


async def test_a_run_handed_over_keeps_its_new_agent_across_continue_as_new(
    long_run_stack: LongRunStack, store: RunStore
) -> None:
    temporal = await connect_temporal(
        Settings(**{k: v for k, v in long_run_stack.env.items() if k.isupper()})
    )
    # The front desk allows 5 steps; the chapter writer it hands over to, 1000: the run only gets through
    # 120 chapters, over several Temporal runs, if the writer's snapshot and limits are carried over.
    agents = {a.name: a for a in (front_desk, chapter_writer)}
    purpose = front_desk.spec("scripted", agents=agents)
    messages = [Message(role="user", content="transfer to chapter-writer and write chapter 2, 120 times")]
    run = run_input(purpose, messages, heavy_task_queue=long_run_stack.env["KEEL_HEAVY_TASK_QUEUE"])
    await store.put_messages(run.agent_run_id, 0, messages)
    await start_run(temporal, run, "agent-runs-long")

    handle = temporal.get_workflow_handle(run.agent_run_id, result_type=RunState)
    state = await handle.result()
    assert (state.status, state.purpose, state.step) == ("completed", "chapter-writer", 122)
    events = await handle.query("events", 0, result_type=list[RunEvent])
    assert [e.type for e in events].count("handed_off") == 1
    assert sum(e.type == "tool_result" for e in events) == 121  # the handoff's result, then 120 chapters
    assert len([r async for r in temporal.list_workflows(f'WorkflowId = "{run.agent_run_id}"')]) >= 2
