"""The Grafana dashboard (deploy/grafana/dashboards/keel.json) and the alert rules ask only for metrics Keel
really exports: every metric name in every panel's PromQL and every alert's expression is one the gateway's
or the worker's registry defines (a counter read as `<name>_total`, a histogram as `_bucket/_sum/_count`), or,
for `temporal_*`, one a real worker's /metrics serves once it has run something. Also: the dashboard is
well-formed for provisioning (unique panel ids, every query on the provisioned datasource), and the
provisioning files and the Prometheus config name what is really there.
"""

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from keel.observability import metrics
from keel.settings import Settings
from keel.storage.store import RunStore
from tests.conftest import Keel
from tests.test_run_records import records
from tests.ui_stream import chat, chat_body

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "keel.json"
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"

# What may follow a name without it being a metric: PromQL's keywords and Grafana's variables.
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless"}
_KEYWORDS |= {"bool", "offset", "inf", "nan", "atan2"}
_SAMPLE_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count"),
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: what is left after strings, label matchers, ranges,
    grouping clauses, function calls, keywords, numbers and Grafana's `$variables` are set aside."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\$\{?\w+\}?", "", text)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def test_the_promql_reader_finds_names_and_only_names() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, route) (rate(keel_http_request_duration_seconds_bucket{route!="/x"}'
        "[$__rate_interval]))) > 1 and on (route) sum without (le) (keel_runs_active offset 5m) * 60 or vector(0)"
    )
    assert metric_names(expr) == {"keel_http_request_duration_seconds_bucket", "keel_runs_active"}


def registry_names(registry: CollectorRegistry) -> set[str]:
    """Every sample name a registry's metrics can have, whether or not a labelled child exists yet."""
    names = set()
    for family in registry.collect():
        names.add(family.name)
        names.update(family.name + suffix for suffix in _SAMPLE_SUFFIXES.get(family.type, ()))
    return names


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, expr) for every query of every panel, rows' nested panels included."""
    found = []
    for panel in dashboard()["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            found += [(inner["title"], t["expr"]) for t in inner.get("targets", [])]
    return found


def alert_queries() -> list[tuple[str, str]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [(rule["alert"], rule["expr"]) for group in groups for rule in group["rules"]]


@pytest.fixture
async def temporal_names(http: httpx.AsyncClient, keel: Keel, store: RunStore) -> set[str]:
    """The Temporal SDK's metric names on the real workers' /metrics, after a run with an inline tool and one
    with a heavy tool (regular activities, on the heavy worker): histograms only appear once something is
    measured."""
    for ask in ("calculate 6 * 7", "wait 1 second"):
        stream = await chat(http, chat_body(ask))
        await records(store.pool, stream.response.headers["x-agent-run-id"])
    names: set[str] = set()
    for port in (keel.env["KEEL_WORKER_METRICS_PORT"], keel.env["KEEL_HEAVY_WORKER_METRICS_PORT"]):
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
        names |= {
            sample.name
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name.startswith("temporal_")
        }
    return names


def exported(temporal_names: set[str]) -> set[str]:
    return registry_names(metrics.GATEWAY) | registry_names(metrics.WORKER) | temporal_names


async def test_every_dashboard_query_names_exported_metrics(temporal_names: set[str]) -> None:
    assert {
        "temporal_workflow_task_schedule_to_start_latency_bucket",
        "temporal_num_pollers",
    } <= temporal_names
    known = exported(temporal_names)
    unknown = {(title, name) for title, expr in panel_queries() for name in metric_names(expr) - known}
    assert unknown == set(), "dashboard queries read metrics nothing exports"
    assert all(metric_names(expr) for _, expr in panel_queries()), "a query that reads no metric"


async def test_every_alert_names_exported_metrics(temporal_names: set[str]) -> None:
    known = exported(temporal_names)
    unknown = {(alert, name) for alert, expr in alert_queries() for name in metric_names(expr) - known}
    assert unknown == set(), "alert rules read metrics nothing exports"


def test_the_dashboard_covers_what_the_issue_asks_for() -> None:
    read = {name for _, expr in panel_queries() for name in metric_names(expr)}
    wanted = {
        "keel_runs_started_total",
        "keel_runs_finished_total",
        "keel_runs_active",
        "keel_run_steps_total",
        "keel_llm_tokens_total",
        "keel_run_tokens_total",
        "keel_llm_cost_usd_total",
        "keel_run_cost_usd_total",
        "keel_llm_call_duration_seconds_bucket",
        "keel_tool_duration_seconds_bucket",
        "keel_llm_time_to_first_token_seconds_bucket",
        "keel_approvals_pending",
        "keel_provider_limit_utilization",
        "keel_provider_capacity_waits_total",
        "keel_provider_rate_limited_total",
        "keel_frontend_ttft_seconds_bucket",
        "keel_frontend_stalls_total",
        "keel_frontend_reconnects_total",
        "keel_frontend_errors_total",
        "keel_frontend_decision_seconds_bucket",
    }
    assert wanted - read == set()


def test_the_dashboard_is_provisioned_from_the_prometheus_datasource() -> None:
    board = dashboard()
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    [source] = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"]
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        assert panel["targets"] and all(t["datasource"]["uid"] == source["uid"] for t in panel["targets"])
    [provider] = yaml.safe_load((PROVISIONING / "dashboards" / "keel.yml").read_text())["providers"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    grafana_mounts = dict(v.split(":")[:2] for v in compose["grafana"]["volumes"] if v.startswith("./"))
    assert grafana_mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert grafana_mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    assert source["url"] == "http://prometheus:9090" and "prometheus" in compose


def test_prometheus_scrapes_the_gateway_and_each_worker_kind() -> None:
    """The job names the alert rules select on, pointed at the services and ports Compose runs."""
    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"keel-gateway", "keel-worker", "keel-heavy-worker"}
    assert jobs["keel-gateway"]["static_configs"][0]["targets"] == ["gateway:8000"]
    defaults = Settings()
    worker, heavy = jobs["keel-worker"]["dns_sd_configs"][0], jobs["keel-heavy-worker"]["dns_sd_configs"][0]
    assert worker["names"] == ["worker"] and worker["port"] == defaults.worker_metrics_port
    assert heavy["names"] == ["heavy-worker"] and heavy["port"] == defaults.heavy_worker_metrics_port
    assert config["rule_files"] == ["alerts.yml"]
    jobs_in_rules = set(re.findall(r'job="([^"]+)"', ALERTS.read_text()))
    assert jobs_in_rules <= set(jobs)
