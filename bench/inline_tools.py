"""2. Inline tools (local activities) vs regular activities: per-step latency.

The same tool code runs both ways twice over:
- in the bare temporalio loop (bench/bare.py): `calculate` as a local activity vs as an activity on the
  task queue, the only difference being placement;
- through Keel: an inline tool (`calculate`, a local activity in the agent worker) vs a heavy tool (`wait`,
  an activity on the `agent-heavy` queue served by `python worker.py --queue heavy`). The scripted model
  can only ask `wait` for whole seconds, so its run waits 1 s, which is taken off before dividing by steps.

Runs are two steps (the tool call, then the answer); the variants alternate after a warm-up.
"""

from __future__ import annotations

from bench import runs
from bench.harness import Harness
from bench.report import Figure, Section, p50

WAIT_SECONDS = 1.0


async def run(h: Harness, quick: bool) -> Section:
    # Keel's heavy runs wait 1 s each, so they get fewer rounds.
    bare_rounds, keel_rounds, warmup = (6, 3, 1) if quick else (20, 6, 2)
    client, store = await h.client(), await h.store()
    calc = runs.conversation("calculate 2 + 3")
    wait = runs.conversation("wait 1 second")
    with runs.workers(h, heavy=True):
        bare = await runs.interleaved(
            {
                "local": lambda: runs.bare_run(client, store, calc, tools=["calculate"], local_tools=True),
                "regular": lambda: runs.bare_run(client, store, calc, tools=["calculate"], local_tools=False),
            },
            rounds=bare_rounds,
            warmup=warmup,
        )
        keel = await runs.interleaved(
            {
                "inline": lambda: runs.keel_run(client, store, calc, spec=runs.purpose(["calculate"])),
                "heavy": lambda: runs.keel_run(client, store, wait, spec=runs.purpose(["wait"])),
            },
            rounds=keel_rounds,
            warmup=warmup,
        )
    local, regular = ([t.ms_per_step for t in bare[k]] for k in ("local", "regular"))
    inline = [t.ms_per_step for t in keel["inline"]]
    heavy = [(t.seconds - WAIT_SECONDS) * 1000 / t.steps for t in keel["heavy"]]
    return Section(
        "inline_tools",
        "Inline tools",
        figures=[
            Figure(
                "Bare temporalio: tool as local activity, per step (p50)",
                p50(local),
                "ms",
                baseline=p50(regular),
                note="baseline: the same tool as a regular activity",
            ),
            Figure("Bare temporalio: local ÷ regular", p50(local) / p50(regular), "×"),
            Figure(
                "Keel: inline tool (calculate), per step (p50)",
                p50(inline),
                "ms",
                baseline=p50(heavy),
                note="baseline: heavy tool (wait) on the heavy worker, its 1 s wait taken off",
            ),
            Figure("Keel: inline ÷ heavy", p50(inline) / p50(heavy), "×"),
        ],
        notes=[
            f"Runs of 2 steps with one tool call; bare: {len(local)} runs each way, Keel: {len(inline)} each "
            "way, interleaved after a warm-up. Keel's heavy tool is a different tool (the scripted model asks "
            "`wait` for whole seconds only), so the bare figures are the like-for-like comparison.",
        ],
    )
