"""Starting agent runs for the benchmarks: through Keel (workflow AgentRun), through the bare baseline
(bench/bare.py), and in-process without Temporal, all doing the same work on the same conversation.

Runs are started the way the gateway starts them: the conversation goes into PostgreSQL first, then the
workflow starts with the purpose snapshotted into its input.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass

from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from activities.agent_activities import AgentActivities
from bench.bare import BARE_TASK_QUEUE, BARE_WORKFLOW, BareInput
from bench.harness import HEAVY_TASK_QUEUE, TASK_QUEUE, Harness
from keel.app import load_app
from keel.contracts import Budgets, LlmStepInput, Message, PurposeSpec, ToolInput
from keel.run_start import new_run_id, run_input, start_run
from keel.storage.deltas import PostgresDeltaChannel
from keel.storage.store import RunStore

# Two cheap tools the scripted model calls together when asked "in parallel": an agent step with one LLM
# call and two tool calls, then a final step that writes the answer.
TOOLS = ["calculate", "current_time"]
REQUEST = "calculate 2 + 3 and tell me the time, in parallel"
SYSTEM = "You are a benchmark. Use the calculator and the clock."


def purpose(tools: Sequence[str] = TOOLS, max_steps: int = 10) -> PurposeSpec:
    return PurposeSpec(
        slug="bench", model="scripted", tools=list(tools), budgets=Budgets(max_steps=max_steps)
    )


def conversation(text: str = REQUEST) -> list[Message]:
    return [Message(role="system", content=SYSTEM), Message(role="user", content=text)]


@dataclass
class Timed:
    seconds: float
    steps: int
    run_id: str

    @property
    def ms_per_step(self) -> float:
        return self.seconds * 1000 / self.steps


async def keel_run(
    client: Client,
    store: RunStore,
    messages: Sequence[Message] | None = None,
    *,
    spec: PurposeSpec | None = None,
    chat_id: str | None = None,
) -> Timed:
    """One AgentRun from start to result; the clock starts once the conversation is stored."""
    messages = list(messages or conversation())
    run = run_input(spec or purpose(), messages, chat_id=chat_id, heavy_task_queue=HEAVY_TASK_QUEUE)
    run_id = run.agent_run_id
    await store.put_messages(run_id, 0, messages)
    started = time.perf_counter()
    state = await (await start_run(client, run, TASK_QUEUE)).result()
    elapsed = time.perf_counter() - started
    if state.status != "completed":
        raise RuntimeError(f"Keel run {run_id} ended {state.status}: {state.detail}")
    return Timed(elapsed, state.step, run_id)


async def bare_run(
    client: Client,
    store: RunStore,
    messages: Sequence[Message] | None = None,
    *,
    tools: Sequence[str] = TOOLS,
    local_tools: bool = False,
    local_llm: bool = False,
) -> Timed:
    """The same run through the bare temporalio loop."""
    run_id = new_run_id()
    messages = list(messages or conversation())
    await store.put_messages(run_id, 0, messages)
    started = time.perf_counter()
    steps = await client.execute_workflow(
        BARE_WORKFLOW,
        BareInput(
            agent_run_id=run_id,
            model="scripted",
            tools=list(tools),
            message_count=len(messages),
            local_tools=local_tools,
            local_llm=local_llm,
        ),
        id=run_id,
        task_queue=BARE_TASK_QUEUE,
        result_type=int,
    )
    return Timed(time.perf_counter() - started, steps, run_id)


async def in_process_run(
    activities: AgentActivities, messages: Sequence[Message] | None = None, *, tools: Sequence[str] = TOOLS
) -> Timed:
    """The same loop and the same activity code in this process, with no Temporal at all.

    temporalio's ActivityEnvironment gives the activities the context they read (attempt, ids) and drops
    their heartbeats; everything else (PostgreSQL reads and writes, the model, the tools) really runs.
    """
    env = ActivityEnvironment()
    run_id = new_run_id()
    messages = list(messages or conversation())
    await activities.store.put_messages(run_id, 0, messages)
    started = time.perf_counter()
    next_seq, step = len(messages), 0
    while True:
        step += 1
        reply = await env.run(
            activities.call_llm,
            LlmStepInput(
                agent_run_id=run_id, step=step, model="scripted", tools=list(tools), reply_seq=next_seq
            ),
        )
        next_seq += 1
        if not reply.tool_calls:
            break
        tasks = []
        for call in reply.tool_calls:
            tasks.append(
                env.run(
                    activities.run_tool,
                    ToolInput(agent_run_id=run_id, step=step, call=call, result_seq=next_seq),
                )
            )
            next_seq += 1
        await asyncio.gather(*tasks)
    return Timed(time.perf_counter() - started, step, run_id)


async def interleaved(
    variants: dict[str, Callable[[], Awaitable[Timed]]], *, rounds: int, warmup: int
) -> dict[str, list[Timed]]:
    """Run each variant once per round, in an order that rotates every round, after `warmup` rounds
    whose results are dropped. Rotating the order keeps drift (a compaction, a GC) from favouring one."""
    names = list(variants)
    results: dict[str, list[Timed]] = {name: [] for name in names}
    for index in range(warmup + rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            timed = await variants[name]()
            if index >= warmup:
                results[name].append(timed)
    return results


@contextlib.contextmanager
def workers(h: Harness, *, keel: bool = True, bare: bool = True, heavy: bool = False) -> Iterator[None]:
    """Keel's worker (and heavy-tool worker) and the baseline's worker for one section, stopped when it
    ends."""
    procs = []
    try:
        if keel:
            procs.append(h.spawn_worker())
        if heavy:
            procs.append(h.spawn_worker(queue="heavy"))
        if bare:
            procs.append(h.spawn_polling([sys.executable, "-m", "bench.bare_worker"], "worker-bare"))
        yield
    finally:
        for proc in procs:
            h.stop(proc)


def in_process_activities(store: RunStore, h: Harness) -> AgentActivities:
    """Keel's activities in this process, publishing deltas like the worker's (no run records)."""
    return AgentActivities(
        store=store, data_dir=h.workdir / "data", deltas=PostgresDeltaChannel(store.pool), app=load_app()
    )
