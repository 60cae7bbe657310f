"""Rate limits: 300 runs started at once against a provider that allows N requests a minute and answers 429
past it (bench/provider.py --rpm), with KEEL_PROVIDER_LIMITS set to the same N and without it.

Each run is one LLM call (a short answer, no tools) on `local:bench`, served by two agent workers that
share the limit through PostgreSQL. The provider counts what it answered and what it refused.

- With limits: next to no 429s, every run finishes, and the whole keeps within 10% of the ideal schedule.
  The provider's window is rolling, so in the ideal schedule request i (past the first N) goes exactly one
  window after request i - N. The first window's N requests go as fast as the runs start, which on 2 cores
  takes seconds (Keel's start throughput, not the limit's doing), so the ideal span is one window after
  the first window's requests, as they came: max over i >= N of t[i - N] + window, measured at the provider.
  The target is the span the provider saw (first to last request it answered) over that ideal; also the
  median lag of a request past the first window behind the moment the window let it go, and the wall clock
  from the first start to the last result next to the plain ideal, (ceil(runs / N) - 1) windows.
- Without: every worker calls at once; what is past the limit is refused, and call_llm's retries wait out
  the provider's Retry-After. The 429 count is the number of retries.

N = 200 with 300 runs: the ideal is one minute. `--quick` uses 60 runs, N = 40 and a 15-second window (the
workers' KEEL_PROVIDER_WINDOW_SECONDS matching the provider's).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass

import httpx
from temporalio.client import Client

from bench.harness import TASK_QUEUE, Harness
from bench.measure import start_provider
from bench.provider import ask
from bench.report import Figure, Section, at_most
from keel.contracts import Budgets, Message, PurposeSpec
from keel.run_start import run_input, start_run
from keel.stack.embedded import stop_process_group
from keel.storage.store import RunStore

PATTERN = "local:*"
# (runs, requests allowed per window, window seconds): full and --quick.
FULL = (300, 200, 60.0)
QUICK = (60, 40, 15.0)
WORKERS = 2
# A short answer: ten tokens at 500/s after 50 ms.
REQUEST = ask(rate=500, n=10, ttft_ms=50)


@dataclass
class Outcome:
    seconds: float
    finished: int
    served: int
    refused: int
    fastest_run_s: float
    # From the first to the last request the provider answered, and each one's arrival from the first.
    span_s: float
    times: list[float]

    def ideal_span(self, rpm: int, window: float) -> float:
        """When the last request could have gone at the earliest: a window after the request N before it,
        and so on back to the first window, whose requests came as fast as the runs started."""
        t = self.times
        return max((t[i - rpm] + window for i in range(rpm, len(t))), default=t[-1] if t else 0.0)

    def median_lag(self, rpm: int, window: float) -> float:
        """How long a request past the first window went after the window allowed it (median)."""
        t = self.times
        lags = sorted(t[i] - (t[i - rpm] + window) for i in range(rpm, len(t)))
        return lags[len(lags) // 2] if lags else 0.0


async def _one(client: Client, store: RunStore, limited: bool) -> float:
    messages = [Message(role="system", content="You are a benchmark."), Message(role="user", content=REQUEST)]
    spec = PurposeSpec(slug="bench-limits", model="local:bench", tools=[], budgets=Budgets(max_steps=2))
    run = run_input(spec, messages, limited_routes=[PATTERN] if limited else [])
    await store.put_messages(run.agent_run_id, 0, messages)
    started = time.perf_counter()
    state = await (await start_run(client, run, TASK_QUEUE)).result()
    if state.status != "completed":
        raise RuntimeError(f"run {run.agent_run_id} ended {state.status}: {state.detail}")
    return time.perf_counter() - started


async def _scenario(h: Harness, limited: bool, runs: int, rpm: int, window: float) -> Outcome:
    """All runs started at once against a fresh provider, with or without the workers knowing the limit."""
    log = h.workdir / f"limits-provider-{'with' if limited else 'without'}.log"
    provider_proc, provider = start_provider(log, "--rpm", str(rpm), "--window", str(window))
    env = {
        "KEEL_MODEL": "local:bench",
        "KEEL_LOCAL_BASE_URL": f"{provider}/v1",
        "KEEL_PROVIDER_WINDOW_SECONDS": str(window),
    }
    if limited:
        env["KEEL_PROVIDER_LIMITS"] = json.dumps({PATTERN: {"rpm": rpm}})
    workers = [h.spawn_worker(extra_env=env) for _ in range(WORKERS)]
    try:
        client, store = await h.client(), await h.store()
        started = time.perf_counter()
        durations = await asyncio.gather(*(_one(client, store, limited) for _ in range(runs)))
        elapsed = time.perf_counter() - started
        async with httpx.AsyncClient() as http:
            stats = (await http.get(f"{provider}/stats")).json()
    finally:
        for worker in workers:
            h.stop(worker)
        stop_process_group(provider_proc)
    return Outcome(
        elapsed,
        len(durations),
        stats["served"],
        stats["refused"],
        min(durations),
        stats["span_s"],
        stats["times"],
    )


async def run(h: Harness, quick: bool) -> Section:
    runs, rpm, window = QUICK if quick else FULL
    with_limits = await _scenario(h, True, runs, rpm, window)
    # The ledger's window of the first scenario must not hold back the second: it has no limits anyway.
    without = await _scenario(h, False, runs, rpm, window)
    windows = math.ceil(runs / rpm) - 1
    plain_ideal = windows * window
    ideal_span = with_limits.ideal_span(rpm, window)
    target, met = at_most(with_limits.span_s / ideal_span, 1.10)
    figures = [
        Figure(
            "with limits: first to last request at the provider",
            with_limits.span_s,
            "s",
            baseline=ideal_span,
            note="ideal: a window after the first window's requests, as they came",
        ),
        Figure(
            "with limits: ÷ the ideal schedule", with_limits.span_s / ideal_span, "×", target=target, met=met
        ),
        Figure(
            "with limits: a request's lag behind its slot (median, past the first window)",
            with_limits.median_lag(rpm, window) * 1000,
            "ms",
        ),
        Figure(
            "with limits: all runs, first start to last result",
            with_limits.seconds,
            "s",
            baseline=plain_ideal,
            note=f"plain ideal: {windows} window(s) of {window:g} s, as if all runs started at once",
        ),
        Figure(
            "with limits: 429s",
            with_limits.refused,
            "429s",
            target=at_most(with_limits.refused, runs * 0.01)[0],
            met=with_limits.refused <= runs * 0.01,
        ),
        Figure(
            "with limits: runs finished",
            with_limits.finished,
            "runs",
            target=f"= {runs}",
            met=with_limits.finished == runs,
        ),
        Figure("without limits: all runs, start to last result", without.seconds, "s", baseline=plain_ideal),
        Figure("without limits: 429s (each one a retry)", without.refused, "429s"),
        Figure("without limits: runs finished", without.finished, "runs"),
    ]
    return Section(
        "rate_limits",
        "Rate limits",
        figures=figures,
        notes=[
            f"{runs} runs of one LLM call each, started at once, on {WORKERS} agent workers; the provider "
            f"allows {rpm} requests in any {window:g} s and answers 429 past it (retry-after: when a slot "
            f"frees). With limits: KEEL_PROVIDER_LIMITS={{'{PATTERN}': {{'rpm': {rpm}}}}} on both workers, "
            "accounted together in PostgreSQL; waiting runs sleep durably, holding no slot. Without: each "
            "refused call is retried by Temporal after the provider's Retry-After.",
        ],
    )
