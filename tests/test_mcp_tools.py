"""MCP servers' tools in a Keel agent, through the real stack: an app of its own (tests/apps/mcp_app.py) served
by its own worker, heavy worker and gateway (tests/crash_stack.py) on the session's Temporal and PostgreSQL,
with MCP software no one here wrote — the reference server `@modelcontextprotocol/server-everything` over
stdio and over streamable HTTP — and the tests' own `mcp` SDK server (tests/mcp_servers/notes.py).

The model is Keel's offline `scripted` one, which calls a tool whose name the message says
(`everything__echo hello`); the one call no message can make (arguments a server refuses) is scripted with
keel.testing, whose worker serves the same app.
"""

import base64
import json
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from keel.app import load_app
from keel.contracts import LIST_MCP_TOOLS
from keel.mcp import mcp_tool_name
from keel.stack.embedded import EmbeddedPostgres, TemporalDevServer, free_port, stop_process_group
from keel.testing import AgentTest, call
from tests.conftest import ROOT, Keel, skip_or_fail, wait_for_status
from tests.crash_stack import CrashStack, Process, until
from tests.ui_stream import chat, chat_body

APP = "tests.apps.mcp_app"
# What the HTTP server's Authorization header expands to in the worker: never in history or a log.
SECRET = "mcp-test-token-0123456789-never-logged"
EVERYTHING = ROOT / "tests/node/node_modules/@modelcontextprotocol/server-everything/dist/index.js"


@pytest.fixture(scope="module")
def everything_http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """server-everything over streamable HTTP, on a port of its own: its port."""
    if shutil.which("node") is None or not EVERYTHING.exists():
        skip_or_fail("node or server-everything is missing (npm ci in tests/node)")
    port = free_port()
    log = tmp_path_factory.mktemp("everything") / "everything.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["node", str(EVERYTHING), "streamableHttp"],
            env={**os.environ, "PORT": str(port)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        for _ in range(200):
            if b"listening on port" in log.read_bytes():
                break
            assert proc.poll() is None, log.read_text()
            subprocess.run(["sleep", "0.05"], check=True)
        yield port
    finally:
        stop_process_group(proc)


@pytest.fixture(scope="module")
def stack(
    keel: Keel,
    temporal_server: TemporalDevServer,
    postgres: EmbeddedPostgres,
    everything_http: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[CrashStack]:
    base = tmp_path_factory.mktemp("mcp-stack")
    with CrashStack(
        temporal_server,
        postgres,
        base,
        keel.env["KEEL_CODEC_KEY_FILE"],
        KEEL_APP=APP,
        EVERYTHING_HTTP_PORT=str(everything_http),
        NOTES_MARKER=str(base / "fragile-marker"),
        EVERYTHING_TOKEN=SECRET,
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
async def served(stack: CrashStack) -> AsyncIterator[tuple[httpx.AsyncClient, list[Process]]]:
    processes = [stack.worker(), stack.heavy_worker(), stack.gateway()]
    await stack.start(*processes)
    async with httpx.AsyncClient(base_url=processes[-1].url or "", timeout=60) as http:
        yield http, processes


def call_of(stream: Any, tool: str) -> str:
    return next(c["toolCallId"] for c in stream.of_type("tool-input-available") if c["toolName"] == tool)


def output_of(stream: Any, tool: str) -> Any:
    call_id = call_of(stream, tool)
    return next(c["output"] for c in stream.of_type("tool-output-available") if c["toolCallId"] == call_id)


async def activity_types(temporal: Client, run_id: str) -> list[str]:
    history = await temporal.get_workflow_handle(run_id).fetch_history()
    scheduled = EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    return [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.event_type == scheduled
    ]


async def decoded_payloads(temporal: Client, run_id: str) -> str:
    """Every payload of the run's history (input, activity inputs and results), decrypted, as text."""
    history = await temporal.get_workflow_handle(run_id).fetch_history()
    payloads = []
    for event in history.events:
        for attributes, field in (
            (event.workflow_execution_started_event_attributes, "input"),
            (event.activity_task_scheduled_event_attributes, "input"),
            (event.activity_task_completed_event_attributes, "result"),
        ):
            payloads += list(getattr(attributes, field).payloads)
    codec = temporal.data_converter.payload_codec
    assert codec is not None
    return "\n".join(p.data.decode(errors="replace") for p in await codec.decode(payloads))


# --- server-everything, over stdio and over streamable HTTP ---


async def test_server_everythings_echo_and_sum_over_stdio(
    served: tuple[httpx.AsyncClient, list[Process]],
) -> None:
    http, _ = served

    echoed = await chat(http, chat_body("everything__echo hello", purpose="mcp-helper"))
    summed = await chat(http, chat_body("everything__get-sum of 4", purpose="mcp-helper"))

    assert echoed.tool_names == ["everything__echo"] and echoed.run_status == "completed"
    assert output_of(echoed, "everything__echo") == "Echo: everything__echo hello"
    assert summed.tool_names == ["everything__get-sum"]
    assert output_of(summed, "everything__get-sum") == "The sum of 4 and 4 is 8."


async def test_server_everythings_tools_over_streamable_http(
    served: tuple[httpx.AsyncClient, list[Process]],
) -> None:
    http, _ = served

    echoed = await chat(http, chat_body("everything-http__echo over the wire", purpose="mcp-web"))
    summed = await chat(http, chat_body("everything-http__get-sum of 20", purpose="mcp-web"))

    assert output_of(echoed, "everything-http__echo") == "Echo: everything-http__echo over the wire"
    assert output_of(summed, "everything-http__get-sum") == "The sum of 20 and 20 is 40."


async def test_images_and_structured_content_become_the_tool_result(
    served: tuple[httpx.AsyncClient, list[Process]],
) -> None:
    http, _ = served

    image = await chat(http, chat_body("everything__get-tiny-image", purpose="mcp-helper"))
    structured = await chat(http, chat_body("notes__whoami", purpose="mcp-helper"))

    shown = output_of(image, "everything__get-tiny-image")
    assert shown["text"].startswith("Here's the image you requested")
    assert shown["media"][0]["type"] == "image" and shown["media"][0]["mimeType"] == "image/png"
    assert base64.b64decode(shown["media"][0]["data"]).startswith(b"\x89PNG")
    # Structured content reaches the model as itself (its text rendition is not repeated).
    assert set(output_of(structured, "notes__whoami")) == {"idempotency_key", "pid"}


async def test_a_long_running_tool_reports_progress(served: tuple[httpx.AsyncClient, list[Process]]) -> None:
    http, processes = served

    stream = await chat(http, chat_body("everything__trigger-long-running-operation 2", purpose="mcp-helper"))

    result = output_of(stream, "everything__trigger-long-running-operation")
    assert result == "Long running operation completed. Duration: 2 seconds, Steps: 2."
    worker_log = processes[0].log_text()
    assert "mcp progress 1.0/2.0" in worker_log and "mcp progress 2.0/2.0" in worker_log


async def test_an_error_result_goes_back_to_the_model_unretried() -> None:
    """server-everything refuses arguments that don't fit with an `isError` result: the model hears it, the
    call is not retried. (No message makes the scripted model send a string for a number: keel.testing's
    script does, on a worker serving the same app.)"""
    if shutil.which("node") is None:
        skip_or_fail("node is missing")
    async with AgentTest(load_app(APP)) as t:
        run = await t.run(
            "add these",
            agent="mcp-helper",
            script=[call("everything__get-sum", a="four", b=2), "it failed"],
        )

        [record] = run.tool_calls
        assert record.status == "error" and "expected number" in str(record.result)
        assert run.status == "completed"


# --- approval by annotations, the idempotency key, a server killed mid-call ---


@pytest.mark.parametrize(
    ("tool", "asks"),
    [
        ("notes__read_note", False),  # readOnlyHint
        ("notes__delete_note", True),  # destructiveHint
        ("notes__archive_note", True),  # no readOnlyHint
        ("notes__touch_note", False),  # no readOnlyHint, but the app's override says never
    ],
)
async def test_approval_follows_the_annotations_and_the_overrides(
    served: tuple[httpx.AsyncClient, list[Process]], tool: str, asks: bool
) -> None:
    http, _ = served

    stream = await chat(http, chat_body(f"{tool} groceries", purpose="mcp-helper"))

    if not asks:
        assert stream.run_status == "completed" and "groceries" in output_of(stream, tool)
        return
    assert stream.run_status == "waiting_for_approval"
    run = stream.response.headers["x-agent-run-id"]
    decided = await http.post(f"/api/runs/{run}/approvals/{call_of(stream, tool)}", json={"approved": True})
    assert decided.status_code == 200, decided.text
    await wait_for_status(http, run, "completed", within=30)


async def test_the_calls_idempotency_key_travels_in_meta(
    served: tuple[httpx.AsyncClient, list[Process]], stack: CrashStack
) -> None:
    http, _ = served

    stream = await chat(http, chat_body("notes__whoami", purpose="mcp-helper"))

    run = stream.response.headers["x-agent-run-id"]
    key = output_of(stream, "notes__whoami")["idempotency_key"]
    assert key.startswith(f"{run}/tool-")  # the workflow id and the call's activity id: ToolContext's key


async def test_a_stdio_server_killed_mid_call_is_restarted_and_the_call_retried(
    served: tuple[httpx.AsyncClient, list[Process]],
) -> None:
    http, processes = served

    stream = await chat(http, chat_body("notes__fragile once", purpose="mcp-helper"))

    result = output_of(stream, "notes__fragile")
    first_pid, survivor_pid = result.split("the first process was pid ")[1], result.split()[3].rstrip(";")
    assert stream.run_status == "completed" and result.startswith("survived on pid")
    assert first_pid != survivor_pid  # a fresh process answered the retried call
    assert "MCP server notes: connection lost" in processes[0].log_text()


async def test_a_worker_killed_with_sigkill_leaves_no_stdio_server_running(
    keel: Keel,
    temporal_server: TemporalDevServer,
    postgres: EmbeddedPostgres,
    everything_http: int,
    tmp_path: Path,
) -> None:
    # A stack on task queues of its own, so only this worker takes its runs; SIGKILL to the worker's own
    # pid, not its process group: what the kernel's OOM killer or `kill -9 <pid>` does.
    queue = f"mcp-sigkill-{uuid.uuid4().hex[:8]}"
    with CrashStack(
        temporal_server,
        postgres,
        tmp_path,
        keel.env["KEEL_CODEC_KEY_FILE"],
        KEEL_APP=APP,
        KEEL_TASK_QUEUE=queue,
        KEEL_HEAVY_TASK_QUEUE=f"{queue}-heavy",
        EVERYTHING_HTTP_PORT=str(everything_http),
        NOTES_MARKER=str(tmp_path / "fragile-marker"),
        EVERYTHING_TOKEN=SECRET,
    ) as stack:
        worker, gateway = stack.worker(), stack.gateway()
        await stack.start(worker, gateway)
        async with httpx.AsyncClient(base_url=gateway.url or "", timeout=60) as http:
            stream = await chat(http, chat_body("everything__echo hello", purpose="mcp-helper"))
        assert stream.run_status == "completed"
        servers = psutil.Process(worker.proc.pid).children(recursive=True)
        assert servers, "the run should have started the agent's stdio servers"

        os.kill(worker.proc.pid, signal.SIGKILL)

        await until(lambda: not any(_running(p) for p in servers), "the stdio servers to exit")


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# --- the listing: a snapshot in the run, shown by /api/purposes; runs without MCP never list ---


async def test_purposes_show_each_agents_servers_and_their_tools(
    served: tuple[httpx.AsyncClient, list[Process]],
) -> None:
    http, _ = served
    await chat(http, chat_body("notes__read_note x", purpose="mcp-helper"))  # a run lists its servers
    await chat(http, chat_body("everything-http__echo x", purpose="mcp-web"))

    offered = {p["slug"]: p for p in (await http.get("/api/purposes")).json()}

    helper = {s["server"]: s for s in offered["mcp-helper"]["mcp"]}
    assert set(helper) == {"everything", "notes"} and helper["notes"]["transport"] == "stdio"
    notes = {t["name"]: t["needs_approval"] for t in helper["notes"]["tools"]}
    assert notes["notes__read_note"] is False and notes["notes__delete_note"] is True
    assert "everything__echo" in {t["name"] for t in helper["everything"]["tools"]}
    [web] = offered["mcp-web"]["mcp"]
    assert web["transport"] == "http" and "everything-http__get-sum" in {t["name"] for t in web["tools"]}
    # Never where a server is or what it is given: those may hold secrets.
    assert "127.0.0.1" not in json.dumps(offered) and SECRET not in json.dumps(offered)
    assert "mcp" not in offered["plain"]


async def test_only_runs_of_agents_with_mcp_servers_list_them_once(
    served: tuple[httpx.AsyncClient, list[Process]], stack: CrashStack
) -> None:
    http, _ = served
    temporal = await stack.temporal()

    with_mcp = await chat(http, chat_body("everything__echo one", purpose="mcp-helper"))
    without = await chat(http, chat_body("weather in Paris", purpose="plain"))

    listed = await activity_types(temporal, with_mcp.response.headers["x-agent-run-id"])
    assert listed.count(LIST_MCP_TOOLS) == 1 and listed[0] == LIST_MCP_TOOLS
    assert without.run_status == "completed"
    assert LIST_MCP_TOOLS not in await activity_types(temporal, without.response.headers["x-agent-run-id"])


async def test_secrets_in_a_servers_configuration_stay_out_of_history_and_logs(
    served: tuple[httpx.AsyncClient, list[Process]], stack: CrashStack
) -> None:
    http, processes = served
    temporal = await stack.temporal()

    stream = await chat(http, chat_body("everything-http__echo secret", purpose="mcp-web"))

    assert stream.run_status == "completed"
    decoded = await decoded_payloads(temporal, stream.response.headers["x-agent-run-id"])
    assert "everything-http__echo" in decoded  # the snapshot is there, decoded
    assert SECRET not in decoded and "EVERYTHING_TOKEN" not in decoded
    assert all(SECRET not in p.log_text() for p in processes)


def test_tool_names_are_valid_for_every_provider_and_stable() -> None:
    assert mcp_tool_name("files", "read_file") == "files__read_file"
    odd = mcp_tool_name("files", "read.file/v2")
    assert odd == mcp_tool_name("files", "read.file/v2") and odd.startswith("files__read_file_v2_")
    assert odd != mcp_tool_name("files", "read_file/v2")  # sanitized alike, still two names
    long = mcp_tool_name("files", "x" * 100)
    assert len(long) == 64 and long != mcp_tool_name("files", "x" * 99)


def test_a_bad_mcp_configuration_is_refused_at_load_in_one_line(tmp_path: Path) -> None:
    from keel import Agent, tool
    from keel.app import AppError, build_app
    from keel.mcp import MCPServer

    @tool
    def files__peek(path: str) -> str:
        """Shadows a server's tool."""
        return path

    one = MCPServer.stdio("files", "cat")
    cases = {
        "two of its MCP servers are named 'files'": [Agent(name="a", instructions="x", mcp=[one, one])],
        "MCP server name 'Bad Name' must be": [
            Agent(name="a", instructions="x", mcp=[MCPServer.stdio("Bad Name", "cat")])
        ],
        "its MCP server 'files' is not the server another agent has": [
            Agent(name="a", instructions="x", mcp=[one]),
            Agent(name="b", instructions="x", mcp=[MCPServer.stdio("files", "dog")]),
        ],
        "its tool 'files__peek' is named like a tool of its MCP server 'files'": [
            Agent(name="a", instructions="x", tools=[files__peek], mcp=[one])
        ],
    }
    for expected, agents in cases.items():
        with pytest.raises(AppError, match=expected):
            build_app("app", agents)


@pytest.fixture(autouse=True, scope="module")
def _no_stray_servers() -> Iterator[None]:
    """No MCP server process outlives the module's workers (they stop their servers' process trees)."""
    yield
    leftovers = subprocess.run(["pgrep", "-f", "tests/mcp_servers/notes.py"], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", f"notes servers left running: {leftovers.stdout}"
