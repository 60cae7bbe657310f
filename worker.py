"""The Keel worker: runs AgentRun workflows and their activities from the `agent-runs` task queue.

    python worker.py

Configuration comes from the environment (see the README's table); `make dev` sets it for you.
"""

import asyncio
import logging
import signal
from datetime import timedelta

from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import Worker

from activities.agent import AgentActivities
from activities.records import ObservingInterceptor, RecordActivities, RunRecorder
from keel import metrics
from keel.deltas import PostgresDeltaChannel
from keel.logs import configure_logging
from keel.records import RecordWriter
from keel.settings import Settings, get_settings
from keel.stack import free_port
from keel.store import RunStore, create_pool
from keel.telemetry import configure_tracing, with_tracing
from keel.temporal import connect_temporal, temporal_connect_options
from workflows.agent_run import AgentRun

log = logging.getLogger("keel.worker")


async def run_worker(settings: Settings, stop: asyncio.Event) -> None:
    client = with_tracing(await connect_temporal(settings))
    pool = await create_pool(settings.require_database_url())
    # Run records of activity attempts; kept on disk in the data dir while PostgreSQL is away.
    records = RecordWriter(
        pool, settings.data_dir.resolve() / "outbox", on_backlog=metrics.RECORD_BACKLOG.set
    )
    records.start()
    activities = AgentActivities(
        store=RunStore(pool),
        data_dir=settings.data_dir.resolve(),
        records=RunRecorder(records),
        deltas=PostgresDeltaChannel(pool, batch_window=settings.stream_batch_ms / 1000),
    )
    worker = Worker(
        client,
        task_queue=settings.task_queue,
        workflows=[AgentRun],
        activities=[
            activities.call_llm,
            activities.run_tool,
            activities.save_message,
            RecordActivities(pool).record_run,
        ],
        interceptors=[ObservingInterceptor(records)],
        # Heartbeats carry cancellation to activities; a short throttle delivers it within a second.
        max_heartbeat_throttle_interval=timedelta(seconds=1),
    )
    try:
        async with worker:
            log.info("worker polling task queue %r on %s", settings.task_queue, settings.temporal_address)
            await stop.wait()
            log.info("worker shutting down")
    finally:
        await records.close()
        await pool.close()


def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_level, "worker")
    temporal_connect_options(settings)  # a half-configured TLS or API key stops here, in one line
    tracing = configure_tracing("keel-worker")
    if settings.worker_metrics_port:
        # The Temporal SDK's own worker metrics, on a private loopback port; /metrics serves them too.
        sdk_metrics = f"127.0.0.1:{free_port()}"
        telemetry = TelemetryConfig(
            metrics=PrometheusConfig(bind_address=sdk_metrics, counters_total_suffix=True)
        )
        Runtime.set_default(Runtime(telemetry=telemetry))
        try:
            metrics.serve_worker_metrics(
                settings.worker_metrics_host, settings.worker_metrics_port, f"http://{sdk_metrics}/metrics"
            )
        except OSError as err:
            raise SystemExit(
                f"cannot serve worker metrics on {settings.worker_metrics_host}:{settings.worker_metrics_port}"
                f" ({err}); set KEEL_WORKER_METRICS_PORT to a free port, or 0 for none"
            ) from None
        log.info(
            "worker metrics on http://%s:%d/metrics",
            settings.worker_metrics_host,
            settings.worker_metrics_port,
        )

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_worker(settings, stop)

    try:
        asyncio.run(serve())
    finally:
        if tracing is not None:
            tracing.shutdown()


if __name__ == "__main__":
    main()
