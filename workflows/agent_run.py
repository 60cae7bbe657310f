"""AgentRun: one agent run as a Temporal workflow.

The loop is observe -> think -> act. Each step is one `call_llm` activity plus one activity per tool call
the model asked for (workflows/tool_calls.py: a local activity for an inline tool, one on the heavy task
queue for a heavy tool); after each step the stopWhen conditions decide whether the run goes on, and a long
run continues as new when Temporal suggests it. Risky tool calls wait for a person's decision, questions
wait for the user's answer and client-side tools wait for the frontend's result (workflows/people.py): all
of it durably, on `workflow.wait_condition`, holding no worker slot.

The run is composed of small collaborators, each owning its state: the ledger (step, usage, seqs), the
people desk, the reporter (numbered `RunEvent`s, served by the `events` query, and the status), the
recorder (run records), the chat queue (double texting), the output judge (structured output) and the
activity runner. Temporal wants the signal, update and query handlers on the workflow class: they are
here, and hand over to the collaborator that owns what they touch.
"""

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from keel.agent import Progress
    from keel.contracts import (
        ANSWER_SIGNAL,
        ANSWER_UPDATE,
        APPROVAL_SIGNAL,
        APPROVAL_UPDATE,
        CALL_LLM,
        CANCEL_SIGNAL,
        CHECK_STOP_WHEN,
        EVENTS_QUERY,
        PREVIOUS_DONE_SIGNAL,
        QUEUE_NEXT_SIGNAL,
        STATE_QUERY,
        TOOL_RESULT_SIGNAL,
        TOOL_RESULT_UPDATE,
        WORKFLOW_TYPE,
        AgentRunInput,
        ApprovalDecision,
        ApprovalRecord,
        CancelRequest,
        CarriedRun,
        ErrorType,
        FinalRunState,
        LlmStepInput,
        LlmStepResult,
        QueuedRun,
        RunEvent,
        RunFinished,
        RunState,
        RunStatus,
        StepFinished,
        StepStarted,
        StopWhenInput,
        StopWhenVerdict,
        TextProduced,
        ToolCallRequested,
        ToolPolicy,
        ToolResultSubmission,
        ToolSpec,
        UserAnswer,
    )
    from workflows.activity_options import CALL_LLM_LOCAL_OPTIONS, CALL_LLM_OPTIONS, CHECK_STOP_WHEN_OPTIONS
    from workflows.activity_runner import ActivityRunner, RunFailed
    from workflows.capacity import CapacityGate
    from workflows.chat_queue import ChatQueue
    from workflows.handoffs import Handoffs
    from workflows.ledger import RunLedger
    from workflows.mcp_tools import MCPToolbox
    from workflows.people import PeopleDesk, Refusal
    from workflows.reporting import RunReporter
    from workflows.run_notes import RunNotes
    from workflows.stop_conditions import Stop, conditions_for, first_stop, time_budget_detail
    from workflows.structured_output import OUTPUT_VALIDATION_FAILED, OutputJudge
    from workflows.sub_agents import SubAgents
    from workflows.tool_calls import ToolCalls
    from workflows.webhooks import RunWebhooks

# Errors the run's own data can raise in workflow code: they end the run instead of failing its workflow
# task for ever. Anything else (a bug) still fails the task, so a fixed deploy can carry the run on.
_BROKEN_BY_ITS_DATA = (ArithmeticError, ValueError)
# How long a model call interrupted by the gateway's cancel waits for that cancel's signal (sent before it).
_CANCEL_FOLLOWS = timedelta(seconds=60)


@workflow.defn(name=WORKFLOW_TYPE)
class AgentRun:
    @workflow.init
    def __init__(self, run: AgentRunInput) -> None:
        self._run = run
        self._purpose = run.purpose
        self._ledger = RunLedger(run)
        self._desk = PeopleDesk(run)
        self._queue = ChatQueue(run)
        self._reporter = RunReporter(run, self._ledger, self._desk, self._queue)
        # Runs with webhook endpoints start a delivery at each event a backend hears of (workflows/webhooks.py).
        self._webhooks = RunWebhooks(run, lambda: self._purpose.slug)
        self._reporter.listener = self._webhooks.on_event
        self._activities = ActivityRunner(fail_run=self._fail)
        self._recorder = RunNotes(run, self._ledger, self._reporter, self._activities)
        self._capacity = CapacityGate(run, self._reporter, self._recorder, self._activities)
        self._output = OutputJudge(run, self._ledger, self._activities)
        self._mcp = MCPToolbox(run)
        self._handoffs = Handoffs(run, self._ledger, self._reporter, self._activities, self._mcp)
        self._sub_agents = SubAgents(
            run,
            self._ledger,
            self._reporter,
            self._activities,
            list(run.carried.sub_runs if run.carried else []),
        )
        self._tool_calls = ToolCalls(
            run,
            self._ledger,
            self._desk,
            self._reporter,
            self._recorder,
            self._activities,
            self._mcp,
            self._sub_agents,
            self._handoffs,
        )
        # Set by a cancel signal or the time budget; the step in flight is then cancelled.
        self._interrupt: Stop | None = None
        self._step_task: asyncio.Task[Stop | None] | None = None
        # Temporal suggests continue-as-new when the history nears its limits; the run does it between steps.
        self._new_history_suggested = False

    @workflow.run
    async def run(self, run: AgentRunInput) -> RunState:
        # Runs started before run records existed replay without them.
        self._recorder.recording = workflow.patched("keel-run-records")
        # Runs started before tools were split into inline and heavy keep running every tool as a regular
        # activity on the agent task queue, and their records as regular activities, as they did then. One
        # patch per release: each costs every new run a marker and a search attribute update in history.
        self._activities.local_allowed = workflow.patched("keel-tool-placement")
        # Runs started before model calls ran as local activities keep calling the model in regular ones.
        self._llm_local = workflow.patched("keel-local-llm-calls")
        try:
            if not self._queue.may_start and (stop := await self._wait_for_my_turn()) is not None:
                return await self._end(stop)
            if self._mcp.must_list:
                # Only agents with MCP servers: other runs issue exactly the commands they did before.
                await self._mcp.list(self._activities)
            while True:
                step = self._ledger.begin_step()
                self._step_task = asyncio.create_task(self._take_step(step))
                stop = await self._until_done_or_interrupted(self._step_task)
                if stop is None:
                    progress = self._ledger.progress(self._desk.unanswerable_question)
                    verdict = await self._agents_own_verdict(progress)
                    stop = first_stop(conditions_for(self._purpose, verdict), progress)
                if stop is not None:
                    return await self._end(stop)
                if self._new_history_suggested:
                    return await self._end(await self._continue_as_new())
        except RunFailed as failure:
            await self._recorder.flush()
            await self._queue.release()
            await self._webhooks.flush()
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
            self._reporter.error_type = type(err).__name__
            await self._end(Stop(RunStatus.failed, why))
            raise ApplicationError(why, type=ErrorType.agent_run_failed, non_retryable=True) from None

    async def _agents_own_verdict(self, progress: Progress) -> Stop | None:
        """What the agent's own stop_when predicates say after this step. They are app code, so they run in
        a local activity and history keeps their answer; agents without any skip it (no history at all)."""
        if not self._purpose.stop_when:
            return None
        verdict = await self._activities.execute(
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
            local=self._activities.local_allowed,
        )
        if verdict.reason is None:
            return None
        if verdict.failed:
            return Stop(RunStatus.failed, f"the stop_when predicate {verdict.reason}")
        return Stop(RunStatus.completed, verdict.reason)

    async def _wait_for_my_turn(self) -> Stop | None:
        """Double texting (enqueue): wait until the run ahead has finished. A cancel ends a queued run at
        once (runs queued before this release wait for their turn first, as they did then)."""
        self._reporter.detail = f"queued behind {self._run.queued_behind}"
        self._reporter.describe()
        await self._queue.wait_for_turn(lambda: self._interrupt is not None)
        self._reporter.detail = None
        return self._interrupt if not self._queue.may_start else None

    # --- continue-as-new: a long run goes on in a fresh history, between two steps ---

    async def _continue_as_new(self) -> Stop:
        """Hand the run's state to a new Temporal run once every handler has finished; the workflow id,
        and so the agent_run_id, every query, signal and stream, stays the same. Returns only when a cancel
        arrived meanwhile, with the stop it asks for."""
        await workflow.wait_condition(workflow.all_handlers_finished)
        if self._interrupt is not None:
            return self._interrupt
        await self._recorder.flush()
        await self._webhooks.flush()
        step = self._ledger.step
        workflow.logger.info(
            "continuing as new after step %d (%d history events)",
            step,
            workflow.info().get_current_history_length(),
            extra={"agent_run_id": self._run.agent_run_id, "step": step},
        )
        workflow.continue_as_new(
            self._run.model_copy(update={"queued_behind": None, "carried": self._carry()})
        )

    def _carry(self) -> CarriedRun:
        ledger = self._ledger
        return CarriedRun(
            started_at=ledger.started_at,
            step=ledger.step,
            usage=ledger.usage,
            events=self._reporter.events,
            next_seq=ledger.next_seq,
            tool_runs=dict(ledger.tool_runs),
            approvals=self._desk.approvals(),
            model_route=ledger.model_route,
            output_seq=ledger.output_seq,
            asked_for_tools=ledger.asked_for_tools,
            queued=self._queue.queued,
            continued=ledger.continued + 1,
            output_failures=self._output.failures,
            fix_output=self._output.must_fix,
            mcp_tools=self._mcp.tools,
            sub_runs=self._sub_agents.started,
        )

    # --- the end of the run ---

    async def _end(self, stop: Stop) -> FinalRunState:
        self._finish(stop)
        await self._recorder.flush()
        await self._queue.release()
        await self._webhooks.flush()
        return self._final_state()

    def _final_state(self) -> FinalRunState:
        state = self.state()
        return FinalRunState.model_construct(
            **{name: getattr(state, name) for name in RunState.model_fields},
            events=list(self._reporter.events),
        )

    def _finish(self, stop: Stop) -> RunState:
        if self._reporter.end(stop):
            cut_short = stop.status in (RunStatus.cancelled, RunStatus.budget_exceeded)
            partial = self._ledger.keep_partial_reply() if cut_short else None
            self._note_waits_ended()
            self._reporter.emit(
                RunFinished,
                status=stop.status,
                detail=stop.detail,
                partial_message_seq=partial,
                output_seq=self._output.answer_seq,
            )
        return self.state()

    def _note_waits_ended(self) -> None:
        """Whatever still waits for someone ends with the run."""
        for record in self._desk.pending_approvals():
            self._recorder.note_ended(record.tool_call_id, "cancelled", approval=record)
        if (question := self._desk.question) is not None:
            self._recorder.note_ended(question.tool_call_id, "cancelled")
        for pending in self._desk.pending_tool_results():
            self._recorder.note_ended(pending.tool_call_id, "cancelled")

    def _fail(self, error_type: str, detail: str) -> None:
        """An activity gave out (ActivityRunner): the run ends as failed, right where the failure arrived."""
        self._reporter.error_type = error_type
        self._finish(Stop(RunStatus.failed, detail))

    # --- interrupts: a cancel signal or the time budget cuts the step in flight short ---

    async def _until_done_or_interrupted(self, task: "asyncio.Task[Stop | None]") -> Stop | None:
        """The step's own outcome, or the interrupt (cancel signal, time budget) that cut it short."""
        remaining = self._ledger.seconds_left()
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
        self._reporter.emit(StepStarted, step=step)
        reply = await self._think(step)
        if reply.has_text:
            self._reporter.emit(TextProduced, step=step, message_seq=reply.reply_seq)
        for call in reply.tool_calls:
            self._reporter.emit(ToolCallRequested, step=step, call=call)
        self._sub_agents.step_calls = sum(
            reply.policies.get(call.id, ToolPolicy()).handled_by == "agent" for call in reply.tool_calls
        )
        await asyncio.gather(
            *(
                self._tool_calls.act(step, call, reply.policies.get(call.id, ToolPolicy()))
                for call in reply.tool_calls
            )
        )
        if (new_agent := await self._handoffs.switch()) is not None:
            # The run goes on as another agent: its limits, tools and instructions from the next step on.
            self._purpose = new_agent
        stop = await self._judged_answer(reply) if reply.output_status is not None else None
        self._reporter.emit(StepFinished, step=step)
        self._ledger.asked_for_tools = bool(reply.tool_calls) or self._output.must_fix
        return stop

    async def _judged_answer(self, reply: LlmStepResult) -> Stop | None:
        """Structured output: the final answer as call_llm judged it; a run whose answer never validated
        ends as failed, its record saying why."""
        stop = await self._output.judge(reply)
        if stop is not None:
            self._reporter.error_type = OUTPUT_VALIDATION_FAILED
        return stop

    async def _think(self, step: int) -> LlmStepResult:
        reply_seq = self._ledger.begin_thinking()
        label = f"LLM call {step} · {self._purpose.model}"
        self._reporter.set_doing("think", f"{label}: waiting for the model")
        # Provider limits: only a run whose route is limited asks (and may wait) here.
        lease = await self._capacity.wait_for_capacity(self._purpose.model, reply_seq, label)
        # Client tools go to the model as plain tool specs (their output schemas stay with the run).
        client_tools: list[ToolSpec] = list(self._run.client_tools)
        local = self._llm_local
        reply = await self._activities.execute(
            CALL_LLM,
            LlmStepInput(
                agent_run_id=self._run.agent_run_id,
                step=step,
                model=self._purpose.model,
                tools=self._purpose.tools,
                client_tools=client_tools,
                reply_seq=reply_seq,
                step_event_seq=len(self._reporter.events),
                purpose=self._purpose.slug,
                output=self._purpose.output,
                force_output=self._output.must_fix,
                mcp_tools=self._mcp.tools or [],
                lease=lease,
                events=self._reporter.unannounced() if local else [],
            ),
            LlmStepResult,
            summary=f"LLM call {step} · {self._purpose.model}",
            options=CALL_LLM_LOCAL_OPTIONS if local else CALL_LLM_OPTIONS,
            failure="the model call failed",
            local=local,
        )
        if reply.interrupted:
            await self._cancelled_mid_answer()
        self._reporter.set_doing("think", None)
        self._ledger.thought(reply)
        # Read here, where a regular activity's result has just arrived with a new workflow task, live and
        # on replay alike. It used to be read at the end of the step, often right after an inline tool's
        # local activity; one replay of a long run failed there under load (not reproduced since), and
        # this point leaves local activity timing out of the decision.
        self._new_history_suggested = workflow.info().is_continue_as_new_suggested()
        return reply

    async def _cancelled_mid_answer(self) -> None:
        """The gateway's cancel stopped the model call out of band (keel/storage/interrupts.py). The cancel
        signal it sent first has arrived, or arrives now: the step ends here and the run as cancelled. A call
        interrupted with no cancel to follow (it cannot happen, short of a bug) fails the run rather than
        leaving it stuck."""
        try:
            await workflow.wait_condition(lambda: self._interrupt is not None, timeout=_CANCEL_FOLLOWS)
        except TimeoutError:
            why = "the model call was interrupted, but no cancel followed"
            self._fail(ErrorType.agent_run_failed, why)
            raise RunFailed(why) from None
        raise asyncio.CancelledError()

    # --- signals and updates: the same handlers serve the CLI (signals) and the gateway (updates) ---

    @workflow.signal(name=CANCEL_SIGNAL)
    def cancel_signal(self, request: CancelRequest) -> None:
        if self._reporter.final is None and self._interrupt is None:
            reason = f": {request.reason}" if request.reason else ""
            self._interrupt = Stop(RunStatus.cancelled, f"cancelled{reason}")

    @workflow.signal(name=QUEUE_NEXT_SIGNAL)
    def queue_next(self, queued: QueuedRun) -> None:
        self._queue.queue_next(queued)

    @workflow.signal(name=PREVIOUS_DONE_SIGNAL)
    def previous_run_finished(self) -> None:
        self._queue.previous_run_finished()

    @workflow.signal(name=APPROVAL_SIGNAL)
    def approval_signal(self, decision: ApprovalDecision) -> None:
        self._desk.signal_decision(decision)

    @workflow.update(name=APPROVAL_UPDATE)
    async def decide_approval(self, decision: ApprovalDecision) -> ApprovalRecord:
        return await self._desk.decide(decision)

    @decide_approval.validator
    def _validate_approval(self, decision: ApprovalDecision) -> None:
        _refuse(self._ended_refusal() or self._desk.approval_refusal(decision))

    @workflow.signal(name=ANSWER_SIGNAL)
    def answer_signal(self, answer: UserAnswer) -> None:
        self._desk.signal_answer(answer)

    @workflow.update(name=ANSWER_UPDATE)
    def submit_answer(self, answer: UserAnswer) -> None:
        self._desk.submit_answer(answer)

    @submit_answer.validator
    def _validate_answer(self, answer: UserAnswer) -> None:
        _refuse(self._ended_refusal() or self._desk.answer_refusal())

    @workflow.signal(name=TOOL_RESULT_SIGNAL)
    def tool_result_signal(self, result: ToolResultSubmission) -> None:
        self._desk.signal_tool_result(result)

    @workflow.update(name=TOOL_RESULT_UPDATE)
    def submit_tool_result(self, result: ToolResultSubmission) -> None:
        self._desk.submit_tool_result(result)

    @submit_tool_result.validator
    def _validate_tool_result(self, result: ToolResultSubmission) -> None:
        _refuse(self._ended_refusal() or self._desk.tool_result_refusal(result))

    def _ended_refusal(self) -> Refusal | None:
        # Validators only: an update accepted after the run ended would wait for a decision nothing can
        # make, and the run would never close (it waits for its handlers). Signals then simply do nothing.
        final = self._reporter.final
        if final is None:
            return None
        return Refusal(ErrorType.conflict, f"the run has finished ({final.value})")

    # --- queries ---

    @workflow.query(name=STATE_QUERY)
    def state(self) -> RunState:
        return RunState(
            agent_run_id=self._run.agent_run_id,
            purpose=self._purpose.slug,
            model=self._purpose.model,
            status=self._reporter.status(),
            step=self._ledger.step,
            budgets=self._purpose.budgets,
            budgets_left=self._ledger.budgets_left(),
            usage=self._ledger.usage,
            last_event_seq=len(self._reporter.events),
            started_at=self._ledger.started_at,
            chat_id=self._run.chat_id,
            user_id=self._run.user_id,
            detail=self._reporter.detail,
            pending_approvals=self._desk.pending_approvals(),
            pending_question=self._desk.question,
            pending_tool_results=self._desk.pending_tool_results(),
            approvals=self._desk.approvals(),
            output_seq=self._output.answer_seq,
            sub_runs=self._sub_agents.started,
            metadata=self._run.metadata,
        )

    @workflow.query(name=EVENTS_QUERY)
    def events(self, after: int = 0) -> list[RunEvent]:
        """Events with seq > after, oldest first."""
        return self._reporter.events_after(after)


def _refuse(refusal: Refusal | None) -> None:
    """A validator's verdict: refused updates fail with the refusal's error type (the gateway's 404, 409)."""
    if refusal is not None:
        raise refusal.error()
