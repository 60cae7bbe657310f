"""What an agent run tells the world as it goes: numbered run events with a log line each, its status and
how it ended, and its one-line current details in the Temporal Web UI.

The `events` query serves the events (the gateway turns them into the chat stream); the `state` query and
the run records read the status.
"""

from collections.abc import Callable
from typing import Any, TypeVar

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from keel.contracts import (
        AgentRunInput,
        ApprovalDecided,
        ApprovalRequested,
        ClientToolRequested,
        HandedOff,
        QuestionAsked,
        RunEvent,
        RunFinished,
        RunStatus,
        StepFinished,
        StepStarted,
        SubRunStarted,
        TextProduced,
        ToolCallRequested,
        ToolResultReady,
    )
    from workflows.chat_queue import ChatQueue
    from workflows.ledger import RunLedger
    from workflows.people import PeopleDesk
    from workflows.stop_conditions import Stop

# One of the run event types; `emit` numbers it.
EventT = TypeVar(
    "EventT",
    StepStarted,
    TextProduced,
    ToolCallRequested,
    ToolResultReady,
    ApprovalRequested,
    ApprovalDecided,
    QuestionAsked,
    ClientToolRequested,
    SubRunStarted,
    HandedOff,
    StepFinished,
    RunFinished,
)


class RunReporter:
    """The run's events and outcome; it reads where the run stands (ledger), whom it waits for (desk) and
    whether its turn has come (queue)."""

    def __init__(self, run: AgentRunInput, ledger: RunLedger, desk: PeopleDesk, queue: ChatQueue) -> None:
        self._run = run
        self._ledger = ledger
        self._desk = desk
        self._queue = queue
        self._events: list[RunEvent] = [] if run.carried is None else list(run.carried.events)
        # How many of them a local model call has announced (LlmStepInput.events); carried ones were known.
        self._announced = len(self._events)
        # How the run ended (None while it goes on), and why; while it waits for its turn, `detail` says so.
        self.final: RunStatus | None = None
        self.detail: str | None = None
        # Provider limits (workflows/capacity.py): what the run waits for while it waits for capacity; "" once
        # it got it (clears the record's detail), None for a run that never waited.
        self.capacity_wait: str | None = None
        # The failure's type name, for the run's record, when it ends as failed.
        self.error_type: str | None = None
        # What the run is doing right now (an LLM call, tools running), by what does it.
        self._doing: dict[str, str] = {}
        # Told of every event as it is emitted (workflows/webhooks.py: the run's webhook deliveries).
        self.listener: Callable[[RunEvent], None] | None = None

    @property
    def events(self) -> list[RunEvent]:
        return self._events

    def events_after(self, after: int) -> list[RunEvent]:
        return self._events[after:]

    def unannounced(self) -> list[RunEvent]:
        """The events since the previous local model call took them, for the next one to announce."""
        new, self._announced = self._events[self._announced :], len(self._events)
        return new

    def emit(self, event_type: type[EventT], **fields: Any) -> EventT:
        event = event_type(seq=len(self._events) + 1, **fields)
        self._events.append(event)
        # One log line per event (never on replay: workflow.logger skips it).
        tool = event.call.name if isinstance(event, ToolCallRequested) else None
        workflow.logger.info(
            _event_line(event),
            extra={
                "agent_run_id": self._run.agent_run_id,
                "purpose": self._run.purpose.slug,
                "phase": _PHASES.get(event.type, "act"),
                "step": getattr(event, "step", None),
                "tool": tool,
                "event": event.type,
            },
        )
        self.describe()
        if self.listener is not None:
            self.listener(event)
        return event

    def end(self, stop: Stop) -> bool:
        """The run's outcome, unless it has one already; True when this is how it ends."""
        if self.final is not None:
            return False
        self.final, self.detail = stop.status, stop.detail
        return True

    def status(self) -> RunStatus:
        if self.final is not None:
            return self.final
        waiting = self._desk.waiting_status()
        return waiting if waiting is not None else RunStatus.running

    def set_doing(self, key: str, text: str | None) -> None:
        if text is None:
            self._doing.pop(key, None)
        else:
            self._doing[key] = text
        self.describe()

    def describe(self) -> None:
        """The run's current details, one line saying what it does or waits for (Web UI, `describe`).

        Called at every event, so it reads what it needs rather than building the whole `state`."""
        if self.final is not None:
            line = self.final.value + (f": {self.detail}" if self.detail else "")
        elif waiting := self._desk.waiting_line() or self._queue.waiting_line():
            line = waiting
        elif self._doing:
            line = "; ".join(self._doing.values())
        else:
            line = "running"
        step = self._ledger.step
        workflow.set_current_details(f"step {step} · {line}" if step else line)


_PHASES = {
    "step_started": "think",
    "text": "think",
    "tool_call": "think",
    "approval_requested": "wait",
    "approval_decided": "wait",
    "question_asked": "wait",
    "client_tool_requested": "wait",
    "sub_run_started": "act",
    "handed_off": "act",
    "step_finished": "act",
    "run_finished": "finish",
}


def _event_line(event: RunEvent) -> str:
    """A run event as a log message."""
    if isinstance(event, ToolCallRequested):
        return f"step {event.step}: the model called {event.call.name} ({event.call.id})"
    if isinstance(event, RunFinished):
        return f"run finished: {event.status.value}" + (f" ({event.detail})" if event.detail else "")
    what = event.type.replace("_", " ")
    call: str | None = getattr(event, "tool_call_id", None)
    return f"step {event.step}: " + what + (f" ({call})" if call else "")
