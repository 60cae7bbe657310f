"""Handoffs (`Agent(handoffs=[...])`): a `transfer_to_<agent>` call gives the conversation to another agent,
and the same run goes on as that agent, with its instructions, tools and limits.

The call is accepted while its step's tool calls run (one handoff per step: the first wins, the model hears
why any other was refused), and the run switches agent after them: a system message carrying the new
agent's instructions is stored after every tool result of the step (providers want a call's results right
after the call), and `run.purpose`, which every collaborator reads, becomes the new agent's snapshot from
the run's map (`PurposeSpec.handoff_agents`). Runs without a handoff issue no command from here.
"""

from dataclasses import dataclass

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from keel.contracts import (
        HANDOFF_TOOL_PREFIX,
        SAVE_HANDOFF,
        AgentRunInput,
        HandedOff,
        HandoffInput,
        HandoffSaved,
        PurposeSpec,
        ToolCall,
    )
    from workflows.activity_options import SAVE_MESSAGE_OPTIONS
    from workflows.activity_runner import ActivityRunner
    from workflows.ledger import RunLedger
    from workflows.mcp_tools import MCPToolbox
    from workflows.reporting import RunReporter
    from workflows.sub_agents import Refused


@dataclass(frozen=True)
class Accepted:
    """A handoff accepted during a step, carried out once the step's tool calls are done."""

    step: int
    call: ToolCall
    to_agent: str


class Handoffs:
    """Accepts the run's handoff calls and switches the run's agent."""

    def __init__(
        self,
        run: AgentRunInput,
        ledger: RunLedger,
        reporter: RunReporter,
        activities: ActivityRunner,
        mcp: MCPToolbox,
    ) -> None:
        self._run = run
        self._ledger = ledger
        self._reporter = reporter
        self._activities = activities
        self._mcp = mcp
        self.pending: Accepted | None = None

    def accept(self, step: int, call: ToolCall) -> Accepted | Refused:
        """The handoff this call asks for, or why it is refused; at most one per step."""
        purpose = self._run.purpose
        target = call.name.removeprefix(HANDOFF_TOOL_PREFIX)
        if target not in purpose.handoffs or target not in purpose.handoff_agents:
            return Refused(
                f"{call.name} was not run: {purpose.slug} may not hand the conversation to {target}"
            )
        if self.pending is not None:
            return Refused(
                f"{call.name} was not run: the conversation was already handed to {self.pending.to_agent}"
                " in this step (one handoff per step)"
            )
        self.pending = Accepted(step, call, target)
        return self.pending

    def result_text(self, accepted: Accepted) -> str:
        """The accepted call's result, which the model (and whoever reads the conversation) sees."""
        return f"{self._run.purpose.slug} handed the conversation to {accepted.to_agent}"

    async def switch(self) -> PurposeSpec | None:
        """After the step's tool calls: the accepted handoff, carried out; the new agent's snapshot, or None
        when no handoff was accepted (no command at all)."""
        accepted, self.pending = self.pending, None
        if accepted is None:
            return None
        from_agent = self._run.purpose.slug
        target = self._run.purpose.handoff_agents[accepted.to_agent]
        await self._activities.execute(
            SAVE_HANDOFF,
            HandoffInput(
                agent_run_id=self._run.agent_run_id,
                seq=self._ledger.take_seq(),
                from_agent=from_agent,
                to_agent=accepted.to_agent,
                instructions=target.instructions,
            ),
            HandoffSaved,
            summary=f"hand over from {from_agent} to {accepted.to_agent}",
            options=SAVE_MESSAGE_OPTIONS,
            failure=f"could not hand the conversation to {accepted.to_agent}",
        )
        # The run's one map goes on with it, so the new agent may hand over in turn (cycles included).
        self._run.purpose = target.purpose.model_copy(
            update={"handoff_agents": self._run.purpose.handoff_agents}
        )
        self._reporter.emit(
            HandedOff,
            step=accepted.step,
            tool_call_id=accepted.call.id,
            from_agent=from_agent,
            to_agent=accepted.to_agent,
            to_title=target.purpose.title or None,
        )
        await self._list_mcp_tools()
        return self._run.purpose

    async def _list_mcp_tools(self) -> None:
        """The new agent's MCP tools replace the old one's: listed now, as a run lists them when it starts."""
        self._mcp.tools = None
        if self._mcp.must_list:
            await self._mcp.list(self._activities)
