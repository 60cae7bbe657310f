"""Agents, part of Keel's public API: what a run is started with, defined in your own package.

    from keel import Agent

    support = Agent(
        name="support",                    # the `purpose` a request names; in records and the Web UI
        instructions="You are ...",        # or a function of the run's RunContext that returns them
        model="openai:gpt-4o-mini",        # a route or a fallback chain; None: KEEL_MODEL
        tools=[lookup_order, refund],
        mcp=[MCPServer.stdio("files", "mcp-server-files")],   # optional: MCP servers' tools too (keel/mcp.py)
        handoffs=[billing, "triage"],      # optional: agents this one may hand the conversation to
        max_steps=8,
        output_type=RefundDecision,        # optional: the final answer is a validated RefundDecision
    )

Keel serves every module-level `Agent` of the app KEEL_APP names (keel/app.py). When a run starts, the
gateway takes a snapshot of its agent (`PurposeSpec`) into the workflow's input and stores the
instructions as the conversation's first message: a run keeps the agent it started with, whatever is
deployed later.
"""

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, Field

from keel.contracts import (
    ASK_USER_TOOL,
    HANDOFF_TOOL_PREFIX,
    Budgets,
    ClientTool,
    PurposeSpec,
    SubAgentSpec,
    ToolPolicy,
    Usage,
)
from keel.mcp import MCPServer
from keel.output import output_spec
from keel.tools import Tool

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
DEFAULT_STEP_LIMIT = 10
# A budget: tokens are counted in ints, cost and time in floats.
_Limit = TypeVar("_Limit", int, float)


@dataclass(frozen=True)
class RunContext:
    """What `instructions` may be a function of: the request that starts the run."""

    # The application context the request sent (`context` in POST /api/chat), or {}.
    context: dict[str, Any]
    user_id: str | None
    chat_id: str | None


@dataclass(frozen=True)
class Progress:
    """What a `stop_when` predicate reads after each step. Predicates run in a local activity of the agent
    worker and history keeps their verdict, so a run replays the same whatever a later deploy changes; a
    predicate should still decide from this alone, to stop runs the same way every time."""

    step: int
    usage: Usage
    elapsed_s: float
    # Whether the step just taken asked for tools (False: the model gave its final answer).
    asked_for_tools: bool
    # How many times each tool has run so far in the run.
    tool_calls: dict[str, int]
    # The question the model asked when the agent does not let runs wait for an answer.
    unanswerable_question: str | None = None


# A stop_when predicate: returns why the run stops (it then ends `completed` with that as its detail), or None.
StopWhen = Callable[[Progress], str | None]


@dataclass(frozen=True, kw_only=True)
class Agent:
    """An agent Keel can run. Every field but `name` and `instructions` has a default."""

    # The agent's name: the `purpose` a request names, in records, logs and the Web UI. [a-z0-9_-], ≤ 64.
    name: str
    # Its system prompt, or a function of the run's context that returns it (called when the run starts).
    instructions: str | Callable[[RunContext], str]
    # For people (the chat page's picker); the name when empty.
    title: str = ""
    # A model route (`openai:gpt-4o-mini`) or a fallback chain of them; None: KEEL_MODEL.
    model: str | None = None
    tools: Sequence[Tool] = ()
    # MCP servers whose tools the agent has too, named `<server>__<tool>` (keel/mcp.py); listed when a run
    # starts, and a run keeps that listing.
    mcp: Sequence[MCPServer] = ()
    # Tools the frontend runs itself, offered in every run of this agent (requests may add more).
    client_tools: Sequence[ClientTool] = ()
    max_steps: int = DEFAULT_STEP_LIMIT
    max_tokens: int | None = None
    max_cost_usd: float | None = None
    max_duration_s: float | None = None
    # How long a tool call waits for a person's approval (or the user's answer) before it counts as denied.
    approval_timeout_s: float = 3600
    # When the model asks the user something (ask_user): wait for the answer, or end the run as needs_input.
    allow_questions: bool = True
    # End the run once a tool has been called this many times (like the AI SDK's hasToolCall).
    stop_after_tool_calls: Mapping[str, int] = field(default_factory=dict)
    # Your own stop conditions, module-level functions checked after every step (see Progress and StopWhen).
    stop_when: Sequence[StopWhen] = ()
    # Structured output (keel/output.py): a pydantic model the final answer must be, validated; an answer
    # that fails goes back to the model with the errors, at most output_retries times, then the run fails.
    output_type: type[BaseModel] | None = None
    output_retries: int = 2
    # How deep delegation may go below a run of this agent: its sub-agents are one level down, theirs two.
    # A call deeper than that is refused, and the model hears why.
    max_depth: int = 3
    # Agents this one may hand the conversation to (the same run goes on as that agent): Agent objects, or
    # the names of other agents of the same app (names allow cycles: triage -> billing -> triage).
    handoffs: "Sequence[Agent | str]" = ()
    # What this agent is for, told to the models of agents that may hand over to it.
    handoff_description: str = ""

    def as_tool(
        self, *, description: str, name: str | None = None, triggers: tuple[str, ...] = ()
    ) -> "AgentTool":
        """This agent as a tool of another: `Agent(tools=[writer.as_tool(description=...)])`. A call runs
        this agent as a child run of the caller (its own id, history and records), with the model's `input`
        as its user message; its final answer is the tool's result. `name` defaults to the agent's name;
        `triggers` are words that make the offline scripted model call it."""
        return AgentTool(
            name=name or self.name,
            description=description,
            fn=_never_called,
            arguments=DelegatedTask,
            triggers=triggers,
            agent=self,
        )

    @property
    def budgets(self) -> Budgets:
        return Budgets(
            max_steps=self.max_steps,
            max_tokens=self.max_tokens,
            max_cost_usd=self.max_cost_usd,
            max_duration_s=self.max_duration_s,
        )

    def instructions_for(self, run: RunContext) -> str:
        return self.instructions(run) if callable(self.instructions) else self.instructions

    def spec(
        self,
        default_model: str,
        budgets: Budgets | None = None,
        stop_after_tool_calls: Mapping[str, int] | None = None,
        run: RunContext | None = None,
        *,
        agents: Mapping[str, "Agent"] | None = None,
    ) -> PurposeSpec:
        """The snapshot a run starts with. A request's `budgets` and `stop_after_tool_calls` may only lower
        the agent's own limits, never raise them. `run`, the request's context, gives the instructions of
        the agents this one calls as tools or hands over to (an empty context when None). `agents`, the
        app's agents by name (App.reachable), resolves handoffs given by name."""
        own = self._own_spec(default_model, budgets, stop_after_tool_calls, run, agents)
        if not self.handoffs:
            return own
        context = run or RunContext({}, None, None)
        reachable = handoff_reach(self, agents or {})
        return own.model_copy(
            update={
                "handoff_agents": {
                    name: SubAgentSpec(
                        purpose=own
                        if agent is self
                        else agent._own_spec(default_model, budgets, stop_after_tool_calls, run, agents),
                        instructions=agent.instructions_for(context),
                    )
                    for name, agent in reachable.items()
                }
            }
        )

    def _own_spec(
        self,
        default_model: str,
        budgets: Budgets | None,
        stop_after_tool_calls: Mapping[str, int] | None,
        run: RunContext | None,
        agents: Mapping[str, "Agent"] | None,
    ) -> PurposeSpec:
        """This agent's snapshot without the run's map of handoff agents."""
        targets = [handoff_name(entry) for entry in self.handoffs]
        return PurposeSpec(
            slug=self.name,
            model=self.model or default_model,
            # ask_user is built in: every agent can ask, and allow_questions decides what happens.
            tools=[*(t.name for t in self.tools), ASK_USER_TOOL, *(HANDOFF_TOOL_PREFIX + n for n in targets)],
            budgets=tighter(self.budgets, budgets) if budgets else self.budgets,
            approval_timeout_s=self.approval_timeout_s,
            allow_questions=self.allow_questions,
            stop_after_tool_calls=fewer_calls(self.stop_after_tool_calls, stop_after_tool_calls or {}),
            stop_when=[stop_when_name(p) for p in self.stop_when],
            output=None if self.output_type is None else output_spec(self.output_type, self.output_retries),
            mcp_servers=[server.name for server in self.mcp],
            sub_agents={
                t.name: t.sub_agent_spec(default_model, run or RunContext({}, None, None), agents)
                for t in self.tools
                if isinstance(t, AgentTool)
            },
            max_depth=self.max_depth,
            handoffs=targets,
            title=self.title,
        )


class DelegatedTask(BaseModel):
    """What the calling model gives an agent it calls as a tool."""

    input: str = Field(description="The task for this agent, with everything it needs to know to do it.")


def _never_called(input: str) -> str:
    """An agent tool's function: the workflow runs the agent as a child run instead."""
    raise RuntimeError("an agent tool runs as a child workflow, never as a function")


@dataclass(frozen=True, eq=False)
class AgentTool(Tool):
    """An agent as a tool (`Agent.as_tool`): the workflow runs it as a child run, never as a function."""

    agent: Agent | None = None

    def policy(self, arguments: dict[str, Any]) -> ToolPolicy:
        return ToolPolicy(max_calls_per_run=self.max_calls_per_run, handled_by="agent")

    def sub_agent_spec(
        self, default_model: str, run: RunContext, agents: Mapping[str, Agent] | None = None
    ) -> SubAgentSpec:
        """The snapshot a calling run carries of this agent: its spec and its instructions for `run`."""
        assert self.agent is not None  # as_tool always sets it
        return SubAgentSpec(
            purpose=self.agent.spec(default_model, run=run, agents=agents),
            instructions=self.agent.instructions_for(run),
        )


class NoArguments(BaseModel):
    """A handoff tool takes no arguments: the conversation itself goes over."""


def _never_run() -> str:
    """A handoff tool's function: the workflow switches agent instead."""
    raise RuntimeError("a handoff tool is handled by the workflow, never run as a function")


@dataclass(frozen=True, eq=False)
class HandoffTool(Tool):
    """`transfer_to_<agent>`: the tool through which a model hands the conversation to another agent."""

    target: str = ""

    def policy(self, arguments: dict[str, Any]) -> ToolPolicy:
        return ToolPolicy(handled_by="handoff")


def handoff_tool(target: Agent) -> HandoffTool:
    """The tool that hands over to `target`, described from its title and handoff_description; the offline
    scripted model calls it when the user's message says `transfer to <name>`."""
    about = f": {target.handoff_description}" if target.handoff_description else ""
    return HandoffTool(
        name=HANDOFF_TOOL_PREFIX + target.name,
        description=f"Hand the conversation over to {target.title or target.name}{about}",
        fn=_never_run,
        arguments=NoArguments,
        triggers=(f"transfer to {target.name}",),
        target=target.name,
    )


def handoff_name(entry: "Agent | str") -> str:
    """The name of a handoff target, given as an Agent or by name."""
    return entry.name if isinstance(entry, Agent) else entry


def handoff_reach(first: Agent, agents: Mapping[str, Agent]) -> dict[str, Agent]:
    """Every agent reachable by handoffs from `first` (itself included), by name; each once, so cycles end.
    A name `agents` does not know is a ValueError (the app refuses such an agent when it loads)."""
    found: dict[str, Agent] = {}
    waiting: list[Agent | str] = [first]
    while waiting:
        entry = waiting.pop(0)
        name = handoff_name(entry)
        if name in found:
            continue
        agent = entry if isinstance(entry, Agent) else agents.get(entry)
        if agent is None:
            raise ValueError(f"agent {first.name!r} hands off to {name!r}, which is not an agent of the app")
        found[name] = agent
        waiting += agent.handoffs
    return found


def stop_when_name(predicate: StopWhen) -> str:
    """How a run's snapshot names a stop_when predicate: `module:qualified.name`."""
    return f"{predicate.__module__}:{predicate.__qualname__}"


def tighter(limits: Budgets, requested: Budgets) -> Budgets:
    """Each limit is the smaller of the agent's and the request's (None = no limit)."""

    def pick(a: _Limit | None, b: _Limit | None) -> _Limit | None:
        return b if a is None else a if b is None else min(a, b)

    return Budgets(
        max_steps=min(limits.max_steps, requested.max_steps),
        max_tokens=pick(limits.max_tokens, requested.max_tokens),
        max_cost_usd=pick(limits.max_cost_usd, requested.max_cost_usd),
        max_duration_s=pick(limits.max_duration_s, requested.max_duration_s),
    )


def fewer_calls(own: Mapping[str, int], requested: Mapping[str, int]) -> dict[str, int]:
    """stopWhen counts of both: for a tool in both, the lower count (the run stops at whichever comes first)."""
    return {
        name: min(own.get(name, times), requested.get(name, times))
        for name, times in {**own, **requested}.items()
    }
