"""Following a run and speaking the AI SDK's UI message stream protocol: live, numbered and resumable.

A run's stream merges two sources:

- its workflow events (`RunEvent`, numbered by `seq`): `follow_run` long-polls the workflow's history, so it
  wakes when the workflow makes progress (no fixed polling interval), then asks the `events` query for
  what is new;
- the token deltas of each step's LLM call, which never enter history: they come out of band through the
  run's `DeltaChannel` (keel/storage/deltas.py), live from its notifications and, for whatever a viewer missed,
  from its log. A model call run as a local activity works inside the workflow task that emitted the
  step's events, so the `events` query would serve them only once that task ends: the call announces them
  with its first notification and stores them (`run_events`), and they are streamed then, or read first by a
  stream that begins meanwhile (the query's answer repeats them; events already streamed are skipped by
  seq).

`RunStream` turns both into one sequence of chunks that comes out the same every time it is produced: a
step's deltas sit between its `step_started` event and the event after it, in (attempt, n) order. Each
chunk's id is `seq * ID_SPAN + i`, the i-th chunk produced after event `seq` (seq 0: the stream's opening),
so ids only grow and mean the same to every gateway process, before and after a restart: that is what
makes Last-Event-ID work.

The sequence is cut into segments, each a complete UI message stream (`start` ... `finish`), because the
AI SDK expects a response to end when the run waits for someone: a segment ends after each group of
waiting events (approval requests, a question, client-side tool calls; a step emits its group all at
once), and the next segment begins right after it. A response serves one segment, or the rest of one
(or, answering a resubmission that reaches a finished run, every segment from its pause to the end).

A run's end closes every tool call it left open: before `finish`, an approval never given gets
`tool-output-denied` and any other open call (a tool still running, a question or a client tool without its
answer) `tool-output-error` saying the run ended; why the run ended follows in a step of its own. No AI
SDK client is then left holding a call, and none takes the last step for one that waits for the model.
A run with structured output (Agent(output_type=...)) ends with its validated answer as a `data-output`
part (`{"type": "data-output", "id": <run id>, "data": <object>}`), the last chunk before `finish`.

A run that calls sub-agents (Agent.as_tool) carries their progress too: a `SubRunStarted` event gives the
call a first preliminary output naming the child run, and while the call is open the stream follows the
child (api/sub_run_progress.py) and sends its message so far as the call's preliminary output, each one
whole. Those snapshots depend on timing, not on the run's history, so they have no id: they never move
Last-Event-ID, and a stream that resumes sends the latest one again after the chunks it replays.

The chunks are the typed models of keel/ui_protocol/chunks.py; api/sse.py encodes them.

Retries stay clean: each attempt of an LLM call writes its own text part (`text-<seq>`, then
`text-<seq>-<attempt>`). When a retried attempt begins, the part of the abandoned one is ended and a
`data-retry` part says so, naming the discarded part; the step's final text only completes the part of
the attempt that succeeded, never repeats what was streamed.
"""

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle

from api.sub_run_progress import SubRunFollower
from keel import ui_protocol as ui
from keel.contracts import (
    ASK_USER_TOOL,
    EVENTS_QUERY,
    WAITING_EVENTS,
    ApprovalDecided,
    ApprovalRequested,
    ClientToolRequested,
    FinalRunState,
    HandedOff,
    Message,
    QuestionAsked,
    RunEvent,
    RunFinished,
    RunStatus,
    StepFinished,
    StepStarted,
    SubRunStarted,
    TextProduced,
    ToolCallRequested,
    ToolResultReady,
)
from keel.storage.deltas import RESYNC, VIEWER_QUEUE, Delta, DeltaBatch, DeltaChannel
from keel.storage.reconciler import ended_outside
from keel.storage.store import RunStore

T = TypeVar("T")

# Chunk ids: seq * ID_SPAN + the chunk's index after event `seq`. No step streams a million chunks.
ID_SPAN = 1_000_000

# History events after which the workflow's state may have changed.
_PROGRESS = {
    EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW,
}


async def follow_run(handle: WorkflowHandle[Any, Any], after: int = 0) -> AsyncIterator[list[RunEvent]]:
    """Batches of events with seq > after, until the run has finished."""
    history = handle.fetch_history_events(wait_new_event=True)
    while True:
        await history.fetch_next_page()
        page = history.current_page or []
        closed = history.next_page_token is None
        if (
            closed
            and page
            and page[-1].event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
        ):
            # A long run went on in a new Temporal run (same workflow id, events carried over): follow
            # that one's history from here; the `events` query already answers from it.
            history = handle.fetch_history_events(wait_new_event=True)
            closed = False
        if closed or any(e.event_type in _PROGRESS for e in page):
            completed = (
                closed and page and page[-1].event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED
            )
            events = await (_final_events(handle, after) if completed else _events_query(handle, after))
            if events:
                after = events[-1].seq
                yield events
                if isinstance(events[-1], RunFinished):
                    return
        if closed:
            # Closed without saying so: terminated, timed out or cancelled from outside Keel.
            yield [await _ended_from_outside(handle, after + 1)]
            return


def _opens_step(batch: DeltaBatch | None, step: int) -> bool:
    """Whether the notification opens the step's first attempt: the log holds nothing of the step before it,
    so a thousand viewers of the run need not all read it at the same moment."""
    return (
        batch is not None
        and batch.step == step
        and batch.texts is not None
        and batch.attempt == 1
        and batch.first_n == 0
    )


def _contiguous(events: list[RunEvent]) -> list[RunEvent]:
    """The events from seq 1 on, up to the first gap (an announcement that was never stored)."""
    for index, event in enumerate(events):
        if event.seq != index + 1:
            return events[:index]
    return events


async def _events_query(handle: WorkflowHandle[Any, Any], after: int) -> list[RunEvent]:
    events: list[RunEvent] = await handle.query(EVENTS_QUERY, after, result_type=list[RunEvent])
    return events


async def _final_events(handle: WorkflowHandle[Any, Any], after: int) -> list[RunEvent]:
    """A completed run's events after `after`, from its result (FinalRunState) in its history: no worker
    replays it. Runs of releases before the result carried them are queried."""
    final = FinalRunState.model_validate(await handle.result())
    if not final.events:
        return await _events_query(handle, after)
    return final.events[after:]


_END = object()  # a watcher's last item: the run has finished


class _Watcher:
    """One `follow_run` loop for one run, its batches handed to every viewer of the run in this process.

    A viewer that joins late first gets every event seen so far as one batch, which is exactly what its
    own `follow_run` would have started with (the events query from 0), so sharing changes no stream.
    """

    def __init__(self, handle: WorkflowHandle[Any, Any], on_closed: Callable[["_Watcher"], None]) -> None:
        self.events: list[RunEvent] = []
        self.closed = False
        # Unbounded: a run has few events, and a viewer's own bounded queue comes after this one.
        self._viewers: set[asyncio.Queue[object]] = set()
        self._on_closed = on_closed
        self._task = asyncio.get_running_loop().create_task(self._follow(handle))

    def join(self) -> asyncio.Queue[object]:
        queue: asyncio.Queue[object] = asyncio.Queue()
        if self.events:
            queue.put_nowait(list(self.events))
        self._viewers.add(queue)
        return queue

    def leave(self, queue: asyncio.Queue[object]) -> None:
        """Synchronous, so a cancelled viewer can call it. The last one to leave stops the watcher."""
        self._viewers.discard(queue)
        if not self._viewers and not self.closed:
            self._close()
            self._task.cancel()

    async def _follow(self, handle: WorkflowHandle[Any, Any]) -> None:
        try:
            async for events in follow_run(handle):
                self.events += events
                self._offer(events)
            self._offer(_END)
        except Exception as err:  # every viewer reports it to its client; the next viewer starts afresh
            self._offer(err)
        finally:
            self._close()

    def _offer(self, item: object) -> None:
        for queue in self._viewers:
            queue.put_nowait(item)

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self._on_closed(self)


class RunWatchers:
    """The runs this gateway process follows: one history long-poll and one `events` query per workflow
    step for each run, however many clients stream it. (Each stream following the run on its own made a
    thousand viewers of twenty runs a thousand long-polls, and a thousand queries the worker had to
    answer every time a run made progress.) A run's watcher stops when its last viewer leaves or the run
    finishes."""

    def __init__(self) -> None:
        self._watchers: dict[str, _Watcher] = {}

    def __len__(self) -> int:
        return len(self._watchers)

    async def follow(self, handle: WorkflowHandle[Any, Any]) -> AsyncIterator[list[RunEvent]]:
        """What `follow_run(handle)` yields: batches of the run's events from its first, until it finishes."""
        watcher = self._watchers.get(handle.id)
        if watcher is None or watcher.closed:
            watcher = self._watchers[handle.id] = _Watcher(handle, self._forget)
        queue = watcher.join()
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item  # type: ignore[misc]
        finally:
            watcher.leave(queue)

    def _forget(self, watcher: _Watcher) -> None:
        for run_id, known in list(self._watchers.items()):
            if known is watcher:
                del self._watchers[run_id]


class _SharedReads:
    """Identical reads that viewers of a run issue at the same moment go to PostgreSQL once.

    Every viewer of a run gets the same events at the same time and then reads the same deltas and
    message bodies: with fifty viewers, fifty identical queries (and as many pool round trips) at each
    step's end. Only a read still in flight is shared, never a finished one, and a delta read only with a
    viewer that subscribed before it began: the viewer then misses nothing it would not have missed with
    a read of its own (what the read can't see is announced to it).
    """

    def __init__(self) -> None:
        self._inflight: dict[tuple[Any, ...], tuple[float, asyncio.Task[Any]]] = {}

    async def get(self, key: tuple[Any, ...], since: float, fetch: Callable[[], Coroutine[Any, Any, T]]) -> T:
        entry = self._inflight.get(key)
        if entry is None or entry[0] < since:
            loop = asyncio.get_running_loop()
            entry = (loop.time(), loop.create_task(fetch()))
            self._inflight[key] = entry
            entry[1].add_done_callback(lambda task: self._done(key, task))
        # Shielded: a viewer that goes away must not cancel the read the others wait for.
        return await asyncio.shield(entry[1])

    def _done(self, key: tuple[Any, ...], task: asyncio.Task[Any]) -> None:
        if self._inflight.get(key, (0.0, None))[1] is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved here: every viewer waiting for it may have gone


_READS = _SharedReads()


async def _ended_from_outside(handle: WorkflowHandle[Any, Any], seq: int) -> RunFinished:
    status, detail = ended_outside((await handle.describe()).status)
    return RunFinished(seq=seq, status=status, detail=detail)


@dataclass(frozen=True)
class Chunk:
    """A chunk of the run's stream and its id there (the SSE event's `id:`); None for a sub-agent's
    progress, which is sent again whole rather than resumed."""

    id: int | None
    body: ui.UIMessageChunk


@dataclass(frozen=True)
class SegmentEnd:
    """The stream paused after waiting event `seq`; the next segment begins here."""

    seq: int


@dataclass(frozen=True)
class StreamStart:
    """Where a response begins: the run's first segment (the default), right after the chunk with id
    `after_id` (Last-Event-ID), or the segment that begins after the pause at waiting event `after_pause`.
    With `to_the_end`, the response goes on through every later segment to the run's end, as one message
    (the answer to a resubmission that reaches a run which has finished)."""

    after_id: int | None = None
    after_pause: int | None = None
    to_the_end: bool = False


@dataclass(frozen=True)
class _Events:
    events: list[RunEvent]


@dataclass(frozen=True)
class _Progressed:
    """A followed sub-agent's run has something new to show, for the call `tool_call_id`."""

    tool_call_id: str


class RunStream:
    """One run's chunks, merged from its workflow events and its token deltas (see the module's docs)."""

    def __init__(
        self,
        handle: WorkflowHandle[Any, Any],
        store: RunStore,
        deltas: DeltaChannel,
        agent_run_id: str,
        watchers: RunWatchers | None = None,
        open_run: Callable[[str], WorkflowHandle[Any, Any]] | None = None,
    ) -> None:
        self.handle = handle
        self.store = store
        self.deltas = deltas
        self.agent_run_id = agent_run_id
        # Shared with the other streams of this process; None: this stream follows the run on its own.
        self.watchers = watchers
        # How to reach another run, to follow this one's sub-agents; None: their progress is not shown.
        self.open_run = open_run
        self._subscribed = float("inf")  # when this stream began hearing of new deltas

    async def chunks(self) -> AsyncGenerator[Chunk | SegmentEnd, None]:
        """The run's whole stream from its beginning, live until the run finishes."""
        translator = _Translator(self.agent_run_id)
        for opening in translator.opening():
            yield opening
        queue: asyncio.Queue[object] = asyncio.Queue(maxsize=VIEWER_QUEUE)
        # Subscribed before anything is read, so every delta is either in the log by the time it is read
        # or announced to this stream afterwards.
        subscription = await self.deltas.subscribe(self.agent_run_id, queue)
        self._subscribed = asyncio.get_running_loop().time()
        pump = asyncio.create_task(self._pump(queue))
        followers: dict[str, SubRunFollower] = {}
        try:
            # The events its model calls announced: a run answering in a local activity takes no query until
            # that workflow task ends, and a viewer joining now need not wait for it.
            if announced := _contiguous(await self.deltas.read_events(self.agent_run_id)):
                for chunk in await self._events(translator, announced):
                    yield chunk
            while not translator.finished:
                item = await queue.get()
                out: list[Chunk | SegmentEnd] = []
                if subscription.overflowed:
                    # This viewer fell behind and lost notifications: catch up from the log.
                    subscription.overflowed = False
                    out += await self._catch_up(translator)
                if isinstance(item, _Events):
                    out += await self._events(translator, item.events)
                elif isinstance(item, DeltaBatch):
                    out += await self._batch(translator, item)
                elif item is RESYNC:
                    out += await self._catch_up(translator)
                elif isinstance(item, _Progressed):
                    follower = followers.get(item.tool_call_id)
                    out += [] if follower is None else translator.progress(follower)
                elif isinstance(item, BaseException):
                    raise item
                out += self._follow_sub_runs(translator, followers, queue, reopened=_opens(out))
                for chunk in out:
                    yield chunk
        finally:
            # No awaiting here: this also runs when a client that went away cancels the stream.
            pump.cancel()
            subscription.close()
            for follower in followers.values():
                follower.stop()

    def _follow_sub_runs(
        self,
        translator: "_Translator",
        followers: dict[str, SubRunFollower],
        queue: asyncio.Queue[object],
        *,
        reopened: bool,
    ) -> list[Chunk | SegmentEnd]:
        """Follow the children of the calls now open, stop following the others; a new segment begins
        with the latest progress of each child still followed."""
        if self.open_run is None:
            return []
        for call_id in [c for c in followers if c not in translator.sub_runs]:
            followers.pop(call_id).stop()
        for call_id, started in translator.sub_runs.items():
            if call_id not in followers:
                followers[call_id] = SubRunFollower(
                    started, self._child_chunks(started.agent_run_id), lambda c: queue.put(_Progressed(c))
                )
        return [c for f in followers.values() if reopened for c in translator.progress(f)]

    async def _child_chunks(self, agent_run_id: str) -> AsyncIterator[ui.UIMessageChunk]:
        """A child run's chunks, from its start to its end, across its pauses."""
        assert self.open_run is not None
        child = RunStream(
            self.open_run(agent_run_id), self.store, self.deltas, agent_run_id, self.watchers, self.open_run
        )
        async for item in child.chunks():
            if isinstance(item, Chunk):
                yield item.body

    async def _pump(self, queue: asyncio.Queue[object]) -> None:
        batches = follow_run(self.handle) if self.watchers is None else self.watchers.follow(self.handle)
        try:
            async for events in batches:
                await queue.put(_Events(events))
        except Exception as err:  # handed to the stream, which reports it to its client
            await queue.put(err)

    async def _events(
        self, translator: "_Translator", events: list[RunEvent], opening: DeltaBatch | None = None
    ) -> list[Chunk | SegmentEnd]:
        """The events' chunks. A step started here reads its words so far from the log, unless `opening`
        is the notification that opens the step's first attempt: the log then holds nothing before it."""
        seqs = [e.message_seq for e in events if isinstance(e, TextProduced | ToolResultReady)]
        seqs += [
            e.partial_message_seq for e in events if isinstance(e, RunFinished) and e.partial_message_seq
        ]
        # Structured output: the reply that holds the run's validated answer.
        seqs += [e.output_seq for e in events if isinstance(e, RunFinished) and e.output_seq is not None]
        bodies = await self._messages(seqs) if seqs else {}
        out: list[Chunk | SegmentEnd] = []
        for event in events:
            if event.seq <= translator.seq:
                if not isinstance(event, RunFinished):
                    continue  # a step start this stream learnt of from the step's first delta
                # The run ended from outside before the events query told of that step's start.
                event = event.model_copy(update={"seq": translator.seq + 1})
            if translator.call is not None:
                # This event ends the step's LLM call, whose deltas are all stored by now: take the rest.
                out += translator.deltas(await self._read(translator.call))
            out += translator.event(event, bodies)
            if isinstance(event, StepStarted) and _opens_step(opening, event.step):
                assert opening is not None
                out += translator.deltas(opening.deltas())
            elif isinstance(event, StepStarted):
                out += translator.deltas(await self._read(_Call(event.step), start=True))
        out += translator.batch_end()
        return out

    async def _batch(self, translator: "_Translator", batch: DeltaBatch) -> list[Chunk | SegmentEnd]:
        unseen = [e for e in batch.events if e.seq > translator.seq]
        if unseen and unseen[0].seq == translator.seq + 1 and not translator.finished:
            # A local model call announcing the events of the workflow task it runs in, which the `events`
            # query serves only once that task ends: they are the same events, streamed now. The step
            # they start reads its words from the log.
            return await self._events(translator, unseen, opening=batch)
        call = translator.call
        if call is None and not translator.finished and 0 < batch.event_seq == translator.seq + 1:
            # The step's first words, before the events query has told of its start: the delta names the
            # event that started the step, and every event before that one has been streamed already.
            started = StepStarted(seq=batch.event_seq, step=batch.step)
            if _opens_step(batch, batch.step):
                # The batch opens the step's first attempt, so the log holds nothing before it: skip
                # reading it (a thousand viewers of a run would all read it at the same moment).
                out = translator.event(started, {}) + translator.deltas(batch.deltas())
                return out + translator.batch_end()
            return await self._events(translator, [started])
        if call is None or batch.step != call.step:
            return []  # a step not started here yet (read from the log when it is) or already over
        attempt, n = call.position
        if batch.texts is None or batch.attempt != attempt or batch.first_n > n + 1:
            # Too large to notify, a new attempt, or a gap: the log has it all, in order.
            return translator.deltas(await self._read(call))
        return translator.deltas(batch.deltas())

    async def _catch_up(self, translator: "_Translator") -> list[Chunk | SegmentEnd]:
        return [] if translator.call is None else translator.deltas(await self._read(translator.call))

    async def _read(self, call: "_Call", *, start: bool = False) -> list[Delta]:
        """The step's deltas after the call's position (from the step's first, with `start`)."""
        after = None if start else call.position
        return await _READS.get(
            ("deltas", id(self.deltas), self.agent_run_id, call.step, after),
            self._subscribed,
            lambda: self.deltas.read(self.agent_run_id, call.step, after),
        )

    async def _messages(self, seqs: list[int]) -> dict[int, Message]:
        # Stored before any event names them and never changed after: any read in flight will do.
        return await _READS.get(
            ("messages", id(self.store), self.agent_run_id, tuple(seqs)),
            0.0,
            lambda: self.store.messages(self.agent_run_id, seqs),
        )


async def segment(stream: RunStream, start: StreamStart) -> AsyncIterator[Chunk]:
    """The chunks of one segment of the run's stream, from `start` to the segment's end (or, with
    `start.to_the_end`, to the run's end)."""
    chunks = stream.chunks()
    try:
        if start.to_the_end and start.after_pause is not None:
            rest = _after_pause(chunks, start.after_pause)
            async for chunk in _one_message(rest, ends=lambda _: False):
                yield chunk
            return
        started = start.after_id is None and start.after_pause is None
        emitted = False
        last_id = -1  # the last chunk with an id so far
        async for item in chunks:
            if isinstance(item, SegmentEnd):
                if emitted:
                    return
                if item.seq == start.after_pause:
                    started = True
                continue
            if not started:
                if start.after_id is None:
                    continue
                if item.id is None:
                    # A sub-agent's progress: it comes once the replay has caught up, so it belongs to the
                    # response as soon as the chunk the client had last is behind.
                    if last_id < start.after_id:
                        continue
                elif item.id <= start.after_id:
                    last_id = item.id
                    continue
                started = True
            emitted = True
            yield item
    finally:
        await chunks.aclose()


def pause_points(events: Sequence[RunEvent]) -> list[int]:
    """The seqs at which the stream pauses: the last waiting event of each group of consecutive ones."""
    return [
        e.seq
        for i, e in enumerate(events)
        if isinstance(e, WAITING_EVENTS)
        and not (i + 1 < len(events) and isinstance(events[i + 1], WAITING_EVENTS))
    ]


def pause_after(events: Sequence[RunEvent], seq: int) -> int:
    """The pause that ends the segment in which waiting event `seq` was streamed."""
    return next(p for p in pause_points(events) if p >= seq)


async def whole_message(stream: RunStream, last_pause: int | None, waiting: bool) -> AsyncIterator[Chunk]:
    """The run's assistant message from its start as one UI message stream, for the AI SDK's resume,
    which rebuilds the message from scratch: through the pauses the run has passed, to the end of the
    segment now active (the one that asked, when the run waits at `last_pause`)."""

    def ends(pause: int) -> bool:
        if waiting and last_pause is not None:
            return pause == last_pause
        return last_pause is None or pause > last_pause

    chunks = stream.chunks()
    try:
        async for chunk in _one_message(chunks, ends):
            yield chunk
    finally:
        await chunks.aclose()


async def _after_pause(
    items: AsyncIterator[Chunk | SegmentEnd], pause: int
) -> AsyncIterator[Chunk | SegmentEnd]:
    """What comes after the pause at waiting event `pause`."""
    passed = False
    async for item in items:
        if passed:
            yield item
        elif isinstance(item, SegmentEnd) and item.seq == pause:
            passed = True


async def _one_message(
    items: AsyncIterator[Chunk | SegmentEnd], ends: Callable[[int], bool]
) -> AsyncIterator[Chunk]:
    """Segments joined into one UI message stream, up to the first pause for which `ends` is true (or the
    run's end). Each pause passed loses its `finish` and the next segment its `start`, so there is one of
    each; ids stay what they are."""
    held: Chunk | None = None  # a `finish`, sent only if the message ends with it
    started = False
    async for item in items:
        if isinstance(item, SegmentEnd):
            if ends(item.seq):
                break
            held = None
            continue
        if held is not None:
            yield held
            held = None
        if isinstance(item.body, ui.FinishChunk):
            held = item
        elif not isinstance(item.body, ui.StartChunk) or not started:
            started = True
            yield item
    if held is not None:
        yield held


@dataclass
class _Call:
    """The LLM call of the step in progress: from its `step_started` event to the event after it."""

    step: int
    # The last delta taken, as (attempt, n); deltas of attempt 1 start at n = 0.
    position: tuple[int, int] = (1, -1)
    attempt: int = 0
    part: str | None = None
    streamed: list[str] = field(default_factory=list)


_Awaiting = Literal["running", "approval", "denied", "answer", "client"]

_UNFINISHED: dict[str, str] = {
    "running": "did not finish",
    "answer": "got no answer",
    "client": "got no result from the client",
}


@dataclass
class _OpenCall:
    """A tool call the stream has shown without its outcome, and what it waits for."""

    tool_name: str
    awaiting: _Awaiting

    def unfinished(self, status: RunStatus, detail: str | None) -> str:
        """Why the call has no result, for its `tool-output-error` when the run ends without one."""
        why = f"{self.tool_name} {_UNFINISHED[self.awaiting]}: the run ended as {status.value}"
        return why + (f" ({detail})" if detail else "")


class _Translator:
    """Run events and deltas to numbered UI message stream chunks, keeping steps and text parts balanced.

    Pure and deterministic: given the same events and deltas it produces the same chunks with the same ids,
    whichever order live notifications happened to arrive in.
    """

    def __init__(self, agent_run_id: str) -> None:
        self.agent_run_id = agent_run_id
        self.seq = 0
        self.index = 0
        self.in_step = False
        # Whether the client's last step (from its latest `start-step`) shows tool calls.
        self.tools_in_step = False
        self.call: _Call | None = None
        # Tool calls streamed without an outcome yet, in the order they were made: what each waits for.
        self.open_calls: dict[str, _OpenCall] = {}
        # The open calls that run a sub-agent, and the child run of each.
        self.sub_runs: dict[str, SubRunStarted] = {}
        self.waiting: list[RunEvent] = []
        # After a pause the next segment opens with the next event, not while the run still waits.
        self.reopen = False
        self.finished = False

    def opening(self) -> list[Chunk]:
        """What every segment begins with: `start`, and the run's id and status."""
        return [
            self._chunk(ui.StartChunk(message_id=self.agent_run_id)),
            self._chunk(_run_data(self.agent_run_id, RunStatus.running, None)),
        ]

    def event(self, event: RunEvent, bodies: dict[int, Message]) -> list[Chunk | SegmentEnd]:
        out: list[Chunk | SegmentEnd] = []
        if self.waiting and not isinstance(event, WAITING_EVENTS):
            out += self._pause()
        if self.reopen:
            self.reopen = False
            out += self.opening()
        self.seq, self.index = event.seq, 0
        # The first event after a step's start ends its LLM call. A text part still open then is completed
        # by the reply's text (or the text of a reply cut short); otherwise it is simply ended.
        call, self.call = self.call, None
        if not isinstance(event, TextProduced | RunFinished):
            out += self._end_part(call)
        match event:
            case StepStarted(step=step):
                self.in_step, self.tools_in_step = True, False
                out.append(self._chunk(ui.StartStepChunk()))
                self.call = _Call(step)
            case TextProduced(step=step, message_seq=seq):
                out += self._final_text(call or _Call(step), _body(bodies, seq).content, seq)
            case ToolCallRequested(call=tool_call):
                # ask_user is answered by the user, every other call by its tool (or after an approval).
                awaiting: _Awaiting = "answer" if tool_call.name == ASK_USER_TOOL else "running"
                self.open_calls[tool_call.id] = _OpenCall(tool_call.name, awaiting)
                self.tools_in_step = True
                out.append(
                    self._chunk(
                        ui.ToolInputAvailableChunk(
                            tool_call_id=tool_call.id, tool_name=tool_call.name, input=tool_call.arguments
                        )
                    )
                )
            case ApprovalRequested(tool_call_id=call_id):
                self._waits(call_id, "approval")
                self.waiting.append(event)
                out.append(
                    self._chunk(ui.ToolApprovalRequestChunk(approval_id=call_id, tool_call_id=call_id))
                )
            case SubRunStarted(tool_call_id=call_id):
                self.sub_runs[call_id] = event
                first = ui.SubRunProgress(
                    agent_run_id=event.agent_run_id,
                    agent=event.agent,
                    status=RunStatus.running,
                    detail=None,
                    parts=[],
                )
                out.append(self._chunk(_progress_chunk(call_id, first)))
            case HandedOff():
                # Inline where it falls: the agent speaking from here on (Agent(handoffs=...)).
                handoff = ui.HandoffData(
                    from_agent=event.from_agent,
                    to_agent=event.to_agent,
                    title=event.to_title or event.to_agent,
                )
                out.append(self._chunk(ui.HandoffDataChunk(id=f"handoff-{event.seq}", data=handoff)))
            case ToolResultReady(tool_call_id=call_id, message_seq=seq, is_error=is_error, denied=denied):
                self.open_calls.pop(call_id, None)
                self.sub_runs.pop(call_id, None)
                if denied:
                    out.append(self._chunk(ui.ToolOutputDeniedChunk(tool_call_id=call_id)))
                elif is_error:
                    text = _body(bodies, seq).content
                    out.append(self._chunk(ui.ToolOutputErrorChunk(tool_call_id=call_id, error_text=text)))
                else:
                    output = _output(_body(bodies, seq).content)
                    out.append(self._chunk(ui.ToolOutputAvailableChunk(tool_call_id=call_id, output=output)))
            case StepFinished():
                out += self._end_step()
            case RunFinished():
                out += self._run_finished(event, call, bodies)
            case ApprovalDecided(tool_call_id=call_id, approved=approved):
                # No chunk of its own: the outcome follows (the tool's result, or tool-output-denied).
                self._waits(call_id, "running" if approved else "denied")
            case QuestionAsked(tool_call_id=call_id) | ClientToolRequested(tool_call_id=call_id):
                # No chunk of their own: the client sees the tool call, and the pause says what it waits for.
                self._waits(call_id, "answer" if isinstance(event, QuestionAsked) else "client")
                self.waiting.append(event)
        return out

    def _run_finished(
        self, event: RunFinished, call: _Call | None, bodies: dict[int, Message]
    ) -> list[Chunk | SegmentEnd]:
        """The run's last chunks: its text cut short, an outcome for every call still open, why it ended,
        its final status, `finish`."""
        status, detail, partial = event.status, event.detail, event.partial_message_seq
        partial_text = bodies[partial].content if partial is not None and partial in bodies else ""
        out: list[Chunk | SegmentEnd] = []
        if partial is not None and partial_text:
            # A reply cut short (cancelled, out of time): complete what was streamed of it.
            out += self._final_text(call or _Call(0), partial_text, partial)
        else:
            out += self._end_part(call)
        out += self._close_open_calls(status, detail)
        out += self._end_step()
        # Budgets, limits, stop conditions and cancellation end the run with a message a person can read (a
        # failure has its `error` chunk instead), in a step of its own. A client's last step then never ends
        # with tool calls that all have outcomes, which the AI SDK's lastAssistantMessageIsCompleteWith…
        # helpers take for a step that waits for the model, and resubmit.
        notice = f"[{status.value}] {detail}" if detail and status is not RunStatus.failed else None
        if notice or self.tools_in_step:
            out.append(self._chunk(ui.StartStepChunk()))
            out += self._text(f"notice-{event.seq}", notice) if notice else []
            out.append(self._chunk(ui.FinishStepChunk()))
        out.append(self._chunk(_run_data(self.agent_run_id, status, detail)))
        if status is RunStatus.failed:
            out.append(self._chunk(ui.ErrorChunk(error_text=detail or "the run failed")))
        answer = bodies.get(event.output_seq) if event.output_seq is not None else None
        if answer is not None and answer.output is not None:
            # Structured output: the run's validated answer, last before `finish`.
            out.append(self._chunk(ui.OutputDataChunk(id=self.agent_run_id, data=answer.output)))
        out.append(self._chunk(ui.FinishChunk(finish_reason=_FINISH_REASONS.get(status, "other"))))
        self.finished = True
        return out

    def _waits(self, call_id: str, what: "_Awaiting") -> None:
        if call_id in self.open_calls:
            self.open_calls[call_id].awaiting = what

    def _close_open_calls(self, status: RunStatus, detail: str | None) -> list[Chunk | SegmentEnd]:
        """The run has ended: every tool call still open gets its last chunk, so no client holds a call
        that waits for ever (an AI SDK client resubmits while an approval response has no outcome)."""
        out: list[Chunk | SegmentEnd] = []
        for call_id, open_call in self.open_calls.items():
            if open_call.awaiting in ("approval", "denied"):
                out.append(self._chunk(ui.ToolOutputDeniedChunk(tool_call_id=call_id)))
            else:
                text = open_call.unfinished(status, detail)
                out.append(self._chunk(ui.ToolOutputErrorChunk(tool_call_id=call_id, error_text=text)))
        self.open_calls.clear()
        self.sub_runs.clear()
        return out

    def progress(self, follower: SubRunFollower) -> list[Chunk | SegmentEnd]:
        """A followed child's progress, as its call's preliminary output, while the call is open and a
        segment is: between segments no response is open to take it (the next one begins with it)."""
        call_id = follower.started.tool_call_id
        if call_id not in self.sub_runs or self.reopen or self.finished:
            return []
        return [Chunk(None, _progress_chunk(call_id, follower.progress()))]

    def batch_end(self) -> list[Chunk | SegmentEnd]:
        """A step emits its waiting events all at once, so a batch that ends with some ends their group."""
        return self._pause() if self.waiting and not self.finished else []

    def deltas(self, deltas: Sequence[Delta]) -> list[Chunk | SegmentEnd]:
        call = self.call
        out: list[Chunk | SegmentEnd] = []
        for delta in deltas:
            if call is None or delta.step != call.step or delta.position <= call.position:
                continue  # another step's, or taken already (from a notification, or the log)
            call.position = delta.position
            if delta.attempt != call.attempt:
                discarded = call.part
                out += self._end_part(call)
                if delta.attempt > 1:
                    out.append(self._retry(call.step, delta.attempt, discarded))
                call.attempt = delta.attempt
            if delta.text:
                if call.part is None:
                    call.part = _part_id(delta.reply_seq, delta.attempt)
                    out.append(self._chunk(ui.TextStartChunk(id=call.part)))
                out.append(self._chunk(ui.TextDeltaChunk(id=call.part, delta=delta.text)))
                call.streamed.append(delta.text)
        return out

    def _final_text(self, call: _Call, text: str, reply_seq: int) -> list[Chunk | SegmentEnd]:
        """The reply's whole text is known: finish the part that streamed it, sending only what is missing."""
        out: list[Chunk | SegmentEnd] = []
        if call.part is not None:
            streamed = "".join(call.streamed)
            if text.startswith(streamed):
                if rest := text[len(streamed) :]:
                    out.append(self._chunk(ui.TextDeltaChunk(id=call.part, delta=rest)))
                out += self._end_part(call)
                return out
            # What was streamed is not how the reply begins (an attempt that could not announce itself):
            # discard it and send the reply whole.
            discarded = call.part
            out += self._end_part(call)
            out.append(self._retry(call.step, None, discarded))
            return out + self._text(f"text-{reply_seq}-final", text)
        return out + self._text(_part_id(reply_seq, call.attempt), text)

    def _end_part(self, call: _Call | None) -> list[Chunk | SegmentEnd]:
        if call is None or call.part is None:
            return []
        part, call.part, call.streamed = call.part, None, []
        return [self._chunk(ui.TextEndChunk(id=part))]

    def _retry(self, step: int, attempt: int | None, discarded: str | None) -> Chunk:
        return self._chunk(
            ui.RetryDataChunk(
                id=f"retry-{step}-{attempt or 'final'}",
                data=ui.RetryData(step=step, attempt=attempt, discarded_text_id=discarded),
            )
        )

    def _pause(self) -> list[Chunk | SegmentEnd]:
        group, self.waiting, self.reopen = self.waiting, [], True
        if any(isinstance(e, ApprovalRequested) for e in group):
            status = RunStatus.waiting_for_approval
        elif any(isinstance(e, QuestionAsked) for e in group):
            status = RunStatus.waiting_for_input
        else:
            status = RunStatus.waiting_for_tool_result
        return [
            *self._end_step(),
            self._chunk(_run_data(self.agent_run_id, status, None)),
            self._chunk(ui.FinishChunk(finish_reason="tool-calls")),
            SegmentEnd(group[-1].seq),
        ]

    def _end_step(self) -> list[Chunk | SegmentEnd]:
        if not self.in_step:
            return []
        self.in_step = False
        return [self._chunk(ui.FinishStepChunk())]

    def _text(self, part_id: str, text: str) -> list[Chunk | SegmentEnd]:
        return [
            self._chunk(ui.TextStartChunk(id=part_id)),
            self._chunk(ui.TextDeltaChunk(id=part_id, delta=text)),
            self._chunk(ui.TextEndChunk(id=part_id)),
        ]

    def _chunk(self, body: ui.UIMessageChunk) -> Chunk:
        chunk = Chunk(self.seq * ID_SPAN + self.index, body)
        self.index += 1
        return chunk


_FINISH_REASONS: dict[RunStatus, ui.FinishReason] = {
    RunStatus.completed: "stop",
    RunStatus.failed: "error",
}


def _opens(out: Sequence[Chunk | SegmentEnd]) -> bool:
    """Whether these chunks begin a segment."""
    return any(isinstance(c, Chunk) and isinstance(c.body, ui.StartChunk) for c in out)


def _progress_chunk(call_id: str, progress: ui.SubRunProgress) -> ui.ToolOutputAvailableChunk:
    return ui.ToolOutputAvailableChunk(tool_call_id=call_id, output=progress.wire(), preliminary=True)


def _part_id(reply_seq: int, attempt: int) -> str:
    return f"text-{reply_seq}" if attempt <= 1 else f"text-{reply_seq}-{attempt}"


def _run_data(agent_run_id: str, status: RunStatus, detail: str | None) -> ui.RunDataChunk:
    """A `data-run` part: the run's id and status, replaced in place as it changes."""
    return ui.RunDataChunk(
        id=agent_run_id, data=ui.RunData(agent_run_id=agent_run_id, status=status, detail=detail)
    )


def _body(bodies: dict[int, Message], seq: int) -> Message:
    message = bodies.get(seq)
    if message is None:
        # The activity stores the body before the workflow hears of it, so this means lost data.
        raise LookupError(f"message {seq} of the run is missing from PostgreSQL")
    return message


def _output(content: str) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        return content
