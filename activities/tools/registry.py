"""The tool registry: a tool is one typed Python function, and its JSON schema comes from its signature."""

import asyncio
import copy
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from keel.contracts import ToolPolicy, ToolSpec

# An approval policy: "never", "always", or a predicate over the call's arguments (True = ask a person).
ApprovalPolicy = Literal["never", "always"] | Callable[[dict[str, Any]], bool]


class ToolError(Exception):
    """A failure the tool reports to the model (bad input, nothing found...) instead of crashing the run."""


@dataclass(frozen=True)
class ToolContext:
    """What a tool may know about the call it serves. A tool asks for it with a `ctx: ToolContext` parameter."""

    agent_run_id: str
    tool_call_id: str
    data_dir: Path
    # Unique to this tool call and the same on every retry or re-execution of it (workflow id + activity
    # id). A side-effecting tool hands it to whatever it changes, so the effect happens once.
    idempotency_key: str


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    fn: Callable[..., Any]
    arguments: type[BaseModel]
    # Words in a user's message that make the offline scripted model call this tool.
    triggers: tuple[str, ...]
    side_effects: bool
    approval: ApprovalPolicy
    max_calls_per_run: int | None = None
    # "workflow" for built-ins the workflow answers itself (ask_user): the function never runs.
    handled_by: Literal["worker", "workflow"] = "worker"
    # Heavy tools run on the heavy workers' task queue; the rest inline in the agent worker.
    heavy: bool = False

    def policy(self, arguments: dict[str, Any]) -> ToolPolicy:
        try:
            self.arguments.model_validate(arguments)
        except ValidationError:
            # Nothing to approve: run_tool answers arguments that don't fit with an error, unrun.
            return ToolPolicy(
                max_calls_per_run=self.max_calls_per_run, handled_by=self.handled_by, heavy=self.heavy
            )
        if self.approval in ("always", "never"):
            needs_approval = self.approval == "always"
        else:
            try:
                needs_approval = bool(self.approval(arguments))
            except Exception:
                needs_approval = True  # a predicate that can't decide asks a person
        return ToolPolicy(
            needs_approval=needs_approval,
            max_calls_per_run=self.max_calls_per_run,
            handled_by=self.handled_by,
            heavy=self.heavy,
        )

    @functools.cached_property
    def _parameters(self) -> dict[str, Any]:
        # pydantic builds a JSON schema anew on every call: half of call_llm's own CPU in a py-spy profile
        # of the worker (make bench). The signature never changes, so build it once.
        schema = self.arguments.model_json_schema()
        schema.pop("title", None)
        return schema

    def spec(self) -> ToolSpec:
        # A copy, so no caller can change the schema every later call gets.
        return ToolSpec(
            name=self.name, description=self.description, parameters=copy.deepcopy(self._parameters)
        )

    async def invoke(self, arguments: dict[str, Any], ctx: ToolContext) -> Any:
        """Validate the model's arguments against the signature, then call the tool.

        Arguments that don't fit raise ToolError, which goes back to the model as an error result.
        """
        try:
            parsed = self.arguments.model_validate(arguments)
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in err.errors()
            )
            raise ToolError(f"invalid arguments for {self.name}: {problems}") from None
        kwargs = dict(parsed)
        if "ctx" in inspect.signature(self.fn).parameters:
            kwargs["ctx"] = ctx
        if inspect.iscoroutinefunction(self.fn):
            return await self.fn(**kwargs)
        # Plain functions may block (files, CPU); a thread keeps the worker's event loop free.
        return await asyncio.to_thread(self.fn, **kwargs)


class ToolRegistry:
    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}

    def tool(
        self,
        *,
        triggers: tuple[str, ...] = (),
        side_effects: bool = False,
        approval: ApprovalPolicy | None = None,
        max_calls_per_run: int | None = None,
        handled_by: Literal["worker", "workflow"] = "worker",
        heavy: bool | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register a function as a tool; its name, docstring and signature describe it to the model.

        Side-effecting tools need a person's approval unless they say otherwise (`approval="never"`).
        A tool is cheap by default and runs inline in the agent worker, as a local activity: a local
        activity may run again if the worker dies before the workflow task completes, and it holds the
        workflow task while it runs. So a tool that is slow, blocks, or changes the world says `heavy=True`
        and runs on the heavy workers (`python worker.py --queue heavy`), with heartbeats and long timeouts.
        Side-effecting tools are heavy unless they say otherwise.
        """

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            if fn.__name__ in self._tools:
                raise ValueError(f"tool {fn.__name__!r} is registered twice")
            self._tools[fn.__name__] = Tool(
                name=fn.__name__,
                description=inspect.cleandoc(fn.__doc__ or fn.__name__),
                fn=fn,
                arguments=_arguments_model(fn),
                triggers=triggers,
                side_effects=side_effects,
                approval=approval or ("always" if side_effects else "never"),
                max_calls_per_run=max_calls_per_run,
                handled_by=handled_by,
                heavy=side_effects if heavy is None else heavy,
            )
            return fn

        return register

    def get(self, name: str) -> Tool:
        try:
            return self._tools[name]
        except KeyError:
            raise ToolError(f"unknown tool {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def names(self) -> list[str]:
        return list(self._tools)


def _arguments_model(fn: Callable[..., Any]) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for name, param in inspect.signature(fn).parameters.items():
        if name == "ctx":
            continue
        if param.annotation is inspect.Parameter.empty:
            raise TypeError(f"tool {fn.__name__}: parameter {name!r} needs a type annotation")
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[name] = (param.annotation, default)
    # Extra keys are refused so a model's typo is reported instead of silently ignored.
    return create_model(f"{fn.__name__}_arguments", __config__=ConfigDict(extra="forbid"), **fields)


# The one registry. Tool modules register into it when `activities.tools` is imported.
TOOLS = ToolRegistry()
