"""The gateway's observability: a span and a duration per request, connected SSE clients, `GET /metrics`
and `GET /healthz`.

`install(app)` adds the middleware and the answer to PostgreSQL being away; `router` has the two routes
(public, for operators and their tools; api/application.py registers it).
"""

import asyncio
import logging
import time
from typing import Any

import asyncpg
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from opentelemetry import propagate
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.gateway import GatewayDep
from keel.observability import metrics
from keel.observability.logs import log_context
from keel.observability.tracing import tracer
from keel.storage.run_records import active_runs, approval_backlog, is_unavailable, longest_idle_runs

log = logging.getLogger("keel.api")
_UNTRACED = {"/metrics", "/healthz"}
router = APIRouter()


def install(app: FastAPI) -> None:
    app.add_middleware(RequestObserver)
    # PostgreSQL out of reach is a 503 (try again), not a 500, wherever a request meets it.
    for kind in (
        OSError,
        asyncpg.InterfaceError,
        asyncpg.PostgresConnectionError,
        asyncpg.OperatorInterventionError,
    ):
        app.add_exception_handler(kind, _unavailable)


async def _unavailable(request: Request, err: Exception) -> JSONResponse:
    if not is_unavailable(err):
        raise err
    log.warning("PostgreSQL is unavailable: %s: %s", type(err).__name__, err)
    return JSONResponse(
        {"detail": f"PostgreSQL is unavailable: {type(err).__name__}: {err}"}, status_code=503
    )


@router.get("/metrics", include_in_schema=False)
async def gateway_metrics(gw: GatewayDep) -> Response:
    """Prometheus text format. Gauges read from PostgreSQL keep their last value while it is away."""
    try:
        pending, oldest = await asyncio.wait_for(approval_backlog(gw.store.pool), 2)
        metrics.APPROVALS_PENDING.set(pending)
        metrics.APPROVAL_OLDEST.set(oldest)
        for status, count in (await asyncio.wait_for(active_runs(gw.store.pool), 2)).items():
            metrics.RUNS_ACTIVE.labels(status).set(count)
        for status, idle in (await asyncio.wait_for(longest_idle_runs(gw.store.pool), 2)).items():
            metrics.RUN_MAX_IDLE.labels(status).set(idle)
    except Exception as err:  # a scrape must answer even when PostgreSQL does not
        log.warning("metrics from PostgreSQL are stale: %s: %s", type(err).__name__, err)
    return Response(generate_latest(metrics.GATEWAY), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz", summary="200 when Temporal and PostgreSQL both answer")
async def healthz(gw: GatewayDep) -> JSONResponse:
    results = await gw.health()
    healthy = all(v == "ok" for v in results.values())
    return JSONResponse({"status": "ok" if healthy else "unavailable", **results}, 200 if healthy else 503)


class RequestObserver:
    """ASGI middleware: an OpenTelemetry server span per request (continuing a caller's `traceparent`),
    the request's duration by route, `agent_run_id` on the log lines written while it is served, and
    `keel_sse_clients`: a response of type text/event-stream counts from its first byte to its end."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        status = 500
        run_id: str | None = None
        streaming = False

        async def observed_send(message: Message) -> None:
            nonlocal status, run_id, streaming
            if message["type"] == "http.response.start":
                status = message["status"]
                for key, value in message.get("headers", []):
                    if key.lower() == b"x-agent-run-id":
                        run_id = value.decode("latin-1")
                    elif key.lower() == b"content-type" and value.startswith(b"text/event-stream"):
                        streaming = True
                        metrics.SSE_CLIENTS.inc()
            await send(message)

        t0 = time.monotonic()
        if path in _UNTRACED:
            try:
                await self.app(scope, receive, observed_send)
            finally:
                metrics.HTTP_DURATION.labels(method, path, str(status)).observe(time.monotonic() - t0)
            return
        with (
            tracer().start_as_current_span(
                f"{method} {path}",
                context=propagate.extract(headers),
                kind=SpanKind.SERVER,
                attributes={"http.request.method": method, "url.path": path},
                record_exception=True,
                set_status_on_exception=True,
            ) as span,
            log_context(agent_run_id=_path_run_id(path)),
        ):
            try:
                await self.app(scope, receive, observed_send)
            finally:
                if streaming:
                    metrics.SSE_CLIENTS.dec()
                route = _route(scope)
                span.update_name(f"{method} {route}")
                span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                if run_id := run_id or _path_run_id(path):
                    span.set_attribute("keel.agent_run_id", run_id)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
                metrics.HTTP_DURATION.labels(method, route, str(status)).observe(time.monotonic() - t0)


def _route(scope: Scope) -> str:
    route: Any = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


def _path_run_id(path: str) -> str | None:
    parts = path.split("/")
    if len(parts) > 3 and parts[1] == "api" and parts[2] == "runs" and parts[3].startswith("run-"):
        return parts[3]
    return None
