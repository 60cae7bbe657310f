"""Run state and run control: approve or deny a tool call, answer a question, send a client tool's result,
cancel. Each is the workflow's update (or signal) of the same name, so the CLI and the Web UI can do the
same with `temporal workflow signal`. The routes parse and answer; the run service (api/run_service.py) does
the work."""

from typing import Any

from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import Field, ValidationError, ValidatorFunctionWrapHandler, field_validator
from pydantic_core import PydanticCustomError
from temporalio.client import WorkflowExecutionStatus

from api.auth import CurrentUser
from api.chat_request import JsonValue, RunRequest, StrictBody
from api.run_service import RunServiceDep
from api.sse import last_event_id, resumed_response
from keel.api_models import Accepted, RunStarted
from keel.contracts import ApprovalRecord, RunState, ToolResultSubmission

router = APIRouter(prefix="/api/runs", tags=["runs"])


class ApprovalBody(StrictBody):
    approved: bool = Field(description="`true` approves, `false` denies: a JSON boolean, nothing else")
    reason: str | None = Field(None, max_length=2000)

    @field_validator("approved", mode="wrap")
    @classmethod
    def _true_or_false(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> bool:
        """Say plainly what a decision must be: a tool must not run because "yes" or 1 looked like one."""
        try:
            approved: bool = handler(value)
        except ValidationError:
            raise PydanticCustomError(
                "bool_type", "Input should be a valid boolean: true or false, not text, a number or null"
            ) from None
        return approved


class AnswerBody(StrictBody):
    text: str = Field(min_length=1, max_length=100_000)
    tool_call_id: str | None = Field(
        None,
        max_length=200,
        description="The question's tool call (`ask_user`), to say which of the run's sub-agents asking "
        "one this answers; not needed when only one asks",
    )


class ToolResultBody(StrictBody):
    output: JsonValue = Field(None, description="Any JSON value, nested at most 32 levels deep")
    error: str | None = Field(None, max_length=100_000, description="Set when the client's tool failed")


class CancelBody(StrictBody):
    reason: str | None = Field(None, max_length=2000)


# `GET /api/runs` (a chat's runs, and every run by status, purpose, user and time) is in api/viewer.py.


@router.post(
    "",
    status_code=202,
    summary="Start a run server to server; with an Idempotency-Key, the same key and body give the same run",
    responses={422: {"description": "An invalid body, or an Idempotency-Key already used with another body"}},
)
async def start_run(
    body: RunRequest,
    response: Response,
    service: RunServiceDep,
    user: CurrentUser,
    idempotency_key: str | None = Header(
        None,
        min_length=1,
        max_length=255,
        description="Names this request: repeated with the same body (by you, on any gateway, within "
        "KEEL_IDEMPOTENCY_TTL_HOURS), it answers with the same run instead of starting another",
    ),
) -> RunStarted:
    agent_run_id, status, replayed = await service.start_server_run(body, user, idempotency_key)
    response.headers["x-agent-run-id"] = agent_run_id
    if replayed:
        response.headers["idempotent-replayed"] = "true"
    return RunStarted(agent_run_id=agent_run_id, status=status)


@router.get(
    "/{agent_run_id}/wait",
    summary="Wait until the run is final or waits for a person (long poll); its state then, or at the timeout",
)
async def wait_for_run(
    agent_run_id: str,
    service: RunServiceDep,
    user: CurrentUser,
    timeout_s: float = Query(
        30, alias="timeout", gt=0, le=300, description="Seconds to wait at most; the state is answered then"
    ),
) -> RunState:
    return await service.wait(agent_run_id, user, timeout_s)


@router.get(
    "/{agent_run_id}",
    summary="A run's state: status, step, usage, budgets, pending approvals, its structured output",
)
async def run_state(agent_run_id: str, service: RunServiceDep, user: CurrentUser) -> RunState:
    return await service.state(agent_run_id, user)


@router.get(
    "/{agent_run_id}/events",
    summary="The run's stream (SSE); with Last-Event-ID, what came after that event, then live",
    responses={204: {"description": "The run has finished and nothing came after Last-Event-ID"}},
)
async def run_events(
    agent_run_id: str,
    request: Request,
    service: RunServiceDep,
    user: CurrentUser,
    last_event_id_param: int | None = Query(
        None,
        alias="last_event_id",
        ge=0,
        description="As the Last-Event-ID header, which wins when both are set",
    ),
) -> Response:
    after = last_event_id(request, last_event_id_param)
    # Unknown and foreign runs are 404. Temporal's record, not the state query: a run whose model is
    # answering takes queries only when its workflow task ends, and a viewer must not wait for that.
    described = await service.owned_execution(agent_run_id, user)
    finished = described.status != WorkflowExecutionStatus.RUNNING
    return await resumed_response(service.gw, agent_run_id, after, finished=finished)


@router.post(
    "/{agent_run_id}/approvals/{tool_call_id}",
    summary="Approve or deny a tool call waiting for it, in the run or in one of its sub-agents' runs",
)
async def decide(
    agent_run_id: str, tool_call_id: str, body: ApprovalBody, service: RunServiceDep, user: CurrentUser
) -> ApprovalRecord:
    return await service.decide(agent_run_id, tool_call_id, user, approved=body.approved, reason=body.reason)


@router.post(
    "/{agent_run_id}/answer", summary="Answer the question the agent (or one of its sub-agents) asked"
)
async def answer(agent_run_id: str, body: AnswerBody, service: RunServiceDep, user: CurrentUser) -> Accepted:
    answered = await service.answer(agent_run_id, body.text, user, body.tool_call_id)
    return Accepted(agent_run_id=answered, status="answered")


@router.post("/{agent_run_id}/tool-results/{tool_call_id}", summary="The result of a client-side tool call")
async def tool_result(
    agent_run_id: str, tool_call_id: str, body: ToolResultBody, service: RunServiceDep, user: CurrentUser
) -> Accepted:
    submission = ToolResultSubmission(tool_call_id=tool_call_id, output=body.output, error=body.error)
    await service.submit_tool_result(agent_run_id, submission, user)
    return Accepted(agent_run_id=agent_run_id, status="result received")


@router.post("/{agent_run_id}/cancel", status_code=202, summary="Cancel a run; it stops what it is doing")
async def cancel(
    agent_run_id: str, service: RunServiceDep, user: CurrentUser, body: CancelBody | None = None
) -> Accepted:
    await service.cancel(agent_run_id, body.reason if body else None, user)
    return Accepted(agent_run_id=agent_run_id, status="cancelling")
