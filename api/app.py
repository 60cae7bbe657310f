"""The gateway's FastAPI application: `create_app()` is what `python -m api` serves."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.responses import FileResponse, JSONResponse

from api import chat, limits, observe, runs
from api.auth import Authenticator, CurrentUser, admin_dependency, current_user
from api.codec import codec_app
from api.gateway import Gateway, GatewayDep
from keel.app import load_app_or_exit
from keel.codec import EncryptionCodec
from keel.deltas import PostgresDeltaChannel
from keel.settings import Settings, get_settings
from keel.store import RunStore, create_pool
from keel.telemetry import with_tracing
from keel.temporal import connect_temporal

_STATIC = Path(__file__).parent / "static"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    agents = load_app_or_exit(settings)  # a bad app stops the gateway here, in one line

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        temporal = with_tracing(await connect_temporal(settings))
        pool = await create_pool(settings.require_database_url())
        deltas = PostgresDeltaChannel(pool, listen_dsn=settings.require_database_url())
        app.state.gateway = Gateway(
            settings=settings, temporal=temporal, store=RunStore(pool), deltas=deltas, app=agents
        )
        try:
            yield
        finally:
            await deltas.close()
            await pool.close()

    app = FastAPI(
        title="Keel",
        summary="Durable AI agents on Temporal, streamed as AI SDK UI message streams.",
        lifespan=lifespan,
    )

    # Who is asking (api/auth.py): every /api route needs it; /, /runs, /healthz and /metrics do not.
    app.state.auth = Authenticator(settings)
    authenticated = [Depends(current_user)]
    app.include_router(chat.router, dependencies=authenticated)
    app.include_router(runs.router, dependencies=authenticated)
    observe.install(app)  # request spans and durations, GET /metrics, the run viewer (/runs, GET /api/runs)
    limits.install(app, settings)  # 413 for large bodies, 400 for values PostgreSQL can't hold, error docs
    if settings.codec_key_file is not None:
        codec_auth = [admin_dependency(app.state)] if settings.auth_modes else []
        # With no Web UI address known, no browser origin is allowed; the `temporal` CLI needs none.
        codec = EncryptionCodec.from_file(settings.codec_key_file)
        app.mount("/codec", codec_app(codec, settings.temporal_ui_url, codec_auth))

    @app.get("/", include_in_schema=False)
    async def chat_page() -> FileResponse:
        return FileResponse(_STATIC / "index.html")

    # Both pages link this icon; /favicon.ico answers too, for browsers and tools that ask for it unprompted.
    @app.get("/favicon.svg", include_in_schema=False)
    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        return FileResponse(_STATIC / "favicon.svg", media_type="image/svg+xml")

    @app.get("/healthz", summary="200 when Temporal and PostgreSQL both answer")
    async def healthz(gw: GatewayDep) -> JSONResponse:
        checks = {
            "temporal": _check(gw.temporal.service_client.check_health()),
            "postgres": _check(gw.store.pool.fetchval("SELECT 1")),
        }
        results = dict(zip(checks, await asyncio.gather(*checks.values()), strict=True))
        healthy = all(v == "ok" for v in results.values())
        return JSONResponse(
            {"status": "ok" if healthy else "unavailable", **results}, 200 if healthy else 503
        )

    @app.get("/api/purposes", summary="The agents a run can be started with (a request's `purpose`)")
    async def purposes(_: CurrentUser) -> list[dict[str, Any]]:
        return [
            {
                "slug": a.name,
                "title": a.title or a.name,
                "tools": [t.name for t in a.tools],
                "step_limit": a.max_steps,
            }
            for a in agents.agents.values()
        ]

    return app


async def _check(probe: Any) -> str:
    try:
        await asyncio.wait_for(probe, timeout=3)
    except Exception as err:  # a health check reports every failure instead of raising it
        return f"unavailable: {type(err).__name__}: {err}"
    return "ok"
