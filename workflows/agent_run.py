"""AgentRun: one agent run as a Temporal workflow.

The loop is observe -> think -> act. Each step is one `call_llm` activity plus one activity per tool call
the model asked for (a local activity for an inline tool, one on the heavy task queue for a heavy tool);
after each step the stopWhen conditions decide whether the run goes on, and a long run continues as new
when Temporal suggests it. Risky tool calls wait for a person's decision, questions wait for the user's
answer and client-side tools wait for the frontend's result (workflows/people.py): all of it durably, on
`workflow.wait_condition`, holding no worker slot.

Progress is kept as numbered `RunEvent`s, served by the `events` query; `state` gives the summary
(workflows/reporting.py keeps the events, the run records and the current details).

Structured output (an agent with `output_type`): `call_llm` judges the final answer and history records
its verdict; an answer that failed goes back to the model with what is wrong, as the next user message,
at most `retries` times, and then the run fails saying why. Runs without an output schema never take that
path, so no patch guards it: their histories replay exactly as before.
"""

import asyncio
from collections import Counter
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, FailureError

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel

    from keel.contracts import (
        CALL_LLM,
        CANCEL_SIGNAL,
        CHECK_STOP_WHEN,
        EVENTS_QUERY,
        OUTPUT_FEEDBACK_PREFIX,
        PREVIOUS_DONE_SIGNAL,
        QUEUE_NEXT_SIGNAL,
        RUN_TOOL,
        SAVE_MESSAGE,
        STATE_QUERY,
        WORKFLOW_TYPE,
        AgentRunInput,
        ApprovalDecision,
        ApprovalRecord,
        BudgetsLeft,
        CancelRequest,
        CarriedRun,
        ErrorType,
        LlmStepInput,
        LlmStepResult,
        Message,
        PendingQuestion,
        PendingToolResult,
        QueuedRun,
        RunEvent,
        RunFinished,
        RunState,
        RunStatus,
        SaveMessageInput,
        StepFinished,
        StepStarted,
        StopWhenInput,
        StopWhenVerdict,
        TextProduced,
        ToolCall,
        ToolCallRequested,
        ToolInput,
        ToolOutcome,
        ToolPolicy,
        ToolResultReady,
        ToolResultSubmission,
        ToolRunNote,
        Usage,
    )
    from workflows.activity_options import (
        CALL_LLM_OPTIONS,
        CHECK_STOP_WHEN_OPTIONS,
        RUN_TOOL_HEAVY_OPTIONS,
        RUN_TOOL_INLINE_OPTIONS,
        SAVE_MESSAGE_OPTIONS,
    )
    from workflows.people import WaitsForPeople
    from workflows.reporting import ReportsProgress
    from workflows.stop_conditions import Progress, Stop, conditions_for, first_stop, time_budget_detail

ResultT = TypeVar("ResultT", bound=BaseModel)


# This release's workflow changes, behind one patch: a queued run can be cancelled before its turn, and hands
# its own queue to the run ahead; telling a run that has closed no longer fails the run that tells it.
_CANCEL_QUEUED = "keel-cancel-queued"
# Errors the run's own data can raise in workflow code: they end the run instead of failing its workflow
# task for ever. Anything else (a bug) still fails the task, so a fixed deploy can carry the run on.
_BROKEN_BY_ITS_DATA = (ArithmeticError, ValueError)


class _RunFailed(Exception):
    """An activity failed past its retry policy; the run ends as `failed`."""


@workflow.defn(name=WORKFLOW_TYPE)
class AgentRun(WaitsForPeople, ReportsProgress):
    @workflow.init
    def __init__(self, run: AgentRunInput) -> None:
        self._run = run
        self._purpose = run.purpose
        self._started_at = workflow.now()
        self._final: RunStatus | None = None
        self._detail: str | None = None
        self._step = 0
        self._usage = Usage()
        self._events: list[RunEvent] = []
        # Conversation messages 0..message_count-1 are the input; replies and tool results follow.
        self._next_seq = run.message_count
        self._tool_runs: Counter[str] = Counter()
        self._approvals: dict[str, ApprovalRecord] = {}
        self._decisions: dict[str, ApprovalDecision] = {}
        self._question: PendingQuestion | None = None
        self._answer: str | None = None
        self._unanswerable_question: str | None = None
        self._client_calls: dict[str, PendingToolResult] = {}
        self._client_results: dict[str, ToolResultSubmission] = {}
        # Set by a cancel signal or the time budget; the step in flight is then cancelled.
        self._interrupt: Stop | None = None
        self._step_task: asyncio.Task[Stop | None] | None = None
        self._thinking_seq: int | None = None
        self._asked_for_tools = False
        # Double texting (enqueue): runs queued behind this one, and whether the one before us is done.
        self._queued: list[str] = []
        self._may_start = run.queued_behind is None
        # Run records (keel/records.py): record_run activities in flight, tool notes waiting to go out with
        # the next one, and what the run's row needs that the state does not keep.
        self._recording = False
        self._records: list[asyncio.Task[None]] = []
        self._tool_notes: list[ToolRunNote] = []
        self._model_route: str | None = None
        self._output_seq: int | None = None
        self._error_type: str | None = None
        # What the run is doing right now, for its one-line current details in the Web UI.
        self._doing: dict[str, str] = {}
        self._tool_calls: dict[str, tuple[int, ToolCall, int]] = {}
        self._continued = 0
        # Whether inline tools and records run as local activities (see run), and the turn they take.
        self._local_activities = False
        self._local_activity_turn = asyncio.Lock()
        # Temporal suggests continue-as-new when the history nears its limits; the run does it between steps.
        self._new_history_suggested = False
        # Structured output: answers that failed validation, whether the next step must fix one, and where
        # the valid answer is stored (its object lives with that reply in PostgreSQL, not in history).
        self._output_failures = 0
        self._fix_output = False
        self._answer_seq: int | None = None
        if run.carried is not None:
            self._resume(run.carried)

    @workflow.run
    async def run(self, run: AgentRunInput) -> RunState:
        # Runs started before run records existed replay without them.
        self._recording = workflow.patched("keel-run-records")
        # Runs started before tools were split into inline and heavy keep running every tool as a regular
        # activity on the agent task queue, and their records as regular activities, as they did then. One
        # patch per release: each costs every new run a marker and a search attribute update in history.
        self._local_activities = workflow.patched("keel-tool-placement")
        try:
            if not self._may_start and (stop := await self._wait_for_my_turn(run)) is not None:
                return await self._end(stop)
            while True:
                self._step += 1
                self._step_task = asyncio.create_task(self._take_step(self._step))
                stop = await self._until_done_or_interrupted(self._step_task)
                if stop is None:
                    progress = self._progress()
                    verdict = await self._agents_own_verdict(progress)
                    stop = first_stop(conditions_for(self._purpose, verdict), progress)
                if stop is not None:
                    return await self._end(stop)
                if self._new_history_suggested:
                    return await self._end(await self._continue_as_new())
        except _RunFailed as failure:
            await self._flush_records()
            await self._release_queue()
            # Failing the workflow makes the run show as Failed in the Temporal Web UI as well.
            raise ApplicationError(
                str(failure), type=ErrorType.agent_run_failed, non_retryable=True
            ) from None
        except asyncio.CancelledError:
            # Temporal's own cancellation (Web UI button, `temporal workflow cancel`): stop the step in
            # flight, record the outcome, and let the workflow end as Canceled.
            await self._cancel_step()
            await self._end(Stop(RunStatus.cancelled, "cancelled through Temporal"))
            raise
        except _BROKEN_BY_ITS_DATA as err:
            # What the run was given broke the loop (a number out of range, say). Retrying the workflow
            # task would fail the same way for ever and leave the run wedged: it ends as failed instead.
            why = f"the run could not go on: {type(err).__name__}: {err}"
            self._error_type = type(err).__name__
            await self._end(Stop(RunStatus.failed, why))
            raise ApplicationError(why, type=ErrorType.agent_run_failed, non_retryable=True) from None

    async def _agents_own_verdict(self, progress: Progress) -> Stop | None:
        """What the agent's own stop_when predicates say after this step. They are app code, so they run in
        a local activity and history keeps their answer; agents without any skip it (no history at all)."""
        if not self._purpose.stop_when:
            return None
        verdict = await self._execute(
            CHECK_STOP_WHEN,
            StopWhenInput(
                names=self._purpose.stop_when,
                step=progress.step,
                usage=progress.usage,
                elapsed_s=progress.elapsed_s,
                asked_for_tools=progress.asked_for_tools,
                tool_calls=progress.tool_calls,
                unanswerable_question=progress.unanswerable_question,
            ),
            StopWhenVerdict,
            summary="stop_when",
            options=CHECK_STOP_WHEN_OPTIONS,
            failure="the agent's stop_when predicates could not be checked",
            local=self._local_activities,
        )
        if verdict.reason is None:
            return None
        if verdict.failed:
            return Stop(RunStatus.failed, f"the stop_when predicate {verdict.reason}")
        return Stop(RunStatus.completed, verdict.reason)

    async def _wait_for_my_turn(self, run: AgentRunInput) -> Stop | None:
        """Double texting (enqueue): wait until the run ahead has finished. A cancel ends a queued run at
        once (runs queued before this release wait for their turn first, as they did then)."""
        self._detail = f"queued behind {run.queued_behind}"
        self._describe()
        if workflow.patched(_CANCEL_QUEUED):
            await workflow.wait_condition(lambda: self._may_start or self._interrupt is not None)
        else:
            await workflow.wait_condition(lambda: self._may_start)
        self._detail = None
        return self._interrupt if not self._may_start else None

    # --- continue-as-new: a long run goes on in a fresh history, between two steps ---

    async def _continue_as_new(self) -> Stop:
        """Hand the run's state to a new Temporal run once every handler has finished; the workflow id,
        and so the agent_run_id, every query, signal and stream, stays the same. Returns only when a cancel
        arrived meanwhile, with the stop it asks for."""
        await workflow.wait_condition(workflow.all_handlers_finished)
        if self._interrupt is not None:
            return self._interrupt
        await self._flush_records()
        workflow.logger.info(
            "continuing as new after step %d (%d history events)",
            self._step,
            workflow.info().get_current_history_length(),
            extra={"agent_run_id": self._run.agent_run_id, "step": self._step},
        )
        workflow.continue_as_new(
            self._run.model_copy(update={"queued_behind": None, "carried": self._carry()})
        )

    def _carry(self) -> CarriedRun:
        return CarriedRun(
            started_at=self._started_at,
            step=self._step,
            usage=self._usage,
            events=self._events,
            next_seq=self._next_seq,
            tool_runs=dict(self._tool_runs),
            approvals=list(self._approvals.values()),
            model_route=self._model_route,
            output_seq=self._output_seq,
            asked_for_tools=self._asked_for_tools,
            queued=self._queued,
            continued=self._continued + 1,
            output_failures=self._output_failures,
            fix_output=self._fix_output,
        )

    def _resume(self, carried: CarriedRun) -> None:
        self._started_at = carried.started_at
        self._step = carried.step
        self._usage = carried.usage
        self._events = list(carried.events)
        self._next_seq = carried.next_seq
        self._tool_runs = Counter(carried.tool_runs)
        self._approvals = {r.tool_call_id: r for r in carried.approvals}
        self._model_route = carried.model_route
        self._output_seq = carried.output_seq
        self._asked_for_tools = carried.asked_for_tools
        self._queued = list(carried.queued)
        self._continued = carried.continued
        self._output_failures = carried.output_failures
        self._fix_output = carried.fix_output
        self._may_start = True

    async def _end(self, stop: Stop) -> RunState:
        state = self._finish(stop)
        await self._flush_records()
        await self._release_queue()
        return state

    async def _release_queue(self) -> None:
        """Tell the runs queued behind this one that it is over. Each starts, unless this run ended before
        its own turn (cancelled while queued): then they move up behind the run this one waited for, keeping
        their place in the chat's queue. Signals that arrive while the workflow completes make Temporal
        retry the completion, so no queued run is missed."""
        await workflow.wait_condition(workflow.all_handlers_finished)
        ahead = self._run.queued_behind if not self._may_start and self._queued else None
        if ahead is not None and not workflow.patched(_CANCEL_QUEUED):
            ahead = None  # runs from before this release let their queue go on, as they did then
        for agent_run_id in self._queued:
            if ahead is not None and await self._signal(
                ahead, QUEUE_NEXT_SIGNAL, QueuedRun(agent_run_id=agent_run_id)
            ):
                continue
            await self._signal(agent_run_id, PREVIOUS_DONE_SIGNAL)

    async def _signal(self, agent_run_id: str, name: str, arg: BaseModel | None = None) -> bool:
        """Signal another run of the chat; False when it has closed (Temporal refuses the signal), which
        for a run that would be told to go on means there is nothing left to tell."""
        handle = workflow.get_external_workflow_handle(agent_run_id)
        try:
            await (handle.signal(name) if arg is None else handle.signal(name, arg))
        except FailureError:
            if not workflow.patched(_CANCEL_QUEUED):
                raise  # before this release a closed run failed the one telling it
            return False
        return True

    async def _until_done_or_interrupted(self, task: "asyncio.Task[Stop | None]") -> Stop | None:
        """The step's own outcome, or the interrupt (cancel signal, time budget) that cut it short."""
        remaining = self._seconds_left()
        try:
            await workflow.wait_condition(
                lambda: task.done() or self._interrupt is not None,
                timeout=timedelta(seconds=remaining) if remaining is not None else None,
            )
        except TimeoutError:
            self._interrupt = Stop(
                RunStatus.budget_exceeded, time_budget_detail(self._purpose.budgets.max_duration_s or 0)
            )
        if self._interrupt is None:
            return task.result()
        await self._cancel_step()
        return self._interrupt

    async def _cancel_step(self) -> None:
        if self._step_task is not None and not self._step_task.done():
            self._step_task.cancel()
            # Wait for the activities to stop, so what they produced so far is stored.
            await asyncio.gather(self._step_task, return_exceptions=True)

    # --- one step: think, then act ---

    async def _take_step(self, step: int) -> Stop | None:
        self._emit(StepStarted, step=step)
        reply = await self._think(step)
        if reply.has_text:
            self._emit(TextProduced, step=step, message_seq=reply.reply_seq)
        for call in reply.tool_calls:
            self._emit(ToolCallRequested, step=step, call=call)
        await asyncio.gather(
            *(self._act(step, call, reply.policies.get(call.id, ToolPolicy())) for call in reply.tool_calls)
        )
        stop = await self._judged_answer(reply) if reply.output_status is not None else None
        self._emit(StepFinished, step=step)
        self._asked_for_tools = bool(reply.tool_calls) or self._fix_output
        return stop

    async def _judged_answer(self, reply: LlmStepResult) -> Stop | None:
        """A final answer that had to be a structured object, as call_llm judged it: the run's answer, or
        sent back to the model with what is wrong (the run then owes another answer, as after a tool call),
        or, past the agent's retries, the run's failure."""
        spec = self._purpose.output
        if reply.output_status == "valid" or spec is None:
            self._answer_seq, self._fix_output = reply.reply_seq, False
            return None
        self._output_failures += 1
        why = reply.output_error or "the answer is not valid"
        tries = f"{self._output_failures} attempt(s)"
        if self._output_failures > spec.retries:
            return self._answer_failed(
                f"the final answer did not validate as {spec.name} after {tries}: {why}"
            )
        if self._step >= self._purpose.budgets.max_steps:
            return self._answer_failed(
                f"the final answer did not validate as {spec.name} ({tries}) and the step limit leaves no "
                f"step to fix it: {why}"
            )
        feedback = Message(
            role="user",
            content=f"{OUTPUT_FEEDBACK_PREFIX} ({spec.name}): {why}\nReply again with only the corrected "
            "final answer: one JSON object that matches the schema.",
        )
        await self._execute(
            SAVE_MESSAGE,
            SaveMessageInput(agent_run_id=self._run.agent_run_id, seq=self._take_seq(), message=feedback),
            ToolOutcome,
            summary=f"output feedback {self._output_failures}",
            options=SAVE_MESSAGE_OPTIONS,
            failure="could not store the output's validation errors",
        )
        self._fix_output = True
        return None

    def _answer_failed(self, detail: str) -> Stop:
        self._error_type = "OutputValidationFailed"
        self._fix_output = False
        return Stop(RunStatus.failed, detail)

    async def _think(self, step: int) -> LlmStepResult:
        self._thinking_seq = self._take_seq()
        self._set_doing("think", f"LLM call {step} · {self._purpose.model}: waiting for the model")
        reply = await self._execute(
            CALL_LLM,
            LlmStepInput(
                agent_run_id=self._run.agent_run_id,
                step=step,
                model=self._purpose.model,
                tools=self._purpose.tools,
                client_tools=self._run.client_tools,
                reply_seq=self._thinking_seq,
                step_event_seq=len(self._events),
                purpose=self._purpose.slug,
                output=self._purpose.output,
                force_output=self._fix_output,
            ),
            LlmStepResult,
            summary=f"LLM call {step} · {self._purpose.model}",
            options=CALL_LLM_OPTIONS,
            failure="the model call failed",
        )
        self._set_doing("think", None)
        self._thinking_seq = None
        self._usage += reply.usage
        # Read here, where a regular activity's result has just arrived with a new workflow task, live and
        # on replay alike. It used to be read at the end of the step, often right after an inline tool's
        # local activity; one replay of a long run failed there under load (not reproduced since), and
        # this point leaves local activity timing out of the decision.
        self._new_history_suggested = workflow.info().is_continue_as_new_suggested()
        self._model_route = reply.model
        if reply.has_text:
            self._output_seq = reply.reply_seq
        return reply

    async def _act(self, step: int, call: ToolCall, policy: ToolPolicy) -> None:
        seq = self._take_seq()
        if policy.handled_by == "workflow":
            outcome = await self._ask_user(step, call, seq)
        elif policy.handled_by == "nobody":
            offered = ", ".join(self._purpose.tools + [t.name for t in self._run.client_tools])
            why = f"there is no tool named {call.name!r}; the tools are: {offered}"
            self._note_tool(step, call, seq, "not_run", error_message=why)
            outcome = await self._save_result(call, seq, why)
        elif policy.max_calls_per_run is not None and self._tool_runs[call.name] >= policy.max_calls_per_run:
            why = f"{call.name} may run at most {policy.max_calls_per_run} time(s) per run; it already ran"
            self._note_tool(step, call, seq, "not_run", error_message=why)
            outcome = await self._save_result(call, seq, why)
        elif policy.handled_by == "client":
            outcome = await self._client_result(step, call, seq)
        elif policy.needs_approval and not (record := await self._approval(step, call, seq)).approved:
            why = "the approval expired" if record.expired else f"denied by {record.approver or 'a person'}"
            reason = f": {record.reason}" if record.reason else ""
            outcome = await self._save_result(
                call, seq, f"{call.name} did not run: {why}{reason}", denied=True
            )
        else:
            self._tool_runs[call.name] += 1
            self._set_doing(call.id, f"running tool {call.name}")
            outcome = await self._execute(
                RUN_TOOL,
                ToolInput(
                    agent_run_id=self._run.agent_run_id,
                    step=step,
                    call=call,
                    result_seq=seq,
                    purpose=self._purpose.slug,
                ),
                ToolOutcome,
                summary=f"tool {call.name}",
                failure=f"tool {call.name} could not run",
                **self._tool_placement_options(policy, seq),
            )
            self._set_doing(call.id, None)
        if outcome is not None:
            self._emit(
                ToolResultReady,
                step=step,
                tool_call_id=call.id,
                message_seq=outcome.result_seq,
                is_error=outcome.is_error,
                denied=outcome.denied,
            )

    def _tool_placement_options(self, policy: ToolPolicy, seq: int) -> dict[str, Any]:
        if not self._local_activities:
            return {"options": RUN_TOOL_HEAVY_OPTIONS}
        # The result's seq is unique in the run, across continue-as-new too: with the workflow id it makes
        # the tool's idempotency key, the same for every retry and re-execution of this call.
        activity_id = f"tool-{seq}"
        if policy.heavy:
            task_queue = self._run.heavy_task_queue
            return {"options": RUN_TOOL_HEAVY_OPTIONS, "task_queue": task_queue, "activity_id": activity_id}
        return {"options": RUN_TOOL_INLINE_OPTIONS, "local": True, "activity_id": activity_id}

    async def _save_result(
        self,
        call: ToolCall,
        seq: int,
        content: str,
        *,
        is_error: bool = True,
        denied: bool = False,
        output_schema: dict[str, Any] | None = None,
    ) -> ToolOutcome:
        message = Message(
            role="tool", content=content, tool_call_id=call.id, name=call.name, is_error=is_error
        )
        outcome = await self._execute(
            SAVE_MESSAGE,
            SaveMessageInput(
                agent_run_id=self._run.agent_run_id, seq=seq, message=message, output_schema=output_schema
            ),
            ToolOutcome,
            summary=f"result of {call.name}",
            options=SAVE_MESSAGE_OPTIONS,
            failure="could not store a tool result",
        )
        return outcome.model_copy(update={"denied": denied})

    @workflow.signal(name=CANCEL_SIGNAL)
    def cancel_signal(self, request: CancelRequest) -> None:
        if self._final is None and self._interrupt is None:
            reason = f": {request.reason}" if request.reason else ""
            self._interrupt = Stop(RunStatus.cancelled, f"cancelled{reason}")

    @workflow.signal(name=QUEUE_NEXT_SIGNAL)
    def queue_next(self, queued: QueuedRun) -> None:
        self._queued.append(queued.agent_run_id)

    @workflow.signal(name=PREVIOUS_DONE_SIGNAL)
    def previous_run_finished(self) -> None:
        self._may_start = True

    # --- queries ---

    @workflow.query(name=STATE_QUERY)
    def state(self) -> RunState:
        budgets = self._purpose.budgets
        left = self._seconds_left()
        return RunState(
            agent_run_id=self._run.agent_run_id,
            purpose=self._purpose.slug,
            model=self._purpose.model,
            status=self._status(),
            step=self._step,
            budgets=budgets,
            budgets_left=BudgetsLeft(
                steps=max(0, budgets.max_steps - self._step),
                tokens=None
                if budgets.max_tokens is None
                else max(0, budgets.max_tokens - self._usage.total_tokens),
                cost_usd=None
                if budgets.max_cost_usd is None
                else max(0.0, budgets.max_cost_usd - self._usage.cost_usd),
                seconds=left,
            ),
            usage=self._usage,
            last_event_seq=len(self._events),
            started_at=self._started_at,
            chat_id=self._run.chat_id,
            user_id=self._run.user_id,
            detail=self._detail,
            pending_approvals=self._pending_approvals(),
            pending_question=self._question,
            pending_tool_results=list(self._client_calls.values()),
            approvals=list(self._approvals.values()),
            output_seq=self._answer_seq,
        )

    @workflow.query(name=EVENTS_QUERY)
    def events(self, after: int = 0) -> list[RunEvent]:
        """Events with seq > after, oldest first."""
        return self._events[after:]

    # --- bookkeeping ---

    async def _execute(
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
        `failed`.

        Tools turn their own errors into error results for the model (see `run_tool`), so an activity
        failure here means the infrastructure gave out: timeouts, or storage down for too long.
        """
        try:
            return await self._run_activity(
                activity, arg, local=local, result_type=result_type, summary=summary, **options, **more
            )
        except ActivityError as err:
            if isinstance(err.cause, CancelledError):
                raise asyncio.CancelledError() from err
            cause = str(err.cause) if err.cause is not None else str(err)
            self._error_type = getattr(err.cause, "type", None) or type(err.cause or err).__name__
            self._finish(Stop(RunStatus.failed, f"{failure}: {cause}"))
            raise _RunFailed(f"{failure}: {cause}") from err

    async def _run_activity(self, activity: str, arg: BaseModel, *, local: bool, **options: Any) -> Any:
        """Every activity the run starts goes through here: a regular one, or a local one in its turn.

        One local activity at a time: the SDK (1.35) resumes concurrent local activities in the order they
        finished on a first run but in the order they were scheduled on replay, so two in flight at once
        (parallel inline tools, a record sent meanwhile) could replay differently. They are cheap; taking
        turns costs little.
        """
        if not local:
            return await workflow.execute_activity(activity, arg, **options)
        async with self._local_activity_turn:
            return await workflow.execute_local_activity(activity, arg, **options)

    def _status(self) -> RunStatus:
        if self._final is not None:
            return self._final
        if self._pending_approvals():
            return RunStatus.waiting_for_approval
        if self._question is not None:
            return RunStatus.waiting_for_input
        if self._client_calls:
            return RunStatus.waiting_for_tool_result
        return RunStatus.running

    def _progress(self) -> Progress:
        return Progress(
            step=self._step,
            usage=self._usage,
            elapsed_s=(workflow.now() - self._started_at).total_seconds(),
            asked_for_tools=self._asked_for_tools,
            tool_calls=dict(self._tool_runs),
            unanswerable_question=self._unanswerable_question,
        )

    def _seconds_left(self) -> float | None:
        limit = self._purpose.budgets.max_duration_s
        if limit is None:
            return None
        return max(0.0, limit - (workflow.now() - self._started_at).total_seconds())

    def _take_seq(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def _finish(self, stop: Stop) -> RunState:
        if self._final is None:
            self._final, self._detail = stop.status, stop.detail
            # A reply cut short by cancellation keeps the words written so far, stored at this seq.
            partial = (
                self._thinking_seq
                if stop.status in (RunStatus.cancelled, RunStatus.budget_exceeded)
                else None
            )
            if partial is not None:
                self._output_seq = partial
            # Whatever still waits for someone ends with the run.
            now = workflow.now()
            for record in self._approvals.values():
                if record.decided_at is None:
                    self._note_tool_id(record.tool_call_id, "cancelled", approval=record, finished_at=now)
            if self._question is not None:
                self._note_tool_id(self._question.tool_call_id, "cancelled", finished_at=now)
            for pending in self._client_calls.values():
                self._note_tool_id(pending.tool_call_id, "cancelled", finished_at=now)
            self._emit(
                RunFinished,
                status=stop.status,
                detail=stop.detail,
                partial_message_seq=partial,
                output_seq=self._answer_seq,
            )
        return self.state()
