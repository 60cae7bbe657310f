"""MCP tools: the overhead of an MCP tool call through Keel against calling the same server directly.

The same server-everything process kind (stdio, `echo`) is called three ways:
- directly, with the `mcp` Python client over one open session: the floor;
- through Keel: a 2-step run (the tool call, then the answer) of an agent whose tool is the server's `echo`
  (`everything__echo`, inline): the run lists the server's tools when it starts (cached by the worker),
  then the call runs as a local activity over the worker's open session;
- through Keel with the agent's own inline tool doing the same (`echo_locally`): the same run, no MCP.

The MCP run minus the own-tool run is what MCP adds to a run in Keel (the listing activity and the call);
the direct call says how much of that is the server itself.
"""

from __future__ import annotations

import time

from mcp import Client
from mcp.client.stdio import StdioServerParameters

from bench import runs
from bench.harness import Harness
from bench.mcp_app import EVERYTHING
from bench.report import Figure, Section, p50
from keel.app import load_app

APP = "bench.mcp_app"


async def _direct_calls(rounds: int) -> list[float]:
    """ms per `echo` call over one open stdio session, after a warm-up call."""
    parameters = StdioServerParameters(command="node", args=[str(EVERYTHING), "stdio"])
    times: list[float] = []
    async with Client(parameters) as client:
        await client.call_tool("echo", {"message": "warm-up"})
        for index in range(rounds):
            started = time.perf_counter()
            await client.call_tool("echo", {"message": f"bench {index}"})
            times.append((time.perf_counter() - started) * 1000)
    return times


async def run(h: Harness, quick: bool) -> Section:
    direct_rounds, keel_rounds, warmup = (20, 5, 1) if quick else (200, 60, 3)
    client, store = await h.client(), await h.store()
    spec = load_app(APP).agent("bench-mcp").spec("scripted")
    direct = await _direct_calls(direct_rounds)
    worker = h.spawn_worker(extra_env={"KEEL_APP": APP})
    try:
        timed = await runs.interleaved(
            {
                "mcp": lambda: runs.keel_run(
                    client, store, runs.conversation("everything__echo bench"), spec=spec
                ),
                "own": lambda: runs.keel_run(
                    client, store, runs.conversation("echo_locally bench"), spec=spec
                ),
            },
            rounds=keel_rounds,
            warmup=warmup,
        )
    finally:
        h.stop(worker)
    mcp_run = p50([t.seconds * 1000 for t in timed["mcp"]])
    own_run = p50([t.seconds * 1000 for t in timed["own"]])
    return Section(
        "mcp_tools",
        "MCP tools",
        figures=[
            Figure("Direct: server-everything echo over stdio, per call (p50)", p50(direct), "ms"),
            Figure(
                "Keel: 2-step run calling everything__echo (p50)",
                mcp_run,
                "ms",
                baseline=own_run,
                note="baseline: the same run calling the agent's own inline tool (echo_locally)",
            ),
            Figure("Keel: what MCP adds to the run (listing + call)", mcp_run - own_run, "ms"),
            Figure("Keel's MCP overhead beyond the direct call", mcp_run - own_run - p50(direct), "ms"),
        ],
        notes=[
            f"Direct: {len(direct)} calls over one open `mcp` client session. Keel: {len(timed['mcp'])} runs "
            "each way, interleaved after a warm-up, on a worker serving bench/mcp_app.py; the worker's "
            "listing cache is warm after the warm-up, so the listing is an activity round trip, not a "
            "listing.",
            "A difference of a few tens of ms between the two Keel figures is within the run-to-run noise of "
            "a 2-step run on a busy machine; the MCP call itself is the direct figure plus one local activity.",
        ],
    )
