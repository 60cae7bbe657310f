"""`GET /api/purposes`: the agents this gateway serves (KEEL_APP), which a request names as its `purpose`.
The chat page's purpose picker reads it."""

from typing import Any

from fastapi import APIRouter

from api.gateway import GatewayDep

router = APIRouter()


@router.get("/api/purposes", summary="The agents a run can be started with (a request's `purpose`)")
async def purposes(gw: GatewayDep) -> list[dict[str, Any]]:
    return [
        {
            "slug": a.name,
            "title": a.title or a.name,
            "tools": [t.name for t in a.tools],
            "step_limit": a.max_steps,
        }
        for a in gw.app.agents.values()
    ]
