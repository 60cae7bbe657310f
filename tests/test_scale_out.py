"""Scale-out: two agent workers (and a heavy-tool worker) and two gateways against one Temporal and one
PostgreSQL, with nothing else coordinating them. Runs started through either gateway are streamed, approved and finished through the
other, and both workers share the work."""

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from keel.stack.embedded import EmbeddedPostgres, TemporalDevServer
from keel.storage.store import RunStore
from tests.conftest import Keel
from tests.crash_stack import CrashStack, Process, task_takers, until, watching
from tests.test_run_records import records
from tests.ui_stream import assert_well_formed, chat, chat_body

RUNS = 10
# Topics without digits: the scripted model would read a number in the message as a section count.
TOPICS = [
    "queues",
    "locks",
    "leases",
    "retries",
    "timers",
    "signals",
    "workers",
    "gateways",
    "ledgers",
    "replays",
]


@pytest.fixture
def stack(
    keel: Keel, temporal_server: TemporalDevServer, postgres: EmbeddedPostgres, tmp_path: Path
) -> Iterator[CrashStack]:
    with CrashStack(
        temporal_server, postgres, tmp_path, keel.env["KEEL_CODEC_KEY_FILE"], KEEL_MODEL="scripted:slow"
    ) as stack:
        yield stack


async def approved_run(i: int, asked: Process, other: Process) -> dict[str, Any]:
    """A run that waits for approval: asked through one gateway, approved and followed through the other."""
    body = chat_body(f"plan, write and publish a lesson on {TOPICS[i]}", purpose="learnpack-lesson-writer")
    async with httpx.AsyncClient(base_url=asked.url, timeout=60) as http:
        first = await chat(http, body)
    assert first.run_status == "waiting_for_approval"
    run_id = first.response.headers["x-agent-run-id"]
    [publish] = first.of_type("tool-approval-request")
    rest, following = watching(
        f"{other.url}/api/runs/{run_id}/events", headers={"Last-Event-ID": str(first.ids[-1])}
    )
    async with httpx.AsyncClient(base_url=other.url, timeout=60) as http:
        decided = await http.post(
            f"/api/runs/{run_id}/approvals/{publish['toolCallId']}", json={"approved": True}
        )
    assert decided.status_code == 200, decided.text
    await following
    assert_well_formed(rest.stream, resumed=True)
    [published] = rest.stream.of_type("tool-output-available")
    assert published["output"]["slug"] == f"learn-{TOPICS[i]}"
    return {"run_id": run_id, "status": rest.stream.run_status}


async def watched_run(i: int, asked: Process, other: Process) -> dict[str, Any]:
    """A run asked through one gateway and watched live through the other: both see the same stream."""
    asker, asking = watching(f"{asked.url}/api/chat", "POST", json=chat_body(f"calculate ({i} + 2) * 3"))
    await until(lambda: asker.response is not None, "the run started")
    watcher, watching_ = watching(f"{other.url}/api/runs/{asker.run_id}/events")
    await asyncio.gather(asking, watching_)
    assert_well_formed(asker.stream)
    assert watcher.pairs == asker.pairs
    [result] = asker.stream.of_type("tool-output-available")
    assert result["output"]["value"] == (i + 2) * 3
    return {"run_id": asker.run_id, "status": watcher.stream.run_status}


async def test_two_workers_and_two_gateways_share_runs_with_no_other_coordination(
    stack: CrashStack, store: RunStore
) -> None:
    workers = [stack.worker("worker-1"), stack.worker("worker-2")]
    gateways = [stack.gateway("gateway-1"), stack.gateway("gateway-2")]
    heavy = stack.heavy_worker()  # publish_package is a heavy tool
    await stack.start(*workers, heavy, *gateways)

    runs = await asyncio.gather(
        *(
            (approved_run if i % 3 == 0 else watched_run)(i, gateways[i % 2], gateways[1 - i % 2])
            for i in range(RUNS)
        )
    )

    assert [r["status"] for r in runs] == ["completed"] * RUNS
    for run in runs:
        assert (await records(store.pool, run["run_id"]))["run"]["status"] == "completed"
    packages = stack.data_dir / "packages"
    assert sorted(p.name for p in packages.iterdir() if p.is_dir()) == sorted(
        f"learn-{TOPICS[i]}" for i in range(0, RUNS, 3)
    )
    # Both agent workers ran workflows and, inside their workflow tasks, the LLM calls; the heavy worker the
    # publishing; no one else took part.
    temporal = await stack.temporal()
    taken: dict[str, set[int]] = {}
    for run in runs:
        for kind, pids in (await task_takers(temporal, run["run_id"])).items():
            taken.setdefault(kind, set()).update(pids)
    agent_pids = {w.proc.pid for w in workers}
    assert taken.pop("run_tool") == {heavy.proc.pid}, taken
    assert taken["workflow"] == agent_pids and "call_llm" not in taken, taken
    assert set().union(*taken.values()) == agent_pids, taken
