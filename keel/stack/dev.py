"""`make dev`: run the whole stack locally and stop all of it on Ctrl-C.

    python -m keel.stack.dev

Starts, in order: a Temporal dev server with its Web UI (unless TEMPORAL_ADDRESS is set), embedded
PostgreSQL (unless DATABASE_URL is set), the agent worker, the heavy-tool worker and the gateway. State lives in KEEL_DATA_DIR (default
.keel/), so runs, conversations and workflow histories survive a restart.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from keel.app import App, AppError, load_app
from keel.encryption import write_new_key_file
from keel.settings import Settings, get_settings
from keel.stack.embedded import EmbeddedPostgres, TemporalDevServer, port_is_free

REPO_ROOT = Path(__file__).resolve().parents[2]  # keel/stack/dev.py -> the checkout
WORKER_CMD = (sys.executable, "-m", "worker")
HEAVY_WORKER_CMD = (sys.executable, "-m", "worker", "--queue", "heavy")
GATEWAY_CMD = (sys.executable, "-m", "api")

TEMPORAL_HOST = "127.0.0.1"
TEMPORAL_PORT = 7233
TEMPORAL_UI_PORT = 8233
HEALTH_TIMEOUT = 60.0
CODEC_KEY_FILE = "codec-keys.json"
STOP_TIMEOUT = 10.0


class _StopRequested(BaseException):
    """Raised from the signal handler; a BaseException so no `except Exception` on the way swallows it."""


class _Fatal(Exception):
    """A startup or runtime failure with a message meant for the user."""


def _say(message: str) -> None:
    print(f"keel dev: {message}", file=sys.stderr, flush=True)


@dataclass
class _Child:
    name: str
    proc: subprocess.Popen[bytes]


@dataclass
class _Port:
    host: str
    port: int
    purpose: str
    remedy: str


def _ports_to_check(settings: Settings, embedded_temporal: bool) -> list[_Port]:
    ports = []
    if embedded_temporal:
        hint = "set TEMPORAL_ADDRESS to use an existing Temporal server (maybe another `make dev` is running)"
        ports.append(_Port(TEMPORAL_HOST, TEMPORAL_PORT, "Temporal dev server", hint))
        ports.append(_Port(TEMPORAL_HOST, TEMPORAL_UI_PORT, "Temporal Web UI", hint))
    ports.append(_Port(settings.host, settings.port, "gateway", "set KEEL_PORT"))
    if settings.worker_metrics_port:
        remedy = "set KEEL_WORKER_METRICS_PORT (0 turns the worker's metrics off)"
        port = settings.worker_metrics_port
        ports.append(_Port(settings.worker_metrics_host, port, "worker metrics", remedy))
    if settings.heavy_worker_metrics_port:
        remedy = "set KEEL_HEAVY_WORKER_METRICS_PORT (0 turns the heavy worker's metrics off)"
        port = settings.heavy_worker_metrics_port
        ports.append(_Port(settings.worker_metrics_host, port, "heavy worker metrics", remedy))
    return ports


def _local_url(host: str, port: int) -> str:
    # A wildcard bind is reachable on loopback; that is the URL to probe and to show.
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{shown}:{port}"


def _spawn(name: str, cmd: Sequence[str], env: dict[str, str]) -> _Child:
    # Own process group, so a terminal Ctrl-C reaches only us and we decide the shutdown order.
    proc = subprocess.Popen(
        list(cmd), cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, start_new_session=True
    )
    return _Child(name, proc)


def _with_this_folder(python_path: str | None) -> str:
    """PYTHONPATH for the workers and the gateway: the folder `keel dev` runs in first. They run from
    Keel's own folder, and must import your app (`--app agents`) from yours, as `keel check` does."""
    return os.pathsep.join([os.getcwd(), *(p for p in (python_path or "").split(os.pathsep) if p)])


def _stop_children(children: Sequence[_Child]) -> None:
    """SIGTERM every child's group at once, wait up to STOP_TIMEOUT in total, then SIGKILL what is left."""
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for child in children:
        try:
            child.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _say(f"{child.name} did not stop within {STOP_TIMEOUT:.0f}s; killing it")
        # Also reaps grandchildren that outlived the group leader.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.proc.pid, signal.SIGKILL)
        child.proc.wait()


def _check_alive(
    children: Sequence[_Child], temporal: TemporalDevServer | None, db: EmbeddedPostgres | None
) -> None:
    for child in children:
        code = child.proc.poll()
        if code is not None:
            raise _Fatal(f"the {child.name} exited unexpectedly with code {code}; stopping everything")
    if temporal is not None and temporal.proc.poll() is not None:
        raise _Fatal(
            f"the Temporal dev server exited unexpectedly with code {temporal.proc.returncode} "
            f"(see {temporal.log_file}); stopping everything"
        )
    if db is not None and not db.is_running():
        raise _Fatal(f"PostgreSQL stopped unexpectedly (see {db.pgdata / 'log'}); stopping everything")


def _attempt(what: str, step: Callable[[], object]) -> None:
    # One failing shutdown step must not keep the others from running.
    try:
        step()
    except Exception as err:
        _say(f"{what} failed: {type(err).__name__}: {err}")


def _wait_healthy(url: str, alive: Callable[[], None]) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT
    while True:
        alive()
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass  # not listening yet, or not healthy yet
        if time.monotonic() > deadline:
            raise _Fatal(
                f"the gateway did not answer {url}/healthz within {HEALTH_TIMEOUT:.0f}s; stopping everything"
            )
        time.sleep(0.5)


def _banner(
    settings: Settings,
    gateway_url: str,
    data_dir: Path,
    temporal: TemporalDevServer | None,
    db: EmbeddedPostgres | None,
    key_file: Path,
    app: App,
) -> str:
    if temporal is not None:
        temporal_line = f"{temporal.address} (embedded, state in {data_dir / 'temporal.db'})"
        ui_url = temporal.ui_url
    else:
        temporal_line = f"{settings.temporal_address} (from TEMPORAL_ADDRESS)"
        ui_url = settings.temporal_ui_url
    # An external Temporal's UI may be anywhere: say so instead of guessing a port nobody listens on.
    ui_line = ui_url or "not known (set KEEL_TEMPORAL_UI_URL)"
    postgres_line = f"embedded, data in {db.pgdata}" if db is not None else "from DATABASE_URL"
    model = settings.model
    if model == "scripted":
        model += " (offline scripted model: no API key or network needed; set KEEL_MODEL for a real one)"
    lines = [
        "",
        "keel dev is up",
        f"  chat / gateway   {gateway_url}",
        f"  run viewer       {gateway_url}/runs",
        f"  metrics          {gateway_url}/metrics (gateway), {_worker_metrics(settings)} (worker),",
        f"                   {_heavy_worker_metrics(settings)} (heavy worker)",
        f"  Temporal Web UI  {ui_line}",
        f"  Temporal         {temporal_line}",
        f"  PostgreSQL       {postgres_line}",
        f"  data dir         {data_dir}",
        f"  agents           {', '.join(app.agents)} (from {app.source}; KEEL_APP or --app names yours)",
        f"  model            {model}",
        f"  encryption       Temporal payloads sealed with AES-GCM (keys in {key_file})",
        f"  auth             {_auth_line(settings)}",
        "Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)


def _auth_line(settings: Settings) -> str:
    if not settings.auth_modes:
        return "none (KEEL_AUTH=none: everyone on this machine is admin; allowed on loopback only)"
    return f"{settings.auth} (every /api route needs a token or an API key)"


def _worker_metrics(settings: Settings) -> str:
    if not settings.worker_metrics_port:
        return "off"
    return _local_url(settings.worker_metrics_host, settings.worker_metrics_port) + "/metrics"


def _heavy_worker_metrics(settings: Settings) -> str:
    if not settings.heavy_worker_metrics_port:
        return "off"
    return _local_url(settings.worker_metrics_host, settings.heavy_worker_metrics_port) + "/metrics"


def run(
    *,
    worker_cmd: Sequence[str] = WORKER_CMD,
    heavy_worker_cmd: Sequence[str] = HEAVY_WORKER_CMD,
    gateway_cmd: Sequence[str] = GATEWAY_CMD,
) -> int:
    """Supervise the stack until a signal or a crash; returns the process exit code."""
    settings = get_settings()
    try:
        app = load_app(settings.app)  # a bad app stops here, before anything starts, in one line
    except AppError as err:
        _say(str(err))
        return 2
    # Explicitly configured services (env vars) are used as they are; only missing ones are embedded.
    embedded_temporal = "temporal_address" not in settings.model_fields_set
    embedded_db = not settings.database_url
    data_dir = settings.data_dir.expanduser().resolve()

    for p in _ports_to_check(settings, embedded_temporal):
        if not port_is_free(p.host, p.port):
            _say(f"port {p.port} is already in use ({p.purpose}). Stop whatever holds it or {p.remedy}.")
            return 2

    stopping = False

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if stopping:
            _say("already stopping, please wait")
            return
        stopping = True  # only the first signal interrupts; the shutdown below must run to the end
        raise _StopRequested(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    db: EmbeddedPostgres | None = None
    temporal: TemporalDevServer | None = None
    children: list[_Child] = []
    exit_code = 0
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(
            os.environ,
            KEEL_DATA_DIR=str(data_dir),
            PYTHONUNBUFFERED="1",
            PYTHONPATH=_with_this_folder(os.environ.get("PYTHONPATH")),
        )
        key_file = settings.codec_key_file or data_dir / CODEC_KEY_FILE
        if not key_file.exists():
            _say(f"generating an encryption key for Temporal payloads in {key_file}")
            write_new_key_file(key_file)
        env["KEEL_CODEC_KEY_FILE"] = str(key_file)
        gateway_url = _local_url(settings.host, settings.port)
        if embedded_temporal:
            _say(f"starting Temporal dev server (log in {data_dir / 'temporal.log'})")
            temporal = TemporalDevServer.start(
                port=TEMPORAL_PORT,
                ui_port=TEMPORAL_UI_PORT,
                db_file=data_dir / "temporal.db",
                log_file=data_dir / "temporal.log",
                host=TEMPORAL_HOST,
                # The Web UI decrypts payloads through the gateway's codec endpoint.
                extra_args=["--ui-codec-endpoint", f"{gateway_url}/codec"],
            )
            env["TEMPORAL_ADDRESS"] = temporal.address
            if temporal.ui_url:  # the gateway's links and codec CORS origin: the UI started here
                env["KEEL_TEMPORAL_UI_URL"] = temporal.ui_url
        if embedded_db:
            _say(f"starting PostgreSQL (data in {data_dir / 'postgres'})")
            db = EmbeddedPostgres.start(data_dir / "postgres")
            env["DATABASE_URL"] = db.uri

        _say("starting the agent worker, the heavy-tool worker and the gateway")
        children.append(_spawn("worker", worker_cmd, env))
        children.append(_spawn("heavy worker", heavy_worker_cmd, env))
        children.append(_spawn("gateway", gateway_cmd, env))

        def alive() -> None:
            _check_alive(children, temporal, db)

        _wait_healthy(gateway_url, alive)
        print(_banner(settings, gateway_url, data_dir, temporal, db, key_file, app), flush=True)
        while True:
            alive()
            time.sleep(0.5)
    except _StopRequested as stop:
        _say(f"{stop} received, stopping")
    except _Fatal as err:
        _say(str(err))
        exit_code = 1
    except Exception as err:  # a startup failure (ports, binaries, timeouts): report it, then clean up
        _say(f"{type(err).__name__}: {err}")
        exit_code = 1
    finally:
        stopping = True
        # Dependents first: the gateway and worker, then Temporal, then the database they both use.
        _attempt("stopping the workers and gateway", lambda: _stop_children(children[::-1]))
        if temporal is not None:
            _attempt("stopping Temporal", lambda: temporal.stop(STOP_TIMEOUT))
        if db is not None:
            _attempt("stopping PostgreSQL", db.stop)
        _say("stopped")
    return exit_code


def main() -> int:
    return run()


if __name__ == "__main__":
    sys.exit(main())
