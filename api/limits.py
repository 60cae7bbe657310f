"""Input limits: request bodies over KEEL_MAX_BODY_BYTES are refused (413) before anything parses them,
run starts are rate-limited per user (KEEL_RATE_LIMIT per minute, 429 with Retry-After), and a body that
fails validation is a 422 that can always be sent back, whatever it held (the limits on the bodies
themselves are in api/chat_request.py).

The rate limit is a token bucket per user in each gateway process: a user may start KEEL_RATE_LIMIT runs
at once, then one more each 60/KEEL_RATE_LIMIT seconds. Behind several gateways each keeps its own buckets.
"""

import json
import math
import time
from collections.abc import Callable
from typing import Any

import asyncpg
from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import User
from api.chat_request import MAX_BODY_DEPTH, printable
from keel.settings import Settings


class BodyLimit:
    """ASGI middleware: 413 for a body larger than `max_bytes`, by its Content-Length or while it streams.

    A streamed body that grows too large is answered with 413 at once; the app then sees the client go
    away, and whatever it still sends is dropped.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    too_large = int(value) > self.max_bytes
                except ValueError:
                    too_large = False
                if too_large:
                    await self._refuse(send)
                    return
        received = 0
        started = refused = False

        async def limited_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes and not started:
                    refused = True
                    await self._refuse(send)
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except Exception:
            if not refused:
                raise

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"detail": f"request body larger than {self.max_bytes} bytes"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class RateLimiter:
    """A token bucket per key: `per_minute` tokens of burst, refilled at `per_minute` a minute."""

    def __init__(self, per_minute: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = max(1.0, per_minute)
        self.rate = per_minute / 60.0
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> float:
        """0 when allowed (a token is spent), else the seconds until one is available."""
        now = self.clock()
        tokens, then = self._buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - then) * self.rate)
        if tokens >= 1:
            self._buckets[key] = (tokens - 1, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > 100_000:  # forget full buckets rather than grow without end
            self._buckets = {k: v for k, v in self._buckets.items() if v[0] < self.capacity}
        return (1 - tokens) / self.rate


_limiters: dict[float, RateLimiter] = {}


def check_run_start(settings: Settings, user: User) -> None:
    """429 with Retry-After when the user started too many runs (KEEL_RATE_LIMIT=0: unlimited)."""
    limit = settings.rate_limit
    check_rate(_limiters, limit, user, f"too many runs started: at most {limit:g} a minute")


def check_rate(limiters: dict[float, RateLimiter], per_minute: float, user: User, too_many: str) -> None:
    """429 with Retry-After, saying `too_many`, when the user is past `per_minute` (the limiter for each rate
    kept in `limiters`). Unlimited under KEEL_AUTH=none (loopback, one local user) and with a limit of 0."""
    if per_minute <= 0 or user.id is None:
        return
    wait = limiters.setdefault(per_minute, RateLimiter(per_minute)).take(user.id)
    if wait > 0:
        seconds = max(1, math.ceil(wait))
        raise HTTPException(
            429, f"{too_many}; try again in {seconds} s", headers={"Retry-After": str(seconds)}
        )


async def invalid_request(request: Request, err: Exception) -> JSONResponse:
    """FastAPI's 422 (`detail`: each error's `loc`, `msg` and `input`), made safe to send. The input echoed
    back may hold what JSON can't carry, NaN or a lone surrogate, which made the default handler's answer a
    500; here such values are shown as text, and inputs nested too deep to show are cut short."""
    assert isinstance(err, RequestValidationError)
    return JSONResponse({"detail": sendable(jsonable_encoder(err.errors()))}, status_code=422)


def sendable(value: Any, depth: int = 0) -> Any:
    """`value` with non-finite numbers and lone surrogates as text, and nothing below MAX_BODY_DEPTH levels."""
    if isinstance(value, str):
        return printable(value, limit=10_000)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if depth >= MAX_BODY_DEPTH and isinstance(value, dict | list):
        return "…"
    if isinstance(value, dict):
        return {printable(str(k)): sendable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [sendable(v, depth + 1) for v in value]
    return value


async def unstorable_value(request: Request, err: Exception) -> JSONResponse:
    """A parameter PostgreSQL can't take (a NUL character, say) is the caller's mistake: 400, not 500."""
    return JSONResponse({"detail": f"a value can't be used: {type(err).__name__}"}, status_code=400)


def install(app: FastAPI, settings: Settings) -> None:
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)  # 413 before anything parses a body
    app.add_exception_handler(asyncpg.DataError, unstorable_value)
    app.add_exception_handler(RequestValidationError, invalid_request)
    document_errors(app)


_ERRORS = {
    "400": "The request can't be served as it is (the message says why)",
    "401": "Missing, invalid or expired credentials",
    "404": "No such run or chat, or not yours",
    "409": "The run is not in a state that allows this",
    "413": "Request body too large",
    "429": "Too many requests (run starts, telemetry); see Retry-After",
    "503": "Temporal or PostgreSQL is unavailable",
}
# Routes whose 200 is a UI message stream (SSE), not JSON.
_STREAMS = {"/api/chat", "/api/runs/{agent_run_id}/events", "/api/chat/{chat_id}/stream"}
_ERROR_SCHEMA = {
    "type": "object",
    "properties": {"detail": {}},
    "required": ["detail"],
}


def document_errors(app: FastAPI) -> None:
    """Add the error answers every API route can give to the OpenAPI schema (FastAPI lists only 422)."""
    plain_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = plain_openapi()
        for path, operations in schema.get("paths", {}).items():
            if not path.startswith("/api/"):
                continue
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                if path in _STREAMS and "200" in responses:
                    responses["200"]["content"] = {"text/event-stream": {"schema": {"type": "string"}}}
                for status, description in _ERRORS.items():
                    responses.setdefault(
                        status,
                        {
                            "description": description,
                            "content": {"application/json": {"schema": _ERROR_SCHEMA}},
                        },
                    )
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
