"""What every route needs: the Temporal client, the store, the settings, whether Temporal and PostgreSQL
answer, and Temporal errors as HTTP ones."""

import asyncio
import logging
import re
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, HTTPException, Request
from temporalio.api.enums.v1 import PendingWorkflowTaskState
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowQueryRejectedError,
    WorkflowUpdateFailedError,
)
from temporalio.common import QueryRejectCondition
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from keel.app import App
from keel.contracts import STATE_QUERY, ErrorType, RunState
from keel.settings import Settings
from keel.storage.deltas import DeltaChannel
from keel.storage.interrupts import interrupt
from keel.storage.reconciler import ended_outside
from keel.storage.store import RunStore

log = logging.getLogger("keel.api")

# A state query of a run between workflow tasks answers in milliseconds; one that takes longer met a task
# under way (Gateway.state_unless_busy).
_QUICK_QUERY_SECONDS = 0.5

_RUN_ID = re.compile(r"^run-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def is_run_id(value: str | None) -> bool:
    return bool(value and _RUN_ID.match(value))


@dataclass
class Gateway:
    settings: Settings
    temporal: Client
    store: RunStore
    # Live token deltas from the LLM activities (keel/storage/deltas.py).
    deltas: DeltaChannel
    # The agents this gateway serves (KEEL_APP).
    app: App

    def run(self, agent_run_id: str) -> WorkflowHandle[Any, Any]:
        """A handle on an existing run; malformed ids are 404 like unknown ones, so ids leak nothing."""
        if not is_run_id(agent_run_id):
            raise HTTPException(404, f"no run {agent_run_id!r}")
        return self.temporal.get_workflow_handle(agent_run_id)

    async def health(self) -> dict[str, str]:
        """Whether Temporal and PostgreSQL answer: "ok" for each that does, what went wrong for the others."""
        checks = {
            "temporal": _check(self.temporal.service_client.check_health()),
            "postgres": _check(self.store.pool.fetchval("SELECT 1")),
        }
        return dict(zip(checks, await asyncio.gather(*checks.values()), strict=True))

    async def interrupt(self, agent_run_id: str) -> None:
        """After a cancel signal: stop the run's streaming model call now rather than at its next heartbeat
        (keel/storage/interrupts.py). Best effort: without it the heartbeat still carries the cancel."""
        try:
            await interrupt(self.store.pool, agent_run_id)
        except (OSError, asyncpg.PostgresError) as err:
            log.warning("run %s: cancel signalled, interrupt not sent (%s)", agent_run_id, err)

    async def state_unless_busy(self, agent_run_id: str) -> RunState | None:
        """The run's state, or None while a workflow task of the run is under way: the run answers a query
        only once that task ends, and its model calls run inside one as local activities, for as long as
        the model writes. For callers that only need to know the run is going on. Busy: Temporal's record
        of the run shows a task scheduled or started, or the query takes longer than a task's work does."""
        try:
            described = await self.run(agent_run_id).describe()
        except RPCError:
            described = None  # unknown or unreachable: the state query says which
        if described is not None and described.status == WorkflowExecutionStatus.RUNNING:
            task = described.raw_description.pending_workflow_task
            if task.state != PendingWorkflowTaskState.PENDING_WORKFLOW_TASK_STATE_UNSPECIFIED:
                return None
            try:
                return await asyncio.wait_for(self.state(agent_run_id), _QUICK_QUERY_SECONDS)
            except TimeoutError:
                return None
        return await self.state(agent_run_id)

    async def state(self, agent_run_id: str) -> RunState:
        """The run's `state` query. A run closed from outside its loop (terminated, timed out) never said
        it ended, and its replayed state still waits or runs: it reads as ended, as its stream does."""
        handle = self.run(agent_run_id)
        try:
            try:
                state: RunState = await handle.query(
                    STATE_QUERY, result_type=RunState, reject_condition=QueryRejectCondition.NOT_OPEN
                )
                return state
            except WorkflowQueryRejectedError as closed:
                state = await handle.query(STATE_QUERY, result_type=RunState)
                return state if state.status.is_final else _ended_outside(state, closed.status)
        except RPCError as err:
            raise http_error(err, agent_run_id) from None


async def refusal(gw: Gateway, err: Exception, agent_run_id: str) -> HTTPException:
    """Temporal's refusal of a decision (approval, answer, tool result) as an HTTP error. One that raced
    the run's end (Temporal may call it "not found", or the run's validator "finished") is a 409 naming
    how the run ended."""
    refused = http_error(err, agent_run_id)
    if refused.status_code not in (404, 409):
        return refused
    try:
        state = await gw.state(agent_run_id)
    except HTTPException:
        return refused
    if not state.status.is_final:
        return refused
    return HTTPException(409, f"run {agent_run_id!r} has already finished ({state.status.value})")


async def _check(probe: Awaitable[object]) -> str:
    try:
        await asyncio.wait_for(probe, timeout=3)
    except Exception as err:  # a health check reports every failure instead of raising it
        return f"unavailable: {type(err).__name__}: {err}"
    return "ok"


def _ended_outside(state: RunState, status: WorkflowExecutionStatus | None) -> RunState:
    final, detail = ended_outside(status)
    nothing_waits: dict[str, Any] = {
        "pending_approvals": [],
        "pending_question": None,
        "pending_tool_results": [],
    }
    return state.model_copy(update={"status": final, "detail": detail, **nothing_waits})


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway  # set by the app's lifespan (api/application.py)
    return gateway


GatewayDep = Annotated[Gateway, Depends(_gateway)]


def http_error(err: Exception, agent_run_id: str) -> HTTPException:
    """Temporal's answer to a query, signal or update, as the HTTP status a client can act on."""
    if isinstance(err, WorkflowUpdateFailedError) and isinstance(err.cause, ApplicationError):
        statuses: dict[str, int] = {ErrorType.not_found: 404, ErrorType.conflict: 409}
        status = statuses.get(err.cause.type or "", 400)
        return HTTPException(status, err.cause.message)
    if isinstance(err, RPCError):
        if err.status == RPCStatusCode.NOT_FOUND:
            if "completed" in err.message.lower() or "closed" in err.message.lower():
                return HTTPException(409, f"run {agent_run_id!r} has already finished")
            return HTTPException(404, f"no run {agent_run_id!r}")
        if err.status == RPCStatusCode.FAILED_PRECONDITION:
            return HTTPException(409, f"run {agent_run_id!r} has already finished")
        return HTTPException(503, f"Temporal could not answer: {err.message}")
    return HTTPException(503, f"Temporal could not answer: {err}")
