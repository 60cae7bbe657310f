"""Session fixtures: a real Temporal dev server, a real PostgreSQL, and Keel's worker and gateway as the
processes `make dev` runs (`python worker.py`, `python -m api`). Nothing here is mocked."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHistory

from keel.agent import RunContext
from keel.app import load_app
from keel.encryption import write_new_key_file
from keel.settings import Settings, get_settings
from keel.stack.embedded import EmbeddedPostgres, TemporalDevServer, free_port, stop_process_group
from keel.storage.store import RunStore, create_pool
from keel.temporal import connect_temporal
from tests.fake_vendors import FakeVendors, start_fake_vendors, stop_fake_vendors

ROOT = Path(__file__).resolve().parent.parent
# The browser tests' fixtures (`browser`, `page`): tests/browser.py.
pytest_plugins = ["tests.browser"]
# The example agents Keel serves without KEEL_APP (examples/keel_examples), loaded as the workers load them.
EXAMPLES = load_app()
# A run's context when a test starts a workflow itself, with no request.
NO_CONTEXT = RunContext(context={}, user_id=None, chat_id=None)
VENDOR_TASK_QUEUE = "agent-runs-vendors"
# The keys the fake vendors are called with. They must never show up where a person or a log could read.
FAKE_OPENAI_KEY = "sk-test-keel-openai-secret-0123456789"
FAKE_ANTHROPIC_KEY = "sk-ant-test-keel-secret-0123456789"
# The HS256 secret of the `auth` gateway; like the keys above, it must never show up in a log.
AUTH_JWT_SECRET = "test-keel-jwt-secret-0123456789abcdef-never-logged"
# The test Temporal runs headless, so the `keel` gateway knows no Web UI (KEEL_TEMPORAL_UI_URL unset) and
# shows no links; the `temporal-ui` gateway is told this address, for tests of the links and the codec's CORS.
TEMPORAL_UI_URL = "http://temporal-ui.example:8233"


def pytest_configure(config: pytest.Config) -> None:
    # A SIGTERM (a `timeout`, a CI runner stopping the job) becomes a KeyboardInterrupt, so the session
    # fixtures' teardown still stops Temporal, PostgreSQL, the workers and gateways instead of orphaning them.
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # tests/test_replay.py replays every run the session made, so it runs after all the others.
    items.sort(key=lambda item: item.path.name == "test_replay.py")


@dataclass(frozen=True)
class Keel:
    """Where the test stack lives, and the environment Keel's processes run with."""

    env: dict[str, str]
    data_dir: Path
    gateway_url: str

    def settings(self) -> Settings:
        return Settings(**{k: v for k, v in self.env.items() if k.isupper()})


@pytest.fixture(scope="session")
def temporal_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TemporalDevServer]:
    # Persisted to a file, as under `make dev`, so a test can look at what Temporal stores.
    server = TemporalDevServer.start(db_file=tmp_path_factory.mktemp("temporal") / "temporal.db")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres.start(tmp_path_factory.mktemp("postgres") / "data")
    yield server
    server.stop()


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _wait_for(what: str, ready: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if ready():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not become ready in 60 s:\n{log.read_text()[-3000:]}")


def skip_or_fail(reason: str) -> None:
    """Skip a test whose tools are missing here, saying why. Under CI (`CI=true`) a missing piece is a broken
    setup that a skip would hide, so the test fails instead."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (under CI this is a failure, not a skip)")
    pytest.skip(reason)


async def wait_for_status(
    http: httpx.AsyncClient, agent_run_id: str, *statuses: str, within: float = 10.0
) -> dict[str, Any]:
    """The run's state (GET /api/runs/{id}) once its status is one of `statuses`."""
    for _ in range(int(within / 0.05)):
        state = (await http.get(f"/api/runs/{agent_run_id}")).json()
        if state["status"] in statuses:
            return state
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {agent_run_id} stayed {state['status']}, expected {statuses}")


# Bookkeeping whose count depends on timing (a sticky task timing out, a long local activity heartbeating),
# not on what the run did.
_WORKFLOW_TASK_EVENTS = {
    EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT,
    EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED,
}


def run_events(history: WorkflowHistory) -> list[HistoryEvent]:
    """The events the run's own commands and inputs wrote, without the workflow tasks' bookkeeping."""
    return [e for e in history.events if e.event_type not in _WORKFLOW_TASK_EVENTS]


def _healthy(url: str) -> bool:
    try:
        response = httpx.get(f"{url}/healthz", timeout=2)
        # The gateway's own answer: another server that took the port (a worker's metrics endpoint picks
        # a free port too) may answer 200 as well.
        return response.status_code == 200 and response.json().get("postgres") == "ok"
    except (httpx.HTTPError, ValueError):
        return False


@pytest.fixture(scope="session")
def keel(
    temporal_server: TemporalDevServer, postgres: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Keel]:
    """Keel's worker and gateway, running as subprocesses against the test Temporal and PostgreSQL."""
    base = tmp_path_factory.mktemp("keel")
    port = free_port()
    # Encrypted payloads, as under `make dev`.
    write_new_key_file(base / "codec-keys.json")
    env = {
        **os.environ,
        "TEMPORAL_ADDRESS": temporal_server.address,
        "DATABASE_URL": postgres.uri,
        "KEEL_DATA_DIR": str(base / "data"),
        "KEEL_PORT": str(port),
        "KEEL_MODEL": "scripted",
        "KEEL_TASK_QUEUE": "agent-runs",
        "KEEL_HEAVY_TASK_QUEUE": "agent-heavy",
        # The worker's /metrics on a port of its own, so tests never collide with `make dev` (9464).
        "KEEL_WORKER_METRICS_PORT": str(free_port()),
        "KEEL_HEAVY_WORKER_METRICS_PORT": str(free_port()),
        "KEEL_CODEC_KEY_FILE": str(base / "codec-keys.json"),
        # The reconciler (keel/storage/reconciler.py) every second instead of every 30, so tests need not wait.
        "KEEL_RECONCILE_SECONDS": "1",
        # No Web UI (the test Temporal is headless), whatever the shell says: empty is unset.
        "KEEL_TEMPORAL_UI_URL": "",
    }
    worker_log, heavy_log, gateway_log = base / "worker.log", base / "heavy-worker.log", base / "gateway.log"
    worker = _spawn([sys.executable, "worker.py"], env, worker_log)
    heavy = _spawn([sys.executable, "worker.py", "--queue", "heavy"], env, heavy_log)
    gateway = _spawn([sys.executable, "-m", "api"], env, gateway_log)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for("worker", lambda: b"worker polling" in worker_log.read_bytes(), worker, worker_log)
        _wait_for("heavy worker", lambda: b"worker polling" in heavy_log.read_bytes(), heavy, heavy_log)
        _wait_for("gateway", lambda: _healthy(url), gateway, gateway_log)
        yield Keel(env=env, data_dir=base / "data", gateway_url=url)
    finally:
        stop_process_group(gateway)
        stop_process_group(heavy)
        stop_process_group(worker)


EXTRA_GATEWAYS = {
    "enqueue": {"KEEL_DOUBLE_TEXTING": "enqueue"},
    "interrupt": {"KEEL_DOUBLE_TEXTING": "interrupt"},
    # Five chunks a second, for watching streams; keep-alive comments after a quarter second of silence.
    "slow": {"KEEL_MODEL": "scripted:slow", "KEEL_SSE_PING_SECONDS": "0.25"},
    # Authentication on, as Keel faces the internet (tests/test_security.py); five run starts a minute.
    "auth": {"KEEL_AUTH": "jwt,api-key", "KEEL_JWT_SECRET": AUTH_JWT_SECRET, "KEEL_RATE_LIMIT": "5"},
    # Knows where the Temporal Web UI is: run links and the codec endpoint's CORS origin.
    "temporal-ui": {"KEEL_TEMPORAL_UI_URL": TEMPORAL_UI_URL},
}


@pytest.fixture(scope="session")
def gateways(keel: Keel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """More gateways on the same worker, configured differently: name -> base URL (see EXTRA_GATEWAYS)."""
    base = tmp_path_factory.mktemp("gateways")
    started: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    try:
        for name, overrides in EXTRA_GATEWAYS.items():
            port, log = free_port(), base / f"gateway-{name}.log"
            url = f"http://127.0.0.1:{port}"
            env = {**keel.env, "KEEL_PORT": str(port), **overrides}
            started[name] = (_spawn([sys.executable, "-m", "api"], env, log), url)
        for name, (proc, url) in started.items():
            _wait_for(f"{name} gateway", lambda url=url: _healthy(url), proc, base / f"gateway-{name}.log")
        yield {name: url for name, (_, url) in started.items()}
    finally:
        for proc, _ in started.values():
            stop_process_group(proc)


@pytest.fixture(scope="session")
async def temporal(temporal_server: TemporalDevServer, keel: Keel) -> Client:
    return await connect_temporal(keel.settings())


@pytest.fixture
async def http(keel: Keel) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=keel.gateway_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
def fake_vendors() -> Iterator[FakeVendors]:
    """A local server speaking OpenAI's and Anthropic's wire formats (tests/fake_vendors.py)."""
    vendors, server, thread = start_fake_vendors()
    yield vendors
    stop_fake_vendors(server, thread)


@pytest.fixture
def vendor_settings(fake_vendors: FakeVendors, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """This process's environment pointed at the fake vendors, as a worker's would be."""
    env = {
        "OPENAI_API_KEY": FAKE_OPENAI_KEY,
        "OPENAI_BASE_URL": fake_vendors.openai_base_url,
        "ANTHROPIC_API_KEY": FAKE_ANTHROPIC_KEY,
        "ANTHROPIC_BASE_URL": fake_vendors.anthropic_base_url,
        "KEEL_LOCAL_BASE_URL": fake_vendors.openai_base_url,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@dataclass(frozen=True)
class VendorWorker:
    task_queue: str
    log: Path


@pytest.fixture(scope="session")
def vendor_worker(
    temporal_server: TemporalDevServer,
    postgres: EmbeddedPostgres,
    fake_vendors: FakeVendors,
    keel: Keel,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[VendorWorker]:
    """A second worker, on its own task queue, whose openai:, anthropic: and local: routes reach the fakes."""
    base = tmp_path_factory.mktemp("vendor-worker")
    env = {
        # The same payload encryption as the main worker and the tests' client.
        "KEEL_CODEC_KEY_FILE": keel.env["KEEL_CODEC_KEY_FILE"],
        **os.environ,
        "TEMPORAL_ADDRESS": temporal_server.address,
        "DATABASE_URL": postgres.uri,
        "KEEL_DATA_DIR": str(base / "data"),
        "KEEL_TASK_QUEUE": VENDOR_TASK_QUEUE,
        "KEEL_WORKER_METRICS_PORT": str(free_port()),
        "KEEL_MODEL": "openai:gpt-4o-mini",
        "OPENAI_API_KEY": FAKE_OPENAI_KEY,
        "OPENAI_BASE_URL": fake_vendors.openai_base_url,
        "ANTHROPIC_API_KEY": FAKE_ANTHROPIC_KEY,
        "ANTHROPIC_BASE_URL": fake_vendors.anthropic_base_url,
        "KEEL_LOCAL_BASE_URL": fake_vendors.openai_base_url,
    }
    log = base / "worker.log"
    worker = _spawn([sys.executable, "worker.py"], env, log)
    try:
        _wait_for("vendor worker", lambda: b"worker polling" in log.read_bytes(), worker, log)
        yield VendorWorker(task_queue=VENDOR_TASK_QUEUE, log=log)
    finally:
        stop_process_group(worker)


@pytest.fixture(scope="session")
async def store(postgres: EmbeddedPostgres) -> AsyncIterator[RunStore]:
    pool = await create_pool(postgres.uri)
    yield RunStore(pool)
    await pool.close()
