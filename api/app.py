"""The gateway's FastAPI application: `create_app()` is what `python -m api` serves."""

import asyncio
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, JSONResponse
from sse_starlette import EventSourceResponse, ServerSentEvent
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from api.chat_request import BadChatRequest, ChatRequest, to_conversation
from api.run_stream import ui_chunks
from keel.contracts import STATE_QUERY, WORKFLOW_TYPE, AgentRunInput, Message, RunState
from keel.purposes import PURPOSES, UnknownPurpose, get_purpose
from keel.settings import Settings, get_settings
from keel.store import RunStore, create_pool
from keel.temporal import connect_temporal

log = logging.getLogger("keel.api")

_RUN_ID = re.compile(r"^run-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_STATIC = Path(__file__).parent / "static"
UI_STREAM_HEADERS = {
    "x-vercel-ai-ui-message-stream": "v1",
    "x-accel-buffering": "no",
    "cache-control": "no-cache",
}


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.temporal = await connect_temporal(settings)
        pool = await create_pool(settings.require_database_url())
        app.state.store = RunStore(pool)
        try:
            yield
        finally:
            await pool.close()

    app = FastAPI(
        title="Keel",
        summary="Durable AI agents on Temporal, streamed as AI SDK UI message streams.",
        lifespan=lifespan,
    )

    def temporal() -> Client:
        return app.state.temporal

    def store() -> RunStore:
        return app.state.store

    @app.get("/", include_in_schema=False)
    async def chat_page() -> FileResponse:
        return FileResponse(_STATIC / "index.html")

    @app.get("/healthz", summary="200 when Temporal and PostgreSQL both answer")
    async def healthz() -> JSONResponse:
        checks = {
            "temporal": _check(temporal().service_client.check_health()),
            "postgres": _check(store().pool.fetchval("SELECT 1")),
        }
        results = dict(zip(checks, await asyncio.gather(*checks.values()), strict=True))
        healthy = all(v == "ok" for v in results.values())
        return JSONResponse(
            {"status": "ok" if healthy else "unavailable", **results}, 200 if healthy else 503
        )

    @app.get("/api/purposes", summary="The purposes a run can be started with")
    async def purposes() -> list[dict[str, Any]]:
        return [
            {"slug": p.slug, "title": p.title, "tools": list(p.tools), "step_limit": p.step_limit}
            for p in PURPOSES.values()
        ]

    @app.post("/api/chat", summary="Start an agent run and stream it as an AI SDK UI message stream")
    async def chat(request: ChatRequest) -> EventSourceResponse:
        try:
            purpose = get_purpose(request.purpose)
            conversation = to_conversation(request)
        except (UnknownPurpose, BadChatRequest) as err:
            raise HTTPException(400, str(err)) from None
        spec = purpose.spec(settings.model)
        max_steps = min(request.max_steps or spec.step_limit, spec.step_limit)
        system = [Message(role="system", content=purpose.system_prompt)]
        if request.context:
            system.append(
                Message(role="system", content="Application context:\n" + json.dumps(request.context))
            )
        messages = system + conversation

        agent_run_id = f"run-{uuid.uuid4()}"
        summary = _clip(conversation[-1].content, 120)
        try:
            await store().put_messages(agent_run_id, 0, messages)
        except (OSError, asyncpg.PostgresError) as err:
            raise HTTPException(503, f"PostgreSQL is unavailable, no run was started: {err}") from None
        try:
            handle = await temporal().start_workflow(
                WORKFLOW_TYPE,
                AgentRunInput(
                    agent_run_id=agent_run_id,
                    purpose=spec,
                    message_count=len(messages),
                    max_steps=max_steps,
                    chat_id=request.id,
                    input_summary=summary,
                ),
                id=agent_run_id,
                task_queue=settings.task_queue,
                static_summary=f"{purpose.slug}: {summary}",
            )
        except RPCError as err:
            raise HTTPException(503, f"Temporal is unavailable, no run was started: {err.message}") from None
        log.info("started run %s (purpose %s, chat %s)", agent_run_id, purpose.slug, request.id)
        return EventSourceResponse(
            _sse(handle, store(), agent_run_id),
            headers={**UI_STREAM_HEADERS, "x-agent-run-id": agent_run_id},
            sep="\n",
        )

    @app.get("/api/runs/{agent_run_id}", summary="A run's state: status, step, usage")
    async def run_state(agent_run_id: str) -> RunState:
        handle = _existing_run(temporal(), agent_run_id)
        try:
            return await handle.query(STATE_QUERY, result_type=RunState)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise HTTPException(404, f"no run {agent_run_id!r}") from None
            raise HTTPException(503, f"Temporal could not answer: {err.message}") from None

    return app


async def _sse(
    handle: WorkflowHandle[Any, Any], store: RunStore, agent_run_id: str
) -> AsyncIterator[ServerSentEvent]:
    try:
        async for chunk in ui_chunks(handle, store, agent_run_id):
            yield _event(chunk)
    except (RPCError, OSError, asyncpg.PostgresError, LookupError) as err:
        # Headers are gone already; the stream itself says what went wrong. The run goes on regardless.
        log.warning("stream of %s broke: %s", agent_run_id, err)
        yield _event({"type": "error", "errorText": f"lost the run's progress: {err}"})
    yield ServerSentEvent("[DONE]", sep="\n")


def _event(chunk: dict[str, Any]) -> ServerSentEvent:
    # Plain "\n" line ends, as the AI SDK's own servers write them.
    return ServerSentEvent(json.dumps(chunk, separators=(",", ":")), sep="\n")


def _existing_run(client: Client, agent_run_id: str) -> WorkflowHandle[Any, Any]:
    if not _RUN_ID.match(agent_run_id):
        raise HTTPException(404, f"no run {agent_run_id!r}")
    return client.get_workflow_handle(agent_run_id)


async def _check(probe: Any) -> str:
    try:
        await asyncio.wait_for(probe, timeout=3)
    except Exception as err:  # a health check reports every failure instead of raising it
        return f"unavailable: {type(err).__name__}: {err}"
    return "ok"


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
