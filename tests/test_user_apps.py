"""A team's own agents on Keel: an app outside Keel's packages (tests/apps/), loaded with KEEL_APP, through
the real stack — its own worker, heavy worker and gateway (tests/crash_stack.py) on the session's Temporal
and PostgreSQL.

The shop's agents (tests/apps/shop.py) use an inline tool, a heavy tool a person approves, instructions
written from the request's context, and a stop condition of their own. A bad app is refused at startup,
by `keel check` and by every process, in one line. And a redeploy with a changed app (tests/apps/shop_v2.py:
a tool gone, an agent gone) breaks no run parked before it.
"""

import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from keel.stack.embedded import EmbeddedPostgres, TemporalDevServer, free_port
from keel.storage.store import RunStore
from tests.conftest import ROOT, Keel, wait_for_status
from tests.crash_stack import CrashStack, Process
from tests.ui_stream import chat, chat_body

KEEL = Path(sys.executable).parent / "keel"
SHOP = "tests.apps.shop"
# Each bad app, and what its one line must say.
BAD_APPS = {
    "tests.apps.bad:TWINS": "agent 'twin': two agents have this name",
    "tests.apps.bad:CLASHING_TOOLS": "agent 'second': its tool 'lookup_order' is not the tool another agent",
    "tests.apps.bad:UNKNOWN_ROUTE": "agent 'dreamer': model route 'hal:9000': unknown provider 'hal'",
    "tests.apps.bad:RESERVED_NAME": "agent 'sneaky': a tool is named 'keel_final_answer', a name Keel keeps",
    "tests.apps.bad:NOT_AGENTS": "'support' is not a keel.Agent",
    "tests.apps.bad:NONE": "no agents",
    "tests.apps.broken": "cannot import 'tests.apps.broken': ImportError: cannot import name",
    "tests.apps.no_schema": "tool 'inspect_thing': its arguments have no JSON schema",
}


@pytest.fixture
def stack(
    keel: Keel, temporal_server: TemporalDevServer, postgres: EmbeddedPostgres, tmp_path: Path
) -> Iterator[CrashStack]:
    with CrashStack(
        temporal_server, postgres, tmp_path, keel.env["KEEL_CODEC_KEY_FILE"], KEEL_APP=SHOP
    ) as stack:
        yield stack


@pytest.fixture
async def shop(stack: CrashStack) -> AsyncIterator[tuple[httpx.AsyncClient, list[Process]]]:
    """The shop's app served by a stack of its own: a client of its gateway, and its processes."""
    processes = [stack.worker(), stack.heavy_worker(), stack.gateway()]
    await stack.start(*processes)
    async with httpx.AsyncClient(base_url=processes[-1].url or "", timeout=30) as http:
        yield http, processes


def tools_run(process: Process) -> list[str]:
    """The tools whose attempts this worker ran, from its JSON log lines."""
    lines = [json.loads(line) for line in process.log_text().splitlines() if line.startswith("{")]
    return [line["tool"] for line in lines if line["message"].startswith("run_tool attempt")]


def call_of(stream: Any, tool: str) -> str:
    return next(c["toolCallId"] for c in stream.of_type("tool-input-available") if c["toolName"] == tool)


# --- an app of one's own, served ---


async def test_the_apps_agents_are_what_the_gateway_offers(
    shop: tuple[httpx.AsyncClient, list[Process]],
) -> None:
    http, _ = shop

    offered = (await http.get("/api/purposes")).json()

    assert offered == [
        {
            "slug": "shop-support",
            "title": "Shop support",
            "tools": ["lookup_order", "refund"],
            "step_limit": 6,
        },
        {"slug": "shop-tracker", "title": "shop-tracker", "tools": ["lookup_order"], "step_limit": 10},
    ]
    unknown = await http.post("/api/chat", json=chat_body("hello", purpose="assistant"))
    assert unknown.status_code == 400 and "the agents are: shop-support, shop-tracker" in unknown.text


async def test_an_inline_tool_and_a_stop_condition_of_the_apps_own(
    shop: tuple[httpx.AsyncClient, list[Process]], store: RunStore
) -> None:
    http, _ = shop

    stream = await chat(http, chat_body("where is order A-17", purpose="shop-tracker"))

    assert stream.tool_names == ["lookup_order"]
    assert stream.of_type("tool-output-available")[0]["output"]["status"] == "shipped"
    assert stream.run_status == "completed"
    assert stream.text == "[completed] the order was looked up"  # its stop_when ended the run


async def test_a_heavy_tool_waits_for_approval_and_runs_on_the_heavy_worker(
    shop: tuple[httpx.AsyncClient, list[Process]], store: RunStore
) -> None:
    http, processes = shop
    body = chat_body("refund order AB, 12 euros", purpose="shop-support", context={"shop": "Acme"})

    asked = await chat(http, body)

    run = asked.response.headers["x-agent-run-id"]
    [instructions] = [m.content for m in await store.conversation(run, 1)]
    assert instructions == "You help the customers of Acme."  # written from the request's context
    assert asked.tool_names == ["lookup_order", "refund"] and asked.run_status == "waiting_for_approval"
    approved = await http.post(
        f"/api/runs/{run}/approvals/{call_of(asked, 'refund')}", json={"approved": True}
    )
    assert approved.status_code == 200, approved.text
    await wait_for_status(http, run, "completed", within=20)
    refunded = await store.pool.fetchrow(
        "SELECT activity_id, result_snapshot FROM tool_runs WHERE agent_run_id = $1 AND tool_name = 'refund'",
        run,
    )
    assert refunded["result_snapshot"]["refunded_eur"] == 12
    # Heavy: the heavy worker ran it, the agent worker (which ran lookup_order, inline) did not.
    assert tools_run(processes[1]) == ["refund"] and tools_run(processes[0]) == ["lookup_order"]


async def test_keel_worker_and_keel_api_serve_the_app_their_app_option_names(stack: CrashStack) -> None:
    processes = [stack.worker(), stack.gateway()]
    for process, command in zip(processes, (["worker"], ["api"]), strict=True):
        process.args = [str(KEEL), *command, "--app", SHOP]
        del process.env["KEEL_APP"]  # only the option names the app
    await stack.start(*processes)

    async with httpx.AsyncClient(base_url=processes[-1].url or "", timeout=30) as http:
        stream = await chat(http, chat_body("where is order A-17", purpose="shop-tracker"))

    assert stream.tool_names == ["lookup_order"] and stream.run_status == "completed"


# --- a bad app stops at startup ---


@pytest.mark.parametrize(("app", "line"), BAD_APPS.items(), ids=list(BAD_APPS))
def test_keel_check_refuses_a_bad_app_in_one_line(app: str, line: str) -> None:
    done = subprocess.run(
        [str(KEEL), "check", "--app", app], cwd=ROOT, capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 1
    [said] = done.stdout.strip().splitlines()
    assert line in said, said


@pytest.mark.parametrize("args", [["worker.py"], ["worker.py", "--queue", "heavy"], ["-m", "api"]])
def test_every_process_refuses_a_bad_app_at_startup(keel: Keel, args: list[str]) -> None:
    env = {
        **keel.env,
        "KEEL_APP": "tests.apps.bad:TWINS",
        "KEEL_PORT": str(free_port()),
        "KEEL_WORKER_METRICS_PORT": "0",
        "KEEL_HEAVY_WORKER_METRICS_PORT": "0",
    }

    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )

    assert done.returncode != 0
    assert (
        "keel: tests.apps.bad:TWINS: agent 'twin': two agents have this name" in done.stderr.splitlines()[-1]
    )


# --- a redeploy breaks no parked run ---


async def test_runs_parked_before_a_redeploy_finish_after_it(
    shop: tuple[httpx.AsyncClient, list[Process]], store: RunStore
) -> None:
    http, processes = shop
    refunding = await chat(http, chat_body("refund order BC, 5 euros", purpose="shop-support"))
    asking = await chat(http, chat_body("ask me which parcel I mean", purpose="shop-tracker"))
    refund_run, asking_run = (s.response.headers["x-agent-run-id"] for s in (refunding, asking))
    assert (refunding.run_status, asking.run_status) == ("waiting_for_approval", "waiting_for_input")

    # The redeploy: every process restarts with the app's next version (no refund tool, no shop-tracker).
    for process in processes:
        process.stop()
        process.env["KEEL_APP"] = "tests.apps.shop_v2"
    for process in processes:
        await process.restart()

    # The approved refund finds no tool of that name: the model hears so, and the run goes on to its end.
    call = call_of(refunding, "refund")
    assert (
        await http.post(f"/api/runs/{refund_run}/approvals/{call}", json={"approved": True})
    ).status_code == 200
    await wait_for_status(http, refund_run, "completed", within=20)
    [result] = await store.pool.fetch(
        "SELECT status, error_message FROM tool_runs WHERE agent_run_id = $1 AND tool_name = 'refund'"
        " ORDER BY attempt DESC LIMIT 1",
        refund_run,
    )
    assert (
        result["status"] == "error" and "this deployment has no tool of that name" in result["error_message"]
    )
    # The run of an agent the app no longer has still takes its answer and finishes.
    assert (await http.post(f"/api/runs/{asking_run}/answer", json={"text": "B-2"})).status_code == 200
    await wait_for_status(http, asking_run, "completed", within=20)
    assert [a["slug"] for a in (await http.get("/api/purposes")).json()] == ["shop-support"]
