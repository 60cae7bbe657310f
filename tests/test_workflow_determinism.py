"""Keel's workers run the workflows outside temporalio's sandbox (keel/temporal.py), so nothing stops workflow
code at run time from reading the clock, drawing random numbers or doing I/O, and a replay would then take
another path. This test reads workflows/ for such calls; tests/test_replay.py replays every recorded
history, and every run of the test session, inside the sandbox."""

import ast
from pathlib import Path

import pytest

WORKFLOWS = sorted((Path(__file__).resolve().parent.parent / "workflows").glob("*.py"))

# Modules workflow code has no business importing: clocks, randomness, threads, processes, files, network.
FORBIDDEN_MODULES = {
    "time",
    "random",
    "secrets",
    "threading",
    "multiprocessing",
    "subprocess",
    "socket",
    "os",
    "pathlib",
    "shutil",
    "tempfile",
    "asyncpg",
    "httpx",
    "requests",
    "openai",
    "anthropic",
    "activities",
    "api",
}
# Calls that differ between a run and its replay; `workflow.now()`, `workflow.uuid4()`, `workflow.random()`
# and `workflow.sleep()` are the deterministic ones.
FORBIDDEN_CALLS = {
    ("datetime", "now"),
    ("datetime", "utcnow"),
    ("datetime", "today"),
    ("date", "today"),
    ("uuid", "uuid1"),
    ("uuid", "uuid4"),
    ("asyncio", "sleep"),
    ("asyncio", "get_event_loop"),
    ("asyncio", "to_thread"),
}
FORBIDDEN_BUILTINS = {"open", "input", "print", "exec", "eval"}


def problems(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"imports {n}" for n in names if n.split(".")[0] in FORBIDDEN_MODULES]
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                if (func.value.id, func.attr) in FORBIDDEN_CALLS:
                    found.append(f"calls {func.value.id}.{func.attr}()")
            elif isinstance(func, ast.Name) and func.id in FORBIDDEN_BUILTINS:
                found.append(f"calls {func.id}()")
    return found


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_code_makes_no_non_deterministic_call(path: Path) -> None:
    assert problems(path.read_text()) == []


def test_the_reader_finds_what_it_looks_for() -> None:
    source = """
import time
from os import environ
from datetime import datetime
import asyncio

async def f():
    datetime.now()
    await asyncio.sleep(1)
    open("x")
    workflow.now()
"""
    assert sorted(problems(source)) == [
        "calls asyncio.sleep()",
        "calls datetime.now()",
        "calls open()",
        "imports os",
        "imports time",
    ]
