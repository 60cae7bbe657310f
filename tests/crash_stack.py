"""Keel processes a test may kill: each test gets its own workers and gateways, on task queues of its own,
against the session's one Temporal dev server and one PostgreSQL, so a `kill -9` here disturbs no other
test. Also an SSE client that keeps what it read when the gateway under it dies."""

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import Client

from keel.settings import Settings
from keel.stack.embedded import EmbeddedPostgres, TemporalDevServer, free_port, stop_process_group
from keel.temporal import connect_temporal
from tests.conftest import _healthy, _spawn, _wait_for
from tests.ui_stream import UIStream, parse_text


async def until(condition: Callable[[], Any], what: str, within: float = 60) -> Any:
    """Poll a condition (plain or async) every 50 ms until it holds; its value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not within {within} s")
        await asyncio.sleep(0.05)


@dataclass
class Process:
    """One Keel process (`worker.py` or `python -m api`) that can be killed and started again with the
    same environment. Each incarnation logs to a file of its own."""

    name: str
    args: list[str]
    env: dict[str, str]
    base: Path
    url: str | None = None
    # The variables naming the ports it listens on.
    ports: tuple[str, ...] = ()
    incarnations: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.incarnations[-1]

    def log_text(self) -> str:
        return "".join(log.read_text(errors="replace") for log in self.logs)

    def spawn(self) -> None:
        log = self.base / f"{self.name}-{len(self.logs) + 1}.log"
        self.logs.append(log)
        self.incarnations.append(_spawn(self.args, self.env, log))

    async def ready(self) -> None:
        log, proc = self.logs[-1], self.proc
        if self.url is None:
            ready = lambda: b"worker polling" in log.read_bytes()  # noqa: E731
        else:
            # Listening, and answering: a port free when picked may have been taken since by another
            # process whose HTTP server would answer /healthz too.
            ready = lambda: b"Uvicorn running on" in log.read_bytes() and _healthy(self.url)  # noqa: E731
        await asyncio.to_thread(_wait_for, self.name, ready, proc, log)

    async def start(self, *, same_port: bool = False) -> "Process":
        """Start the process and wait until it is ready. A port taken between picking and binding it gets
        another try on new ports, unless `same_port` (a gateway its clients come back to)."""
        for tries_left in (2, 1, 0):
            self.spawn()
            try:
                await self.ready()
                return self
            except RuntimeError:
                log = self.logs[-1].read_text(errors="replace").lower()
                clash = "address already in use" in log or "cannot serve worker metrics" in log
                if same_port or not clash or not tries_left:
                    raise
            for variable in self.ports:
                self.env[variable] = str(free_port())
            if self.url is not None:
                self.url = f"http://127.0.0.1:{self.env['KEEL_PORT']}"
        raise AssertionError("unreachable")

    def kill(self) -> None:
        """kill -9 of the whole process group: no shutdown code runs."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        assert self.proc.returncode == -signal.SIGKILL

    def freeze(self) -> None:
        """SIGSTOP: the process is alive but does nothing, like a worker stuck in a long GC or a VM pause."""
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)

    async def restart(self) -> "Process":
        """A fresh process with the same environment (and, for a gateway, the same port)."""
        return await self.start(same_port=self.url is not None)

    def stop(self) -> None:
        for proc in self.incarnations:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGCONT)  # a frozen process could not hear the SIGTERM
                stop_process_group(proc)


class CrashStack:
    """One test's own Keel: workers and gateways on task queues nobody else uses, with their own data
    dir, against the shared Temporal and PostgreSQL."""

    def __init__(
        self,
        temporal: TemporalDevServer,
        postgres: EmbeddedPostgres,
        base: Path,
        codec_key_file: str,
        **env: str,
    ):
        self.base = base
        tag = uuid.uuid4().hex[:8]
        self.env = {
            **os.environ,
            "TEMPORAL_ADDRESS": temporal.address,
            "DATABASE_URL": postgres.uri,
            "KEEL_DATA_DIR": str(base / "data"),
            "KEEL_MODEL": "scripted",
            "KEEL_TASK_QUEUE": f"crash-{tag}",
            "KEEL_HEAVY_TASK_QUEUE": f"crash-heavy-{tag}",
            # The session's payload key, so the session's replay test can read these runs too.
            "KEEL_CODEC_KEY_FILE": codec_key_file,
            "KEEL_SSE_PING_SECONDS": "1",
            **env,
        }
        self.processes: list[Process] = []
        self._client: Client | None = None

    @property
    def data_dir(self) -> Path:
        return Path(self.env["KEEL_DATA_DIR"])

    def settings(self) -> Settings:
        return Settings(**{k: v for k, v in self.env.items() if k.isupper()})

    def _process(self, name: str, args: list[str], url: str | None = None, **ports: str) -> Process:
        process = Process(name, args, {**self.env, **ports}, self.base, url, tuple(ports))
        self.processes.append(process)
        return process

    def worker(self, name: str = "worker") -> Process:
        """An agent worker: AgentRun workflows, LLM calls and inline tools."""
        return self._process(name, [sys.executable, "worker.py"], KEEL_WORKER_METRICS_PORT=str(free_port()))

    def heavy_worker(self, name: str = "heavy-worker") -> Process:
        """A heavy-tool worker (`worker.py --queue heavy`)."""
        args = [sys.executable, "worker.py", "--queue", "heavy"]
        return self._process(name, args, KEEL_HEAVY_WORKER_METRICS_PORT=str(free_port()))

    def gateway(self, name: str = "gateway") -> Process:
        port = free_port()
        return self._process(
            name, [sys.executable, "-m", "api"], f"http://127.0.0.1:{port}", KEEL_PORT=str(port)
        )

    async def start(self, *processes: Process) -> None:
        """Start processes side by side and wait until every one is ready."""
        await asyncio.gather(*(p.start() for p in processes))

    async def temporal(self) -> Client:
        """A client of the test's own (encrypted) payloads."""
        if self._client is None:
            self._client = await connect_temporal(self.settings())
        return self._client

    def __enter__(self) -> "CrashStack":
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:
            process.stop()


@contextlib.asynccontextmanager
async def gateway_client(stack: CrashStack) -> AsyncIterator[httpx.AsyncClient]:
    """An agent worker and a gateway of the stack, started, and a client of that gateway."""
    processes = [stack.worker(), stack.gateway()]
    await stack.start(*processes)
    async with httpx.AsyncClient(base_url=processes[-1].url or "", timeout=60) as client:
        yield client


@dataclass
class Watch:
    """What one SSE client has read so far, complete events only; `dropped` when the connection broke."""

    raw: str = ""
    response: httpx.Response | None = None
    dropped: BaseException | None = None
    ended: bool = False

    @property
    def stream(self) -> UIStream:
        assert self.response is not None
        return parse_text(self.raw[: self.raw.rfind("\n\n") + 2], self.response)

    @property
    def pairs(self) -> list[tuple[int | None, dict[str, Any]]]:
        stream = self.stream
        return list(zip(stream.ids, stream.chunks, strict=True))

    @property
    def run_id(self) -> str:
        assert self.response is not None
        return self.response.headers["x-agent-run-id"]

    def deltas(self) -> int:
        return len(self.stream.of_type("text-delta")) if self.response is not None else 0


async def follow(watch: Watch, url: str, method: str = "GET", **kwargs: Any) -> Watch:
    """Read an SSE response as it arrives into `watch`, until it ends or its gateway goes away."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=60)) as http:
        try:
            async with http.stream(method, url, **kwargs) as response:
                assert response.status_code == 200, (await response.aread()).decode()
                watch.response = response
                async for piece in response.aiter_text():
                    watch.raw += piece
        except (httpx.RemoteProtocolError, httpx.ReadError) as err:
            watch.dropped = err
    watch.ended = True
    return watch


def watching(url: str, method: str = "GET", **kwargs: Any) -> tuple[Watch, "asyncio.Task[Watch]"]:
    watch = Watch()
    return watch, asyncio.create_task(follow(watch, url, method, **kwargs))


async def running_activity(temporal: Client, agent_run_id: str, activity: str) -> Any:
    """The activity of that type a worker is running now in the run (Temporal's pending activity), or None."""
    description = await temporal.get_workflow_handle(agent_run_id).describe()
    pending = description.raw_description.pending_activities
    return next(
        (
            p
            for p in pending
            if p.activity_type.name == activity
            and p.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
        ),
        None,
    )


async def task_takers(temporal: Client, agent_run_id: str) -> dict[str, set[int]]:
    """Which worker processes (by pid) took the run's tasks, from Temporal's history: `workflow` for its
    workflow tasks, else the activity type (local activities, the model calls and inline tools of runs since
    model calls became local, run inside workflow tasks: not listed)."""
    history = await temporal.get_workflow_handle(agent_run_id).fetch_history()
    scheduled = {
        e.event_id: e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
    }
    taken: dict[str, set[int]] = {}
    for e in history.events:
        if e.HasField("workflow_task_started_event_attributes"):
            kind, identity = "workflow", e.workflow_task_started_event_attributes.identity
        elif e.HasField("activity_task_started_event_attributes"):
            attributes = e.activity_task_started_event_attributes
            kind, identity = scheduled[attributes.scheduled_event_id], attributes.identity
        else:
            continue
        # The SDK's default worker identity is `<pid>@<host>`.
        taken.setdefault(kind, set()).add(int(identity.split("@")[0]))
    return taken
