"""The `frontend_events` table (migration 0014): what browsers reported about runs through
`POST /api/telemetry` — time to first token, stalls, reconnects, errors shown, decision times — kept so the
run viewer can show what the person lived through next to what the server did."""

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg

# The most a run's timeline shows; a run with more shows its latest (a looping client must not make the
# viewer's answer grow without end).
TIMELINE_LIMIT = 500


@dataclass(frozen=True)
class FrontendEvent:
    agent_run_id: str
    kind: str
    value_ms: float | None
    detail: str | None
    client: str | None


async def record(pool: asyncpg.Pool, user_id: str | None, events: list[FrontendEvent]) -> None:
    """Store a batch of events, all or none."""
    await pool.executemany(
        "INSERT INTO frontend_events (agent_run_id, user_id, kind, value_ms, detail, client)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        [(e.agent_run_id, user_id, e.kind, e.value_ms, e.detail, e.client) for e in events],
    )


async def owners(pool: asyncpg.Pool, agent_run_ids: list[str]) -> dict[str, str | None]:
    """The user of each run that has a record (the gateway writes it before the run starts)."""
    rows = await pool.fetch("SELECT id, user_id FROM agent_runs WHERE id = ANY($1::text[])", agent_run_ids)
    return {row["id"]: row["user_id"] for row in rows}


async def of_run(pool: asyncpg.Pool, agent_run_id: str, limit: int = TIMELINE_LIMIT) -> list[dict[str, Any]]:
    """The run's events, oldest first (the latest `limit` of them)."""
    rows = await pool.fetch(
        "SELECT kind, value_ms, detail, client, received_at FROM frontend_events WHERE agent_run_id = $1"
        " ORDER BY received_at DESC, id DESC LIMIT $2",
        agent_run_id,
        limit,
    )
    return [dict(row) for row in reversed(rows)]


async def prune(pool: asyncpg.Pool, older_than: timedelta) -> int:
    """Delete the events received longer ago than `older_than`; how many there were."""
    deleted = await pool.execute(
        "DELETE FROM frontend_events WHERE received_at < now() - $1::interval", older_than
    )
    return int(deleted.split()[-1])
