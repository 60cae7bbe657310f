"""One active run per chat, whatever arrives at once: the double-texting policies (KEEL_DOUBLE_TEXTING).

A new message on a chat whose run is still active is refused (`reject`, 409), queued behind it
(`enqueue`: the new run starts at once but waits, durably, for the run ahead to tell it it is done), or
replaces it (`interrupt`: the active runs are cancelled first). `POST /api/chat` decides this under the
chat's lock (`RunStore.chat_lock`), so concurrent requests, on any number of gateways, are decided one
after the other, each seeing the runs the ones before it started: `reject` lets one through, `enqueue`
builds one queue in arrival order (each run behind the one before it), `interrupt` leaves one run.
"""

import asyncio
from dataclasses import dataclass

from fastapi import HTTPException
from temporalio.service import RPCError

from api.gateway import Gateway
from keel.contracts import (
    CANCEL_SIGNAL,
    PREVIOUS_DONE_SIGNAL,
    QUEUE_NEXT_SIGNAL,
    CancelRequest,
    QueuedRun,
    RunStatus,
)
from keel.storage.store import RunStore

INTERRUPT_WAIT_SECONDS = 30
# Runs ahead that may close one after the other while a new run is being queued behind them.
_QUEUE_TRIES = 5


async def make_room(chat_id: str, gw: Gateway, chat: RunStore, regenerating: str | None) -> str | None:
    """Apply the policy to the chat's active runs (called under the chat's lock). Returns the run a new
    one must queue behind, if any; raises 409 under `reject`; cancels under `interrupt`.

    Regenerating the active run's own answer (`regenerate-message` naming it) always interrupts: the user
    asked for that answer to be replaced, whatever the policy for new messages."""
    active = await active_runs(chat_id, gw, chat)
    if not active:
        return None
    newest = active[0]
    replaced = newest.agent_run_id == regenerating
    policy = "interrupt" if replaced else gw.settings.double_texting
    if policy == "reject":
        raise HTTPException(
            409,
            f"chat {chat_id!r} already has an active run {newest.agent_run_id} ({newest.status.value}): "
            f"answer it, cancel it (POST /api/runs/{newest.agent_run_id}/cancel) or wait for it to finish",
        )
    if policy == "enqueue":
        return newest.agent_run_id  # the last in the queue: the new run's turn comes after it
    why = "replaced: the user asked for a new answer" if replaced else "interrupted by a new message"
    await asyncio.gather(*(_cancel_and_wait(gw, run.agent_run_id, why) for run in active))
    return None


@dataclass(frozen=True)
class ActiveRun:
    agent_run_id: str
    status: RunStatus


async def active_runs(chat_id: str, gw: Gateway, chat: RunStore) -> list[ActiveRun]:
    """The chat's active runs, newest first: a run that runs or waits, and under `enqueue` the runs
    queued behind it. The records say which runs may be active; Temporal has the last word (a run in the
    middle of a workflow task, its model answering, runs: it is not asked, as it would answer only once
    that task ends)."""
    active = []
    for agent_run_id in await chat.unfinished_chat_runs(chat_id):
        try:
            state = await gw.state_unless_busy(agent_run_id)
        except HTTPException as err:
            if err.status_code == 404:  # recorded, but its workflow never started
                continue
            raise
        if state is None:
            active.append(ActiveRun(agent_run_id, RunStatus.running))
        elif not state.status.is_final:
            active.append(ActiveRun(agent_run_id, state.status))
    return active


async def queue_behind(gw: Gateway, chat: RunStore, chat_id: str, ahead: str, queued: str) -> None:
    """Tell the run ahead which run waits for it (called under the chat's lock, once the queued run has
    started). If the run ahead has closed meanwhile, the queued run waits for the next active run of the
    chat instead, or, when none is left, goes on at once."""
    for _ in range(_QUEUE_TRIES):
        try:
            await gw.run(ahead).signal(QUEUE_NEXT_SIGNAL, QueuedRun(agent_run_id=queued))
            return
        except RPCError:
            others = [
                r.agent_run_id for r in await active_runs(chat_id, gw, chat) if r.agent_run_id != queued
            ]
            if not others:
                break
            ahead = others[0]
    await gw.run(queued).signal(PREVIOUS_DONE_SIGNAL)


async def _cancel_and_wait(gw: Gateway, agent_run_id: str, why: str) -> None:
    handle = gw.run(agent_run_id)
    try:
        await handle.signal(CANCEL_SIGNAL, CancelRequest(reason=why))
    except RPCError:
        return  # it has closed meanwhile
    await gw.interrupt(agent_run_id)
    try:
        await asyncio.wait_for(handle.result(), INTERRUPT_WAIT_SECONDS)
    except TimeoutError:
        raise HTTPException(503, f"run {agent_run_id} did not stop in time; try again") from None
    except Exception:  # it ended, one way or another: that is all that matters here
        pass
