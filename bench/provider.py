"""A local model provider that streams at a fixed rate, speaking OpenAI's Chat Completions wire format.

    python -m bench.provider --port 8123

The worker reaches it through a `local:bench` route with KEEL_LOCAL_BASE_URL=http://127.0.0.1:8123/v1.
The latest user message says how to answer, so one route serves every rate:

    rate=<tokens per second> n=<tokens> ttft=<ms before the first token> [gate=<name>]

With `gate=<name>` the clock (ttft, then the tokens) starts only once `POST /gate/<name>` is called, so a
benchmark can connect its viewers before any token exists.

Every token is its own send time: `@<unix seconds with microseconds> `, taken right before the chunk is
written. A client subtracts it from the time it reads the token (same machine, same clock) for the token's
lag, whether it reads the provider directly or through Keel, and however Keel batched the tokens.
It runs in its own process so that the benchmark client's load can't delay its schedule.

With `--rpm N` it is a rate-limited provider (bench/rate_limits.py): at most N requests in any `--window`
seconds (60 by default, a rolling window), and HTTP 429 past it, with `retry-after` saying when the oldest
request leaves the window. `GET /stats` counts the requests it answered and refused, and how far apart the
first and the last one it answered arrived (`times`: each one's arrival, from the first).
"""

import argparse
import asyncio
import json
import math
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

STAMP = re.compile(r"@(\d+\.\d+) ")
_ASK = re.compile(r"\b(rate|n|ttft|gate)=([\w.-]+)")


def stamps(text: str) -> list[float]:
    """The send times of the tokens in a piece of streamed text."""
    return [float(s) for s in STAMP.findall(text)]


def ask(rate: float, n: int, ttft_ms: float, gate: str | None = None) -> str:
    """The user message that asks this provider for such an answer."""
    text = f"rate={rate:g} n={n} ttft={ttft_ms:g}"
    return f"{text} gate={gate}" if gate else text


_gates: dict[str, asyncio.Event] = {}


class RateLimit:
    """At most `rpm` requests in any `window` seconds; None for an unlimited provider."""

    def __init__(self, rpm: int | None, window: float) -> None:
        self.rpm, self.window = rpm, window
        self.accepted: list[float] = []
        self.served = 0
        self.refused = 0
        # When the first and the last request it answered arrived (monotonic seconds).
        self.first: float | None = None
        self.last: float | None = None
        self.times: list[float] = []

    def wait(self) -> float | None:
        """None if this request fits (it is counted), otherwise seconds until a slot frees."""
        now = time.monotonic()
        if self.rpm is not None:
            self.accepted = [t for t in self.accepted if t > now - self.window]
            if len(self.accepted) >= self.rpm:
                self.refused += 1
                return self.accepted[0] + self.window - now
            self.accepted.append(now)
        self.served += 1
        self.first = self.first if self.first is not None else now
        self.last = now
        self.times.append(now - self.first)
        return None


_limit = RateLimit(None, 60.0)


def _gate(name: str) -> asyncio.Event:
    return _gates.setdefault(name, asyncio.Event())


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


async def _answer(model: str, rate: float, n: int, ttft: float, gate: str | None) -> AsyncIterator[bytes]:
    if gate:
        await _gate(gate).wait()
    start = time.monotonic() + ttft
    for i in range(n):
        # Anchored to the schedule, not to the previous send: a late token doesn't push the rest back.
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        token = f"@{time.time():.6f} "
        delta = {"role": "assistant", "content": token} if i == 0 else {"content": token}
        yield _chunk(model, delta)
    yield _chunk(model, {}, "stop")
    usage = {"prompt_tokens": 10, "completion_tokens": n, "total_tokens": 10 + n}
    tail = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "model": model, "choices": []}
    yield b"data: " + json.dumps({**tail, "usage": usage}).encode() + b"\n\ndata: [DONE]\n\n"


def _too_many(wait: float) -> Response:
    """OpenAI's 429, with the wait in retry-after (whole seconds, rounded up) and retry-after-ms."""
    error = {"message": f"Rate limit reached. Try again in {wait:.1f}s.", "type": "requests", "code": None}
    headers = {"retry-after": str(max(1, math.ceil(wait))), "retry-after-ms": str(max(1, round(wait * 1000)))}
    return JSONResponse({"error": error}, status_code=429, headers=headers)


async def completions(request: Request) -> Response:
    if (wait := _limit.wait()) is not None:
        return _too_many(wait)
    body = await request.json()
    user = [m for m in body.get("messages", []) if m.get("role") == "user"]
    content = user[-1].get("content", "") if user else ""
    if isinstance(content, list):  # content parts
        content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    params = dict(_ASK.findall(content))
    rate, n = float(params.get("rate", 50)), int(params.get("n", 20))
    ttft = float(params.get("ttft", 100)) / 1000
    stream = _answer(str(body.get("model", "bench")), rate, n, ttft, params.get("gate"))
    return StreamingResponse(stream, media_type="text/event-stream", headers={"x-request-id": "req_bench"})


async def open_gate(request: Request) -> Response:
    _gate(request.path_params["name"]).set()
    return JSONResponse({"opened": request.path_params["name"]})


async def stats(request: Request) -> Response:
    span = (_limit.last or 0.0) - (_limit.first or 0.0)
    return JSONResponse(
        {"served": _limit.served, "refused": _limit.refused, "span_s": span, "times": _limit.times}
    )


app = Starlette(
    routes=[
        Route("/v1/chat/completions", completions, methods=["POST"]),
        Route("/gate/{name}", open_gate, methods=["POST"]),
        Route("/stats", stats, methods=["GET"]),
    ]
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rpm", type=int, default=None, help="requests allowed per window (default: any)")
    parser.add_argument("--window", type=float, default=60.0, help="the rolling window, seconds")
    args = parser.parse_args()
    _limit.rpm, _limit.window = args.rpm, args.window
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
