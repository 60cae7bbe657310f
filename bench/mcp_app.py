"""The app of the MCP bench section (bench/mcp_tools.py): one agent with the reference server-everything over
stdio, and an inline tool of its own that does what server-everything's `echo` does."""

from pathlib import Path

from keel import Agent, tool
from keel.mcp import MCPServer

EVERYTHING = Path(__file__).resolve().parent.parent / (
    "tests/node/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
)

everything = MCPServer.stdio("everything", "node", args=[str(EVERYTHING), "stdio"])


@tool
def echo_locally(message: str) -> str:
    """Echoes back the input string (an agent's own inline tool)."""
    return f"Echo: {message}"


bench_mcp = Agent(
    name="bench-mcp", instructions="You are a benchmark.", tools=[echo_locally], mcp=[everything]
)
