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
"""

import json
import logging
import uuid
from typing import Any

import asyncpg
from fastapi import APIRouter, HTTPException, Response
from sse_starlette import EventSourceResponse
from temporalio.client import WorkflowUpdateFailedError
from temporalio.service import RPCError

from api.auth import CurrentUser, User, check_owner, require_chat
from api.chat_request import BadChatRequest, ChatRequest, pending_answers, to_conversation
from api.double_texting import make_room, queue_behind
from api.gateway import Gateway, GatewayDep, is_run_id, refusal
from api.limits import check_run_start
from api.run_stream import StreamStart, pause_after
from api.streams import resume_chat, stream_response
from keel import metrics, records
from keel.agent import RunContext
from keel.app import UnknownAgent
from keel.contracts import (
    ANSWER_UPDATE,
    APPROVAL_UPDATE,
    EVENTS_QUERY,
    TOOL_RESULT_UPDATE,
    WAITING_EVENTS,
    WORKFLOW_TYPE,
    AgentRunInput,
    ApprovalDecision,
    Message,
    RunEvent,
    RunState,
    ToolResultSubmission,
    UserAnswer,
)
from keel.store import RunStore
from keel.text import one_line

log = logging.getLogger("keel.api")
router = APIRouter(tags=["chat"])


@router.post("/api/chat", summary="Start an agent run, or answer the waiting one, and stream it")
async def chat(request: ChatRequest, gw: GatewayDep, user: CurrentUser) -> EventSourceResponse:
    if request.messages[-1].role == "assistant":
        if request.trigger == "regenerate-message":
            raise HTTPException(
                400,
                "regenerate-message needs the history up to the user message to answer again "
                "(the AI SDK leaves out the assistant message it regenerates)",
            )
        agent_run_id, start = await _continue_run(request, gw, user)
    else:
        agent_run_id, start = await _start_run(request, gw, user), StreamStart()
    return stream_response(gw, agent_run_id, start=start)


@router.get(
    "/api/chat/{chat_id}/stream",
    summary="The AI SDK's resume: the chat's active stream from its start, or 204 when there is none",
    responses={204: {"description": "The chat has no run, or its latest run has finished"}},
)
async def resume_chat_stream(chat_id: str, gw: GatewayDep, user: CurrentUser) -> Response:
    await require_chat(gw.store.pool, chat_id, user)
    return await resume_chat(gw, chat_id)


async def _start_run(request: ChatRequest, gw: Gateway, user: User) -> str:
    try:
        agent = gw.app.agent(request.purpose) if request.purpose else gw.app.default_agent
        conversation = to_conversation(request)
    except (UnknownAgent, BadChatRequest) as err:
        raise HTTPException(400, str(err)) from None
    spec = agent.spec(gw.settings.model, request.requested_budgets(), request.stop_after_tool_calls)
    context = RunContext(context=request.context or {}, user_id=user.id, chat_id=request.id)
    try:
        instructions = agent.instructions_for(context)
    except Exception as err:  # the app's own function: its failure is the deployment's, not the client's
        log.exception("the instructions of agent %s failed", agent.name)
        raise HTTPException(500, f"agent {agent.name!r} could not write its instructions: {err}") from None
    system = [Message(role="system", content=instructions)]
    if request.context:
        system.append(Message(role="system", content="Application context:\n" + json.dumps(request.context)))
    messages = system + conversation
    summary = one_line(conversation[-1].content, 120)
    regenerating = request.messageId if request.trigger == "regenerate-message" else None
    agent_run_id = f"run-{uuid.uuid4()}"
    run = AgentRunInput(
        agent_run_id=agent_run_id,
        purpose=spec,
        message_count=len(messages),
        chat_id=request.id,
        user_id=user.id,
        client_tools=[*agent.client_tools, *request.client_tools()],
        input_summary=summary,
        heavy_task_queue=gw.settings.heavy_task_queue,
    )
    try:
        # One start at a time per chat, on every gateway: its owner, its active runs and this start are
        # decided together, so two requests at once never both find the chat free (or unowned).
        async with gw.store.chat_lock(request.id) as chat:
            await require_chat(chat.pool, request.id, user, to_start=True)
            check_run_start(gw.settings, user)
            run.queued_behind = await make_room(request.id, gw, chat, regenerating)
            await _record_start(chat, run, messages)
            await _launch(gw, chat, run, f"{agent.name}: {summary}")
    except asyncpg.DataError:
        raise  # the client's own data, not an outage: answered 400 (api/limits.py)
    except (OSError, asyncpg.PostgresError) as err:
        raise HTTPException(503, f"PostgreSQL is unavailable, no run was started: {err}") from None
    metrics.RUNS_STARTED.labels(agent.name).inc()
    log.info(
        "started run %s (purpose %s, chat %s)",
        agent_run_id,
        agent.name,
        request.id,
        extra={"agent_run_id": agent_run_id, "purpose": agent.name},
    )
    return agent_run_id


async def _record_start(chat: RunStore, run: AgentRunInput, messages: list[Message]) -> None:
    """The run's conversation, its place in the chat and its first record, before its workflow starts."""
    await chat.put_messages(run.agent_run_id, 0, messages)
    await chat.record_chat_run(run.chat_id or "", run.agent_run_id, run.user_id)
    await records.run_started(
        chat.pool,
        agent_run_id=run.agent_run_id,
        purpose=run.purpose.slug,
        model=run.purpose.model,
        chat_id=run.chat_id,
        user_id=run.user_id,
        input_summary=run.input_summary,
        queued_behind=run.queued_behind,
    )


async def _launch(gw: Gateway, chat: RunStore, run: AgentRunInput, summary: str) -> None:
    """Start the run's workflow (and queue it, under `enqueue`). If Temporal refuses, the run never
    started: its record says so and the chat forgets it, so nothing is left claiming it runs."""
    try:
        await gw.temporal.start_workflow(
            WORKFLOW_TYPE,
            run,
            id=run.agent_run_id,
            task_queue=gw.settings.task_queue,
            static_summary=summary,
            memo={"user_id": run.user_id} if run.user_id else None,
        )
    except RPCError as err:
        why = f"Temporal is unavailable, no run was started: {err.message}"
        await records.run_not_started(chat.pool, run.agent_run_id, why)
        await chat.forget_chat_run(run.agent_run_id)
        raise HTTPException(503, why) from None
    if run.queued_behind:
        try:
            await queue_behind(gw, chat, run.chat_id or "", run.queued_behind, run.agent_run_id)
        except RPCError as err:
            raise HTTPException(
                503, f"run {run.agent_run_id} started but could not be queued: {err.message}"
            ) from None


async def _continue_run(request: ChatRequest, gw: Gateway, user: User) -> tuple[str, StreamStart]:
    """Deliver the client's answers to the run the last assistant message belongs to; stream the rest."""
    agent_run_id = request.messageId or request.messages[-1].id
    if not is_run_id(agent_run_id):
        raise HTTPException(400, "the last message is the assistant's but does not name a run to continue")
    state = check_owner(user, await gw.state(agent_run_id))
    if state.chat_id != request.id:
        raise HTTPException(404, f"no run {agent_run_id!r} in chat {request.id!r}")
    approvals, results = pending_answers(request.messages[-1])
    if user.name:  # the authenticated approver, not the client's say-so
        approvals = [a.model_copy(update={"approver": user.name}) for a in approvals]
    answered = [a.tool_call_id for a in approvals] + [r.tool_call_id for r in results]
    if not answered:
        raise HTTPException(
            400, "the last message answers nothing: no approval response or tool result in it"
        )
    events: list[RunEvent] = await gw.run(agent_run_id).query(EVENTS_QUERY, 0, result_type=list[RunEvent])
    waiting = {e.tool_call_id: e.seq for e in events if isinstance(e, WAITING_EVENTS)}
    known = [waiting[call_id] for call_id in answered if call_id in waiting]
    if not known:
        raise HTTPException(404, f"run {agent_run_id!r} never waited for {', '.join(answered)}")
    finished = state.status.is_final or await _deliver_answers(gw, state, approvals, results)
    # The segment after the pause at the waiting events this message answers (earlier ones were streamed
    # already). A run that has finished (cancelled, out of time) is streamed to its end instead: the client
    # learns the final state, and every call it answered gets its outcome (denied, if never decided).
    pause = pause_after(events, max(known))
    return agent_run_id, StreamStart(after_pause=pause, to_the_end=finished)


async def _deliver_answers(
    gw: Gateway, state: RunState, approvals: list[ApprovalDecision], results: list[ToolResultSubmission]
) -> bool:
    """Send the run the answers it still waits for. True when it turns out to have finished meanwhile (a
    cancel won the race), so its stream should go to its end; answers it has already are skipped."""
    agent_run_id = state.agent_run_id
    decided = {a.tool_call_id for a in state.approvals if a.decided_at}
    try:
        for decision in approvals:
            if decision.tool_call_id not in decided:
                await _deliver(gw, APPROVAL_UPDATE, decision, agent_run_id)
        for result in results:
            if state.pending_question and state.pending_question.tool_call_id == result.tool_call_id:
                text = result.output if isinstance(result.output, str) else json.dumps(result.output)
                answer = UserAnswer(text=result.error or text or "(no answer)")
                await _deliver(gw, ANSWER_UPDATE, answer, agent_run_id)
            elif any(p.tool_call_id == result.tool_call_id for p in state.pending_tool_results):
                await _deliver(gw, TOOL_RESULT_UPDATE, result, agent_run_id)
    except HTTPException as err:
        if err.status_code == 409 and "has already finished" in str(err.detail):  # see `refusal`
            return True
        raise
    return False


async def _deliver(gw: Gateway, update: str, arg: Any, agent_run_id: str) -> None:
    try:
        await gw.run(agent_run_id).execute_update(update, arg)
    except (WorkflowUpdateFailedError, RPCError) as err:
        raise await refusal(gw, err, agent_run_id) from None
