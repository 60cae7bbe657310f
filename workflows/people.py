"""The run's people desk: the approvals of risky tool calls, the user's answers to the agent's questions
(`ask_user`) and the results of client-side tools, kept from the moment the run asks until someone replies.

Every wait is a `workflow.wait_condition` with the agent's approval timeout: durable, holding no worker
slot, and the same whether the reply arrives as a signal (the `temporal` CLI, the Web UI) or an update
(the gateway, which needs the validators' exact 404 or 409: the refusals below).
"""

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from keel.contracts import (
        AgentRunInput,
        ApprovalDecision,
        ApprovalRecord,
        ErrorType,
        PendingQuestion,
        PendingToolResult,
        RunStatus,
        ToolCall,
        ToolResultSubmission,
        UserAnswer,
    )
    from keel.text import one_line


@dataclass(frozen=True)
class Refusal:
    """Why the run refuses an update: the error type the gateway maps to HTTP (404, 409) and the message."""

    error_type: ErrorType
    message: str

    def error(self) -> ApplicationError:
        return ApplicationError(self.message, type=self.error_type)


class PeopleDesk:
    """What the run waits for from people, and the replies that end each wait."""

    def __init__(self, run: AgentRunInput) -> None:
        # The run's agent is read at each use: a handoff changes it (workflows/handoffs.py).
        self._run = run
        # Every approval asked for, by tool call id: the audit trail, carried across continue-as-new.
        self._approvals: dict[str, ApprovalRecord] = (
            {} if run.carried is None else {r.tool_call_id: r for r in run.carried.approvals}
        )
        self._decisions: dict[str, ApprovalDecision] = {}
        self._question: PendingQuestion | None = None
        self._answer: str | None = None
        # The question the model asked that nobody will answer: the agent does not wait for answers, or
        # none came in time. The stop conditions end the run with it (needs_input).
        self.unanswerable_question: str | None = None
        self._client_calls: dict[str, PendingToolResult] = {}
        self._client_results: dict[str, ToolResultSubmission] = {}

    # --- what the run waits for, as the state query, the run records and the Web UI tell it ---

    def approvals(self) -> list[ApprovalRecord]:
        return list(self._approvals.values())

    def pending_approvals(self) -> list[ApprovalRecord]:
        return [r for r in self._approvals.values() if r.decided_at is None]

    @property
    def question(self) -> PendingQuestion | None:
        return self._question

    def pending_tool_results(self) -> list[PendingToolResult]:
        return list(self._client_calls.values())

    def waiting_status(self) -> RunStatus | None:
        """The status of a run that waits for someone; None when it waits for no one."""
        if self.pending_approvals():
            return RunStatus.waiting_for_approval
        if self._question is not None:
            return RunStatus.waiting_for_input
        if self._client_calls:
            return RunStatus.waiting_for_tool_result
        return None

    def waiting_line(self) -> str | None:
        """Whom the run waits for, in one line of its current details; None when it waits for no one."""
        if pending := self.pending_approvals():
            names = ", ".join(f"{r.tool_name} ({r.tool_call_id})" for r in pending)
            return f"waiting for approval of {names}, until {pending[0].expires_at:%Y-%m-%d %H:%M} UTC"
        if self._question is not None:
            return f"waiting for the user's answer to: {one_line(self._question.question, 120)}"
        if self._client_calls:
            names = ", ".join(p.tool_name for p in self._client_calls.values())
            return f"waiting for the client's result of {names}"
        return None

    # --- the waits: each asks (the caller then tells the world), then waits for the reply ---

    def request_approval(self, call: ToolCall) -> ApprovalRecord:
        now = workflow.now()
        timeout = self._timeout()
        record = ApprovalRecord(
            tool_call_id=call.id,
            tool_name=call.name,
            arguments=call.arguments,
            arguments_sha256=_sha256(call.arguments),
            requested_at=now,
            expires_at=now + timeout,
        )
        self._approvals[call.id] = record
        return record

    async def wait_for_decision(self, record: ApprovalRecord) -> None:
        """Fill in the record with the person's decision, or as expired when none came in time."""
        try:
            await workflow.wait_condition(
                lambda: record.tool_call_id in self._decisions, timeout=self._timeout()
            )
            decision = self._decisions[record.tool_call_id]
            record.approved, record.reason, record.approver = (
                decision.approved,
                decision.reason,
                decision.approver,
            )
        except TimeoutError:
            record.approved, record.expired = False, True
        record.decided_at = workflow.now()

    def cannot_ask(self, question: str) -> None:
        """The agent does not let its runs wait for an answer: the question stays unanswered."""
        self.unanswerable_question = question

    def ask(self, call: ToolCall, question: str) -> PendingQuestion:
        self._question = PendingQuestion(tool_call_id=call.id, question=question)
        return self._question

    async def wait_for_answer(self, asked: PendingQuestion) -> str | None:
        """The user's answer; None when none came in time (the question then stays unanswered)."""
        try:
            await workflow.wait_condition(lambda: self._answer is not None, timeout=self._timeout())
        except TimeoutError:
            self._question = None
            self.unanswerable_question = asked.question
            return None
        answer, self._answer, self._question = self._answer or "", None, None
        return answer

    def request_client_result(self, call: ToolCall) -> None:
        self._client_calls[call.id] = PendingToolResult(
            tool_call_id=call.id, tool_name=call.name, arguments=call.arguments
        )

    async def wait_for_client_result(self, call: ToolCall) -> ToolResultSubmission | None:
        """What the frontend sent for the call; None when nothing came in time."""
        try:
            await workflow.wait_condition(lambda: call.id in self._client_results, timeout=self._timeout())
        except TimeoutError:
            del self._client_calls[call.id]
            return None
        del self._client_calls[call.id]
        return self._client_results[call.id]

    def _timeout(self) -> timedelta:
        # Computed where each wait begins, as the run always has: a timeout out of range fails right there.
        return timedelta(seconds=self._run.purpose.approval_timeout_s)

    # --- the replies, as signals (ignored when refused) and updates (refused by their validators) ---

    def signal_decision(self, decision: ApprovalDecision) -> None:
        if self.approval_refusal(decision) is None:
            self._decisions[decision.tool_call_id] = decision

    async def decide(self, decision: ApprovalDecision) -> ApprovalRecord:
        """The decision, and the record once the run has taken it in."""
        self._decisions[decision.tool_call_id] = decision
        record = self._approvals[decision.tool_call_id]
        await workflow.wait_condition(lambda: record.decided_at is not None)
        return record

    def approval_refusal(self, decision: ApprovalDecision) -> Refusal | None:
        record = self._approvals.get(decision.tool_call_id)
        if record is None:
            return Refusal(
                ErrorType.not_found, f"no approval was requested for tool call {decision.tool_call_id!r}"
            )
        if record.decided_at is not None or decision.tool_call_id in self._decisions:
            return Refusal(ErrorType.conflict, f"tool call {decision.tool_call_id!r} was already decided")
        return None

    def signal_answer(self, answer: UserAnswer) -> None:
        if self._question is not None and self._answer is None:
            self._answer = answer.text

    def submit_answer(self, answer: UserAnswer) -> None:
        self._answer = answer.text

    def answer_refusal(self) -> Refusal | None:
        if self._question is None or self._answer is not None:
            return Refusal(ErrorType.conflict, "the run is not waiting for an answer")
        return None

    def signal_tool_result(self, result: ToolResultSubmission) -> None:
        if self.tool_result_refusal(result) is None:
            self._client_results[result.tool_call_id] = result

    def submit_tool_result(self, result: ToolResultSubmission) -> None:
        self._client_results[result.tool_call_id] = result

    def tool_result_refusal(self, result: ToolResultSubmission) -> Refusal | None:
        if result.tool_call_id in self._client_results:
            return Refusal(ErrorType.conflict, f"tool call {result.tool_call_id!r} already has a result")
        if result.tool_call_id not in self._client_calls:
            return Refusal(
                ErrorType.not_found,
                f"the run is not waiting for a result of tool call {result.tool_call_id!r}",
            )
        return None


def _sha256(arguments: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(arguments, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
