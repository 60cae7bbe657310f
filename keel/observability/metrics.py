"""Prometheus metrics: what the gateway and the worker each count, and the worker's `/metrics` listener.

Each process has its own registry, so its `/metrics` shows only what it moves: the gateway serves
`GATEWAY` on its own port (`GET /metrics`), the worker serves `WORKER` on `KEEL_WORKER_METRICS_PORT`,
followed by the Temporal SDK's worker metrics (`temporal_*`), which the SDK's Rust core exposes on an
internal loopback port that `TemporalSdkMetrics` reads at each scrape.
"""

import logging
import urllib.request
from collections.abc import Iterable

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
