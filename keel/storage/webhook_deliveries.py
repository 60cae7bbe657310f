"""The `webhook_deliveries` table: each delivery's state as the worker's `deliver_webhook` activity leaves it
at every attempt (pending, delivered, failed, refused), read by `GET /api/webhooks/deliveries`, the run
viewer and `keel webhooks list`; and what a delivery's payload is built from (the run's answer, the tool
call a run waits on), read from the run's messages and records rather than carried through history."""

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from keel.webhooks import WebhookDeliveryInput

STATUSES = ("pending", "delivered", "failed", "refused")
_COLUMNS = (
    "id, agent_run_id, user_id, event_type, endpoint, status, attempts, last_status_code, last_error,"
    " created_at, delivered_at, next_attempt_at, updated_at"
)


async def attempt_started(pool: asyncpg.Pool, delivery: WebhookDeliveryInput) -> int:
    """Count an attempt (the row is created by the first); returns how many attempts there have been."""
    attempts: int = await pool.fetchval(
        "INSERT INTO webhook_deliveries (id, agent_run_id, user_id, event_type, endpoint, attempts, input)"
        " VALUES ($1, $2, $3, $4, $5, 1, $6)"
        " ON CONFLICT (id) DO UPDATE SET attempts = webhook_deliveries.attempts + 1, status = 'pending',"
        " updated_at = now() RETURNING attempts",
        delivery.webhook_id,
        delivery.agent_run_id,
        delivery.user_id,
        delivery.type,
        delivery.endpoint,
        delivery.model_dump(mode="json"),
    )
    return attempts


async def attempt_ended(
    pool: asyncpg.Pool,
    webhook_id: str,
    status: str,
    *,
    status_code: int | None = None,
    error: str | None = None,
    next_attempt_at: datetime | None = None,
) -> None:
    """How an attempt went: delivered, or pending with when the next one is due, or refused or failed."""
    await pool.execute(
        "UPDATE webhook_deliveries SET status = $2, last_status_code = COALESCE($3, last_status_code),"
        " last_error = $4, next_attempt_at = $5,"
        " delivered_at = CASE WHEN $2 = 'delivered' THEN now() ELSE delivered_at END, updated_at = now()"
        " WHERE id = $1",
        webhook_id,
        status,
        status_code,
        error,
        next_attempt_at,
    )


async def reopen(pool: asyncpg.Pool, webhook_id: str) -> None:
    """A redelivery has started: the row is pending again until its attempts say otherwise."""
    await pool.execute(
        "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = now(), updated_at = now()"
        " WHERE id = $1",
        webhook_id,
    )


@dataclass
class DeliveryFilter:
    agent_run_id: str | None = None
    status: str | None = None
    # Only deliveries of this user's runs (None: everyone's, for admins).
    user_id: str | None = None
    limit: int = 50


async def list_deliveries(pool: asyncpg.Pool, f: DeliveryFilter) -> list[dict[str, Any]]:
    """Deliveries, newest first."""
    where: list[str] = []
    args: list[object] = []
    for column, value in (("agent_run_id", f.agent_run_id), ("status", f.status), ("user_id", f.user_id)):
        if value is not None:
            args.append(value)
            where.append(f"{column} = ${len(args)}")
    args.append(f.limit)
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM webhook_deliveries {'WHERE ' + ' AND '.join(where) if where else ''}"
        f" ORDER BY created_at DESC, id LIMIT ${len(args)}",
        *args,
    )
    return [dict(r) for r in rows]


async def delivery(pool: asyncpg.Pool, webhook_id: str) -> tuple[dict[str, Any], WebhookDeliveryInput] | None:
    """One delivery's row and the input it was sent with; None when there is none."""
    row = await pool.fetchrow(f"SELECT {_COLUMNS}, input FROM webhook_deliveries WHERE id = $1", webhook_id)
    if row is None:
        return None
    found = dict(row)
    return found, WebhookDeliveryInput.model_validate(found.pop("input"))


# --- what a payload is built from ---


async def final_text(pool: asyncpg.Pool, agent_run_id: str) -> str | None:
    """The last text the run's agent wrote (its final answer, for a run that completed)."""
    text: str | None = await pool.fetchval(
        "SELECT body->>'content' FROM run_messages WHERE agent_run_id = $1 AND body->>'role' = 'assistant'"
        " AND COALESCE(body->>'content', '') <> '' ORDER BY seq DESC LIMIT 1",
        agent_run_id,
    )
    return text


async def structured_output(pool: asyncpg.Pool, agent_run_id: str, seq: int) -> Any:
    """The validated object stored with the run's answer at `seq` (structured output), or None."""
    text = await pool.fetchval(
        "SELECT body->>'output_json' FROM run_messages WHERE agent_run_id = $1 AND seq = $2",
        agent_run_id,
        seq,
    )
    return None if text is None else json.loads(text)


async def tool_call(pool: asyncpg.Pool, agent_run_id: str, tool_call_id: str) -> dict[str, Any] | None:
    """The tool call a run waits on, as its record has it (None until the run has recorded it)."""
    row = await pool.fetchrow(
        "SELECT tool_name, params_snapshot FROM tool_runs WHERE agent_run_id = $1 AND tool_call_id = $2"
        " ORDER BY attempt LIMIT 1",
        agent_run_id,
        tool_call_id,
    )
    if row is None:
        return None
    return {"id": tool_call_id, "name": row["tool_name"], "arguments": row["params_snapshot"] or {}}
