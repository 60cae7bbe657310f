"""Your app: the agents Keel serves, loaded from your own package (KEEL_APP).

    KEEL_APP=support.agents              every module-level Agent of the module support.agents
    KEEL_APP=support.agents:AGENTS       the agents in that module's list (or tuple) AGENTS

Without KEEL_APP Keel serves its example agents (`keel_examples`, written with nothing but the public API).
The gateway and both workers load the same app at startup, and refuse a bad one there, in one line naming
the agent and the problem (`AppError`); `keel check` does the same without starting anything.
"""

import importlib
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from keel.agent import NAME, Agent, AgentTool, StopWhen, handoff_name, handoff_tool, stop_when_name
from keel.contracts import ASK_USER_TOOL, HANDOFF_TOOL_PREFIX, OUTPUT_TOOL
from keel.mcp import SEPARATOR, MCPServer
from keel.output import output_problem
from keel.routes import RouteError, parse_chain
from keel.settings import Settings
from keel.tools import ASK_USER, Tool, ToolError

DEFAULT_APP = "keel_examples"


class AppError(Exception):
    """An app Keel can't serve; the message is one line saying which agent and what is wrong."""


class UnknownAgent(LookupError):
    def __init__(self, name: str, known: Iterable[str]) -> None:
        super().__init__(f"unknown purpose {name!r}; the agents are: {', '.join(sorted(known))}")


@dataclass(frozen=True)
class App:
    """The agents of one app, and every tool they use (ask_user included), by name."""

    source: str
    agents: dict[str, Agent]
    tools: dict[str, Tool] = field(default_factory=dict)
    # Every MCP server its agents take tools from, by name (one configuration per name).
    mcp_servers: dict[str, MCPServer] = field(default_factory=dict)
    # Every agent a run may become or call (served, sub-agents, handoff targets), by name: how a handoff
    # given by name is resolved (Agent.spec(agents=...)).
    reachable: dict[str, Agent] = field(default_factory=dict)

    def agent(self, name: str) -> Agent:
        try:
            return self.agents[name]
        except KeyError:
            raise UnknownAgent(name, self.agents) from None

    def tool(self, name: str) -> Tool:
        """A tool by name; one the app no longer has (a run from an earlier deploy asked for it) is a
        ToolError, which the model hears."""
        try:
            return self.tools[name]
        except KeyError:
            raise ToolError(f"unknown tool {name!r}: this deployment has no tool of that name") from None

    def stop_when(self, name: str) -> StopWhen | None:
        """An agent's stop_when predicate by the name runs know it by; None if this app no longer has it."""
        for agent in (a for served in self.agents.values() for a in _with_sub_agents(served)):
            for predicate in agent.stop_when:
                if stop_when_name(predicate) == name:
                    return predicate
        return None

    def triggers(self) -> dict[str, tuple[str, ...]]:
        """Each tool's trigger words, for the offline scripted model."""
        return {name: t.triggers for name, t in self.tools.items()}

    @property
    def default_agent(self) -> Agent:
        """The agent a request that names none gets: `assistant` if there is one, else the first."""
        return self.agents.get("assistant") or next(iter(self.agents.values()))


def load_app(source: str | None = None) -> App:
    """Import the app KEEL_APP names (the example agents by default) and check it. Raises AppError, one
    line."""
    source = (source or "").strip() or DEFAULT_APP
    return build_app(source, _agents_of(source))


def load_app_or_exit(settings: Settings) -> App:
    """The app KEEL_APP names, for a process starting up: a bad one stops it with its one line."""
    try:
        return load_app(settings.app)
    except AppError as err:
        raise SystemExit(f"keel: {err}") from None


def build_app(source: str, agents: Iterable[object]) -> App:
    """Check agents and collect their tools: the rules `load_app` applies, for agents already at hand."""
    by_name: dict[str, Agent] = {}
    tools: dict[str, Tool] = {ASK_USER_TOOL: ASK_USER}
    servers: dict[str, MCPServer] = {}
    for agent in agents:
        if not isinstance(agent, Agent):
            raise AppError(f"{source}: {agent!r} is not a keel.Agent")
        problem = _problem(agent, tools) or _mcp_problem(agent, servers)
        if problem is None and agent.name in by_name:
            problem = "two agents have this name"
        if problem is not None:
            raise AppError(f"{source}: agent {agent.name!r}: {problem}")
        by_name[agent.name] = agent
        tools.update({t.name: t for a in _with_sub_agents(agent) for t in a.tools})
        servers.update({s.name: s for s in agent.mcp})
    if not by_name:
        raise AppError(f"{source}: no agents (define keel.Agent objects at module level, or name a list)")
    reachable = _reachable(by_name)
    for agent in reachable.values():
        if (problem := _handoff_problem(agent, reachable, tools, by_name)) is not None:
            raise AppError(f"{source}: agent {agent.name!r}: {problem}")
    for agent in reachable.values():
        tools.update({t.name: t for a in _with_sub_agents(agent) for t in a.tools})
        tools.update({t.name: t for t in (handoff_tool(reachable[handoff_name(e)]) for e in agent.handoffs)})
    return App(source=source, agents=by_name, tools=tools, mcp_servers=servers, reachable=reachable)


def _with_sub_agents(agent: Agent, seen: set[int] | None = None) -> list[Agent]:
    """An agent and the agents it calls as tools or hands over to (given as Agent objects), all the way
    down, each once: a worker runs their tools and stop conditions even when the app does not serve them
    itself. The visited set ends handoff cycles."""
    seen = set() if seen is None else seen
    if id(agent) in seen:
        return []
    seen.add(id(agent))
    found = [agent]
    for tool in agent.tools:
        if isinstance(tool, AgentTool) and tool.agent is not None:
            found += _with_sub_agents(tool.agent, seen)
    for entry in agent.handoffs:
        if isinstance(entry, Agent):
            found += _with_sub_agents(entry, seen)
    return found


def _reachable(served: dict[str, Agent]) -> dict[str, Agent]:
    """Every agent of the app by name, the served ones first (their names win over a sub-agent's)."""
    found = dict(served)
    for agent in served.values():
        for reached in _with_sub_agents(agent):
            found.setdefault(reached.name, reached)
    return found


def _handoff_problem(
    agent: Agent, reachable: dict[str, Agent], tools: dict[str, Tool], served: dict[str, Agent]
) -> str | None:
    """What is wrong with an agent's handoffs: a name that is no agent of the app, a target given as an
    object that is not the agent the app has under its name, a tool named like a handoff tool."""
    if not isinstance(agent.handoff_description, str):
        return "handoff_description must be a string"
    if agent.name not in served and (problem := _problem(agent, tools)) is not None:
        # An agent reached only by handoffs runs under the same rules as the others.
        return problem
    targets: set[str] = set()
    for entry in agent.handoffs:
        if not isinstance(entry, Agent | str):
            return f"handoffs holds {entry!r}: each entry is a keel.Agent or an agent's name"
        name = handoff_name(entry)
        if name not in reachable:
            return (
                f"it hands off to {name!r}, which is not an agent of the app: {', '.join(sorted(reachable))}"
            )
        if isinstance(entry, Agent) and reachable[name] is not entry:
            return f"it hands off to an agent named {name!r} that is not the app's agent of that name"
        if name == agent.name:
            return "it hands off to itself"
        if name in targets:
            return f"it hands off to {name!r} twice"
        targets.add(name)
    for tool in agent.tools:
        if (
            tool.name.startswith(HANDOFF_TOOL_PREFIX)
            and tool.name.removeprefix(HANDOFF_TOOL_PREFIX) in reachable
        ):
            return f"its tool {tool.name!r} has the name of the tool that hands off to that agent"
    return None


def _agents_of(source: str) -> list[object]:
    module_name, _, attribute = source.partition(":")
    try:
        module = importlib.import_module(module_name.strip())
    except Exception as err:  # the app's own import errors, whatever they are, stop the process here
        # Where in the app it broke: the last frame that is neither Python's import machinery nor Keel.
        frames = [f for f in traceback.extract_tb(err.__traceback__) if _in_the_app(f.filename)]
        where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise AppError(
            f"KEEL_APP={source}: cannot import {module_name!r}: {type(err).__name__}: {first_line}{where}"
        ) from None
    if not attribute:
        return _module_agents(module)
    value = getattr(module, attribute.strip(), None)
    if not isinstance(value, list | tuple):
        raise AppError(f"KEEL_APP={source}: {attribute!r} is not a list of keel.Agent in {module_name}")
    return list(value)


def _in_the_app(filename: str) -> bool:
    path = Path(filename)
    return not (filename.startswith("<") or path.parent.name == "importlib" or _KEEL in path.parents)


_KEEL = Path(__file__).resolve().parent


def _module_agents(module: ModuleType) -> list[object]:
    # In the order the module defines them, each once (an agent bound to two names is still one agent).
    seen: dict[int, object] = {}
    for value in vars(module).values():
        if isinstance(value, Agent):
            seen.setdefault(id(value), value)
    return list(seen.values())


def _problem(agent: Agent, known_tools: dict[str, Tool]) -> str | None:
    """What is wrong with an agent, given the tools of the agents checked before it; None if nothing."""
    if not isinstance(agent.name, str) or not NAME.match(agent.name):
        return "its name must be 1 to 64 of a-z, 0-9, _ and -, starting with a letter or digit"
    if not callable(agent.instructions) and not (isinstance(agent.instructions, str) and agent.instructions):
        return "instructions must be a non-empty string or a function of the run's context"
    if agent.model is not None:
        try:
            parse_chain(agent.model)
        except RouteError as err:
            return str(err)
    if agent.max_steps < 1:
        return f"max_steps must be at least 1, not {agent.max_steps}"
    if agent.max_depth < 0:
        return f"max_depth must be at least 0, not {agent.max_depth}"
    names: set[str] = set()
    for tool in agent.tools:
        if not isinstance(tool, Tool):
            return f"{tool!r} is not a tool: decorate the function with @keel.tool"
        if tool.name in (ASK_USER_TOOL, OUTPUT_TOOL):
            return f"a tool is named {tool.name!r}, a name Keel keeps for its own tool"
        if tool.name in names:
            return f"two of its tools are named {tool.name!r}"
        other = known_tools.get(tool.name)
        if other is not None and other is not tool:
            return f"its tool {tool.name!r} is not the tool another agent has under that name"
        names.add(tool.name)
    for tool in agent.tools:
        # An agent called as a tool runs under the same rules, even when the app does not serve it itself.
        if (
            isinstance(tool, AgentTool)
            and tool.agent is not None
            and (problem := _problem(tool.agent, known_tools))
        ):
            return f"its sub-agent {tool.agent.name!r}: {problem}"
    for tool_name, times in agent.stop_after_tool_calls.items():
        if tool_name not in names:
            return f"stop_after_tool_calls names {tool_name!r}, which is not one of its tools"
        if not isinstance(times, int) or times < 1:
            return f"stop_after_tool_calls[{tool_name!r}] must be a whole number of at least 1"
    if agent.output_type is not None and (problem := output_problem(agent.output_type, agent.output_retries)):
        return problem
    for predicate in agent.stop_when:
        if (
            not callable(predicate)
            or "<lambda>" in predicate.__qualname__
            or "<locals>" in predicate.__qualname__
        ):
            return "each stop_when predicate must be a module-level function (runs name it to find it again)"
    return None


def _mcp_problem(agent: Agent, known_servers: dict[str, MCPServer]) -> str | None:
    """What is wrong with an agent's MCP servers, given those of the agents checked before it."""
    names: set[str] = set()
    for server in agent.mcp:
        if not isinstance(server, MCPServer):
            return f"{server!r} is not an MCP server: build it with keel.mcp.MCPServer.stdio or .http"
        if (problem := server.problem()) is not None:
            return problem
        if server.name in names:
            return f"two of its MCP servers are named {server.name!r}"
        other = known_servers.get(server.name)
        if other is not None and other != server:
            return f"its MCP server {server.name!r} is not the server another agent has under that name"
        names.add(server.name)
    # A server's tools are named `<server>__<tool>`: a tool of the agent's own under such a name could
    # clash with one listed later, so it is refused now.
    for tool in agent.tools:
        server_part, separator, _ = tool.name.partition(SEPARATOR)
        if separator and server_part in names:
            return (
                f"its tool {tool.name!r} is named like a tool of its MCP server {server_part!r}"
                f" ({server_part}{SEPARATOR}<tool>)"
            )
    return None
