"""Scheduled agents (/api/schedules, `keel schedule`) through the real stack: Temporal Schedules on the dev
server whose firings are ordinary runs; validation, ownership, pause, delete and the overlap policy; and the
`ScheduledRun` workflow on the time-skipping test server, which implements no schedules itself.

The app is the examples' (KEEL_APP unset): `assistant` on the offline scripted model answers a plain message
at once, and "wait 30 seconds" makes it ask for approval first, so that run stays going.
"""

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import jwt
import pytest
from temporalio.client import Client, Schedule, ScheduleActionStartWorkflow, ScheduleSpec
from temporalio.service import RPCError
from temporalio.worker import Worker

from activities.agent_activities import AgentActivities
from activities.records import RecordActivities
from activities.scheduled_runs import ScheduledRunActivities
from keel.app import load_app
from keel.schedules import ScheduledRunInput, ScheduledRunResult
from keel.stack.embedded import EmbeddedPostgres, TemporalDevServer
from keel.storage.store import RunStore
from tests.conftest import AUTH_JWT_SECRET, Keel
from tests.crash_stack import CrashStack, until
from tests.time_skipping import time_skipping
from workflows.agent_run import AgentRun
from workflows.scheduled_run import ScheduledRun


def _id(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def stack(
    keel: Keel,
    temporal_server: TemporalDevServer,
    postgres: EmbeddedPostgres,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[CrashStack]:
    with CrashStack(
        temporal_server, postgres, tmp_path_factory.mktemp("schedules"), keel.env["KEEL_CODEC_KEY_FILE"]
    ) as s:
        yield s


@pytest.fixture(scope="module")
async def http(stack: CrashStack) -> AsyncIterator[httpx.AsyncClient]:
    worker, gateway = stack.worker(), stack.gateway()
    await stack.start(worker, gateway)
    async with httpx.AsyncClient(base_url=gateway.url or "", timeout=60) as client:
        yield client


async def schedule(http: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await http.post(
        "/api/schedules", json={"purpose": "assistant", "message": "say hello", **body}
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def described(http: httpx.AsyncClient, schedule_id: str) -> dict[str, Any]:
    response = await http.get(f"/api/schedules/{schedule_id}")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


async def run_state(http: httpx.AsyncClient, agent_run_id: str) -> dict[str, Any]:
    response = await http.get(f"/api/runs/{agent_run_id}")
    state: dict[str, Any] = response.json() if response.status_code == 200 else {}
    return state


async def first_run(http: httpx.AsyncClient, schedule_id: str, within: float = 60) -> str:
    """The run of the schedule's first firing, once it has finished."""

    async def finished() -> str | None:
        runs = (await described(http, schedule_id))["recent_runs"]
        if runs and (await run_state(http, runs[0]["agent_run_id"])).get("status") in ("completed", "failed"):
            return str(runs[0]["agent_run_id"])
        return None

    found: str = await until(finished, f"a finished run of {schedule_id}", within)
    return found


async def test_a_triggered_firing_is_an_ordinary_run_of_the_agent(
    http: httpx.AsyncClient, stack: CrashStack, store: RunStore
) -> None:
    sid = _id("report")
    created = await schedule(http, schedule_id=sid, interval_seconds=3600, metadata={"team": "ops"})
    assert (created["interval_seconds"], created["overlap"], created["paused"]) == (3600, "skip", False)
    assert created["next_runs"] and created["recent_runs"] == []
    temporal = await stack.temporal()
    await temporal.get_schedule_handle(sid).trigger()  # fire now, not in an hour

    run = await first_run(http, sid)
    state = await run_state(http, run)
    assert state["status"] == "completed" and state["purpose"] == "assistant"
    # Its record: a top-level run of the owner's, its request the message, its metadata naming the schedule.
    record = await store.pool.fetchrow(
        "SELECT status, input_summary, chat_id, parent_run_id, metadata::text AS metadata FROM agent_runs WHERE id = $1",
        run,
    )
    assert record is not None and record["status"] == "completed" and record["input_summary"] == "say hello"
    assert record["chat_id"] is None and record["parent_run_id"] is None
    assert '"schedule_id": "' + sid + '"' in record["metadata"] and '"team": "ops"' in record["metadata"]
    # Its conversation: the agent's instructions, then the schedule's message as the user's.
    system, asked, answer = await store.conversation(run, 3)
    assert (system.role, asked.role, asked.content, answer.role) == (
        "system",
        "user",
        "say hello",
        "assistant",
    )
    # In the viewer's list like any run, and a child of the firing's workflow in Temporal.
    listed = (await http.get("/api/runs", params={"purpose": "assistant", "limit": 500})).json()
    assert run in [r["agent_run_id"] for r in listed]
    child = await temporal.get_workflow_handle(run).describe()
    assert child.parent_id is not None and child.parent_id.startswith(f"scheduled-{sid}-")
    assert (await child.memo())["schedule_id"] == sid
    await http.delete(f"/api/schedules/{sid}")


async def test_a_schedule_fires_by_time_pauses_and_is_deleted(
    http: httpx.AsyncClient, stack: CrashStack
) -> None:
    sid = _id("every2s")
    await schedule(http, schedule_id=sid, interval_seconds=2)
    await first_run(http, sid, within=30)  # fired by the clock, nobody triggered it

    paused = (await http.post(f"/api/schedules/{sid}/pause")).json()
    assert paused["paused"] is True and "paused by" in paused["note"]
    await asyncio.sleep(1)  # a firing due as the pause landed may still start
    before = (await described(http, sid))["actions"]
    await asyncio.sleep(5)
    assert (await described(http, sid))["actions"] == before, "a paused schedule fired"
    unpaused = (await http.post(f"/api/schedules/{sid}/unpause")).json()
    assert unpaused["paused"] is False

    assert (await http.delete(f"/api/schedules/{sid}")).status_code == 204
    assert (await http.get(f"/api/schedules/{sid}")).status_code == 404
    with pytest.raises(RPCError):
        await (await stack.temporal()).get_schedule_handle(sid).describe()


async def test_overlap_skip_starts_nothing_while_the_last_run_still_goes(
    http: httpx.AsyncClient, stack: CrashStack
) -> None:
    sid = _id("skip")
    # The run asks for approval and waits for it: the firing stays running, every later one is skipped.
    await schedule(http, schedule_id=sid, interval_seconds=1, message="wait 30 seconds")

    async def skipped() -> dict[str, Any] | None:
        found = await described(http, sid)
        return found if found["skipped_overlap"] >= 2 else None

    found = await until(skipped, "firings skipped by the overlap policy", 30)
    assert found["actions"] == 1 and len(found["running"]) == 1
    [running] = found["running"]
    assert (await run_state(http, running))["status"] == "waiting_for_approval"
    assert (await http.delete(f"/api/schedules/{sid}")).status_code == 204
    await http.post(f"/api/runs/{running}/cancel", json={"reason": "test over"})


async def test_bad_schedules_are_refused_plainly(http: httpx.AsyncClient) -> None:
    sid = _id("bad")
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "exactly one of `cron` and `interval_seconds`"),
        ({"cron": "0 9 * * *", "interval_seconds": 60}, "exactly one of"),
        ({"interval_seconds": 60, "timezone": "Mars/Olympus"}, "not an IANA time zone"),
        ({"interval_seconds": 60, "overlap": "sometimes"}, "skip"),
        ({"interval_seconds": 60, "purpose": "nobody"}, "the agents are: "),
        ({"cron": "every full moon"}, "Temporal refused the schedule"),
        ({"interval_seconds": 60, "schedule_id": "no spaces please"}, "schedule_id"),
    ]
    for extra, says in cases:
        body = {"schedule_id": sid, "purpose": "assistant", "message": "hi", **extra}
        response = await http.post("/api/schedules", json=body)
        assert response.status_code == 422 and says in response.text, (extra, response.text)
    await schedule(http, schedule_id=sid, cron="0 9 * * 1-5", timezone="Europe/Madrid")
    again = await http.post(
        "/api/schedules",
        json={"schedule_id": sid, "purpose": "assistant", "message": "hi", "interval_seconds": 5},
    )
    assert again.status_code == 409 and "exists already" in again.text
    shown = await described(http, sid)
    assert (shown["cron"], shown["timezone"]) == ("0 9 * * 1-5", "Europe/Madrid")
    # 09:00 in Madrid is 07:00 or 08:00 UTC, on a weekday.
    assert shown["next_runs"] and shown["next_runs"][0][11:16] in ("07:00", "08:00")
    await http.delete(f"/api/schedules/{sid}")


@pytest.fixture(scope="module")
def auth_stack(
    keel: Keel,
    temporal_server: TemporalDevServer,
    postgres: EmbeddedPostgres,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[CrashStack]:
    env = {"KEEL_AUTH": "jwt", "KEEL_JWT_SECRET": AUTH_JWT_SECRET}
    base = tmp_path_factory.mktemp("schedules-auth")
    with CrashStack(temporal_server, postgres, base, keel.env["KEEL_CODEC_KEY_FILE"], **env) as s:
        yield s


def _as(user: str, admin: bool = False) -> dict[str, str]:
    claims: dict[str, Any] = {"sub": user, "exp": int(time.time()) + 3600}
    if admin:
        claims["role"] = "admin"
    return {"authorization": f"Bearer {jwt.encode(claims, AUTH_JWT_SECRET, algorithm='HS256')}"}


async def test_a_schedule_is_its_owners_alone(auth_stack: CrashStack) -> None:
    gateway = auth_stack.gateway()
    await auth_stack.start(gateway)
    async with httpx.AsyncClient(base_url=gateway.url or "", timeout=60) as http:
        sid = _id("alices")
        body = {"schedule_id": sid, "purpose": "assistant", "message": "hi", "interval_seconds": 3600}
        created = await http.post("/api/schedules", json=body, headers=_as("alice"))
        assert created.status_code == 201 and created.json()["user_id"] == "alice"
        for method, path in [("GET", ""), ("DELETE", ""), ("POST", "/pause"), ("POST", "/unpause")]:
            refused = await http.request(method, f"/api/schedules/{sid}{path}", headers=_as("bob"))
            assert refused.status_code == 404, (method, path, refused.text)

        async def listed(user: str, admin: bool = False) -> list[str]:
            response = await http.get("/api/schedules", headers=_as(user, admin))
            return [s["schedule_id"] for s in response.json()]

        await until(lambda: _contains(listed("alice"), sid), "alice's schedule in her list", 20)
        assert sid not in await listed("bob")
        assert sid in await listed("root", admin=True)
        assert (await http.delete(f"/api/schedules/{sid}", headers=_as("alice"))).status_code == 204


async def _contains(names: Any, wanted: str) -> bool:
    return wanted in await names


def keel_schedule(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keel.cli.main", "--url", url, "schedule", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_the_cli_creates_lists_pauses_and_deletes(http: httpx.AsyncClient) -> None:
    url, sid = str(http.base_url).rstrip("/"), _id("cli")
    create = keel_schedule(
        url, "create", sid, "--purpose", "assistant", "--message", "hi", "--cron", "0 9 * * *"
    )
    assert create.returncode == 0 and f"{sid}: created; next run" in create.stdout, create.stderr
    refused = keel_schedule(url, "create", sid, "--purpose", "assistant", "--message", "hi", "--every", "60")
    assert refused.returncode == 1 and "HTTP 409" in refused.stdout

    async def listed() -> str | None:
        shown = (await asyncio.to_thread(keel_schedule, url, "list")).stdout
        return shown if sid in shown else None

    shown = await until(listed, "the schedule in `keel schedule list`", 20)
    assert "cron 0 9 * * * (UTC)" in shown
    paused = keel_schedule(url, "pause", sid)
    assert paused.returncode == 0 and f"{sid}: paused" in paused.stdout
    assert (await described(http, sid))["paused"] is True
    deleted = keel_schedule(url, "delete", sid)
    assert deleted.returncode == 0 and (await http.get(f"/api/schedules/{sid}")).status_code == 404
    no_zone = keel_schedule(
        url,
        "create",
        sid,
        "--purpose",
        "assistant",
        "--message",
        "hi",
        "--every",
        "5",
        "--timezone",
        "Mars/X",
    )
    assert no_zone.returncode == 2 and "not an IANA time zone" in no_zone.stdout
    missing = keel_schedule(url, "pause", sid)
    assert missing.returncode == 1 and "HTTP 404" in missing.stdout


# --- the time-skipping test server ---


async def test_the_time_skipping_server_has_no_schedules_so_scheduled_run_is_tested_there_alone(
    store: RunStore, tmp_path: Any
) -> None:
    """Temporal's time-skipping test server does not implement CreateSchedule (checked here, so this test
    says when it starts to); the firing's workflow, `ScheduledRun`, runs there with the real activities."""
    app = load_app(None)
    async with time_skipping() as env:
        with pytest.raises(RPCError, match="unimplemented"):
            await env.client.create_schedule(
                _id("nope"),
                Schedule(
                    action=ScheduleActionStartWorkflow("ScheduledRun", id="x", task_queue="q"),
                    spec=ScheduleSpec(),
                ),
            )
        queue = _id("scheduled")
        agent = AgentActivities(store=store, data_dir=tmp_path, app=app)
        opener = ScheduledRunActivities(
            store=store, app=app, default_model="scripted", heavy_task_queue=queue
        )
        async with Worker(
            env.client,
            task_queue=queue,
            workflows=[ScheduledRun, AgentRun],
            activities=[
                *agent.run_queue_activities(),
                RecordActivities(store.pool).record_run,
                opener.open_scheduled_run,
            ],
        ):
            result = await _fire(
                env.client,
                queue,
                ScheduledRunInput(
                    schedule_id="nightly", purpose="assistant", message="say hello", user_id="alice"
                ),
            )
    assert result.status == "completed"
    record = await store.pool.fetchrow(
        "SELECT user_id, input_summary, metadata->>'schedule_id' AS schedule_id FROM agent_runs WHERE id = $1",
        result.agent_run_id,
    )
    assert record is not None and dict(record) == {
        "user_id": "alice",
        "input_summary": "say hello",
        "schedule_id": "nightly",
    }


async def _fire(client: Client, queue: str, request: ScheduledRunInput) -> ScheduledRunResult:
    result: ScheduledRunResult = await client.execute_workflow(
        "ScheduledRun",
        request,
        id=f"scheduled-{_id('nightly')}",
        task_queue=queue,
        result_type=ScheduledRunResult,
    )
    return result
