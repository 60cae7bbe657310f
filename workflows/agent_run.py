"""AgentRun: one agent run as a Temporal workflow.

The loop is observe -> think -> act. Each step is one `call_llm` activity plus one `run_tool` activity per
tool call the model asked for; it ends with a final answer (a step without tool calls) or at the step
limit. Progress is kept as numbered `RunEvent`s, served by the `events` query; `state` gives the summary.
"""

import asyncio
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel

    from keel.contracts import (
        CALL_LLM,
        EVENTS_QUERY,
        RUN_TOOL,
        STATE_QUERY,
        WORKFLOW_TYPE,
        AgentRunInput,
        LlmStepInput,
        LlmStepResult,
        RunEvent,
        RunFinished,
        RunState,
        RunStatus,
        StepFinished,
        StepStarted,
        TextProduced,
        ToolCall,
        ToolCallRequested,
        ToolInput,
        ToolOutcome,
        ToolResultReady,
        Usage,
    )
    from workflows.activity_options import CALL_LLM_OPTIONS, RUN_TOOL_OPTIONS

ResultT = TypeVar("ResultT", bound=BaseModel)


@workflow.defn(name=WORKFLOW_TYPE)
class AgentRun:
    @workflow.init
    def __init__(self, run: AgentRunInput) -> None:
        self._run = run
        self._status = RunStatus.running
        self._detail: str | None = None
        self._step = 0
        self._usage = Usage()
        self._events: list[RunEvent] = []
        # Conversation messages 0..message_count-1 are the input; replies and tool results follow.
        self._next_seq = run.message_count

    @workflow.run
    async def run(self, run: AgentRunInput) -> RunState:
        for step in range(1, run.max_steps + 1):
            self._step = step
            self._emit(StepStarted, step=step)
            reply = await self._think(step)
            if reply.has_text:
                self._emit(TextProduced, step=step, message_seq=reply.reply_seq)
            await self._act(step, reply.tool_calls)
            self._emit(StepFinished, step=step)
            if not reply.tool_calls:
                return self._finish(RunStatus.completed)
        return self._finish(
            RunStatus.step_limit,
            f"stopped after {run.max_steps} steps (the step limit) with tool calls still pending",
        )

    async def _think(self, step: int) -> LlmStepResult:
        reply = await self._execute(
            CALL_LLM,
            LlmStepInput(
                agent_run_id=self._run.agent_run_id,
                step=step,
                model=self._run.purpose.model,
                tools=self._run.purpose.tools,
                reply_seq=self._take_seq(),
            ),
            LlmStepResult,
            summary=f"LLM call {step} · {self._run.purpose.model}",
            options=CALL_LLM_OPTIONS,
            failure="the model call failed",
        )
        self._usage += reply.usage
        return reply

    async def _act(self, step: int, calls: list[ToolCall]) -> None:
        """Run the step's tool calls concurrently; report their results in the order they were asked."""
        for call in calls:
            self._emit(ToolCallRequested, step=step, call=call)
        outcomes = await asyncio.gather(
            *(
                self._execute(
                    RUN_TOOL,
                    ToolInput(
                        agent_run_id=self._run.agent_run_id, step=step, call=call, result_seq=self._take_seq()
                    ),
                    ToolOutcome,
                    summary=f"tool {call.name}",
                    options=RUN_TOOL_OPTIONS,
                    failure=f"tool {call.name} could not run",
                )
                for call in calls
            )
        )
        for outcome in outcomes:
            self._emit(
                ToolResultReady,
                step=step,
                tool_call_id=outcome.tool_call_id,
                message_seq=outcome.result_seq,
                is_error=outcome.is_error,
            )

    async def _execute(
        self,
        activity: str,
        arg: BaseModel,
        result_type: type[ResultT],
        *,
        summary: str,
        options: dict[str, Any],
        failure: str,
    ) -> ResultT:
        """Run an activity; one that fails past its retry policy ends the run as `failed`.

        Tools turn their own errors into error results for the model (see `run_tool`), so an activity
        failure here means the infrastructure gave out: timeouts, or storage down for too long.
        """
        try:
            return await workflow.execute_activity(
                activity, arg, result_type=result_type, summary=summary, **options
            )
        except ActivityError as err:
            cause = str(err.cause) if err.cause is not None else str(err)
            self._finish(RunStatus.failed, f"{failure}: {cause}")
            # Failing the workflow makes the run show as Failed in the Temporal Web UI as well.
            raise ApplicationError(f"{failure}: {cause}", type="AgentRunFailed", non_retryable=True) from err

    def _take_seq(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def _emit(self, event_type: type, **fields: object) -> None:
        self._events.append(event_type(seq=len(self._events) + 1, **fields))

    def _finish(self, status: RunStatus, detail: str | None = None) -> RunState:
        self._status = status
        self._detail = detail
        self._emit(RunFinished, status=status, detail=detail)
        return self._state()

    def _state(self) -> RunState:
        return RunState(
            agent_run_id=self._run.agent_run_id,
            purpose=self._run.purpose.slug,
            model=self._run.purpose.model,
            status=self._status,
            step=self._step,
            max_steps=self._run.max_steps,
            usage=self._usage,
            last_event_seq=len(self._events),
            detail=self._detail,
        )

    @workflow.query(name=STATE_QUERY)
    def state(self) -> RunState:
        return self._state()

    @workflow.query(name=EVENTS_QUERY)
    def events(self, after: int = 0) -> list[RunEvent]:
        """Events with seq > after, oldest first."""
        return self._events[after:]
