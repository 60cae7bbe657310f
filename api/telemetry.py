"""`POST /api/telemetry`: what the person in the browser lived through, reported by the chat page and the
Next.js example — time to first token as the browser saw it, stalls, reconnects and resumes, errors shown,
time from an approval request shown to the decision. The server knows none of it: a token can leave the
worker at once and still reach the person late.

Each event becomes a `keel_frontend_*` metric, one JSON log line with its `agent_run_id`, and a row in
`frontend_events` that the run viewer shows with the run's timeline. A batch is one event or a list of up
to MAX_EVENTS, in a body of at most MAX_BODY_BYTES; each user may send KEEL_TELEMETRY_RATE_LIMIT batches a
minute (per gateway process, like run starts). A batch that names a run which is not the caller's is
refused whole with the 404 an unknown run gets, so no client learns which run ids exist.
"""

import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, HTTPException, Request
from prometheus_client import Counter, Histogram
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
)

from api.auth import CurrentUser, User, no_run
from api.chat_request import json_problems
from api.gateway import GatewayDep, is_run_id
from api.limits import RateLimiter, check_rate
from keel.observability import metrics
from keel.storage import frontend_events
from keel.storage.frontend_events import FrontendEvent

log = logging.getLogger("keel.telemetry")
router = APIRouter(tags=["telemetry"])

MAX_EVENTS = 50
MAX_DETAIL_CHARS = 500
MAX_BODY_BYTES = 64 * 1024
# A day: no browser measures a first token, a stall or a decision longer than that and still means it.
MAX_VALUE_MS = 86_400_000.0


def _run_id(value: str) -> str:
    if not is_run_id(value):
        raise ValueError("not a run id (run-<uuid>)")
    return value


RunId = Annotated[str, AfterValidator(_run_id)]
Milliseconds = Annotated[float, Field(ge=0, le=MAX_VALUE_MS, allow_inf_nan=False)]
Detail = Annotated[str, Field(max_length=MAX_DETAIL_CHARS)]
ClientName = Annotated[
    str,
    Field(pattern=r"^[A-Za-z0-9._-]{1,64}$", description="chat-page, nextjs, or your own frontend's name"),
]


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")
    agent_run_id: RunId
    detail: Detail | None = None
    client: ClientName | None = None


class MeasuredEvent(_Event):
    """An event that is a duration: time to first token, a stall's length, time to a decision."""

    kind: Literal["ttft", "stall", "decision"]
    value_ms: Milliseconds


class SeenEvent(_Event):
    """An event that happened: a reconnect or resume (value_ms: how long it took), an error shown."""

    kind: Literal["reconnect", "error"]
    value_ms: Milliseconds | None = None


TelemetryEvent = Annotated[MeasuredEvent | SeenEvent, Field(discriminator="kind")]


def _shape(value: Any) -> str:
    return "batch" if isinstance(value, list) else "event"


def _storable(value: Any) -> Any:
    """NaN, NUL and lone surrogates anywhere in the body are a 422 naming where, not a failed insert."""
    if problems := json_problems(value):
        raise ValidationError.from_exception_data("telemetry", problems)
    return value


TelemetryBody = Annotated[
    Annotated[TelemetryEvent, Tag("event")]
    | Annotated[list[TelemetryEvent], Tag("batch"), Field(min_length=1, max_length=MAX_EVENTS)],
    Discriminator(_shape),
    BeforeValidator(_storable),
]

_limiter: dict[float, RateLimiter] = {}


async def _small_body(request: Request, gw: GatewayDep, user: CurrentUser) -> None:
    """413 past MAX_BODY_BYTES, 429 past the user's rate: both before the body is validated."""
    if len(await request.body()) > MAX_BODY_BYTES:
        raise HTTPException(413, f"telemetry body larger than {MAX_BODY_BYTES} bytes")
    _check_rate(gw.settings.telemetry_rate_limit, user)


def _check_rate(per_minute: float, user: User) -> None:
    """Like run starts: unlimited under KEEL_AUTH=none (one local user) and with a limit of 0."""
    check_rate(_limiter, per_minute, user, f"too much telemetry: at most {per_minute:g} requests a minute")


@router.post(
    "/api/telemetry",
    status_code=202,
    dependencies=[Depends(_small_body)],
    summary="Report what the browser saw of a run: time to first token, stalls, reconnects, errors, decisions",
)
async def report(body: Annotated[TelemetryBody, Body()], gw: GatewayDep, user: CurrentUser) -> dict[str, int]:
    events = [_stored(e) for e in (body if isinstance(body, list) else [body])]
    await _check_owner(gw, user, sorted({e.agent_run_id for e in events}))
    await frontend_events.record(gw.store.pool, user.id, events)
    for event in events:
        _export(event)
    return {"accepted": len(events)}


def _stored(event: MeasuredEvent | SeenEvent) -> FrontendEvent:
    return FrontendEvent(event.agent_run_id, event.kind, event.value_ms, event.detail, event.client)


async def _check_owner(gw: GatewayDep, user: User, run_ids: list[str]) -> None:
    """404 for the first run that has no record or is someone else's: the same answer for both."""
    owners = await frontend_events.owners(gw.store.pool, run_ids)
    for run_id in run_ids:
        if run_id not in owners or not user.owns(owners[run_id]):
            raise no_run(run_id)


def client_label(client: str | None) -> str:
    """The metrics' `client` label: a known frontend's name, else "other" (labels must stay few)."""
    return client if client in metrics.FRONTEND_CLIENTS else "other"


_COUNTERS: dict[str, Counter] = {
    "stall": metrics.FRONTEND_STALLS,
    "reconnect": metrics.FRONTEND_RECONNECTS,
    "error": metrics.FRONTEND_ERRORS,
}
_HISTOGRAMS: dict[str, Histogram] = {"ttft": metrics.FRONTEND_TTFT, "decision": metrics.FRONTEND_DECISION}


def _export(event: FrontendEvent) -> None:
    """The event's metric and its JSON log line."""
    label = client_label(event.client)
    if event.kind in _HISTOGRAMS and event.value_ms is not None:
        _HISTOGRAMS[event.kind].labels(client=label).observe(event.value_ms / 1000)
    if event.kind in _COUNTERS:
        _COUNTERS[event.kind].labels(client=label).inc()
    log.info(
        "frontend %s%s",
        event.kind,
        "" if event.value_ms is None else f" {event.value_ms:.0f} ms",
        extra={
            "agent_run_id": event.agent_run_id,
            "event": f"frontend_{event.kind}",
            "value_ms": event.value_ms,
            "client": event.client or "other",
            "detail": event.detail,
        },
    )
