"""Prometheus metrics: what the gateway and the worker each count, and the worker's `/metrics` listener.

Each process has its own registry, so its `/metrics` shows only what it moves: the gateway serves
`GATEWAY` on its own port (`GET /metrics`), the worker serves `WORKER` on `KEEL_WORKER_METRICS_PORT`,
followed by the Temporal SDK's worker metrics (`temporal_*`), which the SDK's Rust core exposes on an
internal loopback port that `TemporalSdkMetrics` reads at each scrape.
"""

import contextlib
import logging
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

log = logging.getLogger("keel.observability.metrics")

GATEWAY = CollectorRegistry()
WORKER = CollectorRegistry()

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_LONG_SECONDS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600)

# --- the gateway ---
RUNS_STARTED = Counter(
    "keel_runs_started", "Runs the gateway started, by purpose.", ["purpose"], registry=GATEWAY
)
SSE_CLIENTS = Gauge("keel_sse_clients", "Clients connected to a run's event stream now.", registry=GATEWAY)
HTTP_DURATION = Histogram(
    "keel_http_request_duration_seconds",
    "Gateway requests by route and status (a streamed chat lasts as long as its stream).",
    ["method", "route", "status"],
    buckets=_SECONDS,
    registry=GATEWAY,
)
APPROVALS_PENDING = Gauge(
    "keel_approvals_pending",
    "Tool calls waiting for a person's approval now (from tool_runs).",
    registry=GATEWAY,
)
APPROVAL_OLDEST = Gauge(
    "keel_approval_oldest_pending_seconds",
    "How long the oldest pending approval has waited (0 when none is pending).",
    registry=GATEWAY,
)
RUNS_ACTIVE = Gauge(
    "keel_runs_active", "Runs not finished yet, by status (from agent_runs).", ["status"], registry=GATEWAY
)

# --- the gateway: frontend telemetry (issue 21), what browsers report through POST /api/telemetry ---
# `client` is one of FRONTEND_CLIENTS or "other": a client names itself, and a label must stay bounded.
FRONTEND_CLIENTS = ("chat-page", "nextjs")
_DECISION_SECONDS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600)
FRONTEND_TTFT = Histogram(
    "keel_frontend_ttft_seconds",
    "Time to first token as the browser saw it: from sending a message to its first text.",
    ["client"],
    buckets=_SECONDS,
    registry=GATEWAY,
)
FRONTEND_STALLS = Counter(
    "keel_frontend_stalls",
    "Streams that went silent mid-answer for longer than the client's stall threshold (2 s).",
    ["client"],
    registry=GATEWAY,
)
FRONTEND_RECONNECTS = Counter(
    "keel_frontend_reconnects",
    "Streams a browser had to reconnect to or resume (a dropped connection, a reload).",
    ["client"],
    registry=GATEWAY,
)
FRONTEND_ERRORS = Counter(
    "keel_frontend_errors", "Errors a browser showed the person about a run.", ["client"], registry=GATEWAY
)
FRONTEND_DECISION = Histogram(
    "keel_frontend_decision_seconds",
    "From an approval request shown in the browser to the person's decision.",
    ["client"],
    buckets=_DECISION_SECONDS,
    registry=GATEWAY,
)

# --- the worker ---
RUNS_FINISHED = Counter(
    "keel_runs_finished",
    "Runs that ended, by purpose and final status.",
    ["purpose", "status"],
    registry=WORKER,
)
RUN_DURATION = Histogram(
    "keel_run_duration_seconds",
    "From a run's start to its end, waits for people included.",
    ["purpose", "status"],
    buckets=_LONG_SECONDS,
    registry=WORKER,
)
LLM_CALLS = Counter(
    "keel_llm_calls",
    "LLM call attempts by outcome (ok, error, cancelled).",
    ["provider", "model", "status"],
    registry=WORKER,
)
LLM_DURATION = Histogram(
    "keel_llm_call_duration_seconds",
    "One LLM call attempt, request to last chunk.",
    ["provider", "model", "status"],
    buckets=_SECONDS,
    registry=WORKER,
)
LLM_TTFT = Histogram(
    "keel_llm_time_to_first_token_seconds",
    "From an LLM request to its first text or tool call chunk.",
    ["provider", "model"],
    buckets=_SECONDS,
    registry=WORKER,
)
LLM_TOKENS = Counter(
    "keel_llm_tokens",
    "Tokens by provider, model and type (prompt, completion).",
    ["provider", "model", "type"],
    registry=WORKER,
)
LLM_COST = Counter(
    "keel_llm_cost_usd",
    "What LLM calls cost, USD, from the price table.",
    ["provider", "model"],
    registry=WORKER,
)
TOOL_RUNS = Counter(
    "keel_tool_runs", "Tool attempts by outcome (ok, error, cancelled).", ["tool", "status"], registry=WORKER
)
TOOL_DURATION = Histogram(
    "keel_tool_duration_seconds", "One tool attempt.", ["tool", "status"], buckets=_SECONDS, registry=WORKER
)
APPROVAL_WAIT = Histogram(
    "keel_approval_wait_seconds",
    "From an approval request to its decision, by tool and decision (approved, denied, expired).",
    ["tool", "decision"],
    buckets=_LONG_SECONDS,
    registry=WORKER,
)
RECORD_BACKLOG = Gauge(
    "keel_record_backlog",
    "Run records waiting to be written (they pile up while PostgreSQL is unavailable).",
    registry=WORKER,
)

# --- operations (issue 21): what the alert rules in deploy/prometheus/alerts.yml need besides the above ---
RUN_MAX_IDLE = Gauge(
    "keel_run_max_idle_seconds",
    "Of the runs in each not-yet-final status now, the longest any has gone without a recorded change"
    " (a step, a status): 0 when none is in it (from agent_runs).",
    ["status"],
    registry=GATEWAY,
)
RECORD_SPOOL_BYTES = Gauge(
    "keel_record_spool_bytes",
    "Bytes of run records kept on disk in the data dir's spool until PostgreSQL takes them, this"
    " process's and any a dead worker left behind.",
    registry=WORKER,
)
# Per agent, counted once when a run finishes (keel_llm_* count per model as calls happen).
RUN_STEPS = Counter(
    "keel_run_steps", "Steps of finished runs, by purpose (agent).", ["purpose"], registry=WORKER
)
RUN_TOKENS = Counter(
    "keel_run_tokens",
    "Tokens of finished runs, by purpose (agent) and type (prompt, completion).",
    ["purpose", "type"],
    registry=WORKER,
)
RUN_COST = Counter(
    "keel_run_cost_usd", "What finished runs cost, USD, by purpose (agent).", ["purpose"], registry=WORKER
)
WEBHOOK_DELIVERIES = Counter(
    "keel_webhook_deliveries",
    "Webhook delivery attempts by outcome: delivered, retrying (no 2xx answer: tried again later),"
    " refused (an endpoint Keel will not post to: never retried), gave_up (the delivery period is over).",
    ["outcome"],
    registry=WORKER,
)


def spool_bytes(directory: Path) -> float:
    """The size of the run-record spool files (`*.jsonl`, keel/storage/run_records.py) in `directory`."""
    total = 0
    for path in directory.glob("*.jsonl"):
        with contextlib.suppress(OSError):  # written and deleted while we look
            total += path.stat().st_size
    return float(total)


def watch_record_spool(directory: Path) -> None:
    """Make `keel_record_spool_bytes` read `directory` at each scrape."""
    RECORD_SPOOL_BYTES.set_function(lambda: spool_bytes(directory))


# --- the worker: provider limits (issue 21, activities/capacity.py) ---
# `route` is the KEEL_PROVIDER_LIMITS pattern governing the call (`openai:*`), so it stays bounded; a 429 of
# a route no pattern governs is counted under the route itself.
PROVIDER_CAPACITY_WAITS = Counter(
    "keel_provider_capacity_waits",
    "LLM calls that had to wait for provider capacity before they could start, by priority.",
    ["route", "priority"],
    registry=WORKER,
)
PROVIDER_CAPACITY_WAIT_SECONDS = Histogram(
    "keel_provider_capacity_wait_seconds",
    "How long an LLM call that had to wait for provider capacity waited (no worker slot held meanwhile).",
    ["route"],
    buckets=_SECONDS,
    registry=WORKER,
)
PROVIDER_RATE_LIMITED = Counter(
    "keel_provider_rate_limited",
    "429s and rate-limit signals providers answered; each pauses every caller of the route.",
    ["route"],
    registry=WORKER,
)
PROVIDER_LIMIT_UTILIZATION = Gauge(
    "keel_provider_limit_utilization",
    "Share of a provider limit in use across all workers (0..1), kind rpm, tpm or concurrency.",
    ["route", "kind"],
    registry=WORKER,
)


def split_route(route: str | None) -> tuple[str, str]:
    """`openai:gpt-4o-mini?tools=json` -> ("openai", "gpt-4o-mini"): metric labels from a route."""
    if not route:
        return "unknown", "unknown"
    provider, _, model = route.partition("?")[0].partition(":")
    return provider, model or provider


class TemporalSdkMetrics(Collector):
    """The Temporal SDK's worker metrics, read from its core's Prometheus endpoint at each scrape."""

    def __init__(self, url: str) -> None:
        self.url = url

    def collect(self) -> Iterable[Metric]:
        try:
            with urllib.request.urlopen(self.url, timeout=2) as response:
                text = response.read().decode()
        except OSError as err:
            log.warning("could not read the Temporal SDK metrics at %s: %s", self.url, err)
            return []
        return list(text_string_to_metric_families(text))


def serve_worker_metrics(host: str, port: int, temporal_sdk_url: str | None) -> None:
    """Serve WORKER (and the SDK's metrics) at http://host:port/metrics, from a daemon thread."""
    if temporal_sdk_url:
        WORKER.register(TemporalSdkMetrics(temporal_sdk_url))
    start_http_server(port, addr=host, registry=WORKER)
