"""4. Throughput: runs/s and steps/s with 1, 10 and 100 runs in flight, Keel vs bare temporalio.

Each batch starts a fixed number of runs (conversation stored, then the workflow started), keeping
`concurrency` of them in flight, and times the batch from its first start to its last result. Keel and
the baseline (bench/bare.py, same activities, tools as local activities like Keel's inline tools)
alternate batch by batch after a warm-up batch each.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from bench import runs
from bench.harness import Harness
from bench.report import Figure, Section

# concurrency -> runs per batch (full, quick). Two batches each of Keel and the baseline per level keep the
# section near a minute on 2 busy cores; 100 runs in flight needs at least 100 runs per batch.
LEVELS = {1: (5, 3), 10: (25, 10), 100: (100, 100)}


async def _batch(
    start: Callable[[], Awaitable[runs.Timed]], total: int, concurrency: int
) -> tuple[float, int]:
    """(seconds, steps) for `total` runs with at most `concurrency` in flight."""
    gate = asyncio.Semaphore(concurrency)

    async def one() -> int:
        async with gate:
            return (await start()).steps

    started = time.perf_counter()
    steps = await asyncio.gather(*(one() for _ in range(total)))
    return time.perf_counter() - started, sum(steps)


async def run(h: Harness, quick: bool) -> Section:
    client, store = await h.client(), await h.store()
    variants: dict[str, Callable[[], Awaitable[runs.Timed]]] = {
        "keel": lambda: runs.keel_run(client, store),
        "bare": lambda: runs.bare_run(client, store, local_tools=True, local_llm=True),
    }
    figures: list[Figure] = []
    rounds = 2
    with runs.workers(h):
        for start in variants.values():
            await _batch(start, 10 if quick else 20, 10)  # warm-up
        for concurrency, (full, small) in LEVELS.items():
            total = small if quick else full
            measured: dict[str, list[tuple[float, int]]] = {name: [] for name in variants}
            for index in range(rounds):
                order = list(variants) if index % 2 == 0 else list(reversed(variants))
                for name in order:
                    measured[name].append(await _batch(variants[name], total, concurrency))
            rate = {
                name: (total * len(m) / sum(s for s, _ in m), sum(n for _, n in m) / sum(s for s, _ in m))
                for name, m in measured.items()
            }
            (keel_runs, keel_steps), (bare_runs, bare_steps) = rate["keel"], rate["bare"]
            figures += [
                Figure(f"{concurrency} in flight: Keel runs/s", keel_runs, "runs/s", baseline=bare_runs),
                Figure(f"{concurrency} in flight: Keel steps/s", keel_steps, "steps/s", baseline=bare_steps),
                Figure(f"{concurrency} in flight: Keel ÷ bare temporalio", keel_steps / bare_steps, "×"),
            ]
    return Section(
        "throughput",
        "Throughput",
        figures=figures,
        notes=[
            "Runs of 2 steps (an LLM call asking for 2 inline tools, then the answer), zero-latency scripted "
            "model; one Keel worker vs one baseline worker, each with the SDK's default slots, on the same "
            f"server; {rounds} batch(es) each per level, alternating. Baseline: bare temporalio on the same "
            "activities.",
        ],
    )
