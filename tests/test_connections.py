"""Slow clients cannot hold the gateway's connections (api/connections.py), over raw sockets against a real
gateway process.

A gateway of this module's own reads with a short deadline (2 s), so the tests are quick: a connection
that stalls in its headers or its body, or trickles its body, is answered 408 and closed, one that never
sends a byte is closed, an idle keep-alive connection is closed after KEEL_KEEP_ALIVE_SECONDS. What must keep working: a stream
whose run waits (pings only) for longer than the deadline, keep-alive reuse, and a large body sent at once.
The shipped defaults close a stalled client within 30 s.
"""

import asyncio
import json
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from keel.settings import Settings
from keel.stack.embedded import free_port, stop_process_group
from tests.conftest import Keel, _healthy, _spawn, _wait_for
from tests.ui_stream import assert_well_formed, chat_body, parse, user_message

READ_TIMEOUT = 2.0
KEEP_ALIVE = 0.5
# How late a close may come on a loaded two-core machine and still count as "on time".
SLACK = 6.0


@pytest.fixture(scope="module")
def strict(keel: Keel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway on the session's worker with a 2 s request deadline, a 0.5 s keep-alive and 0.5 s pings."""
    port, log = free_port(), tmp_path_factory.mktemp("strict-gateway") / "gateway.log"
    env = {
        **keel.env,
        "KEEL_PORT": str(port),
        "KEEL_REQUEST_READ_TIMEOUT_SECONDS": str(READ_TIMEOUT),
        "KEEL_KEEP_ALIVE_SECONDS": str(KEEP_ALIVE),
        "KEEL_SSE_PING_SECONDS": "0.5",
    }
    gateway = _spawn([sys.executable, "-m", "api"], env, log)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for("strict gateway", lambda: _healthy(url), gateway, log)
        yield url
    finally:
        stop_process_group(gateway)


async def connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = httpx.URL(url).host, httpx.URL(url).port
    return await asyncio.open_connection(host, port)


async def everything_until_closed(reader: asyncio.StreamReader, within: float) -> bytes:
    """All the server sends until it closes the connection; fails if it is still open after `within` s."""
    try:
        return await asyncio.wait_for(reader.read(), within)
    except TimeoutError:
        raise AssertionError(f"the gateway kept the connection open for more than {within} s") from None


async def test_a_request_that_stalls_in_its_headers_is_answered_408_and_closed(strict: str) -> None:
    reader, writer = await connect(strict)
    started = time.monotonic()
    writer.write(b"POST /api/chat HTTP/1.1\r\nHost: x\r\n")
    await writer.drain()

    answer = await everything_until_closed(reader, READ_TIMEOUT + SLACK)

    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"did not arrive in full within 2 s" in answer
    assert time.monotonic() - started >= READ_TIMEOUT - 0.2  # the client had its whole deadline
    writer.close()


async def test_a_request_that_stalls_in_its_body_is_answered_408_and_closed(strict: str) -> None:
    reader, writer = await connect(strict)
    writer.write(
        b"POST /api/chat HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
        b"content-length: 1000\r\n\r\n"
        b'{"id": "ch'  # 10 of the 1000 bytes promised
    )
    await writer.drain()

    answer = await everything_until_closed(reader, READ_TIMEOUT + SLACK)

    assert answer.startswith(b"HTTP/1.1 408 "), answer
    writer.close()


async def test_a_body_trickled_a_byte_at_a_time_cannot_stretch_the_deadline(strict: str) -> None:
    reader, writer = await connect(strict)
    started = time.monotonic()
    writer.write(
        b"POST /api/chat HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
        b"content-length: 1000\r\n\r\n"
    )
    closed = asyncio.create_task(everything_until_closed(reader, READ_TIMEOUT + SLACK))
    while not closed.done():  # a byte every 0.2 s: never silent for long, never finished
        writer.write(b" ")
        await asyncio.wait({closed}, timeout=0.2)

    assert (await closed).startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < READ_TIMEOUT + SLACK
    writer.close()


async def test_a_connection_that_never_sends_a_byte_is_closed(strict: str) -> None:
    reader, writer = await connect(strict)
    assert await everything_until_closed(reader, READ_TIMEOUT + SLACK) == b""
    writer.close()


async def test_a_keep_alive_connection_serves_request_after_request_then_closes_when_idle(
    strict: str,
) -> None:
    reader, writer = await connect(strict)
    for _ in range(3):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200 "), head
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        assert json.loads(await reader.readexactly(length))["postgres"] == "ok"
    idle_since = time.monotonic()

    assert await everything_until_closed(reader, KEEP_ALIVE + SLACK) == b""
    # The configured keep-alive, not uvicorn's default of 5 s.
    assert time.monotonic() - idle_since < 4.5
    writer.close()


async def test_a_stream_whose_run_waits_longer_than_the_deadline_is_not_cut(strict: str) -> None:
    async with httpx.AsyncClient(base_url=strict, timeout=60) as http:
        started = time.monotonic()
        response = await http.post("/api/chat", json=chat_body("wait 5 seconds please"))
        took = time.monotonic() - started

    assert response.status_code == 200, response.text
    stream = parse(response)
    assert_well_formed(stream)
    assert stream.tool_names == ["wait"] and stream.run_status == "completed"
    assert ": ping" in response.text  # the run waited; the stream said only that it was alive
    assert took > 2 * READ_TIMEOUT


async def test_a_large_body_sent_at_once_is_read_whole(strict: str) -> None:
    # About 600 KB: ten times uvicorn's read buffer, so flow control pauses and resumes reading on the way.
    history = [user_message("a" * 60_000 + f" note {n}", f"m{n}") for n in range(10)]
    body = {**chat_body("calculate 6 * 7"), "messages": [*history, user_message("calculate 6 * 7", "m10")]}
    async with httpx.AsyncClient(base_url=strict, timeout=60) as http:
        response = await http.post(
            "/api/chat", content=json.dumps(body), headers={"content-type": "application/json"}
        )

    assert response.status_code == 200, response.text
    assert parse(response).tool_names == ["calculate"]


def test_the_shipped_defaults_close_a_stalled_client_within_30_seconds() -> None:
    defaults = Settings.model_fields
    assert defaults["request_read_timeout_s"].default <= 30
    assert defaults["keep_alive_s"].default <= 30
