"""The baseline's worker: `python -m bench.bare_worker`, the bare loop (bench/bare.py) and Keel's own
call_llm and run_tool activities, configured from the same environment as Keel's worker.

Like worker.py it publishes token deltas to PostgreSQL (the same work); unlike it, it keeps no run
records and has no interceptor, no metrics endpoint and no tracing: the minimum a bare temporalio program
needs to do the same work.
"""

import asyncio
import signal

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

from activities.agent_activities import AgentActivities
from bench.bare import BARE_TASK_QUEUE, BareAgentLoop
from keel.app import load_app
from keel.settings import get_settings
from keel.storage.deltas import PostgresDeltaChannel
from keel.storage.store import RunStore, create_pool
from keel.temporal import WORKFLOW_RUNNER


async def serve() -> None:
    settings = get_settings()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    client = await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=pydantic_data_converter,
    )
    pool = await create_pool(settings.require_database_url())
    activities = AgentActivities(
        store=RunStore(pool),
        data_dir=settings.data_dir.resolve(),
        deltas=PostgresDeltaChannel(pool),
        app=load_app(settings.app),
    )
    worker = Worker(
        client,
        task_queue=BARE_TASK_QUEUE,
        workflows=[BareAgentLoop],
        # As Keel's workers run theirs (keel/temporal.py), so the comparison is like for like.
        workflow_runner=WORKFLOW_RUNNER,
        activities=[activities.call_llm, activities.run_tool],
    )
    try:
        async with worker:
            # The harness waits for this line, as it does for Keel's worker.
            print(f"worker polling task queue {BARE_TASK_QUEUE!r}", flush=True)
            await stop.wait()
    finally:
        await pool.close()


if __name__ == "__main__":
    asyncio.run(serve())
