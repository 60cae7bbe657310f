"""Live token deltas, out of band: from the `call_llm` activity to every gateway streaming the run.

Tokens never enter Temporal history (it grows per step, never per token). The activity hands each text
delta to a `DeltaWriter`, which batches them and publishes through a `DeltaChannel`; gateways subscribe
to the run on the channel and also `read` its log to replay what a reconnecting client missed.

A delta is addressed by (step, attempt, n): the run's step (one LLM call per step), Temporal's attempt
number of that call, and its number within the attempt. A retried attempt starts with an empty marker
delta (n = 0, no text), so gateways learn of the retry at once and can restart that text part cleanly.
Once an attempt has begun, deltas of earlier attempts of the same step are refused (a zombie attempt
that is still talking after Temporal gave up on it cannot add text anyone sees).

`PostgresDeltaChannel` needs no new infrastructure: each batch is one statement that inserts the rows into
`run_deltas` (the replay log) and NOTIFYs channel `keel_deltas:<agent_run_id>` with the texts. NOTIFY
payloads are limited to 8000 bytes, so a batch too large for one carries only its address and
subscribers read its text from the table. One LISTEN connection per gateway process serves every stream
in that process, fanned out in memory to bounded per-viewer queues: a slow viewer loses notifications
(and then reads the log), it never blocks the others or the publisher. Redis Streams or NATS JetStream
can replace it behind the same `DeltaChannel` protocol (publish + read + subscribe).
"""

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

import asyncpg
from pydantic import TypeAdapter

from keel.contracts import LlmStepInput, RunEvent

log = logging.getLogger("keel.storage.deltas")

# NOTIFY refuses payloads of 8000 bytes or more; stay clear of it.
NOTIFY_LIMIT = 7900
# One row holds at most this many characters, so a long burst of text still replays in pieces.
MAX_ROW_CHARS = 1000
# Per viewer: notifications waiting to be streamed. Past this the viewer catches up from the log.
VIEWER_QUEUE = 1000
_CHANNEL_PREFIX = "keel_deltas:"


@dataclass(frozen=True)
class Delta:
    step: int
    attempt: int
    n: int
    # The seq under which the step's reply will be stored (the text part's id is derived from it).
    reply_seq: int
    # Empty for the marker that opens a retried attempt.
    text: str

    @property
    def position(self) -> tuple[int, int]:
        return (self.attempt, self.n)


@dataclass(frozen=True)
class DeltaBatch:
    """Consecutive deltas of one attempt, as published together. `texts` is None when a notification was
    too large to carry them: read them from the log."""

    agent_run_id: str
    step: int
    attempt: int
    first_n: int
    reply_seq: int
    texts: tuple[str, ...] | None
    # The seq of the step's `step_started` event, when the writer knew it (0: unknown).
    event_seq: int = 0
    # Run events a local call announces before its first words (LlmStepInput.events); only ever in the
    # notification, never in the log: a gateway that misses them hears of them from the `events` query.
    events: tuple[RunEvent, ...] = ()

    @property
    def count(self) -> int:
        return len(self.texts or ())

    def deltas(self) -> list[Delta]:
        return [
            Delta(self.step, self.attempt, self.first_n + i, self.reply_seq, text)
            for i, text in enumerate(self.texts or ())
        ]


# A queue item asking the stream to read the log: notifications may have been lost (reconnect).
RESYNC = object()


@dataclass(eq=False)
class Subscription:
    """One viewer of one run. The channel offers it batches without ever waiting: when its queue is full
    the batch is dropped and `overflowed` says the viewer must read the log to catch up."""

    agent_run_id: str
    queue: asyncio.Queue[object]
    overflowed: bool = False
    _on_close: Callable[[], None] | None = field(default=None, repr=False)

    def offer(self, item: object) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.overflowed = True

    def close(self) -> None:
        """Synchronous, so it also works from a cancelled task (a client that went away)."""
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()


class DeltaChannel(Protocol):
    """Where token deltas go: published by activities, followed and replayed by gateways."""

    # Seconds a writer waits after the first delta of a batch before publishing it (0: at once).
    batch_window: float

    async def publish(self, batch: DeltaBatch) -> bool:
        """Store and announce a batch. False when a later attempt of the same step has begun (the batch is
        then dropped, and the writer should stop)."""
        ...

    async def read(self, agent_run_id: str, step: int, after: tuple[int, int] | None = None) -> list[Delta]:
        """The step's deltas after position (attempt, n), in order."""
        ...

    async def last_attempt(self, agent_run_id: str, step: int) -> int:
        """The highest attempt of the step that has published anything (0: none)."""
        ...

    async def read_events(self, agent_run_id: str, after: int = 0) -> list[RunEvent]:
        """The run events announced with deltas (DeltaBatch.events) with seq > after, in order."""
        ...

    async def subscribe(self, agent_run_id: str, queue: asyncio.Queue[object]) -> Subscription:
        """Deliver the run's batches into `queue` from now on, until the subscription is closed."""
        ...

    async def close(self) -> None: ...


class DeltaWriter:
    """The activity's side: `write` never waits. Batches go out one at a time; whatever arrives while one
    is being published goes out in the next, so batches grow only when the channel is the bottleneck."""

    def __init__(
        self,
        channel: "DeltaChannel",
        agent_run_id: str,
        step: int,
        reply_seq: int,
        attempt: int,
        event_seq: int = 0,
        events: Sequence[RunEvent] = (),
    ) -> None:
        self._channel = channel
        self._address = (agent_run_id, step, reply_seq, attempt)
        self._event_seq = event_seq
        self._buffer: list[str] = []
        self._next_n = 0
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        # A retried attempt announces itself before it has written anything, and so do the events it carries.
        self._marker = attempt > 1
        self._events = tuple(events)
        if self._marker or self._events:
            self._kick()

    @classmethod
    def for_llm_step(cls, channel: "DeltaChannel", step: LlmStepInput, attempt: int) -> "DeltaWriter":
        return cls(
            channel, step.agent_run_id, step.step, step.reply_seq, attempt, step.step_event_seq, step.events
        )

    def write(self, text: str) -> None:
        if text and not self._stopped:
            self._buffer.append(text)
            self._kick()

    async def close(self) -> None:
        """Wait until everything written is published (or given up on). Safe to call twice."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    def _kick(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        if self._channel.batch_window > 0:
            await asyncio.sleep(self._channel.batch_window)
        while (self._buffer or self._marker or self._events) and not self._stopped:
            texts = [""] if self._marker else []
            texts += _pieces("".join(self._buffer), MAX_ROW_CHARS)
            self._buffer.clear()
            agent_run_id, step, reply_seq, attempt = self._address
            batch = DeltaBatch(
                agent_run_id,
                step,
                attempt,
                self._next_n,
                reply_seq,
                tuple(texts),
                self._event_seq,
                self._events,
            )
            self._events = ()
            try:
                accepted = await self._channel.publish(batch)
            except Exception as err:  # live text is best effort: the final reply still reaches every client
                log.warning("token deltas of %s step %d stopped: %s", agent_run_id, step, err)
                self._stopped = True
                return
            self._marker = False
            self._next_n += len(texts)
            if not accepted:
                log.warning(
                    "%s step %d attempt %d was superseded; its deltas stop", agent_run_id, step, attempt
                )
                self._stopped = True


class NullDeltaChannel:
    """No live deltas (tests that run activities without a gateway): clients get each reply in one piece."""

    batch_window = 0.0

    async def publish(self, batch: DeltaBatch) -> bool:
        return True

    async def read(self, agent_run_id: str, step: int, after: tuple[int, int] | None = None) -> list[Delta]:
        return []

    async def last_attempt(self, agent_run_id: str, step: int) -> int:
        return 0

    async def read_events(self, agent_run_id: str, after: int = 0) -> list[RunEvent]:
        return []

    async def subscribe(self, agent_run_id: str, queue: asyncio.Queue[object]) -> Subscription:
        return Subscription(agent_run_id, queue)

    async def close(self) -> None:
        pass


NO_DELTAS = NullDeltaChannel()

# One statement, one round trip. Deltas are not worth waiting for the disk: the commit does not wait for its
# WAL flush (a crash may lose the last few; the final reply is stored durably in run_messages anyway).
_PUBLISH = """
WITH async_commit AS (
    SELECT set_config('synchronous_commit', 'off', true)
), fence AS (
    SELECT NOT EXISTS (
        SELECT 1 FROM run_deltas WHERE agent_run_id = $1 AND step = $2 AND attempt > $3
    ) AS open
    FROM async_commit
), written AS (
    INSERT INTO run_deltas (agent_run_id, step, attempt, n, reply_seq, text)
    SELECT $1, $2, $3, $4 + t.i - 1, $5, t.text
    FROM fence, unnest($6::text[]) WITH ORDINALITY AS t(text, i)
    WHERE fence.open
    ON CONFLICT DO NOTHING
), announced AS (
    INSERT INTO run_events (agent_run_id, seq, body)
    SELECT $1, e.seq, e.body
    FROM fence, unnest($9::integer[], $10::text[]) AS e(seq, body)
    WHERE fence.open
    ON CONFLICT DO NOTHING
)
SELECT fence.open, CASE WHEN fence.open THEN pg_notify($7, $8) END FROM fence
"""


class PostgresDeltaChannel:
    """Deltas in table `run_deltas`, announced with NOTIFY. Publishing uses `pool`; subscribing opens one
    LISTEN connection to `listen_dsn` on first use, shared by every subscription of this process."""

    def __init__(
        self, pool: asyncpg.Pool, listen_dsn: str | None = None, *, batch_window: float = 0.0
    ) -> None:
        self.pool = pool
        self.batch_window = batch_window
        self._listen_dsn = listen_dsn
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()
        self._viewers: dict[str, set[Subscription]] = {}
        self._listening: set[str] = set()
        self._reconnect: asyncio.Task[None] | None = None
        self._closed = False

    # --- publishing (activities) ---

    async def publish(self, batch: DeltaBatch) -> bool:
        texts = list(batch.texts or ())
        payload = _payload(batch, texts)
        return bool(
            await self.pool.fetchval(
                _PUBLISH,
                batch.agent_run_id,
                batch.step,
                batch.attempt,
                batch.first_n,
                batch.reply_seq,
                texts,
                channel_name(batch.agent_run_id),
                payload,
                *_event_rows(batch.events),
            )
        )

    async def read_events(self, agent_run_id: str, after: int = 0) -> list[RunEvent]:
        rows = await self.pool.fetch(
            "SELECT body FROM run_events WHERE agent_run_id = $1 AND seq > $2 ORDER BY seq",
            agent_run_id,
            after,
        )
        return [_EVENT.validate_json(r["body"]) for r in rows]

    async def read(self, agent_run_id: str, step: int, after: tuple[int, int] | None = None) -> list[Delta]:
        attempt, n = after or (0, -1)
        rows = await self.pool.fetch(
            "SELECT attempt, n, reply_seq, text FROM run_deltas"
            " WHERE agent_run_id = $1 AND step = $2 AND (attempt, n) > ($3, $4) ORDER BY attempt, n",
            agent_run_id,
            step,
            attempt,
            n,
        )
        return [Delta(step, r["attempt"], r["n"], r["reply_seq"], r["text"]) for r in rows]

    async def last_attempt(self, agent_run_id: str, step: int) -> int:
        attempt = await self.pool.fetchval(
            "SELECT max(attempt) FROM run_deltas WHERE agent_run_id = $1 AND step = $2", agent_run_id, step
        )
        return int(attempt or 0)

    # --- subscribing (gateways) ---

    @property
    def viewers(self) -> int:
        """How many subscriptions this process holds (streams being served right now)."""
        return sum(len(s) for s in self._viewers.values())

    async def subscribe(self, agent_run_id: str, queue: asyncio.Queue[object]) -> Subscription:
        subscription = Subscription(agent_run_id, queue)
        subscription._on_close = lambda: self._unsubscribe(subscription)
        self._viewers.setdefault(agent_run_id, set()).add(subscription)
        try:
            # Shielded: a viewer that leaves mid-LISTEN must not leave the shared connection half-way.
            await asyncio.shield(asyncio.ensure_future(self._sync_listens()))
        except BaseException:
            subscription.close()
            raise
        return subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        viewers = self._viewers.get(subscription.agent_run_id)
        if viewers is not None:
            viewers.discard(subscription)
            if not viewers:
                del self._viewers[subscription.agent_run_id]
                if not self._closed:
                    asyncio.get_running_loop().create_task(self._sync_listens())

    async def _sync_listens(self) -> None:
        """LISTEN to exactly the runs someone here watches. Serialised: one connection, one query at a time."""
        async with self._lock:
            if self._closed:
                return
            try:
                conn = await self._connection()
                for run_id in set(self._viewers) - self._listening:
                    await conn.add_listener(channel_name(run_id), self._notified)
                    self._listening.add(run_id)
                for run_id in self._listening - set(self._viewers):
                    self._listening.discard(run_id)
                    await conn.remove_listener(channel_name(run_id), self._notified)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
                log.warning("delta listener: %s; reconnecting", err)
                self._lost()

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            if self._listen_dsn is None:
                raise RuntimeError(
                    "this PostgresDeltaChannel was made without a listen_dsn: it cannot subscribe"
                )
            self._conn = await asyncpg.connect(self._listen_dsn)
            self._conn.add_termination_listener(lambda _conn: self._lost())
            self._listening = set()
        return self._conn

    def _lost(self) -> None:
        """The LISTEN connection broke: notifications may be lost, so every viewer reads the log, and the
        connection is made again in the background."""
        if self._closed:
            return
        self._conn, self._listening = None, set()
        for viewers in self._viewers.values():
            for subscription in viewers:
                subscription.offer(RESYNC)
        if self._reconnect is None or self._reconnect.done():
            self._reconnect = asyncio.get_running_loop().create_task(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        delay = 0.1
        while not self._closed and self._viewers:
            await asyncio.sleep(delay)
            await self._sync_listens()
            if self._conn is not None and not self._conn.is_closed():
                for viewers in self._viewers.values():
                    for subscription in viewers:
                        subscription.offer(RESYNC)  # what was published while we were away
                return
            delay = min(delay * 2, 5.0)

    def _notified(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        agent_run_id = channel.removeprefix(_CHANNEL_PREFIX)
        viewers = self._viewers.get(agent_run_id)
        if not viewers:
            return
        try:
            batch = _parse(agent_run_id, payload)
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed delta notification on %s", channel)
            return
        for subscription in viewers:
            subscription.offer(batch)

    async def close(self) -> None:
        self._closed = True
        if self._reconnect is not None:
            self._reconnect.cancel()
        async with self._lock:
            if self._conn is not None and not self._conn.is_closed():
                with contextlib.suppress(Exception):
                    await self._conn.close(timeout=2)
            self._conn = None


async def store_events(pool: asyncpg.Pool, agent_run_id: str, events: Sequence[RunEvent]) -> None:
    """Store run events as a model call's announcement does (`run_events`): the run's record does it too,
    when the run starts waiting for someone (RunNote.events)."""
    if events:
        await pool.execute(
            "INSERT INTO run_events (agent_run_id, seq, body)"
            " SELECT $1, e.seq, e.body FROM unnest($2::integer[], $3::text[]) AS e(seq, body)"
            " ON CONFLICT DO NOTHING",
            agent_run_id,
            *_event_rows(events),
        )


def _event_rows(events: Sequence[RunEvent]) -> tuple[list[int], list[str]]:
    """Run events as `run_events` columns (seq, body), for `unnest`: one encoding for both writers."""
    return [e.seq for e in events], [_EVENT.dump_json(e).decode() for e in events]


# Rows of runs that finished before the cutoff, oldest first, a batch at a time (a run still waiting for an
# approval keeps its deltas however old they are).
_PRUNE = """
DELETE FROM {table} WHERE ctid = ANY(ARRAY(
    SELECT d.ctid FROM {table} d
    WHERE d.created_at < $1
      AND EXISTS (SELECT 1 FROM agent_runs r WHERE r.id = d.agent_run_id AND r.finished_at < $1)
    ORDER BY d.created_at
    LIMIT $2
))
"""


async def prune_deltas(pool: asyncpg.Pool, older_than: timedelta, batch: int = 10_000) -> int:
    """Delete the deltas of runs that finished more than `older_than` ago; returns how many rows went.

    The replay log is for clients that reconnect to a run; a finished run's replies are in run_messages,
    and its stream, replayed after pruning, sends each reply whole instead of in its original pieces. The
    events announced with the deltas go too: a finished run's events are in its history.
    """
    cutoff = datetime.now(UTC) - older_than
    deleted = 0
    for table in ("run_deltas", "run_events"):
        while True:
            status = await pool.execute(_PRUNE.format(table=table), cutoff, batch)
            count = int(status.split()[-1])
            deleted += count
            if count < batch:
                break
    return deleted


def channel_name(agent_run_id: str) -> str:
    # PostgreSQL channel names are identifiers: at most 63 bytes. Keel's run ids are 40 characters.
    return _CHANNEL_PREFIX + agent_run_id


_EVENTS = TypeAdapter(list[RunEvent])
_EVENT: TypeAdapter[RunEvent] = TypeAdapter(RunEvent)


def _payload(batch: DeltaBatch, texts: Sequence[str]) -> str:
    head: dict[str, object] = {
        "s": batch.step,
        "a": batch.attempt,
        "n": batch.first_n,
        "r": batch.reply_seq,
        "e": batch.event_seq,
    }
    if batch.events:
        with_events = {**head, "t": list(texts), "v": _EVENTS.dump_python(list(batch.events), mode="json")}
        payload = json.dumps(with_events, ensure_ascii=False, separators=(",", ":"))
        if len(payload.encode()) <= NOTIFY_LIMIT:
            return payload
        # Too large with its events: they wait for the `events` query.
    payload = json.dumps({**head, "t": list(texts)}, ensure_ascii=False, separators=(",", ":"))
    if len(payload.encode()) <= NOTIFY_LIMIT:
        return payload
    # Too large for NOTIFY: announce the address and how many rows; subscribers read them from the table.
    return json.dumps({**head, "c": len(texts)}, separators=(",", ":"))


def _parse(agent_run_id: str, payload: str) -> DeltaBatch:
    data = json.loads(payload)
    texts = data.get("t")
    return DeltaBatch(
        agent_run_id,
        int(data["s"]),
        int(data["a"]),
        int(data["n"]),
        int(data["r"]),
        None if texts is None else tuple(str(t) for t in texts),
        int(data.get("e", 0)),
        tuple(_EVENTS.validate_python(data.get("v", []))),
    )


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]
