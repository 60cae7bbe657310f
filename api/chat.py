"""`POST /api/chat`: start a run, or continue the one waiting for this chat, and stream it.

A body whose last message is the user's starts a new run (subject to the double-texting policy when the
chat already has an active run). A body whose last message is the assistant's is the AI SDK answering
that run: approvals (`approval-responded` parts), the user's answer to `ask_user` and client-side tool
results (`output-available` / `output-error` parts) go to the waiting run, which keeps streaming; a run
that has finished meanwhile is streamed to its end, so every call the message answered gets its outcome.
`regenerate-message` (the AI SDK's regenerate, which drops the assistant message it replaces) starts a new
run from the history; when the message it replaces is the chat's active run, that run is cancelled first.

`GET /api/chat/{chat_id}/stream` is the AI SDK's resume (`useChat({resume: true})`): the chat's active
stream from its start, or 204 when there is none.

The routes only parse and answer: the run service (api/run_service.py) starts and continues runs, and
api/sse.py streams them.
"""

from fastapi import APIRouter, HTTPException, Response
from sse_starlette import EventSourceResponse

from api.auth import CurrentUser
from api.chat_request import ChatRequest
from api.run_service import RunServiceDep
from api.run_stream import StreamStart
from api.sse import resume_chat, stream_response

router = APIRouter(tags=["chat"])


@router.post("/api/chat", summary="Start an agent run, or answer the waiting one, and stream it")
async def chat(request: ChatRequest, service: RunServiceDep, user: CurrentUser) -> EventSourceResponse:
    if request.messages[-1].role == "assistant":
        if request.trigger == "regenerate-message":
            raise HTTPException(
                400,
                "regenerate-message needs the history up to the user message to answer again "
                "(the AI SDK leaves out the assistant message it regenerates)",
            )
        agent_run_id, start = await service.continue_run(request, user)
    else:
        agent_run_id, start = await service.start_run(request, user), StreamStart()
    return stream_response(service.gw, agent_run_id, start=start)


@router.get(
    "/api/chat/{chat_id}/stream",
    summary="The AI SDK's resume: the chat's active stream from its start, or 204 when there is none",
    responses={204: {"description": "The chat has no run, or its latest run has finished"}},
)
async def resume_chat_stream(chat_id: str, service: RunServiceDep, user: CurrentUser) -> Response:
    await service.check_chat(chat_id, user)
    return await resume_chat(service.gw, chat_id)
