"""`ScheduledRun`: one firing of a schedule (keel/schedules.py), started by the Temporal Schedule's action.

A firing is an ordinary run: an activity opens it exactly as the gateway opens one (the current deploy's
agent, its conversation and record in PostgreSQL), then it runs as a child `AgentRun` under its own run id,
so every run endpoint, the viewer and webhooks see it like any other. This workflow waits for that run:
while it goes, the firing is running, and the schedule's overlap policy (skip, buffer, cancel, ...) applies
to the run itself. Cancelling or terminating the firing cancels its run.
"""

from temporalio import workflow
from temporalio.exceptions import ChildWorkflowError

with workflow.unsafe.imports_passed_through():
    from keel.contracts import RUN_TASK_TIMEOUT, WORKFLOW_TYPE, AgentRunInput, RunState, RunStatus
    from keel.schedules import (
        OPEN_SCHEDULED_RUN,
        SCHEDULE_ID_KEY,
        SCHEDULED_RUN_WORKFLOW,
        ScheduledRunInput,
        ScheduledRunOpening,
        ScheduledRunResult,
        firing_run_id,
    )
    from workflows.activity_options import SAVE_MESSAGE_OPTIONS


@workflow.defn(name=SCHEDULED_RUN_WORKFLOW)
class ScheduledRun:
    @workflow.run
    async def run(self, request: ScheduledRunInput) -> ScheduledRunResult:
        info = workflow.info()
        opening = ScheduledRunOpening(
            request=request, agent_run_id=firing_run_id(info.workflow_id, info.run_id)
        )
        # Writes and retries like storing a message: quick, and retried while PostgreSQL is away. An agent
        # the deploy no longer has fails it at once (non-retryable), and this firing with it.
        run: AgentRunInput = await workflow.execute_activity(
            OPEN_SCHEDULED_RUN,
            opening,
            result_type=AgentRunInput,
            summary=f"open a run of {request.purpose}",
            **SAVE_MESSAGE_OPTIONS,
        )
        memo = {SCHEDULE_ID_KEY: request.schedule_id}
        if run.user_id:
            memo["user_id"] = run.user_id
        handle = await workflow.start_child_workflow(
            WORKFLOW_TYPE,
            run,
            id=run.agent_run_id,
            task_timeout=RUN_TASK_TIMEOUT,
            result_type=RunState,
            # Cancelling the firing (overlap cancel_other, the Web UI) cancels the run and waits for it to
            # stop; terminating the firing (terminate_other) still asks the run to cancel.
            cancellation_type=workflow.ChildWorkflowCancellationType.WAIT_CANCELLATION_COMPLETED,
            parent_close_policy=workflow.ParentClosePolicy.REQUEST_CANCEL,
            memo=memo,
            static_summary=f"{run.purpose.slug}: {run.input_summary}",
        )
        try:
            state: RunState = await handle
        except ChildWorkflowError as err:
            # The run failed or was closed outside its loop; its record says why. The firing itself
            # did its job (it ran the run), so it completes, naming the outcome.
            return ScheduledRunResult(
                agent_run_id=run.agent_run_id, status=RunStatus.failed, detail=str(err.cause or err)
            )
        return ScheduledRunResult(agent_run_id=run.agent_run_id, status=state.status, detail=state.detail)
