"""Parked runs: thousands of runs waiting for a person's approval, and what they cost while they wait.

Each run is a `learnpack-lesson-writer` run asked to "publish a lesson on bench-<i>": the scripted model
calls `publish_package`, which always needs approval, so the run parks on its first step. Runs are started
as the gateway starts them (conversation and run record in PostgreSQL, then the workflow), straight
through the Temporal client with bounded parallelism, because streaming thousands of chat responses
would measure the gateway instead.

- worker CPU while idle: the agent worker's CPU time over a quiet window with every run parked, against
  the same window before any was parked;
- memory per parked run: the agent worker's resident memory after parking minus before, over the count;
  PostgreSQL's database and Temporal's SQLite file likewise;
- approve to resume: a sample of parked runs approved through the gateway's approval endpoint, one
  after another; resume is the moment `publish_package` starts on the heavy worker (its tool_runs row's
  started_at, stamped by the worker on this machine's clock). The baseline is the same with only a
  handful of runs parked (the warm-up), still in the worker's workflow cache.
"""

import asyncio
import random
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import httpx

from bench.measure import cpu_seconds, find_pid, listening_pid, rss_mb
from bench.report import Figure, Section, at_most, percentile
from keel.agent import RunContext
from keel.app import load_app
from keel.contracts import Message
from keel.run_start import first_messages, record_start, run_input, start_run
from keel.storage.store import RunStore

if TYPE_CHECKING:
    from temporalio.client import Client

    from bench.harness import Harness

PURPOSE = "learnpack-lesson-writer"
START_PARALLEL = 32  # runs being started at once
# Approvals in flight at once. One: each approval sets off the rest of its run (the tool, an LLM call, the
# finish), so even four at a time measured mostly the queue behind the others (700 ms instead of 70).
APPROVE_PARALLEL = 1
PARK_TIMEOUT = 300.0
COUNT = 5000
RESUME_P99_TARGET_MS = 100.0  # approve to resume, p99, with COUNT parked
# Seconds spent starting runs at most. A quiet 2-core machine parks the 5,000 in about 250 s (20 a
# second, Temporal's dev server and the agent worker sharing both cores), which keeps `make bench` under
# ten minutes; a busier one parks what fits, and the section's note says how many.
PARK_BUDGET = 330.0
IN_FLIGHT = 200  # runs started but not parked yet, at most


@dataclass(frozen=True)
class Approval:
    agent_run_id: str
    sent: float  # time.time() when the approval was sent
    acknowledged: float  # when the gateway answered it


async def start_runs(h: "Harness", client: "Client", store: RunStore, count: int) -> list[str]:
    """Start `count` runs that will each park waiting for approval; returns their ids."""
    purpose = load_app().agent(PURPOSE)
    spec = purpose.spec(h.env["KEEL_MODEL"])
    task_queue = h.env["KEEL_TASK_QUEUE"]
    slots = asyncio.Semaphore(START_PARALLEL)
    batch = uuid.uuid4().hex[:6]

    async def one(i: int) -> str:
        request = Message(role="user", content=f"publish a lesson on bench-{batch}-{i}")
        messages = first_messages(purpose, RunContext({}, None, None), [request])
        run = run_input(spec, messages)
        async with slots:
            await record_start(store, run, messages)
            await start_run(client, run, task_queue)
        return run.agent_run_id

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def park(h: "Harness", client: "Client", store: RunStore, count: int, budget: float) -> list[str]:
    """Start runs, keeping at most IN_FLIGHT of them on their way to parking (more only queue up in
    Temporal), until `count` are started or `budget` seconds have passed; returns their ids."""
    run_ids: list[str] = []
    started = time.monotonic()
    while len(run_ids) < count and time.monotonic() - started < budget:
        parked = await _parked(store, run_ids)
        room = min(IN_FLIGHT - (len(run_ids) - parked), count - len(run_ids))
        if room > 0 and room >= min(IN_FLIGHT // 4, count - len(run_ids)):
            run_ids += await start_runs(h, client, store, room)
        else:
            await asyncio.sleep(0.2)
    return run_ids


async def _parked(store: RunStore, run_ids: list[str]) -> int:
    return await store.pool.fetchval(
        "SELECT count(*) FROM agent_runs WHERE id = ANY($1) AND status = 'waiting_for_approval'", run_ids
    )


async def wait_parked(store: RunStore, run_ids: list[str]) -> float:
    """Wait until every run's record says it waits for approval; returns the seconds it took."""
    started = time.monotonic()
    while True:
        parked = await _parked(store, run_ids)
        if parked == len(run_ids):
            return time.monotonic() - started
        if time.monotonic() - started > PARK_TIMEOUT:
            raise TimeoutError(f"only {parked} of {len(run_ids)} runs parked in {PARK_TIMEOUT:.0f} s")
        await asyncio.sleep(0.5)


async def approve(gateway: str, run_ids: list[str]) -> list[Approval]:
    slots = asyncio.Semaphore(APPROVE_PARALLEL)

    async def one(http: httpx.AsyncClient, agent_run_id: str) -> Approval:
        async with slots:
            sent = time.time()
            response = await http.post(
                f"/api/runs/{agent_run_id}/approvals/call_1", json={"approved": True, "reason": "bench"}
            )
            response.raise_for_status()
            return Approval(agent_run_id, sent, time.time())

    async with httpx.AsyncClient(base_url=gateway, timeout=60) as http:
        return list(await asyncio.gather(*(one(http, r) for r in run_ids)))


async def resumed(store: RunStore, approvals: list[Approval]) -> list[float]:
    """Seconds from each approval to its tool's start, once the worker's records have them all."""
    ids = [a.agent_run_id for a in approvals]
    deadline = time.monotonic() + 60
    while True:
        rows = await store.pool.fetch(
            "SELECT agent_run_id, min(started_at) AS started FROM tool_runs"
            " WHERE agent_run_id = ANY($1) AND tool_name = 'publish_package' AND started_at IS NOT NULL"
            " GROUP BY agent_run_id",
            ids,
        )
        if len(rows) == len(ids) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    started: dict[str, datetime] = {r["agent_run_id"]: r["started"] for r in rows}
    if len(started) < len(ids):
        raise TimeoutError(f"only {len(started)} of {len(ids)} approved tools started within a minute")
    return [started[a.agent_run_id].timestamp() - a.sent for a in approvals]


async def idle_cpu(pid: int, seconds: float) -> float:
    """Share of one core a process used over a quiet window, in percent."""
    before = cpu_seconds(pid)
    await asyncio.sleep(seconds)
    return 100 * (cpu_seconds(pid) - before) / seconds


async def database_mb(store: RunStore) -> float:
    return await store.pool.fetchval("SELECT pg_database_size(current_database())") / 1e6


def _cpu(processes: dict[str, int | None]) -> dict[str, float]:
    return {name: cpu_seconds(pid, children=True) for name, pid in processes.items() if pid}


def _temporal_db_mb(h: "Harness") -> float:
    files = [h.workdir / "temporal.db", h.workdir / "temporal.db-wal"]
    return sum(f.stat().st_size for f in files if f.exists()) / 1e6


async def run(h: "Harness", quick: bool) -> Section:
    count, sample, quiet, budget = (500, 40, 5.0, 40.0) if quick else (COUNT, 100, 10.0, PARK_BUDGET)
    started = []
    try:
        worker = h.spawn_worker()
        started.append(worker)
        heavy = h.spawn_worker(queue="heavy")
        started.append(heavy)
        gateway_proc, gateway = h.spawn_gateway()
        started.append(gateway_proc)
        client, store = await h.client(), await h.store()
        temporal_pid = listening_pid(int(h.temporal_address.rsplit(":", 1)[1]))

        # Warm-up and baseline: a handful of runs parked, approved while still in the worker's cache.
        few = await start_runs(h, client, store, 20)
        await wait_parked(store, few)
        warm = await approve(gateway, few)
        baseline = await resumed(store, warm)

        await asyncio.sleep(2)  # let the warm-up's records and tasks settle
        cpu_before = await idle_cpu(worker.pid, quiet)
        rss_before, pg_before, tdb_before = rss_mb(worker.pid), await database_mb(store), _temporal_db_mb(h)

        processes = {
            "agent worker": worker.pid,
            "heavy worker": heavy.pid,
            "Temporal": temporal_pid,
            "PostgreSQL": find_pid("postgres", str(h.workdir)),
        }
        cpu_at_start = {**_cpu(processes), "this benchmark": time.process_time()}
        parking = time.monotonic()
        run_ids = await park(h, client, store, count, budget)
        started_s = time.monotonic() - parking
        parked_s = started_s + await wait_parked(store, run_ids)
        asked, count = count, len(run_ids)
        cpu_now = {**_cpu(processes), "this benchmark": time.process_time()}
        parking_cpu = {k: v - cpu_at_start[k] for k, v in cpu_now.items()}

        await asyncio.sleep(3)  # the last run records are written and nothing is in flight
        temporal_before = cpu_seconds(temporal_pid) if temporal_pid else None
        cpu_parked = await idle_cpu(worker.pid, quiet)
        temporal_cpu = (
            100 * (cpu_seconds(temporal_pid) - temporal_before) / quiet
            if temporal_pid and temporal_before is not None
            else None
        )
        rss_after, pg_after, tdb_after = rss_mb(worker.pid), await database_mb(store), _temporal_db_mb(h)

        chosen = random.Random(7).sample(run_ids, min(sample, count))
        approvals = await approve(gateway, chosen)
        latencies = await resumed(store, approvals)
    finally:
        for proc in reversed(started):
            h.stop(proc)

    ms = [x * 1000 for x in latencies]
    base_ms = [x * 1000 for x in baseline]
    acks = [(a.acknowledged - a.sent) * 1000 for a in approvals]
    resume_claim, resume_met = at_most(percentile(ms, 99), RESUME_P99_TARGET_MS)
    figures = [
        Figure(
            name=f"worker CPU while idle, {count:,} runs parked",
            value=round(cpu_parked, 2),
            unit="% of a core",
            baseline=round(cpu_before, 2),
            note="baseline: the same worker with none parked",
        ),
        Figure(
            name="worker memory per parked run",
            value=round((rss_after - rss_before) * 1000 / count, 2),
            unit="KB",
            baseline=round(rss_before, 1),
            note=f"worker RSS {rss_before:.0f} → {rss_after:.0f} MB; baseline: RSS before parking, in MB",
        ),
        Figure(
            name="PostgreSQL per parked run",
            value=round((pg_after - pg_before) * 1000 / count, 2),
            unit="KB",
            note=f"database {pg_before:.1f} → {pg_after:.1f} MB (conversation, run and tool records)",
        ),
        Figure(
            name="Temporal's database per parked run",
            value=round((tdb_after - tdb_before) * 1000 / count, 2),
            unit="KB",
            note=f"dev server SQLite file {tdb_before:.1f} → {tdb_after:.1f} MB",
        ),
        Figure(
            name=f"approve to resume p50, {count:,} parked",
            value=round(percentile(ms, 50), 1),
            unit="ms",
            baseline=round(percentile(base_ms, 50), 1),
            note="approval sent to the gateway → publish_package starts on the heavy worker; "
            "baseline: 20 parked",
        ),
        Figure(
            name=f"approve to resume p99, {count:,} parked",
            value=round(percentile(ms, 99), 1),
            unit="ms",
            baseline=round(percentile(base_ms, 99), 1),
            target=f"{resume_claim} ms",
            met=resume_met,
            note="baseline: 20 parked",
        ),
        Figure(
            name="approval acknowledged p50",
            value=round(percentile(acks, 50), 1),
            unit="ms",
            baseline=round(percentile([(a.acknowledged - a.sent) * 1000 for a in warm], 50), 1),
            note="the gateway's answer to POST /api/runs/{id}/approvals/{call} (the workflow update); "
            "baseline: 20 parked",
        ),
    ]
    cut_short = (
        f" of the {asked:,} asked for: the {budget:.0f} s parking budget ran out"
        f" (at this rate {asked:,} take {asked / count * parked_s:.0f} s)"
        if count < asked
        else ""
    )
    notes = [
        f"parked {count:,} runs{cut_short}; parking took {parked_s:.0f} s ({count / parked_s:.1f} runs/s, at "
        f"most {IN_FLIGHT} on their way at once); {len(chosen)} of them approved, {APPROVE_PARALLEL} at a time, "
        "in random order",
        f"CPU while parking ({parked_s:.0f} s): "
        + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in parking_cpu.items()),
        "the agent worker keeps at most 1,000 workflows in memory (the SDK's max_cached_workflows "
        "default), so its memory stops growing there and a run parked longer ago is replayed from its "
        f"history when approved ({max(0, count - 1000) / count:.0%} of the sample's draw)",
        f"idle windows of {quiet:.0f} s"
        + (f"; Temporal's dev server used {temporal_cpu:.1f}% of a core meanwhile" if temporal_cpu else ""),
    ]
    return Section(key="parked", title="Parked runs waiting for approval", figures=figures, notes=notes)
