"""The Keel worker: runs AgentRun workflows and their activities from the `agent-runs` task queue.

    python worker.py

Configuration comes from the environment (see the README's table); `make dev` sets it for you.
"""

import asyncio
import logging
import signal
from datetime import timedelta

from temporalio.worker import Worker

from activities.agent import AgentActivities
from keel.deltas import PostgresDeltaChannel
from keel.settings import Settings, get_settings
from keel.store import RunStore, create_pool
from keel.temporal import connect_temporal
from workflows.agent_run import AgentRun

log = logging.getLogger("keel.worker")


async def run_worker(settings: Settings, stop: asyncio.Event) -> None:
    client = await connect_temporal(settings)
    pool = await create_pool(settings.require_database_url())
    activities = AgentActivities(
        store=RunStore(pool),
        data_dir=settings.data_dir.resolve(),
        deltas=PostgresDeltaChannel(pool, batch_window=settings.stream_batch_ms / 1000),
    )
    worker = Worker(
        client,
        task_queue=settings.task_queue,
        workflows=[AgentRun],
        activities=[activities.call_llm, activities.run_tool, activities.save_message],
        # Heartbeats carry cancellation to activities; a short throttle delivers it within a second.
        max_heartbeat_throttle_interval=timedelta(seconds=1),
    )
    try:
        async with worker:
            log.info("worker polling task queue %r on %s", settings.task_queue, settings.temporal_address)
            await stop.wait()
            log.info("worker shutting down")
    finally:
        await pool.close()


def main() -> None:
    settings = get_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_worker(settings, stop)

    asyncio.run(serve())


if __name__ == "__main__":
    main()
