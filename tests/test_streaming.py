"""Live token streaming and resumable streams: deltas out of band, SSE ids, Last-Event-ID, retries, many
viewers, slow viewers, keep-alives, and the AI SDK's resume endpoint, all against the real stack."""

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest
from keel_examples import assistant
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from api.run_stream import RunStream, StreamStart, segment
from keel.contracts import Message
from keel.run_start import first_messages, run_input, start_run
from keel.stack.embedded import EmbeddedPostgres
from keel.storage.deltas import MAX_ROW_CHARS, DeltaBatch, DeltaWriter, PostgresDeltaChannel, prune_deltas
from keel.storage.store import RunStore
from keel.ui_protocol import encode
from tests.conftest import NO_CONTEXT, VendorWorker, run_events
from tests.ui_stream import UIStream, assert_well_formed, assistant_message, chat, chat_body, parse_text

LESSON = "plan and write a lesson on recursion"
PUBLISH = "plan, write and publish a lesson on streams"
SLOW = "hello there, tell me everything"  # scripted:slow writes its answer in ~14 pieces, 5 a second


@dataclass
class Seen:
    """What one SSE client read, with when each chunk arrived."""

    stream: UIStream
    raw: str
    arrived: list[float] = field(default_factory=list)

    @property
    def pairs(self) -> list[tuple[int | None, dict[str, Any]]]:
        return list(zip(self.stream.ids, self.stream.chunks, strict=True))

    @property
    def run_id(self) -> str:
        return self.stream.response.headers["x-agent-run-id"]


async def read_sse(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    stop: Callable[[UIStream], bool] | None = None,
    **kwargs: Any,
) -> Seen:
    """Read an SSE response as it arrives; when `stop` says so, drop the connection (complete events only)."""
    async with http.stream(method, url, **kwargs) as response:
        assert response.status_code == 200, (await response.aread()).decode()
        raw, complete, arrived = "", 0, []
        async for piece in response.aiter_text():
            raw += piece
            complete = raw.rfind("\n\n") + 2
            seen = parse_text(raw[:complete], response)
            arrived += [time.monotonic()] * (len(seen.chunks) - len(arrived))
            if stop is not None and stop(seen):
                break
        return Seen(parse_text(raw[:complete], response), raw[:complete], arrived)


def deltas(stream: UIStream) -> int:
    return len(stream.of_type("text-delta"))


def joined(*parts: Seen) -> UIStream:
    """One client's view across reconnects: the chunks of each response, in order."""
    whole = UIStream(parts[-1].stream.response, done=parts[-1].stream.done)
    for part in parts:
        whole.chunks += part.stream.chunks
        whole.typed += part.stream.typed
        whole.ids += part.stream.ids
    return whole


async def final_reply(store: RunStore, agent_run_id: str) -> str:
    conversation = await store.conversation(agent_run_id, 1000)
    return next(m.content for m in reversed(conversation) if m.role == "assistant" and m.content)


async def steps_in_history(temporal: Client, agent_run_id: str) -> list[str]:
    """The kinds of event the run's own commands wrote. Workflow-task bookkeeping is left out: a busy
    machine may time out a sticky task or heartbeat a long local activity, which adds tasks, not steps."""
    handle = temporal.get_workflow_handle(agent_run_id)
    await handle.result()  # the run records its outcome just after its stream ends, then completes
    return [EventType.Name(event.event_type) for event in run_events(await handle.fetch_history())]


async def test_tokens_stream_live_and_a_reconnecting_client_misses_nothing(
    gateways: dict[str, str],
    http: httpx.AsyncClient,
    temporal: Client,
    store: RunStore,
    postgres: EmbeddedPostgres,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with httpx.AsyncClient(base_url=gateways["slow"], timeout=30) as slow:
        # The client that asked drops its connection after three pieces of the answer.
        first = await read_sse(slow, "POST", "/api/chat", json=chat_body(SLOW), stop=lambda s: deltas(s) >= 3)
        run_id = first.run_id
        # Meanwhile others watch the same run from its beginning: replayed from the log, then live.
        watchers = [
            asyncio.create_task(read_sse(slow, "GET", f"/api/runs/{run_id}/events")) for _ in range(4)
        ]
        # And a viewer in this process that stalls: its queue holds two notifications, the rest are lost.
        monkeypatch.setattr("api.run_stream.VIEWER_QUEUE", 2)
        channel = PostgresDeltaChannel(store.pool, listen_dsn=postgres.uri)
        stalled = segment(
            RunStream(temporal.get_workflow_handle(run_id), store, channel, run_id), StreamStart()
        )
        stalled_chunks = [await anext(stalled) for _ in range(3)]  # subscribed from the third chunk on
        # The client reconnects with the Last-Event-ID header, drops again, then uses the query parameter.
        second = await read_sse(
            slow,
            "GET",
            f"/api/runs/{run_id}/events",
            headers={"Last-Event-ID": str(first.stream.ids[-1])},
            stop=lambda s: deltas(s) >= 2,
        )
        third = await read_sse(
            slow, "GET", f"/api/runs/{run_id}/events?last_event_id={second.stream.ids[-1]}"
        )
        views = await asyncio.gather(*watchers)
        # Everyone else is done: the stalled viewer catches up from the log.
        stalled_chunks += [chunk async for chunk in stalled]
        await channel.close()
        assert channel.viewers == 0

    reconnected = joined(first, second, third)
    assert_well_formed(reconnected)
    # Exactly what an uninterrupted viewer saw, chunk for chunk and id for id: nothing missing, nothing twice.
    for view in views:
        assert_well_formed(view.stream)
        assert view.pairs == first.pairs + second.pairs + third.pairs
    assert [(c.id, json.loads(encode(c.body))) for c in stalled_chunks] == views[0].pairs
    assert reconnected.text == await final_reply(store, run_id)
    # The answer came in many small pieces, as the model wrote them, not at the end of the step.
    assert deltas(reconnected) >= 10
    assert first.arrived[-1] - first.arrived[0] > 0.2
    assert first.stream.of_type("text-start") and not first.stream.done, "the first stream was cut mid-answer"
    # History grows per step, never per token: the same question answered at once writes the same events.
    fast = await chat(http, chat_body(SLOW))
    assert deltas(fast) < deltas(reconnected)
    assert await steps_in_history(temporal, run_id) == await steps_in_history(
        temporal, fast.response.headers["x-agent-run-id"]
    )


async def test_a_finished_run_replays_what_was_streamed_live(http: httpx.AsyncClient) -> None:
    live = await chat(http, chat_body(LESSON, purpose="learnpack-lesson-writer"))
    run_id = live.response.headers["x-agent-run-id"]
    live_pairs = list(zip(live.ids, live.chunks, strict=True))

    replay = await read_sse(http, "GET", f"/api/runs/{run_id}/events")
    assert replay.pairs == live_pairs

    for cut in (1, len(live_pairs) // 2, len(live_pairs) - 2):
        rest = await read_sse(
            http, "GET", f"/api/runs/{run_id}/events", headers={"Last-Event-ID": str(live.ids[cut])}
        )
        assert rest.pairs == live_pairs[cut + 1 :]
    # Nothing after the last event of a finished run: 204, which also stops a browser's EventSource.
    done = await http.get(f"/api/runs/{run_id}/events", headers={"Last-Event-ID": str(live.ids[-1])})
    assert done.status_code == 204
    assert (await http.get(f"/api/runs/{run_id}/events", headers={"Last-Event-ID": "abc"})).status_code == 400
    assert (await http.get(f"/api/runs/run-{uuid.uuid4()}/events")).status_code == 404


async def test_deltas_of_runs_finished_long_ago_are_pruned_and_their_replies_replay_whole(
    http: httpx.AsyncClient, store: RunStore
) -> None:
    old = await chat(http, chat_body(LESSON, purpose="learnpack-lesson-writer"))
    recent = await chat(http, chat_body("calculate 2 + 2"))
    going = await chat(http, chat_body("calculate 3 + 3"))
    old_id, recent_id, going_id = (s.response.headers["x-agent-run-id"] for s in (old, recent, going))
    two_days_ago = "now() - interval '2 days'"
    await store.pool.execute(f"UPDATE agent_runs SET finished_at = {two_days_ago} WHERE id = $1", old_id)
    # A run not finished yet (one parked on an approval for days, say) keeps its deltas however old.
    await store.pool.execute("UPDATE agent_runs SET finished_at = NULL WHERE id = $1", going_id)
    for run_id in (old_id, going_id):
        await store.pool.execute(
            f"UPDATE run_deltas SET created_at = {two_days_ago} WHERE agent_run_id = $1", run_id
        )

    assert await prune_deltas(store.pool, timedelta(hours=24)) > 0

    left = {
        run_id: await store.pool.fetchval("SELECT count(*) FROM run_deltas WHERE agent_run_id = $1", run_id)
        for run_id in (old_id, recent_id, going_id)
    }
    assert left[old_id] == 0 and left[recent_id] > 0 and left[going_id] > 0
    # The pruned run's stream still tells the whole run, from its stored replies (each in one piece).
    replay = (await read_sse(http, "GET", f"/api/runs/{old_id}/events")).stream
    assert_well_formed(replay)
    assert replay.text == old.text
    assert replay.tool_names == old.tool_names


async def test_a_pause_ends_the_segment_and_last_event_id_follows_the_run_on(http: httpx.AsyncClient) -> None:
    body = chat_body(PUBLISH, purpose="learnpack-lesson-writer")
    first = await chat(http, body)
    run_id = first.response.headers["x-agent-run-id"]
    publish = first.of_type("tool-approval-request")[0]["toolCallId"]
    first_pairs = list(zip(first.ids, first.chunks, strict=True))

    # The AI SDK's resume while the run waits: the stream that asked, from its start.
    resumed = await read_sse(http, "GET", f"/api/chat/{body['id']}/stream")
    assert resumed.pairs == first_pairs
    # A viewer that reconnects after the pause waits for the run to go on, then gets the next segment.
    follow = asyncio.create_task(
        read_sse(http, "GET", f"/api/runs/{run_id}/events", headers={"Last-Event-ID": str(first.ids[-1])})
    )
    await asyncio.sleep(0.3)
    assert not follow.done()
    decided = await http.post(f"/api/runs/{run_id}/approvals/{publish}", json={"approved": True})
    assert decided.status_code == 200, decided.text
    rest = await follow

    assert_well_formed(rest.stream, resumed=True)
    assert rest.stream.ids[0] > first.ids[-1]
    assert rest.stream.of_type("tool-output-available")[0]["toolCallId"] == publish
    assert rest.stream.run_status == "completed"
    # useChat's resubmission streams that same segment.
    again = await chat(
        http,
        {
            "id": body["id"],
            "messages": [*body["messages"], assistant_message(first, approvals={publish: True})],
        },
    )
    assert list(zip(again.ids, again.chunks, strict=True)) == rest.pairs
    # Finished, or never started: nothing to resume.
    assert (await http.get(f"/api/chat/{body['id']}/stream")).status_code == 204
    assert (await http.get("/api/chat/no-such-chat/stream")).status_code == 204


async def test_keep_alives_while_idle_and_the_ai_sdk_resume_rebuilds_the_whole_message(
    gateways: dict[str, str], store: RunStore
) -> None:
    async with httpx.AsyncClient(base_url=gateways["slow"], timeout=30) as http:
        body = chat_body("ask me what my favourite colour is")
        first = await chat(http, body)
        run_id = first.response.headers["x-agent-run-id"]
        assert first.run_status == "waiting_for_input"
        # Nothing happens while the run waits for the answer, but the connection hears from the gateway.
        idle = await read_sse(
            http,
            "GET",
            f"/api/runs/{run_id}/events",
            headers={"Last-Event-ID": str(first.ids[-1])},
            stop=lambda s: True,
        )
        assert idle.raw.startswith(": ping"), idle.raw
        assert not idle.stream.chunks
        # That viewer left; the run does not care. Answered, it writes its reply (slowly), and the AI SDK's
        # resume meanwhile rebuilds the whole assistant message: both segments, one start, one finish.
        assert (await http.post(f"/api/runs/{run_id}/answer", json={"text": "blue"})).status_code == 200
        whole = await read_sse(http, "GET", f"/api/chat/{body['id']}/stream")
        rest = await read_sse(
            http, "GET", f"/api/runs/{run_id}/events", headers={"Last-Event-ID": str(first.ids[-1])}
        )

    assert_well_formed(whole.stream)
    first_pairs = list(zip(first.ids, first.chunks, strict=True))
    assert whole.pairs == [p for p in first_pairs if p[1]["type"] != "finish"] + [
        p for p in rest.pairs if p[1]["type"] != "start"
    ]
    assert whole.stream.of_type("tool-output-available")[0]["output"] == "blue"
    assert whole.stream.text == await final_reply(store, run_id)
    assert "ask_user returned: blue" in rest.stream.text


async def test_a_retried_llm_call_restarts_its_text_part_cleanly(
    http: httpx.AsyncClient, temporal: Client, store: RunStore, vendor_worker: VendorWorker
) -> None:
    # The fake vendor writes the whole answer, then drops the connection, once; Temporal retries.
    messages = first_messages(assistant, NO_CONTEXT, [Message(role="user", content="hello")])
    run = run_input(assistant.spec("openai:cutx1"), messages)
    run_id = run.agent_run_id
    await store.put_messages(run_id, 0, messages)
    await start_run(temporal, run, vendor_worker.task_queue)
    live = await read_sse(http, "GET", f"/api/runs/{run_id}/events")

    assert_well_formed(live.stream)
    reply = await final_reply(store, run_id)
    texts: dict[str, str] = {}
    for chunk in live.stream.of_type("text-delta"):
        texts[chunk["id"]] = texts.get(chunk["id"], "") + chunk["delta"]
    # Each attempt wrote its own part; the retry says which part it discards; the final text is whole, once.
    [retry] = live.stream.of_type("data-retry")
    abandoned, kept = list(texts)
    assert retry["data"] == {"step": 1, "attempt": 2, "discardedTextId": abandoned}
    assert texts[abandoned] == reply  # attempt 1 had written it all before the connection dropped
    assert texts[kept] == reply and kept == f"{abandoned}-2"
    kinds = [c["type"] for c in live.stream.chunks]
    assert kinds.index("data-retry") == kinds.index("text-end") + 1
    assert live.stream.run_status == "completed"
    # A replay is the same stream.
    assert (await read_sse(http, "GET", f"/api/runs/{run_id}/events")).pairs == live.pairs


async def test_the_postgres_delta_channel(store: RunStore, postgres: EmbeddedPostgres) -> None:
    channel = PostgresDeltaChannel(store.pool, listen_dsn=postgres.uri)
    run_id = f"run-{uuid.uuid4()}"
    queue: asyncio.Queue[object] = asyncio.Queue()
    subscription = await channel.subscribe(run_id, queue)
    try:
        writer = DeltaWriter(channel, run_id, 1, 5, 1)
        words = [f"w{i} " for i in range(50)]
        for word in words:
            writer.write(word)
            await asyncio.sleep(0)
        await writer.close()
        big = "\N{GRINNING FACE}" * (3 * MAX_ROW_CHARS)  # three rows, together too large for one NOTIFY
        writer.write(big)
        await writer.close()
        stored = await channel.read(run_id, 1)
        assert "".join(d.text for d in stored) == "".join(words) + big
        assert [d.n for d in stored] == list(range(len(stored)))
        assert max(len(d.text) for d in stored) == MAX_ROW_CHARS
        batches: list[DeltaBatch] = []
        while not batches or batches[-1].texts is not None:
            batches.append(await asyncio.wait_for(queue.get(), 5))  # type: ignore[arg-type]
        # Words written while a batch was being published went out together in the next one.
        assert 1 < len(batches) - 1 < len(words)
        assert sum(b.count for b in batches[:-1]) + 3 == len(stored)
        assert batches[-1].first_n == len(stored) - 3  # its text is read from the log

        # A retried attempt opens with a marker; the attempt it replaced can add nothing after that.
        retried = DeltaWriter(channel, run_id, 1, 5, 2)
        retried.write("again")
        await retried.close()
        late = DeltaWriter(channel, run_id, 1, 5, 1)
        late.write("too late")
        await late.close()
        after = await channel.read(run_id, 1, stored[-1].position)
        assert [(d.attempt, d.n, d.text) for d in after] == [(2, 0, ""), (2, 1, "again")]

        # A viewer whose queue is full loses notifications, never blocks the publisher, and knows it.
        full = await channel.subscribe(run_id, asyncio.Queue(maxsize=1))
        for _ in range(3):
            w = DeltaWriter(channel, run_id, 2, 9, 1)
            w.write("x")
            await w.close()
        await asyncio.sleep(0.1)
        assert full.overflowed
        full.close()
    finally:
        subscription.close()
    await asyncio.sleep(0.05)
    assert channel.viewers == 0
    await channel.close()


async def test_a_viewer_that_goes_away_releases_its_subscription(
    http: httpx.AsyncClient, temporal: Client, store: RunStore, postgres: EmbeddedPostgres
) -> None:
    first = await chat(http, chat_body("ask me anything you like"))
    run_id = first.response.headers["x-agent-run-id"]
    channel = PostgresDeltaChannel(store.pool, listen_dsn=postgres.uri)
    stream = RunStream(temporal.get_workflow_handle(run_id), store, channel, run_id)

    async def watch() -> None:
        async for _ in segment(stream, StreamStart(after_id=first.ids[-1])):
            pass

    watching = asyncio.create_task(watch())
    for _ in range(100):
        if channel.viewers:
            break
        await asyncio.sleep(0.01)
    assert channel.viewers == 1
    watching.cancel()  # what a disconnecting client does to its stream
    with contextlib.suppress(asyncio.CancelledError):
        await watching
    assert channel.viewers == 0
    await channel.close()
    await http.post(f"/api/runs/{run_id}/cancel", json={})
