"""PostgreSQL goes away in the middle of a run and comes back: the run pauses, finishes, and every record
is written; the gateway's and the worker's connection pools recover by themselves."""

import asyncio

import httpx
from temporalio.client import Client

from keel.stack.embedded import EmbeddedPostgres
from keel.storage.store import RunStore
from tests.conftest import Keel
from tests.test_observability import heavy_worker_metrics_url, scrape, value, worker_metrics_url
from tests.test_run_records import pick, records
from tests.ui_stream import chat, chat_body


async def test_a_run_survives_a_postgres_outage_and_nothing_is_lost(
    http: httpx.AsyncClient, keel: Keel, store: RunStore, temporal: Client, postgres: EmbeddedPostgres
) -> None:
    body = chat_body("wait 2 seconds please")
    streaming = asyncio.create_task(http.post("/api/chat", json=body))
    try:
        # The tool is running: its row says so.
        for _ in range(200):
            run_id = await store.pool.fetchval(
                "SELECT agent_run_id FROM tool_runs t JOIN agent_runs r ON r.id = t.agent_run_id"
                " WHERE r.chat_id = $1 AND t.status = 'running'",
                body["id"],
            )
            if run_id:
                break
            await asyncio.sleep(0.05)
        assert run_id, "the wait tool never started"

        await asyncio.to_thread(postgres.stop)
        # The tool finishes while PostgreSQL is down: its record waits in the (heavy) worker's queue, its
        # result waits inside the same attempt (no retry is used up), and the run is paused, not failed.
        for _ in range(100):
            backlog = value(await scrape(heavy_worker_metrics_url(keel)), "keel_record_backlog")
            if backlog >= 1:
                break
            await asyncio.sleep(0.1)
        assert backlog >= 1
        assert (await http.get(f"/api/runs/{run_id}")).json()["status"] == "running"
        assert (await http.post("/api/chat", json=chat_body("hello"))).status_code == 503
    finally:
        if not postgres.is_running():
            await asyncio.to_thread(postgres.start_again)

    result = await asyncio.wait_for(temporal.get_workflow_handle(run_id).result(), 60)
    assert result["status"] == "completed"
    await asyncio.wait_for(streaming, 30)

    rec = await records(store.pool, run_id)
    assert pick(rec["run"], "status", "step_count") == ("completed", 2)
    assert [pick(r, "seq", "attempt", "status") for r in rec["llm"]] == [(2, 1, "ok"), (4, 1, "ok")]
    [tool] = rec["tools"]
    assert pick(tool, "seq", "attempt", "tool_name", "status") == (3, 1, "wait", "ok")
    assert tool["result_snapshot"] == {"waited_seconds": 2}
    for url in (worker_metrics_url(keel), heavy_worker_metrics_url(keel)):
        for _ in range(100):
            if value(await scrape(url), "keel_record_backlog") == 0:
                break
            await asyncio.sleep(0.1)
        assert value(await scrape(url), "keel_record_backlog") == 0, url

    # Both pools reconnected: a new chat runs start to finish.
    after = await chat(http, chat_body("calculate 20 + 22"))
    assert after.of_type("tool-output-available")[0]["output"]["value"] == 42
    assert after.run_status == "completed"
