"""The chat page end to end in headless Chromium (Debian's `chromium`, driven by Playwright's Python package):
streamed text, tool cards, approving and denying `publish_package`, answering the agent, cancelling a run,
and reloading mid-stream. One browser for the module; each test gets a fresh context (fresh sessionStorage).

Without Chromium or Playwright the tests skip, saying why; under CI (`CI=true`) that is a failure instead.
"""

import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, Keel

try:
    from playwright.async_api import Browser, Page, async_playwright, expect
except ImportError:  # pragma: no cover - the dev extras install it
    async_playwright = None  # type: ignore[assignment]

# Debian's package; KEEL_CHROMIUM points elsewhere (another distribution's chromium-browser).
CHROMIUM = os.environ.get("KEEL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts"
PREFIX = "[scripted offline model: no LLM was called]"


def _unavailable() -> str | None:
    if async_playwright is None:
        return "Playwright is not installed (pip install -e '.[dev]')"
    if not Path(CHROMIUM).exists():
        return f"Chromium is not installed at {CHROMIUM} (apt-get install chromium; .ci/run does it)"
    return None


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator["Browser"]:
    reason = _unavailable()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI must run the chat page tests: {reason}")
        pytest.skip(reason)
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()


@pytest.fixture
async def page(browser: "Browser") -> AsyncIterator["Page"]:
    context = await browser.new_context(viewport={"width": 1000, "height": 860})
    context.set_default_timeout(20_000)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    yield page
    await context.close()
    assert not errors, f"the page threw: {errors}"


async def send(page: "Page", text: str, purpose: str | None = None) -> None:
    if purpose:
        await expect(page.locator(f'#purpose option[value="{purpose}"]')).to_have_count(1)
        await page.select_option("#purpose", purpose)
    await page.fill("#input", text)
    await page.press("#input", "Enter")


def last_run(page: "Page"):  # noqa: ANN201 (a Locator)
    return page.locator("li.msg.assistant").last


async def run_id_of(page: "Page") -> str:
    run = last_run(page)
    for _ in range(200):
        value = await run.get_attribute("data-run-id")
        if value:
            return value
        await page.wait_for_timeout(50)
    raise AssertionError("the page never named the run")


async def reply_text(base_url: str, agent_run_id: str) -> str:
    """The run's answer as the gateway streams it from the beginning, for comparing with the page."""
    text = ""
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=30) as http,
        http.stream("GET", f"/api/runs/{agent_run_id}/events") as response,
    ):
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                chunk: dict[str, Any] = json.loads(line[6:])
                if chunk["type"] == "text-delta":
                    text += chunk["delta"]
    return text


async def test_a_message_streams_its_answer_with_tool_cards_status_and_links(
    page: "Page", keel: Keel
) -> None:
    await page.goto(keel.gateway_url)
    await send(page, "calculate (2 + 3) * 4")

    run = last_run(page)
    card = run.locator('.tool[data-tool="calculate"]')
    await expect(card).to_have_attribute("data-state", "output-available")
    await expect(card.locator("pre").first).to_have_text('{"expression":"(2 + 3) * 4"}')
    await expect(card.locator("pre").last).to_contain_text('"value":20')
    await expect(run.locator(".runline .status")).to_have_attribute("data-status", "completed")
    await expect(run.locator(".text")).to_contain_text(PREFIX)
    # The run's limits and usage from GET /api/runs/{id}, and where to find it.
    await expect(run.locator(".runline .steps")).to_have_text("step 2/10")
    await expect(run.locator(".runline .usage")).to_contain_text("tokens")
    agent_run_id = await run_id_of(page)
    assert await run.locator("a.viewer-link").get_attribute("href") == f"/runs?run={agent_run_id}"
    temporal = await run.locator("a.temporal-link").get_attribute("href")
    assert temporal and f"/namespaces/default/workflows/{agent_run_id}" in temporal
    await expect(page.locator("#cancel")).to_be_hidden()


async def test_text_streams_in_pieces_and_a_reload_mid_stream_resumes_it(
    page: "Page", gateways: dict[str, str]
) -> None:
    await page.goto(gateways["slow"])
    await send(page, "hello there, tell me everything")
    text = last_run(page).locator(".text").first
    seen: list[str] = []
    while len(seen) < 3:  # scripted:slow writes five pieces a second: watch the text grow
        value = await text.text_content() if await text.count() else ""
        if value and (not seen or value != seen[-1]):
            seen.append(value)
        await page.wait_for_timeout(40)
    assert all(a and b.startswith(a) and len(b) > len(a) for a, b in zip(seen, seen[1:], strict=False))
    agent_run_id = await run_id_of(page)
    assert await last_run(page).locator(".runline .status").get_attribute("data-status") == "running"

    await page.reload()  # mid-answer: the page resumes with GET /api/chat/{id}/stream

    run = last_run(page)
    await expect(run.locator(".runline .status")).to_have_attribute("data-status", "completed")
    assert await run.get_attribute("data-run-id") == agent_run_id
    assert await page.locator("li.msg.user").count() == 1
    assert await page.locator("li.msg.assistant").count() == 1
    expected = await reply_text(gateways["slow"], agent_run_id)
    assert expected.startswith(PREFIX)
    assert await run.locator(".text").inner_text() == expected  # whole, and nothing twice


async def test_approving_publish_package_publishes_it(page: "Page", keel: Keel) -> None:
    await page.goto(keel.gateway_url)
    await send(page, "plan, write and publish a lesson on browser tabs", purpose="learnpack-lesson-writer")

    run = last_run(page)
    publish = run.locator('.tool[data-tool="publish_package"]')
    await expect(publish).to_have_attribute("data-state", "approval-requested")
    await expect(run.locator(".runline .status")).to_have_attribute("data-status", "waiting_for_approval")
    await expect(page.locator("#cancel")).to_be_visible()
    folder = keel.data_dir / "packages" / "learn-browser-tabs"
    assert not folder.exists()
    # The README's screenshot: a lesson planned and written, its publication waiting for a person.
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "chat.png"))

    await publish.get_by_role("button", name="Approve").click()

    await expect(publish).to_have_attribute("data-state", "output-available")
    await expect(publish.locator("pre").last).to_contain_text("learn-browser-tabs")
    await expect(run.locator(".runline .status")).to_have_attribute("data-status", "completed")
    await expect(run.locator(".text").last).to_contain_text("publish_package returned")
    assert (folder / "README.md").exists()
    assert await page.locator("li.msg.assistant").count() == 1, "the resubmission continued the same run"


async def test_denying_publish_package_publishes_nothing(page: "Page", keel: Keel) -> None:
    await page.goto(keel.gateway_url)
    await send(page, "plan, write and publish a lesson on web pages", purpose="learnpack-lesson-writer")

    run = last_run(page)
    publish = run.locator('.tool[data-tool="publish_package"]')
    await expect(publish).to_have_attribute("data-state", "approval-requested")
    await page.reload()  # a parked run comes back with its question (GET /api/chat/{id}/stream)
    await expect(run.locator(".runline .status")).to_have_attribute("data-status", "waiting_for_approval")
    await publish.get_by_role("button", name="Deny").click()

    await expect(publish).to_have_attribute("data-state", "output-denied")
    await expect(publish).to_contain_text("Denied: the tool did not run")
    await expect(run.locator(".runline .status")).to_have_attribute("data-status", "completed")
    assert not (keel.data_dir / "packages" / "learn-web-pages").exists()


async def test_the_reply_box_answers_the_agents_question(page: "Page", keel: Keel) -> None:
    await page.goto(keel.gateway_url)
    await send(page, "ask me my favourite colour")

    run = last_run(page)
    ask = run.locator('.tool[data-tool="ask_user"]')
    await expect(run.locator(".runline .status")).to_have_attribute("data-status", "waiting_for_input")
    await ask.locator("textarea.reply").fill("teal")
    await ask.get_by_role("button", name="Reply").click()
    await expect(ask.locator("textarea.reply")).to_have_count(0)

    await expect(ask).to_have_attribute("data-state", "output-available")
    await expect(run.locator(".runline .status")).to_have_attribute("data-status", "completed")
    await expect(run.locator(".text").last).to_contain_text("teal")


async def test_the_cancel_button_cancels_the_run(page: "Page", keel: Keel) -> None:
    await page.goto(keel.gateway_url)
    await send(page, "wait 8 seconds please")

    run = last_run(page)
    await expect(run.locator('.tool[data-tool="wait"]')).to_have_attribute("data-state", "input-available")
    await page.click("#cancel")

    await expect(run.locator(".runline .status")).to_have_attribute("data-status", "cancelled", timeout=6_000)
    await expect(run.locator('.tool[data-tool="wait"]')).not_to_have_attribute(
        "data-state", "input-available"
    )
    await expect(page.locator("#cancel")).to_be_hidden()
    await expect(page.locator("#send")).to_be_enabled()
