"""The worker's side of its app's MCP servers (keel/mcp.py): one supervised connection per server, their tools
listed (cached for the server's TTL) and called, and what a call returns made into a tool result.

A connection is held open by a task of its own for as long as the worker lives, because the `mcp` client's
transports must be entered and left by one task. A stdio server is therefore started once per worker; when
it dies (or an HTTP server stops answering) the call that saw it fails as `MCPTransportFailure`, which
Temporal retries, and the next call starts a fresh process (or session). `close()`, called when the worker
stops, ends every connection; the `mcp` SDK stops a stdio server's whole process tree, so none outlives it.
"""

import asyncio
import contextlib
import contextvars
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, cast

import anyio
import httpx2
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError
from mcp.types import (
    CONNECTION_CLOSED,
    REQUEST_TIMEOUT,
    AudioContent,
    BlobResourceContents,
    CallToolResult,
    EmbeddedResource,
    ImageContent,
    RequestParamsMeta,
    ResourceLink,
    TextContent,
    TextResourceContents,
)

from keel.contracts import MCPToolSpec
from keel.mcp import MCPServer, expand_env, mcp_tool_name
from keel.tools import ToolError

log = logging.getLogger("keel.mcp")

# How long a server may take to start and complete its handshake.
CONNECT_TIMEOUT_S = 30.0
# How long closing a connection may take (the SDK gives a stdio server 2 s, then kills its process tree).
CLOSE_TIMEOUT_S = 10.0
# Where a call's idempotency key travels: the request's `_meta`, under Keel's own prefix.
IDEMPOTENCY_META_KEY = "keel/idempotency-key"

# What a transport raises once its stream is gone (a stdio server that died, say).
_CLOSED = (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream)
# Called with each fresh listing of a server (tools), or why it failed (tools None, error).
OnListed = Callable[[MCPServer, list[MCPToolSpec] | None, str | None], Awaitable[None]]
# Called with each progress notification of a call: progress, total, message.
OnProgress = ProgressFnT


class MCPTransportFailure(Exception):
    """The server could not be reached, or its connection broke mid-call: retried (on a fresh connection)."""


class ServerConnection:
    """One MCP server's connection in this worker: opened on first use, reopened after it broke."""

    def __init__(self, server: MCPServer) -> None:
        self.server = server
        self._client: Client | None = None
        self._holder: asyncio.Task[None] | None = None
        self._release = asyncio.Event()
        self._opening = asyncio.Lock()
        # How many processes (or sessions) this worker has started for the server: for logs and tests.
        self.started = 0

    async def client(self) -> Client:
        """The open connection, opened (again) if there is none."""
        async with self._opening:
            if self._client is None or self._holder is None or self._holder.done():
                await self._open()
            assert self._client is not None
            return self._client

    async def _open(self) -> None:
        ready: asyncio.Future[Client] = asyncio.get_running_loop().create_future()
        self._release = asyncio.Event()
        # A context of its own: the holder outlives the activity that opened it and must not log as it.
        self._holder = asyncio.create_task(
            self._hold(ready, self._release), context=contextvars.Context(), name=f"mcp-{self.server.name}"
        )
        try:
            self._client = await asyncio.wait_for(asyncio.shield(ready), CONNECT_TIMEOUT_S)
        except Exception as err:
            await self._stop_holder()
            raise MCPTransportFailure(
                f"MCP server {self.server.name!r} could not be started: {_why(err)}"
            ) from None
        self.started += 1
        log.info("MCP server %s connected (%s)", self.server.name, self.server.transport)

    async def _hold(self, ready: "asyncio.Future[Client]", release: asyncio.Event) -> None:
        try:
            async with _transport_client(self.server) as client:
                ready.set_result(client)
                await release.wait()
        except BaseException as err:
            if not ready.done():
                ready.set_exception(err if isinstance(err, Exception) else MCPTransportFailure(str(err)))
            elif not isinstance(err, asyncio.CancelledError):
                log.warning("MCP server %s: its connection ended: %s", self.server.name, _why(err))

    async def broke(self, client: Client) -> None:
        """A call on `client` found the connection broken: close it, so the next call opens a fresh one."""
        async with self._opening:
            if self._client is client:
                log.warning("MCP server %s: connection lost; the next call reconnects", self.server.name)
                await self._stop_holder()

    async def close(self) -> None:
        async with self._opening:
            await self._stop_holder()

    async def _stop_holder(self) -> None:
        self._client = None
        self._release.set()
        holder, self._holder = self._holder, None
        if holder is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(holder), CLOSE_TIMEOUT_S)
        except (TimeoutError, Exception):
            holder.cancel()
            with contextlib.suppress(BaseException):
                await holder


@contextlib.asynccontextmanager
async def _transport_client(server: MCPServer) -> AsyncIterator[Client]:
    """An open `mcp` client of the server; `${VAR}`s are read from the environment here, and only here."""
    if server.transport == "stdio":
        parameters = StdioServerParameters(
            command=server.command,
            args=list(server.args),
            env={name: expand_env(value) for name, value in server.env.items()},
        )
        async with Client(parameters, read_timeout_seconds=server.call_timeout_s) as client:
            yield client
        return
    headers = {name: expand_env(value) for name, value in server.headers.items()}
    timeout = httpx2.Timeout(30.0, read=server.call_timeout_s)
    async with httpx2.AsyncClient(headers=headers, timeout=timeout) as http:
        transport = streamable_http_client(expand_env(server.url), http_client=http)
        async with Client(transport, read_timeout_seconds=server.call_timeout_s) as client:
            yield client


class MCPClients:
    """Every MCP server of the worker's app: their listings (cached per server for its `list_ttl_s`) and calls."""

    def __init__(self, servers: Mapping[str, MCPServer], on_listed: OnListed | None = None) -> None:
        self._connections = {name: ServerConnection(server) for name, server in servers.items()}
        self._listings: dict[str, tuple[float, list[MCPToolSpec]]] = {}
        self._on_listed = on_listed

    def connection(self, name: str) -> ServerConnection:
        try:
            return self._connections[name]
        except KeyError:
            raise ToolError(f"this deployment has no MCP server named {name!r}") from None

    async def list_tools(self, name: str) -> list[MCPToolSpec]:
        """The server's tools, as this worker last listed them within the server's TTL, else listed now."""
        connection = self.connection(name)
        cached = self._listings.get(name)
        if cached is not None and time.monotonic() - cached[0] < connection.server.list_ttl_s:
            return cached[1]
        try:
            tools = await self._list_now(connection)
        except Exception as err:
            if self._on_listed is not None:
                await self._on_listed(connection.server, None, _why(err))
            raise
        self._listings[name] = (time.monotonic(), tools)
        if self._on_listed is not None:
            await self._on_listed(connection.server, tools, None)
        return tools

    async def _list_now(self, connection: ServerConnection) -> list[MCPToolSpec]:
        server = connection.server
        client = await connection.client()
        tools: list[MCPToolSpec] = []
        cursor: str | None = None
        try:
            while True:
                page = await client.list_tools(cursor=cursor, cache_mode="refresh")
                tools += [_spec(server, tool) for tool in page.tools]
                cursor = page.next_cursor
                if cursor is None:
                    return tools
        except MCPError as err:
            if err.code in (CONNECTION_CLOSED, REQUEST_TIMEOUT):
                await connection.broke(client)
            raise MCPTransportFailure(f"MCP server {server.name!r} could not list its tools: {err}") from None
        except Exception as err:
            await connection.broke(client)
            raise MCPTransportFailure(
                f"MCP server {server.name!r} could not list its tools: {_why(err)}"
            ) from None

    async def call(
        self,
        spec: MCPToolSpec,
        arguments: dict[str, Any],
        *,
        idempotency_key: str,
        on_progress: OnProgress | None = None,
    ) -> CallToolResult:
        """Call the tool. An error the server answers with (MCPError) is a ToolError, which the model hears;
        a broken connection is MCPTransportFailure, retried on a fresh one. An `isError` result is returned."""
        connection = self.connection(spec.server)
        client = await connection.client()
        try:
            return await client.call_tool(
                spec.tool,
                arguments,
                read_timeout_seconds=connection.server.call_timeout_s,
                progress_callback=on_progress,
                meta=cast(RequestParamsMeta, {IDEMPOTENCY_META_KEY: idempotency_key}),
            )
        except MCPError as err:
            if err.code not in (CONNECTION_CLOSED, REQUEST_TIMEOUT):
                raise ToolError(f"{spec.name}: the MCP server answered with an error: {err}") from None
            await connection.broke(client)
            raise MCPTransportFailure(f"MCP server {spec.server!r}: {err}") from None
        except (OSError, httpx2.HTTPError, *_CLOSED) as err:
            await connection.broke(client)
            raise MCPTransportFailure(f"MCP server {spec.server!r}: {_why(err)}") from None

    async def close(self) -> None:
        """Close every connection (the worker is stopping): stdio servers stop, HTTP sessions end."""
        await asyncio.gather(*(c.close() for c in self._connections.values()))


def _spec(server: MCPServer, tool: Any) -> MCPToolSpec:
    annotations = tool.annotations
    schema = {k: v for k, v in dict(tool.input_schema or {}).items() if k != "$schema"}
    schema.setdefault("type", "object")
    return MCPToolSpec(
        name=mcp_tool_name(server.name, tool.name),
        description=tool.description or tool.title or tool.name,
        parameters=schema,
        server=server.name,
        tool=tool.name,
        needs_approval=server.needs_approval(
            tool.name,
            read_only=annotations.read_only_hint if annotations else None,
            destructive=annotations.destructive_hint if annotations else None,
        ),
        heavy=server.heavy,
    )


def result_value(result: CallToolResult) -> Any:
    """What a call returned, as the tool result the model reads: the text when it is only text, the
    structured content when it is only that (its text rendition aside), else an object with the text, the
    structured content, images and audio (base64) and resources."""
    texts: list[str] = []
    media: list[dict[str, Any]] = []
    resources: list[dict[str, Any]] = []
    for part in result.content:
        if isinstance(part, TextContent):
            texts.append(part.text)
        elif isinstance(part, ImageContent | AudioContent):
            media.append({"type": part.type, "mimeType": part.mime_type, "data": part.data})
        elif isinstance(part, EmbeddedResource):
            resources.append(_resource(part.resource))
        elif isinstance(part, ResourceLink):
            resources.append({"uri": str(part.uri), "name": part.name, "mimeType": part.mime_type})
    text = "\n".join(texts)
    structured = result.structured_content
    if structured is not None and _json_of(text) == structured:
        text = ""  # the text is only the structured content written out (as MCP asks servers to do)
    if structured is None and not media and not resources:
        return text
    if not text and not media and not resources:
        return structured
    value: dict[str, Any] = {"text": text} if text else {}
    if structured is not None:
        value["structuredContent"] = structured
    if media:
        value["media"] = media
    if resources:
        value["resources"] = resources
    return value


def _resource(contents: TextResourceContents | BlobResourceContents) -> dict[str, Any]:
    shown: dict[str, Any] = {"uri": str(contents.uri), "mimeType": contents.mime_type}
    if isinstance(contents, TextResourceContents):
        shown["text"] = contents.text
    else:
        shown["blob"] = contents.blob
    return shown


def _json_of(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def result_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def _why(err: BaseException) -> str:
    # An ExceptionGroup from anyio's task groups says little; its first leaf says what happened.
    while isinstance(err, BaseExceptionGroup) and err.exceptions:
        err = err.exceptions[0]
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
