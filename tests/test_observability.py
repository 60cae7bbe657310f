"""Operating Keel: metrics that move, JSON logs carrying agent_run_id, the run's current details, one trace
from the gateway's request to the activities, and the run viewer rendering a real run."""

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import Client

from keel.settings import Settings
from keel.storage.store import RunStore
from tests.conftest import ROOT, TEMPORAL_UI_URL, Keel
from tests.test_run_records import records
from tests.ui_stream import chat, chat_body

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(url: str) -> Samples:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def worker_metrics_url(keel: Keel) -> str:
    return f"http://127.0.0.1:{keel.env['KEEL_WORKER_METRICS_PORT']}/metrics"


def heavy_worker_metrics_url(keel: Keel) -> str:
    return f"http://127.0.0.1:{keel.env['KEEL_HEAVY_WORKER_METRICS_PORT']}/metrics"


async def test_metrics_are_served_and_move(http: httpx.AsyncClient, keel: Keel, store: RunStore) -> None:
    gateway_url, worker_url = f"{keel.gateway_url}/metrics", worker_metrics_url(keel)
    gw0, wk0 = await scrape(gateway_url), await scrape(worker_url)

    stream = await chat(http, chat_body("calculate 6 * 7"))
    await records(store.pool, stream.response.headers["x-agent-run-id"])  # the run's last record is in
    gw1, wk1 = await scrape(gateway_url), await scrape(worker_url)

    def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved(gw0, gw1, "keel_runs_started_total", purpose="assistant") == 1
    assert (
        moved(
            gw0,
            gw1,
            "keel_http_request_duration_seconds_count",
            method="POST",
            route="/api/chat",
            status="200",
        )
        == 1
    )
    assert ("keel_sse_clients", ()) in gw1 and ("keel_approvals_pending", ()) in gw1
    assert ("keel_runs_active", (("status", "waiting_for_approval"),)) in gw1
    assert moved(wk0, wk1, "keel_runs_finished_total", purpose="assistant", status="completed") == 1
    assert moved(wk0, wk1, "keel_run_duration_seconds_count", purpose="assistant", status="completed") == 1
    scripted = {"provider": "scripted", "model": "scripted"}
    assert moved(wk0, wk1, "keel_llm_calls_total", status="ok", **scripted) == 2
    assert moved(wk0, wk1, "keel_llm_call_duration_seconds_count", status="ok", **scripted) == 2
    assert moved(wk0, wk1, "keel_llm_time_to_first_token_seconds_count", **scripted) == 2
    assert moved(wk0, wk1, "keel_llm_tokens_total", type="prompt", **scripted) > 0
    assert moved(wk0, wk1, "keel_llm_tokens_total", type="completion", **scripted) > 0
    assert ("keel_llm_cost_usd_total", tuple(sorted(scripted.items()))) in wk1
    assert moved(wk0, wk1, "keel_tool_runs_total", tool="calculate", status="ok") == 1
    assert moved(wk0, wk1, "keel_tool_duration_seconds_count", tool="calculate", status="ok") == 1
    assert value(wk1, "keel_record_backlog") == 0
    # The Temporal SDK's own worker metrics come along on the worker's endpoint.
    sdk = {name for name, _ in wk1 if name.startswith("temporal_")}
    assert "temporal_worker_task_slots_available" in sdk
    assert any(name.startswith("temporal_local_activity_execution_latency") for name in sdk)
    assert not any(name.startswith("keel_llm") for name, _ in gw1), "each process serves only its own"


async def test_a_run_waiting_for_approval_says_so(
    http: httpx.AsyncClient, keel: Keel, temporal: Client
) -> None:
    """Its current details in the Web UI, the pending-approvals gauge, then the wait once decided."""
    stream = await chat(
        http, chat_body("plan, write and publish a lesson on gauges", purpose="learnpack-lesson-writer")
    )
    run_id = stream.response.headers["x-agent-run-id"]
    call = (await http.get(f"/api/runs/{run_id}")).json()["pending_approvals"][0]["tool_call_id"]

    metadata = await temporal.get_workflow_handle(run_id).query(
        "__temporal_workflow_metadata", result_type=WorkflowMetadata
    )
    assert metadata.current_details.startswith(
        f"step 3 · waiting for approval of publish_package ({call}), until "
    )
    for _ in range(100):  # the waiting record is written alongside, not before, the stream's end
        gw = await scrape(f"{keel.gateway_url}/metrics")
        if value(gw, "keel_approvals_pending") >= 1:
            break
        await asyncio.sleep(0.05)
    assert value(gw, "keel_approvals_pending") >= 1 and value(gw, "keel_approval_oldest_pending_seconds") > 0
    wk0 = await scrape(worker_metrics_url(keel))

    assert (
        await http.post(f"/api/runs/{run_id}/approvals/{call}", json={"approved": True})
    ).status_code == 200
    result = await temporal.get_workflow_handle(run_id).result()
    assert result["status"] == "completed"

    wk1 = await scrape(worker_metrics_url(keel))
    labels = {"tool": "publish_package", "decision": "approved"}
    assert (
        value(wk1, "keel_approval_wait_seconds_count", **labels)
        - value(wk0, "keel_approval_wait_seconds_count", **labels)
        == 1
    )
    metadata = await temporal.get_workflow_handle(run_id).query(
        "__temporal_workflow_metadata", result_type=WorkflowMetadata
    )
    assert metadata.current_details == "step 4 · completed"


def log_lines(path: Path, agent_run_id: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("agent_run_id") == agent_run_id]


async def test_logs_are_json_lines_carrying_the_run(
    http: httpx.AsyncClient, keel: Keel, store: RunStore
) -> None:
    stream = await chat(http, chat_body("calculate 2 + 2"))
    run_id = stream.response.headers["x-agent-run-id"]
    await records(store.pool, run_id)
    base = keel.data_dir.parent

    for name in ("worker.log", "gateway.log"):
        text = (base / name).read_text()
        assert all(line.startswith("{") for line in text.splitlines() if line.strip()), (
            f"{name} is JSON lines"
        )
    worker = log_lines(base / "worker.log", run_id)
    events = [line["event"] for line in worker if "event" in line]
    assert events == [
        "step_started",
        "tool_call",
        "tool_result",
        "step_finished",
        "step_started",
        "text",
        "step_finished",
        "run_finished",
    ]
    [tool_call] = [line for line in worker if line.get("event") == "tool_call"]
    assert (tool_call["purpose"], tool_call["phase"], tool_call["step"], tool_call["tool"]) == (
        "assistant",
        "think",
        1,
        "calculate",
    )
    attempts = [line for line in worker if line["logger"] == "keel.activities"]
    assert [(line["message"].split()[0], line["attempt"], line["phase"]) for line in attempts] == [
        ("call_llm", 1, "think"),
        ("run_tool", 1, "act"),
        ("call_llm", 1, "think"),
        ("record_run", 1, "record"),
    ]
    assert {line["level"] for line in worker} == {"info"}
    [tool_line] = [line for line in attempts if line["message"].startswith("run_tool")]
    assert (tool_line["tool"], tool_line["step"], tool_line["purpose"]) == ("calculate", 1, "assistant")
    gateway = log_lines(base / "gateway.log", run_id)
    assert any(
        line["message"].startswith(f"started run {run_id}") and line["purpose"] == "assistant"
        for line in gateway
    )


async def test_one_trace_spans_the_gateway_request_the_workflow_and_its_activities(
    keel: Keel, tmp_path: Path, temporal: Client
) -> None:
    """The gateway and a worker run in this process (the same code `python -m api` and `python worker.py`
    run), with an in-memory span exporter, on a task queue of their own."""
    import worker
    from api.application import create_app

    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    env = {k: v for k, v in keel.env.items() if k.isupper()}
    settings = Settings(**{**env, "KEEL_TASK_QUEUE": "agent-runs-traced", "KEEL_DATA_DIR": str(tmp_path)})

    stop = asyncio.Event()
    running = asyncio.create_task(worker.run_worker(settings, stop))
    app = create_app(settings)
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://gateway", timeout=30
            ) as http,
        ):
            stream = await chat(http, chat_body("calculate 3 * 3"))
            run_id = stream.response.headers["x-agent-run-id"]
            await temporal.get_workflow_handle(run_id).result()
    finally:
        stop.set()
        await asyncio.wait_for(running, 15)

    spans = exporter.get_finished_spans()
    [request] = [
        s for s in spans if s.name == "POST /api/chat" and s.attributes.get("keel.agent_run_id") == run_id
    ]
    in_trace = [s for s in spans if s.context.trace_id == request.context.trace_id]
    by_id = {s.context.span_id: s for s in in_trace}

    def ancestry(span: ReadableSpan) -> list[str]:
        names = []
        while span.parent is not None and span.parent.span_id in by_id:
            span = by_id[span.parent.span_id]
            names.append(span.name)
        return names

    [llm, _] = [s for s in in_trace if s.name == "chat scripted"]
    # Temporal's interceptor hangs workflow-side spans under the span that started the workflow.
    # (FastAPI may add a span of its own for the endpoint in between.)
    assert ancestry(llm)[:3] == ["RunActivity:call_llm", "StartActivity:call_llm", "StartWorkflow:AgentRun"]
    assert ancestry(llm)[-1] == "POST /api/chat"
    [workflow_span] = [s for s in in_trace if s.name == "RunWorkflow:AgentRun"]
    assert ancestry(workflow_span)[0] == "StartWorkflow:AgentRun"
    [tool] = [s for s in in_trace if s.name == "execute_tool calculate"]
    assert ancestry(tool)[:2] == ["RunActivity:run_tool", "StartActivity:run_tool"]
    assert ancestry(tool)[-1] == "POST /api/chat"
    # GenAI semantic conventions on the LLM span.
    attrs = dict(llm.attributes)
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "scripted" and attrs["gen_ai.request.model"] == "scripted"
    assert attrs["gen_ai.usage.input_tokens"] > 0 and attrs["gen_ai.usage.output_tokens"] > 0
    assert attrs["gen_ai.response.finish_reasons"] in (("tool_calls",), ("stop",))
    assert attrs["keel.agent_run_id"] == run_id
    assert dict(tool.attributes)["gen_ai.tool.name"] == "calculate"
    assert (
        request.attributes["http.route"] == "/api/chat"
        and request.attributes["http.response.status_code"] == 200
    )


# --- the run viewer ---

_NODE_RENDER = r"""
// Runs the viewer page's own script against the live gateway, with just enough of a DOM to hold its output.
const [html, base, runId] = [require("fs").readFileSync(process.argv[2], "utf8"), process.argv[3], process.argv[4]];
const script = html.split("<script>")[1].split("</script>")[0];
const elements = {};
const element = (sel) => (elements[sel] ??= { innerHTML: "", addEventListener() {}, classList: { toggle() {} }, dataset: {} });
globalThis.document = { querySelector: element, querySelectorAll: () => [] };
globalThis.location = { search: `?run=${runId}` };
globalThis.history = { replaceState() {} };
const stored = new Map();
globalThis.sessionStorage = { getItem: (k) => stored.get(k) ?? null, setItem: (k, v) => stored.set(k, v) };
globalThis.FormData = class { constructor() {} [Symbol.iterator]() { return [["status", "completed"]][Symbol.iterator](); } };
const realFetch = globalThis.fetch;
globalThis.fetch = (url, options) => realFetch(base + url, options);
new Function(script)();
setTimeout(() => console.log(JSON.stringify({ list: element("#list").innerHTML, detail: element("#detail").innerHTML })), 1500);
"""


async def test_the_run_viewer_renders_a_real_run(
    http: httpx.AsyncClient, keel: Keel, temporal: Client, tmp_path: Path, gateways: dict[str, str]
) -> None:
    body = chat_body("calculate 12 / 4")
    stream = await chat(http, body)
    run_id = stream.response.headers["x-agent-run-id"]
    await temporal.get_workflow_handle(run_id).result()
    run_id_temporal = (await temporal.get_workflow_handle(run_id).describe()).run_id

    page = await http.get("/runs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/api/runs?" in page.text and "/timeline" in page.text
    assert "http://" not in page.text.split("<script>")[1], "the page loads nothing from elsewhere"

    listed = (
        await http.get("/api/runs", params={"status": "completed", "purpose": "assistant", "limit": 500})
    ).json()
    mine = next(r for r in listed if r["agent_run_id"] == run_id)
    assert (mine["status"], mine["step_count"], mine["input_summary"]) == ("completed", 2, "calculate 12 / 4")
    assert all(r["status"] == "completed" and r["purpose"] == "assistant" for r in listed)
    assert (await http.get("/api/runs", params={"status": "failed", "user": "nobody"})).json() == []
    assert (await http.get("/api/runs", params={"status": "bogus"})).status_code == 422
    # The chat's runs, as GET /api/runs?chat_id= always listed them (agent_run_id, started_at), and more.
    [of_chat] = (await http.get("/api/runs", params={"chat_id": body["id"]})).json()
    assert (of_chat["agent_run_id"], of_chat["status"]) == (run_id, "completed") and of_chat["started_at"]
    later = (
        await http.get("/api/runs", params={"since": of_chat["finished_at"].replace("+00:00", "Z")})
    ).json()
    assert run_id not in [r["agent_run_id"] for r in later]

    # This gateway knows no Web UI (KEEL_TEMPORAL_UI_URL unset): no address, rather than a guessed one.
    assert (await http.get(f"/api/runs/{run_id}/timeline")).json()["run"]["temporal_url"] is None
    # One that knows it links the run's history there; the page below renders that gateway's answer.
    with_ui = gateways["temporal-ui"]
    async with httpx.AsyncClient(base_url=with_ui, timeout=30) as other:
        timeline = (await other.get(f"/api/runs/{run_id}/timeline")).json()
    assert (
        timeline["run"]["temporal_url"]
        == f"{TEMPORAL_UI_URL}/namespaces/default/workflows/{run_id}/{run_id_temporal}/history"
    )
    items = [(i["kind"], i["name"], i["status"], i["step"]) for i in timeline["items"]]
    assert items == [
        ("llm_call", "scripted", "ok", 1),
        ("tool_run", "calculate", "ok", 1),
        ("llm_call", "scripted", "ok", 2),
    ]
    assert all(i["latency_ms"] is not None and i["offset_ms"] >= 0 for i in timeline["items"])
    assert timeline["items"][1]["record"]["result_snapshot"]["value"] == 3
    assert (await http.get("/api/runs/run-00000000-0000-0000-0000-000000000000/timeline")).status_code == 404

    # The page's own JavaScript, fed this run's JSON by the gateway, renders its timeline.
    page_file = tmp_path / "runs.html"
    page_file.write_text(page.text)
    script = tmp_path / "render.cjs"
    script.write_text(_NODE_RENDER)
    done = await asyncio.to_thread(
        subprocess.run,
        ["node", str(script), str(page_file), with_ui, run_id],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    rendered = json.loads(done.stdout)
    assert f'data-id="{run_id}"' in rendered["list"]
    detail = rendered["detail"]
    assert (
        run_id in detail
        and "open in the Temporal Web UI" in detail
        and timeline["run"]["temporal_url"] in detail
    )
    assert detail.count('data-kind="llm_call"') == 2 and detail.count('data-kind="tool_run"') == 1
    assert "calculate" in detail and "first token" in detail and "$0.000000" in detail
