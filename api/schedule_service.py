"""The schedule service: what the gateway does to schedules, between api/schedules.py and Temporal.

A Keel schedule is a Temporal Schedule (so it shows in the Temporal Web UI and `temporal schedule list`)
whose action starts the `ScheduledRun` workflow with the schedule's request (keel/schedules.py). Its memo
names its owner, the authenticated user who created it, and keeps the cron expression as it was given
(Temporal keeps it only translated into calendars). Every method takes the user asking: a schedule that is
not theirs is 404, exactly as an unknown one; admins see every Keel schedule. Refusals are HTTPExceptions.
"""

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, TypeVar

from fastapi import Depends, HTTPException
from temporalio.api.common.v1 import Payload
from temporalio.client import (
    Schedule,
    ScheduleActionExecutionStartWorkflow,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleDescription,
    ScheduleHandle,
    ScheduleIntervalSpec,
    ScheduleListActionStartWorkflow,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
)
from temporalio.service import RPCError, RPCStatusCode

from api.auth import User
from api.gateway import Gateway, GatewayDep
from keel.app import UnknownAgent
from keel.run_start import SUMMARY_CHARS
from keel.schedules import (
    FIRING_ID_PREFIX,
    SCHEDULED_RUN_WORKFLOW,
    Overlap,
    ScheduledRunInput,
    ScheduleFiring,
    ScheduleRequest,
    ScheduleView,
    firing_run_id,
)
from keel.text import one_line

OVERLAPS: dict[Overlap, ScheduleOverlapPolicy] = {
    "skip": ScheduleOverlapPolicy.SKIP,
    "buffer_one": ScheduleOverlapPolicy.BUFFER_ONE,
    "buffer_all": ScheduleOverlapPolicy.BUFFER_ALL,
    "cancel_other": ScheduleOverlapPolicy.CANCEL_OTHER,
    "terminate_other": ScheduleOverlapPolicy.TERMINATE_OTHER,
    "allow_all": ScheduleOverlapPolicy.ALLOW_ALL,
}
_OVERLAP_NAMES = {policy: name for name, policy in OVERLAPS.items()}
# How many schedules a listing describes at once.
_DESCRIBING = 8
Result = TypeVar("Result")


@dataclass(frozen=True)
class ScheduleService:
    """One per request (`ScheduleServiceDep`), over the gateway's connections."""

    gw: Gateway

    async def create(self, request: ScheduleRequest, user: User) -> ScheduleView:
        """Create the schedule under the caller's name; 422 for an unknown agent or an expression Temporal
        refuses, 409 for an id that is taken."""
        try:
            self.gw.app.agent(request.purpose)
        except UnknownAgent as err:
            raise HTTPException(422, str(err)) from None
        memo: dict[str, Any] = {"cron": request.cron}
        if user.id is not None:
            memo["user_id"] = user.id
        try:
            handle = await self.gw.temporal.create_schedule(
                request.schedule_id, self._schedule(request, user), memo=memo
            )
        except ScheduleAlreadyRunningError:
            raise HTTPException(409, f"a schedule {request.schedule_id!r} exists already") from None
        except RPCError as err:
            raise _http_error(err, request.schedule_id) from None
        return await self._view(await self._temporal(handle.describe, request.schedule_id))

    def _schedule(self, request: ScheduleRequest, user: User) -> Schedule:
        firing = ScheduledRunInput(
            schedule_id=request.schedule_id,
            purpose=request.purpose,
            message=request.message,
            user_id=user.id,
            context=request.context or {},
            metadata=request.metadata or {},
        )
        catchup = request.catchup_window_seconds
        return Schedule(
            action=ScheduleActionStartWorkflow(
                SCHEDULED_RUN_WORKFLOW,
                firing,
                id=f"{FIRING_ID_PREFIX}{request.schedule_id}",
                task_queue=self.gw.settings.task_queue,
                static_summary=f"{request.purpose}: {one_line(request.message, SUMMARY_CHARS)}",
            ),
            spec=ScheduleSpec(
                cron_expressions=[request.cron] if request.cron else [],
                intervals=[ScheduleIntervalSpec(every=timedelta(seconds=request.interval_seconds))]
                if request.interval_seconds
                else [],
                time_zone_name=request.timezone,
            ),
            policy=SchedulePolicy(
                overlap=OVERLAPS[request.overlap],
                catchup_window=timedelta(seconds=catchup) if catchup else None,
            ),
        )

    async def list(self, user: User) -> list[ScheduleView]:
        """The caller's schedules (every Keel schedule for an admin), by id. Temporal's listing is eventually
        consistent: a schedule created a moment ago may show a moment later."""
        ids: list[str] = []
        try:
            async for listed in await self.gw.temporal.list_schedules():
                action = listed.schedule.action if listed.schedule else None
                if not isinstance(action, ScheduleListActionStartWorkflow):
                    continue
                if action.workflow == SCHEDULED_RUN_WORKFLOW and user.owns(
                    (await listed.memo()).get("user_id")
                ):
                    ids.append(listed.id)
        except RPCError as err:
            raise _http_error(err, "") from None
        slots = asyncio.Semaphore(_DESCRIBING)

        async def describe(schedule_id: str) -> ScheduleView | None:
            async with slots:
                try:
                    return await self.get(schedule_id, user)
                except HTTPException as gone:  # deleted since it was listed
                    if gone.status_code == 404:
                        return None
                    raise

        views = await asyncio.gather(*(describe(i) for i in sorted(ids)))
        return [view for view in views if view is not None]

    async def get(self, schedule_id: str, user: User) -> ScheduleView:
        return await self._view(await self._owned(schedule_id, user))

    async def delete(self, schedule_id: str, user: User) -> None:
        """Delete the schedule; a firing's run still going goes on to its end."""
        description = await self._owned(schedule_id, user)
        await self._temporal(self.gw.temporal.get_schedule_handle(description.id).delete, schedule_id)

    async def pause(self, schedule_id: str, user: User, *, paused: bool) -> ScheduleView:
        """Pause or unpause; the note (in the Web UI too) says who did it."""
        await self._owned(schedule_id, user)
        handle = self.gw.temporal.get_schedule_handle(schedule_id)
        note = f"{'paused' if paused else 'unpaused'} by {user.id or 'the local admin'} through Keel"
        await self._temporal(
            lambda: handle.pause(note=note) if paused else handle.unpause(note=note), schedule_id
        )
        return await self._view(await self._temporal(handle.describe, schedule_id))

    async def _owned(self, schedule_id: str, user: User) -> ScheduleDescription:
        """The schedule's description; 404 unless it is a Keel schedule the user may see."""
        handle: ScheduleHandle = self.gw.temporal.get_schedule_handle(schedule_id)
        description = await self._temporal(handle.describe, schedule_id)
        action = description.schedule.action
        ours = isinstance(action, ScheduleActionStartWorkflow) and action.workflow == SCHEDULED_RUN_WORKFLOW
        if not ours or not user.owns((await description.memo()).get("user_id")):
            raise HTTPException(404, f"no schedule {schedule_id!r}")
        return description

    async def _temporal(self, call: Callable[[], Awaitable[Result]], schedule_id: str) -> Result:
        try:
            return await call()
        except RPCError as err:
            raise _http_error(err, schedule_id) from None

    async def _view(self, description: ScheduleDescription) -> ScheduleView:
        schedule, info = description.schedule, description.info
        action = schedule.action
        assert isinstance(action, ScheduleActionStartWorkflow)  # _owned and create make sure
        payloads: list[Payload] = [a for a in action.args if isinstance(a, Payload)]
        [request] = await self.gw.temporal.data_converter.decode(payloads, [ScheduledRunInput])
        memo = await description.memo()
        interval = schedule.spec.intervals[0].every if schedule.spec.intervals else None
        catchup = schedule.policy.catchup_window
        return ScheduleView(
            schedule_id=description.id,
            purpose=request.purpose,
            message=request.message,
            user_id=memo.get("user_id"),
            cron=memo.get("cron"),
            interval_seconds=int(interval.total_seconds()) if interval else None,
            timezone=schedule.spec.time_zone_name or "UTC",
            overlap=_OVERLAP_NAMES.get(schedule.policy.overlap, "skip"),
            catchup_window_seconds=int(catchup.total_seconds()) if catchup else None,
            context=request.context,
            metadata=request.metadata,
            paused=schedule.state.paused,
            note=schedule.state.note,
            created_at=info.created_at,
            next_runs=list(info.next_action_times),
            recent_runs=[
                ScheduleFiring(
                    scheduled_at=result.scheduled_at,
                    started_at=result.started_at,
                    workflow_id=result.action.workflow_id,
                    agent_run_id=firing_run_id(
                        result.action.workflow_id, result.action.first_execution_run_id
                    ),
                )
                for result in info.recent_actions
                if isinstance(result.action, ScheduleActionExecutionStartWorkflow)
            ],
            running=[
                firing_run_id(running.workflow_id, running.first_execution_run_id)
                for running in info.running_actions
                if isinstance(running, ScheduleActionExecutionStartWorkflow)
            ],
            actions=info.num_actions,
            skipped_overlap=info.num_actions_skipped_overlap,
            missed_catchup=info.num_actions_missed_catchup_window,
        )


def _http_error(err: RPCError, schedule_id: str) -> HTTPException:
    """Temporal's refusal as the HTTP status a client can act on."""
    if err.status == RPCStatusCode.NOT_FOUND:
        return HTTPException(404, f"no schedule {schedule_id!r}")
    if err.status == RPCStatusCode.INVALID_ARGUMENT:
        return HTTPException(422, f"Temporal refused the schedule: {err.message}")
    if err.status == RPCStatusCode.ALREADY_EXISTS:
        return HTTPException(409, f"a schedule {schedule_id!r} exists already")
    return HTTPException(503, f"Temporal could not answer: {err.message}")


def _service(gw: GatewayDep) -> ScheduleService:
    return ScheduleService(gw)


ScheduleServiceDep = Annotated[ScheduleService, Depends(_service)]
