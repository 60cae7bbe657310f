"""AgentRun: one agent run as a Temporal workflow.

The loop is observe -> think -> act. Each step is one `call_llm` activity plus one activity per tool call
the model asked for; after each step the stopWhen conditions decide whether the run goes on. Risky tool
calls wait for a person's decision, questions wait for the user's answer and client-side tools wait for
the frontend's result: all of it durably, on `workflow.wait_condition`, holding no worker slot.

Progress is kept as numbered `RunEvent`s, served by the `events` query; `state` gives the summary.
"""

import asyncio
import hashlib
import json
from collections import Counter
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel

    from keel.contracts import (
        ANSWER_SIGNAL,
        ANSWER_UPDATE,
        APPROVAL_SIGNAL,
        APPROVAL_UPDATE,
        CALL_LLM,
        CANCEL_SIGNAL,
        EVENTS_QUERY,
        PREVIOUS_DONE_SIGNAL,
        QUEUE_NEXT_SIGNAL,
        RUN_TOOL,
        SAVE_MESSAGE,
        STATE_QUERY,
        TOOL_RESULT_SIGNAL,
        TOOL_RESULT_UPDATE,
        WORKFLOW_TYPE,
        AgentRunInput,
        ApprovalDecided,
        ApprovalDecision,
        ApprovalRecord,
        ApprovalRequested,
        BudgetsLeft,
        CancelRequest,
        ClientToolRequested,
        LlmStepInput,
        LlmStepResult,
        Message,
        PendingQuestion,
        PendingToolResult,
        QuestionAsked,
        QueuedRun,
        RunEvent,
        RunFinished,
        RunState,
        RunStatus,
        SaveMessageInput,
        StepFinished,
        StepStarted,
        TextProduced,
        ToolCall,
        ToolCallRequested,
        ToolInput,
        ToolOutcome,
        ToolPolicy,
        ToolResultReady,
        ToolResultSubmission,
        Usage,
        UserAnswer,
    )
    from workflows.activity_options import CALL_LLM_OPTIONS, RUN_TOOL_OPTIONS, SAVE_MESSAGE_OPTIONS
    from workflows.stop_conditions import Progress, Stop, conditions_for, first_stop, time_budget_detail

ResultT = TypeVar("ResultT", bound=BaseModel)


class _RunFailed(Exception):
    """An activity failed past its retry policy; the run ends as `failed`."""


@workflow.defn(name=WORKFLOW_TYPE)
class AgentRun:
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

    @workflow.run
    async def run(self, run: AgentRunInput) -> RunState:
        conditions = conditions_for(self._purpose)
        try:
            if not self._may_start:
                self._detail = f"queued behind {run.queued_behind}"
                await workflow.wait_condition(lambda: self._may_start)
                self._detail = None
            while True:
                self._step += 1
                self._step_task = asyncio.create_task(self._take_step(self._step))
                stop = await self._until_done_or_interrupted(self._step_task)
                if stop is None:
                    stop = first_stop(conditions, self._progress())
                if stop is not None:
                    return await self._end(stop)
        except _RunFailed as failure:
            await self._release_queue()
            # Failing the workflow makes the run show as Failed in the Temporal Web UI as well.
            raise ApplicationError(str(failure), type="AgentRunFailed", non_retryable=True) from None
        except asyncio.CancelledError:
            # Temporal's own cancellation (Web UI button, `temporal workflow cancel`): stop the step in
            # flight, record the outcome, and let the workflow end as Canceled.
            await self._cancel_step()
            await self._end(Stop(RunStatus.cancelled, "cancelled through Temporal"))
            raise

    async def _end(self, stop: Stop) -> RunState:
        state = self._finish(stop)
        await self._release_queue()
        return state

    async def _release_queue(self) -> None:
        """Tell the runs queued behind this one to start. Signals that arrive while the workflow completes
        make Temporal retry the completion, so no queued run is missed."""
        await workflow.wait_condition(workflow.all_handlers_finished)
        for agent_run_id in self._queued:
            await workflow.get_external_workflow_handle(agent_run_id).signal(PREVIOUS_DONE_SIGNAL)

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
        self._emit(StepFinished, step=step)
        self._asked_for_tools = bool(reply.tool_calls)
        return None

    async def _think(self, step: int) -> LlmStepResult:
        self._thinking_seq = self._take_seq()
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
            ),
            LlmStepResult,
            summary=f"LLM call {step} · {self._purpose.model}",
            options=CALL_LLM_OPTIONS,
            failure="the model call failed",
        )
        self._thinking_seq = None
        self._usage += reply.usage
        return reply

    async def _act(self, step: int, call: ToolCall, policy: ToolPolicy) -> None:
        seq = self._take_seq()
        if policy.handled_by == "workflow":
            outcome = await self._ask_user(step, call, seq)
        elif policy.handled_by == "nobody":
            offered = ", ".join(self._purpose.tools + [t.name for t in self._run.client_tools])
            outcome = await self._save_result(
                call, seq, f"there is no tool named {call.name!r}; the tools are: {offered}"
            )
        elif policy.max_calls_per_run is not None and self._tool_runs[call.name] >= policy.max_calls_per_run:
            outcome = await self._save_result(
                call,
                seq,
                f"{call.name} may run at most {policy.max_calls_per_run} time(s) per run; it already ran",
            )
        elif policy.handled_by == "client":
            outcome = await self._client_result(step, call, seq)
        elif policy.needs_approval and not (record := await self._approval(step, call)).approved:
            why = "the approval expired" if record.expired else f"denied by {record.approver or 'a person'}"
            reason = f": {record.reason}" if record.reason else ""
            outcome = await self._save_result(
                call, seq, f"{call.name} did not run: {why}{reason}", denied=True
            )
        else:
            self._tool_runs[call.name] += 1
            outcome = await self._execute(
                RUN_TOOL,
                ToolInput(agent_run_id=self._run.agent_run_id, step=step, call=call, result_seq=seq),
                ToolOutcome,
                summary=f"tool {call.name}",
                options=RUN_TOOL_OPTIONS,
                failure=f"tool {call.name} could not run",
            )
        if outcome is not None:
            self._emit(
                ToolResultReady,
                step=step,
                tool_call_id=call.id,
                message_seq=outcome.result_seq,
                is_error=outcome.is_error,
                denied=outcome.denied,
            )

    # --- waiting for people ---

    async def _approval(self, step: int, call: ToolCall) -> ApprovalRecord:
        now = workflow.now()
        timeout = timedelta(seconds=self._purpose.approval_timeout_s)
        record = ApprovalRecord(
            tool_call_id=call.id,
            tool_name=call.name,
            arguments=call.arguments,
            arguments_sha256=_sha256(call.arguments),
            requested_at=now,
            expires_at=now + timeout,
        )
        self._approvals[call.id] = record
        self._emit(ApprovalRequested, step=step, tool_call_id=call.id, expires_at=record.expires_at)
        try:
            await workflow.wait_condition(lambda: call.id in self._decisions, timeout=timeout)
            decision = self._decisions[call.id]
            record.approved, record.reason, record.approver = (
                decision.approved,
                decision.reason,
                decision.approver,
            )
        except TimeoutError:
            record.approved, record.expired = False, True
        record.decided_at = workflow.now()
        self._emit(
            ApprovalDecided, step=step, tool_call_id=call.id, approved=record.approved, expired=record.expired
        )
        return record

    async def _ask_user(self, step: int, call: ToolCall, seq: int) -> ToolOutcome | None:
        question = str(call.arguments.get("question") or "").strip() or "(the agent asked without a question)"
        if not self._purpose.allow_questions:
            self._unanswerable_question = question
            return None
        self._question = PendingQuestion(tool_call_id=call.id, question=question)
        self._emit(QuestionAsked, step=step, tool_call_id=call.id, question=question)
        timeout = timedelta(seconds=self._purpose.approval_timeout_s)
        try:
            await workflow.wait_condition(lambda: self._answer is not None, timeout=timeout)
        except TimeoutError:
            self._question = None
            self._unanswerable_question = question
            return None
        answer, self._answer, self._question = self._answer or "", None, None
        return await self._save_result(call, seq, answer, is_error=False)

    async def _client_result(self, step: int, call: ToolCall, seq: int) -> ToolOutcome:
        self._client_calls[call.id] = PendingToolResult(
            tool_call_id=call.id, tool_name=call.name, arguments=call.arguments
        )
        self._emit(ClientToolRequested, step=step, tool_call_id=call.id)
        timeout = timedelta(seconds=self._purpose.approval_timeout_s)
        try:
            await workflow.wait_condition(lambda: call.id in self._client_results, timeout=timeout)
        except TimeoutError:
            del self._client_calls[call.id]
            return await self._save_result(
                call, seq, f"the client did not return a result for {call.name} in time"
            )
        del self._client_calls[call.id]
        submitted = self._client_results[call.id]
        if submitted.error is not None:
            return await self._save_result(call, seq, submitted.error)
        content = submitted.output if isinstance(submitted.output, str) else json.dumps(submitted.output)
        schema = next((t.output_schema for t in self._run.client_tools if t.name == call.name), None)
        return await self._save_result(call, seq, content, is_error=False, output_schema=schema)

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

    # --- signals and updates: the same handlers serve the CLI (signals) and the gateway (updates) ---

    @workflow.signal(name=APPROVAL_SIGNAL)
    def approval_signal(self, decision: ApprovalDecision) -> None:
        if self._approval_problem(decision) is None:
            self._decisions[decision.tool_call_id] = decision

    @workflow.update(name=APPROVAL_UPDATE)
    async def decide_approval(self, decision: ApprovalDecision) -> ApprovalRecord:
        self._decisions[decision.tool_call_id] = decision
        record = self._approvals[decision.tool_call_id]
        await workflow.wait_condition(lambda: record.decided_at is not None)
        return record

    @decide_approval.validator
    def _validate_approval(self, decision: ApprovalDecision) -> None:
        if problem := self._approval_problem(decision):
            raise ApplicationError(problem[1], type=problem[0])

    def _approval_problem(self, decision: ApprovalDecision) -> tuple[str, str] | None:
        record = self._approvals.get(decision.tool_call_id)
        if record is None:
            return "NotFound", f"no approval was requested for tool call {decision.tool_call_id!r}"
        if record.decided_at is not None or decision.tool_call_id in self._decisions:
            return "Conflict", f"tool call {decision.tool_call_id!r} was already decided"
        return None

    @workflow.signal(name=ANSWER_SIGNAL)
    def answer_signal(self, answer: UserAnswer) -> None:
        if self._question is not None and self._answer is None:
            self._answer = answer.text

    @workflow.update(name=ANSWER_UPDATE)
    def submit_answer(self, answer: UserAnswer) -> None:
        self._answer = answer.text

    @submit_answer.validator
    def _validate_answer(self, answer: UserAnswer) -> None:
        if self._question is None or self._answer is not None:
            raise ApplicationError("the run is not waiting for an answer", type="Conflict")

    @workflow.signal(name=TOOL_RESULT_SIGNAL)
    def tool_result_signal(self, result: ToolResultSubmission) -> None:
        if self._tool_result_problem(result) is None:
            self._client_results[result.tool_call_id] = result

    @workflow.update(name=TOOL_RESULT_UPDATE)
    def submit_tool_result(self, result: ToolResultSubmission) -> None:
        self._client_results[result.tool_call_id] = result

    @submit_tool_result.validator
    def _validate_tool_result(self, result: ToolResultSubmission) -> None:
        if problem := self._tool_result_problem(result):
            raise ApplicationError(problem[1], type=problem[0])

    def _tool_result_problem(self, result: ToolResultSubmission) -> tuple[str, str] | None:
        if result.tool_call_id in self._client_results:
            return "Conflict", f"tool call {result.tool_call_id!r} already has a result"
        if result.tool_call_id not in self._client_calls:
            return "NotFound", f"the run is not waiting for a result of tool call {result.tool_call_id!r}"
        return None

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
            pending_approvals=[r for r in self._approvals.values() if r.decided_at is None],
            pending_question=self._question,
            pending_tool_results=list(self._client_calls.values()),
            approvals=list(self._approvals.values()),
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
            if isinstance(err.cause, CancelledError):
                raise asyncio.CancelledError() from err
            cause = str(err.cause) if err.cause is not None else str(err)
            self._finish(Stop(RunStatus.failed, f"{failure}: {cause}"))
            raise _RunFailed(f"{failure}: {cause}") from err

    def _status(self) -> RunStatus:
        if self._final is not None:
            return self._final
        if any(r.decided_at is None for r in self._approvals.values()):
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

    def _emit(self, event_type: type, **fields: object) -> None:
        self._events.append(event_type(seq=len(self._events) + 1, **fields))

    def _finish(self, stop: Stop) -> RunState:
        if self._final is None:
            self._final, self._detail = stop.status, stop.detail
            # A reply cut short by cancellation keeps the words written so far, stored at this seq.
            partial = (
                self._thinking_seq
                if stop.status in (RunStatus.cancelled, RunStatus.budget_exceeded)
                else None
            )
            self._emit(RunFinished, status=stop.status, detail=stop.detail, partial_message_seq=partial)
        return self.state()


def _sha256(arguments: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(arguments, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
