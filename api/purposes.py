"""`GET /api/purposes`: the agents this gateway serves (KEEL_APP), which a request names as its `purpose`.
The chat page's purpose picker reads it. An agent with MCP servers also shows each server and its tools as a
worker last listed them (keel/storage/mcp_listings.py)."""

from typing import Any

from fastapi import APIRouter

from api.gateway import GatewayDep
from keel.agent import Agent
from keel.storage.mcp_listings import last_listings

router = APIRouter()


@router.get("/api/purposes", summary="The agents a run can be started with (a request's `purpose`)")
async def purposes(gw: GatewayDep) -> list[dict[str, Any]]:
    servers = sorted(gw.app.mcp_servers)
    listings = await last_listings(gw.store.pool, servers) if servers else {}
    return [_purpose(agent, listings) for agent in gw.app.agents.values()]


def _purpose(agent: Agent, listings: dict[str, dict[str, Any]]) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "slug": agent.name,
        "title": agent.title or agent.name,
        "tools": [t.name for t in agent.tools],
        "step_limit": agent.max_steps,
    }
    if agent.mcp:
        # Never the server's command, url, env or headers: they may hold what a secret expands to.
        shown["mcp"] = [
            {
                "server": server.name,
                "transport": server.transport,
                "tools": listings.get(server.name, {}).get("tools", []),
                "error": listings.get(server.name, {}).get("error"),
                "listed_at": listings.get(server.name, {}).get("listed_at"),
            }
            for server in agent.mcp
        ]
    return shown
