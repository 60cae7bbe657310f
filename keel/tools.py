"""Tools, part of Keel's public API: a typed Python function the model may call, made one with `@tool`.

    from keel import tool, ToolContext, ToolError

    @tool                                   # inline: a local activity in the agent worker
    def lookup_order(order_id: str) -> dict: ...

    @tool(approval="always", heavy=True)    # asks a person first; runs on the heavy workers
    async def refund(order_id: str, amount_eur: float, ctx: ToolContext) -> dict: ...

The function's name is the tool's name, its docstring what the model is told it does, and its signature
(with pydantic's `Annotated[..., Field(...)]` where a parameter needs saying more) the JSON schema of its
arguments. A `ctx: ToolContext` parameter receives the call's context and is not shown to the model. A tool
raises `ToolError` for a failure the model should hear about; any other exception is retried by Temporal.

Pure declarations, no I/O: the gateway, the workers and the workflow all read them.
"""

import asyncio
import copy
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, overload

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic.errors import PydanticSchemaGenerationError, PydanticUserError

from keel.contracts import ASK_USER_TOOL, ToolPolicy, ToolSpec

# An approval policy: "never", "always", or a predicate over the call's arguments (True = ask a person).
ApprovalPolicy = Literal["never", "always"] | Callable[[dict[str, Any]], bool]


class ToolError(Exception):
    """A failure the tool reports to the model (bad input, nothing found...) instead of crashing the run."""


class ToolDefinitionError(TypeError):
    """A function that can't be a tool (a parameter without a type, a type with no JSON schema)."""


@dataclass(frozen=True)
class ToolContext:
    """What a tool may know about the call it serves. A tool asks for it with a `ctx: ToolContext` parameter."""

    agent_run_id: str
    tool_call_id: str
    # A folder the tool may keep files in (KEEL_DATA_DIR).
    data_dir: Path
    # Unique to this tool call and the same on every retry or re-execution of it (workflow id + activity
    # id). A side-effecting tool hands it to whatever it changes, so the effect happens once.
    idempotency_key: str


@dataclass(frozen=True, eq=False)
class Tool:
    """A tool: what `@tool` makes of a function. Calling it calls the function, so a tool stays testable."""

    name: str
    description: str
    fn: Callable[..., Any]
    arguments: type[BaseModel]
    # Words in a user's message that make the offline scripted model (and keel.testing) call this tool.
    triggers: tuple[str, ...] = ()
    side_effects: bool = False
    approval: ApprovalPolicy = "never"
    max_calls_per_run: int | None = None
    # "workflow" for built-ins the workflow answers itself (ask_user): the function never runs.
    handled_by: Literal["worker", "workflow"] = "worker"
    # Heavy tools run on the heavy workers' task queue; the rest inline in the agent worker.
    heavy: bool = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

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
                needs_approval = bool(self.approval(arguments))  # type: ignore[operator]
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


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...


@overload
def tool(
    *,
    approval: ApprovalPolicy | None = None,
    heavy: bool | None = None,
    side_effects: bool = False,
    max_calls_per_run: int | None = None,
    triggers: tuple[str, ...] = (),
    name: str | None = None,
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    approval: ApprovalPolicy | None = None,
    heavy: bool | None = None,
    side_effects: bool = False,
    max_calls_per_run: int | None = None,
    triggers: tuple[str, ...] = (),
    name: str | None = None,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make a function a tool; its name, docstring and signature describe it to the model.

    - `approval`: "never", "always", or a predicate over the arguments (True: ask a person first).
      Side-effecting tools (`side_effects=True`) ask by default.
    - `heavy`: run on the heavy workers (`keel worker --queue heavy`), with heartbeats and long timeouts,
      instead of inline in the agent worker as a local activity. An inline tool may run again if the worker
      dies before the workflow task completes, and it holds the workflow task while it runs: a tool that is
      slow, blocks, or changes the world is heavy. Side-effecting tools are heavy by default.
    - `max_calls_per_run`: a further call in the same run gets an error result instead of running.
    - `triggers`: words that make the offline scripted model call it (`KEEL_MODEL=scripted`, keel.testing).
    - `name`: the tool's name, if not the function's.
    """

    def make(function: Callable[..., Any]) -> Tool:
        return define_tool(
            function,
            name=name,
            approval=approval or ("always" if side_effects else "never"),
            heavy=side_effects if heavy is None else heavy,
            side_effects=side_effects,
            max_calls_per_run=max_calls_per_run,
            triggers=triggers,
        )

    return make(fn) if fn is not None else make


def define_tool(
    fn: Callable[..., Any],
    *,
    name: str | None = None,
    handled_by: Literal["worker", "workflow"] = "worker",
    **options: Any,
) -> Tool:
    """The Tool for a function (what `@tool` does); raises ToolDefinitionError saying what is wrong."""
    tool_name = name or fn.__name__
    built = Tool(
        name=tool_name,
        description=inspect.cleandoc(fn.__doc__ or tool_name),
        fn=fn,
        arguments=_arguments_model(fn, tool_name),
        handled_by=handled_by,
        **options,
    )
    try:
        built.spec()  # a type pydantic can't describe fails here, when the app loads, not at the first call
    except (PydanticSchemaGenerationError, PydanticUserError) as err:
        raise ToolDefinitionError(f"tool {tool_name!r}: its arguments have no JSON schema: {err}") from None
    return built


def _arguments_model(fn: Callable[..., Any], name: str) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for param_name, param in inspect.signature(fn).parameters.items():
        if param_name == "ctx":
            continue
        if param.annotation is inspect.Parameter.empty:
            raise ToolDefinitionError(f"tool {name!r}: parameter {param_name!r} needs a type annotation")
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param_name] = (param.annotation, default)
    try:
        # Extra keys are refused so a model's typo is reported instead of silently ignored.
        return create_model(f"{name}_arguments", __config__=ConfigDict(extra="forbid"), **fields)
    except (PydanticSchemaGenerationError, PydanticUserError, TypeError) as err:
        raise ToolDefinitionError(f"tool {name!r}: its arguments have no JSON schema: {err}") from None


def _ask_user(
    question: Annotated[
        str, Field(min_length=1, max_length=2000, description="The question, in one or two sentences")
    ],
) -> str:
    """Ask the user a question and wait for the answer. Use it only when you cannot go on without it."""
    # The workflow answers this tool itself (it waits for the `answer` signal); nothing runs here.
    raise AssertionError(f"{ASK_USER_TOOL} is handled by the workflow")


# Built in: every agent may ask the user (Agent.allow_questions decides whether the run waits for the answer).
ASK_USER = define_tool(_ask_user, name=ASK_USER_TOOL, handled_by="workflow", triggers=("ask me",))
