"""MCP servers of the tests' own, written with the `mcp` SDK."""
