"""A run's stream as a Server-Sent Events response, shared by every endpoint that streams one:
`POST /api/chat`, `GET /api/runs/{id}/events` (resumable with Last-Event-ID) and `GET /api/chat/{id}/stream`
(the AI SDK's resume).

Each chunk is one SSE event whose `id:` is the chunk's id in the run's stream (api/run_stream.py) and
whose data is the chunk encoded by keel/ui_protocol (compact JSON, only the protocol's fields); the response
ends with `data: [DONE]`, which has no id, as do keep-alive comments. A client that goes away
costs nothing: its stream stops, and the run never notices.
"""

import logging
from collections.abc import AsyncIterator, Callable

import asyncpg
from fastapi import HTTPException, Request, Response
from sse_starlette import EventSourceResponse, ServerSentEvent
from temporalio.service import RPCError

from api.gateway import Gateway
from api.run_stream import (
    Chunk,
    RunStream,
    RunWatchers,
    StreamStart,
    pause_points,
    segment,
    whole_message,
)
from keel.contracts import EVENTS_QUERY, RunEvent
from keel.ui_protocol import ErrorChunk, encode

log = logging.getLogger("keel.api")

UI_STREAM_HEADERS = {
    "x-vercel-ai-ui-message-stream": "v1",
    "x-accel-buffering": "no",
    "cache-control": "no-cache",
}
_DONE = "[DONE]"
# Every stream this process serves follows its run through one shared watcher per run.
WATCHERS = RunWatchers()


def stream_response(
    gw: Gateway,
    agent_run_id: str,
    events: AsyncIterator[ServerSentEvent] | None = None,
    start: StreamStart | None = None,
) -> EventSourceResponse:
    """The run's stream from `start` (default: its beginning), or the given events."""
    if events is None:
        events = sse_events(gw, agent_run_id, lambda stream: segment(stream, start or StreamStart()))
    return EventSourceResponse(
        events,
        headers={**UI_STREAM_HEADERS, "x-agent-run-id": agent_run_id},
        sep="\n",
        ping=gw.settings.sse_ping_seconds,
    )


async def sse_events(
    gw: Gateway, agent_run_id: str, chunks: Callable[[RunStream], AsyncIterator[Chunk]]
) -> AsyncIterator[ServerSentEvent]:
    stream = RunStream(gw.run(agent_run_id), gw.store, gw.deltas, agent_run_id, WATCHERS, gw.run)
    try:
        async for chunk in chunks(stream):
            yield ServerSentEvent(
                encode(chunk.body), id=None if chunk.id is None else str(chunk.id), sep="\n"
            )
    except (RPCError, OSError, asyncpg.PostgresError, LookupError) as err:
        # Headers are gone already; the stream itself says what went wrong. The run goes on regardless.
        log.warning("stream of %s broke: %s", agent_run_id, err)
        yield ServerSentEvent(encode(ErrorChunk(error_text=f"lost the run's progress: {err}")), sep="\n")
    yield ServerSentEvent(_DONE, sep="\n")


async def resumed_response(gw: Gateway, agent_run_id: str, after_id: int | None, finished: bool) -> Response:
    """The run's stream after chunk `after_id`. 204 when a finished run has nothing left after it, which
    also tells a browser's EventSource to stop reconnecting."""
    events = sse_events(gw, agent_run_id, lambda stream: segment(stream, StreamStart(after_id=after_id)))
    if finished and after_id is not None:
        first = await anext(events)
        if first.data == _DONE:
            return Response(status_code=204)
        events = _prepend(first, events)
    return stream_response(gw, agent_run_id, events)


async def resume_chat(gw: Gateway, chat_id: str) -> Response:
    """The AI SDK's resume: the assistant message of the chat's latest run, from its start, while the run
    is active (running, or waiting for someone: then up to what it asked); 204 otherwise."""
    agent_run_id = await gw.store.latest_chat_run(chat_id)
    if agent_run_id is None:
        return Response(status_code=204)
    try:
        state = await gw.state_unless_busy(agent_run_id)
    except HTTPException as err:
        if err.status_code == 404:
            return Response(status_code=204)
        raise
    if state is None:
        # A workflow task is under way (its model answering, most likely), and the run takes no query until
        # it ends (docs/explanation/durability.md): it runs, and its events so far are the ones its model
        # calls announced; the stream follows it from there.
        events, waiting = await gw.deltas.read_events(agent_run_id), False
    else:
        if state.status.is_final:
            return Response(status_code=204)
        # State first, then events: a run that waits has emitted what it waits for.
        events = await gw.run(agent_run_id).query(EVENTS_QUERY, 0, result_type=list[RunEvent])
        waiting = state.status != "running"
    pauses = pause_points(events)
    last_pause = pauses[-1] if pauses else None
    return stream_response(
        gw,
        agent_run_id,
        sse_events(gw, agent_run_id, lambda stream: whole_message(stream, last_pause, waiting)),
    )


def last_event_id(request: Request, query_value: int | None) -> int | None:
    """The `Last-Event-ID` header, else the `last_event_id` query parameter. The header wins: an EventSource
    opened with the parameter sends the header, newer, when it reconnects."""
    header = request.headers.get("last-event-id")
    if header is None or not header.strip():
        return query_value
    try:
        value = int(header.strip())
    except ValueError:
        raise HTTPException(
            400, f"Last-Event-ID must be an event id from this run's stream, not {header!r}"
        ) from None
    if value < 0:
        raise HTTPException(400, "Last-Event-ID must not be negative")
    return value


async def _prepend(
    first: ServerSentEvent, rest: AsyncIterator[ServerSentEvent]
) -> AsyncIterator[ServerSentEvent]:
    yield first
    async for event in rest:
        yield event
