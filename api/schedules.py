"""Scheduled agents: `/api/schedules` creates, lists, shows, pauses, unpauses and deletes schedules that run
an agent on a message by cron expression or interval (Temporal Schedules; each firing is an ordinary run).
The routes parse and answer; the schedule service (api/schedule_service.py) does the work."""

from fastapi import APIRouter, Response

from api.auth import CurrentUser
from api.schedule_service import ScheduleServiceDep
from keel.schedules import ScheduleRequest, ScheduleView

router = APIRouter(prefix="/api/schedules", tags=["schedules"])


@router.post("", status_code=201, summary="Create a schedule: run an agent on a message by cron or interval")
async def create_schedule(
    body: ScheduleRequest, service: ScheduleServiceDep, user: CurrentUser
) -> ScheduleView:
    return await service.create(body, user)


@router.get("", summary="Your schedules (an admin's: every one), with their next and recent firings")
async def list_schedules(service: ScheduleServiceDep, user: CurrentUser) -> list[ScheduleView]:
    return await service.list(user)


@router.get("/{schedule_id}", summary="A schedule: its request, state, next firings and recent runs")
async def get_schedule(schedule_id: str, service: ScheduleServiceDep, user: CurrentUser) -> ScheduleView:
    return await service.get(schedule_id, user)


@router.delete("/{schedule_id}", status_code=204, summary="Delete a schedule (a run still going goes on)")
async def delete_schedule(schedule_id: str, service: ScheduleServiceDep, user: CurrentUser) -> Response:
    await service.delete(schedule_id, user)
    return Response(status_code=204)


@router.post("/{schedule_id}/pause", summary="Pause a schedule: no firing until it is unpaused")
async def pause_schedule(schedule_id: str, service: ScheduleServiceDep, user: CurrentUser) -> ScheduleView:
    return await service.pause(schedule_id, user, paused=True)


@router.post("/{schedule_id}/unpause", summary="Unpause a schedule")
async def unpause_schedule(schedule_id: str, service: ScheduleServiceDep, user: CurrentUser) -> ScheduleView:
    return await service.pause(schedule_id, user, paused=False)
