"""Keel's Python client (`keel.client`), sync and async, against the real stack: a backend starts a run,
reads its stream, waits for it, decides, answers and cancels, typed with the gateway's own models; a
refusal is an exception carrying the gateway's explanation."""

import asyncio
import uuid

import pytest

from keel.client import AsyncKeelClient, ChatError, KeelClient
from keel.contracts import RunStatus
from keel.ui_protocol import FinishChunk, StartChunk, TextDeltaChunk, ToolInputAvailableChunk
from tests.conftest import Keel


async def test_the_async_client_runs_a_lesson_through_an_approval(keel: Keel) -> None:
    async with AsyncKeelClient(keel.gateway_url) as client:
        started = await client.start_run(
            "plan, write and publish a lesson on heaps",
            purpose="learnpack-lesson-writer",
            metadata={"course": "algorithms"},
        )
        assert started.status is RunStatus.running

        waiting = await client.wait(started.agent_run_id, within=30)
        assert waiting.status is RunStatus.waiting_for_approval and waiting.metadata == {
            "course": "algorithms"
        }
        [pending] = waiting.pending_approvals
        record = await client.approve(started.agent_run_id, pending.tool_call_id, reason="looks right")
        assert record.approved is True and record.reason == "looks right"

        ended = await client.wait(started.agent_run_id, within=30)
        assert ended.status is RunStatus.completed
        # The whole stream, read back from its start: the same protocol useChat reads.
        chunks = [c async for c in client.events(started.agent_run_id)]
        assert isinstance(chunks[0], StartChunk) and isinstance(chunks[-1], FinishChunk)
        assert "publish_package" in [c.tool_name for c in chunks if isinstance(c, ToolInputAvailableChunk)]


def test_the_sync_client_answers_a_question_cancels_and_keeps_a_key(keel: Keel) -> None:
    key = f"ask-{uuid.uuid4()}"
    with KeelClient(keel.gateway_url) as client:
        started = client.start_run("ask me which topic to cover", idempotency_key=key)
        again = client.start_run("ask me which topic to cover", idempotency_key=key)
        assert again.agent_run_id == started.agent_run_id

        asking = client.wait(started.agent_run_id, within=30)
        assert asking.status is RunStatus.waiting_for_input and asking.pending_question is not None
        answered = client.answer_question(started.agent_run_id, "binary heaps")
        assert answered.agent_run_id == started.agent_run_id
        assert client.wait(started.agent_run_id, within=30).status is RunStatus.completed
        text = "".join(c.delta for c in client.events(started.agent_run_id) if isinstance(c, TextDeltaChunk))
        assert "binary heaps" in text

        waiting = client.start_run(
            "plan, write and publish a lesson on tries", purpose="learnpack-lesson-writer"
        )
        assert client.wait(waiting.agent_run_id, within=30).status is RunStatus.waiting_for_approval
        assert client.cancel(waiting.agent_run_id, reason="not today").status == "cancelling"
        assert client.wait(waiting.agent_run_id, within=30).status is RunStatus.cancelled


async def test_a_refusal_is_an_exception_with_the_gateways_reason(keel: Keel) -> None:
    async with AsyncKeelClient(keel.gateway_url) as client:
        with pytest.raises(ChatError, match="HTTP 400: .*no-such-agent"):
            await client.start_run("hello", purpose="no-such-agent")
        started = await client.start_run("calculate 1 + 1")
        await client.wait(started.agent_run_id, within=30)
        with pytest.raises(ChatError, match="HTTP 409"):
            await client.approve(started.agent_run_id, "call_none")
    key = f"other-body-{uuid.uuid4()}"
    with KeelClient(keel.gateway_url) as client:
        await asyncio.to_thread(client.start_run, "calculate 1 + 2", idempotency_key=key)
        with pytest.raises(ChatError, match="HTTP 422: .*already used with another request body"):
            await asyncio.to_thread(client.start_run, "calculate 1 + 3", idempotency_key=key)
