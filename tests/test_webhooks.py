"""Signed webhooks through the real stack: a run's events are POSTed by `WebhookDelivery` workflows to a
receiver this test runs on 127.0.0.1 (hence KEEL_WEBHOOK_ALLOW_PRIVATE=true, except where the refusal of
private addresses is the point). Signatures are checked with the `standardwebhooks` library, each receiver
knowing one secret of two while they rotate; a receiver down for a while, a worker and a gateway killed
mid-delivery, redelivery under the same webhook-id, the records and `keel webhooks list`.
"""

import asyncio
import base64
import contextlib
import json
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from keel_examples import assistant, lesson_writer
from standardwebhooks import Webhook

from keel.agent import Agent
from keel.contracts import Message
from keel.run_start import first_messages, record_start, run_input, start_run
from keel.stack.embedded import EmbeddedPostgres, TemporalDevServer, free_port
from keel.storage.store import RunStore
from keel.webhooks import address_problem, endpoint_problem
from tests.conftest import NO_CONTEXT, Keel
from tests.crash_stack import CrashStack, until
from tests.ui_stream import chat_body

NEW_SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
OLD_SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1: it keeps every request, and answers `hold` requests by never
    answering (a receiver that hangs), then 200."""

    port: int = field(default_factory=free_port)
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    hold: int = 0
    _server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/keel"

    async def start(self) -> "Receiver":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        lines = head.split("\r\n")[1:]
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)
        }
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.requests.append((headers, body))
        if self.hold > 0:
            self.hold -= 1
            await asyncio.sleep(120)  # hangs until the test ends
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.requests]


@pytest.fixture
def stack_env() -> dict[str, str]:
    return {
        "KEEL_WEBHOOK_SECRET": f"{NEW_SECRET},{OLD_SECRET}",
        "KEEL_WEBHOOK_ALLOW_PRIVATE": "true",
        "KEEL_WEBHOOK_RETRY_SECONDS": "0.3",
    }


@pytest.fixture
def stack(
    keel: Keel,
    temporal_server: TemporalDevServer,
    postgres: EmbeddedPostgres,
    tmp_path: Path,
    stack_env: dict[str, str],
) -> Iterator[CrashStack]:
    with CrashStack(
        temporal_server, postgres, tmp_path, keel.env["KEEL_CODEC_KEY_FILE"], **stack_env
    ) as stack:
        yield stack


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    yield receiver
    await receiver.stop()


async def start(
    stack: CrashStack, store: RunStore, agent: Agent, text: str, endpoints: list[str], **metadata: Any
) -> str:
    """A run with these webhook endpoints, started as the gateway starts one (keel/run_start.py)."""
    messages = first_messages(agent, NO_CONTEXT, [Message(role="user", content=text)])
    run = run_input(agent.spec("scripted"), messages, webhooks=endpoints, metadata=metadata)
    await record_start(store, run, messages)
    await start_run(await stack.temporal(), run, stack.env["KEEL_TASK_QUEUE"])
    return run.agent_run_id


async def deliveries(pool: asyncpg.Pool, run_id: str) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT * FROM webhook_deliveries WHERE agent_run_id = $1 ORDER BY created_at", run_id
    )


async def delivered(pool: asyncpg.Pool, run_id: str, event_type: str) -> asyncpg.Record:
    async def check() -> asyncpg.Record | None:
        rows = await deliveries(pool, run_id)
        return next((r for r in rows if r["event_type"] == event_type and r["status"] == "delivered"), None)

    found: asyncpg.Record = await until(check, f"{event_type} of {run_id} delivered", within=60)
    return found


def verified(secret: str, headers: dict[str, str], body: bytes) -> Any:
    return Webhook(secret).verify(body, headers)


async def test_run_events_are_signed_with_every_secret_recorded_listed_and_redelivered_under_the_same_id(
    stack: CrashStack, store: RunStore, receiver: Receiver
) -> None:
    await receiver.start()
    worker, gateway = stack.worker(), stack.gateway()
    await stack.start(worker, gateway)

    run_id = await start(stack, store, assistant, "hello there", [receiver.url], order="A-17")
    row = await delivered(store.pool, run_id, "run.completed")

    [(headers, body)] = receiver.requests
    # A receiver that knows only the new secret, and one that still knows only the old one: both verify.
    event = verified(NEW_SECRET, headers, body)
    assert verified(OLD_SECRET, headers, body) == event
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert headers["webhook-id"] == row["id"]
    assert event["type"] == "run.completed"
    data = event["data"]
    assert data["agent_run_id"] == run_id
    assert data["status"] == "completed"
    assert data["purpose"] == "assistant"
    assert data["metadata"] == {"order": "A-17"}
    assert data["text"]  # the final answer, read from PostgreSQL
    assert row["attempts"] == 1 and row["last_status_code"] == 200 and row["delivered_at"] is not None

    # Redelivered: the same webhook-id, signed afresh.
    async with httpx.AsyncClient(base_url=gateway.url or "") as http:
        again = await http.post(f"/api/webhooks/deliveries/{row['id']}/redeliver")
        assert again.status_code == 202, again.text
        await until(lambda: len(receiver.requests) == 2, "the redelivery")
        listed = await http.get("/api/webhooks/deliveries", params={"agent_run_id": run_id})
        timeline = await http.get(f"/api/runs/{run_id}/timeline")
    assert receiver.requests[1][0]["webhook-id"] == row["id"]
    assert verified(NEW_SECRET, *receiver.requests[1])["data"] == data
    await delivered(store.pool, run_id, "run.completed")
    assert [d["id"] for d in listed.json()] == [row["id"]]
    assert [d["event_type"] for d in timeline.json()["webhooks"]] == ["run.completed"]

    # `keel webhooks list` through the client, as a person types it.
    cli = [sys.executable, "-c", "from keel.cli.main import main; raise SystemExit(main())"]
    listing = await asyncio.to_thread(
        subprocess.run,
        [*cli, "--url", gateway.url or "", "webhooks", "list", "--run", run_id],
        capture_output=True,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert listing.returncode == 0, listing.stderr
    assert row["id"] in listing.stdout and "delivered" in listing.stdout and "run.completed" in listing.stdout


async def test_a_run_waiting_for_approval_says_so_and_then_how_it_ended(
    stack: CrashStack, store: RunStore, receiver: Receiver
) -> None:
    await receiver.start()
    await stack.start(stack.worker())
    run_id = await start(
        stack, store, lesson_writer, "plan, write and publish a lesson on patience", [receiver.url]
    )

    waiting = await delivered(store.pool, run_id, "run.waiting_for_approval")
    event = verified(NEW_SECRET, *receiver.requests[0])
    assert event["type"] == "run.waiting_for_approval"
    assert event["data"]["status"] == "waiting_for_approval"
    assert event["data"]["tool_call"]["name"] == "publish_package"
    assert event["data"]["approval"]["tool_call_id"] == event["data"]["tool_call"]["id"]
    assert event["data"]["approval"]["expires_at"]

    await (await stack.temporal()).get_workflow_handle(run_id).signal("cancel", {"reason": "test"})
    cancelled = await delivered(store.pool, run_id, "run.cancelled")
    assert cancelled["id"] != waiting["id"]
    assert [e["type"] for e in receiver.events()] == ["run.waiting_for_approval", "run.cancelled"]


async def test_a_receiver_down_for_a_while_gets_the_event_once_after_retries(
    stack: CrashStack, store: RunStore, receiver: Receiver
) -> None:
    await stack.start(stack.worker())
    run_id = await start(stack, store, assistant, "hello there", [receiver.url])

    async def failed_twice() -> bool:
        # A third attempt has begun: two have failed, each recorded with why and when the next is due.
        rows = await deliveries(store.pool, run_id)
        return bool(rows) and rows[0]["attempts"] >= 3 and rows[0]["status"] == "pending"

    await until(failed_twice, "two failed attempts", within=60)
    [pending] = await deliveries(store.pool, run_id)
    assert pending["last_error"] and pending["next_attempt_at"] is not None
    await receiver.start()

    row = await delivered(store.pool, run_id, "run.completed")
    await asyncio.sleep(1)  # nothing more comes
    assert len(receiver.requests) == 1
    assert row["attempts"] >= 3 and row["next_attempt_at"] is None


async def test_a_delivery_survives_kill_9_of_the_worker_mid_delivery_and_of_the_gateway(
    stack: CrashStack, store: RunStore, receiver: Receiver
) -> None:
    receiver.hold = 1  # the first attempt hangs: the worker is killed while it waits
    await receiver.start()
    worker, gateway = stack.worker(), stack.gateway()
    await stack.start(worker, gateway)
    run_id = await start(stack, store, assistant, "hello there", [receiver.url])

    await until(lambda: receiver.requests, "the first attempt", within=60)
    worker.kill()
    gateway.kill()  # deliveries never depend on a gateway
    await worker.restart()

    row = await delivered(store.pool, run_id, "run.completed")
    [first, second] = receiver.requests
    assert first[0]["webhook-id"] == second[0]["webhook-id"] == row["id"]
    assert verified(NEW_SECRET, *second)["data"]["agent_run_id"] == run_id


@pytest.mark.parametrize("stack_env", [{"KEEL_WEBHOOK_SECRET": NEW_SECRET}])
async def test_a_name_that_resolves_to_a_private_address_is_refused_for_good(
    stack: CrashStack, store: RunStore, receiver: Receiver
) -> None:
    await receiver.start()
    await stack.start(stack.worker())
    endpoint = f"http://localhost:{receiver.port}/hooks/keel"  # a name, not an address: judged resolved
    run_id = await start(stack, store, assistant, "hello there", [endpoint])

    async def refused() -> asyncpg.Record | None:
        rows = await deliveries(store.pool, run_id)
        return rows[0] if rows and rows[0]["status"] == "refused" else None

    row = await until(refused, "the refusal", within=60)
    assert "loopback" in row["last_error"] and "KEEL_WEBHOOK_ALLOW_PRIVATE" in row["last_error"]
    assert row["attempts"] == 1
    handle = (await stack.temporal()).get_workflow_handle(f"webhook-{row['id']}")
    with contextlib.suppress(Exception):
        await asyncio.wait_for(handle.result(), 30)
    assert (await handle.describe()).status.name == "FAILED"
    assert receiver.requests == []


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://example.com/x", "http or https"),
        ("https:///x", "needs a host"),
        ("https://user:pw@example.com/x", "credentials"),
        ("http://10.1.2.3/x", "private"),
        ("http://[::1]/x", "loopback"),
        ("http://[::ffff:127.0.0.1]/x", "loopback"),
        ("http://169.254.169.254/latest", "link-local"),
        ("http://0.0.0.0/x", "unspecified"),
        ("http://224.0.0.1/x", "multicast"),
        ("http://100.64.0.1/x", "not public"),
    ],
)
def test_the_validator_refuses_what_can_not_be_a_public_endpoint(url: str, why: str) -> None:
    problem = endpoint_problem(url, allow_private=False)
    assert problem is not None and why in problem
    assert endpoint_problem("https://hooks.example.com/keel", allow_private=False) is None
    assert address_problem(__import__("ipaddress").ip_address("93.184.216.34")) is None


async def test_a_server_started_run_posts_to_its_own_webhook_url_and_to_the_apps_endpoints(
    keel: Keel,
    temporal_server: TemporalDevServer,
    postgres: EmbeddedPostgres,
    tmp_path: Path,
    store: RunStore,
) -> None:
    own, app = await Receiver().start(), await Receiver().start()
    env = {
        "KEEL_WEBHOOK_SECRET": NEW_SECRET,
        "KEEL_WEBHOOK_ALLOW_PRIVATE": "true",
        "KEEL_WEBHOOK_URLS": app.url,
    }
    try:
        with CrashStack(temporal_server, postgres, tmp_path, keel.env["KEEL_CODEC_KEY_FILE"], **env) as stack:
            gateway = stack.gateway()
            await stack.start(stack.worker(), gateway)
            async with httpx.AsyncClient(base_url=gateway.url or "", timeout=60) as http:
                server_run = await http.post(
                    "/api/runs",
                    json={
                        "messages": [
                            {"id": "m1", "role": "user", "parts": [{"type": "text", "text": "hello"}]}
                        ],
                        "metadata": {"ticket": 9},
                        "webhook_url": own.url,
                    },
                )
                assert server_run.status_code == 202, server_run.text
                run_id = server_run.json()["agent_run_id"]
                # A chat's run goes to the app's endpoints too.
                chat = await http.post("/api/chat", json=chat_body("hello from the chat"))
                chat_run = chat.headers["x-agent-run-id"]
                await until(lambda: len(own.requests) == 1 and len(app.requests) == 2, "the four deliveries")
    finally:
        await own.stop()
        await app.stop()

    [mine] = [verified(NEW_SECRET, *request) for request in own.requests]
    assert (mine["type"], mine["data"]["agent_run_id"], mine["data"]["metadata"]) == (
        "run.completed",
        run_id,
        {"ticket": 9},
    )
    apps = sorted(verified(NEW_SECRET, *request)["data"]["agent_run_id"] for request in app.requests)
    assert apps == sorted([run_id, chat_run])


async def test_a_webhook_url_keel_would_not_deliver_to_is_refused_before_the_run_starts(
    stack: CrashStack, store: RunStore
) -> None:
    stack.env.pop("KEEL_WEBHOOK_ALLOW_PRIVATE")
    gateway = stack.gateway()
    await stack.start(gateway)
    body = {"messages": [{"id": "m1", "role": "user", "parts": [{"type": "text", "text": "hello"}]}]}
    async with httpx.AsyncClient(base_url=gateway.url or "", timeout=30) as http:
        private = await http.post("/api/runs", json={**body, "webhook_url": "http://10.1.2.3/hooks"})
        metadata_host = await http.post("/api/runs", json={**body, "webhook_url": "http://169.254.169.254/x"})

    assert private.status_code == 422 and "webhook_url: " in private.text and "private" in private.text
    assert metadata_host.status_code == 422 and "link-local" in metadata_host.text
