"""`make bench`: start the stack once, run every section, write bench/results/latest.{md,json}.

    python -m bench                        # everything, in well under 10 minutes on 2 cores
    python -m bench --only durability,history
    python -m bench --quick                # smaller counts, for working on a section

A section that crashes is reported as failed in the table; the others still run.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench.harness import Harness
from bench.report import Section, machine, write

RESULTS = Path(__file__).resolve().parent / "results"
# In the order. A module not written yet is skipped with a note, so sections land one by one.
SECTIONS: dict[str, tuple[str, str]] = {
    "durability": ("bench.durability", "Durability tax"),
    "inline_tools": ("bench.inline_tools", "Inline tools"),
    "streaming": ("bench.streaming", "Streaming"),
    "throughput": ("bench.throughput", "Throughput"),
    "parked": ("bench.parked", "Parked runs"),
    "fanout": ("bench.fanout", "SSE fan-out"),
    "history": ("bench.history", "History per step"),
    "mcp_tools": ("bench.mcp_tools", "MCP tools"),
    "rate_limits": ("bench.rate_limits", "Rate limits"),
    "http": ("bench.http_runs", "Over HTTP"),
}

SectionRun = Callable[[Harness, bool], Awaitable[Section]]


def _load(key: str) -> SectionRun | None:
    module_name, _ = SECTIONS[key]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:
            return None
        raise
    return module.run


async def _run_section(h: Harness, key: str, quick: bool) -> Section:
    _, title = SECTIONS[key]
    started = time.monotonic()
    try:
        run = _load(key)
        if run is None:
            section = Section(key, title, notes=[f"not measured: {SECTIONS[key][0]} is not written yet"])
        else:
            section = await run(h, quick)
    except Exception as err:
        traceback.print_exc()
        section = Section(key, title, error=f"{type(err).__name__}: {err}")
    section.seconds = time.monotonic() - started
    print(f"bench: {key} done in {section.seconds:.0f} s", file=sys.stderr, flush=True)
    return section


async def main(only: list[str], quick: bool, keep: bool, out: str) -> int:
    started = time.monotonic()
    sections: list[Section] = []
    workdir = Path(tempfile.mkdtemp(prefix="keel-bench-"))
    async with Harness.start(workdir) as h:
        print(f"bench: stack up in {time.monotonic() - started:.0f} s ({workdir})", file=sys.stderr)
        for key in only:
            sections.append(await _run_section(h, key, quick))
    elapsed = time.monotonic() - started
    markdown = write(RESULTS, sections, machine(), elapsed, name=out)
    print(markdown)
    print(f"bench: wrote {RESULTS / out}.md and {out}.json", file=sys.stderr)
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if any(s.error for s in sections) else 0


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help=f"comma-separated sections: {', '.join(SECTIONS)}")
    parser.add_argument("--quick", action="store_true", help="smaller counts, for development")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, databases)")
    args = parser.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()] or list(SECTIONS)
    unknown = [s for s in args.only if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    return args


def _interrupt(signum: int, frame: object) -> None:
    # A SIGTERM (a `timeout`, CI stopping the job) unwinds like Ctrl-C, so the harness stops every process.
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    arguments = _parse(sys.argv[1:])
    signal.signal(signal.SIGTERM, _interrupt)
    # Only a full run replaces the published table; --only and --quick write partial.{md,json}.
    full = arguments.only == list(SECTIONS) and not arguments.quick
    sys.exit(
        asyncio.run(main(arguments.only, arguments.quick, arguments.keep, "latest" if full else "partial"))
    )
