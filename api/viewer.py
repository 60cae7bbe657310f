"""The Agent Run Viewer's JSON (its page, `/runs`, is served by api/pages.py: no build step, works offline).

- `GET /api/runs`: runs from `agent_runs`, newest first, filtered by status, purpose, user, chat and time.
  With `chat_id` it lists the chat's runs from `chat_runs` (runs from before run records included), as it
  always did; every row still has `agent_run_id` and `started_at`.
  Every row names its `parent_run_id` (a sub-agent's child run) or null; `top=true` leaves child runs out.
- `GET /api/runs/{id}/timeline`: one run with its LLM calls and tool runs, merged into one timeline with
  latency, tokens, cost, errors and approvals, and the run's address in the Temporal Web UI (null when
  KEEL_TEMPORAL_UI_URL is not set: the pages then show no link rather than one that leads nowhere).
  With it the run tree: `children`, the summaries of the runs its sub-agents started (each under the tool
  call that started it, and with its own children, up to run_records.TREE_DEPTH levels: a child's own
  timeline is one more request), and `tree_usage`, the tokens and cost of the run and all of them.
  And `webhooks`: the run's webhook deliveries (api/webhooks.py), oldest first; and `frontend`: what the
  browser reported of the run (api/telemetry.py: time to first token, stalls, reconnects, errors, decision
  times), oldest first.

The records are read by the run service (api/run_service.py), which also decides whose runs a user sees.
"""

from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Query
from pydantic import BaseModel

from api.auth import CurrentUser
from api.gateway import Gateway
from api.run_service import RunServiceDep
from keel.contracts import RunStatus
from keel.storage import frontend_events, run_records, webhook_deliveries
from keel.webhooks import WebhookDeliveryView

router = APIRouter(tags=["run viewer"])


class RunSummary(BaseModel):
    agent_run_id: str
    started_at: datetime
    status: str | None = None
    purpose: str | None = None
    chat_id: str | None = None
    user_id: str | None = None
    step_count: int | None = None
    model: str | None = None
    model_route: str | None = None
    finished_at: datetime | None = None
    duration_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None
    unpriced_calls: int | None = None
    error_type: str | None = None
    error_message: str | None = None
    detail: str | None = None
    input_summary: str | None = None
    output_summary: str | None = None
    temporal_run_id: str | None = None
    # The run whose sub-agent this run is; None for a run somebody started.
    parent_run_id: str | None = None
    # None when the gateway does not know where the Web UI is (KEEL_TEMPORAL_UI_URL unset).
    temporal_url: str | None = None


class TimelineItem(BaseModel):
    kind: Literal["llm_call", "tool_run"]
    seq: int
    attempt: int
    step: int
    name: str
    status: str
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # Milliseconds from the run's start to this item's start (its approval request, for a call that
    # waited for one), for drawing the timeline.
    offset_ms: float | None = None
    latency_ms: int | None = None
    error_message: str | None = None
    record: dict[str, Any]


class ChildRun(BaseModel):
    """A sub-agent's run in its parent's tree: its summary, the parent's tool call that started it (null
    until that call has its result), and the runs it started in turn."""

    run: RunSummary
    tool_call_id: str | None = None
    children: list["ChildRun"] = []


class TreeUsage(BaseModel):
    """A run's usage with its sub-agents' runs: every LLM call in the tree, each counted once."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None


class FrontendEventView(BaseModel):
    """One thing the person lived through in the browser, as a frontend reported it (POST /api/telemetry)."""

    kind: str
    value_ms: float | None = None
    detail: str | None = None
    client: str | None = None
    received_at: datetime


class Timeline(BaseModel):
    run: RunSummary
    llm_calls: list[dict[str, Any]]
    tool_runs: list[dict[str, Any]]
    items: list[TimelineItem]
    # The parent's page in the Temporal Web UI, for a child run (null without a parent, or without a UI).
    parent_temporal_url: str | None = None
    children: list[ChildRun] = []
    tree_usage: TreeUsage = TreeUsage()
    webhooks: list[WebhookDeliveryView] = []
    frontend: list[FrontendEventView] = []


@router.get("/api/runs", summary="Runs, newest first: filter by status, purpose, user, chat and start time")
async def list_runs(
    service: RunServiceDep,
    me: CurrentUser,
    chat_id: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    status: RunStatus | None = None,
    purpose: Annotated[str | None, Query(max_length=200)] = None,
    user: Annotated[str | None, Query(max_length=200, description="user_id")] = None,
    since: Annotated[datetime | None, Query(description="started at or after (ISO 8601)")] = None,
    until: Annotated[datetime | None, Query(description="started before (ISO 8601)")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    top: Annotated[bool, Query(description="only runs people started: leave sub-agents' runs out")] = False,
) -> list[RunSummary]:
    filters = run_records.RunFilter(
        status=status.value if status else None,
        purpose=purpose,
        user_id=user,
        chat_id=chat_id,
        since=since,
        until=until,
        limit=limit,
        top_level=top,
    )
    return [_summary(service.gw, row) for row in await service.list_runs(filters, me)]


@router.get("/api/runs/{agent_run_id}/timeline", summary="A run's LLM calls and tool runs, in order")
async def run_timeline(agent_run_id: str, service: RunServiceDep, me: CurrentUser) -> Timeline:
    found = await service.timeline(agent_run_id, me)
    run = _summary(service.gw, found["run"])
    items = [_item("llm_call", r, r.get("route") or "", run.started_at) for r in found["llm_calls"]]
    items += [_item("tool_run", r, r["tool_name"], run.started_at) for r in found["tool_runs"]]
    items.sort(key=lambda i: (i.offset_ms if i.offset_ms is not None else float("inf"), i.seq, i.attempt))
    return Timeline(
        run=run,
        llm_calls=found["llm_calls"],
        tool_runs=found["tool_runs"],
        items=items,
        parent_temporal_url=temporal_url(service.gw, run.parent_run_id, None) if run.parent_run_id else None,
        children=_tree(service.gw, agent_run_id, found["descendants"]),
        tree_usage=TreeUsage(**found["tree_usage"]),
        webhooks=await _webhooks_of(service.gw, agent_run_id),
        frontend=[
            FrontendEventView(**row)
            for row in await frontend_events.of_run(service.gw.store.pool, agent_run_id)
        ],
    )


async def _webhooks_of(gw: Gateway, agent_run_id: str) -> list[WebhookDeliveryView]:
    """The run's webhook deliveries, oldest first (the caller has already been found to own the run)."""
    filters = webhook_deliveries.DeliveryFilter(agent_run_id=agent_run_id, limit=200)
    rows = await webhook_deliveries.list_deliveries(gw.store.pool, filters)
    return [WebhookDeliveryView(**row) for row in reversed(rows)]


def _tree(gw: Gateway, root: str, descendants: list[dict[str, Any]]) -> list[ChildRun]:
    """The descendants' rows as the tree under `root`, each run's children in the order they started."""
    nodes = [(row["parent_run_id"], _child(gw, row)) for row in descendants]
    under: dict[str, list[ChildRun]] = {}
    for parent_id, node in nodes:
        under.setdefault(parent_id, []).append(node)
    for _, node in nodes:
        node.children = under.get(node.run.agent_run_id, [])
    return under.get(root, [])


def _child(gw: Gateway, row: dict[str, Any]) -> ChildRun:
    return ChildRun(run=_summary(gw, row), tool_call_id=row.get("tool_call_id"))


def _summary(gw: Gateway, row: dict[str, Any]) -> RunSummary:
    return RunSummary(**row, temporal_url=temporal_url(gw, row["agent_run_id"], row.get("temporal_run_id")))


def temporal_url(gw: Gateway, agent_run_id: str, temporal_run_id: str | None) -> str | None:
    if not gw.settings.temporal_ui_url:
        return None
    base = gw.settings.temporal_ui_url.rstrip("/")
    url = f"{base}/namespaces/{quote(gw.settings.temporal_namespace)}/workflows/{quote(agent_run_id)}"
    return f"{url}/{quote(temporal_run_id)}/history" if temporal_run_id else url


def _item(
    kind: Literal["llm_call", "tool_run"], row: dict[str, Any], name: str, run_start: datetime
) -> TimelineItem:
    begin = row.get("approval_requested_at") or row.get("started_at") or row.get("finished_at")
    return TimelineItem(
        kind=kind,
        seq=row["seq"],
        attempt=row["attempt"],
        step=row["step"],
        name=name,
        status=row["status"],
        started_at=row.get("started_at"),
        finished_at=row.get("finished_at"),
        offset_ms=None if begin is None else (begin - run_start).total_seconds() * 1000,
        latency_ms=row.get("latency_ms"),
        error_message=row.get("error_message"),
        record=row,
    )
