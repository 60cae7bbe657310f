"""AgentRun's waits for people: approvals of risky tool calls, answers to the agent's questions
(`ask_user`) and the results of client-side tools, with the signals and updates that end them.

Every wait is a `workflow.wait_condition` with the purpose's approval timeout: durable, holding no worker
slot, and the same whether the decision arrives as a signal (the `temporal` CLI, the Web UI) or an update
(the gateway, which needs the validators' exact 404 or 409).
"""

import hashlib
import json
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from keel.contracts import (
        ANSWER_SIGNAL,
        ANSWER_UPDATE,
        APPROVAL_SIGNAL,
        APPROVAL_UPDATE,
        TOOL_RESULT_SIGNAL,
        TOOL_RESULT_UPDATE,
        AgentRunInput,
        ApprovalDecided,
        ApprovalDecision,
        ApprovalRecord,
        ApprovalRequested,
        ClientToolRequested,
        ErrorType,
        PendingQuestion,
        PendingToolResult,
        PurposeSpec,
        QuestionAsked,
        RunStatus,
        ToolCall,
        ToolOutcome,
        ToolResultSubmission,
        UserAnswer,
    )


class WaitsForPeople:
    """Mixed into AgentRun, whose state it reads and writes (`AgentRun.__init__` sets the fields below) and
    whose `_emit`, `_note_tool` and `_save_result` it calls."""

    _run: AgentRunInput
    _purpose: PurposeSpec
    _approvals: dict[str, ApprovalRecord]
    _decisions: dict[str, ApprovalDecision]
    _question: PendingQuestion | None
    _answer: str | None
    _unanswerable_question: str | None
    _client_calls: dict[str, PendingToolResult]
    _client_results: dict[str, ToolResultSubmission]
    _final: RunStatus | None

    def _pending_approvals(self) -> list[ApprovalRecord]:
        return [r for r in self._approvals.values() if r.decided_at is None]

    async def _approval(self, step: int, call: ToolCall, seq: int) -> ApprovalRecord:
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
        self._note_tool(step, call, seq, "waiting_for_approval", approval=record, send=True)
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
        if record.approved:
            self._note_tool(step, call, seq, "approved", approval=record, send=True)
        else:
            why = "the approval expired" if record.expired else f"denied by {record.approver or 'a person'}"
            status = "expired" if record.expired else "denied"
            self._note_tool(step, call, seq, status, approval=record, error_message=why, send=True)
        return record

    async def _ask_user(self, step: int, call: ToolCall, seq: int) -> ToolOutcome | None:
        question = str(call.arguments.get("question") or "").strip() or "(the agent asked without a question)"
        if not self._purpose.allow_questions:
            self._unanswerable_question = question
            self._note_tool(step, call, seq, "not_run", error_message="this purpose can't wait for an answer")
            return None
        self._question = PendingQuestion(tool_call_id=call.id, question=question)
        self._emit(QuestionAsked, step=step, tool_call_id=call.id, question=question)
        asked = workflow.now()
        self._note_tool(step, call, seq, "waiting_for_input", started_at=asked, send=True)
        timeout = timedelta(seconds=self._purpose.approval_timeout_s)
        try:
            await workflow.wait_condition(lambda: self._answer is not None, timeout=timeout)
        except TimeoutError:
            self._question = None
            self._unanswerable_question = question
            self._note_tool(
                step, call, seq, "expired", started_at=asked, error_message="no answer in time", send=True
            )
            return None
        answer, self._answer, self._question = self._answer or "", None, None
        self._note_tool(step, call, seq, "ok", started_at=asked, result={"answer": answer}, send=True)
        return await self._save_result(call, seq, answer, is_error=False)

    async def _client_result(self, step: int, call: ToolCall, seq: int) -> ToolOutcome:
        self._client_calls[call.id] = PendingToolResult(
            tool_call_id=call.id, tool_name=call.name, arguments=call.arguments
        )
        self._emit(ClientToolRequested, step=step, tool_call_id=call.id)
        asked = workflow.now()
        self._note_tool(step, call, seq, "waiting_for_tool_result", started_at=asked, send=True)
        timeout = timedelta(seconds=self._purpose.approval_timeout_s)
        try:
            await workflow.wait_condition(lambda: call.id in self._client_results, timeout=timeout)
        except TimeoutError:
            del self._client_calls[call.id]
            why = f"the client did not return a result for {call.name} in time"
            self._note_tool(step, call, seq, "expired", started_at=asked, error_message=why, send=True)
            return await self._save_result(call, seq, why)
        del self._client_calls[call.id]
        submitted = self._client_results[call.id]
        if submitted.error is not None:
            self._note_tool(
                step, call, seq, "error", started_at=asked, error_message=submitted.error, send=True
            )
            return await self._save_result(call, seq, submitted.error)
        self._note_tool(step, call, seq, "ok", started_at=asked, result=submitted.output, send=True)
        content = submitted.output if isinstance(submitted.output, str) else json.dumps(submitted.output)
        schema = next((t.output_schema for t in self._run.client_tools if t.name == call.name), None)
        return await self._save_result(call, seq, content, is_error=False, output_schema=schema)

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
        if problem := self._ended_problem() or self._approval_problem(decision):
            raise ApplicationError(problem[1], type=problem[0])

    def _ended_problem(self) -> tuple[str, str] | None:
        # Validators only: an update accepted after the run ended would wait for a decision nothing can
        # make, and the run would never close (it waits for its handlers). Signals then simply do nothing.
        if self._final is None:
            return None
        return ErrorType.conflict, f"the run has finished ({self._final.value})"

    def _approval_problem(self, decision: ApprovalDecision) -> tuple[str, str] | None:
        record = self._approvals.get(decision.tool_call_id)
        if record is None:
            return ErrorType.not_found, f"no approval was requested for tool call {decision.tool_call_id!r}"
        if record.decided_at is not None or decision.tool_call_id in self._decisions:
            return ErrorType.conflict, f"tool call {decision.tool_call_id!r} was already decided"
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
        if problem := self._ended_problem():
            raise ApplicationError(problem[1], type=problem[0])
        if self._question is None or self._answer is not None:
            raise ApplicationError("the run is not waiting for an answer", type=ErrorType.conflict)

    @workflow.signal(name=TOOL_RESULT_SIGNAL)
    def tool_result_signal(self, result: ToolResultSubmission) -> None:
        if self._tool_result_problem(result) is None:
            self._client_results[result.tool_call_id] = result

    @workflow.update(name=TOOL_RESULT_UPDATE)
    def submit_tool_result(self, result: ToolResultSubmission) -> None:
        self._client_results[result.tool_call_id] = result

    @submit_tool_result.validator
    def _validate_tool_result(self, result: ToolResultSubmission) -> None:
        if problem := self._ended_problem() or self._tool_result_problem(result):
            raise ApplicationError(problem[1], type=problem[0])

    def _tool_result_problem(self, result: ToolResultSubmission) -> tuple[str, str] | None:
        if result.tool_call_id in self._client_results:
            return ErrorType.conflict, f"tool call {result.tool_call_id!r} already has a result"
        if result.tool_call_id not in self._client_calls:
            return (
                ErrorType.not_found,
                f"the run is not waiting for a result of tool call {result.tool_call_id!r}",
            )
        return None


def _sha256(arguments: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(arguments, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
