"""PostgreSQL access through asyncpg: schema migrations and the run's conversation store.

Used by the activities (which write) and the gateway (which writes a run's input and reads bodies to
stream). Workflow code never imports this module.
"""

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

import asyncpg

from keel.contracts import Message, RunStatus

log = logging.getLogger("keel.storage.store")

# Any fixed number works; it only has to be the same in every Keel process.
_MIGRATION_LOCK_ID = 0x6B65656C


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _leave_session_as_is(_conn: asyncpg.Connection) -> None:
    """What a connection handed back to the pool runs besides asyncpg's own rollback of an open transaction:
    nothing. asyncpg's default resets the session (advisory locks, LISTENs, settings) with one more round
    trip on every pool call; Keel leaves none of those on a pooled connection: its settings are
    transaction-local, it listens on connections of its own, and a session lock that may not have been
    released closes its connection (`_unlock`)."""


async def create_pool(database_url: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """One pool per process. Applies pending migrations before handing the pool out."""
    pool = await asyncpg.create_pool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_leave_session_as_is,
    )
    await migrate(pool)
    return pool


def _migrations() -> list[tuple[str, str]]:
    folder = resources.files("keel.storage") / "migrations"
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [(f.name.removesuffix(".sql"), f.read_text()) for f in files]


async def migrate(pool: asyncpg.Pool) -> list[str]:
    """Apply the migrations not applied yet, in order; returns their names.

    Safe to run twice and from several processes at once: an advisory lock serialises them and each
    migration commits together with its row in `schema_migrations`.
    """
    applied: list[str] = []
    async with pool.acquire() as conn:
        try:
            await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK_ID)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, sql in _migrations():
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
                applied.append(version)
        finally:
            await _unlock(conn, "SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK_ID)
    return applied


async def _unlock(conn: asyncpg.Connection, unlock: str, *args: object) -> None:
    """Release a session-level advisory lock; when that fails (or is cancelled) the connection is closed,
    and its session's locks with it: the pool never hands out a connection that may hold one. A failure
    is not raised: whatever ended the locked section (PostgreSQL gone, most likely) is the caller's error."""
    try:
        await conn.execute(unlock, *args)
    except asyncio.CancelledError:
        conn.terminate()
        raise
    except Exception as err:
        conn.terminate()
        log.warning(
            "an advisory lock was not released (%s: %s); its connection is closed", type(err).__name__, err
        )


class RunStore:
    """A run's conversation: messages keyed by (agent_run_id, seq).

    Writes are upserts, so an activity retried after it already wrote its message rewrites the same row
    instead of adding a second one.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._chat_locks: dict[str, asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def chat_lock(self, chat_id: str) -> AsyncIterator["RunStore"]:
        """Hold the chat's lock, across every Keel process: who owns the chat, whether a run of it is
        active, and starting the next one are decided by one request at a time, so two can never both find
        the chat free. Yields a store on the lock's own connection (the section needs no second one, so a
        busy pool can't deadlock it). The lock goes with the connection if the process dies."""
        # Requests of this process wait in turn here, holding no connection while they wait.
        local = self._chat_locks.setdefault(chat_id, asyncio.Lock())
        try:
            async with local, self.pool.acquire() as conn:
                try:
                    await conn.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", _chat_key(chat_id))
                    yield RunStore(conn)  # a connection runs the same queries as the pool
                finally:
                    await _unlock(
                        conn, "SELECT pg_advisory_unlock(hashtextextended($1, 0))", _chat_key(chat_id)
                    )
        finally:
            if not local.locked() and self._chat_locks.get(chat_id) is local:
                del self._chat_locks[chat_id]

    async def put_messages(self, agent_run_id: str, first_seq: int, messages: list[Message]) -> None:
        rows = [(agent_run_id, first_seq + i, _body(m)) for i, m in enumerate(messages)]
        await self.pool.executemany(
            "INSERT INTO run_messages (agent_run_id, seq, body) VALUES ($1, $2, $3)"
            " ON CONFLICT (agent_run_id, seq) DO UPDATE SET body = EXCLUDED.body, updated_at = now()",
            rows,
        )

    async def put_message(self, agent_run_id: str, seq: int, message: Message) -> None:
        await self.put_messages(agent_run_id, seq, [message])

    async def conversation(self, agent_run_id: str, before_seq: int) -> list[Message]:
        """The messages a model sees at a step: every message with seq < before_seq, in order."""
        rows = await self.pool.fetch(
            "SELECT body FROM run_messages WHERE agent_run_id = $1 AND seq < $2 ORDER BY seq",
            agent_run_id,
            before_seq,
        )
        return [Message.model_validate(r["body"]) for r in rows]

    async def messages(self, agent_run_id: str, seqs: list[int]) -> dict[int, Message]:
        rows = await self.pool.fetch(
            "SELECT seq, body FROM run_messages WHERE agent_run_id = $1 AND seq = ANY($2::int[])",
            agent_run_id,
            seqs,
        )
        return {r["seq"]: Message.model_validate(r["body"]) for r in rows}

    async def record_chat_run(self, chat_id: str, agent_run_id: str, user_id: str | None = None) -> None:
        await self.pool.execute(
            "INSERT INTO chat_runs (chat_id, agent_run_id, user_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            chat_id,
            agent_run_id,
            user_id,
        )

    async def chat_runs(self, chat_id: str, limit: int = 50) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT agent_run_id, started_at FROM chat_runs WHERE chat_id = $1 ORDER BY started_at DESC LIMIT $2",
            chat_id,
            limit,
        )
        return [dict(r) for r in rows]

    async def latest_chat_run(self, chat_id: str) -> str | None:
        latest: str | None = await self.pool.fetchval(
            "SELECT agent_run_id FROM chat_runs WHERE chat_id = $1 ORDER BY started_at DESC LIMIT 1", chat_id
        )
        return latest

    async def unfinished_chat_runs(self, chat_id: str, limit: int = 20) -> list[str]:
        """The chat's runs its records do not show as finished, newest first: those that may be active
        (runs from before run records have no row, and count too)."""
        rows = await self.pool.fetch(
            "SELECT c.agent_run_id FROM chat_runs c LEFT JOIN agent_runs r ON r.id = c.agent_run_id"
            " WHERE c.chat_id = $1 AND (r.status IS NULL OR r.status = ANY($2::text[]))"
            " ORDER BY c.started_at DESC LIMIT $3",
            chat_id,
            [s.value for s in RunStatus if not s.is_final],
            limit,
        )
        return [r["agent_run_id"] for r in rows]

    async def forget_chat_run(self, agent_run_id: str) -> None:
        """A run that never started: out of its chat, its conversation gone."""
        await self.pool.execute("DELETE FROM chat_runs WHERE agent_run_id = $1", agent_run_id)
        await self.pool.execute("DELETE FROM run_messages WHERE agent_run_id = $1", agent_run_id)


def _chat_key(chat_id: str) -> str:
    return f"keel-chat:{chat_id}"


def _body(message: Message) -> dict[str, Any]:
    return message.model_dump(mode="json", exclude_defaults=True)
