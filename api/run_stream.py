"""Following a run and speaking the AI SDK's UI message stream protocol.

`follow_run` yields a run's new `RunEvent`s as they happen: it long-polls the workflow's history (so it
wakes when the workflow makes progress, with no fixed polling interval) and then asks the `events` query
for what is new. `ui_chunks` turns those events into UI message stream chunks.
"""

import json
from collections.abc import AsyncIterator
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle

from keel.contracts import (
    EVENTS_QUERY,
    STATE_QUERY,
    WAITING_EVENTS,
    ApprovalRequested,
    Message,
    RunEvent,
    RunFinished,
    RunState,
    RunStatus,
    StepFinished,
    StepStarted,
    TextProduced,
    ToolCallRequested,
    ToolResultReady,
)
from keel.store import RunStore

# History events after which the workflow's state may have changed.
_PROGRESS = {
    EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW,
}


async def follow_run(handle: WorkflowHandle[Any, Any], after: int = 0) -> AsyncIterator[list[RunEvent]]:
    """Batches of events with seq > after, until the run has finished."""
    history = handle.fetch_history_events(wait_new_event=True)
    while True:
        await history.fetch_next_page()
        closed = history.next_page_token is None
        if closed or any(e.event_type in _PROGRESS for e in history.current_page or ()):
            events: list[RunEvent] = await handle.query(EVENTS_QUERY, after, result_type=list[RunEvent])
            if events:
                after = events[-1].seq
                yield events
                if isinstance(events[-1], RunFinished):
                    return
        if closed:
            # Closed without saying so: terminated, timed out or cancelled from outside Keel.
            yield [await _ended_from_outside(handle, after + 1)]
            return


async def _ended_from_outside(handle: WorkflowHandle[Any, Any], seq: int) -> RunFinished:
    status = (await handle.describe()).status
    name = status.name.lower() if status else "unknown"
    final = RunStatus.completed if status == WorkflowExecutionStatus.COMPLETED else RunStatus.failed
    return RunFinished(seq=seq, status=final, detail=f"the workflow ended as {name} outside the agent loop")


async def ui_chunks(
    handle: WorkflowHandle[Any, Any], store: RunStore, agent_run_id: str, *, after: int = 0
) -> AsyncIterator[dict[str, Any]]:
    """The run as UI message stream chunks from event `after` on (the caller adds `[DONE]`).

    Ends with `finish` when the run finishes, or, as the AI SDK expects, when it starts waiting for
    someone: an approval, the user's answer, a client-side tool's result. The client's answer then
    arrives as a new request, which continues the same run from where this stream stopped.
    """
    translator = _Translator(agent_run_id)
    yield {"type": "start", "messageId": agent_run_id}
    yield _run_data(agent_run_id, RunStatus.running, None)
    async for events in follow_run(handle, after):
        seqs = [e.message_seq for e in events if isinstance(e, TextProduced | ToolResultReady)]
        seqs += [
            e.partial_message_seq for e in events if isinstance(e, RunFinished) and e.partial_message_seq
        ]
        bodies = await store.messages(agent_run_id, seqs) if seqs else {}
        for event in events:
            for chunk in translator.chunks(event, bodies):
                yield chunk
        if any(isinstance(e, WAITING_EVENTS) for e in events) and not isinstance(events[-1], RunFinished):
            state: RunState = await handle.query(STATE_QUERY, result_type=RunState)
            if not state.status.is_final:
                for chunk in translator.pause(state):
                    yield chunk
                return


class _Translator:
    """Run events to UI message stream chunks, keeping the step and text parts balanced."""

    def __init__(self, agent_run_id: str) -> None:
        self.agent_run_id = agent_run_id
        # A continued stream starts inside the step that paused; that step's start was already sent.
        self.in_step = False

    def chunks(self, event: RunEvent, bodies: dict[int, Message]) -> list[dict[str, Any]]:
        match event:
            case StepStarted():
                self.in_step = True
                return [{"type": "start-step"}]
            case TextProduced(message_seq=seq):
                return _text(f"text-{seq}", _body(bodies, seq).content)
            case ToolCallRequested(call=call):
                return [
                    {
                        "type": "tool-input-available",
                        "toolCallId": call.id,
                        "toolName": call.name,
                        "input": call.arguments,
                    }
                ]
            case ApprovalRequested(tool_call_id=call_id):
                return [{"type": "tool-approval-request", "approvalId": call_id, "toolCallId": call_id}]
            case ToolResultReady(tool_call_id=call_id, message_seq=seq, is_error=is_error, denied=denied):
                if denied:
                    return [{"type": "tool-output-denied", "toolCallId": call_id}]
                result = _body(bodies, seq)
                if is_error:
                    return [{"type": "tool-output-error", "toolCallId": call_id, "errorText": result.content}]
                return [
                    {
                        "type": "tool-output-available",
                        "toolCallId": call_id,
                        "output": _output(result.content),
                    }
                ]
            case StepFinished():
                return self._end_step()
            case RunFinished(status=status, detail=detail, partial_message_seq=partial):
                chunks: list[dict[str, Any]] = []
                if partial is not None and partial in bodies and bodies[partial].content:
                    chunks += _text(f"text-{partial}", bodies[partial].content)
                if status not in (RunStatus.completed, RunStatus.failed) and detail:
                    # Budgets, limits and cancellation end the run with a final message a person can read.
                    chunks += _text(f"notice-{event.seq}", f"[{status.value}] {detail}")
                chunks += self._end_step()
                chunks.append(_run_data(self.agent_run_id, status, detail))
                if status is RunStatus.failed:
                    chunks.append({"type": "error", "errorText": detail or "the run failed"})
                chunks.append({"type": "finish", "finishReason": _FINISH_REASONS.get(status, "other")})
                return chunks
        return []  # approval decisions, questions, client tool requests: no chunk of their own

    def pause(self, state: RunState) -> list[dict[str, Any]]:
        return [
            *self._end_step(),
            _run_data(self.agent_run_id, state.status, state.detail),
            {"type": "finish", "finishReason": "tool-calls"},
        ]

    def _end_step(self) -> list[dict[str, Any]]:
        if not self.in_step:
            return []
        self.in_step = False
        return [{"type": "finish-step"}]


_FINISH_REASONS = {
    RunStatus.completed: "stop",
    RunStatus.failed: "error",
}


def _text(part_id: str, text: str) -> list[dict[str, Any]]:
    return [
        {"type": "text-start", "id": part_id},
        {"type": "text-delta", "id": part_id, "delta": text},
        {"type": "text-end", "id": part_id},
    ]


def _run_data(agent_run_id: str, status: RunStatus, detail: str | None) -> dict[str, Any]:
    """A `data-run` part: the run's id and status, replaced in place as it changes."""
    return {
        "type": "data-run",
        "id": agent_run_id,
        "data": {"agentRunId": agent_run_id, "status": status.value, "detail": detail},
    }


def _body(bodies: dict[int, Message], seq: int) -> Message:
    message = bodies.get(seq)
    if message is None:
        # The activity stores the body before the workflow hears of it, so this means lost data.
        raise LookupError(f"message {seq} of the run is missing from PostgreSQL")
    return message


def _output(content: str) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        return content
