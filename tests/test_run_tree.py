"""The run viewer's run tree, through the real stack (gateway, worker, Temporal, PostgreSQL): a run's
timeline lists the runs its sub-agents started, each under the tool call that started it and with its
own children, each with its status, usage and Temporal Web UI address; a child's timeline names its
parent; the tree's usage counts every LLM call in it once; the run list marks child runs and leaves them
out with `top=true`. The viewer page (/runs, in headless Chromium) draws the tree: each child under its
tool call with its status and Web UI link, its timeline on opening it, a link to the parent on a child.
The app is tests/apps/run_tree.py (the delegation app and a course planner)."""

import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from keel.stack.embedded import EmbeddedPostgres, TemporalDevServer
from keel.storage.store import RunStore
from tests.conftest import ROOT, TEMPORAL_UI_URL, Keel
from tests.crash_stack import CrashStack, gateway_client
from tests.test_run_viewer import records_say
from tests.ui_stream import chat_body

# The dev extras install Playwright; without it the `browser` fixture skips the page's test, saying why.
with contextlib.suppress(ImportError):
    from playwright.async_api import Page, expect

WORKFLOWS = f"{TEMPORAL_UI_URL}/namespaces/default/workflows"


@pytest.fixture
def stack(
    keel: Keel, temporal_server: TemporalDevServer, postgres: EmbeddedPostgres, tmp_path: Path
) -> Iterator[CrashStack]:
    with CrashStack(
        temporal_server,
        postgres,
        tmp_path,
        keel.env["KEEL_CODEC_KEY_FILE"],
        KEEL_APP="tests.apps.run_tree",
        KEEL_TEMPORAL_UI_URL=TEMPORAL_UI_URL,
    ) as stack:
        yield stack


@pytest.fixture
async def http(stack: CrashStack) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway_client(stack) as client:
        yield client


async def delegated(http: httpx.AsyncClient, text: str, purpose: str) -> tuple[str, dict[str, Any]]:
    """Runs `text` with the agent to its end; the run's id and its timeline once its records say so. The
    stream is read to its end, not checked: tests/test_sub_agents.py checks what it carries."""
    response = await http.post("/api/chat", json=chat_body(text, purpose=purpose))
    assert response.status_code == 200, response.text
    run = response.headers["x-agent-run-id"]
    return run, await records_say(http, run, "completed")


async def own_tokens(pool: asyncpg.Pool, runs: list[str]) -> int:
    total = await pool.fetchval(
        "SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0) FROM llm_calls"
        " WHERE agent_run_id = ANY($1::text[])",
        runs,
    )
    return int(total)


async def test_a_runs_timeline_lists_its_children_under_the_calls_that_started_them(
    http: httpx.AsyncClient, store: RunStore
) -> None:
    run, timeline = await delegated(http, "write and review a lesson in parallel", "editor")

    assert timeline["run"]["parent_run_id"] is None and timeline["parent_temporal_url"] is None
    children = {c["run"]["purpose"]: c for c in timeline["children"]}
    assert sorted(children) == ["reviewer", "writer"]
    calls = {t["tool_name"]: t["tool_call_id"] for t in timeline["tool_runs"]}
    for agent, child in children.items():
        summary = child["run"]
        assert summary["parent_run_id"] == run and summary["status"] == "completed"
        assert child["tool_call_id"] == calls[agent]  # linked to the parent's call of that agent
        assert summary["temporal_url"].startswith(f"{WORKFLOWS}/{summary['agent_run_id']}")
        assert summary["prompt_tokens"] > 0 and child["children"] == []
    # The tree's usage: the editor's own LLM calls and both children's, each once.
    ids = [run, *(c["run"]["agent_run_id"] for c in timeline["children"])]
    usage = timeline["tree_usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] == await own_tokens(store.pool, ids)

    # A child's own timeline names its parent and links to the parent's Web UI page.
    writer = children["writer"]["run"]["agent_run_id"]
    child_timeline = (await http.get(f"/api/runs/{writer}/timeline")).json()
    assert child_timeline["run"]["parent_run_id"] == run
    assert child_timeline["parent_temporal_url"] == f"{WORKFLOWS}/{run}"
    assert child_timeline["children"] == [] and child_timeline["items"]


async def test_a_grandchild_shows_under_its_own_parent_and_the_list_can_leave_children_out(
    http: httpx.AsyncClient, store: RunStore
) -> None:
    run, timeline = await delegated(http, "write a lesson and research it", "course")

    [writer] = timeline["children"]
    [researcher] = writer["children"]
    assert (writer["run"]["purpose"], researcher["run"]["purpose"]) == ("writer", "researcher")
    assert researcher["run"]["parent_run_id"] == writer["run"]["agent_run_id"]
    ids = [run, writer["run"]["agent_run_id"], researcher["run"]["agent_run_id"]]
    usage = timeline["tree_usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] == await own_tokens(store.pool, ids)

    # The run list marks child runs; `top=true` lists only the runs people started.
    everything = {r["agent_run_id"]: r for r in (await http.get("/api/runs", params={"limit": 500})).json()}
    assert [everything[i]["parent_run_id"] for i in ids] == [None, ids[0], ids[1]]
    top = (await http.get("/api/runs", params={"top": "true", "limit": 500})).json()
    assert run in {r["agent_run_id"] for r in top}
    assert all(r["parent_run_id"] is None for r in top) and not set(ids[1:]) & {
        r["agent_run_id"] for r in top
    }
    refused = await http.get("/api/runs", params={"top": "maybe"})
    assert refused.status_code == 422


async def test_the_viewer_page_draws_the_tree_and_links_parent_and_children(
    page: "Page", http: httpx.AsyncClient
) -> None:
    run, timeline = await delegated(http, "write a lesson and research it", "course")
    [writer] = timeline["children"]
    writer_id = writer["run"]["agent_run_id"]
    [researcher] = writer["children"]
    researcher_id = researcher["run"]["agent_run_id"]

    await page.goto(f"{str(http.base_url).rstrip('/')}/runs?run={run}")
    await expect(page.locator("#detail h2")).to_have_text(run)
    # The list shows top-level runs only, by default: the writer's run is in the tree, not the list.
    await expect(page.locator(f'tr.run[data-id="{run}"]')).to_be_visible()
    await expect(page.locator(f'tr.run[data-id="{writer_id}"]')).to_have_count(0)
    # The writer's run, right after the tool call that started it, with its status and Web UI link.
    child = page.locator(f'#detail > .child[data-child="{writer_id}"]')
    await expect(child.locator(".status")).to_have_text("completed")
    assert await page.locator(
        f'#detail .item[data-kind="tool_run"] + .child[data-child="{writer_id}"]'
    ).count()
    await expect(child.locator("a.temporal")).to_have_attribute("href", writer["run"]["temporal_url"])
    await expect(page.locator('[data-fact="tree-tokens"]')).to_contain_text(
        f"{timeline['tree_usage']['prompt_tokens']} in"
    )
    # Opened, its timeline shows, and the researcher's run under the writer's call of it.
    await child.locator("summary").first.click()
    await expect(child.locator('.child-items .item[data-kind="llm_call"]').first).to_be_visible()
    grandchild = child.locator(f'.child[data-child="{researcher_id}"]')
    await expect(grandchild.locator(".name")).to_have_text("researcher")

    # A child's link opens its own timeline, which links back to its parent.
    await child.locator("a.run-link").first.click()
    await expect(page.locator("#detail h2")).to_have_text(writer_id)
    await expect(page.locator("a.parent")).to_have_text(run)
    await expect(page.locator("a.parent-temporal")).to_have_attribute("href", f"{WORKFLOWS}/{run}")
    await page.locator("a.parent").click()
    await expect(page.locator("#detail h2")).to_have_text(run)


def keel_run(http: httpx.AsyncClient, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """`keel run` against the test's gateway, as a subprocess."""
    url = str(http.base_url).rstrip("/")
    return subprocess.run(
        [sys.executable, "-m", "keel.cli.main", "--url", url, "run", *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_keel_run_shows_a_sub_agents_progress_nested_under_its_call(
    stack: CrashStack, http: httpx.AsyncClient
) -> None:
    result = keel_run(http, "write and review a lesson in parallel", "--purpose", "editor")

    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    # Each child's block: its agent and run id, its text indented, its end; then the call's result. The
    # two run side by side: each one's text is a line of its own.
    assert len([line for line in lines if line.startswith("│ [scripted offline model")]) == 2
    for agent in ("writer", "reviewer"):
        [header] = [line for line in lines if line.startswith(f"┌ {agent} · run-")]
        assert f"└ {agent}: completed" in lines
        assert any(line.startswith(f"✓ {agent}: ") for line in lines)
        end = lines.index(f"└ {agent}: completed")
        assert any(line.startswith("│ ") for line in lines[lines.index(header) : end])


def test_keel_run_asks_for_a_sub_agents_approval_and_the_child_goes_on(
    stack: CrashStack, http: httpx.AsyncClient
) -> None:
    # The editor's publisher waits for a person before it publishes: `keel run` asks, and is told yes.
    result = keel_run(http, "release the lesson on fractions", "--purpose", "editor", stdin="y\n")

    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    [asked] = [line for line in lines if "Approve publish(" in line]
    assert " for run-" in asked
    # Approved through the parent's endpoint: the child's call ran, and both runs went on to their ends.
    assert '│ ✓ publish: {"published": "fractions"}' in result.stdout
    assert "└ publisher: completed" in lines
