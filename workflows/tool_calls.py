"""What an agent run does with each tool call the model asks for: run it (inline, as a local activity, or
on the heavy task queue), or first wait for a person's approval, or put the model's question to the user
(`ask_user`), or wait for the frontend to run a client-side tool; or tell the model why it did not run.

Every call ends with a result message stored at its own seq, which the model reads in the next step.
"""

import json
from dataclasses import dataclass
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from keel.contracts import (
        RUN_TOOL,
        SAVE_MESSAGE,
        AgentRunInput,
        ApprovalDecided,
        ApprovalRecord,
        ApprovalRequested,
        ClientToolRequested,
        Message,
        QuestionAsked,
        SaveMessageInput,
        ToolCall,
        ToolInput,
        ToolOutcome,
        ToolPolicy,
        ToolResultReady,
    )
    from workflows.activity_options import (
        RUN_TOOL_HEAVY_OPTIONS,
        RUN_TOOL_INLINE_OPTIONS,
        SAVE_MESSAGE_OPTIONS,
    )
    from workflows.activity_runner import ActivityRunner
    from workflows.handoffs import Handoffs
    from workflows.ledger import RunLedger
    from workflows.mcp_tools import MCPToolbox
    from workflows.people import PeopleDesk
    from workflows.reporting import RunReporter
    from workflows.run_notes import RunNotes
    from workflows.sub_agents import Refused, SubAgents


# eq=False: a collaborator is itself, not equal to another one with the same parts.
@dataclass(frozen=True, eq=False)
class ToolCalls:
    """Acts on the model's tool calls, one coroutine per call, all of a step's calls at once. It keeps no
    state of its own: the ledger, the desk, the reporter and the recorder keep what a call changes."""

    run: AgentRunInput
    ledger: RunLedger
    desk: PeopleDesk
    reporter: RunReporter
    recorder: RunNotes
    activities: ActivityRunner
    mcp: MCPToolbox
    sub_agents: SubAgents
    handoffs: Handoffs

    async def act(self, step: int, call: ToolCall, policy: ToolPolicy) -> None:
        seq = self.ledger.take_seq()
        outcome = await self._outcome(step, call, policy, seq)
        if outcome is not None:
            self.reporter.emit(
                ToolResultReady,
                step=step,
                tool_call_id=call.id,
                message_seq=outcome.result_seq,
                is_error=outcome.is_error,
                denied=outcome.denied,
            )

    async def _outcome(self, step: int, call: ToolCall, policy: ToolPolicy, seq: int) -> ToolOutcome | None:
        """The call's result as stored for the model; None when the run has nothing to tell it (a question
        nobody will answer: the run then stops with needs_input)."""
        if policy.handled_by == "workflow":
            return await self._ask_user(step, call, seq)
        if policy.handled_by == "nobody":
            mcp_tools = [t.name for t in self.mcp.tools or ()]
            offered = ", ".join(self.run.purpose.tools + mcp_tools + [t.name for t in self.run.client_tools])
            return await self._not_run(
                step, call, seq, f"there is no tool named {call.name!r}; the tools are: {offered}"
            )
        limit = policy.max_calls_per_run
        if limit is not None and self.ledger.tool_runs[call.name] >= limit:
            return await self._not_run(
                step, call, seq, f"{call.name} may run at most {limit} time(s) per run; it already ran"
            )
        if policy.handled_by == "client":
            return await self._client_result(step, call, seq)
        if policy.handled_by == "agent":
            return await self._delegate(step, call, seq)
        if policy.handled_by == "handoff":
            return await self._hand_over(step, call, seq)
        if policy.needs_approval and not (record := await self._approval(step, call, seq)).approved:
            why = "the approval expired" if record.expired else f"denied by {record.approver or 'a person'}"
            reason = f": {record.reason}" if record.reason else ""
            return await self._save_result(call, seq, f"{call.name} did not run: {why}{reason}", denied=True)
        return await self._run_tool(step, call, policy, seq)

    async def _not_run(self, step: int, call: ToolCall, seq: int, why: str) -> ToolOutcome:
        self.recorder.note_tool(step, call, seq, "not_run", error_message=why)
        return await self._save_result(call, seq, why)

    async def _run_tool(self, step: int, call: ToolCall, policy: ToolPolicy, seq: int) -> ToolOutcome:
        self.ledger.count_tool_run(call.name)
        self.reporter.set_doing(call.id, f"running tool {call.name}")
        outcome = await self.activities.execute(
            RUN_TOOL,
            ToolInput(
                agent_run_id=self.run.agent_run_id,
                step=step,
                call=call,
                result_seq=seq,
                purpose=self.run.purpose.slug,
                mcp=self.mcp.spec(call.name),
            ),
            ToolOutcome,
            summary=f"tool {call.name}",
            failure=f"tool {call.name} could not run",
            **self._placement(policy, seq),
        )
        self.reporter.set_doing(call.id, None)
        return outcome

    async def _delegate(self, step: int, call: ToolCall, seq: int) -> ToolOutcome:
        """Another agent as this tool (Agent.as_tool): its child run's answer is the result."""
        child = self.sub_agents.child_input(call, seq)
        if isinstance(child, Refused):
            return await self._not_run(step, call, seq, child.why)
        self.ledger.count_tool_run(call.name)
        self.reporter.set_doing(call.id, f"running agent {call.name}")
        started_at = workflow.now()
        outcome = await self.sub_agents.run_child(step, call, seq, child)
        self.reporter.set_doing(call.id, None)
        self.recorder.note_tool(
            step,
            call,
            seq,
            "error" if outcome.is_error else "ok",
            started_at=started_at,
            result={"agent_run_id": child.agent_run_id},
        )
        return outcome

    async def _hand_over(self, step: int, call: ToolCall, seq: int) -> ToolOutcome:
        """`transfer_to_<agent>`: accepted now, carried out once the step's calls are done (handoffs.py)."""
        accepted = self.handoffs.accept(step, call)
        if isinstance(accepted, Refused):
            return await self._not_run(step, call, seq, accepted.why)
        self.ledger.count_tool_run(call.name)
        self.recorder.note_tool(step, call, seq, "ok", result={"handed_to": accepted.to_agent})
        return await self._save_result(call, seq, self.handoffs.result_text(accepted), is_error=False)

    def _placement(self, policy: ToolPolicy, seq: int) -> dict[str, Any]:
        """Where the tool runs: inline as a local activity, or on the heavy workers' task queue (runs from
        before tools were split run every tool as a regular activity on the agent task queue)."""
        if not self.activities.local_allowed:
            return {"options": RUN_TOOL_HEAVY_OPTIONS}
        # The result's seq is unique in the run, across continue-as-new too: with the workflow id it makes
        # the tool's idempotency key, the same for every retry and re-execution of this call.
        activity_id = f"tool-{seq}"
        if policy.heavy:
            task_queue = self.run.heavy_task_queue
            return {"options": RUN_TOOL_HEAVY_OPTIONS, "task_queue": task_queue, "activity_id": activity_id}
        return {"options": RUN_TOOL_INLINE_OPTIONS, "local": True, "activity_id": activity_id}

    # --- calls that wait for people (workflows/people.py keeps the waits) ---

    async def _approval(self, step: int, call: ToolCall, seq: int) -> ApprovalRecord:
        record = self.desk.request_approval(call)
        self.reporter.emit(ApprovalRequested, step=step, tool_call_id=call.id, expires_at=record.expires_at)
        self.recorder.note_tool(step, call, seq, "waiting_for_approval", approval=record, send=True)
        await self.desk.wait_for_decision(record)
        self.reporter.emit(
            ApprovalDecided, step=step, tool_call_id=call.id, approved=record.approved, expired=record.expired
        )
        if record.approved:
            self.recorder.note_tool(step, call, seq, "approved", approval=record, send=True)
        else:
            why = "the approval expired" if record.expired else f"denied by {record.approver or 'a person'}"
            status = "expired" if record.expired else "denied"
            self.recorder.note_tool(step, call, seq, status, approval=record, error_message=why, send=True)
        return record

    async def _ask_user(self, step: int, call: ToolCall, seq: int) -> ToolOutcome | None:
        question = str(call.arguments.get("question") or "").strip() or "(the agent asked without a question)"
        if not self.run.purpose.allow_questions:
            self.desk.cannot_ask(question)
            self.recorder.note_tool(
                step, call, seq, "not_run", error_message="this purpose can't wait for an answer"
            )
            return None
        asked = self.desk.ask(call, question)
        self.reporter.emit(QuestionAsked, step=step, tool_call_id=call.id, question=question)
        asked_at = workflow.now()
        self.recorder.note_tool(step, call, seq, "waiting_for_input", started_at=asked_at, send=True)
        answer = await self.desk.wait_for_answer(asked)
        if answer is None:
            self.recorder.note_tool(
                step, call, seq, "expired", started_at=asked_at, error_message="no answer in time", send=True
            )
            return None
        self.recorder.note_tool(
            step, call, seq, "ok", started_at=asked_at, result={"answer": answer}, send=True
        )
        return await self._save_result(call, seq, answer, is_error=False)

    async def _client_result(self, step: int, call: ToolCall, seq: int) -> ToolOutcome:
        self.desk.request_client_result(call)
        self.reporter.emit(ClientToolRequested, step=step, tool_call_id=call.id)
        asked_at = workflow.now()
        self.recorder.note_tool(step, call, seq, "waiting_for_tool_result", started_at=asked_at, send=True)
        submitted = await self.desk.wait_for_client_result(call)
        if submitted is None:
            why = f"the client did not return a result for {call.name} in time"
            self.recorder.note_tool(
                step, call, seq, "expired", started_at=asked_at, error_message=why, send=True
            )
            return await self._save_result(call, seq, why)
        if submitted.error is not None:
            self.recorder.note_tool(
                step, call, seq, "error", started_at=asked_at, error_message=submitted.error, send=True
            )
            return await self._save_result(call, seq, submitted.error)
        self.recorder.note_tool(
            step, call, seq, "ok", started_at=asked_at, result=submitted.output, send=True
        )
        content = submitted.output if isinstance(submitted.output, str) else json.dumps(submitted.output)
        schema = next((t.output_schema for t in self.run.client_tools if t.name == call.name), None)
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
        outcome = await self.activities.execute(
            SAVE_MESSAGE,
            SaveMessageInput(
                agent_run_id=self.run.agent_run_id, seq=seq, message=message, output_schema=output_schema
            ),
            ToolOutcome,
            summary=f"result of {call.name}",
            options=SAVE_MESSAGE_OPTIONS,
            failure="could not store a tool result",
        )
        return outcome.model_copy(update={"denied": denied})
