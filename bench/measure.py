"""Small measuring tools shared by the benchmarks: a process's CPU time and memory, and the fake
provider's process."""

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from keel.stack.embedded import free_port, port_is_free

ROOT = Path(__file__).resolve().parent.parent


def rss_mb(pid: int, *, children: bool = False) -> float:
    """Resident memory of a process (and, if asked, of everything it spawned), in MB."""
    process = psutil.Process(pid)
    procs = [process, *(process.children(recursive=True) if children else [])]
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += proc.memory_info().rss
    return total / 1e6


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User + system CPU time a process (and, if asked, its children, live or reaped) has used so far."""
    process = psutil.Process(pid)
    total = 0.0
    if children:  # children that have exited and been waited for (PostgreSQL's finished backends)
        times = process.cpu_times()
        total += times.children_user + times.children_system
    for proc in [process, *(process.children(recursive=True) if children else [])]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def find_pid(*words: str) -> int | None:
    """The oldest process whose command line holds every one of `words`."""
    found = [
        p
        for p in psutil.process_iter(["pid", "cmdline", "create_time"])
        if all(any(w in part for part in p.info["cmdline"] or ()) for w in words)
    ]
    return min(found, key=lambda p: p.info["create_time"]).pid if found else None


def listening_pid(port: int) -> int | None:
    """The process listening on a local TCP port (None when it can't be seen)."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        return None
    return next((c.pid for c in connections if c.status == "LISTEN" and c.laddr.port == port), None)


def start_provider(log: Path, *options: str) -> tuple[subprocess.Popen[bytes], str]:
    """bench/provider.py in its own process (with `options`, e.g. `--rpm 200`): (process, base URL without
    /v1)."""
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.provider", "--port", str(port), *options],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    deadline = time.monotonic() + 30
    while port_is_free("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the fake provider did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.05)
    return proc, f"http://127.0.0.1:{port}"
