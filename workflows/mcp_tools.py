"""The run's MCP tools: listed once, by the `list_mcp_tools` activity, when a run of an agent with MCP servers
starts, and kept as that snapshot for the rest of the run (carried over continue-as-new), so a server whose
tools change later never changes a live run: a tool that vanished answers the model with the server's error.

Runs of agents without MCP servers never list: their histories are what they were before MCP.
"""

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from keel.contracts import LIST_MCP_TOOLS, AgentRunInput, MCPListing, MCPListingInput, MCPToolSpec
    from workflows.activity_options import LIST_MCP_TOOLS_OPTIONS
    from workflows.activity_runner import ActivityRunner


class MCPToolbox:
    """The MCP tools of one run, by their Keel names (None until listed; empty for agents without servers)."""

    def __init__(self, run: AgentRunInput) -> None:
        self._run = run
        carried = run.carried.mcp_tools if run.carried is not None else None
        self.tools: list[MCPToolSpec] | None = carried

    @property
    def must_list(self) -> bool:
        return bool(self._run.purpose.mcp_servers) and self.tools is None

    async def list(self, activities: ActivityRunner) -> None:
        listing = await activities.execute(
            LIST_MCP_TOOLS,
            MCPListingInput(
                agent_run_id=self._run.agent_run_id,
                purpose=self._run.purpose.slug,
                servers=self._run.purpose.mcp_servers,
            ),
            MCPListing,
            summary=f"list MCP tools of {', '.join(self._run.purpose.mcp_servers)}",
            options=LIST_MCP_TOOLS_OPTIONS,
            failure="the agent's MCP servers could not be listed",
        )
        # A server that could not be listed is missing here; why is in the activity's result, in history.
        self.tools = listing.tools

    def spec(self, name: str) -> MCPToolSpec | None:
        return next((t for t in self.tools or () if t.name == name), None)
