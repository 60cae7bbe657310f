"""The run records from the workflow's side: `record_run` activities writing the run's agent_runs row and
the tool_runs rows only the workflow knows (waits for people, denials, tools that did not run).

Each record carries the run's row as it is at that moment and the tool notes taken since the last one;
the run's last record is awaited before the workflow completes.
"""

import asyncio
from datetime import datetime
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from keel.contracts import (
        RECORD_RUN,
        AgentRunInput,
        ApprovalRecord,
        RunNote,
        RunStatus,
        ToolCall,
        ToolRunNote,
    )
    from workflows.activity_options import RECORD_RUN_OPTIONS
    from workflows.activity_runner import ActivityRunner
    from workflows.ledger import RunLedger
    from workflows.reporting import RunReporter

# Tool statuses that are not the end of a tool call: its row gets no finished_at yet.
_UNDER_WAY = ("waiting_for_approval", "waiting_for_input", "waiting_for_tool_result", "approved")


class RunNotes:
    """Tool notes waiting to go out with the next record, and the records in flight."""

    def __init__(
        self, run: AgentRunInput, ledger: RunLedger, reporter: RunReporter, activities: ActivityRunner
    ) -> None:
        self._run = run
        self._ledger = ledger
        self._reporter = reporter
        self._activities = activities
        # Runs started before run records existed replay without them: set once the run knows (AgentRun.run).
        self.recording = False
        self._records: list[asyncio.Task[None]] = []
        self._notes: list[ToolRunNote] = []
        # Where each tool call noted so far stands: (step, call, seq), to note how it ended by its id alone.
        self._calls: dict[str, tuple[int, ToolCall, int]] = {}

    def note_tool(
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
        self._calls[call.id] = (step, call, seq)
        self._notes.append(
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
                finished_at=workflow.now() if status not in _UNDER_WAY else None,
            )
        )
        if send:
            self.send()

    def note_ended(self, tool_call_id: str, status: str, *, approval: ApprovalRecord | None = None) -> None:
        """Note how a tool call noted before ended (a wait the run's end cut short)."""
        if tool_call_id in self._calls:
            step, call, seq = self._calls[tool_call_id]
            self.note_tool(step, call, seq, status, approval=approval)

    def send(self) -> None:
        """Start a record_run activity with the run's row as it is now and the tool notes so far."""
        notes, self._notes = self._notes, []
        if not self.recording:
            return
        self._records.append(asyncio.create_task(self._record(self._run_note(notes))))

    async def flush(self) -> None:
        """Record the run's final state and wait for every record in flight, so none is abandoned."""
        self.send()
        await asyncio.gather(*self._records)
        self._records.clear()

    def _run_note(self, notes: list[ToolRunNote]) -> RunNote:
        final = self._reporter.final
        return RunNote(
            agent_run_id=self._run.agent_run_id,
            temporal_run_id=workflow.info().run_id,
            version=len(self._reporter.events),
            status=self._reporter.status(),
            purpose=self._run.purpose.slug,
            model=self._run.purpose.model,
            chat_id=self._run.chat_id,
            user_id=self._run.user_id,
            input_summary=self._run.input_summary,
            started_at=self._ledger.started_at,
            step=self._ledger.step,
            usage=self._ledger.usage,
            model_route=self._ledger.model_route,
            finished_at=workflow.now() if final is not None else None,
            detail=self._reporter.detail if final is not None else self._reporter.capacity_wait,
            error_type=self._reporter.error_type if final == RunStatus.failed else None,
            output_seq=self._ledger.output_seq if final is not None else None,
            tool_runs=notes,
            # Only in a local activity's input, which history does not record.
            events=self._reporter.unannounced() if self._activities.local_allowed else [],
        )

    async def _record(self, note: RunNote) -> None:
        # A local activity, so the run's last record is written inside the workflow task that ends the run
        # instead of costing a trip through the task queue and one more workflow task: that trip was most
        # of Keel's overhead over a bare temporalio loop in `make bench` (durability tax 1.37 -> 1.11).
        try:
            await self._activities.start(
                RECORD_RUN,
                note,
                local=self._activities.local_allowed,
                summary=f"record {note.status.value}",
                **RECORD_RUN_OPTIONS,
            )
        except (ActivityError, ApplicationError) as err:  # a local activity's failure comes unwrapped
            # Only a record PostgreSQL refuses gets here (an outage is retried without limit): the run goes on.
            workflow.logger.error("could not record the run: %s", err.cause or err)
