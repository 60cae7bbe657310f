"""The Agent Run Viewer (/runs) in headless Chromium: every figure on one line at a desktop's and a phone's
width (the panes stacked on the phone), an approval its run ended without reads as ended and stops
counting, ids and model names in their own case, a Temporal Web UI link only where the gateway knows
the UI, and, with authentication on, a missing or wrong token said in a sentence. The shared browser fixtures (tests/browser.py) skip without Chromium, or fail under CI."""

import asyncio
import contextlib
import re
import time
import uuid
from typing import Any

import httpx
import jwt

from tests.conftest import AUTH_JWT_SECRET, TEMPORAL_UI_URL, Keel, wait_for_status
from tests.ui_stream import chat, chat_body

# The dev extras install Playwright; without it the `browser` fixture skips these tests, saying why.
with contextlib.suppress(ImportError):
    from playwright.async_api import Dialog, Page, expect

DESKTOP, PHONE = {"width": 1280, "height": 900}, {"width": 390, "height": 844}
# The figures the viewer shows: a run's steps, durations and latencies, tokens and cost.
FIGURES = {"steps", "duration", "latency", "tokens", "cost"}


async def a_finished_run(http: httpx.AsyncClient, text: str) -> tuple[str, dict[str, Any]]:
    """Runs `text` to its end; returns the run's id and the chat body that started it."""
    body = chat_body(text)
    stream = await chat(http, body)
    agent_run_id = stream.response.headers["x-agent-run-id"]
    await wait_for_status(http, agent_run_id, "completed")
    await records_say(http, agent_run_id, "completed")
    return agent_run_id, body


async def records_say(http: httpx.AsyncClient, agent_run_id: str, status: str) -> dict[str, Any]:
    """The run's timeline once its record has caught up with `status` (records are written behind)."""
    for _ in range(200):
        response = await http.get(f"/api/runs/{agent_run_id}/timeline")
        if response.status_code == 200 and response.json()["run"]["status"] == status:
            return response.json()
        await asyncio.sleep(0.05)
    raise AssertionError(f"the records of {agent_run_id} never said {status}")


async def open_run(page: "Page", base_url: str, agent_run_id: str) -> None:
    await page.goto(f"{base_url}/runs?run={agent_run_id}")
    await expect(page.locator("#detail h2")).to_have_text(agent_run_id)
    await expect(page.locator(f'tr.run[data-id="{agent_run_id}"]')).to_have_class(re.compile("selected"))


async def test_every_figure_stays_on_one_line_on_a_desktop_and_on_a_phone(
    page: "Page", keel: Keel, http: httpx.AsyncClient
) -> None:
    # A long question makes the list's middle column greedy: the steps column is what gets squeezed.
    agent_run_id, _ = await a_finished_run(
        http,
        "calculate (2 + 3) * 4 and explain every step of the working in plain words, slowly, for a reader "
        "who has never seen brackets in arithmetic before",
    )
    for viewport in (DESKTOP, PHONE):
        await page.set_viewport_size(viewport)
        await open_run(page, keel.gateway_url, agent_run_id)
        figures = await page.eval_on_selector_all(
            "[data-figure]",
            "els => els.map(e => ({kind: e.dataset.figure, text: e.textContent, lines: e.getClientRects().length}))",
        )
        assert {f["kind"] for f in figures} >= FIGURES, figures
        wrapped = [f for f in figures if f["lines"] != 1]
        assert wrapped == [], f"at {viewport['width']} px these figures break across lines: {wrapped}"
        # Nothing wider than the window, so nothing is cut off or needs a sideways scroll.
        assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")

    # On the phone the list sits above the timeline, both the page's width, not two squeezed columns.
    runs, detail = await page.locator("#list").bounding_box(), await page.locator("#detail").bounding_box()
    assert runs and detail
    assert detail["y"] >= runs["y"] + runs["height"] - 1
    assert detail["width"] >= PHONE["width"] - 20 and runs["width"] >= PHONE["width"] - 20


async def test_an_approval_its_run_ended_without_reads_as_ended_and_stops_counting(
    page: "Page", keel: Keel, http: httpx.AsyncClient
) -> None:
    body = chat_body("plan, write and publish a lesson on lists", purpose="learnpack-lesson-writer")
    stream = await chat(http, body)
    agent_run_id = stream.response.headers["x-agent-run-id"]
    assert stream.run_status == "waiting_for_approval"
    assert (
        await http.post(f"/api/runs/{agent_run_id}/cancel", json={"reason": "not now"})
    ).status_code == 202
    await records_say(http, agent_run_id, "cancelled")

    await open_run(page, keel.gateway_url, agent_run_id)
    approval = page.locator('.item[data-kind="tool_run"] .approval')
    await expect(approval).to_contain_text("approval: not decided: the run ended")
    first_look = await approval.locator('[data-figure="waited"]').inner_text()
    looked_at = await page.evaluate("Date.now()")

    # A second look, a second or more later: an approval still counting would have grown by then.
    await page.wait_for_function("t => Date.now() - t >= 1000", arg=looked_at)
    await page.reload()
    await expect(approval).to_contain_text("approval: not decided: the run ended")
    assert await approval.locator('[data-figure="waited"]').inner_text() == first_look


async def test_chat_ids_and_model_names_keep_their_own_case(
    page: "Page", keel: Keel, http: httpx.AsyncClient
) -> None:
    agent_run_id, body = await a_finished_run(http, "calculate 9 - 4")
    chat_id = body["id"]
    assert chat_id != chat_id.upper()

    await open_run(page, keel.gateway_url, agent_run_id)

    for value in (chat_id, "scripted"):
        shown = page.locator(".facts .mono", has_text=value)
        assert await shown.inner_text() == value  # innerText applies text-transform: no capitals here
        assert await shown.evaluate("e => getComputedStyle(e).textTransform") == "none"
    label = page.locator(".facts .fact-label", has_text="chat")
    assert await label.evaluate("e => getComputedStyle(e).textTransform") == "uppercase"


async def test_the_temporal_link_shows_only_where_the_gateway_knows_the_web_ui(
    page: "Page", keel: Keel, http: httpx.AsyncClient, gateways: dict[str, str]
) -> None:
    agent_run_id, _ = await a_finished_run(http, "calculate 8 / 2")

    await open_run(page, keel.gateway_url, agent_run_id)  # KEEL_TEMPORAL_UI_URL unset
    await expect(page.locator("#detail a", has_text="Temporal Web UI")).to_have_count(0)

    await open_run(page, gateways["temporal-ui"], agent_run_id)
    async with httpx.AsyncClient(base_url=gateways["temporal-ui"], timeout=30) as other:
        expected = (await other.get(f"/api/runs/{agent_run_id}/timeline")).json()["run"]["temporal_url"]
    assert expected.startswith(f"{TEMPORAL_UI_URL}/namespaces/default/workflows/{agent_run_id}/")
    await expect(page.locator("#detail a", has_text="Temporal Web UI")).to_have_attribute("href", expected)


def answer_prompts_with(page: "Page", answers: list[str | None]) -> None:
    """Answer the page's prompts in turn: a text is typed in, None dismisses the prompt."""

    async def answer(dialog: "Dialog") -> None:
        given = answers.pop(0)
        await (dialog.dismiss() if given is None else dialog.accept(given))

    page.on("dialog", answer)


async def test_a_dismissed_prompt_is_answered_with_a_sentence_not_json(
    page: "Page", gateways: dict[str, str]
) -> None:
    answer_prompts_with(page, [None])
    await page.goto(f"{gateways['auth']}/runs")  # KEEL_AUTH=jwt,api-key

    await expect(page.locator("#auth-why")).to_have_text(
        "This gateway needs an API key (keel_…) or a JWT, and none was given."
    )
    await expect(page.get_by_role("button", name="Enter a key or token")).to_be_visible()
    await expect(page.locator("main")).not_to_contain_text("detail")  # no raw 401 body anywhere


async def test_a_wrong_token_is_said_so_and_the_next_one_shows_the_runs(
    page: "Page", gateways: dict[str, str]
) -> None:
    user = f"reader-{uuid.uuid4().hex[:8]}"
    right = jwt.encode({"sub": user, "exp": int(time.time()) + 3600}, AUTH_JWT_SECRET, algorithm="HS256")
    answers: list[str | None] = ["not-a-token", right]
    answer_prompts_with(page, answers)
    await page.goto(f"{gateways['auth']}/runs")

    await expect(page.locator("#auth-why")).to_have_text(
        "The gateway did not accept that key or token (401): invalid or expired token"
    )
    await page.get_by_role("button", name="Enter a key or token").click()

    await expect(page.locator("#list")).to_have_text("No runs match.")  # this user's runs: none yet
    await expect(page.locator("#auth")).to_be_hidden()
    assert answers == []
