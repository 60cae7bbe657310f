"""The gateway's cancel reaches a streaming model call out of band (keel/storage/interrupts.py).

The activity runs here, in this process, with Temporal's ActivityEnvironment: no heartbeat carries any
cancel to it, so only the notification can stop it. The whole path through the gateway, the workflow and
the stream is tests/test_human_in_the_loop.py's cancel during an LLM call.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Worker

from activities.agent_activities import AgentActivities
from activities.records import RecordActivities
from keel.app import load_app
from keel.contracts import CALL_LLM, LlmStepInput, LlmStepResult, Message, Usage
from keel.run_start import run_input, start_run
from keel.stack.embedded import EmbeddedPostgres
from keel.storage.deltas import PostgresDeltaChannel
from keel.storage.interrupts import InterruptListener, interrupt
from keel.storage.store import RunStore
from tests.time_skipping import time_skipping
from workflows.agent_run import AgentRun

# scripted:slow writes five chunks a second: a long answer takes many seconds.
ASK = "hello there, tell me everything"


@pytest.fixture
async def listener(postgres: EmbeddedPostgres) -> AsyncIterator[InterruptListener]:
    listener = InterruptListener(postgres.uri)
    listener.start()
    await asyncio.wait_for(listener.listening.wait(), 10)
    yield listener
    await listener.close()


async def test_a_cancel_stops_the_model_mid_answer_and_keeps_what_it_wrote(
    store: RunStore, listener: InterruptListener, postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    deltas = PostgresDeltaChannel(store.pool, listen_dsn=postgres.uri)
    activities = AgentActivities(
        store=store, data_dir=tmp_path, app=load_app(), deltas=deltas, interrupts=listener
    )
    run_id = f"run-{uuid.uuid4()}"
    await store.put_messages(run_id, 0, [Message(role="user", content=ASK)])
    step = LlmStepInput(agent_run_id=run_id, step=1, model="scripted:slow", tools=[], reply_seq=1)
    heard: asyncio.Queue[object] = asyncio.Queue()
    subscription = await deltas.subscribe(run_id, heard)
    answering = asyncio.create_task(ActivityEnvironment().run(activities.call_llm, step))
    await asyncio.wait_for(heard.get(), 10)  # the model has begun its answer
    subscription.close()

    await interrupt(store.pool, run_id)
    reply = await asyncio.wait_for(answering, 10)

    assert reply.interrupted and reply.finish_reason == "interrupted" and not reply.tool_calls
    kept = (await store.conversation(run_id, 2))[-1]
    streamed = "".join(d.text for d in await deltas.read(run_id, 1))
    assert kept.role == "assistant" and kept.content == streamed  # what the viewers saw is what is kept
    assert kept.content.startswith("[scripted offline model") and reply.has_text
    await deltas.close()


async def test_an_interrupt_reaches_only_the_run_it_names(
    listener: InterruptListener, store: RunStore
) -> None:
    with listener.watch("run-a") as a, listener.watch("run-b") as b:
        await interrupt(store.pool, "run-b")
        await asyncio.wait_for(b.wait(), 10)
        # Notifications arrive in order on one connection: run-b's has been handled, and run-a's event
        # was left alone.
        assert not a.is_set()


async def test_the_listener_listens_again_after_losing_its_connection(
    listener: InterruptListener, store: RunStore
) -> None:
    await store.pool.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN %keel_interrupts%'"
    )
    while listener.listening.is_set():  # noqa: ASYNC110 (it clears when the listener notices the loss)
        await asyncio.sleep(0.05)
    await asyncio.wait_for(listener.listening.wait(), 10)

    with listener.watch("run-c") as c:
        await interrupt(store.pool, "run-c")
        await asyncio.wait_for(c.wait(), 10)


@activity.defn(name=CALL_LLM)
async def interrupted_with_no_cancel(step: LlmStepInput) -> LlmStepResult:
    return LlmStepResult(
        reply_seq=step.reply_seq,
        has_text=False,
        tool_calls=[],
        finish_reason="interrupted",
        usage=Usage(),
        model=step.model,
        interrupted=True,
    )


async def test_a_call_interrupted_with_no_cancel_to_follow_fails_the_run_instead_of_leaving_it_stuck(
    store: RunStore,
) -> None:
    run = run_input(load_app().default_agent.spec("scripted"), [Message(role="user", content="hi")])
    async with (
        time_skipping() as env,
        Worker(
            env.client,
            task_queue="interrupts",
            workflows=[AgentRun],
            activities=[interrupted_with_no_cancel, RecordActivities(store.pool).record_run],
        ),
    ):
        handle = await start_run(env.client, run, "interrupts")
        with pytest.raises(WorkflowFailureError) as failed:
            await handle.result()  # the server skips the minute the run waits for the cancel

    assert "the model call was interrupted, but no cancel followed" in str(failed.value.cause)
