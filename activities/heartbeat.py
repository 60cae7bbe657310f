"""Heartbeats on a steady beat, whatever the activity is waiting for.

Temporal tells an activity it was cancelled only in the reply to a heartbeat, and marks a worker lost
when heartbeats stop. A model thinking before its first token, or a tool blocked in a thread, sends no
chunks, so a background beat keeps both signals prompt.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator

from temporalio import activity

BEAT_SECONDS = 1.0


@contextlib.asynccontextmanager
async def heartbeating(interval: float = BEAT_SECONDS) -> AsyncIterator[None]:
    if activity.info().is_local:
        # A local activity runs inside its workflow task: there is no heartbeat to send.
        yield
        return

    async def beat() -> None:
        while True:
            activity.heartbeat()
            await asyncio.sleep(interval)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
