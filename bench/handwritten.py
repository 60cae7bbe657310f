"""The hand-written alternative to Keel's gateway: the founding document's minimal FastAPI endpoint, with the
agent loop on bare temporalio (bench/bare.py), doing the same calls.

    python -m bench.handwritten --port 8123     # with bench.bare_worker polling

POST /api/chat stores the conversation, runs the bare loop to its end and streams the reply as a UI
message stream (start, text, finish, [DONE]). No auth, run records, events, approvals, budgets, resumable
streams or live tokens: what a careful developer writes first. The benchmark compares Keel's whole
request with this one's (bench/http_runs.py).
"""

import argparse
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from bench.bare import BARE_TASK_QUEUE, BARE_WORKFLOW, BareInput
from keel.contracts import Message
from keel.settings import get_settings
from keel.storage.store import RunStore, create_pool

SYSTEM = "You are a benchmark. Use the calculator and the clock."


def build_app() -> FastAPI:
    settings = get_settings()
    parts: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        parts["temporal"] = await Client.connect(
            settings.temporal_address,
            namespace=settings.temporal_namespace,
            data_converter=pydantic_data_converter,
        )
        pool = await create_pool(settings.require_database_url())
        parts["store"] = RunStore(pool)
        yield
        await pool.close()

    app = FastAPI(lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/api/chat")
    async def chat(body: dict[str, Any]) -> StreamingResponse:
        temporal: Client = parts["temporal"]
        store: RunStore = parts["store"]
        text = body["messages"][-1]["parts"][0]["text"]
        run_id = f"run-{uuid.uuid4()}"
        messages = [Message(role="system", content=SYSTEM), Message(role="user", content=text)]
        await store.put_messages(run_id, 0, messages)
        tools = body.get("tools", ["calculate", "current_time"])
        loop = BareInput(
            agent_run_id=run_id,
            model="scripted",
            tools=tools,
            message_count=2,
            local_tools=True,
            local_llm=True,
        )
        steps = await temporal.execute_workflow(
            BARE_WORKFLOW, loop, id=run_id, task_queue=BARE_TASK_QUEUE, result_type=int
        )
        # The last reply: the system and user messages, then per step a reply and its tool results.
        conversation = await store.conversation(run_id, 1_000_000)
        answer = conversation[-1].content or ""

        async def stream() -> AsyncIterator[str]:
            for chunk in (
                {"type": "start", "messageId": run_id},
                {"type": "text-start", "id": "t"},
                {"type": "text-delta", "id": "t", "delta": answer},
                {"type": "text-end", "id": "t"},
                {"type": "finish", "messageMetadata": {"steps": steps}},
            ):
                yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    port = parser.parse_args().port
    uvicorn.run(build_app(), host="127.0.0.1", port=port, log_level="warning")
