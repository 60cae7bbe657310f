"""Double texting with the `enqueue` policy, from the run's side: a run queued behind the chat's active run
waits for its turn, and a run that ends tells the runs queued behind it.

The gateway queues a run by starting it with `queued_behind` and signalling the active run (`queue_next`);
the active run signals each queued run (`previous_run_finished`) when it is over.
"""

from collections.abc import Callable

from temporalio import workflow
from temporalio.exceptions import FailureError

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel

    from keel.contracts import PREVIOUS_DONE_SIGNAL, QUEUE_NEXT_SIGNAL, AgentRunInput, QueuedRun

# This release's changes to double texting, behind one patch: a queued run can be cancelled before its turn,
# and hands its own queue to the run ahead; telling a run that has closed no longer fails the run that tells
# it.
_CANCEL_QUEUED = "keel-cancel-queued"


class ChatQueue:
    """The runs queued behind this one, and whether the run ahead of it is done."""

    def __init__(self, run: AgentRunInput) -> None:
        self._queued_behind = run.queued_behind
        carried = run.carried
        self._queued: list[str] = [] if carried is None else list(carried.queued)
        # A run that continued as new had its turn already.
        self._may_start = run.queued_behind is None or carried is not None

    @property
    def may_start(self) -> bool:
        return self._may_start

    @property
    def queued(self) -> list[str]:
        return self._queued

    def waiting_line(self) -> str | None:
        """The run's current details while it waits for its turn; None once it may start."""
        return None if self._may_start else f"queued behind {self._queued_behind}"

    def queue_next(self, queued: QueuedRun) -> None:
        self._queued.append(queued.agent_run_id)

    def previous_run_finished(self) -> None:
        self._may_start = True

    async def wait_for_turn(self, interrupted: Callable[[], bool]) -> None:
        """Until the run ahead has finished, or the run is `interrupted` (runs queued before this release
        wait for their turn whatever happens, as they did then)."""
        if workflow.patched(_CANCEL_QUEUED):
            await workflow.wait_condition(lambda: self._may_start or interrupted())
        else:
            await workflow.wait_condition(lambda: self._may_start)

    async def release(self) -> None:
        """Tell the runs queued behind this one that it is over. Each starts, unless this run ended before
        its own turn (cancelled while queued): then they move up behind the run this one waited for, keeping
        their place in the chat's queue. Signals that arrive while the workflow completes make Temporal
        retry the completion, so no queued run is missed."""
        await workflow.wait_condition(workflow.all_handlers_finished)
        ahead = self._queued_behind if not self._may_start and self._queued else None
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
