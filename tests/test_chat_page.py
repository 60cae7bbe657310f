"""The chat page end to end in headless Chromium (Debian's `chromium`, driven by Playwright's Python package):
streamed text, tool cards, approving and denying `publish_package`, answering the agent, cancelling a run,
reloading mid-stream, a message sent while a run waits for a person, where the Temporal Web UI link
leads, and, with authentication on, a wrong token said so and the run viewer opened from the page keeping
the token given here. One browser for the module; each test gets a fresh context (fresh sessionStorage).

Without Chromium or Playwright the tests skip, saying why; under CI (`CI=true`) that is a failure instead.
"""

import asyncio
import contextlib
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt

from tests.conftest import AUTH_JWT_SECRET, ROOT, TEMPORAL_UI_URL, Keel, wait_for_status

# The dev extras install Playwright; without it the `browser` fixture skips these tests, saying why.
with contextlib.suppress(ImportError):
    from playwright.async_api import Dialog, Page, expect

ARTIFACTS = ROOT / "test-artifacts"
PREFIX = "[scripted offline model: no LLM was called]"


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
    await expect(run).to_have_attribute("data-run-id", re.compile(r"^run-"))
    return await run.get_attribute("data-run-id") or ""


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
    # The test Temporal has no Web UI and this gateway was told of none: no link to a port nobody serves.
    await expect(run.locator("a.temporal-link")).to_be_hidden()
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


async def test_a_delegated_lesson_shows_the_writers_work_inside_and_its_publication_is_approved_there(
    page: "Page", keel: Keel
) -> None:
    await page.goto(keel.gateway_url)
    await send(page, "plan, write and publish a lesson on tab groups", purpose="course-editor")

    # The editor's call of the writer shows the writer's own run inside it, live: its calls, and the
    # publication waiting for a person, with the buttons right there.
    run = last_run(page)
    delegated = run.locator('.tool[data-tool="write_lesson"]')
    writer = delegated.locator(".subrun")
    publish = writer.locator('.tool[data-tool="publish_package"]')
    await expect(publish).to_have_attribute("data-state", "approval-requested")
    await expect(writer.locator(".subrun-head")).to_contain_text("LearnPack lesson writer")
    await expect(writer.locator('.tool[data-tool="generate_markdown"]')).to_have_attribute(
        "data-state", "output-available"
    )
    folder = keel.data_dir / "packages" / "learn-tab-groups"
    assert not folder.exists()

    await publish.get_by_role("button", name="Approve").click()

    # Approved through the editor's run; the writer publishes and answers; the editor finishes.
    await expect(run.locator(".runline .status")).to_have_attribute("data-status", "completed")
    await expect(delegated).to_have_attribute("data-state", "output-available")
    await expect(delegated.locator("pre").last).to_contain_text("publish_package returned")
    # The writer's work stays, folded under the result; its run is one click away.
    await expect(writer.locator(":scope > details > summary")).to_have_text(
        "How LearnPack lesson writer worked"
    )
    child_id = await writer.get_attribute("data-agent-run-id") or ""
    assert child_id.startswith("run-") and child_id != await run_id_of(page)
    assert (folder / "README.md").exists()


async def test_a_handoff_shows_where_the_conversation_changed_hands_and_who_speaks_now(
    page: "Page", keel: Keel
) -> None:
    await page.goto(keel.gateway_url)
    await send(page, "transfer to learnpack-lesson-writer and plan a lesson on queues", purpose="assistant")

    run = last_run(page)
    await expect(run.locator(".runline .status")).to_have_attribute("data-status", "completed")
    handoff = run.locator(".handoff")
    await expect(handoff).to_have_text("General assistant handed the conversation to LearnPack lesson writer")
    await expect(run.locator(".speaker")).to_have_text("LearnPack lesson writer speaking")
    # The lesson writer's own tool ran after the handoff, in the same run.
    await expect(run.locator('.tool[data-tool="plan_syllabus"]')).to_have_attribute(
        "data-state", "output-available"
    )
    assert await page.locator("li.msg.assistant").count() == 1


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


def status_of(run: Any):  # noqa: ANN201 (a Locator)
    return run.locator(".runline .status")


@dataclass
class RunReads:
    """The page's reads of a run's state (GET /api/runs/{id}): those not answered yet, and the statuses the
    answered ones gave."""

    pending: set[Any] = field(default_factory=set)
    answered: list[str] = field(default_factory=list)

    def watch(self, page: "Page") -> "RunReads":
        page.on("request", self._sent)
        page.on("requestfailed", self._failed)
        page.on("requestfinished", self._finished)
        return self

    def stop(self, page: "Page") -> None:
        """Stops watching: a read the page makes later is not awaited into a page the test closes."""
        page.remove_listener("request", self._sent)
        page.remove_listener("requestfailed", self._failed)
        page.remove_listener("requestfinished", self._finished)

    def _sent(self, request: Any) -> None:
        if _is_run_read(request):
            self.pending.add(request)

    def _failed(self, request: Any) -> None:
        self.pending.discard(request)

    async def _finished(self, request: Any) -> None:
        if request in self.pending:
            response = await request.response()
            self.answered.append((await response.json()).get("status") if response else "")
            self.pending.discard(request)

    def settled_on(self, status: str) -> bool:
        """A read answered `status`, and none is in flight: the page's reads are all answered (it reads the
        run at several chunks of one batch, all sent before the first is answered)."""
        return status in self.answered and not self.pending


def _is_run_read(request: Any) -> bool:
    return request.method == "GET" and re.search(r"/api/runs/run-[^/?]+$", request.url) is not None


async def until_true(condition: Any, what: str, within: float = 20.0) -> None:
    for _ in range(int(within / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


async def a_lesson_waiting_for_approval(page: "Page", topic: str) -> Any:
    """Sends the lesson writer's request; returns the publish_package card once the run is parked on it
    (its stream over, so Approve is enabled)."""
    await send(page, f"plan, write and publish a lesson on {topic}", purpose="learnpack-lesson-writer")
    run = page.locator(f'li.msg.assistant[data-run-id="{await run_id_of(page)}"]')  # stays this run's
    publish = run.locator('.tool[data-tool="publish_package"]')
    await expect(publish).to_have_attribute("data-state", "approval-requested")
    await expect(status_of(run)).to_have_attribute("data-status", "waiting_for_approval")
    await expect(publish.get_by_role("button", name="Approve")).to_be_enabled()
    return publish


async def test_the_temporal_link_leads_where_the_gateway_says_the_web_ui_is(
    page: "Page", gateways: dict[str, str]
) -> None:
    await page.goto(gateways["temporal-ui"])  # a gateway with KEEL_TEMPORAL_UI_URL set
    await send(page, "calculate 7 * 6")
    run = last_run(page)
    await expect(status_of(run)).to_have_attribute("data-status", "completed")
    agent_run_id = await run_id_of(page)

    # The gateway's temporal_url (the timeline's), naming the run's history once it knows Temporal's run id.
    link = run.locator("a.temporal-link")
    await expect(link).to_be_visible()
    workflow = f"{TEMPORAL_UI_URL}/namespaces/default/workflows/{agent_run_id}"
    await expect(link).to_have_attribute(
        "href", re.compile(rf"^{re.escape(workflow)}(/[0-9a-f-]+/history)?$")
    )


async def test_both_pages_have_an_icon_and_load_without_a_single_404(page: "Page", keel: Keel) -> None:
    refused: list[str] = []
    page.on("response", lambda r: refused.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    for path in ("/", "/runs"):
        await page.goto(keel.gateway_url + path)
        icon = await page.locator('link[rel="icon"]').get_attribute("href")
        # Headless Chromium asks for no icon by itself: fetch what a desktop browser would, the declared
        # icon and /favicon.ico, from the page, so their answers are seen like any other.
        for url in (icon, "/favicon.ico"):
            status, kind = await page.evaluate(
                "async (u) => { const r = await fetch(u); return [r.status, r.headers.get('content-type')]; }",
                url,
            )
            assert (status, kind) == (200, "image/svg+xml"), f"{path}: {url}"
        await page.wait_for_load_state("networkidle")
    assert refused == []


async def test_a_message_refused_while_the_run_waits_goes_back_into_the_input(
    page: "Page", keel: Keel
) -> None:
    await page.goto(keel.gateway_url)
    publish = await a_lesson_waiting_for_approval(page, "queues")
    run = last_run(page)
    agent_run_id = await run_id_of(page)
    waiting = page.locator("#waiting")
    await expect(waiting).to_have_text(
        "The run is waiting for your decision on publish_package: approve or deny it above, or cancel the run."
    )
    await expect(page.locator("#cancel")).to_be_visible()

    # The page does not stop the send (other policies allow it); the gateway refuses it with 409.
    await send(page, "calculate 1 + 1")

    refusal = page.locator("#refused")
    await expect(refusal).to_be_visible()
    await expect(refusal).to_have_text(
        re.compile(
            rf"^chat '[^']+' already has an active run {agent_run_id} \(waiting_for_approval\): answer it, "
        )
    )
    await expect(page.locator("#input")).to_have_value("calculate 1 + 1")
    await expect(page.locator("li.msg.user")).to_have_count(1)
    await expect(page.locator("li.msg.assistant")).to_have_count(1)
    await expect(run.locator(".error")).to_have_count(0)

    await publish.get_by_role("button", name="Approve").click()  # the refusal left the run answerable
    await expect(publish).to_have_attribute("data-state", "output-available")
    await expect(status_of(run)).to_have_attribute("data-status", "completed")
    await expect(waiting).to_be_hidden()
    await expect(refusal).to_be_hidden()  # the run it named has ended: old news
    assert (keel.data_dir / "packages" / "learn-queues" / "README.md").exists()


async def test_cancel_while_an_approval_is_pending_shows_cancelled_and_takes_the_buttons_away(
    page: "Page", keel: Keel
) -> None:
    await page.goto(keel.gateway_url)
    publish = await a_lesson_waiting_for_approval(page, "stacks")

    await page.click("#cancel")

    await expect(status_of(last_run(page))).to_have_attribute("data-status", "cancelled")
    await expect(publish.locator(".tool-state")).to_have_text("not decided: the run ended")
    await expect(publish.get_by_role("button")).to_have_count(0)
    await expect(page.locator("#waiting")).to_be_hidden()
    await expect(page.locator("#cancel")).to_be_hidden()


async def test_cancel_while_the_agent_asks_takes_the_reply_box_away(page: "Page", keel: Keel) -> None:
    await page.goto(keel.gateway_url)
    await send(page, "ask me my favourite colour")
    run = last_run(page)
    ask = run.locator('.tool[data-tool="ask_user"]')
    await expect(ask.locator("textarea.reply")).to_be_visible()
    await expect(page.locator("#waiting")).to_have_text(
        "The run is waiting for your reply to its question: answer it above, or cancel the run."
    )

    await page.click("#cancel")

    await expect(status_of(run)).to_have_attribute("data-status", "cancelled")
    await expect(ask.locator("textarea.reply")).to_have_count(0)
    await expect(ask.get_by_role("button", name="Reply")).to_have_count(0)
    await expect(page.locator("#waiting")).to_be_hidden()


async def test_a_stale_approve_after_a_cancel_elsewhere_ends_the_call_with_one_request(
    page: "Page", keel: Keel, http: httpx.AsyncClient
) -> None:
    await page.goto(keel.gateway_url)
    reads = RunReads().watch(page)
    publish = await a_lesson_waiting_for_approval(page, "heaps")
    agent_run_id = await run_id_of(page)
    # The page reads the run's state when its stream pauses: once those reads are answered, it learns of
    # the cancel only from the click, as a page left open elsewhere would.
    await until_true(lambda: reads.settled_on("waiting_for_approval"), "the page's reads of the run answered")
    reads.stop(page)
    posts: list[str] = []
    page.on(
        "request",
        lambda r: posts.append(r.url) if r.method == "POST" and r.url.endswith("/api/chat") else None,
    )
    cancelled = await http.post(f"/api/runs/{agent_run_id}/cancel", json={"reason": "cancelled elsewhere"})
    assert cancelled.status_code == 202
    await wait_for_status(http, agent_run_id, "cancelled")

    await publish.get_by_role("button", name="Approve").click()  # the page still thinks the run waits

    run = last_run(page)
    await expect(status_of(run)).to_have_attribute("data-status", "cancelled")
    await expect(publish).to_have_attribute("data-state", re.compile(r"^(output-denied|stopped)$"))
    await expect(publish).to_contain_text(re.compile(r"did not run|not run"))
    await expect(publish.get_by_role("button")).to_have_count(0)
    await expect(page.locator("#send")).to_be_enabled()
    assert len(posts) == 1, posts
    assert not (keel.data_dir / "packages" / "learn-heaps").exists()


async def test_under_interrupt_a_new_message_replaces_the_waiting_run(
    page: "Page", gateways: dict[str, str]
) -> None:
    await page.goto(gateways["interrupt"])
    publish = await a_lesson_waiting_for_approval(page, "graphs")
    first = page.locator("li.msg.assistant").first

    await send(page, "calculate 2 + 5")

    await expect(page.locator("li.msg.assistant")).to_have_count(2)
    await expect(status_of(last_run(page))).to_have_attribute("data-status", "completed")
    # The run the message interrupted shows it ended, without a reload, and offers nothing to click.
    await expect(status_of(first)).to_have_attribute("data-status", "cancelled")
    await expect(publish.get_by_role("button")).to_have_count(0)
    await expect(page.locator("#refused")).to_be_hidden()
    await expect(page.locator("#waiting")).to_be_hidden()


async def test_under_enqueue_a_message_waits_its_turn_and_approve_still_answers_the_run_before_it(
    page: "Page", gateways: dict[str, str]
) -> None:
    await page.goto(gateways["enqueue"])
    publish = await a_lesson_waiting_for_approval(page, "tries")
    first = page.locator("li.msg.assistant").first

    await send(page, "calculate 3 + 4")

    await expect(page.locator("li.msg.assistant")).to_have_count(2)
    second = last_run(page)
    await expect(page.locator("#waiting")).to_have_text(
        "An earlier run is waiting for your decision on publish_package: approve or deny it above; "
        "the newer run waits for it."
    )
    await publish.get_by_role("button", name="Approve").click()  # while the queued run's stream is open

    await expect(publish).to_have_attribute("data-state", "output-available")
    await expect(status_of(first)).to_have_attribute("data-status", "completed")
    await expect(status_of(second)).to_have_attribute("data-status", "completed")
    await expect(second.locator(".text").last).to_contain_text(PREFIX)  # it ran, after the first
    await expect(page.locator("#waiting")).to_be_hidden()


def a_jwt_for_a_new_user() -> str:
    """A JWT the `auth` gateway accepts, for a user with no runs yet."""
    claims = {"sub": f"reader-{uuid.uuid4().hex[:8]}", "exp": int(time.time()) + 3600}
    return jwt.encode(claims, AUTH_JWT_SECRET, algorithm="HS256")


async def test_a_wrong_token_is_said_so_and_the_next_one_fills_the_purpose_picker(
    page: "Page", gateways: dict[str, str]
) -> None:
    answers = ["not-a-token", a_jwt_for_a_new_user()]

    async def answer(dialog: "Dialog") -> None:
        await dialog.accept(answers.pop(0))

    page.on("dialog", answer)
    await page.goto(gateways["auth"])  # KEEL_AUTH=jwt,api-key: the page asks at once

    notice = page.locator("#auth-why")
    await expect(notice).to_have_text(
        "The gateway did not accept that key or token (401): invalid or expired token"
    )
    lessons = page.locator('#purpose option[value="learnpack-lesson-writer"]')
    await expect(lessons).to_have_count(0)

    await page.get_by_role("button", name="Enter a key or token").click()

    await expect(lessons).to_have_count(1)  # the requests that waited went through with the new token
    await expect(page.locator("#auth")).to_be_hidden()
    assert answers == []


async def test_all_runs_opens_the_viewer_with_the_token_given_here_and_asks_nothing(
    page: "Page", gateways: dict[str, str]
) -> None:
    token = a_jwt_for_a_new_user()
    asked_on: list[str] = []

    async def answer(dialog: "Dialog") -> None:
        asked_on.append(dialog.page.url if dialog.page else "?")
        await dialog.accept(token)

    page.context.on("dialog", answer)  # every tab of this browser context
    await page.goto(gateways["auth"])
    await expect(page.locator('#purpose option[value="learnpack-lesson-writer"]')).to_have_count(1)

    async with page.context.expect_page() as opened:
        await page.get_by_role("link", name="All runs").click()
    viewer = await opened.value

    await expect(viewer.locator("#list")).to_have_text("No runs match.")  # the JSON answered this user
    await expect(viewer.locator("#auth")).to_be_hidden()
    assert asked_on == [f"{gateways['auth']}/"], "the viewer asked again"
    assert viewer.url == f"{gateways['auth']}/runs"  # the token travelled in no URL

    # A browser that gave the viewer no copy of the chat tab's storage: it reads the token from the chat tab.
    await viewer.evaluate("sessionStorage.clear()")
    await viewer.reload()
    await expect(viewer.locator("#list")).to_have_text("No runs match.")
    assert asked_on == [f"{gateways['auth']}/"], "the viewer asked again"
