"""Streaming: a provider writing at a fixed rate → worker → PostgreSQL NOTIFY → gateway → SSE client.

The fake provider (bench/provider.py) stamps every token with its send time, so a token's lag is the time
the SSE client read it minus the time the provider wrote it, on this machine's clock, however Keel
batched it. The baseline is the same provider read directly by the same client code, interleaved with the
Keel runs (direct, Keel, then Keel, direct: neither side always goes first), after a warm-up.

Time to first token added has two readings:
- first token delivery: (client's first text delta − provider's first token) through Keel, minus the same
  read directly: what Keel's path adds to a token that exists;
- request to first token: (POST /api/chat → first text delta) minus (request → first token) read
  directly: what a person waits longer, including the run's start (PostgreSQL writes, the workflow's
  start, its first workflow task, the LLM activity's dispatch and the provider connection).
"""

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bench import sse
from bench.measure import start_provider
from bench.provider import ask, stamps
from bench.report import Figure, Section, at_most, percentile

if TYPE_CHECKING:
    from bench.harness import Harness

RATES = (50, 250)  # tokens per second
TTFT_MS = 100  # the provider's fixed time to first token
ANSWER_SECONDS = 1.0  # each answer lasts this long, so n = rate × this
LAG_TARGETS = {50: 5.0, 99: 25.0}  # ms
TTFT_TARGET = 30.0  # ms, p50


@dataclass
class Reading:
    """One answer as a client saw it."""

    lags: list[float] = field(default_factory=list)  # seconds, one per token
    sent: float = 0.0  # when the request was sent
    first_stamp: float | None = None  # when the provider wrote the first token
    first_read: float | None = None  # when the client read it
    tokens: int = 0

    def take(self, text: str, at: float) -> None:
        for stamp in stamps(text):
            if self.first_stamp is None:
                self.first_stamp, self.first_read = stamp, at
            self.lags.append(at - stamp)
            self.tokens += 1

    @property
    def first_lag(self) -> float:
        assert self.first_stamp is not None and self.first_read is not None, "no token arrived"
        return self.first_read - self.first_stamp

    @property
    def to_first_token(self) -> float:
        assert self.first_read is not None, "no token arrived"
        return self.first_read - self.sent


async def read_direct(provider: str, rate: int, n: int) -> Reading:
    body = {
        "model": "bench",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": ask(rate, n, TTFT_MS)}],
    }
    reading = Reading(sent=time.time())
    async for event in sse.events(f"{provider}/v1/chat/completions", body=body):
        if event.data == "[DONE]":
            break
        for choice in json.loads(event.data).get("choices", []):
            reading.take(choice["delta"].get("content") or "", event.at)
    return reading


async def read_keel(gateway: str, rate: int, n: int) -> Reading:
    body = {
        "id": f"chat-bench-{uuid.uuid4().hex[:12]}",
        "messages": [
            {"id": "m1", "role": "user", "parts": [{"type": "text", "text": ask(rate, n, TTFT_MS)}]}
        ],
        "trigger": "submit-message",
    }
    reading = Reading(sent=time.time())
    async for event in sse.events(f"{gateway}/api/chat", body=body):
        if event.data == "[DONE]":
            break
        chunk = json.loads(event.data)
        if chunk["type"] == "text-delta":
            reading.take(chunk["delta"], event.at)
        elif chunk["type"] == "error":
            raise RuntimeError(f"the run failed: {chunk.get('errorText')}")
    return reading


def _ttft_figure(measured: str, added: list[float], direct: list[float], note: str) -> Figure:
    """Time to first token added by Keel (p50, seconds in, ms out) against the ≤ 30 ms target."""
    value = percentile(added, 50) * 1000
    claim, met = at_most(value, TTFT_TARGET)
    return Figure(
        name=f"time to first token added, p50 ({measured})",
        value=round(value, 2),
        unit="ms",
        baseline=round(percentile(direct, 50) * 1000, 2),
        target=f"{claim} ms",
        met=met,
        note=note,
    )


async def run(h: "Harness", quick: bool) -> Section:
    rounds = 3 if quick else 8
    figures: list[Figure] = []
    notes: list[str] = []
    first_added: list[float] = []
    first_direct: list[float] = []
    request_added: list[float] = []
    request_direct: list[float] = []
    provider_proc, provider = start_provider(h.workdir / "bench-provider.log")
    started = [provider_proc]
    try:
        env = {"KEEL_MODEL": "local:bench", "KEEL_LOCAL_BASE_URL": f"{provider}/v1"}
        started.append(h.spawn_worker(extra_env=env))
        gateway_proc, gateway = h.spawn_gateway(extra_env=env)
        started.append(gateway_proc)
        for rate in RATES:
            n = int(rate * ANSWER_SECONDS)
            for _ in range(2):  # warm-up: connections, imports, caches on every side
                await read_direct(provider, rate, n)
                await read_keel(gateway, rate, n)
            direct: list[Reading] = []
            keel: list[Reading] = []
            for i in range(rounds):
                if i % 2 == 0:
                    direct.append(await read_direct(provider, rate, n))
                    keel.append(await read_keel(gateway, rate, n))
                else:
                    keel.append(await read_keel(gateway, rate, n))
                    direct.append(await read_direct(provider, rate, n))
            for d, k in zip(direct, keel, strict=True):
                first_added.append(k.first_lag - d.first_lag)
                first_direct.append(d.first_lag)
                request_added.append(k.to_first_token - d.to_first_token)
                request_direct.append(d.to_first_token)
            keel_lags = [lag * 1000 for r in keel for lag in r.lags]
            direct_lags = [lag * 1000 for r in direct for lag in r.lags]
            for q, target in LAG_TARGETS.items():
                value = percentile(keel_lags, q)
                claim, met = at_most(value, target)
                figures.append(
                    Figure(
                        name=f"delta lag p{q} at {rate} tokens/s",
                        value=round(value, 2),
                        unit="ms",
                        baseline=round(percentile(direct_lags, q), 2),
                        target=f"{claim} ms",
                        met=met,
                        note="baseline: the provider read directly",
                    )
                )
            delivered = sum(r.tokens for r in keel)
            notes.append(
                f"{rate} tokens/s: {rounds} answers of {n} tokens each way; "
                f"{delivered}/{rounds * n} tokens reached the SSE client through Keel"
            )
        figures.append(
            _ttft_figure(
                "first token delivery",
                first_added,
                first_direct,
                "(first delta read − first token written) via Keel minus the same read directly",
            )
        )
        figures.append(
            _ttft_figure(
                "from the request",
                request_added,
                request_direct,
                f"includes starting the run; the provider's own TTFT is {TTFT_MS} ms",
            )
        )
    finally:
        for proc in reversed(started):
            h.stop(proc)
    return Section(
        key="streaming",
        title="Streaming: fake provider → worker → gateway → SSE client",
        figures=figures,
        notes=[
            *notes,
            "From the request, where Keel's time goes (timestamps of one run's history against the client's "
            "clock): the gateway's start of the chat run (about 12 ms: the chat's lock, records, "
            "start_workflow), the dev server handing the first workflow task to the worker (about 7 ms), "
            "then the model call, which begins inside that task.",
        ],
    )
