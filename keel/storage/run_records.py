"""Run records in PostgreSQL: `agent_runs`, `llm_calls` and `tool_runs` (keel/storage/migrations/0003_run_records.sql;
a run's structured output in `agent_runs.output`, 0008).

Two ways in, both idempotent:

- The workflow's own facts (status changes, approvals, the outcome) arrive through the `record_run`
  activity, which Temporal retries without limit: durable even across worker crashes, and a PostgreSQL
  outage only delays them. `write_run_note` is its body.
- What happens inside one activity attempt (an LLM call's latency, tokens and error; a tool's result) is
  known only to that attempt, so it writes its own rows through `RecordWriter`, a write-behind queue that
  never lets a record write fail or slow an attempt: rows wait in memory, and in a spool file on disk while
  PostgreSQL is unreachable, and are written in order once it answers again.

Every write is an upsert keyed by (agent_run_id, seq, attempt) for LLM calls and tool runs, by id for
runs. It merges instead of replacing: a column is only overwritten by a known value and a status only moves
forward, so a write that arrives twice or late never undoes a newer one.

The gateway uses the read side (`list_runs`, `timeline`, `approval_backlog`) for the run viewer and metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import json
import logging
import os
import socket
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import asyncpg

from keel.contracts import Usage
from keel.text import one_line

log = logging.getLogger("keel.storage.run_records")

Table = Literal["llm_calls", "tool_runs"]

LLM_CALL_COLUMNS = (
    "agent_run_id",
    "seq",
    "attempt",
    "step",
    "activity_id",
    "provider",
    "model",
    "route",
    "status",
    "started_at",
    "finished_at",
    "latency_ms",
    "time_to_first_token_ms",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "finish_reason",
    "request_id",
    "error_type",
    "error_message",
)
TOOL_RUN_COLUMNS = (
    "agent_run_id",
    "seq",
    "attempt",
    "step",
    "activity_id",
    "tool_call_id",
    "tool_name",
    "status",
    "started_at",
    "finished_at",
    "latency_ms",
    "error_message",
    "params_snapshot",
    "result_snapshot",
    "approval",
    "approver",
    "approval_reason",
    "approval_requested_at",
    "approval_decided_at",
)
_COLUMNS: dict[Table, tuple[str, ...]] = {"llm_calls": LLM_CALL_COLUMNS, "tool_runs": TOOL_RUN_COLUMNS}

# How far along a status is. A write never moves a row back to a lower rank; every status not listed is
# final (rank 9), and between two finals the later write wins.
_RANKS: dict[str, dict[str, int]] = {
    "llm_calls": {"running": 0},
    "tool_runs": {
        "waiting_for_approval": 0,
        "waiting_for_input": 0,
        "waiting_for_tool_result": 0,
        "approved": 1,
        "running": 2,
    },
}
FINAL_TOOL_STATUSES = ("ok", "error", "denied", "expired", "not_run", "cancelled")
# Run statuses after which nothing changes any more (RunStatus.is_final).
FINAL_RUN_STATUSES = ("completed", "failed", "cancelled", "step_limit", "budget_exceeded", "needs_input")
ACTIVE_RUN_STATUSES = ("running", "waiting_for_approval", "waiting_for_input", "waiting_for_tool_result")

# Snapshots of tool arguments and results are for reading, not replaying: big ones are cut.
SNAPSHOT_LIMIT = 8_000


def snapshot(value: Any, limit: int = SNAPSHOT_LIMIT) -> Any:
    """A JSON value as stored in params_snapshot / result_snapshot: itself, or a preview when too big."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    if len(text) <= limit:
        return json.loads(text)
    return {"truncated": True, "size": len(text), "preview": text[:limit]}


def _rank(expr: str, table: str) -> str:
    cases = " ".join(f"WHEN '{status}' THEN {rank}" for status, rank in _RANKS[table].items())
    return f"(CASE {expr} {cases} ELSE 9 END)"


def _upsert_sql(table: Table) -> str:
    columns = _COLUMNS[table]
    placeholders = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    key = ("agent_run_id", "seq", "attempt")
    merged = [
        f"status = CASE WHEN {_rank('EXCLUDED.status', table)} >= {_rank(f'{table}.status', table)}"
        f" THEN EXCLUDED.status ELSE {table}.status END"
    ]
    merged += [f"{c} = COALESCE(EXCLUDED.{c}, {table}.{c})" for c in columns if c not in (*key, "status")]
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders})"
        f" ON CONFLICT ({', '.join(key)}) DO UPDATE SET {', '.join(merged)}, updated_at = now()"
    )


_UPSERT = {table: _upsert_sql(table) for table in _COLUMNS}


@dataclass
class Row:
    """One upsert into llm_calls or tool_runs; `values` has any subset of the table's columns."""

    table: Table
    values: dict[str, Any]

    def args(self) -> list[Any]:
        return [self.values.get(c) for c in _COLUMNS[self.table]]

    def to_json(self) -> str:
        return json.dumps({"table": self.table, "values": self.values}, default=_encode)

    @classmethod
    def from_json(cls, line: str) -> Row:
        data = json.loads(line, object_hook=_decode)
        return cls(table=data["table"], values=data["values"])


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$datetime": value.isoformat()}
    raise TypeError(f"cannot spool {type(value).__name__}")


def _decode(obj: dict[str, Any]) -> Any:
    if set(obj) == {"$datetime"}:
        return datetime.fromisoformat(obj["$datetime"])
    return obj


def _merge(earlier: Row, later: Row) -> Row:
    """One row that leaves the table as writing `earlier` and then `later` would: the upsert's own rules
    (a known value wins over a missing one, the status only moves forward), applied before writing."""
    values = {**earlier.values, **{c: v for c, v in later.values.items() if v is not None}}
    status_rank = _RANKS[later.table]
    before, after = earlier.values.get("status"), later.values.get("status")
    if before is not None and after is not None and status_rank.get(after, 9) < status_rank.get(before, 9):
        values["status"] = before
    return Row(later.table, values)


def merge_rows(rows: Sequence[Row]) -> list[Row]:
    """The rows with one write per (table, agent_run_id, seq, attempt), in the order each first appears.
    An attempt's `running` row and its outcome usually wait in the queue together: one write, not two."""
    merged: dict[tuple[Any, ...], Row] = {}
    for row in rows:
        key = (row.table, row.values["agent_run_id"], row.values.get("seq"), row.values.get("attempt") or 1)
        merged[key] = _merge(merged[key], row) if key in merged else row
    return list(merged.values())


def _record_sql(table: Table, later_attempt: bool) -> str:
    """One statement that writes an attempt's row, so a lone row costs one round trip: its run's row
    created if missing (a run started by hand, not through the gateway), an LLM call's step counted on the
    run, and, for a later attempt, the earlier ones still `running` closed as lost.

    Its parts see the tables as they were before the statement, so a run row it creates carries the step
    itself, and the update of step_count only meets a row that was there already.
    """
    columns = _COLUMNS[table]
    step, started = f"${columns.index('step') + 1}", f"${columns.index('started_at') + 1}"
    parts = [
        "run AS (INSERT INTO agent_runs (id, step_count) VALUES "
        + (f"($1, COALESCE({step}, 0))" if table == "llm_calls" else "($1, 0)")
        + " ON CONFLICT DO NOTHING)"
    ]
    if table == "llm_calls":
        parts.append(
            f"steps AS (UPDATE agent_runs SET step_count = {step}, updated_at = now()"
            f" WHERE id = $1 AND step_count < {step})"
        )
    if later_attempt:
        # An attempt that starts while an earlier one of the same call still reads `running`: Temporal only
        # retries once that one timed out, so its worker died or stalled without a word. It is closed as an
        # error; any word from the later attempt, its start or (merged with it) its outcome, tells.
        lost_type = ", error_type = 'WorkerLost'" if table == "llm_calls" else ""
        parts.append(
            f"lost AS (UPDATE {table} SET status = 'error', finished_at = COALESCE({started}, now()),"
            " updated_at = now(), error_message = 'the attempt never reported back: its worker stopped or"
            f" was presumed dead, and attempt ' || $3 || ' took over'{lost_type}"
            " WHERE agent_run_id = $1 AND seq = $2 AND attempt < $3 AND status = 'running')"
        )
    return f"WITH {', '.join(parts)} {_UPSERT[table]}"


_RECORD = {(table, later): _record_sql(table, later) for table in _COLUMNS for later in (False, True)}


async def write_row(conn: asyncpg.Connection | asyncpg.Pool, row: Row) -> None:
    await conn.execute(_RECORD[row.table, (row.values.get("attempt") or 1) > 1], *row.args())


async def write_rows(conn: asyncpg.Connection | asyncpg.Pool, rows: Sequence[Row]) -> None:
    """Upsert rows in one transaction: all of them or, when PostgreSQL refuses one, none."""
    if len(rows) == 1:
        await write_row(conn, rows[0])  # one statement is a transaction of its own
        return
    async with _transaction(conn) as tx:
        for row in rows:
            await write_row(tx, row)


@contextlib.asynccontextmanager
async def _transaction(conn: asyncpg.Connection | asyncpg.Pool):  # type: ignore[no-untyped-def]
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as acquired, acquired.transaction():
            yield acquired
    else:
        async with conn.transaction():
            yield conn


def is_unavailable(err: BaseException) -> bool:
    """True when PostgreSQL could not be reached, went away or asks to try again, as opposed to refusing
    what was sent (which trying again would not change)."""
    return isinstance(
        err,
        OSError
        | TimeoutError
        | asyncpg.InterfaceError
        | asyncpg.PostgresConnectionError
        | asyncpg.exceptions.OperatorInterventionError  # admin shutdown, crash shutdown, cannot connect now
        | asyncpg.exceptions.InsufficientResourcesError  # too many connections
        | asyncpg.exceptions.TransactionRollbackError,  # a deadlock or serialization failure: try again
    )


# Rows written per transaction, at most: a backlog after an outage goes out in bounded pieces.
_BATCH = 200


class RecordWriter:
    """Write-behind for the rows activity attempts produce.

    `put` never blocks and never raises: the row joins a queue that one task writes to PostgreSQL, oldest
    first, whatever has queued up meanwhile in one transaction (an attempt's start and outcome merged into
    one row). When PostgreSQL cannot be reached the queue is kept, in memory and in a spool file under
    `spool_dir` (fsync'd, one JSON row per line), and retried with backoff until it answers; nothing is
    dropped. A process that dies with rows still spooled leaves its file behind and the next writer that
    starts on the same directory adopts it (an flock tells a live owner from a dead one). Rows PostgreSQL
    refuses (a bug, not an outage) are logged whole and skipped, so one bad row can't hold up the rest.
    """

    def __init__(
        self,
        pool: asyncpg.Pool | None,
        spool_dir: Path | None = None,
        *,
        on_backlog: Callable[[int], None] | None = None,
        max_backoff: float = 5.0,
    ) -> None:
        self._pool = pool
        self._spool_dir = spool_dir
        self._queue: deque[Row] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._down = False
        self._max_backoff = max_backoff
        self._on_backlog = on_backlog or (lambda _: None)
        self._spool: Any = None  # our own spool file, open and flock'ed while it exists
        self._adopted: list[Any] = []  # other dead writers' spool files, deleted once written
        self.written = 0
        self._name = uuid.uuid4().hex[:8]

    @classmethod
    def disabled(cls) -> RecordWriter:
        """A writer that drops rows: for activities run without a database (unit tests)."""
        return cls(None)

    @property
    def backlog(self) -> int:
        return len(self._queue)

    @property
    def unavailable(self) -> bool:
        return self._down

    def start(self) -> None:
        if self._pool is None or self._task is not None:
            return
        self._adopt_orphans()
        self._task = asyncio.create_task(self._run(), name="keel-record-writer")

    def put(self, row: Row) -> None:
        if self._pool is None:
            return
        self._queue.append(row)
        self._idle.clear()
        self._on_backlog(len(self._queue))
        if self._down:
            self._spool_rows([row])
        self._wake.set()

    async def settle(self, seconds: float) -> bool:
        """Wait up to `seconds` for the queue to be written; False at once while PostgreSQL is away."""
        if self._idle.is_set():
            return True
        if self._down or self._task is None:
            return False
        try:
            await asyncio.wait_for(self._idle.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def close(self, seconds: float = 5.0) -> None:
        """Write what can be written within `seconds`; whatever is left stays in the spool file."""
        if self._task is None:
            return
        await self.settle(seconds)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        if self._queue:
            self._spool_rows(list(self._queue), rewrite=True)
            log.warning("%d run records not written yet; they stay in %s", len(self._queue), self._spool_path)
            if self._spool is not None:
                self._spool.close()  # releases the lock: the next writer on this directory adopts them
                self._spool = None
        elif self._spool is not None:
            self._drop_spool()

    async def _run(self) -> None:
        backoff = 0.2
        while True:
            if not self._queue:
                self._idle.set()
                await self._wake.wait()
            self._wake.clear()
            while self._queue:
                taken = list(itertools.islice(self._queue, _BATCH))
                try:
                    await asyncio.wait_for(self._write(taken), 10)
                except Exception as err:
                    if not self._down:
                        self._down = True
                        log.warning(
                            "PostgreSQL is unavailable (%s: %s); keeping run records until it answers",
                            type(err).__name__,
                            err,
                        )
                        self._spool_rows(list(self._queue), rewrite=True)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self._max_backoff)
                    continue
                for _ in taken:
                    self._queue.popleft()
                self.written += len(taken)
                self._on_backlog(len(self._queue))
            backoff = 0.2
            if self._down:
                self._down = False
                log.info("PostgreSQL answers again; the kept run records are written")
            self._drop_spool()
            self._drop_adopted()

    async def _write(self, rows: list[Row]) -> None:
        """Write the rows, merged, in one transaction. When PostgreSQL refuses that (a bug, not an outage),
        write them one by one and skip, logged whole, the ones it refuses. Raises only while it is away."""
        assert self._pool is not None
        try:
            await write_rows(self._pool, merge_rows(rows))
            return
        except Exception as err:
            if is_unavailable(err):
                raise
        for row in rows:
            try:
                await write_row(self._pool, row)
            except Exception as err:
                if is_unavailable(err):
                    raise
                log.error(
                    "PostgreSQL refused a run record, skipped: %s: %s; row %s",
                    type(err).__name__,
                    err,
                    row.to_json(),
                )

    # --- the spool file ---

    @property
    def _spool_path(self) -> Path | None:
        if self._spool_dir is None:
            return None
        return self._spool_dir / f"{socket.gethostname()}-{os.getpid()}-{self._name}.jsonl"

    def _spool_rows(self, rows: Sequence[Row], *, rewrite: bool = False) -> None:
        path = self._spool_path
        if path is None:
            return
        try:
            if self._spool is None:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._spool = path.open("a+", encoding="utf-8")
                fcntl.flock(self._spool, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if rewrite:
                self._spool.seek(0)
                self._spool.truncate()
            self._spool.write("".join(r.to_json() + "\n" for r in rows))
            self._spool.flush()
            os.fsync(self._spool.fileno())
        except OSError as err:  # a full or read-only disk: the rows are still in memory
            log.error("could not spool run records to %s: %s", path, err)

    def _drop_spool(self) -> None:
        if self._spool is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self._spool.name)
        self._spool.close()
        self._spool = None

    def _adopt_orphans(self) -> None:
        """Queue the rows a dead writer left in its spool file (its flock is gone with it)."""
        if self._spool_dir is None or not self._spool_dir.is_dir():
            return
        for path in sorted(self._spool_dir.glob("*.jsonl")):
            if path == self._spool_path:
                continue
            handle = path.open("r", encoding="utf-8")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()  # its writer is alive
                continue
            rows = []
            for line in handle:
                with contextlib.suppress(ValueError, KeyError):
                    rows.append(Row.from_json(line))
            log.info("adopting %d run records a stopped worker left in %s", len(rows), path)
            self._queue.extend(rows)
            self._adopted.append(handle)
        if self._queue:
            self._idle.clear()
            self._wake.set()

    def _drop_adopted(self) -> None:
        for handle in self._adopted:
            with contextlib.suppress(OSError):
                os.unlink(handle.name)
            handle.close()
        self._adopted.clear()


# --- the workflow's notes (the record_run activity) ---


@dataclass
class RunWrite:
    """What one note changes, for the metrics that count transitions exactly once."""

    previous_status: str | None
    status: str
    # (tool_name, approval, seconds waited) for each approval decided by this note.
    approvals_decided: list[tuple[str, str, float]] = field(default_factory=list)


_RUN_COLUMNS = (
    "id",
    "temporal_run_id",
    "chat_id",
    "user_id",
    "purpose_slug",
    "status",
    "status_version",
    "step_count",
    "model",
    "model_route",
    "started_at",
    "finished_at",
    "error_type",
    "error_message",
    "detail",
    "input_summary",
    "output_summary",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "unpriced_calls",
    "queued_behind",
    "output",
    "parent_run_id",
    "metadata",
)
_RUN_MERGE = {
    "status": "CASE WHEN EXCLUDED.status_version >= agent_runs.status_version"
    " THEN EXCLUDED.status ELSE agent_runs.status END",
    "status_version": "GREATEST(EXCLUDED.status_version, agent_runs.status_version)",
    "step_count": "GREATEST(EXCLUDED.step_count, agent_runs.step_count)",
    "started_at": "LEAST(EXCLUDED.started_at, agent_runs.started_at)",
    "purpose_slug": "COALESCE(NULLIF(EXCLUDED.purpose_slug, ''), agent_runs.purpose_slug)",
}
_UPSERT_RUN = (
    f"INSERT INTO agent_runs ({', '.join(_RUN_COLUMNS)})"
    f" VALUES ({', '.join(f'${i}' for i in range(1, len(_RUN_COLUMNS) + 1))})"
    " ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(
        f"{c} = {_RUN_MERGE.get(c, f'COALESCE(EXCLUDED.{c}, agent_runs.{c})')}" for c in _RUN_COLUMNS[1:]
    )
    + ", updated_at = now()"
)


async def run_started(
    pool: asyncpg.Pool,
    *,
    agent_run_id: str,
    purpose: str,
    model: str,
    chat_id: str | None,
    user_id: str | None,
    input_summary: str,
    queued_behind: str | None = None,
    parent_run_id: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> None:
    """The gateway's first record of a run, written with its conversation, before the workflow starts (or,
    for a sub-agent's child run, by the calling run's `open_sub_run` activity)."""
    values = {
        "queued_behind": queued_behind,
        "parent_run_id": parent_run_id,
        "metadata": metadata or None,
        "id": agent_run_id,
        "chat_id": chat_id,
        "user_id": user_id,
        "purpose_slug": purpose,
        "status": "running",
        "status_version": 0,
        "step_count": 0,
        "model": model,
        "input_summary": input_summary,
        "started_at": datetime.now(UTC),
    }
    await pool.execute(_UPSERT_RUN, *[values.get(c) for c in _RUN_COLUMNS])


# A status written because the workflow can write none any more (it never started, or was closed outside
# its loop): no note the workflow sent earlier, still on its way, may overwrite it.
CLOSED_FROM_OUTSIDE_VERSION = 2**31 - 1


async def run_not_started(pool: asyncpg.Pool, agent_run_id: str, why: str) -> None:
    """The run's workflow never started (Temporal refused it): its record says so, instead of `running`."""
    await close_from_outside(pool, agent_run_id, "failed", why, "NotStarted")


async def close_from_outside(
    pool: asyncpg.Pool, agent_run_id: str, status: str, detail: str, error_type: str
) -> bool:
    """End a run's record for a workflow that will write no more. True if the record still said the run
    was going (it is now ended); a record already final is left as it is."""
    ended = await pool.fetchval(
        "UPDATE agent_runs SET status = $2, status_version = $5, detail = $3, error_message = $3,"
        " error_type = $4, finished_at = COALESCE(finished_at, now()), updated_at = now()"
        " WHERE id = $1 AND status = ANY($6::text[]) RETURNING id",
        agent_run_id,
        status,
        detail,
        error_type,
        CLOSED_FROM_OUTSIDE_VERSION,
        list(ACTIVE_RUN_STATUSES),
    )
    return ended is not None


async def write_run_note(
    pool: asyncpg.Pool, run: dict[str, Any], tool_rows: list[dict[str, Any]], output_seq: int | None
) -> RunWrite:
    """Upsert a run's row and the tool rows the workflow knows about, in one transaction."""
    run_id = run["id"]
    async with pool.acquire() as conn, conn.transaction():
        # The status before this write (its row locked until commit) and the run's answer, in one round trip:
        # its text, and the validated object when the agent has structured output.
        previous, body, output = await conn.fetchrow(
            "SELECT (SELECT status FROM agent_runs WHERE id = $1 FOR UPDATE),"
            " (SELECT body->>'content' FROM run_messages WHERE agent_run_id = $1 AND seq = $2),"
            " (SELECT (body->>'output_json')::jsonb FROM run_messages WHERE agent_run_id = $1 AND seq = $2)",
            run_id,
            output_seq,
        )
        if body is not None:
            run = {**run, "output_summary": one_line(body, 200), "output": output}
        status = await conn.fetchval(_UPSERT_RUN + " RETURNING status", *[run.get(c) for c in _RUN_COLUMNS])
        decided = []
        if tool_rows:
            seqs = [r["seq"] for r in tool_rows]
            # Only the workflow's notes set `approval`: the first note that does counts the decision.
            before = {
                r["seq"]: r["approval"]
                for r in await conn.fetch(
                    "SELECT seq, approval FROM tool_runs WHERE agent_run_id = $1 AND attempt = 1"
                    " AND seq = ANY($2::int[]) FOR UPDATE",
                    run_id,
                    seqs,
                )
            }
            for row in tool_rows:
                await conn.execute(_UPSERT["tool_runs"], *Row("tool_runs", row).args())
                if row.get("approval") and before.get(row["seq"]) is None:
                    waited = (row["approval_decided_at"] - row["approval_requested_at"]).total_seconds()
                    decided.append((row["tool_name"], row["approval"], waited))
    return RunWrite(previous_status=previous, status=status, approvals_decided=decided)


# --- reading, for the run viewer and the gateway's metrics ---

_RUN_FIELDS = (
    "r.id AS agent_run_id, r.temporal_run_id, r.chat_id, r.user_id, r.purpose_slug AS purpose, r.status,"
    " r.step_count, r.model, r.model_route, r.started_at, r.finished_at, r.error_type, r.error_message,"
    " r.detail, r.input_summary, r.output_summary, r.parent_run_id,"
    " COALESCE(r.prompt_tokens, agg.prompt_tokens) AS prompt_tokens,"
    " COALESCE(r.completion_tokens, agg.completion_tokens) AS completion_tokens,"
    " COALESCE(r.cost_usd, agg.cost_usd) AS cost_usd, r.unpriced_calls,"
    " EXTRACT(EPOCH FROM (COALESCE(r.finished_at, now()) - r.started_at)) * 1000 AS duration_ms"
)
# While a run is going its totals come from its LLM calls so far; at the end the workflow's own count wins.
_LLM_TOTALS = (
    "LEFT JOIN LATERAL (SELECT sum(prompt_tokens)::bigint AS prompt_tokens,"
    " sum(completion_tokens)::bigint AS completion_tokens, sum(cost_usd) AS cost_usd"
    " FROM llm_calls l WHERE l.agent_run_id = r.id) agg ON true"
)


@dataclass
class RunFilter:
    status: str | None = None
    purpose: str | None = None
    user_id: str | None = None
    chat_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 50
    # Only runs nobody delegated to: sub-agents' child runs are left out (they show under their parent).
    top_level: bool = False


async def list_runs(pool: asyncpg.Pool, f: RunFilter) -> list[dict[str, Any]]:
    where: list[str] = []
    args: list[object] = []
    for column, value in (
        ("r.status", f.status),
        ("r.purpose_slug", f.purpose),
        ("r.user_id", f.user_id),
        ("r.chat_id", f.chat_id),
    ):
        if value is not None:
            args.append(value)
            where.append(f"{column} = ${len(args)}")
    if f.since is not None:
        args.append(f.since)
        where.append(f"r.started_at >= ${len(args)}")
    if f.until is not None:
        args.append(f.until)
        where.append(f"r.started_at < ${len(args)}")
    if f.top_level:
        where.append("r.parent_run_id IS NULL")
    args.append(f.limit)
    sql = (
        f"SELECT {_RUN_FIELDS} FROM agent_runs r {_LLM_TOTALS}"
        f" {'WHERE ' + ' AND '.join(where) if where else ''}"
        f" ORDER BY r.started_at DESC LIMIT ${len(args)}"
    )
    return [dict(r) for r in await pool.fetch(sql, *args)]


async def chat_runs(pool: asyncpg.Pool, chat_id: str, limit: int) -> list[dict[str, Any]]:
    """A chat's runs, newest first, including runs started before run records existed (no record row)."""
    rows = await pool.fetch(
        f"SELECT c.agent_run_id AS chat_run_id, c.started_at AS chat_started_at, {_RUN_FIELDS}"
        f" FROM chat_runs c LEFT JOIN agent_runs r ON r.id = c.agent_run_id {_LLM_TOTALS}"
        " WHERE c.chat_id = $1 ORDER BY c.started_at DESC LIMIT $2",
        chat_id,
        limit,
    )
    out = []
    for row in rows:
        item = dict(row)
        item["agent_run_id"] = item.pop("chat_run_id")
        started = item.pop("chat_started_at")
        item["started_at"] = item["started_at"] or started
        item["chat_id"] = chat_id
        out.append(item)
    return out


async def timeline(pool: asyncpg.Pool, agent_run_id: str) -> dict[str, Any] | None:
    async with pool.acquire() as conn:
        run = await conn.fetchrow(
            f"SELECT {_RUN_FIELDS} FROM agent_runs r {_LLM_TOTALS} WHERE r.id = $1", agent_run_id
        )
        if run is None:
            return None
        llm = await conn.fetch(
            f"SELECT {', '.join(LLM_CALL_COLUMNS[1:])} FROM llm_calls WHERE agent_run_id = $1 ORDER BY seq, attempt",
            agent_run_id,
        )
        tools = await conn.fetch(
            f"SELECT {', '.join(TOOL_RUN_COLUMNS[1:])} FROM tool_runs WHERE agent_run_id = $1 ORDER BY seq, attempt",
            agent_run_id,
        )
    return {"run": dict(run), "llm_calls": [dict(r) for r in llm], "tool_runs": [dict(r) for r in tools]}


# How many levels of sub-agents a run's tree loads at once; agents rarely delegate more than two deep.
TREE_DEPTH = 5


async def descendants(pool: asyncpg.Pool, agent_run_id: str, depth: int = TREE_DEPTH) -> list[dict[str, Any]]:
    """The runs below this one (its sub-agents' child runs, theirs, ... `depth` levels), oldest first,
    each with `depth` (1: a child), and `tool_call_id`: the parent's tool call that started it, known once
    the call has its result (its tool run's result names the child run)."""
    rows = await pool.fetch(
        "WITH RECURSIVE tree AS ("
        " SELECT id, 1 AS depth FROM agent_runs WHERE parent_run_id = $1"
        " UNION ALL SELECT a.id, tree.depth + 1 FROM agent_runs a JOIN tree ON a.parent_run_id = tree.id"
        " WHERE tree.depth < $2)"
        f" SELECT {_RUN_FIELDS}, tree.depth, call.tool_call_id"
        f" FROM tree JOIN agent_runs r ON r.id = tree.id {_LLM_TOTALS}"
        " LEFT JOIN LATERAL (SELECT t.tool_call_id FROM tool_runs t WHERE t.agent_run_id = r.parent_run_id"
        " AND t.result_snapshot->>'agent_run_id' = r.id LIMIT 1) call ON true"
        " ORDER BY r.started_at, r.id",
        agent_run_id,
        depth,
    )
    return [dict(r) for r in rows]


async def usage_of(pool: asyncpg.Pool, agent_run_id: str) -> Usage | None:
    """A run's usage as its record has it (its children's included), or None without a record."""
    row = await pool.fetchrow(
        "SELECT prompt_tokens, completion_tokens, cost_usd, unpriced_calls FROM agent_runs WHERE id = $1",
        agent_run_id,
    )
    if row is None:
        return None
    return Usage(
        prompt_tokens=row["prompt_tokens"] or 0,
        completion_tokens=row["completion_tokens"] or 0,
        cost_usd=row["cost_usd"] or 0.0,
        unpriced_calls=row["unpriced_calls"] or 0,
    )


async def own_usage(pool: asyncpg.Pool, agent_run_ids: Sequence[str]) -> dict[str, Any]:
    """The tokens and cost of these runs' own LLM calls, added up: a run and its descendants together make
    the tree's usage, each call counted once (a finished run's own totals include its children's)."""
    row = await pool.fetchrow(
        "SELECT COALESCE(sum(prompt_tokens), 0)::bigint AS prompt_tokens,"
        " COALESCE(sum(completion_tokens), 0)::bigint AS completion_tokens, sum(cost_usd) AS cost_usd"
        " FROM llm_calls WHERE agent_run_id = ANY($1::text[])",
        list(agent_run_ids),
    )
    return dict(row) if row is not None else {}


async def approval_backlog(pool: asyncpg.Pool) -> tuple[int, float]:
    """How many tool calls wait for approval now, and how long the oldest has waited (seconds)."""
    row = await pool.fetchrow(
        "SELECT count(*) AS pending,"
        " COALESCE(EXTRACT(EPOCH FROM now() - min(approval_requested_at)), 0) AS oldest"
        " FROM tool_runs WHERE status = 'waiting_for_approval'"
    )
    return int(row["pending"]), float(row["oldest"])


async def active_runs(pool: asyncpg.Pool) -> dict[str, int]:
    """How many runs are in each not-yet-final status now."""
    rows = await pool.fetch(
        "SELECT status, count(*) AS n FROM agent_runs WHERE status = ANY($1::text[]) GROUP BY status",
        list(ACTIVE_RUN_STATUSES),
    )
    counts = dict.fromkeys(ACTIVE_RUN_STATUSES, 0)
    counts.update({r["status"]: r["n"] for r in rows})
    return counts


async def longest_idle_runs(pool: asyncpg.Pool) -> dict[str, float]:
    """Per not-yet-final status, the longest any run in it has gone without a recorded change (seconds)."""
    rows = await pool.fetch(
        "SELECT status, EXTRACT(EPOCH FROM now() - min(updated_at)) AS idle FROM agent_runs"
        " WHERE status = ANY($1::text[]) GROUP BY status",
        list(ACTIVE_RUN_STATUSES),
    )
    idle = dict.fromkeys(ACTIVE_RUN_STATUSES, 0.0)
    idle.update({r["status"]: float(r["idle"]) for r in rows})
    return idle
