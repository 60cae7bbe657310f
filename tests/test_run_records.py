"""Run records in PostgreSQL: exactly what agent_runs, llm_calls and tool_runs hold after a completed, a
failed, a retried, a cancelled and an approved run; and that writing a record twice, late or after an
outage never duplicates or undoes it."""

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from temporalio.client import Client

from activities.models.scripted import DISCLAIMER
from keel.contracts import Usage
from keel.storage import run_records
from keel.storage.run_records import RecordWriter, Row
from keel.storage.store import RunStore
from tests.conftest import VendorWorker
from tests.test_vendor_runs import run as vendor_run
from tests.ui_stream import chat, chat_body

FINAL = ("completed", "failed", "cancelled", "step_limit", "budget_exceeded", "needs_input")


async def records(pool: asyncpg.Pool, agent_run_id: str, *, final: bool = True) -> dict[str, Any]:
    """The run's rows, once its row says it has finished (the last record lands just after the stream ends)."""
    for _ in range(200):
        run = await pool.fetchrow("SELECT * FROM agent_runs WHERE id = $1", agent_run_id)
        if run is not None and (not final or run["status"] in FINAL):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"no final record of {agent_run_id}: {run}")
    llm = await pool.fetch(
        "SELECT * FROM llm_calls WHERE agent_run_id = $1 ORDER BY seq, attempt", agent_run_id
    )
    tools = await pool.fetch(
        "SELECT * FROM tool_runs WHERE agent_run_id = $1 ORDER BY seq, attempt", agent_run_id
    )
    return {"run": dict(run), "llm": [dict(r) for r in llm], "tools": [dict(r) for r in tools]}


def pick(row: dict[str, Any], *columns: str) -> tuple[Any, ...]:
    return tuple(row[c] for c in columns)


async def test_a_completed_run(http: httpx.AsyncClient, store: RunStore, temporal: Client) -> None:
    body = chat_body("calculate (2 + 3) * 4")
    stream = await chat(http, body)
    run_id = stream.response.headers["x-agent-run-id"]
    state = (await http.get(f"/api/runs/{run_id}")).json()

    rec = await records(store.pool, run_id)

    run = rec["run"]
    assert pick(run, "status", "purpose_slug", "step_count", "model", "model_route", "status_version") == (
        "completed",
        "assistant",
        2,
        "scripted",
        "scripted",
        state["last_event_seq"],
    )
    assert run["chat_id"] == body["id"] and run["user_id"] is None
    assert run["input_summary"] == "calculate (2 + 3) * 4"
    assert run["output_summary"].startswith(DISCLAIMER) and "returned" in run["output_summary"]
    assert (run["error_type"], run["error_message"], run["detail"]) == (None, None, None)
    usage = state["usage"]
    assert pick(run, "prompt_tokens", "completion_tokens", "cost_usd", "unpriced_calls") == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
        0.0,
        0,
    )
    description = await temporal.get_workflow_handle(run_id).describe()
    assert run["temporal_run_id"] == description.run_id
    assert run["started_at"] <= run["finished_at"]

    # The conversation is system (0), user (1); then reply (2), tool result (3), reply (4).
    llm = [
        pick(r, "seq", "attempt", "step", "status", "provider", "model", "route", "finish_reason")
        for r in rec["llm"]
    ]
    assert llm == [
        (2, 1, 1, "ok", "scripted", "scripted", "scripted", "tool_calls"),
        (4, 1, 2, "ok", "scripted", "scripted", "scripted", "stop"),
    ]
    for row in rec["llm"]:
        assert row["latency_ms"] >= row["time_to_first_token_ms"] >= 0
        assert row["error_message"] is None and row["cost_usd"] == 0.0 and row["activity_id"]
    assert sum(r["prompt_tokens"] for r in rec["llm"]) == usage["prompt_tokens"]
    assert sum(r["completion_tokens"] for r in rec["llm"]) == usage["completion_tokens"]

    [tool] = rec["tools"]
    assert pick(tool, "seq", "attempt", "step", "tool_name", "status", "error_message", "approval") == (
        3,
        1,
        1,
        "calculate",
        "ok",
        None,
        None,
    )
    assert tool["tool_call_id"] == stream.of_type("tool-input-available")[0]["toolCallId"]
    assert tool["params_snapshot"] == {"expression": "(2 + 3) * 4"}
    assert tool["result_snapshot"] == {"expression": "(2 + 3) * 4", "value": 20}
    assert tool["latency_ms"] >= 0 and tool["started_at"] <= tool["finished_at"]


@pytest.mark.usefixtures("vendor_worker")
async def test_a_failed_run(temporal: Client, store: RunStore, vendor_worker: VendorWorker) -> None:
    state, _ = await vendor_run(temporal, store, vendor_worker, "openai:status401", "hello")
    assert state.status == "failed"

    rec = await records(store.pool, state.agent_run_id)

    run = rec["run"]
    # Started outside the gateway: the workflow's own record filled the row in.
    assert pick(run, "status", "purpose_slug", "step_count", "model", "error_type") == (
        "failed",
        "assistant",
        1,
        "openai:status401",
        "ModelRequestRejected",
    )
    assert "openai answered HTTP 401" in run["error_message"]
    assert run["error_message"] == run["detail"] == state.detail
    [call] = rec["llm"]
    assert pick(call, "attempt", "status", "provider", "model", "error_type", "prompt_tokens") == (
        1,
        "error",
        "openai",
        "status401",
        "ModelRequestRejected",
        None,
    )
    assert "HTTP 401" in call["error_message"]
    assert rec["tools"] == []


@pytest.mark.usefixtures("vendor_worker")
async def test_a_retried_llm_call_has_one_row_per_attempt(
    temporal: Client, store: RunStore, vendor_worker: VendorWorker
) -> None:
    state, _ = await vendor_run(temporal, store, vendor_worker, "openai:status500x1", "hello")
    assert state.status == "completed", state.detail

    rec = await records(store.pool, state.agent_run_id)

    assert pick(rec["run"], "status", "step_count", "model_route") == ("completed", 1, "openai:status500x1")
    first, second = rec["llm"]
    assert pick(first, "seq", "attempt", "status", "error_type") == (2, 1, "error", "ModelUnavailable")
    assert "HTTP 500" in first["error_message"] and first["prompt_tokens"] is None
    assert pick(second, "seq", "attempt", "status", "finish_reason", "error_message") == (
        2,
        2,
        "ok",
        "stop",
        None,
    )
    assert second["request_id"].startswith("req_fake_")
    # No price is known for this model: its cost is unknown (NULL), not zero, and the run says so.
    assert second["cost_usd"] is None and rec["run"]["unpriced_calls"] == 1
    assert first["activity_id"] == second["activity_id"]
    assert (rec["run"]["prompt_tokens"], rec["run"]["completion_tokens"]) == (
        second["prompt_tokens"],
        second["completion_tokens"],
    )


async def test_a_cancelled_run(http: httpx.AsyncClient, store: RunStore) -> None:
    body = chat_body("wait 8 seconds please")
    streaming = asyncio.create_task(http.post("/api/chat", json=body))
    run_id = await _until_tool_runs(store.pool, body["id"])

    assert (await http.post(f"/api/runs/{run_id}/cancel", json={"reason": "wrong one"})).status_code == 202
    await asyncio.wait_for(streaming, timeout=6)

    rec = await records(store.pool, run_id)

    assert pick(rec["run"], "status", "detail", "error_type", "step_count") == (
        "cancelled",
        "cancelled: wrong one",
        None,
        1,
    )
    assert [pick(r, "seq", "status") for r in rec["llm"]] == [(2, "ok")]
    [tool] = rec["tools"]
    assert pick(tool, "seq", "attempt", "tool_name", "status", "error_message") == (
        3,
        1,
        "wait",
        "cancelled",
        "cancelled",
    )
    assert tool["params_snapshot"] == {"seconds": 8} and tool["latency_ms"] < 8000


async def test_an_approved_and_a_denied_call(http: httpx.AsyncClient, store: RunStore) -> None:
    first = await chat(
        http, chat_body("plan, write and publish a lesson on records", purpose="learnpack-lesson-writer")
    )
    second = await chat(
        http, chat_body("plan, write and publish a lesson on refusals", purpose="learnpack-lesson-writer")
    )
    runs = [s.response.headers["x-agent-run-id"] for s in (first, second)]
    waiting = await records(store.pool, runs[0], final=False)
    assert waiting["run"]["status"] == "waiting_for_approval"
    assert waiting["tools"][-1]["status"] == "waiting_for_approval"

    for run_id, approved in zip(runs, (True, False), strict=True):
        call = (await http.get(f"/api/runs/{run_id}")).json()["pending_approvals"][0]["tool_call_id"]
        decided = await http.post(
            f"/api/runs/{run_id}/approvals/{call}", json={"approved": approved, "reason": "ok?"}
        )
        assert decided.status_code == 200, decided.text

    approved, denied = [await records(store.pool, r) for r in runs]
    publish = approved["tools"][-1]
    assert pick(publish, "tool_name", "attempt", "status", "approval", "approver", "approval_reason") == (
        "publish_package",
        1,
        "ok",
        "approved",
        "api",
        "ok?",
    )
    assert publish["approval_requested_at"] <= publish["approval_decided_at"] <= publish["started_at"]
    assert publish["result_snapshot"]["slug"] == "learn-records"
    refused = denied["tools"][-1]
    assert pick(
        refused, "tool_name", "status", "approval", "approver", "error_message", "result_snapshot"
    ) == (
        "publish_package",
        "denied",
        "denied",
        "api",
        "denied by api",
        None,
    )
    assert (approved["run"]["status"], denied["run"]["status"]) == ("completed", "completed")


async def _until_tool_runs(pool: asyncpg.Pool, chat_id: str) -> str:
    for _ in range(200):
        run_id = await pool.fetchval(
            "SELECT r.id FROM agent_runs r JOIN tool_runs t ON t.agent_run_id = r.id"
            " WHERE r.chat_id = $1 AND t.status = 'running'",
            chat_id,
        )
        if run_id:
            return run_id
        await asyncio.sleep(0.05)
    raise AssertionError(f"chat {chat_id} never ran a tool")


# --- idempotency and the write-behind queue, against the real database ---


def llm_row(run_id: str, status: str, **values: Any) -> Row:
    return Row(
        "llm_calls", {"agent_run_id": run_id, "seq": 2, "attempt": 1, "step": 1, "status": status, **values}
    )


async def test_a_record_written_twice_or_late_is_one_row_in_its_latest_state(store: RunStore) -> None:
    from keel.storage.run_records import write_row

    run_id = f"run-{uuid.uuid4()}"
    now = datetime.now(UTC)
    running = llm_row(run_id, "running", started_at=now, route="scripted")
    done = llm_row(run_id, "ok", started_at=now, finished_at=now + timedelta(seconds=1), latency_ms=1000)

    for row in (running, done, done, running):  # a repeat, and a stale "running" arriving last
        await write_row(store.pool, row)

    [row] = await store.pool.fetch("SELECT * FROM llm_calls WHERE agent_run_id = $1", run_id)
    assert pick(row, "status", "latency_ms", "route") == ("ok", 1000, "scripted")
    # The run's row exists for the foreign key, and counts the step.
    assert await store.pool.fetchval("SELECT step_count FROM agent_runs WHERE id = $1", run_id) == 1


async def test_a_batch_of_records_lands_as_the_same_records_written_one_by_one(store: RunStore) -> None:
    """The writer merges what queued up (an attempt's start and outcome) and writes it in one transaction;
    the tables must end exactly as the rows written one at a time, in order, would leave them."""
    from keel.storage.run_records import merge_rows, write_row, write_rows

    now = datetime.now(UTC)
    later = now + timedelta(seconds=1)

    def histories(run_id: str) -> list[Row]:
        tool = {"agent_run_id": run_id, "step": 1, "tool_call_id": "c1", "tool_name": "calculate"}
        return [
            llm_row(run_id, "running", started_at=now, route="scripted"),
            Row("tool_runs", {**tool, "seq": 3, "attempt": 1, "status": "waiting_for_approval"}),
            llm_row(run_id, "ok", started_at=now, finished_at=later, latency_ms=1000, prompt_tokens=7),
            Row("tool_runs", {**tool, "seq": 3, "attempt": 1, "status": "running", "started_at": now}),
            llm_row(run_id, "running", started_at=now),  # stale, arriving late: must not undo "ok"
            Row("tool_runs", {**tool, "seq": 3, "attempt": 1, "status": "approved", "approver": "ana"}),
            # A second attempt of the same call: the first, still `running`, is closed as lost.
            Row("tool_runs", {**tool, "seq": 4, "attempt": 1, "status": "running", "started_at": now}),
            Row("tool_runs", {**tool, "seq": 4, "attempt": 2, "status": "running", "started_at": later}),
            Row("tool_runs", {**tool, "seq": 4, "attempt": 2, "status": "ok", "result_snapshot": 42}),
            Row("tool_runs", {**tool, "seq": 3, "attempt": 1, "status": "error", "error_message": "boom"}),
        ]

    async def tables(run_id: str) -> list[list[dict[str, Any]]]:
        ignored = {"agent_run_id", "created_at", "updated_at"}
        out = []
        for table in ("llm_calls", "tool_runs"):
            rows = await store.pool.fetch(
                f"SELECT * FROM {table} WHERE agent_run_id = $1 ORDER BY seq, attempt", run_id
            )
            out.append([{k: v for k, v in dict(r).items() if k not in ignored and k != "id"} for r in rows])
        out.append(
            [
                {
                    "step_count": await store.pool.fetchval(
                        "SELECT step_count FROM agent_runs WHERE id = $1", run_id
                    )
                }
            ]
        )
        return out

    one_by_one, batched = f"run-{uuid.uuid4()}", f"run-{uuid.uuid4()}"
    for row in histories(one_by_one):
        await write_row(store.pool, row)
    merged = merge_rows(histories(batched))
    assert len(merged) == 4  # one write per (table, run, seq, attempt)
    await write_rows(store.pool, merged)

    expected = await tables(one_by_one)
    assert expected[1][0]["status"] == "error" and expected[1][0]["approver"] == "ana"
    assert expected[1][1]["status"] == "error" and "took over" in expected[1][1]["error_message"]
    assert await tables(batched) == expected


async def test_a_record_postgresql_refuses_is_skipped_and_the_rest_of_its_batch_lands(
    store: RunStore, caplog: pytest.LogCaptureFixture
) -> None:
    run_id = f"run-{uuid.uuid4()}"
    refused = Row("tool_runs", {"agent_run_id": run_id, "seq": 3, "attempt": 1, "step": 1, "status": "ok"})
    writer = RecordWriter(store.pool)
    writer.start()
    try:
        # Queued together, so they go out as one batch: the row without a tool name breaks its transaction.
        writer.put(llm_row(run_id, "running", started_at=datetime.now(UTC)))
        writer.put(refused)
        writer.put(llm_row(run_id, "ok", latency_ms=5))
        assert await writer.settle(5.0)
    finally:
        await writer.close()
    [row] = await store.pool.fetch("SELECT status, latency_ms FROM llm_calls WHERE agent_run_id = $1", run_id)
    assert pick(row, "status", "latency_ms") == ("ok", 5)
    assert await store.pool.fetchval("SELECT count(*) FROM tool_runs WHERE agent_run_id = $1", run_id) == 0
    assert "PostgreSQL refused a run record, skipped" in caplog.text and '"seq": 3' in caplog.text


async def test_records_kept_while_postgresql_is_unreachable_are_written_by_the_next_writer(
    store: RunStore, tmp_path: Path
) -> None:
    """A writer that can't reach PostgreSQL spools its rows to disk; when it stops (or dies), the next
    writer on the same directory adopts and writes them."""
    run_id = f"run-{uuid.uuid4()}"
    unreachable = await asyncpg.create_pool("postgresql://keel@127.0.0.1:9/none", min_size=0, max_size=1)
    lost = RecordWriter(unreachable, tmp_path, max_backoff=0.2)
    lost.start()
    lost.put(llm_row(run_id, "running", started_at=datetime.now(UTC)))
    lost.put(llm_row(run_id, "ok", latency_ms=5))
    assert not await lost.settle(1.0)
    assert lost.unavailable and lost.backlog == 2
    await lost.close(0.1)
    await unreachable.close()
    [spool] = list(tmp_path.glob("*.jsonl"))
    assert len(spool.read_text().splitlines()) == 2

    heir = RecordWriter(store.pool, tmp_path)
    heir.start()
    try:
        assert await heir.settle(5.0)
    finally:
        await heir.close()
    [row] = await store.pool.fetch("SELECT status, latency_ms FROM llm_calls WHERE agent_run_id = $1", run_id)
    assert pick(row, "status", "latency_ms") == ("ok", 5)
    assert list(tmp_path.glob("*.jsonl")) == []


async def test_a_live_writers_spool_is_left_alone(store: RunStore, tmp_path: Path) -> None:
    unreachable = await asyncpg.create_pool("postgresql://keel@127.0.0.1:9/none", min_size=0, max_size=1)
    alive = RecordWriter(unreachable, tmp_path, max_backoff=0.2)
    alive.start()
    try:
        alive.put(llm_row(f"run-{uuid.uuid4()}", "running"))
        assert not await alive.settle(1.0)
        other = RecordWriter(store.pool, tmp_path)
        other.start()
        assert other.backlog == 0 and await other.settle(1.0)
        await other.close()
        assert len(list(tmp_path.glob("*.jsonl"))) == 1
    finally:
        with contextlib.suppress(Exception):
            await alive.close(0.1)
        await unreachable.close()


async def test_a_runs_usage_is_read_back_from_its_record(store: RunStore) -> None:
    # What a parent adds to its own usage when its sub-agent's run failed outright (no state came back).
    agent_run_id = f"run-{uuid.uuid4()}"
    await run_records.run_started(
        store.pool,
        agent_run_id=agent_run_id,
        purpose="writer",
        model="scripted",
        chat_id=None,
        user_id=None,
        input_summary="a lesson",
    )
    assert await run_records.usage_of(store.pool, agent_run_id) == Usage()
    await store.pool.execute(
        "UPDATE agent_runs SET prompt_tokens = 120, completion_tokens = 30, cost_usd = 0.25,"
        " unpriced_calls = 1 WHERE id = $1",
        agent_run_id,
    )

    usage = await run_records.usage_of(store.pool, agent_run_id)

    assert usage == Usage(prompt_tokens=120, completion_tokens=30, cost_usd=0.25, unpriced_calls=1)
    assert await run_records.usage_of(store.pool, "run-none") is None
