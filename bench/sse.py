"""A lean Server-Sent Events client on raw asyncio streams, for benchmarks that read many streams at once.

A general HTTP client spends more per line than the gateway does per event; with a thousand streams on
two cores the client would then be what is measured. This one speaks just enough HTTP/1.1 (one request
per connection; chunked, sized or close-delimited bodies) and stamps each event with the wall-clock time
its bytes were read, the same clock the fake provider stamps its tokens with.
"""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Event:
    id: int | None
    data: str
    # time.time() when the bytes holding this event were read.
    at: float


class HTTPStatusError(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:300].decode(errors='replace')}")
        self.status = status


async def events(
    url: str,
    *,
    body: Any = None,
    headers: dict[str, str] | None = None,
    connect_timeout: float = 30.0,
) -> AsyncIterator[Event]:
    """The SSE events of a GET (or, with a JSON `body`, a POST) to `url`, until the server ends the body.
    A 204 yields nothing; any other status but 200 raises HTTPStatusError."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    payload = b"" if body is None else json.dumps(body).encode()
    lines = [
        f"{'GET' if body is None else 'POST'} {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Accept: text/event-stream",
        "Connection: close",
    ]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), connect_timeout)
    try:
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
        status, response_headers = await _head(reader)
        if status == 204:
            return
        if status != 200:
            raise HTTPStatusError(status, await reader.read(2000))
        buffer = b""
        async for data, at in _body(reader, response_headers):
            buffer += data
            while b"\n\n" in buffer:
                raw, buffer = buffer.split(b"\n\n", 1)
                event = _parse(raw, at)
                if event is not None:
                    yield event
    finally:
        writer.close()


async def _head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("the server closed the connection without answering")
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


async def _body(reader: asyncio.StreamReader, headers: dict[str, str]) -> AsyncIterator[tuple[bytes, float]]:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                return
            data = await reader.readexactly(size)
            at = time.time()
            await reader.readexactly(2)  # the CRLF after each chunk
            yield data, at
    remaining = int(headers["content-length"]) if "content-length" in headers else None
    while remaining is None or remaining > 0:
        data = await reader.read(65536 if remaining is None else min(remaining, 65536))
        if not data:
            return
        if remaining is not None:
            remaining -= len(data)
        yield data, time.time()


def _parse(raw: bytes, at: float) -> Event | None:
    event_id: int | None = None
    data: list[str] = []
    for line in raw.decode().split("\n"):
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif line.startswith("id:"):
            value = line[3:].strip()
            event_id = int(value) if value.isdigit() else None
    if not data:
        return None  # a comment (keep-alive ping)
    return Event(event_id, "\n".join(data), at)
