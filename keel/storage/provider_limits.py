"""The provider limits' shared accounting in PostgreSQL (migration 0013): every worker asks here before an
LLM call of a limited route, so KEEL_PROVIDER_LIMITS holds for all of them together.

One row per granted call in `provider_calls`: the rolling one-minute window counts its requests and sums
its tokens, and the rows still leased count as calls in flight. A grant is decided and written in one
transaction under an advisory lock per pattern, so two workers can't both take the last slot. A 429 (or a
provider's rate-limit headers) writes `provider_cooldowns`: nothing of that pattern is granted before it
ends, whoever asks.

Priority, one rule: while an interactive caller (a chat's run) waits for a pattern, no batch caller is
granted it, so the next slot that frees goes to the chat. Otherwise batch may use the whole limit, or only
`batch_share` of it (KEEL_PROVIDER_BATCH_SHARE, default 1) to keep some room for chats that never wait.
"""

import math
import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import asyncpg

from keel.provider_limits import Priority, RouteLimit

# The rolling window of rpm and tpm, in seconds (KEEL_PROVIDER_WINDOW_SECONDS; shorter only in tests).
WINDOW_S = 60.0
# Waits are never shorter (a timer and a local activity per ask) nor longer (a limit raised meanwhile).
MIN_WAIT_S = 0.25
MAX_WAIT_S = 30.0
# How often a caller waiting for a concurrency slot asks again: slots free when calls end, unannounced.
CONCURRENCY_POLL_S = 1.0
# How long past its next ask an interactive caller's wait keeps batch callers off (its workflow task and
# local activity take a moment).
INTERACTIVE_GRACE_S = 2.0
# A booked slot lapses this long after it is due if its caller never comes back (its run was cancelled).
TICKET_GRACE_S = 30.0
# A caller back this early for its booked slot (its timer and workflow task) is granted all the same.
TICKET_EARLY_S = 0.05

_STATE = """
SELECT
    (SELECT extract(epoch FROM cooldown_until - now()) FROM provider_limit_state
        WHERE pattern = $1 AND cooldown_until > now()) AS cooldown_s,
    (SELECT interactive_waiting_until > now() FROM provider_limit_state WHERE pattern = $1)
        AS interactive_waiting,
    count(*) FILTER (WHERE at > now() - make_interval(secs => $2)) AS requests,
    coalesce(sum(tokens) FILTER (WHERE at > now() - make_interval(secs => $2)), 0) AS tokens,
    count(*) FILTER (WHERE released_at IS NULL AND expires_at > now() AND at <= now()) AS in_flight
FROM provider_calls WHERE pattern = $1
"""
# When the (offset+1)-th oldest request of the window leaves it.
_REQUEST_FREED = """
SELECT extract(epoch FROM at + make_interval(secs => $2) - now()) FROM provider_calls
WHERE pattern = $1 AND at > now() - make_interval(secs => $2) ORDER BY at OFFSET $3 LIMIT 1
"""
# When enough tokens have left the window.
_TOKENS_FREED = """
SELECT extract(epoch FROM at + make_interval(secs => $2) - now()) FROM (
    SELECT at, sum(tokens) OVER (ORDER BY at, lease_id) AS freed FROM provider_calls
    WHERE pattern = $1 AND at > now() - make_interval(secs => $2)
) window_calls WHERE freed >= $3 ORDER BY at LIMIT 1
"""
_GRANT = """
INSERT INTO provider_calls (lease_id, pattern, priority, tokens, expires_at, released_at)
VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5), CASE WHEN $6 THEN now() END)
"""
# An interactive caller that must wait keeps batch callers off until a little after it asks again.
_INTERACTIVE_WAITS = """
INSERT INTO provider_limit_state (pattern, interactive_waiting_until)
VALUES ($1, now() + make_interval(secs => $2))
ON CONFLICT (pattern) DO UPDATE SET
    interactive_waiting_until = greatest(provider_limit_state.interactive_waiting_until,
                                         excluded.interactive_waiting_until),
    updated_at = now()
"""
# Bookings: a row whose `at` is the future slot it holds (the window counts it there), which lapses
# TICKET_GRACE_S after it if nobody redeems it.
_BOOK = """
INSERT INTO provider_calls (lease_id, pattern, priority, tokens, at, expires_at)
VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5), now() + make_interval(secs => $5 + $6))
"""
_DUE = "SELECT extract(epoch FROM at - now()) FROM provider_calls WHERE lease_id = $1 AND released_at IS NULL"
# The calls in the window up to now, but for the caller's own booking, and when the (offset+1)-th leaves it.
_WINDOW_NOW = """
SELECT count(*) FROM provider_calls WHERE pattern = $1 AND lease_id <> $3
    AND at > now() - make_interval(secs => $2) AND at <= now()
"""
_FREED_NOW = """
SELECT extract(epoch FROM at + make_interval(secs => $2) - now()) FROM provider_calls
WHERE pattern = $1 AND lease_id <> $3 AND at > now() - make_interval(secs => $2) AND at <= now()
ORDER BY at OFFSET $4 LIMIT 1
"""
_REDEEM = "UPDATE provider_calls SET expires_at = now() + make_interval(secs => $2) WHERE lease_id = $1"
_EARLIEST_BATCH_BOOKING = """
SELECT lease_id, extract(epoch FROM at - now()) AS due_s FROM provider_calls
WHERE pattern = $1 AND priority = 'batch' AND at > now() AND at < now() + make_interval(secs => $2)
ORDER BY at LIMIT 1
"""
_MOVE = """
UPDATE provider_calls SET at = now() + make_interval(secs => $2), expires_at = now() + make_interval(secs => $2 + $3)
WHERE lease_id = $1
"""
_FORGET = """
DELETE FROM provider_calls WHERE pattern = $1 AND at < now() - make_interval(secs => $2)
    AND (released_at IS NOT NULL OR expires_at < now())
"""


@dataclass(frozen=True)
class Usage:
    """A pattern's use of its limits now: requests and tokens in the window, calls in flight."""

    requests: int
    tokens: int
    in_flight: int
    cooldown_s: float | None
    interactive_waiting: bool = False


@dataclass(frozen=True)
class Grant:
    lease_id: str
    pattern: str


@dataclass(frozen=True)
class Wait:
    seconds: float
    # What is spent: "openai:* rpm", "openai:* cooldown".
    reason: str
    # A slot of a later window already booked for the caller (rpm): it comes back with it when the wait is
    # over and is granted without competing again. None: it asks afresh.
    ticket: str | None = None


class ProviderLedger:
    """The limits of one deployment, accounted in PostgreSQL for every worker."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        limits: Mapping[str, RouteLimit],
        *,
        batch_share: float = 1.0,
        lease_s: float = 360.0,
        window_s: float = WINDOW_S,
    ) -> None:
        self.pool = pool
        self.limits = dict(limits)
        self.batch_share = batch_share
        self.lease_s = lease_s
        self.window_s = window_s

    def caps(self, pattern: str, priority: Priority) -> RouteLimit:
        """The limits a caller of this priority may fill: all of them, or batch's share (at least 1)."""
        limit = self.limits[pattern]
        if priority == "interactive":
            return limit
        share = self.batch_share

        def cap(value: int | None) -> int | None:
            return None if value is None else max(1, math.floor(value * share))

        return RouteLimit(rpm=cap(limit.rpm), tpm=cap(limit.tpm), concurrency=cap(limit.concurrency))

    async def reserve(
        self, pattern: str, tokens: int, priority: Priority, ticket: str | None = None
    ) -> Grant | Wait:
        """A lease on one call of `pattern` with `tokens` estimated, or how long to wait before asking again
        (with a ticket: a slot booked in a later window, which `ticket` presents once it is due)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"keel-provider-limit:{pattern}")
            usage = await _usage(conn, pattern, self.window_s)
            if ticket is not None and (due := await conn.fetchval(_DUE, ticket)) is not None:
                return await self._redeem(conn, pattern, usage, ticket, float(due), priority)
            wait = await self._wait(conn, pattern, usage, tokens, priority)
            if wait is not None and wait.reason == f"{pattern} rpm":
                return await self._book(conn, pattern, usage, tokens, priority)
            if wait is not None:
                if priority == "interactive":
                    await conn.execute(_INTERACTIVE_WAITS, pattern, wait.seconds + INTERACTIVE_GRACE_S)
                return wait
            lease_id = f"lease-{uuid.uuid4()}"
            await conn.execute(_GRANT, lease_id, pattern, priority, tokens, self.lease_s, False)
            await conn.execute(_FORGET, pattern, self.window_s)
            return Grant(lease_id, pattern)

    async def _book(
        self, conn: asyncpg.Connection, pattern: str, usage: Usage, tokens: int, priority: Priority
    ) -> Wait:
        """The rpm window is full: book the caller the first slot that frees, counted from now on, so waiters
        come back one by one as slots free instead of all at once. A chat's caller takes the earliest slot
        booked by a batch caller, which gets the new slot instead."""
        rpm = self.caps(pattern, priority).rpm or 1
        freed = await conn.fetchval(_REQUEST_FREED, pattern, self.window_s, usage.requests - rpm)
        # Exactly when the slot frees (no jitter, no clamp): the booking is counted in the window there.
        seconds = max(0.0, float(freed or 0.0))
        ticket = f"lease-{uuid.uuid4()}"
        if priority == "interactive":
            bumped = await conn.fetchrow(_EARLIEST_BATCH_BOOKING, pattern, seconds)
            if bumped is not None:
                await conn.execute(_MOVE, bumped["lease_id"], seconds, TICKET_GRACE_S)
                seconds = float(bumped["due_s"])
        await conn.execute(_BOOK, ticket, pattern, priority, tokens, seconds, TICKET_GRACE_S)
        return Wait(seconds, f"{pattern} rpm", ticket)

    async def _redeem(
        self,
        conn: asyncpg.Connection,
        pattern: str,
        usage: Usage,
        ticket: str,
        due: float,
        priority: Priority,
    ) -> Grant | Wait:
        """A booked slot: granted once due (its request is already in the window), unless the route cools
        down or its calls in flight are at their limit (the booking itself counts as one by then).

        The slot was booked from the times the window held then; the calls before it have started since,
        each a little after its own slot. So the window is checked again on the times as they are now, and
        a slot that is not free yet moves to when it will be."""
        if due > TICKET_EARLY_S:
            return Wait(due, f"{pattern} rpm", ticket)
        rpm = self.caps(pattern, priority).rpm
        if rpm is not None:
            before = await conn.fetchval(_WINDOW_NOW, pattern, self.window_s, ticket)
            if before >= rpm:
                freed = await conn.fetchval(_FREED_NOW, pattern, self.window_s, ticket, before - rpm)
                seconds = max(MIN_WAIT_S, float(freed or MIN_WAIT_S))
                await conn.execute(_MOVE, ticket, seconds, TICKET_GRACE_S)
                return Wait(seconds, f"{pattern} rpm", ticket)
        if usage.cooldown_s is not None:
            return Wait(_wait(usage.cooldown_s, "").seconds, f"{pattern} cooldown", ticket)
        limit = self.limits[pattern].concurrency
        if limit is not None and usage.in_flight - 1 >= limit:
            return Wait(CONCURRENCY_POLL_S, f"{pattern} concurrency", ticket)
        await conn.execute(_REDEEM, ticket, self.lease_s)
        return Grant(ticket, pattern)

    async def _wait(
        self, conn: asyncpg.Connection, pattern: str, usage: Usage, tokens: int, priority: Priority
    ) -> Wait | None:
        if usage.cooldown_s is not None:
            return _wait(usage.cooldown_s, f"{pattern} cooldown")
        if priority == "batch" and usage.interactive_waiting:
            return _wait(CONCURRENCY_POLL_S, f"{pattern} interactive runs first")
        caps = self.caps(pattern, priority)
        waits: list[Wait] = []
        if caps.rpm is not None and usage.requests >= caps.rpm:
            freed = await conn.fetchval(_REQUEST_FREED, pattern, self.window_s, usage.requests - caps.rpm)
            waits.append(_wait(freed, f"{pattern} rpm"))
        # A call larger than the whole budget goes alone, once the window is empty.
        if caps.tpm is not None and usage.tokens and usage.tokens + tokens > caps.tpm:
            excess = usage.tokens + min(tokens, caps.tpm) - caps.tpm
            freed = await conn.fetchval(_TOKENS_FREED, pattern, self.window_s, excess)
            waits.append(_wait(freed, f"{pattern} tpm"))
        if caps.concurrency is not None and usage.in_flight >= caps.concurrency:
            waits.append(_wait(CONCURRENCY_POLL_S, f"{pattern} concurrency"))
        return max(waits, key=lambda w: w.seconds) if waits else None

    async def started(self, lease_id: str) -> None:
        """The granted call's answer has begun: the window counts it from now, not from its grant."""
        await self.pool.execute("UPDATE provider_calls SET at = now() WHERE lease_id = $1", lease_id)

    async def release(self, lease_id: str, tokens: int | None) -> None:
        """The call ended: its concurrency slot frees, and the tokens it really used replace the estimate."""
        await self.pool.execute(
            "UPDATE provider_calls SET released_at = now(), tokens = coalesce($2, tokens) WHERE lease_id = $1",
            lease_id,
            tokens,
        )

    async def account(self, pattern: str, tokens: int, priority: Priority) -> None:
        """A call made without a grant (a retry of a granted call): counted in the window all the same."""
        lease_id = f"retry-{uuid.uuid4()}"
        await self.pool.execute(_GRANT, lease_id, pattern, priority, tokens, 0.0, True)

    async def cool_down(self, pattern: str, seconds: float, reason: str) -> None:
        """No call of `pattern` is granted for `seconds` (a cooldown never shortens one already set)."""
        await self.pool.execute(
            """
            INSERT INTO provider_limit_state (pattern, cooldown_until, cooldown_reason)
            VALUES ($1, now() + make_interval(secs => $2), $3)
            ON CONFLICT (pattern) DO UPDATE SET
                cooldown_until = greatest(provider_limit_state.cooldown_until, excluded.cooldown_until),
                cooldown_reason = excluded.cooldown_reason, updated_at = now()
            """,
            pattern,
            seconds,
            reason,
        )

    async def usage(self, pattern: str) -> Usage:
        async with self.pool.acquire() as conn:
            return await _usage(conn, pattern, self.window_s)

    async def utilization(self) -> dict[tuple[str, str], float]:
        """(pattern, kind) -> 0..1 of the full limit in use now, kind rpm, tpm or concurrency."""
        out: dict[tuple[str, str], float] = {}
        for pattern, limit in self.limits.items():
            usage = await self.usage(pattern)
            for kind, used, cap in (
                ("rpm", usage.requests, limit.rpm),
                ("tpm", usage.tokens, limit.tpm),
                ("concurrency", usage.in_flight, limit.concurrency),
            ):
                if cap is not None:
                    out[(pattern, kind)] = min(1.0, used / cap)
        return out


async def _usage(conn: asyncpg.Connection, pattern: str, window_s: float) -> Usage:
    row = await conn.fetchrow(_STATE, pattern, window_s)
    cooldown = row["cooldown_s"]
    return Usage(
        requests=int(row["requests"]),
        tokens=int(row["tokens"]),
        in_flight=int(row["in_flight"]),
        cooldown_s=None if cooldown is None else float(cooldown),
        interactive_waiting=bool(row["interactive_waiting"]),
    )


def _wait(seconds: float | None, reason: str) -> Wait:
    """A wait of about `seconds`, clamped, plus a little jitter so waiters don't all ask at the same instant."""
    base = min(MAX_WAIT_S, max(MIN_WAIT_S, float(seconds or 0)))
    return Wait(base + random.uniform(0, min(0.5, base / 10)), reason)
