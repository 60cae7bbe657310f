"""MCP servers' tools in your agents, part of Keel's public API: where a server is and how its tools are run.

    from keel import Agent
    from keel.mcp import MCPServer

    files = MCPServer.stdio("files", "npx", args=["-y", "@modelcontextprotocol/server-filesystem", "/srv"])
    issues = MCPServer.http(
        "issues", "https://mcp.example.com/mcp", headers={"Authorization": "Bearer ${ISSUES_TOKEN}"},
        approval="never", approve={"close_issue": "always"},
    )
    triage = Agent(name="triage", instructions="...", mcp=[files, issues])

A server's tools join the agent's own under the name `<server>__<tool>` (`mcp_tool_name`): valid for every
provider (`^[a-zA-Z0-9_-]{1,64}$`), the same at every listing, and never one of the agent's own tools' names
(an app whose agent has a tool named `<server>__...` for one of its servers is refused at load).

Only configuration lives here: no I/O. The workers connect (activities/mcp_client.py); `${VAR}` in a stdio
server's `env` values, an HTTP server's `url` and `headers` values is read from the worker's environment when
it connects (`expand_env`), so secrets are never in the app's code, a run's snapshot, history or logs.
"""

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

# A server's approval policy for its tools: "annotations" asks a person before a tool annotated
# destructiveHint, or not annotated readOnlyHint (MCP's defaults say an unannotated tool may change the
# world); "always" and "never" ignore the annotations.
MCPApproval = Literal["annotations", "always", "never"]
# What a per-tool override says (`approve={"tool": "never"}`), by the tool's name on its server.
ToolApproval = Literal["always", "never"]

# A server's name: the start of its tools' names, its key in records and /api/purposes. No "__" in it, so a
# tool's Keel name says where the server's name ends.
SERVER_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]|_(?!_)){0,23}$")
SEPARATOR = "__"
# Every provider's rule for a tool's name (OpenAI and Anthropic alike).
PROVIDER_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class MissingEnvironment(LookupError):
    """A `${VAR}` in a server's configuration names a variable the worker's environment does not set."""


@dataclass(frozen=True, kw_only=True)
class MCPServer:
    """One MCP server an agent takes tools from. Build one with `MCPServer.stdio(...)` or `MCPServer.http(...)`."""

    name: str
    transport: Literal["stdio", "http"]
    # stdio: the command the worker starts (once per worker, restarted after a crash), its arguments and
    # the variables added to its environment (values may say `${VAR}`).
    command: str = ""
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    # http: the streamable HTTP endpoint and the headers sent with every request (values may say `${VAR}`).
    url: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    approval: MCPApproval = "annotations"
    # Per-tool overrides of `approval`, by the tool's name on the server.
    approve: Mapping[str, ToolApproval] = field(default_factory=dict)
    # Heavy: the server's tools run on the heavy workers (long timeouts, heartbeats); else inline in the
    # agent worker, like a bare @tool.
    heavy: bool = False
    # How long a worker reuses a listing of the server's tools before it lists them again.
    list_ttl_s: float = 60.0
    # How long one call may take before it counts as a transport failure (retried).
    call_timeout_s: float = 300.0

    @classmethod
    def stdio(
        cls,
        name: str,
        command: str,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        *,
        approval: MCPApproval = "annotations",
        approve: Mapping[str, ToolApproval] | None = None,
        heavy: bool = False,
        list_ttl_s: float = 60.0,
        call_timeout_s: float = 300.0,
    ) -> "MCPServer":
        """A server the worker starts as a subprocess and talks to over its stdin and stdout."""
        return cls(
            name=name,
            transport="stdio",
            command=command,
            args=tuple(args),
            env=dict(env or {}),
            approval=approval,
            approve=dict(approve or {}),
            heavy=heavy,
            list_ttl_s=list_ttl_s,
            call_timeout_s=call_timeout_s,
        )

    @classmethod
    def http(
        cls,
        name: str,
        url: str,
        headers: Mapping[str, str] | None = None,
        *,
        approval: MCPApproval = "annotations",
        approve: Mapping[str, ToolApproval] | None = None,
        heavy: bool = False,
        list_ttl_s: float = 60.0,
        call_timeout_s: float = 300.0,
    ) -> "MCPServer":
        """A server reached over streamable HTTP at `url`."""
        return cls(
            name=name,
            transport="http",
            url=url,
            headers=dict(headers or {}),
            approval=approval,
            approve=dict(approve or {}),
            heavy=heavy,
            list_ttl_s=list_ttl_s,
            call_timeout_s=call_timeout_s,
        )

    def needs_approval(self, tool: str, *, read_only: bool | None, destructive: bool | None) -> bool:
        """Whether a call of `tool` (its name on the server, its annotations) waits for a person."""
        override = self.approve.get(tool)
        if override is not None:
            return override == "always"
        if self.approval != "annotations":
            return self.approval == "always"
        return destructive is True or read_only is not True

    def problem(self) -> str | None:
        """What is wrong with this configuration (one line), or None."""
        if not isinstance(self.name, str) or not SERVER_NAME.match(self.name):
            return (
                f"MCP server name {self.name!r} must be 1 to 24 of a-z, 0-9, - and single _, starting with a"
                " letter or digit"
            )
        if self.transport == "stdio" and not self.command:
            return f"MCP server {self.name!r}: a stdio server needs a command"
        if self.transport == "http" and not re.match(r"^(https?://|\$\{)", self.url):
            return f"MCP server {self.name!r}: its url must start with http:// or https://"
        if self.approval not in ("annotations", "always", "never"):
            return f"MCP server {self.name!r}: approval must be 'annotations', 'always' or 'never'"
        for tool, verdict in self.approve.items():
            if verdict not in ("always", "never"):
                return f"MCP server {self.name!r}: approve[{tool!r}] must be 'always' or 'never'"
        if self.list_ttl_s < 0 or self.call_timeout_s <= 0:
            return f"MCP server {self.name!r}: list_ttl_s must be ≥ 0 and call_timeout_s > 0"
        return None


def mcp_tool_name(server: str, tool: str) -> str:
    """A server's tool as the model knows it: `<server>__<tool>`, with any character a provider refuses
    replaced by `_`. When that changed the name or it is over 64 characters, 8 hex digits of the tool's own
    name's SHA-256 end it, so two tools never share one name and a tool keeps its name at every listing."""
    plain = f"{server}{SEPARATOR}{tool}"
    if PROVIDER_TOOL_NAME.match(plain):
        return plain
    digest = hashlib.sha256(tool.encode()).hexdigest()[:8]
    safe = _UNSAFE.sub("_", plain)
    return f"{safe[: 64 - len(digest) - 1]}_{digest}"


def expand_env(value: str, environ: Mapping[str, str] | None = None) -> str:
    """`value` with each `${VAR}` replaced by the variable's value; MissingEnvironment names one unset."""
    source = os.environ if environ is None else environ

    def lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in source:
            raise MissingEnvironment(f"environment variable {name} is not set")
        return source[name]

    return _ENV_REFERENCE.sub(lookup, value)
