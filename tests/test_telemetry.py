"""Frontend telemetry end to end: `POST /api/telemetry` (api/telemetry.py) against a gateway of this module's
own (KEEL_AUTH=jwt, a small telemetry rate limit, its log in a file; on the session's worker): what it
accepts, what it refuses and how (422 naming the field, 413, 429, 401, and 404 for a run that is not the
caller's, exactly as for one that does not exist), and where an event goes — the `keel_frontend_*` metrics
on `/metrics`, one JSON log line, the run viewer's timeline. Then the chat page and the Next.js example in
headless Chromium: a real run, approved, reports its time to first token and its decision time.
"""

import asyncio
import contextlib
import json
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from keel.stack.embedded import free_port, stop_process_group
from keel.storage import frontend_events
from keel.storage.store import RunStore
from tests.conftest import AUTH_JWT_SECRET, Keel, _healthy, _spawn, _wait_for
from tests.test_nextjs_example import app  # noqa: F401 (the Next.js example's fixture)

with contextlib.suppress(ImportError):  # the `browser` fixture skips, saying why, without Playwright
    from playwright.async_api import Page, expect

RATE_LIMIT = 10  # telemetry requests a user may send a minute on this module's gateway


@pytest.fixture(scope="module")
def gateway(keel: Keel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A gateway with authentication on and a small telemetry rate limit: its URL and its log file."""
    port, log = free_port(), tmp_path_factory.mktemp("telemetry") / "gateway.log"
    env = {
        **keel.env,
        "KEEL_PORT": str(port),
        "KEEL_AUTH": "jwt",
        "KEEL_JWT_SECRET": AUTH_JWT_SECRET,
        "KEEL_TELEMETRY_RATE_LIMIT": str(RATE_LIMIT),
    }
    url = f"http://127.0.0.1:{port}"
    proc = _spawn([sys.executable, "-m", "api"], env, log)
    try:
        _wait_for("telemetry gateway", lambda: _healthy(url), proc, log)
        yield url, log
    finally:
        stop_process_group(proc)


def token(user: str, admin: bool = False) -> dict[str, str]:
    claims: dict[str, Any] = {"sub": user, "exp": int(time.time()) + 3600}
    if admin:
        claims["role"] = "admin"
    return {"authorization": f"Bearer {jwt.encode(claims, AUTH_JWT_SECRET, 'HS256')}"}


def someone() -> str:
    """A user of one test: each has a rate limit of its own."""
    return f"user-{uuid.uuid4().hex[:8]}"


def a_run_of(url: str, user: str) -> str:
    """A finished run of `user`'s, started through the chat API."""
    body = {
        "id": f"chat-{uuid.uuid4()}",
        "messages": [{"id": "m1", "role": "user", "parts": [{"type": "text", "text": "hello"}]}],
    }
    with httpx.stream("POST", f"{url}/api/chat", json=body, headers=token(user), timeout=60) as response:
        assert response.status_code == 200, response.read()
        for _ in response.iter_lines():
            pass
        return response.headers["x-agent-run-id"]


def post(url: str, user: str, body: Any, **headers: str) -> httpx.Response:
    return httpx.post(f"{url}/api/telemetry", json=body, headers={**token(user), **headers}, timeout=30)


def timeline(url: str, user: str, agent_run_id: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/api/runs/{agent_run_id}/timeline", headers=token(user), timeout=30)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def metric(url: str, name: str, client: str) -> float:
    """A `keel_frontend_*` sample's value on the gateway's /metrics (0 when absent)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("client") == client:
                return float(sample.value)
    return 0.0


def log_lines(log: Path, agent_run_id: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("agent_run_id") == agent_run_id]


# --- the API ---------------------------------------------------------------------------------------------


def test_a_batch_is_counted_logged_and_shown_in_the_viewer(gateway: tuple[str, Path]) -> None:
    url, log = gateway
    user = someone()
    run = a_run_of(url, user)
    before = {
        "ttft": metric(url, "keel_frontend_ttft_seconds_count", "chat-page"),
        "stalls": metric(url, "keel_frontend_stalls_total", "chat-page"),
        "reconnects": metric(url, "keel_frontend_reconnects_total", "chat-page"),
        "errors": metric(url, "keel_frontend_errors_total", "other"),
        "decisions": metric(url, "keel_frontend_decision_seconds_count", "nextjs"),
    }
    batch = [
        {"agent_run_id": run, "kind": "ttft", "value_ms": 840, "client": "chat-page"},
        {"agent_run_id": run, "kind": "stall", "value_ms": 2600.5, "client": "chat-page"},
        {
            "agent_run_id": run,
            "kind": "reconnect",
            "detail": "reconnected after event 7",
            "client": "chat-page",
        },
        {
            "agent_run_id": run,
            "kind": "error",
            "detail": "Connection problem: network",
            "client": "my-own-app",
        },
        {
            "agent_run_id": run,
            "kind": "decision",
            "value_ms": 12_000,
            "detail": "approved x",
            "client": "nextjs",
        },
    ]
    response = post(url, user, batch)
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 5}
    # One event alone, not in a list, is a batch of one.
    assert post(url, user, {"agent_run_id": run, "kind": "ttft", "value_ms": 10}).json() == {"accepted": 1}

    assert metric(url, "keel_frontend_ttft_seconds_count", "chat-page") == before["ttft"] + 1
    assert metric(url, "keel_frontend_ttft_seconds_count", "other") >= 1  # no client named: "other"
    assert metric(url, "keel_frontend_stalls_total", "chat-page") == before["stalls"] + 1
    assert metric(url, "keel_frontend_reconnects_total", "chat-page") == before["reconnects"] + 1
    # A client the gateway does not know is counted as "other": the label stays bounded.
    assert metric(url, "keel_frontend_errors_total", "other") == before["errors"] + 1
    assert metric(url, "keel_frontend_errors_total", "my-own-app") == 0
    assert metric(url, "keel_frontend_decision_seconds_count", "nextjs") == before["decisions"] + 1

    shown = timeline(url, user, run)["frontend"]
    assert [(e["kind"], e["value_ms"], e["client"]) for e in shown] == [
        ("ttft", 840, "chat-page"),
        ("stall", 2600.5, "chat-page"),
        ("reconnect", None, "chat-page"),
        ("error", None, "my-own-app"),
        ("decision", 12_000, "nextjs"),
        ("ttft", 10, None),
    ]
    assert shown[3]["detail"] == "Connection problem: network"

    deadline = time.monotonic() + 5
    while len(lines := log_lines(log, run)) < 6 and time.monotonic() < deadline:
        time.sleep(0.1)
    frontend = [line for line in lines if str(line.get("event", "")).startswith("frontend_")]
    assert [line["event"] for line in frontend] == [
        "frontend_ttft",
        "frontend_stall",
        "frontend_reconnect",
        "frontend_error",
        "frontend_decision",
        "frontend_ttft",
    ]
    assert frontend[0]["value_ms"] == 840 and frontend[0]["client"] == "chat-page"
    assert frontend[3]["detail"] == "Connection problem: network" and frontend[3]["level"] == "info"


RUN = "run-00000000-0000-4000-8000-000000000000"
BAD_EVENTS = [
    ({"agent_run_id": RUN, "kind": "ttft"}, "value_ms", "Field required"),
    ({"agent_run_id": RUN, "kind": "decision"}, "value_ms", "Field required"),
    ({"agent_run_id": RUN, "kind": "stall", "value_ms": -1}, "value_ms", "greater than or equal to 0"),
    ({"agent_run_id": RUN, "kind": "ttft", "value_ms": 1e12}, "value_ms", "less than or equal to"),
    ({"agent_run_id": RUN, "kind": "ttft", "value_ms": "soon"}, "value_ms", "valid number"),
    (
        {"agent_run_id": RUN, "kind": "scroll", "value_ms": 1},
        "kind",
        "does not match any of the expected tags",
    ),
    ({"agent_run_id": "not-a-run", "kind": "error"}, "agent_run_id", "not a run id"),
    ({"kind": "error"}, "agent_run_id", "Field required"),
    ({"agent_run_id": RUN, "kind": "error", "detail": "x" * 501}, "detail", "at most 500 characters"),
    ({"agent_run_id": RUN, "kind": "error", "client": "my app!"}, "client", "should match pattern"),
    ({"agent_run_id": RUN, "kind": "error", "extra": 1}, "extra", "Extra inputs are not permitted"),
    ({"agent_run_id": RUN, "kind": "error", "detail": "a\u0000b"}, "detail", "NUL"),
    ([], "batch", "at least 1 item"),
    ([{"agent_run_id": RUN, "kind": "error"}] * 51, "batch", "at most 50 items"),
    ("ttft", "event", "valid dictionary"),
]


@pytest.mark.parametrize(("body", "field", "message"), BAD_EVENTS)
def test_a_bad_event_is_a_422_naming_the_field(
    gateway: tuple[str, Path], body: Any, field: str, message: str
) -> None:
    url, _ = gateway
    response = post(url, someone(), body)
    assert response.status_code == 422, response.text
    problems = response.json()["detail"]
    # The field is in the problem's `loc`, or for an unknown kind in its message ("found using 'kind'").
    named = [p for p in problems if field in map(str, p["loc"]) or f"'{field}'" in p["msg"]]
    assert any(message in p["msg"] for p in named), problems


def test_a_large_body_is_413_and_too_many_batches_are_429(gateway: tuple[str, Path]) -> None:
    url, _ = gateway
    user = someone()
    huge = {"agent_run_id": RUN, "kind": "error", "detail": "x" * 70_000}
    assert post(url, user, huge).status_code == 413
    # The rate is per user: RATE_LIMIT batches a minute, then 429 with Retry-After.
    answers = [post(url, user, {"agent_run_id": RUN, "kind": "error"}) for _ in range(RATE_LIMIT + 1)]
    assert [a.status_code for a in answers] == [404] * RATE_LIMIT + [429]
    assert int(answers[-1].headers["retry-after"]) >= 1
    assert "too much telemetry" in answers[-1].json()["detail"]
    assert post(url, someone(), {"agent_run_id": RUN, "kind": "error"}).status_code == 404  # others go on


def test_another_users_run_is_a_404_like_a_run_that_does_not_exist(gateway: tuple[str, Path]) -> None:
    url, _ = gateway
    alice, bob = someone(), someone()
    run = a_run_of(url, alice)
    event = {"agent_run_id": run, "kind": "ttft", "value_ms": 5}
    foreign = post(url, bob, event)
    unknown = post(url, bob, {**event, "agent_run_id": RUN})
    assert (foreign.status_code, unknown.status_code) == (404, 404)
    assert foreign.json()["detail"] == f"no run {run!r}"
    assert unknown.json()["detail"] == f"no run {RUN!r}"
    # A batch with one run of bob's own and one of alice's is refused whole: nothing of it is stored.
    own = a_run_of(url, bob)
    mixed = post(url, bob, [{**event, "agent_run_id": own}, event])
    assert mixed.status_code == 404
    assert timeline(url, bob, own)["frontend"] == []
    assert timeline(url, alice, run)["frontend"] == []
    # No credentials: 401. An admin may report on anyone's run.
    assert httpx.post(f"{url}/api/telemetry", json=event, timeout=10).status_code == 401
    assert post(url, "an-admin", event, **token("an-admin", admin=True)).status_code == 202
    assert [e["kind"] for e in timeline(url, alice, run)["frontend"]] == ["ttft"]


# --- the frontends ---------------------------------------------------------------------------------------


async def reported(base_url: str, agent_run_id: str, kinds: set[str]) -> list[dict[str, Any]]:
    """The run's frontend events once every kind in `kinds` has arrived (the page sends them in batches)."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        deadline = time.monotonic() + 20
        while True:
            events: list[dict[str, Any]] = (await http.get(f"/api/runs/{agent_run_id}/timeline")).json()[
                "frontend"
            ]
            if kinds <= {e["kind"] for e in events} or time.monotonic() > deadline:
                return events
            await asyncio.sleep(0.2)


async def approve_a_lesson(page: "Page", topic: str, wait_s: float) -> str:
    """Ask for a lesson, wait `wait_s` with the approval shown, approve it; the run's id once it completed."""
    await page.fill("#input", f"plan, write and publish a lesson on {topic}")
    await page.press("#input", "Enter")
    run = page.locator("li.msg.assistant").last
    publish = run.locator('.tool[data-tool="publish_package"]')
    await expect(publish.get_by_role("button", name="Approve")).to_be_enabled()
    await asyncio.sleep(wait_s)
    await publish.get_by_role("button", name="Approve").click()
    return await run.get_attribute("data-run-id") or ""


def check_reports(events: list[dict[str, Any]], client: str, waited_s: float) -> None:
    ttft = [e for e in events if e["kind"] == "ttft"]
    decisions = [e for e in events if e["kind"] == "decision"]
    assert ttft and all(e["client"] == client and 0 < e["value_ms"] < 20_000 for e in ttft), events
    assert len(decisions) == 1, events
    assert decisions[0]["client"] == client
    assert waited_s * 1000 <= decisions[0]["value_ms"] < waited_s * 1000 + 10_000
    assert decisions[0]["detail"] == "approved publish_package"


async def test_the_chat_page_reports_time_to_first_token_and_decision_time(page: "Page", keel: Keel) -> None:
    await page.goto(keel.gateway_url)
    await expect(page.locator('#purpose option[value="learnpack-lesson-writer"]')).to_have_count(1)
    await page.select_option("#purpose", "learnpack-lesson-writer")
    agent_run_id = await approve_a_lesson(page, "telemetry", wait_s=1.0)
    run = page.locator("li.msg.assistant").last
    await expect(run.locator(".runline .status")).to_have_attribute("data-status", "completed")

    events = await reported(keel.gateway_url, agent_run_id, {"ttft", "decision"})
    check_reports(events, "chat-page", waited_s=1.0)
    # The run viewer shows them.
    await page.goto(f"{keel.gateway_url}/runs?run={agent_run_id}")
    await expect(page.locator('tr.frontend-event[data-kind="decision"]')).to_have_count(1)
    await expect(page.locator("#detail")).to_contain_text("time to first token")


async def test_the_nextjs_example_reports_time_to_first_token_and_decision_time(
    page: "Page",
    app: str,  # noqa: F811 (the fixture imported above)
    keel: Keel,
) -> None:
    await page.goto(app)
    await page.select_option("#purpose", "learnpack-lesson-writer")
    agent_run_id = await approve_a_lesson(page, "beacons", wait_s=1.0)
    await expect(page.locator("li.msg.assistant").last.locator(".runline")).to_have_attribute(
        "data-status", "completed"
    )

    events = await reported(keel.gateway_url, agent_run_id, {"ttft", "decision"})
    check_reports(events, "nextjs", waited_s=1.0)


async def test_events_older_than_the_retention_are_pruned_and_newer_ones_kept(store: RunStore) -> None:
    run = f"run-{uuid.uuid4()}"
    await store.pool.execute(
        "INSERT INTO frontend_events (agent_run_id, kind, value_ms, received_at) VALUES"
        " ($1, 'ttft', 10, now() - interval '31 days'), ($1, 'ttft', 20, now())",
        run,
    )

    await frontend_events.prune(store.pool, timedelta(days=30))

    assert await store.pool.fetch("SELECT value_ms FROM frontend_events WHERE agent_run_id = $1", run) == [
        (20.0,)
    ]
