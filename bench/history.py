"""7. History per step as the conversation grows: events and bytes of workflow history per agent step.

One chat goes on for many turns. Each turn is a new run whose conversation is the previous run's whole
conversation plus a new user message carrying ~1 KB of text, as the gateway does when a chat continues;
so by the last turn the model reads hundreds of messages. Message bodies live in PostgreSQL and the
workflow passes only sequence numbers, so a run's history per step must stay flat.
"""

from __future__ import annotations

from temporalio.client import Client

from bench import runs
from bench.harness import Harness
from bench.report import Figure, Section, at_most
from keel.contracts import Message
from keel.run_start import new_run_id
from keel.storage.store import RunStore

FILLER = " ".join(["lorem ipsum dolor sit amet consectetur"] * 27)  # ~1 KB, no trigger words, no digits
FLAT_TARGET = 1.05


async def _history(client: Client, run_id: str) -> tuple[int, int]:
    """(events, bytes) of a closed run's history."""
    history = await client.get_workflow_handle(run_id).fetch_history()
    return len(history.events), sum(e.ByteSize() for e in history.events)


async def _conversation(store: RunStore, run_id: str) -> list[Message]:
    return await store.conversation(run_id, 1_000_000)


async def run(h: Harness, quick: bool) -> Section:
    turns = 10 if quick else 40
    client, store = await h.client(), await h.store()
    chat_id = f"chat-{new_run_id()}"
    request = Message(role="user", content=f"{runs.REQUEST}. {FILLER}")
    per_turn: list[tuple[int, float, float]] = []  # (messages read, events per step, bytes per step)
    conversation = [runs.conversation()[0]]
    with runs.workers(h):
        for _ in range(turns):
            asked = [*conversation, request]
            timed = await runs.keel_run(client, store, asked, chat_id=chat_id)
            events, size = await _history(client, timed.run_id)
            per_turn.append((len(asked), events / timed.steps, size / timed.steps))
            conversation = await _conversation(store, timed.run_id)
        # The last turn again through the bare loop: what the history would hold without Keel.
        bare = await runs.bare_run(client, store, asked, local_tools=True, local_llm=True)
        bare_events, bare_size = await _history(client, bare.run_id)
    (first_n, first_events, first_bytes), (last_n, last_events, last_bytes) = per_turn[0], per_turn[-1]
    growth = last_bytes / first_bytes
    target, met = at_most(growth, FLAT_TARGET)
    kilobytes = sum(len(m.content) for m in asked) / 1000
    return Section(
        "history",
        "History per step",
        figures=[
            Figure(
                f"Bytes per step, turn {turns} ({last_n} messages) ÷ turn 1 ({first_n} messages)",
                growth,
                "×",
                target=target,
                met=met,
            ),
            Figure(
                f"Bytes per step at turn {turns}", last_bytes, "B", baseline=first_bytes, note="vs turn 1"
            ),
            Figure(
                f"Events per step at turn {turns}",
                last_events,
                "events",
                baseline=first_events,
                note="vs turn 1",
            ),
            Figure(
                "Keel history per step ÷ bare temporalio's",
                last_bytes / (bare_size / bare.steps),
                "×",
                note=f"bare: {bare_size / bare.steps:,.0f} B, {bare_events / bare.steps:.1f} events per step",
            ),
        ],
        notes=[
            f"One chat, {turns} turns, each a new run continuing the previous run's conversation (by the last "
            f"turn {last_n} messages, {kilobytes:.0f} KB of text); each run is 2 steps with 2 inline tool "
            "calls. Bytes are the protobuf size of the run's history events (fetch_history).",
        ],
    )
