"""The workflow keeps bodies out of history, replays deterministically and imports nothing that does I/O."""

import subprocess
import sys

import httpx
from temporalio.client import Client
from temporalio.worker import Replayer

from tests.conftest import ROOT, run_events
from tests.ui_stream import chat, chat_body
from workflows.agent_run import AgentRun


async def history_bytes(temporal: Client, run_id: str) -> int:
    """The bytes of what the run's history carries: every event but the workflow tasks' bookkeeping."""
    history = await temporal.get_workflow_handle(run_id).fetch_history()
    return sum(e.ByteSize() for e in run_events(history))


async def test_message_bodies_stay_out_of_history(http: httpx.AsyncClient, temporal: Client) -> None:
    short = await chat(http, chat_body("calculate 1 + 1 for me"))
    # The same request after a long conversation (8 earlier messages, 400 KB): history must not grow with it.
    earlier = [
        {"id": f"e{i}", "role": role, "parts": [{"type": "text", "text": f"{role} says " + "blah " * 10_000}]}
        for i, role in enumerate(["user", "assistant"] * 4)
    ]
    long_body = chat_body("calculate 1 + 1 for me")
    long = await chat(http, {**long_body, "messages": earlier + long_body["messages"]})

    assert short.tool_names == long.tool_names == ["calculate"]
    short_size = await history_bytes(temporal, short.response.headers["x-agent-run-id"])
    long_size = await history_bytes(temporal, long.response.headers["x-agent-run-id"])
    assert long_size - short_size < 1_000, (short_size, long_size)


async def test_recorded_histories_replay_deterministically(http: httpx.AsyncClient, temporal: Client) -> None:
    runs = [
        await chat(
            http,
            chat_body("plan, write and publish a lesson on recursion", purpose="learnpack-lesson-writer"),
        ),
        await chat(
            http,
            chat_body("plan and write a lesson on loops", purpose="learnpack-lesson-writer", max_steps=1),
        ),
        await chat(http, chat_body("calculate 1 / 0")),
    ]
    replayer = Replayer(workflows=[AgentRun], data_converter=temporal.data_converter)
    for run in runs:
        history = await temporal.get_workflow_handle(run.response.headers["x-agent-run-id"]).fetch_history()
        result = await replayer.replay_workflow(history)
        assert result.replay_failure is None


def test_workflow_code_imports_nothing_that_does_io() -> None:
    probe = (
        "import sys, workflows.agent_run; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'asyncpg', 'httpx', 'openai', 'anthropic', 'fastapi', 'uvicorn', 'activities', 'api', 'sse_starlette'} "
        "or m == 'keel.storage.store'); print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
