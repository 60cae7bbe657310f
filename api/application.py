"""The gateway's FastAPI application: `create_app()` is what `python -m api` serves.

Every route is registered here, in `_ROUTERS` (and the codec endpoint's mount), with the authentication
it needs: a router's module says what its routes do, this module says who may call them.
"""

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI, params

from api import chat, limits, observe, pages, purposes, runs, schedules, telemetry, viewer, webhooks
from api.auth import Authenticator, admin_dependency, current_user
from api.codec import codec_app
from api.gateway import Gateway
from api.mcp_server import KeelMCP
from keel.app import App, load_app_or_exit
from keel.encryption import EncryptionCodec
from keel.observability.tracing import with_tracing
from keel.settings import Settings, get_settings
from keel.storage.deltas import PostgresDeltaChannel
from keel.storage.store import RunStore, create_pool
from keel.temporal import connect_temporal

# Who is asking (api/auth.py): every /api route needs it; the pages, /healthz and /metrics do not.
_USER = [Depends(current_user)]
_PUBLIC: list[params.Depends] = []
# Every router, in the order its routes are matched and listed in the OpenAPI schema.
_ROUTERS: list[tuple[APIRouter, list[params.Depends]]] = [
    (chat.router, _USER),  # POST /api/chat, GET /api/chat/{id}/stream
    (runs.router, _USER),  # /api/runs/{id}: state, events, approvals, answer, tool results, cancel
    (viewer.router, _USER),  # GET /api/runs, GET /api/runs/{id}/timeline
    (observe.router, _PUBLIC),  # GET /metrics, GET /healthz
    (pages.router, _PUBLIC),  # /, /runs, the icon
    (purposes.router, _USER),  # GET /api/purposes
    (schedules.router, _USER),  # /api/schedules: scheduled agents (Temporal Schedules)
    (webhooks.router, _USER),  # /api/webhooks/deliveries: list, redeliver
    (telemetry.router, _USER),  # POST /api/telemetry: what the browser saw of a run
]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    agents = load_app_or_exit(settings)  # a bad app stops the gateway here, in one line
    app = FastAPI(
        title="Keel",
        summary="Durable AI agents on Temporal, streamed as AI SDK UI message streams.",
        lifespan=_lifespan(settings, agents),
    )
    app.state.auth = Authenticator(settings)
    for router, dependencies in _ROUTERS:
        app.include_router(router, dependencies=dependencies)
    # /mcp: every agent as a tool for MCP clients, authenticated as /api is (api/mcp_server.py).
    app.state.mcp = KeelMCP(app.state, loopback_only=not settings.auth_modes)
    app.router.routes.append(app.state.mcp.route())
    if settings.codec_key_file is not None:
        # A mounted app of its own, for its CORS rule (api/codec.py); admins only when auth is on.
        codec_auth = [admin_dependency(app.state)] if settings.auth_modes else []
        codec = EncryptionCodec.from_file(settings.codec_key_file)
        app.mount("/codec", codec_app(codec, settings.temporal_ui_url, codec_auth))
    observe.install(app)  # request spans and durations; PostgreSQL out of reach is a 503
    limits.install(app, settings)  # 413 for large bodies, 400 for values PostgreSQL can't hold, error docs
    return app


def _lifespan(settings: Settings, agents: App) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        """The gateway's connections, for as long as it serves: Temporal, PostgreSQL, the delta channel."""
        temporal = with_tracing(await connect_temporal(settings))
        pool = await create_pool(settings.require_database_url())
        deltas = PostgresDeltaChannel(pool, listen_dsn=settings.require_database_url())
        app.state.gateway = Gateway(
            settings=settings, temporal=temporal, store=RunStore(pool), deltas=deltas, app=agents
        )
        try:
            async with app.state.mcp.running():
                yield
        finally:
            await deltas.close()
            await pool.close()

    return lifespan
