"""The stack every benchmark section runs against: one Temporal dev server, one PostgreSQL, and Keel's
worker and gateway as the same subprocesses `make dev` and the tests run (`python worker.py`,
`python -m api`).

    async with Harness.start(workdir) as h:
        worker = h.spawn_worker()
        proc, url = h.spawn_gateway()
        client = await h.client()

Temporal and PostgreSQL come from `keel.stack.embedded`, the code behind `make dev` and tests/conftest.py, so a
benchmark measures the stack people run (including its dev-server tuning, DEV_SERVER_TUNING, which lifts
the one-shard dev server's 20/s transfer-queue poll cap that added 35-50 ms to every workflow task). No payload codec: encryption has a cost of its own, which a
section may measure separately by passing KEEL_CODEC_KEY_FILE in `extra_env`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
from temporalio.client import Client

from keel.settings import Settings
from keel.stack.embedded import EmbeddedPostgres, TemporalDevServer, free_port, stop_process_group
from keel.storage.store import RunStore, create_pool
from keel.temporal import connect_temporal

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 60.0
# Task queue of the main Keel worker; `spawn_worker(queue="heavy")` serves the heavy-tool queue.
TASK_QUEUE = "agent-runs"
HEAVY_TASK_QUEUE = "agent-heavy"
# Variables of the caller's environment that would change what is measured (a codec, tracing, another
# server), so Keel's processes never inherit them. PYTHONDONTWRITEBYTECODE too: Temporal's sandbox imports
# the workflow module afresh for every new run, and without a .pyc that means compiling agent_run.py each
# time (7% of the worker's CPU in a py-spy profile, half the runs per second of a normal install).
_DROPPED = (
    "KEEL_CODEC_KEY_FILE",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "PYTHONDONTWRITEBYTECODE",
)


class Harness:
    """Where the benchmark stack lives, and how to start Keel's processes on it."""

    def __init__(self, workdir: Path, temporal: TemporalDevServer, postgres: EmbeddedPostgres) -> None:
        self.workdir = workdir
        self.temporal_address = temporal.address
        self.database_url = postgres.uri
        self._temporal = temporal
        self._postgres = postgres
        base = {k: v for k, v in os.environ.items() if k not in _DROPPED}
        self.env: dict[str, str] = {
            **base,
            "TEMPORAL_ADDRESS": self.temporal_address,
            "DATABASE_URL": self.database_url,
            "KEEL_DATA_DIR": str(workdir / "data"),
            "KEEL_MODEL": "scripted",
            "KEEL_TASK_QUEUE": TASK_QUEUE,
            "KEEL_HEAVY_TASK_QUEUE": HEAVY_TASK_QUEUE,
            "KEEL_WORKER_METRICS_PORT": str(free_port()),
            # Benchmarks start runs far faster than a person does.
            "KEEL_RATE_LIMIT": "0",
            "PYTHONUNBUFFERED": "1",
        }
        self._procs: list[subprocess.Popen[bytes]] = []
        self._client: Client | None = None
        self._store: RunStore | None = None
        self._logs = workdir / "logs"
        self._logs.mkdir(parents=True, exist_ok=True)

    @classmethod
    @contextlib.asynccontextmanager
    async def start(cls, workdir: Path, *, temporal_db: bool = True) -> AsyncIterator[Harness]:
        """Start Temporal and PostgreSQL under `workdir`; stop them and every spawned process on exit.

        temporal_db keeps Temporal's state in a SQLite file, as `make dev` does (False: in memory).
        """
        workdir = await asyncio.to_thread(_prepare, workdir)
        # Both start() calls block (the Temporal probe even runs its own event loop), so off this loop.
        temporal = await asyncio.to_thread(
            TemporalDevServer.start,
            db_file=workdir / "temporal.db" if temporal_db else None,
            log_file=workdir / "logs" / "temporal.log",
        )
        postgres: EmbeddedPostgres | None = None
        harness: Harness | None = None
        try:
            postgres = await asyncio.to_thread(EmbeddedPostgres.start, workdir / "postgres" / "data")
            harness = cls(workdir, temporal, postgres)
            yield harness
        finally:
            if harness is not None:
                await harness.close()
            if postgres is not None:
                await asyncio.to_thread(postgres.stop)
            await asyncio.to_thread(temporal.stop)

    # --- Keel's processes ---

    def spawn_worker(
        self, *, queue: str = "agent", extra_env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """`python worker.py` (queue "agent") or `python worker.py --queue heavy`, once it polls."""
        args = [sys.executable, "worker.py"] + ([] if queue == "agent" else ["--queue", queue])
        # Each worker serves its Prometheus endpoint on a port of its own.
        port = str(free_port())
        env = {"KEEL_WORKER_METRICS_PORT": port, "KEEL_HEAVY_WORKER_METRICS_PORT": port, **(extra_env or {})}
        return self.spawn_polling(args, f"worker-{queue}", extra_env=env)

    def spawn_polling(
        self, args: list[str], name: str, *, extra_env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Any worker process (Keel's or a baseline's) that logs "worker polling" once it polls."""
        log = self._log_path(name)
        proc = self._spawn(args, log, extra_env)
        self._wait_for(name, lambda: b"worker polling" in log.read_bytes(), proc, log)
        return proc

    def spawn_gateway(
        self, *, extra_env: dict[str, str] | None = None
    ) -> tuple[subprocess.Popen[bytes], str]:
        """`python -m api` on a free port, once /healthz answers 200. Returns (process, base URL)."""
        port = free_port()
        return self.spawn_serving(
            [sys.executable, "-m", "api"], "gateway", port, {"KEEL_PORT": str(port), **(extra_env or {})}
        )

    def spawn_serving(
        self, args: list[str], name: str, port: int, extra_env: dict[str, str] | None = None
    ) -> tuple[subprocess.Popen[bytes], str]:
        """Any HTTP server process on `port`, once its /healthz answers 200. Returns (process, base URL)."""
        url = f"http://127.0.0.1:{port}"
        log = self._log_path(name)
        proc = self._spawn(args, log, extra_env)
        self._wait_for(name, lambda: _healthy(url), proc, log)
        return proc, url

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """Stop a process this harness spawned (SIGTERM to its group, SIGKILL after 10 s)."""
        stop_process_group(proc)
        if proc in self._procs:
            self._procs.remove(proc)

    # --- clients ---

    def settings(self, extra_env: dict[str, str] | None = None) -> Settings:
        """Keel's settings as its processes see them (with `extra_env` on top)."""
        env = {**self.env, **(extra_env or {})}
        # Settings ignores the variables it doesn't know (PATH, ...).
        return Settings(**{k: v for k, v in env.items() if k.isupper()})

    async def client(self) -> Client:
        """A Temporal client with Keel's data converter (keel.temporal.connect_temporal); one per harness."""
        if self._client is None:
            self._client = await connect_temporal(self.settings())
        return self._client

    async def store(self) -> RunStore:
        """Keel's conversation store on the benchmark PostgreSQL (one pool per harness)."""
        if self._store is None:
            self._store = RunStore(await create_pool(self.database_url, max_size=20))
        return self._store

    async def close(self) -> None:
        for proc in list(self._procs):
            await asyncio.to_thread(self.stop, proc)
        if self._store is not None:
            await self._store.pool.close()
            self._store = None

    # --- plumbing ---

    def _log_path(self, name: str) -> Path:
        # Several processes of one kind over a run: number them so no log overwrites another.
        n = 1
        while (self._logs / f"{name}-{n}.log").exists():
            n += 1
        return self._logs / f"{name}-{n}.log"

    def _spawn(self, args: list[str], log: Path, extra_env: dict[str, str] | None) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                args,
                cwd=ROOT,
                env={**self.env, **(extra_env or {})},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Its own process group, so stop() reaches anything it spawns.
                start_new_session=True,
            )
        self._procs.append(proc)
        return proc

    def _wait_for(
        self, what: str, ready: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path
    ) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self._procs.remove(proc)
                raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            if ready():
                return
            time.sleep(0.05)
        self.stop(proc)
        raise RuntimeError(f"{what} was not ready after {READY_TIMEOUT:.0f} s:\n{log.read_text()[-3000:]}")


def _prepare(workdir: Path) -> Path:
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
