"""The last listing of each MCP server's tools (table `mcp_listings`): written by the workers when they list a
server, read by `GET /api/purposes`. A run's own listing is its snapshot in history; this is for people."""

from typing import Any

import asyncpg

from keel.contracts import MCPToolSpec


async def record_listing(
    pool: asyncpg.Pool, server: str, transport: str, tools: list[MCPToolSpec] | None, error: str | None
) -> None:
    """A listing of `server`: its tools, or (tools None) why it failed, which keeps the tools listed before."""
    if tools is None:
        await pool.execute(
            "INSERT INTO mcp_listings (server, transport, error) VALUES ($1, $2, $3)"
            " ON CONFLICT (server) DO UPDATE SET error = $3, transport = $2, listed_at = now()",
            server,
            transport,
            error,
        )
        return
    await pool.execute(
        "INSERT INTO mcp_listings (server, transport, tools, error) VALUES ($1, $2, $3, NULL)"
        " ON CONFLICT (server) DO UPDATE SET tools = $3, transport = $2, error = NULL, listed_at = now()",
        server,
        transport,
        [_shown(t) for t in tools],
    )


def _shown(tool: MCPToolSpec) -> dict[str, Any]:
    return {
        "name": tool.name,
        "tool": tool.tool,
        "description": tool.description,
        "needs_approval": tool.needs_approval,
    }


async def last_listings(pool: asyncpg.Pool, servers: list[str]) -> dict[str, dict[str, Any]]:
    """Each server's last listing: {"tools": [...], "error": ..., "listed_at": ...}; absent when never listed."""
    rows = await pool.fetch(
        "SELECT server, tools, error, listed_at FROM mcp_listings WHERE server = ANY($1::text[])", servers
    )
    return {
        r["server"]: {"tools": r["tools"], "error": r["error"], "listed_at": r["listed_at"].isoformat()}
        for r in rows
    }
