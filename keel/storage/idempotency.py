"""Idempotency keys of `POST /api/runs`: per user, a key names one run and one request body until it expires.

The key's row is committed before the run is started, in a transaction of its own, so every gateway sees
it: a second request with the key (at the same time, on another gateway, or after a gateway crashed
mid-start) gets the run the row names, whose start is itself idempotent (the run's id is its workflow id,
and its first records are upserts). PostgreSQL's unique index decides which of two simultaneous requests
claims the key: the other waits for that insert to commit, then finds it.
"""

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg


class KeyReused(Exception):
    """The key was used for another request body (within its lifetime)."""


@dataclass(frozen=True)
class Claim:
    """The run a key names, and whether this request is the one that claimed it."""

    agent_run_id: str
    claimed: bool


def body_digest(body: Any) -> str:
    """The SHA-256 of a request body as JSON, keys sorted: the same for the same content, however sent."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


async def claim(
    pool: asyncpg.Pool, user_key: str, key: str, digest: str, new_run_id: str, ttl: timedelta
) -> Claim:
    """Claim `key` for `new_run_id`, or find the run it already names. Raises KeyReused when the key names
    another body. A key older than `ttl` is forgotten first: the request then starts a new run."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "DELETE FROM idempotency_keys WHERE user_key = $1 AND key = $2 AND created_at < now() - $3::interval",
            user_key,
            key,
            ttl,
        )
        inserted = await conn.fetchval(
            "INSERT INTO idempotency_keys (user_key, key, body_sha256, agent_run_id) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (user_key, key) DO NOTHING RETURNING agent_run_id",
            user_key,
            key,
            digest,
            new_run_id,
        )
        if inserted is not None:
            return Claim(new_run_id, claimed=True)
        row = await conn.fetchrow(
            "SELECT body_sha256, agent_run_id FROM idempotency_keys WHERE user_key = $1 AND key = $2",
            user_key,
            key,
        )
    if row is None:  # forgotten between the two statements by another request's expiry: claim again
        return await claim(pool, user_key, key, digest, new_run_id, ttl)
    if row["body_sha256"] != digest:
        raise KeyReused(key)
    return Claim(row["agent_run_id"], claimed=False)


async def prune(pool: asyncpg.Pool, ttl: timedelta) -> int:
    """Forget every key older than `ttl`; how many there were."""
    deleted = await pool.execute("DELETE FROM idempotency_keys WHERE created_at < now() - $1::interval", ttl)
    return int(deleted.split()[-1])
