"""Migrations are safe to run twice and concurrently; message writes are idempotent upserts."""

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from keel.contracts import Message
from keel.stack import EmbeddedPostgres
from keel.store import RunStore, create_pool, migrate


@pytest.fixture
async def pool(postgres: EmbeddedPostgres) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(postgres.uri, max_size=4)
    yield pool
    await pool.close()


async def test_migrations_are_safe_to_run_again_and_at_once(
    postgres: EmbeddedPostgres, pool: asyncpg.Pool
) -> None:
    pools = [await asyncpg.create_pool(postgres.uri, min_size=1, max_size=1) for _ in range(3)]
    try:
        applied = await asyncio.gather(*(migrate(p) for p in pools))
    finally:
        for p in pools:
            await p.close()
    assert applied == [[], [], []]  # already applied by the fixture's create_pool
    versions = [r["version"] for r in await pool.fetch("SELECT version FROM schema_migrations")]
    assert versions == ["0001_run_messages"]


async def test_rewriting_a_message_updates_it_in_place(pool: asyncpg.Pool) -> None:
    store = RunStore(pool)
    await store.put_messages("run-store-test", 0, [Message(role="user", content="hi")])
    await store.put_message("run-store-test", 1, Message(role="assistant", content="first try"))
    await store.put_message("run-store-test", 1, Message(role="assistant", content="retried"))

    conversation = await store.conversation("run-store-test", before_seq=10)
    assert [m.content for m in conversation] == ["hi", "retried"]
    assert await store.conversation("run-store-test", before_seq=1) == [Message(role="user", content="hi")]
