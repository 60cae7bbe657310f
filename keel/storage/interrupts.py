"""A cancel that reaches the model call at once: out of band, through PostgreSQL NOTIFY.

Temporal tells a running activity it was cancelled only in the reply to its next heartbeat, and heartbeats
are throttled to one a second: a cancel sent while the model streams used to take up to a second or two to
stop it. The gateway now signals the run (the durable request, recorded in its history) and *then*
notifies channel `keel_interrupts` with the run's id; every agent worker listens on one connection, and the
`call_llm` attempt streaming that run's answer stops there, keeps what was written and returns its reply
marked `interrupted`. The workflow, which has the cancel signal by then, ends the run as cancelled.

Nothing depends on the notification arriving: a lost one (worker reconnecting, PostgreSQL away) leaves the
heartbeat path, which still cancels the call. Cancels from the Temporal CLI and Web UI take that path too.
"""

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import asyncpg

log = logging.getLogger("keel.storage.interrupts")

CHANNEL = "keel_interrupts"
_RECONNECT_SECONDS = 1.0


async def interrupt(pool: asyncpg.Pool, agent_run_id: str) -> None:
    """Tell every worker to stop the model call streaming for this run (after its cancel was signalled)."""
    await pool.execute("SELECT pg_notify($1, $2)", CHANNEL, agent_run_id)


class InterruptListener:
    """One LISTEN connection per worker; `watch(run)` gives an event set when the run is interrupted."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._watchers: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._listen())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @contextlib.contextmanager
    def watch(self, agent_run_id: str) -> Iterator[asyncio.Event]:
        event = asyncio.Event()
        self._watchers.setdefault(agent_run_id, set()).add(event)
        try:
            yield event
        finally:
            watchers = self._watchers.get(agent_run_id, set())
            watchers.discard(event)
            if not watchers:
                self._watchers.pop(agent_run_id, None)

    def _notified(self, _conn: object, _pid: int, _channel: str, agent_run_id: str) -> None:
        for event in self._watchers.get(agent_run_id, ()):
            event.set()

    async def _listen(self) -> None:
        """Stay subscribed: reconnect after a lost connection (cancels then fall back to heartbeats)."""
        while True:
            try:
                await self._listen_until_lost()
            except (OSError, asyncpg.PostgresError) as err:
                log.warning("not listening for interrupts (cancels wait for heartbeats): %s", err)
            finally:
                self.listening.clear()
            await asyncio.sleep(_RECONNECT_SECONDS)

    async def _listen_until_lost(self) -> None:
        conn = await asyncpg.connect(self._dsn)
        try:
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(CHANNEL, self._notified)
            self.listening.set()
            await lost.wait()
        finally:
            if not conn.is_closed():
                await conn.close(timeout=2)


class NoInterrupts:
    """Activities run without a listener (keel.testing, the benchmarks' in-process loop): never interrupted."""

    @contextlib.contextmanager
    def watch(self, agent_run_id: str) -> Iterator[asyncio.Event]:
        yield asyncio.Event()
