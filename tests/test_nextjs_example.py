"""The Next.js example (examples/nextjs-chat: the AI SDK's own `useChat`) as a user meets it: its production
build under `next start`, proxying to the test gateway, driven in headless Chromium.

It proves the example streams through its proxy, renders Markdown without letting model HTML run,
approves, denies and answers, survives a reload mid-answer without repeating anything, shows a cancelled
run as cancelled (while a tool runs, while an approval or a question waits, after the page was away), never
loops on a stale Approve, turns a refused message into a sentence without losing the text or the run, and
strikes the text of a retried model call.

`make test` installs and builds the example (npm ci, next build; cached, see the Makefile's
nextjs-example). Without npm, node or the build the tests skip, saying why; under CI (`CI=true`) that is a
failure. One `next start` per gateway for the session, started when a test first needs it (the default
gateway; the slow one, for watching text stream; one whose model call is retried), one browser for the
module.
"""

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from keel.stack.embedded import free_port, stop_process_group
from tests.conftest import (
    ROOT,
    Keel,
    VendorWorker,
    _healthy,
    _spawn,
    _wait_for,
    skip_or_fail,
    wait_for_status,
)
from tests.ui_stream import chat_body, parse

with contextlib.suppress(ImportError):  # the `browser` fixture skips, saying why, without Playwright
    from playwright.async_api import Page, Request, expect
    from playwright.async_api import TimeoutError as PlaywrightTimeout


APP_DIR = ROOT / "examples" / "nextjs-chat"
BUILT = APP_DIR / ".next" / ".keel-built"  # the Makefile's stamp: touched after a successful `next build`
PREFIX = "[scripted offline model: no LLM was called]"
# How long a settled page is watched for one more POST /api/chat: the endless resubmission loop this
# guards against sent one every ~180 ms.
NO_MORE_POSTS_MS = 1_500


def _sources() -> list[Path]:
    app = [p for p in (APP_DIR / "app").rglob("*") if p.is_file()]
    return [*app, APP_DIR / "next.config.mjs", APP_DIR / "package.json", APP_DIR / "package-lock.json"]


def _not_runnable() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed, so the Next.js example cannot run"
    if not BUILT.exists():
        if shutil.which("npm") is None:
            return "npm is not installed, so the Next.js example was not installed and built"
        return "the Next.js example is not built: `make nextjs-example` (part of `make test`) builds it"
    newest = max(_sources(), key=lambda p: p.stat().st_mtime)
    if newest.stat().st_mtime > BUILT.stat().st_mtime:
        return f"the Next.js example's build is older than {newest.relative_to(ROOT)}: `make nextjs-example`"
    return None


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def _next_start(gateway_url: str, log: Path) -> Iterator[str]:
    """`next start` on a free port, its proxy pointed at `gateway_url` (KEEL_URL, read at run time)."""
    port = free_port()
    env = {**os.environ, "KEEL_URL": gateway_url, "NEXT_TELEMETRY_DISABLED": "1"}
    args = ["./node_modules/.bin/next", "start", "--port", str(port), "--hostname", "127.0.0.1"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args, cwd=APP_DIR, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while not _answers(url):
            if proc.poll() is not None:
                raise RuntimeError(f"next start exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"next start did not answer in 60 s:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0.1)
        yield url
    finally:
        stop_process_group(proc)


@pytest.fixture(scope="session")
def app(keel: Keel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The example's base URL, proxying to the default test gateway."""
    if reason := _not_runnable():
        skip_or_fail(reason)
    with _next_start(keel.gateway_url, tmp_path_factory.mktemp("nextjs") / "next.log") as url:
        yield url


@pytest.fixture(scope="session")
def slow_app(gateways: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The example proxying to the slow gateway, whose model writes about five pieces of text a second."""
    if reason := _not_runnable():
        skip_or_fail(reason)
    with _next_start(gateways["slow"], tmp_path_factory.mktemp("nextjs-slow") / "next.log") as url:
        yield url


@pytest.fixture(scope="session")
def retrying_app(
    keel: Keel, vendor_worker: VendorWorker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The example on a gateway whose runs go to the vendor worker, on a model whose first answer breaks off
    mid-stream (the fake vendor drops the connection), so the model call is retried. `cutx01` is `cut`
    once, under a model name no other test counts against (the fake vendor counts per name)."""
    if reason := _not_runnable():
        skip_or_fail(reason)
    base = tmp_path_factory.mktemp("nextjs-retrying")
    port, log = free_port(), base / "gateway.log"
    env = {
        **keel.env,
        "KEEL_PORT": str(port),
        "KEEL_TASK_QUEUE": vendor_worker.task_queue,
        "KEEL_MODEL": "openai:cutx01",
    }
    gateway, url = _spawn([sys.executable, "-m", "api"], env, log), f"http://127.0.0.1:{port}"
    try:
        _wait_for("retrying gateway", lambda: _healthy(url), gateway, log)
        with _next_start(url, base / "next.log") as app_url:
            yield app_url
    finally:
        stop_process_group(gateway)


@pytest.fixture
async def http(keel: Keel) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway itself, not through the example: for what a test does behind the page's back."""
    async with httpx.AsyncClient(base_url=keel.gateway_url, timeout=30) as client:
        yield client


# --- what a person does and sees on the page -------------------------------------------------------------


async def send(page: "Page", text: str, purpose: str | None = None) -> None:
    if purpose:
        await page.select_option("#purpose", purpose)
    await page.fill("#input", text)
    await page.press("#input", "Enter")


def answer(page: "Page"):  # noqa: ANN201 (a Locator)
    return page.locator("li.msg.assistant").last


def tool(page: "Page", name: str):  # noqa: ANN201 (a Locator)
    return answer(page).locator(f'.tool[data-tool="{name}"]')


async def expect_run(page: "Page", status: str, words: str, within_ms: float = 20_000) -> None:
    """The run line under the last answer shows the status, in words."""
    line = answer(page).locator(".runline")
    await expect(line).to_have_attribute("data-status", status, timeout=within_ms)
    await expect(line.locator(".status")).to_have_text(words)


async def run_id_of(page: "Page") -> str:
    await expect(answer(page)).to_have_attribute("data-run-id", re.compile(r"^run-"))
    return await answer(page).get_attribute("data-run-id") or ""


def is_chat_post(request: "Request") -> bool:
    return request.method == "POST" and request.url.endswith("/api/chat")


def count_chat_posts(page: "Page") -> Callable[[], int]:
    posts: list[str] = []
    page.on("request", lambda request: posts.append(request.url) if is_chat_post(request) else None)
    return lambda: len(posts)


async def expect_no_more_chat_posts(page: "Page") -> None:
    with pytest.raises(PlaywrightTimeout):
        await page.wait_for_event("request", predicate=is_chat_post, timeout=NO_MORE_POSTS_MS)


async def streamed_text(gateway_url: str, agent_run_id: str) -> str:
    """The run's answer as the gateway streams it from the beginning, to compare with the page."""
    async with httpx.AsyncClient(base_url=gateway_url, timeout=30) as http:
        return parse(await http.get(f"/api/runs/{agent_run_id}/events")).text


# --- the tests ---------------------------------------------------------------------------------------------


async def test_an_answer_streams_in_piece_by_piece_and_a_reload_mid_answer_shows_it_once(
    page: "Page", slow_app: str, gateways: dict[str, str]
) -> None:
    await page.goto(slow_app)
    await send(page, "hello there, tell me everything")
    text = answer(page).locator(".text").first
    await expect(text).to_contain_text("scripted")
    seen: list[str] = []
    while len(seen) < 3:  # five pieces a second, through the proxy: watch the text grow
        value = await text.inner_text()
        if not seen or value != seen[-1]:
            seen.append(value)
        await asyncio.sleep(0.04)
    assert all(b.startswith(a) and len(b) > len(a) for a, b in zip(seen, seen[1:], strict=False)), seen
    await expect_run(page, "running", "running")
    agent_run_id = await run_id_of(page)

    await page.reload()  # mid-answer: resume (GET /api/chat/{id}/stream) replays the message from its start

    await expect_run(page, "completed", "completed")
    assert await answer(page).get_attribute("data-run-id") == agent_run_id
    assert await page.locator("li.msg.user").count() == 1
    assert await page.locator("li.msg.assistant").count() == 1
    expected = await streamed_text(gateways["slow"], agent_run_id)
    assert expected.startswith(PREFIX)
    shown = await answer(page).locator(".text").all_inner_texts()
    assert "".join(shown).strip() == expected.strip()  # whole, and nothing twice


async def test_model_markdown_renders_and_html_in_it_stays_inert(page: "Page", app: str) -> None:
    await page.goto(app)
    # The scripted model quotes the message back, so this is text the model writes.
    html = '<img src="x" onerror="window.pwned = 1"><script>window.pwned = 2</script>'
    await send(page, f"say **loudly** {html} please")

    await expect_run(page, "completed", "completed")
    reply = answer(page).locator(".text")
    await expect(reply.locator("strong")).to_have_text("loudly")
    await expect(reply).to_contain_text(html)  # shown as the characters it is
    assert await answer(page).locator("img, script").count() == 0
    assert await page.evaluate("window.pwned") is None
    await expect(page.locator("li.msg.user")).to_contain_text(html)


async def test_approving_publish_package_publishes_it_in_the_same_answer(
    page: "Page", app: str, keel: Keel
) -> None:
    missing: list[str] = []
    page.on("response", lambda response: missing.append(response.url) if response.status == 404 else None)
    await page.goto(app)
    chat_posts = count_chat_posts(page)
    await send(page, "plan, write and publish a lesson on linked lists", purpose="learnpack-lesson-writer")

    publish = tool(page, "publish_package")
    await expect(publish.locator(".tool-state")).to_have_text("needs your approval")
    await expect_run(page, "waiting_for_approval", "waiting for your approval")
    await expect(tool(page, "generate_markdown").locator(".tool-state")).to_have_text("done")
    await expect(publish.locator(".field .label").first).to_have_text("Arguments")
    await publish.get_by_role("button", name="Approve").click()

    await expect_run(page, "completed", "completed")
    await expect(publish.locator(".tool-state")).to_have_text("done")
    await expect(publish.locator(".field", has_text="Result")).to_contain_text("learn-linked-lists")
    # The answer's Markdown (the lesson) is rendered, not shown as # and ## characters.
    await expect(answer(page).locator(".text h1")).to_have_text("Learn linked lists")
    await expect(publish.get_by_role("button", name="Approve")).to_have_count(0)
    assert await page.locator("li.msg.assistant").count() == 1, "the resubmission continued the same run"
    assert chat_posts() == 2  # the message, then the approval
    assert missing == []  # not even /favicon.ico
    assert (keel.data_dir / "packages" / "learn-linked-lists" / "README.md").exists()


async def test_a_delegated_lesson_shows_the_writer_inside_and_its_publication_is_approved_there(
    page: "Page", app: str, keel: Keel
) -> None:
    await page.goto(app)
    chat_posts = count_chat_posts(page)
    await send(page, "plan, write and publish a lesson on sets", purpose="course-editor")

    # useChat keeps the writer's progress (preliminary tool results) on the editor's call of it.
    delegated = tool(page, "write_lesson")
    writer = delegated.locator(".subrun")
    publish = writer.locator('.tool[data-tool="publish_package"]')
    await expect(publish.locator(".tool-state")).to_have_text("needs your approval")
    await expect(writer).to_have_attribute("data-status", "waiting_for_approval")
    await expect(delegated.locator(".tool-state").first).to_have_text(
        "learnpack-lesson-writer: waiting for your approval"
    )

    await publish.get_by_role("button", name="Approve").click()  # through the editor's run, by the proxy

    await expect_run(page, "completed", "completed")
    await expect(delegated.locator(".tool-state").first).to_have_text("done")
    await expect(delegated.locator(".field", has_text="Result").first).to_contain_text(
        "publish_package returned"
    )
    await expect(delegated.locator("details.subrun-work summary")).to_have_text(
        "How learnpack-lesson-writer worked"
    )
    assert chat_posts() == 1  # the child's approval went to the run's endpoint, not through a resubmission
    assert (keel.data_dir / "packages" / "learn-sets" / "README.md").exists()


async def test_denying_publish_package_publishes_nothing(page: "Page", app: str, keel: Keel) -> None:
    await page.goto(app)
    await send(page, "plan, write and publish a lesson on hash maps", purpose="learnpack-lesson-writer")

    publish = tool(page, "publish_package")
    await expect(publish.get_by_role("button", name="Deny")).to_be_visible()
    await page.reload()  # a run parked on its approval comes back with it (resume), once
    await expect_run(page, "waiting_for_approval", "waiting for your approval")
    assert await page.locator("li.msg.assistant").count() == 1
    await publish.get_by_role("button", name="Deny").click()

    await expect_run(page, "completed", "completed")
    await expect(publish).to_have_attribute("data-state", "output-denied")
    await expect(publish.locator(".tool-state")).to_have_text("denied")
    assert not (keel.data_dir / "packages" / "learn-hash-maps").exists()


async def test_the_reply_box_answers_the_agents_question(page: "Page", app: str) -> None:
    await page.goto(app)
    await send(page, "ask me my favourite colour")

    ask = tool(page, "ask_user")
    await expect_run(page, "waiting_for_input", "waiting for your reply")
    await expect(ask.locator(".tool-state")).to_have_text("waiting for your reply")
    await ask.get_by_label("Your answer").fill("teal")
    await ask.get_by_role("button", name="Reply").click()

    await expect_run(page, "completed", "completed")
    await expect(ask.locator(".tool-state")).to_have_text("done")
    await expect(ask).to_contain_text("You answered: teal")
    await expect(answer(page).locator(".text").last).to_contain_text("teal")


async def test_cancel_while_a_tool_runs_shows_cancelled_without_a_reload(page: "Page", app: str) -> None:
    await page.goto(app)
    await send(page, "wait 8 seconds please")
    wait = tool(page, "wait")
    await expect(wait.locator(".tool-state")).to_have_text("running")

    await page.get_by_role("button", name="Cancel run").click()

    # Well before the 8 s wait would have ended: the stream itself brings the final status.
    await expect_run(page, "cancelled", "cancelled", within_ms=6_000)
    await expect(wait.locator(".tool-state")).to_have_text("no result: the run ended")
    await expect(page.get_by_role("button", name="Cancel run")).to_have_count(0)
    await expect(page.locator("#send")).to_be_enabled()
    await page.reload()
    await expect_run(page, "cancelled", "cancelled")


async def test_cancel_while_an_approval_waits_shows_cancelled_and_takes_approve_away(
    page: "Page", app: str, keel: Keel
) -> None:
    await page.goto(app)
    chat_posts = count_chat_posts(page)
    await send(page, "plan, write and publish a lesson on binary trees", purpose="learnpack-lesson-writer")
    publish = tool(page, "publish_package")
    await expect(publish.get_by_role("button", name="Approve")).to_be_visible()

    await page.get_by_role("button", name="Cancel run").click()

    # No stream is open while the run waits: the page asks the gateway how the run ended.
    await expect_run(page, "cancelled", "cancelled")
    await expect(publish.get_by_role("button", name="Approve")).to_have_count(0)
    await expect(publish.get_by_role("button", name="Deny")).to_have_count(0)
    await expect(publish.locator(".tool-state")).to_have_text("not decided: the run ended")
    await expect(page.get_by_role("button", name="Cancel run")).to_have_count(0)
    await expect(page.locator(".composer .waiting")).to_have_count(0)
    await page.reload()
    await expect_run(page, "cancelled", "cancelled")
    await expect(publish.get_by_role("button", name="Approve")).to_have_count(0)
    assert chat_posts() == 1
    assert not (keel.data_dir / "packages" / "learn-binary-trees").exists()


async def test_cancel_while_the_agent_asks_takes_the_reply_box_away(page: "Page", app: str) -> None:
    await page.goto(app)
    await send(page, "ask me my favourite colour")
    ask = tool(page, "ask_user")
    await expect(ask.get_by_role("button", name="Reply")).to_be_visible()
    await expect(page.locator(".composer .waiting")).to_contain_text("waits for your reply")

    await page.get_by_role("button", name="Cancel run").click()

    await expect_run(page, "cancelled", "cancelled")
    await expect(ask.get_by_role("button", name="Reply")).to_have_count(0)
    await expect(ask.get_by_label("Your answer")).to_have_count(0)
    await expect(ask.locator(".tool-state")).to_have_text("no result: the run ended")


async def test_a_stale_approve_sends_one_request_and_settles_on_cancelled(
    page: "Page", app: str, keel: Keel, http: httpx.AsyncClient
) -> None:
    await page.goto(app)
    chat_posts = count_chat_posts(page)
    await send(page, "plan, write and publish a lesson on stacks", purpose="learnpack-lesson-writer")
    publish = tool(page, "publish_package")
    await expect(publish.get_by_role("button", name="Approve")).to_be_visible()
    agent_run_id = await run_id_of(page)
    # Cancelled elsewhere (another tab, the CLI): this page still shows Approve.
    assert (await http.post(f"/api/runs/{agent_run_id}/cancel", json={})).status_code == 202
    await wait_for_status(http, agent_run_id, "cancelled")

    await publish.get_by_role("button", name="Approve").click()

    await expect_run(page, "cancelled", "cancelled")
    await expect(publish).to_have_attribute("data-state", "output-denied")
    await expect(publish.locator(".tool-state")).to_have_text("not run: the run ended")
    await expect(publish.get_by_role("button", name="Approve")).to_have_count(0)
    await expect(page.locator("#send")).to_be_enabled()
    await expect_no_more_chat_posts(page)
    assert chat_posts() == 2  # the message, then the one resubmission that learnt the run had ended
    assert not (keel.data_dir / "packages" / "learn-stacks").exists()


async def test_a_run_that_ended_while_the_page_was_away_shows_its_final_status(
    page: "Page", app: str, http: httpx.AsyncClient
) -> None:
    await page.goto(app)
    await send(page, "wait 8 seconds please")
    await expect(tool(page, "wait").locator(".tool-state")).to_have_text("running")
    agent_run_id = await run_id_of(page)
    await page.goto("about:blank")  # the tab keeps the chat in sessionStorage, its last answer `running`
    assert (await http.post(f"/api/runs/{agent_run_id}/cancel", json={})).status_code == 202
    await wait_for_status(http, agent_run_id, "cancelled")

    await page.goto(app)  # resume answers 204: the run is over; the page asks how it ended

    await expect_run(page, "cancelled", "cancelled")
    await expect(tool(page, "wait").locator(".tool-state")).to_have_text("no result: the run ended")
    assert await page.locator("li.msg.assistant").count() == 1
    await expect(page.get_by_role("button", name="Cancel run")).to_have_count(0)


async def test_a_message_while_an_approval_waits_is_explained_refused_kept_and_the_run_still_finishes(
    page: "Page", app: str, keel: Keel
) -> None:
    await page.goto(app)
    await send(page, "plan, write and publish a lesson on queues", purpose="learnpack-lesson-writer")
    publish = tool(page, "publish_package")
    await expect(publish.get_by_role("button", name="Approve")).to_be_visible()
    await expect(page.locator(".composer .waiting")).to_have_text(
        "This run waits for your decision on publish_package above: approve or deny it, or cancel the run."
    )
    await expect(page.get_by_role("button", name="Cancel run")).to_be_visible()

    await send(page, "and one more thing")

    alert = page.locator(".composer").get_by_role("alert")
    await expect(alert).to_contain_text("already has an active run")
    assert not (await alert.inner_text()).lstrip().startswith("{"), "a sentence, not the JSON"
    await expect(page.locator("#input")).to_have_value("and one more thing")
    await expect(page.locator("li.msg.user")).to_have_count(1)
    await expect(page.get_by_role("button", name="Cancel run")).to_be_visible()

    await publish.get_by_role("button", name="Approve").click()

    await expect_run(page, "completed", "completed")
    await expect(publish.locator(".tool-state")).to_have_text("done")
    await expect(alert).to_have_count(0)
    assert (keel.data_dir / "packages" / "learn-queues" / "README.md").exists()


async def test_the_proxy_passes_statuses_bodies_and_stream_headers_through(app: str, keel: Keel) -> None:
    async with (
        httpx.AsyncClient(base_url=app, timeout=30) as proxied,
        httpx.AsyncClient(base_url=keel.gateway_url, timeout=30) as direct,
    ):
        for method, path, body in [
            ("GET", f"/api/chat/chat-{uuid.uuid4().hex}/stream", None),  # no run: 204
            ("POST", "/api/runs/run-does-not-exist/cancel", {}),  # 404 with a detail
            ("POST", "/api/chat", {"id": "c", "messages": []}),  # invalid: 4xx with a detail
        ]:
            via_app = await proxied.request(method, path, json=body)
            straight = await direct.request(method, path, json=body)
            assert (via_app.status_code, via_app.content) == (straight.status_code, straight.content), path
        assert via_app.status_code in (400, 422)

        response = await proxied.post("/api/chat", json=chat_body("calculate (2 + 3) * 4"))
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-vercel-ai-ui-message-stream"] == "v1"
        assert response.headers["x-agent-run-id"].startswith("run-")
        assert response.headers["x-accel-buffering"] == "no"
        assert "content-encoding" not in response.headers
        assert parse(response).run_status == "completed"

        icon = await proxied.get("/favicon.ico")
        assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/")


async def test_the_text_of_a_retried_model_call_is_struck_not_repeated(
    page: "Page", retrying_app: str
) -> None:
    await page.goto(retrying_app)
    await send(page, "hello")

    await expect_run(page, "completed", "completed")
    # The first attempt had written its whole answer before the connection dropped; the retry wrote it again.
    discarded = answer(page).locator(".text.discarded")
    await expect(discarded).to_have_count(1)
    await expect(discarded).to_contain_text("Discarded: the model call was retried")
    await expect(discarded.locator("del")).to_contain_text(PREFIX)
    kept = answer(page).locator(".text:not(.discarded)")
    await expect(kept).to_have_count(1)
    await expect(kept).to_contain_text(PREFIX)
