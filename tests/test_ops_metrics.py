"""The metrics issue 21's alert rules and dashboard needed that Keel did not export before, moving through the
real stack: how long the longest-waiting run has gone without a change (gateway), the run-record spool on
disk, webhook delivery attempts by outcome, and steps, tokens and cost per agent (worker).
"""

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import pytest
from keel_examples import assistant

from keel.observability import metrics
from keel.stack.embedded import EmbeddedPostgres, TemporalDevServer
from keel.storage.run_records import RecordWriter
from keel.storage.store import RunStore
from tests.conftest import Keel
from tests.crash_stack import CrashStack, until
from tests.test_observability import Samples, scrape, value, worker_metrics_url
from tests.test_run_records import llm_row, records
from tests.test_webhooks import NEW_SECRET, Receiver, delivered, start
from tests.ui_stream import chat, chat_body


async def test_the_longest_idle_run_per_status_is_on_the_gateway(http: httpx.AsyncClient, keel: Keel) -> None:
    stream = await chat(
        http, chat_body("plan, write and publish a lesson on alerts", purpose="learnpack-lesson-writer")
    )
    run_id = stream.response.headers["x-agent-run-id"]
    call = (await http.get(f"/api/runs/{run_id}")).json()["pending_approvals"][0]["tool_call_id"]

    async def idle_a_while() -> Samples | None:
        gw = await scrape(f"{keel.gateway_url}/metrics")
        return gw if value(gw, "keel_run_max_idle_seconds", status="waiting_for_approval") >= 1 else None

    gw = await until(idle_a_while, "the waiting run's idle time on /metrics", within=30)
    assert ("keel_run_max_idle_seconds", (("status", "running"),)) in gw
    decided = await http.post(f"/api/runs/{run_id}/approvals/{call}", json={"approved": True})
    assert decided.status_code == 200


async def test_steps_tokens_and_cost_per_agent_move_when_a_run_finishes(
    http: httpx.AsyncClient, keel: Keel, store: RunStore
) -> None:
    before = await scrape(worker_metrics_url(keel))
    stream = await chat(http, chat_body("calculate 6 * 7"))
    run_id = stream.response.headers["x-agent-run-id"]
    await records(store.pool, run_id)
    after = await scrape(worker_metrics_url(keel))
    run = await store.pool.fetchrow(
        "SELECT step_count, prompt_tokens, completion_tokens, cost_usd FROM agent_runs WHERE id = $1", run_id
    )

    def moved(name: str, **labels: str) -> float:
        return value(after, name, purpose="assistant", **labels) - value(
            before, name, purpose="assistant", **labels
        )

    assert run["step_count"] > 0 and run["prompt_tokens"] > 0
    assert moved("keel_run_steps_total") == run["step_count"]
    assert moved("keel_run_tokens_total", type="prompt") == run["prompt_tokens"]
    assert moved("keel_run_tokens_total", type="completion") == run["completion_tokens"]
    assert ("keel_run_cost_usd_total", (("purpose", "assistant"),)) in after
    assert moved("keel_run_cost_usd_total") == pytest.approx(run["cost_usd"] or 0.0)


async def test_the_spool_gauge_reads_what_a_writer_keeps_on_disk(store: RunStore, tmp_path: Path) -> None:
    """A writer that cannot reach PostgreSQL spools to the directory the gauge watches; the next writer on
    that directory writes the rows and the gauge is back to zero."""
    metrics.watch_record_spool(tmp_path)
    spooled = lambda: metrics.WORKER.get_sample_value("keel_record_spool_bytes")  # noqa: E731
    assert spooled() == 0
    unreachable = await asyncpg.create_pool("postgresql://keel@127.0.0.1:9/none", min_size=0, max_size=1)
    lost = RecordWriter(unreachable, tmp_path, max_backoff=0.2)
    lost.start()
    lost.put(llm_row(f"run-{uuid.uuid4()}", "running", started_at=datetime.now(UTC)))
    assert not await lost.settle(1.0)
    await lost.close(0.1)
    await unreachable.close()
    [spool] = tmp_path.glob("*.jsonl")
    assert spooled() == spool.stat().st_size > 0

    heir = RecordWriter(store.pool, tmp_path)
    heir.start()
    try:
        assert await heir.settle(5.0)
    finally:
        await heir.close()
    assert spooled() == 0


@pytest.fixture
def stack(
    keel: Keel, temporal_server: TemporalDevServer, postgres: EmbeddedPostgres, tmp_path: Path
) -> Iterator[CrashStack]:
    env = {
        "KEEL_WEBHOOK_SECRET": NEW_SECRET,
        "KEEL_WEBHOOK_ALLOW_PRIVATE": "true",
        "KEEL_WEBHOOK_RETRY_SECONDS": "0.3",
    }
    with CrashStack(temporal_server, postgres, tmp_path, keel.env["KEEL_CODEC_KEY_FILE"], **env) as stack:
        yield stack


async def test_webhook_attempts_are_counted_by_outcome(stack: CrashStack, store: RunStore) -> None:
    """A receiver down for the first attempts, then up: retrying attempts, then one delivered."""
    receiver = Receiver()
    worker = stack.worker()
    await stack.start(worker)
    url = f"http://127.0.0.1:{worker.env['KEEL_WORKER_METRICS_PORT']}/metrics"
    run_id = await start(stack, store, assistant, "hello there", [receiver.url])

    async def retried() -> bool:
        return value(await scrape(url), "keel_webhook_deliveries_total", outcome="retrying") >= 2

    try:
        await until(retried, "two failed attempts counted", within=60)
        await receiver.start()
        await delivered(store.pool, run_id, "run.completed")
        await asyncio.sleep(0.2)  # counted right after the record is written
        samples = await scrape(url)
    finally:
        await receiver.stop()
    assert value(samples, "keel_webhook_deliveries_total", outcome="delivered") == 1
    assert value(samples, "keel_webhook_deliveries_total", outcome="refused") == 0
