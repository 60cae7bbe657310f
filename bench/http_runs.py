"""Over HTTP: a whole run from the client's side, against a hand-written endpoint, and a cancel mid-answer.

- **2-step run**: `POST /api/chat` to `[DONE]` for the durability section's run (the zero-latency
  `scripted` model: step 1 asks for calculate and current_time at once, step 2 answers), so the provider's
  own time is nil and what is measured is Keel: gateway, workflow, activities, stream.
- **Hand-written**: the same request to the founding document's minimal FastAPI endpoint driving the bare
  temporalio loop on the same activities (bench/handwritten.py, bench/bare.py), alternating with Keel's.
- **Cancel during a streaming LLM call**: the fake provider streams an answer for 10 s; once the client has
  read its first words it sends `POST /api/runs/{id}/cancel`, and the clock stops when the stream it is
  reading says the run was cancelled (the `data-run` part with status `cancelled`).
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import httpx

from bench import runs, sse
from bench.measure import start_provider
from bench.provider import ask
from bench.report import Figure, Section, at_most, p50, percentile
from keel.stack.embedded import free_port

if TYPE_CHECKING:
    from bench.harness import Harness

RUN_TARGET_MS = 50.0
VS_HANDWRITTEN_TARGET = 1.3
CANCEL_TARGETS = {50: 200.0, 99: 500.0}  # ms


def chat_body(text: str) -> dict[str, object]:
    return {
        "id": f"chat-bench-{uuid.uuid4().hex[:12]}",
        "messages": [{"id": "m1", "role": "user", "parts": [{"type": "text", "text": text}]}],
        "trigger": "submit-message",
    }


async def whole_run(url: str) -> float:
    """Seconds from POST /api/chat to [DONE] for the 2-step run; raises unless the run completed."""
    started = time.perf_counter()
    async for event in sse.events(f"{url}/api/chat", body=chat_body(runs.REQUEST)):
        if event.data == "[DONE]":
            return time.perf_counter() - started
        chunk = json.loads(event.data)
        if chunk["type"] == "error":
            raise RuntimeError(f"the run failed: {chunk.get('errorText')}")
    raise RuntimeError("the stream ended without [DONE]")


async def cancelled_mid_answer(gateway: str, http: httpx.AsyncClient) -> float:
    """Seconds from sending the cancel to reading the run's cancelled status on its stream."""
    sent: float | None = None
    async for event in sse.events(f"{gateway}/api/chat", body=chat_body(ask(20, 200, 50))):
        if event.data == "[DONE]":
            break
        chunk = json.loads(event.data)
        if chunk["type"] == "start" and sent is None:
            run_id = chunk["messageId"]
        elif chunk["type"] == "text-delta" and sent is None:
            sent = time.perf_counter()
            answer = await http.post(f"{gateway}/api/runs/{run_id}/cancel", json={})
            answer.raise_for_status()
        elif chunk["type"] == "data-run" and chunk["data"].get("status") == "cancelled":
            assert sent is not None, "cancelled before it was asked to"
            return time.perf_counter() - sent
    raise RuntimeError("the stream ended without the run's cancelled status")


async def _two_step_runs(h: Harness, rounds: int, warmup: int) -> list[Figure]:
    env = {"KEEL_MODEL": "scripted"}
    procs = [h.spawn_worker(extra_env=env)]
    procs.append(h.spawn_polling([sys.executable, "-m", "bench.bare_worker"], "worker-bare"))
    try:
        gateway_proc, gateway = h.spawn_gateway(extra_env=env)
        procs.append(gateway_proc)
        handwritten_proc, handwritten = h.spawn_serving(
            [sys.executable, "-m", "bench.handwritten", "--port", str(port := free_port())],
            "handwritten",
            port,
        )
        procs.append(handwritten_proc)
        timed = await runs.interleaved(
            {
                "keel": lambda: _timed(whole_run(gateway)),
                "handwritten": lambda: _timed(whole_run(handwritten)),
            },
            rounds=rounds,
            warmup=warmup,
        )
    finally:
        for proc in procs:
            h.stop(proc)
    keel = [t.seconds * 1000 for t in timed["keel"]]
    bare = [t.seconds * 1000 for t in timed["handwritten"]]
    claim, met = at_most(p50(keel), RUN_TARGET_MS)
    ratio = p50(keel) / p50(bare)
    ratio_claim, ratio_met = at_most(ratio, VS_HANDWRITTEN_TARGET)
    return [
        Figure(
            "2-step run, POST /api/chat to [DONE] (p50) (baseline: hand-written FastAPI + temporalio)",
            round(p50(keel), 1),
            "ms",
            baseline=round(p50(bare), 1),
            target=f"{claim} ms",
            met=met,
            note="zero-latency scripted model: no provider time to subtract",
        ),
        Figure(
            "2-step run, p95", round(percentile(keel, 95), 1), "ms", baseline=round(percentile(bare, 95), 1)
        ),
        Figure("Keel ÷ hand-written endpoint (p50)", round(ratio, 2), "×", target=ratio_claim, met=ratio_met),
    ]


async def _cancels(h: Harness, count: int) -> list[Figure]:
    provider_proc, provider = start_provider(h.workdir / "http-provider.log")
    env = {"KEEL_MODEL": "local:bench", "KEEL_LOCAL_BASE_URL": f"{provider}/v1"}
    procs = [provider_proc, h.spawn_worker(extra_env=env)]
    try:
        gateway_proc, gateway = h.spawn_gateway(extra_env=env)
        procs.append(gateway_proc)
        async with httpx.AsyncClient(timeout=30) as http:
            await cancelled_mid_answer(gateway, http)  # warm-up
            waits = [await cancelled_mid_answer(gateway, http) * 1000 for _ in range(count)]
    finally:
        for proc in procs:
            h.stop(proc)
    figures = []
    for q, target in CANCEL_TARGETS.items():
        value = percentile(waits, q)
        claim, met = at_most(value, target)
        figures.append(
            Figure(
                f"cancel during a streaming LLM call, request to `cancelled` on the stream, p{q}",
                round(value, 1),
                "ms",
                target=f"{claim} ms",
                met=met,
            )
        )
    return figures


async def _timed(request: Coroutine[Any, Any, float]) -> runs.Timed:
    return runs.Timed(await request, 2, "")


async def run(h: Harness, quick: bool) -> Section:
    rounds, warmup, cancels = (8, 2, 10) if quick else (60, 5, 60)
    figures = await _two_step_runs(h, rounds, warmup)
    figures += await _cancels(h, cancels)
    return Section(
        "http",
        "Over HTTP",
        figures,
        notes=[
            f"2-step run: {rounds} requests each way, alternating, after {warmup} warm-up rounds; the "
            "hand-written endpoint runs the loop to its end and then streams the answer (no live tokens, "
            "events, records, approvals or resumable streams)",
            f"cancel: {cancels} runs, each cancelled once its first words were read (provider: 20 tokens/s)",
            "Where Keel's extra time goes: the gateway's start of a chat run (the chat's lock, its records and "
            "the conversation in one PostgreSQL transaction, about 12 ms here), the run's extra time in "
            "workflow tasks (section 1), and its stream, which follows the run's history and reads the "
            "run's last events from the workflow's result once it completes.",
        ],
    )
