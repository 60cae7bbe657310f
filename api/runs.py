"""Run state and run control: approve or deny a tool call, answer a question, send a client tool's result,
cancel. Each is the workflow's update (or signal) of the same name, so the CLI and the Web UI can do the
same with `temporal workflow signal`."""

from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel, Field, ValidationError, ValidatorFunctionWrapHandler, field_validator
from pydantic_core import PydanticCustomError
from temporalio.client import WorkflowUpdateFailedError
from temporalio.service import RPCError

from api.auth import CurrentUser, User, check_owner, require_run
from api.chat_request import JsonValue, StrictBody
from api.gateway import Gateway, GatewayDep, http_error, refusal
from api.streams import last_event_id, resumed_response
from keel.contracts import (
    ANSWER_UPDATE,
    APPROVAL_UPDATE,
    CANCEL_SIGNAL,
    TOOL_RESULT_UPDATE,
    ApprovalDecision,
    ApprovalRecord,
    CancelRequest,
    RunState,
    ToolResultSubmission,
    UserAnswer,
)
from keel.store import RunStore

router = APIRouter(prefix="/api/runs", tags=["runs"])


class ApprovalBody(StrictBody):
    approved: bool = Field(description="`true` approves, `false` denies: a JSON boolean, nothing else")
    reason: str | None = Field(None, max_length=2000)

    @field_validator("approved", mode="wrap")
    @classmethod
    def _true_or_false(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> bool:
        """Say plainly what a decision must be: a tool must not run because "yes" or 1 looked like one."""
        try:
            return handler(value)
        except ValidationError:
            raise PydanticCustomError(
                "bool_type", "Input should be a valid boolean: true or false, not text, a number or null"
            ) from None


class AnswerBody(StrictBody):
    text: str = Field(min_length=1, max_length=100_000)


class ToolResultBody(StrictBody):
    output: JsonValue = Field(None, description="Any JSON value, nested at most 32 levels deep")
    error: str | None = Field(None, max_length=100_000, description="Set when the client's tool failed")


class CancelBody(StrictBody):
    reason: str | None = Field(None, max_length=2000)


class Accepted(BaseModel):
    agent_run_id: str
    status: str


# `GET /api/runs` (a chat's runs, and every run by status, purpose, user and time) is in api/viewer.py.


@router.get(
    "/{agent_run_id}",
    summary="A run's state: status, step, usage, budgets, pending approvals, its structured output",
)
async def run_state(agent_run_id: str, gw: GatewayDep, user: CurrentUser) -> RunState:
    return await with_output(gw.store, check_owner(user, await gw.state(agent_run_id)))


async def with_output(store: RunStore, state: RunState) -> RunState:
    """The state with its structured output (`output`): the workflow knows only where the validated
    answer is stored, with its reply, so the object itself never passes through Temporal."""
    if state.output_seq is None:
        return state
    reply = (await store.messages(state.agent_run_id, [state.output_seq])).get(state.output_seq)
    return state.model_copy(update={"output": reply.output if reply is not None else None})


@router.get(
    "/{agent_run_id}/events",
    summary="The run's stream (SSE); with Last-Event-ID, what came after that event, then live",
    responses={204: {"description": "The run has finished and nothing came after Last-Event-ID"}},
)
async def run_events(
    agent_run_id: str,
    request: Request,
    gw: GatewayDep,
    user: CurrentUser,
    last_event_id_param: int | None = Query(
        None,
        alias="last_event_id",
        ge=0,
        description="As the Last-Event-ID header, which wins when both are set",
    ),
) -> Response:
    after = last_event_id(request, last_event_id_param)
    state = check_owner(user, await gw.state(agent_run_id))  # unknown and foreign runs are 404
    return await resumed_response(gw, agent_run_id, after, finished=state.status.is_final)


@router.post("/{agent_run_id}/approvals/{tool_call_id}", summary="Approve or deny a tool call waiting for it")
async def decide(
    agent_run_id: str, tool_call_id: str, body: ApprovalBody, gw: GatewayDep, user: CurrentUser
) -> ApprovalRecord:
    decision = ApprovalDecision(
        tool_call_id=tool_call_id, approved=body.approved, reason=body.reason, approver=user.name or "api"
    )
    return await _update(gw, agent_run_id, APPROVAL_UPDATE, decision, ApprovalRecord, user)


@router.post("/{agent_run_id}/answer", summary="Answer the question the agent asked")
async def answer(agent_run_id: str, body: AnswerBody, gw: GatewayDep, user: CurrentUser) -> Accepted:
    await _update(gw, agent_run_id, ANSWER_UPDATE, UserAnswer(text=body.text), None, user)
    return Accepted(agent_run_id=agent_run_id, status="answered")


@router.post("/{agent_run_id}/tool-results/{tool_call_id}", summary="The result of a client-side tool call")
async def tool_result(
    agent_run_id: str, tool_call_id: str, body: ToolResultBody, gw: GatewayDep, user: CurrentUser
) -> Accepted:
    submission = ToolResultSubmission(tool_call_id=tool_call_id, output=body.output, error=body.error)
    await _update(gw, agent_run_id, TOOL_RESULT_UPDATE, submission, None, user)
    return Accepted(agent_run_id=agent_run_id, status="result received")


@router.post("/{agent_run_id}/cancel", status_code=202, summary="Cancel a run; it stops what it is doing")
async def cancel(
    agent_run_id: str, gw: GatewayDep, user: CurrentUser, body: CancelBody | None = None
) -> Accepted:
    state = check_owner(user, await gw.state(agent_run_id))
    if state.status.is_final:
        raise HTTPException(409, f"run {agent_run_id!r} has already finished ({state.status.value})")
    try:
        await gw.run(agent_run_id).signal(CANCEL_SIGNAL, CancelRequest(reason=body.reason if body else None))
    except RPCError as err:
        raise http_error(err, agent_run_id) from None
    return Accepted(agent_run_id=agent_run_id, status="cancelling")


async def _update(
    gw: Gateway, agent_run_id: str, name: str, arg: BaseModel, result_type: type | None, user: User
) -> Any:
    await require_run(gw, agent_run_id, user)
    try:
        return await gw.run(agent_run_id).execute_update(name, arg, result_type=result_type)
    except (WorkflowUpdateFailedError, RPCError) as err:
        raise await refusal(gw, err, agent_run_id) from None
