"""The Keel workers.

    python worker.py                # the agent worker: AgentRun workflows, LLM calls and inline tools
    python worker.py --queue heavy  # a heavy-tool worker: the tools declared heavy=True

The agent worker polls KEEL_TASK_QUEUE (`agent-runs`); heavy tools run on KEEL_HEAVY_TASK_QUEUE
(`agent-heavy`), so a slow tool never takes a slot the agent loop needs. Run as many of each as the load
asks for. Configuration comes from the environment (see the README's table); `make dev` sets it for you.
"""

import argparse
import asyncio
import logging
import signal
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import asyncpg
from temporalio.client import Client
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import Worker

from activities.agent_activities import AgentActivities
from activities.capacity import CapacityActivities, sample_utilization
from activities.mcp_client import MCPClients, OnListed
from activities.records import ObservingInterceptor, RecordActivities, RunRecorder
from activities.scheduled_runs import ScheduledRunActivities
from activities.webhooks import WebhookActivities
from keel.app import App, load_app_or_exit
from keel.contracts import MCPToolSpec
from keel.mcp import MCPServer
from keel.observability import metrics
from keel.observability.logs import configure_logging, temporal_core_logging
from keel.observability.tracing import configure_tracing, with_tracing
from keel.settings import Settings, get_settings
from keel.stack.embedded import free_port
from keel.storage import frontend_events, idempotency
from keel.storage.deltas import PostgresDeltaChannel, prune_deltas
from keel.storage.interrupts import InterruptListener
from keel.storage.mcp_listings import record_listing
from keel.storage.provider_limits import ProviderLedger
from keel.storage.reconciler import first_look_back, reconcile
from keel.storage.run_records import RecordWriter
from keel.storage.store import RunStore, create_pool
from keel.temporal import WORKFLOW_RUNNER, connect_temporal, temporal_connect_options
from workflows.agent_run import AgentRun
from workflows.scheduled_run import ScheduledRun
from workflows.webhooks import WebhookDelivery

log = logging.getLogger("keel.worker")

Queue = Literal["agent", "heavy"]


async def run_worker(settings: Settings, stop: asyncio.Event, queue: Queue = "agent") -> None:
    app = load_app_or_exit(settings)
    client = with_tracing(await connect_temporal(settings))
    pool = await create_pool(settings.require_database_url())
    # Run records of activity attempts; kept on disk in the data dir while PostgreSQL is away.
    outbox = settings.data_dir.resolve() / "outbox"
    records = RecordWriter(pool, outbox, on_backlog=metrics.RECORD_BACKLOG.set)
    metrics.watch_record_spool(outbox)
    records.start()
    # The gateway's cancels reach a streaming model call at once (keel/storage/interrupts.py).
    interrupts = InterruptListener(settings.require_database_url())
    interrupts.start()
    activities = AgentActivities(
        store=RunStore(pool),
        data_dir=settings.data_dir.resolve(),
        app=app,
        records=RunRecorder(records),
        deltas=PostgresDeltaChannel(pool, batch_window=settings.stream_batch_ms / 1000),
        mcp=MCPClients(app.mcp_servers, on_listed=_listing_recorder(pool)),
        ledger=_provider_ledger(pool, settings),
        interrupts=interrupts,
    )
    heavy = queue == "heavy"
    task_queue = settings.heavy_task_queue if heavy else settings.task_queue
    worker = Worker(
        client,
        task_queue=task_queue,
        # The heavy queue runs heavy tools only; the run queue runs the workflow, its LLM calls and records,
        # and the inline tools, which are local activities of the workflow.
        workflows=[] if heavy else [AgentRun, ScheduledRun, WebhookDelivery],
        activities=(
            [activities.run_tool]
            if heavy
            else [
                *activities.run_queue_activities(),
                RecordActivities(pool).record_run,
                CapacityActivities(RunStore(pool), activities.ledger).reserve_capacity,
                _scheduled_runs(settings, app, pool).open_scheduled_run,
                *_webhook_activities(pool, settings),
            ]
        ),
        max_concurrent_activities=settings.heavy_concurrency if heavy else None,
        interceptors=[ObservingInterceptor(records)],
        workflow_runner=WORKFLOW_RUNNER,
        # Heartbeats carry cancellation to activities; a short throttle delivers it within a second.
        max_heartbeat_throttle_interval=timedelta(seconds=1),
        graceful_shutdown_timeout=timedelta(seconds=settings.worker_shutdown_grace_s),
    )
    housekeeping = []
    if queue == "agent":
        retention = (
            timedelta(hours=settings.delta_retention_hours) if settings.delta_retention_hours else None
        )
        key_ttl = timedelta(hours=settings.idempotency_ttl_hours)
        days = settings.telemetry_retention_days
        telemetry = timedelta(days=days) if days else None
        housekeeping.append(asyncio.create_task(_prune_hourly(pool, retention, key_ttl, telemetry)))
    if queue == "agent" and activities.ledger is not None:
        housekeeping.append(asyncio.create_task(sample_utilization(activities.ledger, stop)))
    if queue == "agent" and settings.reconcile_seconds:
        housekeeping.append(asyncio.create_task(_reconcile_often(pool, client, settings.reconcile_seconds)))
    try:
        async with worker:
            log.info("worker polling task queue %r on %s", task_queue, settings.temporal_address)
            await stop.wait()
            log.info("worker shutting down")
    finally:
        for task in housekeeping:
            task.cancel()
        # Stdio MCP servers stop with the worker (their whole process tree), HTTP sessions end.
        await activities.mcp.close()
        await interrupts.close()
        await records.close()
        await pool.close()


def _provider_ledger(pool: asyncpg.Pool, settings: Settings) -> ProviderLedger | None:
    """KEEL_PROVIDER_LIMITS, accounted in PostgreSQL for every worker (None: no limit configured)."""
    if not settings.provider_limits:
        return None
    return ProviderLedger(
        pool,
        settings.provider_limits,
        batch_share=settings.provider_batch_share,
        lease_s=settings.provider_lease_s,
        window_s=settings.provider_window_s,
    )


def _scheduled_runs(settings: Settings, app: App, pool: asyncpg.Pool) -> ScheduledRunActivities:
    """A schedule's firing opens its run as the gateway opens one: this deploy's agent, KEEL_MODEL, its queues and
    webhook endpoints."""
    return ScheduledRunActivities(
        store=RunStore(pool),
        app=app,
        default_model=settings.model,
        heavy_task_queue=settings.heavy_task_queue,
        webhooks=settings.webhook_endpoints,
    )


def _webhook_activities(pool: asyncpg.Pool, settings: Settings) -> list[Callable[..., Any]]:
    """The runs' webhook deliveries (workflows/webhooks.py), on the agent queue beside the run records."""
    webhooks = WebhookActivities(pool, settings)
    return [webhooks.deliver_webhook, webhooks.webhook_gave_up]


def _listing_recorder(pool: asyncpg.Pool) -> OnListed:
    """Each fresh listing of an MCP server, recorded for GET /api/purposes; a failed write only logs."""

    async def record(server: MCPServer, tools: list[MCPToolSpec] | None, error: str | None) -> None:
        try:
            await record_listing(pool, server.name, server.transport, tools, error)
        except Exception as err:  # the listing itself worked: a run must not fail for want of its record
            log.warning("could not record the listing of MCP server %s: %s", server.name, err)

    return record


async def _prune_hourly(
    pool: asyncpg.Pool, retention: timedelta | None, key_ttl: timedelta, telemetry: timedelta | None
) -> None:
    """Delete finished runs' token deltas once they are older than the retention, expired idempotency keys
    and old frontend telemetry (every agent worker does; the deletes are idempotent, so several at once only
    share the work)."""
    while True:
        try:
            if retention is not None and (deleted := await prune_deltas(pool, retention)):
                log.info("pruned %d token deltas of runs finished over %s ago", deleted, retention)
            if forgotten := await idempotency.prune(pool, key_ttl):
                log.info("forgot %d idempotency keys older than %s", forgotten, key_ttl)
            if telemetry is not None and (dropped := await frontend_events.prune(pool, telemetry)):
                log.info("deleted %d frontend telemetry events older than %s", dropped, telemetry)
        except Exception as err:  # housekeeping: a failure waits for the next hour, never stops the worker
            log.warning("could not prune (will try again in an hour): %s", err)
        await asyncio.sleep(3600)


async def _reconcile_often(pool: asyncpg.Pool, client: Client, every_s: float) -> None:
    """Keep run records and queues true to Temporal (keel/storage/reconciler.py): each pass looks at what closed
    since the one before it, with an overlap, so a pass that failed is made up by the next."""
    since = await first_look_back(pool)
    while True:
        started = datetime.now(UTC)
        try:
            done = await reconcile(pool, client, since)
            if done.ended or done.released:
                log.info("reconciled runs: ended %s, released %s", done.ended, done.released)
            since = started - timedelta(seconds=2 * every_s)
        except Exception as err:  # housekeeping: a failed pass is retried by the next one
            log.warning("could not reconcile run records (will try again): %s", err)
        await asyncio.sleep(every_s)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run a Keel worker.")
    parser.add_argument(
        "--queue",
        choices=("agent", "heavy"),
        default="agent",
        help="agent: the agent loop, LLM calls and inline tools (default); heavy: the heavy tools",
    )
    queue: Queue = parser.parse_args(argv).queue
    settings = get_settings()
    configure_logging(settings.log_level, "worker" if queue == "agent" else "heavy-worker")
    temporal_connect_options(settings)  # a half-configured TLS or API key stops here, in one line
    tracing = configure_tracing("keel-worker" if queue == "agent" else "keel-heavy-worker")
    metrics_port = settings.worker_metrics_port if queue == "agent" else settings.heavy_worker_metrics_port
    # The Temporal SDK's own worker metrics, on a private loopback port (/metrics serves them too), and its
    # core's log lines in JSON like the rest.
    sdk_metrics = f"127.0.0.1:{free_port()}" if metrics_port else None
    telemetry = TelemetryConfig(
        logging=temporal_core_logging(),
        metrics=PrometheusConfig(bind_address=sdk_metrics, counters_total_suffix=True)
        if sdk_metrics
        else None,
    )
    Runtime.set_default(Runtime(telemetry=telemetry))
    if metrics_port:
        variable = "KEEL_WORKER_METRICS_PORT" if queue == "agent" else "KEEL_HEAVY_WORKER_METRICS_PORT"
        try:
            metrics.serve_worker_metrics(
                settings.worker_metrics_host, metrics_port, f"http://{sdk_metrics}/metrics"
            )
        except OSError as err:
            raise SystemExit(
                f"cannot serve worker metrics on {settings.worker_metrics_host}:{metrics_port}"
                f" ({err}); set {variable} to a free port, or 0 for none"
            ) from None
        log.info("worker metrics on http://%s:%d/metrics", settings.worker_metrics_host, metrics_port)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_worker(settings, stop, queue)

    try:
        asyncio.run(serve())
    finally:
        if tracing is not None:
            tracing.shutdown()


if __name__ == "__main__":
    main()
