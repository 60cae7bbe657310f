"""Migrations are safe to run twice and concurrently; message writes are idempotent upserts."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

import keel.storage.store
from keel.contracts import Message
from keel.stack.embedded import EmbeddedPostgres
from keel.storage.store import RunStore, create_pool, migrate


@pytest.fixture
async def pool(postgres: EmbeddedPostgres) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(postgres.uri, max_size=4)
    yield pool
    await pool.close()


async def test_migrations_apply_once_when_processes_start_together(
    pool: asyncpg.Pool, postgres: EmbeddedPostgres
) -> None:
    await pool.execute("DROP DATABASE IF EXISTS migration_race")
    await pool.execute("CREATE DATABASE migration_race")
    uri = postgres.uri.replace("/postgres?", "/migration_race?")
    pools = [await asyncpg.create_pool(uri, min_size=1, max_size=1) for _ in range(3)]
    try:
        applied = await asyncio.gather(*(migrate(p) for p in pools))
        again = await migrate(pools[0])
        versions = [
            r["version"] for r in await pools[0].fetch("SELECT version FROM schema_migrations ORDER BY 1")
        ]
    finally:
        for p in pools:
            await p.close()
    expected = sorted(f.stem for f in (Path(keel.storage.store.__file__).parent / "migrations").glob("*.sql"))
    # Exactly one of the three applied each migration, in order; running again applies nothing.
    assert sorted(v for names in applied for v in names) == expected
    assert [names for names in applied if names] == [expected]
    assert again == []
    assert versions == expected


async def test_rewriting_a_message_updates_it_in_place(pool: asyncpg.Pool) -> None:
    store = RunStore(pool)
    await store.put_messages("run-store-test", 0, [Message(role="user", content="hi")])
    await store.put_message("run-store-test", 1, Message(role="assistant", content="first try"))
    await store.put_message("run-store-test", 1, Message(role="assistant", content="retried"))

    conversation = await store.conversation("run-store-test", before_seq=10)
    assert [m.content for m in conversation] == ["hi", "retried"]
    assert await store.conversation("run-store-test", before_seq=1) == [Message(role="user", content="hi")]
