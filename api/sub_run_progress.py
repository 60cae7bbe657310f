"""A sub-agent's progress inside the stream of the run that called it.

When a run calls another agent as a tool (Agent.as_tool), the child run has a stream of its own. A stream
of the parent follows each child while the call is open: it reads the child's chunks as any viewer would
(api/run_stream.py, with the child's own children in turn), assembles the child's message from them, and
shows it to the parent's client as the call's preliminary output (`SubRunProgress`, the AI SDK's
preliminary tool results), which `useChat` keeps on the tool part and replaces with each new one.

Snapshots are whole, so none depends on the one before: they carry no SSE id, a client that reconnects
gets the latest one again (and every chunk of the parent's own it missed, by Last-Event-ID), and a slow
client simply skips the ones it could not take (a follower keeps only the latest).
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from keel import ui_protocol as ui
from keel.client import AssistantMessage
from keel.contracts import RunStatus, SubRunStarted

log = logging.getLogger("keel.api")


class SubRunFollower:
    """Follows one child run's chunks into its message, and says when there is something new to show."""

    def __init__(
        self,
        started: SubRunStarted,
        chunks: AsyncIterator[ui.UIMessageChunk],
        changed: Callable[[str], Awaitable[None]],
    ) -> None:
        self.started = started
        self.message = AssistantMessage(id=started.agent_run_id)
        # True while the parent's stream has been told of a change it has not shown yet.
        self.pending = False
        self._changed = changed
        self._task = asyncio.create_task(self._follow(chunks))

    def progress(self) -> ui.SubRunProgress:
        """The child as far as it has come: every field written, so a client need not guess."""
        self.pending = False
        return ui.SubRunProgress(
            agent_run_id=self.started.agent_run_id,
            agent=self.started.agent,
            status=RunStatus(self.message.status),
            detail=self.message.detail,
            parts=[part.wire() for part in self.message.parts],
        )

    def stop(self) -> None:
        self._task.cancel()

    async def _follow(self, chunks: AsyncIterator[ui.UIMessageChunk]) -> None:
        try:
            async for chunk in chunks:
                self.message.apply(chunk)
                if not self.pending:
                    self.pending = True
                    await self._changed(self.started.tool_call_id)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # the parent's stream goes on without this child's progress
            log.warning(
                "stopped following sub-run %s: %s",
                self.started.agent_run_id,
                err,
                extra={"agent_run_id": self.started.agent_run_id},
            )
