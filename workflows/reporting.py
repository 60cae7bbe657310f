"""What AgentRun tells the world as it goes: numbered run events with a log line each, the run records
(`record_run` activities writing agent_runs and tool_runs rows) and its one-line current details in the
Temporal Web UI.
"""

import asyncio
from datetime import datetime
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel

    from keel.contracts import (
        RECORD_RUN,
        AgentRunInput,
        ApprovalRecord,
        PendingQuestion,
        PendingToolResult,
        PurposeSpec,
        RunEvent,
        RunFinished,
        RunNote,
        RunState,
        RunStatus,
        ToolCall,
        ToolCallRequested,
        ToolRunNote,
        Usage,
    )
    from keel.text import one_line
    from workflows.activity_options import RECORD_RUN_OPTIONS


class ReportsProgress:
    """Mixed into AgentRun, whose state it reads; `AgentRun.__init__` sets the fields below."""

    _run: AgentRunInput
    _purpose: PurposeSpec
    _events: list[RunEvent]
    _final: RunStatus | None
    _detail: str | None
    _step: int
    _usage: Usage
    _started_at: datetime
    _question: PendingQuestion | None
    _client_calls: dict[str, PendingToolResult]
    _may_start: bool
    _recording: bool
    _local_activities: bool
    _records: list[asyncio.Task[None]]
    _tool_notes: list[ToolRunNote]
    _tool_calls: dict[str, tuple[int, ToolCall, int]]
    _model_route: str | None
    _output_seq: int | None
    _error_type: str | None
    _doing: dict[str, str]

    def state(self) -> RunState:
        raise NotImplementedError  # AgentRun's `state` query

    async def _run_activity(self, activity: str, arg: BaseModel, *, local: bool, **options: Any) -> Any:
        raise NotImplementedError  # AgentRun's, the one way the run starts an activity

    def _pending_approvals(self) -> list[ApprovalRecord]:
        raise NotImplementedError  # WaitsForPeople's

    def _emit(self, event_type: type, **fields: object) -> None:
        event = event_type(seq=len(self._events) + 1, **fields)
        self._events.append(event)
        # One log line per event (never on replay: workflow.logger skips it).
        step = getattr(event, "step", None)
        tool = event.call.name if isinstance(event, ToolCallRequested) else None
        workflow.logger.info(
            _event_line(event),
            extra={
                "agent_run_id": self._run.agent_run_id,
                "purpose": self._purpose.slug,
                "phase": _PHASES.get(event.type, "act"),
                "step": step,
                "tool": tool,
                "event": event.type,
            },
        )
        self._describe()

    def _note_tool(
        self,
        step: int,
        call: ToolCall,
        seq: int,
        status: str,
        *,
        approval: ApprovalRecord | None = None,
        error_message: str | None = None,
        result: Any = None,
        started_at: datetime | None = None,
        send: bool = False,
    ) -> None:
        """Note a tool call's state for its tool_runs row; `send` records it (and the run's status) now."""
        final = status not in (
            "waiting_for_approval",
            "waiting_for_input",
            "waiting_for_tool_result",
            "approved",
        )
        self._tool_calls[call.id] = (step, call, seq)
        self._tool_notes.append(
            ToolRunNote(
                seq=seq,
                step=step,
                tool_call_id=call.id,
                tool_name=call.name,
                arguments=call.arguments,
                status=status,
                approval=approval.model_copy() if approval is not None else None,
                error_message=error_message,
                result=result,
                started_at=started_at,
                finished_at=workflow.now() if final else None,
            )
        )
        if send:
            self._send_record()

    def _note_tool_id(self, tool_call_id: str, status: str, **fields: Any) -> None:
        if tool_call_id in self._tool_calls:
            step, call, seq = self._tool_calls[tool_call_id]
            fields.pop("finished_at", None)
            self._note_tool(step, call, seq, status, **fields)

    def _send_record(self) -> None:
        """Start a record_run activity with the run's row as it is now and the tool notes so far."""
        notes, self._tool_notes = self._tool_notes, []
        if not self._recording:
            return
        state = self.state()
        note = RunNote(
            agent_run_id=self._run.agent_run_id,
            temporal_run_id=workflow.info().run_id,
            version=len(self._events),
            status=state.status,
            purpose=self._purpose.slug,
            model=self._purpose.model,
            chat_id=self._run.chat_id,
            user_id=self._run.user_id,
            input_summary=self._run.input_summary,
            started_at=self._started_at,
            step=self._step,
            usage=self._usage,
            model_route=self._model_route,
            finished_at=workflow.now() if self._final is not None else None,
            detail=self._detail if self._final is not None else None,
            error_type=self._error_type if self._final == RunStatus.failed else None,
            output_seq=self._output_seq if self._final is not None else None,
            tool_runs=notes,
        )
        self._records.append(asyncio.create_task(self._record(note)))

    async def _record(self, note: RunNote) -> None:
        # A local activity, so the run's last record is written inside the workflow task that ends the run
        # instead of costing a trip through the task queue and one more workflow task: that trip was most
        # of Keel's overhead over a bare temporalio loop in `make bench` (durability tax 1.37 -> 1.11).
        try:
            await self._run_activity(
                RECORD_RUN,
                note,
                local=self._local_activities,
                summary=f"record {note.status.value}",
                **RECORD_RUN_OPTIONS,
            )
        except ActivityError as err:
            # Only a record PostgreSQL refuses gets here (an outage is retried without limit): the run goes on.
            workflow.logger.error("could not record the run: %s", err.cause or err)

    async def _flush_records(self) -> None:
        """Record the run's final state and wait for every record in flight, so none is abandoned."""
        self._send_record()
        await asyncio.gather(*self._records)
        self._records.clear()

    def _set_doing(self, key: str, text: str | None) -> None:
        if text is None:
            self._doing.pop(key, None)
        else:
            self._doing[key] = text
        self._describe()

    def _describe(self) -> None:
        """The run's current details, one line saying what it does or waits for (Web UI, `describe`).

        Called at every event, so it reads the fields it needs rather than building the whole `state`."""
        if self._final is not None:
            line = self._final.value + (f": {self._detail}" if self._detail else "")
        elif pending := self._pending_approvals():
            names = ", ".join(f"{r.tool_name} ({r.tool_call_id})" for r in pending)
            line = f"waiting for approval of {names}, until {pending[0].expires_at:%Y-%m-%d %H:%M} UTC"
        elif self._question is not None:
            line = f"waiting for the user's answer to: {one_line(self._question.question, 120)}"
        elif self._client_calls:
            names = ", ".join(p.tool_name for p in self._client_calls.values())
            line = f"waiting for the client's result of {names}"
        elif not self._may_start:
            line = f"queued behind {self._run.queued_behind}"
        elif self._doing:
            line = "; ".join(self._doing.values())
        else:
            line = "running"
        workflow.set_current_details(f"step {self._step} · {line}" if self._step else line)


_PHASES = {
    "step_started": "think",
    "text": "think",
    "tool_call": "think",
    "approval_requested": "wait",
    "approval_decided": "wait",
    "question_asked": "wait",
    "client_tool_requested": "wait",
    "step_finished": "act",
    "run_finished": "finish",
}


def _event_line(event: Any) -> str:
    """A run event as a log message."""
    if isinstance(event, ToolCallRequested):
        return f"step {event.step}: the model called {event.call.name} ({event.call.id})"
    if isinstance(event, RunFinished):
        return f"run finished: {event.status.value}" + (f" ({event.detail})" if event.detail else "")
    step = getattr(event, "step", None)
    what = event.type.replace("_", " ")
    call = getattr(event, "tool_call_id", None)
    return (f"step {step}: " if step is not None else "") + what + (f" ({call})" if call else "")
