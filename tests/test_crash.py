"""Crash-proof runs: kill -9 of a worker during an LLM call, during a tool (of the heavy worker running it,
or of the agent worker waiting for it) and while a run waits for approval, and of the gateway while clients
stream. Every run completes after a restart with nothing lost and nothing done twice, and clients resume
their streams; a worker that was only frozen, not dead, adds nothing when it wakes. Each test runs its own
worker and gateway subprocesses on task queues of its own (tests/crash_stack.py) and kills them with
SIGKILL."""

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from activities.models.scripted import DISCLAIMER, ScriptedModel
from keel.stack.embedded import EmbeddedPostgres, TemporalDevServer
from keel.storage.store import RunStore
from tests.conftest import Keel
from tests.crash_stack import CrashStack, Process, Watch, task_takers, until, watching
from tests.test_run_records import pick, records
from tests.ui_stream import UIStream, assert_well_formed, chat, chat_body

# scripted:slow writes five pieces a second; its answer to this is ~25 pieces, five seconds of streaming.
LONG = (
    "hello there, tell me everything you know about durable execution, about workers that die in the"
    " middle of a sentence, and about gateways that come back on the same port a moment later"
)


@pytest.fixture
def stack(
    keel: Keel, temporal_server: TemporalDevServer, postgres: EmbeddedPostgres, tmp_path: Path
) -> Iterator[CrashStack]:
    with CrashStack(temporal_server, postgres, tmp_path, keel.env["KEEL_CODEC_KEY_FILE"]) as stack:
        yield stack


async def test_a_worker_killed_during_an_llm_call_and_restarted_finishes_the_reply_once(
    stack: CrashStack, store: RunStore
) -> None:
    stack.env["KEEL_MODEL"] = "scripted:slow"
    worker, gateway = stack.worker(), stack.gateway()
    await stack.start(worker, gateway)

    client, streaming = watching(f"{gateway.url}/api/chat", "POST", json=chat_body(LONG))
    await until(lambda: client.deltas() >= 3, "the first words of the reply")
    worker.kill()  # mid-sentence
    words_before_the_kill = client.stream.text
    await worker.restart()
    await asyncio.wait_for(streaming, 60)

    run_id = client.run_id
    assert client.dropped is None, "the gateway kept the stream open while the worker was away"
    stream = client.stream
    assert_well_formed(stream)
    assert stream.run_status == "completed"
    # The conversation holds the reply once, exactly as the model writes it in one go.
    conversation = await store.conversation(run_id, 100)
    assert [m.role for m in conversation] == ["system", "user", "assistant"]
    reply = conversation[-1].content
    assert reply.startswith(DISCLAIMER) and reply.count(DISCLAIMER) == 1
    assert reply == ScriptedModel({}).answer(conversation[:-1])
    # The client saw the killed attempt's words, then the retry, then the whole reply in a new part.
    abandoned, kept = list(texts := part_texts(stream))
    [retry] = stream.of_type("data-retry")
    assert retry["data"] == {"step": 1, "attempt": 2, "discardedTextId": abandoned}
    assert reply.startswith(texts[abandoned]) and texts[abandoned].startswith(words_before_the_kill)
    assert len(texts[abandoned]) < len(reply)
    assert texts[kept] == reply
    # The run records show the attempt that died and the one that answered.
    rec = await records(store.pool, run_id)
    assert [pick(r, "seq", "attempt") for r in rec["llm"]] == [(2, 1), (2, 2)]
    assert pick(rec["llm"][0], "status", "error_type") == ("error", "WorkerLost")
    assert "never reported back" in rec["llm"][0]["error_message"] and rec["llm"][0]["finished_at"]
    assert rec["llm"][1]["status"] == "ok"
    assert rec["run"]["status"] == "completed"


async def mid_answer_on_one_of_two_workers(
    stack: CrashStack,
) -> tuple[Watch, "asyncio.Task[Watch]", Process, Process]:
    """Two workers and a gateway; a client streaming a slow answer, a few words in. Returns the client, its
    streaming task, the worker running the LLM call and the gateway."""
    stack.env["KEEL_MODEL"] = "scripted:slow"
    workers = [stack.worker("worker-1"), stack.worker("worker-2")]
    gateway = stack.gateway()
    await stack.start(*workers, gateway)
    client, streaming = watching(f"{gateway.url}/api/chat", "POST", json=chat_body(LONG))
    await until(lambda: client.deltas() >= 3, "the first words of the reply")
    # The model call runs inside the run's workflow task, on the worker whose log tells of the run's step.
    [answering] = [w for w in workers if client.run_id in w.log_text()]
    return client, streaming, answering, gateway


async def test_a_worker_stopped_for_a_deploy_lets_the_model_finish_its_answer(
    stack: CrashStack, store: RunStore
) -> None:
    client, streaming, leaving, _ = await mid_answer_on_one_of_two_workers(stack)
    # A deploy's SIGTERM, mid-answer: the worker takes no new work, and the answer in hand has
    # KEEL_WORKER_SHUTDOWN_GRACE_SECONDS (10 s) to finish; scripted:slow needs about 5 s in all.
    os.killpg(leaving.proc.pid, signal.SIGTERM)
    await asyncio.wait_for(streaming, 60)
    assert await asyncio.to_thread(leaving.proc.wait, 30) == 0

    stream = client.stream
    assert_well_formed(stream)
    assert stream.run_status == "completed"
    # One attempt, whole: nothing was started over.
    assert stream.of_type("data-retry") == []
    rec = await records(store.pool, client.run_id)
    assert [pick(r, "attempt", "status") for r in rec["llm"]] == [(1, "ok")]
    assert (await store.conversation(client.run_id, 100))[-1].content == stream.text


async def test_a_frozen_worker_that_wakes_after_its_llm_call_was_retried_adds_nothing(
    stack: CrashStack, store: RunStore
) -> None:
    client, streaming, frozen, gateway = await mid_answer_on_one_of_two_workers(stack)
    run_id = client.run_id
    # The worker stops mid-answer without dying (a long pause, a stalled VM). Temporal presumes it dead after
    # the workflow task timeout, and the other worker takes the run on and calls the model again; then the
    # frozen worker wakes up and carries on. (It wakes as soon as the retry has started: its own outstanding
    # polls may be handed that retry.)
    frozen.freeze()

    async def retried() -> bool:
        attempt = await store.pool.fetchval(
            "SELECT max(attempt) FROM llm_calls WHERE agent_run_id = $1", run_id
        )
        return (attempt or 0) >= 2

    try:
        await until(retried, "Temporal retrying the call", within=60)
    finally:
        frozen.thaw()
    await asyncio.wait_for(streaming, 60)

    stream = client.stream
    assert_well_formed(stream)
    assert stream.run_status == "completed"
    reply = (await store.conversation(run_id, 100))[-1].content
    assert reply == ScriptedModel({}).answer((await store.conversation(run_id, 100))[:-1])
    # Two parts: the woken attempt's, cut short and discarded, then the retry's, whole.
    abandoned, kept = list(texts := part_texts(stream))
    assert [r["data"] for r in stream.of_type("data-retry")] == [
        {"step": 1, "attempt": 2, "discardedTextId": abandoned}
    ]
    assert reply.startswith(texts[abandoned]) and len(texts[abandoned]) < len(reply)
    assert texts[kept] == reply
    # Nothing else reached the log either: a replay is the stream the client saw.
    replay, replaying = watching(f"{gateway.url}/api/runs/{run_id}/events")
    await replaying
    assert replay.pairs == client.pairs
    # The woken attempt was told it is over, and only the retry counted.
    await until(lambda: "call_llm attempt 1 cancelled" in frozen.log_text(), "the woken attempt stopping")
    rec = await records(store.pool, run_id)
    assert [pick(r, "seq", "attempt") for r in rec["llm"]] == [(2, 1), (2, 2)]
    assert rec["llm"][1]["status"] == "ok"


def part_texts(stream: UIStream) -> dict[str, str]:
    """Each text part's text, by part id, in the order the parts began."""
    texts: dict[str, str] = {}
    for chunk in stream.of_type("text-delta"):
        texts[chunk["id"]] = texts.get(chunk["id"], "") + chunk["delta"]
    return texts


async def tool_is(store: RunStore, run_id: str, tool: str, status: str) -> bool:
    """Whether the run's record of that tool's latest attempt has that status."""
    latest = await store.pool.fetchval(
        "SELECT status FROM tool_runs WHERE agent_run_id = $1 AND tool_name = $2 ORDER BY attempt DESC LIMIT 1",
        run_id,
        tool,
    )
    return latest == status


async def while_a_heavy_tool_runs(
    stack: CrashStack, store: RunStore, *, seconds: int
) -> tuple[Watch, "asyncio.Task[Watch]", Process, Process]:
    """An agent worker, a heavy worker and a gateway; a client's run whose `wait` tool (heavy) is running.
    Returns the client, its streaming task, the agent worker and the heavy worker."""
    worker, heavy, gateway = stack.worker(), stack.heavy_worker(), stack.gateway()
    await stack.start(worker, heavy, gateway)
    request = chat_body(f"wait {seconds} seconds please")
    client, streaming = watching(f"{gateway.url}/api/chat", "POST", json=request)
    await until(lambda: client.response is not None, "the run started")
    await until(lambda: tool_is(store, client.run_id, "wait", "running"), "the wait tool running")
    return client, streaming, worker, heavy


async def test_a_heavy_worker_killed_during_a_tool_and_restarted_runs_the_tool_again_and_keeps_one_result(
    stack: CrashStack, store: RunStore
) -> None:
    client, streaming, worker, heavy = await while_a_heavy_tool_runs(stack, store, seconds=6)
    run_id = client.run_id
    heavy.kill()  # the tool is waiting
    await heavy.restart()
    await asyncio.wait_for(streaming, 90)

    assert client.dropped is None
    stream = client.stream
    assert_well_formed(stream)
    assert stream.run_status == "completed"
    [call] = stream.of_type("tool-input-available")
    assert call["toolName"] == "wait"
    assert stream.of_type("tool-output-available") == [
        {"type": "tool-output-available", "toolCallId": call["toolCallId"], "output": {"waited_seconds": 6}}
    ]
    # One result in the conversation, and the model's answer speaks of one tool call.
    conversation = await store.conversation(run_id, 100)
    assert [m.role for m in conversation] == ["system", "user", "assistant", "tool", "assistant"]
    assert json.loads(conversation[3].content) == {"waited_seconds": 6}
    assert "I ran 1 tool call(s)" in conversation[-1].content
    assert stream.text == conversation[-1].content
    # The records show the attempt that died with its worker and the one that finished.
    rec = await records(store.pool, run_id)
    assert [pick(t, "seq", "attempt", "tool_name") for t in rec["tools"]] == [(3, 1, "wait"), (3, 2, "wait")]
    assert rec["tools"][0]["status"] == "error" and "never reported back" in rec["tools"][0]["error_message"]
    assert pick(rec["tools"][1], "status", "result_snapshot") == ("ok", {"waited_seconds": 6})
    # The new heavy worker finished the tool; the agent worker ran the run throughout, undisturbed.
    taken = await task_takers(await stack.temporal(), run_id)
    assert taken["run_tool"] == {heavy.proc.pid}
    assert taken["workflow"] == {worker.proc.pid}
    assert worker.proc.poll() is None


async def test_an_agent_worker_killed_while_a_heavy_tool_runs_does_not_run_the_tool_again(
    stack: CrashStack, store: RunStore
) -> None:
    client, streaming, worker, heavy = await while_a_heavy_tool_runs(stack, store, seconds=3)
    run_id = client.run_id
    worker.kill()  # the run's own worker dies; the heavy worker goes on waiting, and finishes meanwhile
    await until(lambda: tool_is(store, run_id, "wait", "ok"), "the wait tool finishing", within=30)
    await worker.restart()
    await asyncio.wait_for(streaming, 60)

    stream = client.stream
    assert_well_formed(stream)
    assert stream.run_status == "completed"
    [result] = stream.of_type("tool-output-available")
    assert result["output"] == {"waited_seconds": 3}
    # The tool ran once: its result, kept by Temporal while no agent worker was up, was taken as it was.
    rec = await records(store.pool, run_id)
    assert [pick(t, "attempt", "tool_name", "status") for t in rec["tools"]] == [(1, "wait", "ok")]
    taken = await task_takers(await stack.temporal(), run_id)
    assert taken["run_tool"] == {heavy.proc.pid}
    assert heavy.proc.poll() is None


async def test_workers_killed_while_a_run_waits_for_approval_publish_once_after_the_approval(
    stack: CrashStack, store: RunStore
) -> None:
    worker, heavy, gateway = stack.worker(), stack.heavy_worker(), stack.gateway()
    await stack.start(worker, heavy, gateway)
    body = chat_body("plan, write and publish a lesson on crashes", purpose="learnpack-lesson-writer")
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as http:
        first = await chat(http, body)
        assert first.run_status == "waiting_for_approval"
        run_id = first.response.headers["x-agent-run-id"]
        [publish] = first.of_type("tool-approval-request")

        worker.kill()  # nobody runs the workflow or its tools now; the run waits in Temporal
        heavy.kill()
        # The approval is given while no worker is up: the gateway holds it until one takes the run.
        approving = asyncio.create_task(
            http.post(f"/api/runs/{run_id}/approvals/{publish['toolCallId']}", json={"approved": True})
        )
        await stack.start(worker, heavy)
        decided = await asyncio.wait_for(approving, 60)
        assert decided.status_code == 200, decided.text
        # The rest of the run, from right after the last event the first stream had.
        rest, following = watching(
            f"{gateway.url}/api/runs/{run_id}/events", headers={"Last-Event-ID": str(first.ids[-1])}
        )
        await asyncio.wait_for(following, 60)

    assert rest.dropped is None
    stream = rest.stream
    assert_well_formed(stream, resumed=True)
    assert stream.run_status == "completed"
    [published] = stream.of_type("tool-output-available")
    assert published["toolCallId"] == publish["toolCallId"]
    assert (published["output"]["slug"], published["output"]["version"]) == ("learn-crashes", 1)
    # Published once: one package, one line in the registry's ledger under the call's key, one result in
    # the conversation, one attempt that ran, on the new heavy worker.
    packages = stack.data_dir / "packages"
    assert [p.name for p in packages.iterdir() if p.is_dir()] == ["learn-crashes"]
    assert json.loads((packages / "learn-crashes" / "learn.json").read_text())["agent_run_id"] == run_id
    rec = await records(store.pool, run_id)
    [publish_run] = [t for t in rec["tools"] if t["tool_name"] == "publish_package"]
    assert pick(publish_run, "attempt", "status", "approval") == (1, "ok", "approved")
    ledger = [json.loads(line) for line in (packages / "publications.jsonl").read_text().splitlines()]
    assert [p["idempotency_key"] for p in ledger] == [f"{run_id}/tool-{publish_run['seq']}"]
    conversation = await store.conversation(run_id, 100)
    assert [m.name for m in conversation if m.role == "tool"] == [
        "plan_syllabus",
        "generate_markdown",
        "publish_package",
    ]
    taken = await task_takers(await stack.temporal(), run_id)
    assert taken["run_tool"] == {heavy.proc.pid}


async def test_clients_of_a_killed_gateway_resume_on_a_restarted_one_and_on_another(
    stack: CrashStack, store: RunStore
) -> None:
    stack.env["KEEL_MODEL"] = "scripted:slow"
    worker, gateway, other = stack.worker(), stack.gateway("gateway"), stack.gateway("other-gateway")
    await stack.start(worker, gateway, other)

    asker, asking = watching(f"{gateway.url}/api/chat", "POST", json=chat_body(LONG))
    await until(lambda: asker.response is not None, "the run started")
    run_id = asker.run_id
    viewer, viewing = watching(f"{gateway.url}/api/runs/{run_id}/events")
    # Someone watches through the other gateway all along: the stream as it should be.
    witness, witnessing = watching(f"{other.url}/api/runs/{run_id}/events")
    await until(lambda: asker.deltas() >= 3 and viewer.deltas() >= 3, "both clients reading the reply")

    gateway.kill()
    await asyncio.wait_for(asyncio.gather(asking, viewing), 10)
    assert asker.dropped is not None and viewer.dropped is not None
    assert not asker.stream.done and not viewer.stream.done
    # The asker comes back to the restarted gateway (same port) with the Last-Event-ID header; the viewer
    # goes to the other gateway with the query parameter.
    await gateway.restart()
    asker_again, asking = watching(
        f"{gateway.url}/api/runs/{run_id}/events", headers={"Last-Event-ID": str(asker.stream.ids[-1])}
    )
    viewer_again, viewing = watching(
        f"{other.url}/api/runs/{run_id}/events?last_event_id={viewer.stream.ids[-1]}"
    )
    await asyncio.wait_for(asyncio.gather(asking, viewing, witnessing), 60)

    assert witness.dropped is None
    assert_well_formed(witness.stream)
    assert witness.stream.run_status == "completed"
    # Every event exactly once, in order, with the ids the uninterrupted witness saw.
    assert asker.pairs + asker_again.pairs == witness.pairs
    assert viewer.pairs + viewer_again.pairs == witness.pairs
    assert asker_again.stream.done and viewer_again.stream.done
    reply = (await store.conversation(run_id, 100))[-1].content
    assert asker.stream.text + asker_again.stream.text == reply == witness.stream.text
    assert len(witness.stream.of_type("text-delta")) >= 20
