"""Keeps the run records and the chats' queues true to Temporal, whatever happened outside a run's loop.

A run's workflow records itself as it goes and when it ends. Two things escape it:

- a workflow closed outside its loop (terminated from the Web UI or the `temporal` CLI, timed out) never
  records its end: its row would say `running` for ever, and the runs queued behind it (double texting,
  `enqueue`) would never hear that their turn has come;
- a run whose workflow never started (a gateway that died between writing the record and starting it).

Every agent worker calls `reconcile` every KEEL_RECONCILE_SECONDS: it ends such rows as `failed`, saying
why, and tells the runs queued behind them to go on. Every step is idempotent, so several workers may do
it at once. The gateway reads a run closed outside its loop the same way (`ended_outside`).
"""

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from keel.contracts import PREVIOUS_DONE_SIGNAL, WORKFLOW_TYPE, RunStatus
from keel.storage import run_records

log = logging.getLogger("keel.storage.reconciler")

# A run's workflow starts right after its record is written; one with no sign of life this long after its
# start is looked up in Temporal.
NOT_STARTED_GRACE = timedelta(seconds=60)
# How far back the first pass of a worker looks for workflows closed outside their loop.
FIRST_LOOK_BACK = timedelta(days=7)


def ended_outside(status: WorkflowExecutionStatus | None) -> tuple[RunStatus, str]:
    """How a run whose workflow closed without its loop saying so ended, in the run's own terms."""
    name = status.name.lower() if status else "unknown"
    final = RunStatus.completed if status == WorkflowExecutionStatus.COMPLETED else RunStatus.failed
    return final, f"the workflow ended as {name} outside the agent loop"


@dataclass
class Reconciled:
    """What one pass did: the runs whose rows it ended, and the queued runs it let go."""

    ended: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)


async def reconcile(pool: asyncpg.Pool, client: Client, since: datetime) -> Reconciled:
    """One pass: rows of runs closed outside their loop since `since`, or never started, are ended, and the
    runs queued behind them are told to go on."""
    done = Reconciled()
    gone = await _closed_outside(client, since)
    gone.update(await _never_started(pool, client))
    for agent_run_id, (status, detail, error_type) in gone.items():
        if await run_records.close_from_outside(pool, agent_run_id, status.value, detail, error_type):
            done.ended.append(agent_run_id)
    done.released = await _release_queued_behind(pool, client, list(gone))
    return done


async def _closed_outside(client: Client, since: datetime) -> dict[str, tuple[RunStatus, str, str]]:
    query = (
        f"WorkflowType = '{WORKFLOW_TYPE}' AND ExecutionStatus IN ('Terminated', 'TimedOut')"
        f" AND CloseTime >= '{since.astimezone(UTC).isoformat()}'"
    )
    found = {}
    async for workflow in client.list_workflows(query):
        status, detail = ended_outside(workflow.status)
        found[workflow.id] = (status, detail, "ClosedOutsideLoop")
    return found


async def _never_started(pool: asyncpg.Pool, client: Client) -> dict[str, tuple[RunStatus, str, str]]:
    """Rows still going, long after their start, that no workflow ever recorded itself in."""
    rows = await pool.fetch(
        "SELECT id FROM agent_runs WHERE status = ANY($1::text[]) AND temporal_run_id IS NULL"
        " AND started_at < now() - $2::interval ORDER BY started_at LIMIT 100",
        list(run_records.ACTIVE_RUN_STATUSES),
        NOT_STARTED_GRACE,
    )
    found = {}
    for row in rows:
        try:
            await client.get_workflow_handle(row["id"]).describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                found[row["id"]] = (RunStatus.failed, "the run's workflow never started", "NotStarted")
    return found


async def _release_queued_behind(pool: asyncpg.Pool, client: Client, gone: list[str]) -> list[str]:
    if not gone:
        return []
    rows = await pool.fetch(
        "SELECT id FROM agent_runs WHERE queued_behind = ANY($1::text[]) AND status = ANY($2::text[])",
        gone,
        list(run_records.ACTIVE_RUN_STATUSES),
    )
    released = []
    for row in rows:
        try:
            await client.get_workflow_handle(row["id"]).signal(PREVIOUS_DONE_SIGNAL)
            released.append(row["id"])
        except RPCError as err:  # closed meanwhile: nothing waits any more
            log.info("run %s queued behind a closed run could not be told: %s", row["id"], err.message)
    return released


async def first_look_back(pool: asyncpg.Pool) -> datetime:
    """Where a worker's first pass starts: the oldest start among rows still going (a week at most)."""
    oldest = await pool.fetchval(
        "SELECT min(started_at) FROM agent_runs WHERE status = ANY($1::text[])",
        list(run_records.ACTIVE_RUN_STATUSES),
    )
    floor = datetime.now(UTC) - FIRST_LOOK_BACK
    return max(oldest, floor) if oldest is not None else datetime.now(UTC)
