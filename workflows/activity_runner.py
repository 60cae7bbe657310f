"""The one way an agent run starts an activity: regular or local, one local activity at a time, and an
activity that fails past its retry policy ending the run as `failed`.
"""

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.exceptions import ActivityError, CancelledError, FailureError

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel

ResultT = TypeVar("ResultT", bound=BaseModel)


class RunFailed(Exception):
    """An activity failed past its retry policy; the run ends as `failed`."""


class ActivityRunner:
    """Starts the run's activities. `fail_run(error_type, detail)` ends the run when one gives out."""

    def __init__(self, fail_run: Callable[[str, str], None]) -> None:
        self._fail_run = fail_run
        # Whether inline tools, stop_when checks and records run as local activities: set once the run
        # knows whether it started before tools were split into inline and heavy (see AgentRun.run).
        self.local_allowed = False
        self._local_turn = asyncio.Lock()

    async def execute(
        self,
        activity: str,
        arg: BaseModel,
        result_type: type[ResultT],
        *,
        summary: str,
        options: dict[str, Any],
        failure: str,
        local: bool = False,
        **more: Any,
    ) -> ResultT:
        """Run an activity (a local one if `local`); one that fails past its retry policy ends the run as
        `failed` (`failure` says what could not be done) and raises RunFailed.

        Tools turn their own errors into error results for the model (see `run_tool`), so an activity
        failure here means the infrastructure gave out: timeouts, or storage down for too long.
        """
        try:
            result: ResultT = await self.start(
                activity, arg, local=local, result_type=result_type, summary=summary, **options, **more
            )
        except FailureError as err:
            # A regular activity's failure comes wrapped in an ActivityError; a local one's (temporalio 1.35)
            # comes as it is.
            reason = err.cause if isinstance(err, ActivityError) else err
            if isinstance(reason, CancelledError):
                raise asyncio.CancelledError() from err
            cause = str(reason) if reason is not None else str(err)
            error_type: str = getattr(reason, "type", None) or type(reason or err).__name__
            # Ended here, where the failure arrives, before anything else in the run moves on.
            self._fail_run(error_type, f"{failure}: {cause}")
            raise RunFailed(f"{failure}: {cause}") from err
        return result

    async def start(self, activity: str, arg: BaseModel, *, local: bool, **options: Any) -> Any:
        """Every activity the run starts goes through here: a regular one, or a local one in its turn.

        One local activity at a time: the SDK (1.35) resumes concurrent local activities in the order they
        finished on a first run but in the order they were scheduled on replay, so two in flight at once
        (parallel inline tools, a record sent meanwhile) could replay differently. They are cheap; taking
        turns costs little.
        """
        if not local:
            return await workflow.execute_activity(activity, arg, **options)
        async with self._local_turn:
            return await workflow.execute_local_activity(activity, arg, **options)
