"""A small MCP server over stdio, with the `mcp` SDK, for what server-everything can't show: tools annotated
every way approval cares about, the `_meta` a call arrives with, and a server that dies mid-call.

    python tests/mcp_servers/notes.py       (NOTES_MARKER: a file path, for `fragile`)
"""

import os
import signal
from pathlib import Path

from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.types import ToolAnnotations

server = MCPServer("notes")


@server.tool(annotations=ToolAnnotations(readOnlyHint=True), structured_output=False)
def read_note(name: str) -> str:
    """Read a note (read-only: runs without asking)."""
    return f"note {name}: buy milk"


@server.tool(annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=True), structured_output=False)
def delete_note(name: str) -> str:
    """Delete a note (destructive: asks a person)."""
    return f"deleted {name}"


@server.tool(structured_output=False)
def archive_note(name: str) -> str:
    """Archive a note (no annotations: asks a person, as MCP's defaults say it may change things)."""
    return f"archived {name}"


@server.tool(structured_output=False)
def touch_note(name: str) -> str:
    """Touch a note (no annotations, but the app's override says it never asks)."""
    return f"touched {name}"


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def whoami(ctx: Context) -> dict[str, object]:
    """The `_meta` this call arrived with."""
    meta = ctx.request_context.meta or {}
    return {"idempotency_key": dict(meta).get("keel/idempotency-key"), "pid": os.getpid()}


@server.tool(annotations=ToolAnnotations(readOnlyHint=True), structured_output=False)
def fragile(name: str) -> str:
    """Dies (SIGKILL) in the middle of its first call ever, then works: the marker file remembers."""
    marker = Path(os.environ["NOTES_MARKER"])
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return f"survived on pid {os.getpid()}; the first process was pid {marker.read_text()}"


if __name__ == "__main__":
    server.run("stdio")
