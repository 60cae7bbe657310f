"""`make dev` (python -m keel.stack.dev): the whole stack comes up, serves a run, and Ctrl-C leaves nothing behind."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from keel.stack.embedded import EmbeddedPostgres, TemporalDevServer, free_port, port_is_free
from tests.conftest import ROOT
from tests.ui_stream import chat_body, parse

DEV_PORTS = (7233, 8233)


def dev_env(data_dir: Path, port: int, **extra: str) -> dict[str, str]:
    inherited = ("TEMPORAL_ADDRESS", "DATABASE_URL", "KEEL_TEMPORAL_UI_URL")  # each test says what it wants
    env = {k: v for k, v in os.environ.items() if k not in inherited}
    return {**env, "KEEL_DATA_DIR": str(data_dir), "KEEL_PORT": str(port), **extra}


def processes_using(path: Path) -> list[str]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(path) in cmdline and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(cmdline)
    return found


def start_dev(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "keel.stack.dev"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_until_up(proc: subprocess.Popen[bytes], log: Path) -> str:
    """Waits for the banner, which keel.stack.dev prints once the gateway answers /healthz."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        text = log.read_text()
        if "keel dev is up" in text:
            return text
        time.sleep(0.2)
    raise AssertionError(f"make dev did not come up:\n{log.read_text()}")


def ctrl_c(proc: subprocess.Popen[bytes]) -> int:
    os.killpg(proc.pid, signal.SIGINT)
    return proc.wait(timeout=60)


def test_a_taken_port_is_named_and_nothing_starts(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = dev_env(
            tmp_path / "data", port, TEMPORAL_ADDRESS="127.0.0.1:1", DATABASE_URL="postgresql:///none"
        )
        result = subprocess.run(
            [sys.executable, "-m", "keel.stack.dev"], cwd=ROOT, env=env, capture_output=True, timeout=60
        )

    assert result.returncode == 2
    assert f"port {port} is already in use (gateway)" in result.stderr.decode()
    assert not (tmp_path / "data").exists()


def test_make_dev_runs_a_chat_and_ctrl_c_leaves_no_process(tmp_path: Path) -> None:
    if not all(port_is_free("127.0.0.1", p) for p in DEV_PORTS):
        message = "ports 7233/8233 are taken (is `make dev` running?)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    data_dir, port, log = tmp_path / "keel-data", free_port(), tmp_path / "dev.log"
    url = f"http://127.0.0.1:{port}"

    dev = start_dev(dev_env(data_dir, port), log)
    try:
        banner = wait_until_up(dev, log)
        assert f"chat / gateway   {url}" in banner
        assert "Temporal Web UI  http://127.0.0.1:8233" in banner
        assert "auth             none (KEEL_AUTH=none" in banner  # make dev says it runs without auth
        assert httpx.get("http://127.0.0.1:8233", timeout=5).status_code == 200
        response = httpx.post(f"{url}/api/chat", json=chat_body("calculate 6 * 7"), timeout=60)
        stream = parse(response)
        assert stream.of_type("tool-output-available")[0]["output"]["value"] == 42
        # `wait` is a heavy tool: make dev runs the heavy-tool worker too.
        waited = parse(httpx.post(f"{url}/api/chat", json=chat_body("wait 1 second"), timeout=60))
        assert waited.of_type("tool-output-available")[0]["output"] == {"waited_seconds": 1.0}
        run_id = response.headers["x-agent-run-id"]
        assert processes_using(data_dir), "Temporal and PostgreSQL should run from the data dir"
    finally:
        exit_code = ctrl_c(dev)
    assert exit_code == 0, log.read_text()
    time.sleep(0.5)
    assert processes_using(data_dir) == []
    assert all(port_is_free("127.0.0.1", p) for p in (*DEV_PORTS, port))

    # A second `make dev` reuses the data dir: the run is still there.
    log = tmp_path / "dev-again.log"
    dev = start_dev(dev_env(data_dir, port), log)
    try:
        wait_until_up(dev, log)
        state = httpx.get(f"{url}/api/runs/{run_id}", timeout=30).json()
        assert state["status"] == "completed"
        # The gateway links runs to the Web UI make dev started (it sets KEEL_TEMPORAL_UI_URL for it).
        timeline = httpx.get(f"{url}/api/runs/{run_id}/timeline", timeout=30).json()
        assert timeline["run"]["temporal_url"].startswith(
            f"http://127.0.0.1:8233/namespaces/default/workflows/{run_id}"
        )
    finally:
        assert ctrl_c(dev) == 0
    assert processes_using(data_dir) == []


def test_with_an_external_temporal_nothing_points_at_a_web_ui_nobody_named(
    tmp_path: Path, temporal_server: TemporalDevServer, postgres: EmbeddedPostgres
) -> None:
    port, log = free_port(), tmp_path / "dev.log"
    env = dev_env(
        tmp_path / "data",
        port,
        TEMPORAL_ADDRESS=temporal_server.address,  # headless: where its UI would be, nobody knows
        DATABASE_URL=postgres.uri,
        # Task queues of its own and no metrics ports: nothing shared with the session's workers or a
        # `make dev` running beside the tests.
        KEEL_TASK_QUEUE="dev-external-agent-runs",
        KEEL_HEAVY_TASK_QUEUE="dev-external-agent-heavy",
        KEEL_WORKER_METRICS_PORT="0",
        KEEL_HEAVY_WORKER_METRICS_PORT="0",
    )
    dev = start_dev(env, log)
    try:
        banner = wait_until_up(dev, log)
        assert "Temporal Web UI  not known (set KEEL_TEMPORAL_UI_URL)" in banner
        url = f"http://127.0.0.1:{port}"
        for page in ("/", "/runs"):  # neither page guesses the embedded server's port either
            assert "8233" not in httpx.get(f"{url}{page}", timeout=30).text
    finally:
        assert ctrl_c(dev) == 0, log.read_text()
