"""How a run starts, in one place: its first messages, its workflow input (`AgentRunInput`), what is written
before its workflow starts, and the options Temporal starts it with.

The gateway (api/run_service.py), keel.testing, and the tests and benchmarks that start workflows directly
all start runs through these functions, so a run started any of those ways is the same run.

It lives in keel/ because keel.testing uses it, and keel/ never imports api/. It is not part of
keel/contracts.py because the workflow sandbox imports that module, which must therefore do no I/O, and
starting a run is I/O (PostgreSQL, Temporal).
"""

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDReusePolicy

from keel.agent import Agent, RunContext
from keel.contracts import (
    RUN_TASK_TIMEOUT,
    WORKFLOW_TYPE,
    AgentRunInput,
    ClientTool,
    Message,
    PurposeSpec,
    RunState,
)
from keel.settings import get_settings
from keel.storage import run_records
from keel.storage.store import RunStore
from keel.text import one_line

# The preview of the request a run carries (its record, the Temporal Web UI), in characters.
SUMMARY_CHARS = 120


def new_run_id() -> str:
    """A run's id: its workflow id, its key in PostgreSQL and in URLs (the gateway checks this form)."""
    return f"run-{uuid.uuid4()}"


def first_messages(agent: Agent, context: RunContext, conversation: Sequence[Message]) -> list[Message]:
    """The run's conversation as its model first sees it: the agent's instructions, the application
    context when the request sent one, then the conversation. Raises what the agent's instructions raise."""
    system = [Message(role="system", content=agent.instructions_for(context))]
    if context.context:
        system.append(Message(role="system", content="Application context:\n" + json.dumps(context.context)))
    return [*system, *conversation]


def run_input(
    purpose: PurposeSpec,
    messages: Sequence[Message],
    *,
    agent_run_id: str | None = None,
    chat_id: str | None = None,
    user_id: str | None = None,
    client_tools: Sequence[ClientTool] = (),
    heavy_task_queue: str | None = None,
    webhooks: Sequence[str] = (),
    metadata: Mapping[str, Any] | None = None,
    limited_routes: Sequence[str] | None = None,
) -> AgentRunInput:
    """The workflow input of a new run (a new id unless one is given) over `messages`, which go into
    PostgreSQL at seq 0.. before the workflow starts (`record_start`). Its summary is the last message on
    one line, clipped. `heavy_task_queue` None keeps the contract's default queue name; `webhooks` are the
    endpoints its events go to, `metadata` the caller's own data about it. `limited_routes`: the provider
    limit patterns the run obeys, by default this process's KEEL_PROVIDER_LIMITS."""
    run = AgentRunInput(
        agent_run_id=agent_run_id or new_run_id(),
        purpose=purpose,
        message_count=len(messages),
        chat_id=chat_id,
        user_id=user_id,
        client_tools=list(client_tools),
        input_summary=one_line(messages[-1].content, SUMMARY_CHARS) if messages else "",
        webhooks=list(webhooks),
        metadata=dict(metadata or {}),
        limited_routes=sorted(get_settings().provider_limits if limited_routes is None else limited_routes),
    )
    if heavy_task_queue is None:
        return run
    return run.model_copy(update={"heavy_task_queue": heavy_task_queue})


async def record_start(store: RunStore, run: AgentRunInput, messages: Sequence[Message]) -> None:
    """What must be in PostgreSQL before the workflow starts: the conversation it reads, its place in its
    chat, and its first record (which the reconciler ends if the workflow then never starts)."""
    await store.put_messages(run.agent_run_id, 0, list(messages))
    if run.chat_id is not None:
        await store.record_chat_run(run.chat_id, run.agent_run_id, run.user_id)
    await run_records.run_started(
        store.pool,
        agent_run_id=run.agent_run_id,
        purpose=run.purpose.slug,
        model=run.purpose.model,
        chat_id=run.chat_id,
        user_id=run.user_id,
        input_summary=run.input_summary,
        queued_behind=run.queued_behind,
        metadata=run.metadata,
    )


async def start_run(
    client: Client, run: AgentRunInput, task_queue: str, *, once: bool = False
) -> WorkflowHandle[Any, RunState]:
    """Start the run's workflow: its workflow id is the run's id; the Web UI shows the agent and the request
    as its summary; its memo names its user. Temporal's default id policies hold: every run id is new, and
    a start under an id that is already running fails. `once`: it fails under an id that ever ran, too (a
    run started again by an idempotent request must never run twice)."""
    return await client.start_workflow(
        WORKFLOW_TYPE,
        run,
        id=run.agent_run_id,
        task_queue=task_queue,
        static_summary=f"{run.purpose.slug}: {run.input_summary}",
        memo={"user_id": run.user_id} if run.user_id else None,
        task_timeout=RUN_TASK_TIMEOUT,
        result_type=RunState,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE
        if once
        else WorkflowIDReusePolicy.ALLOW_DUPLICATE,
    )
