"""Keel: durable AI agents on Temporal.

The public API, a promise: `Agent` (keel/agent.py) and `tool`, `ToolContext`, `ToolError` (keel/tools.py)
define your agents in your own package, `MCPServer` (keel/mcp.py) gives them MCP servers' tools; KEEL_APP names it (keel/app.py). Everything else is Keel's own:
`keel.contracts` holds the types shared by workflows, activities and the gateway, `keel.settings` the
configuration. Nothing in `keel` imports `workflows`, `activities` or `api`.
"""

from keel.agent import Agent, Progress, RunContext, StopWhen
from keel.contracts import ClientTool
from keel.mcp import MCPServer
from keel.tools import Tool, ToolContext, ToolError, tool

__all__ = [
    "Agent",
    "ClientTool",
    "MCPServer",
    "Progress",
    "RunContext",
    "StopWhen",
    "Tool",
    "ToolContext",
    "ToolError",
    "tool",
]
