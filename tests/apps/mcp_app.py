"""An app whose agents take tools from MCP servers, written with nothing but Keel's public API: the reference
server-everything over stdio and over streamable HTTP, and the tests' own notes server (tests/mcp_servers/).

`${EVERYTHING_HTTP_PORT}`, `${EVERYTHING_TOKEN}` and `${NOTES_MARKER}` are read from the worker's environment when it connects.
"""

import sys
from pathlib import Path

from keel import Agent, tool
from keel.mcp import MCPServer

ROOT = Path(__file__).resolve().parents[2]
EVERYTHING = ROOT / "tests/node/node_modules/@modelcontextprotocol/server-everything/dist/index.js"

everything = MCPServer.stdio("everything", "node", args=[str(EVERYTHING), "stdio"])
everything_http = MCPServer.http(
    "everything-http",
    "http://127.0.0.1:${EVERYTHING_HTTP_PORT}/mcp",
    headers={"Authorization": "Bearer ${EVERYTHING_TOKEN}"},
)
notes = MCPServer.stdio(
    "notes",
    sys.executable,
    args=[str(ROOT / "tests/mcp_servers/notes.py")],
    env={"NOTES_MARKER": "${NOTES_MARKER}"},
    approve={"touch_note": "never"},
)


@tool(triggers=("weather",))
def weather(city: str) -> str:
    """Today's weather in a city."""
    return f"sunny in {city}"


helper = Agent(name="mcp-helper", instructions="You use MCP tools.", tools=[weather], mcp=[everything, notes])
web = Agent(name="mcp-web", instructions="You use MCP tools over HTTP.", mcp=[everything_http])
plain = Agent(name="plain", instructions="No MCP here.", tools=[weather])
