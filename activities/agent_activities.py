"""The agent's activities: `call_llm` (think) and `run_tool` (act), and `list_mcp_tools` (the run's snapshot
of its MCP servers' tools, taken when it starts; activities/mcp_client.py talks to the servers).

Both read and write the run's conversation in PostgreSQL by (agent_run_id, seq), so only small references
travel through Temporal history. Both are safe to retry: their writes are upserts of the same row.

Structured output is judged here too: when the run wants it and the model gives its final answer,
`call_llm` validates the answer (keel/output.py), stores the object with the reply and tells the workflow
only the verdict.
"""

import asyncio
import json
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
from pydantic import BaseModel
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.capacity import CallAccount
from activities.heartbeat import heartbeating
from activities.mcp_client import MCPClients, result_text, result_value
from activities.models import (
    Finish,
    ModelChunk,
    OutputDelta,
    OutputRequest,
    TextDelta,
    UnknownModelRoute,
    resolve_model,
)
from activities.records import RunRecorder, until_stored
from keel.agent import Progress
from keel.app import App
from keel.contracts import (
    CALL_LLM,
    CHECK_STOP_WHEN,
    HANDOFF_MESSAGE_NAME,
    LIST_MCP_TOOLS,
    OPEN_SUB_RUN,
    RUN_TOOL,
    SAVE_HANDOFF,
    SAVE_MESSAGE,
    SAVE_SUB_RUN_RESULT,
    ErrorType,
    HandoffInput,
    HandoffSaved,
    LlmStepInput,
    LlmStepResult,
    MCPListing,
    MCPListingInput,
    MCPToolSpec,
    Message,
    OutputSpec,
    SaveMessageInput,
    StopWhenInput,
    StopWhenVerdict,
    SubRunOpened,
    SubRunOpening,
    SubRunResult,
    SubRunSaved,
    ToolCall,
    ToolInput,
    ToolOutcome,
    ToolPolicy,
    ToolSpec,
    Usage,
)
from keel.output import check_answer, same_schema
from keel.storage import run_records
from keel.storage.deltas import NO_DELTAS, DeltaChannel, DeltaWriter
from keel.storage.interrupts import InterruptListener, NoInterrupts
from keel.storage.provider_limits import ProviderLedger
from keel.storage.store import RunStore
from keel.tools import ToolContext, ToolError

log = logging.getLogger("keel.mcp")


@dataclass
class _Answer:
    """What a model call has said so far: its text (the structured answer's pieces among it), its tool
    calls and, once it finished, how."""

    text: list[str] = field(default_factory=list)
    answer: list[str] = field(default_factory=list)
    calls: list[ToolCall] = field(default_factory=list)
    finish: Finish | None = None

    def take(self, chunk: ModelChunk, live: DeltaWriter) -> None:
        if isinstance(chunk, TextDelta):
            self.text.append(chunk.text)
            live.write(chunk.text)
            if isinstance(chunk, OutputDelta):
                self.answer.append(chunk.text)
        elif isinstance(chunk, ToolCall):
            self.calls.append(chunk)
        else:
            self.finish = chunk


@dataclass
class AgentActivities:
    store: RunStore
    data_dir: Path
    # The app this worker serves (KEEL_APP): its tools, by name.
    app: App
    # Where live token deltas go (keel/storage/deltas.py); never through workflow history.
    deltas: DeltaChannel = NO_DELTAS
    # Run records of each attempt: llm_calls and tool_runs rows, metrics, spans (activities/records.py).
    records: RunRecorder = field(default_factory=RunRecorder)
    # The app's MCP servers, connected by this worker (activities/mcp_client.py); close() when it stops.
    mcp: MCPClients = field(default_factory=lambda: MCPClients({}))
    # Provider limits shared by every worker (activities/capacity.py); None when none is configured.
    ledger: ProviderLedger | None = None
    # The gateway's cancels, heard at once while a model call streams (keel/storage/interrupts.py).
    interrupts: InterruptListener | NoInterrupts = field(default_factory=NoInterrupts)

    def run_queue_activities(self) -> list[Callable[..., Any]]:
        """The activities a run queue's worker registers (with `record_run`): one list for every worker.

        run_tool is among them for the inline tools, which run as local activities of the workflow.
        """
        return [
            self.call_llm,
            self.run_tool,
            self.save_message,
            self.check_stop_when,
            self.list_mcp_tools,
            self.open_sub_run,
            self.save_sub_run_result,
            self.save_handoff,
        ]

    @activity.defn(name=CALL_LLM)
    async def call_llm(self, step: LlmStepInput) -> LlmStepResult:
        try:
            model, model_name = resolve_model(
                step.model,
                triggers=self.app.triggers(),
                first_route=step.lease.route_index if step.lease else 0,
            )
        except UnknownModelRoute as err:
            raise ApplicationError(str(err), type=ErrorType.unknown_model_route, non_retryable=True) from None
        # Two reads at once: the conversation so far, and this attempt's number (for a local call, a read).
        stored, attempt = await asyncio.gather(
            until_stored(lambda: self.store.conversation(step.agent_run_id, step.reply_seq)),
            self._attempt(step),
        )
        conversation = instructions_in_force(stored)
        # A tool this deployment no longer has (the run started with an earlier one) is not offered; if the
        # model calls it anyway, it hears that there is no such tool.
        server_tools = {name for name in step.tools if name in self.app.tools}
        # Server-side tools win a name clash with a tool the client declared.
        client_tools = [t for t in step.client_tools if t.name not in server_tools]
        # The run's MCP tools, as listed when it started; the agent's own tools win a name clash (the app
        # refuses an agent whose own tool is named like one of its servers' tools, so none should happen).
        mcp_tools = {t.name: t for t in step.mcp_tools if t.name not in server_tools}
        client_tools = [t for t in client_tools if t.name not in mcp_tools]
        tools = [self.app.tools[name].spec() for name in step.tools if name in server_tools]
        tools += [
            ToolSpec(name=t.name, description=t.description, parameters=t.parameters)
            for t in mcp_tools.values()
        ]
        tools += client_tools

        so_far = _Answer()
        live = DeltaWriter.for_llm_step(self.deltas, step, attempt)
        llm_call = self.records.llm_call(step, model, attempt)
        # Only a run that wants structured output passes it on: a provider may not know the argument.
        wanted: dict[str, Any] = (
            {} if step.output is None else {"output": OutputRequest(step.output, now=step.force_output)}
        )
        account = CallAccount(self.ledger, step, attempt)

        async def stream() -> None:
            async with heartbeating():
                async for chunk in llm_call.watch(
                    model.stream(messages=conversation, model=model_name, tools=tools, **wanted)
                ):
                    await account.answering()
                    so_far.take(chunk, live)

        try:
            interrupted = await self._unless_interrupted(step.agent_run_id, stream())
        except asyncio.CancelledError:
            # The run was cancelled mid-answer: keep what the model had written so far.
            await self._keep_partial(step, so_far)
            raise
        finally:
            await live.close()  # every delta is stored before the workflow hears how this attempt ended
            await account.ended(model, so_far.finish.usage if so_far.finish is not None else None)
        if interrupted:
            await self._keep_partial(step, so_far)
            return LlmStepResult(
                reply_seq=step.reply_seq,
                has_text=bool("".join(so_far.text)),
                tool_calls=[],
                finish_reason="interrupted",
                usage=Usage(),
                model=step.model,
                interrupted=True,
            )
        finish = so_far.finish
        text, answer, calls = so_far.text, so_far.answer, so_far.calls
        if finish is None:
            raise ApplicationError(
                f"{model.provider} ended its answer without finishing it", type=ErrorType.model_stream_cut
            )

        reply = Message(role="assistant", content="".join(text), tool_calls=calls)
        verdict: dict[str, Any] = {}
        if step.output is not None and not calls:
            # The final answer: the structured one if the provider marked it, else whatever it wrote.
            value, problem = check_answer("".join(answer or text), step.output, self._output_type(step))
            reply.output_json = None if value is None else json.dumps(value, ensure_ascii=False)
            verdict = {"output_status": "invalid" if problem else "valid", "output_error": problem}
        await until_stored(lambda: self.store.put_message(step.agent_run_id, step.reply_seq, reply))
        return LlmStepResult(
            reply_seq=step.reply_seq,
            has_text=bool(reply.content),
            tool_calls=calls,
            finish_reason=finish.reason,
            usage=finish.usage,
            model=finish.route or step.model,
            request_id=finish.request_id,
            policies={
                c.id: self._policy(c, server_tools, {t.name for t in client_tools}, mcp_tools) for c in calls
            },
            **verdict,
        )

    async def _attempt(self, step: LlmStepInput) -> int:
        """This attempt's number, for its deltas, its record and its provider account. Temporal's, except for a
        local activity run again after its workflow task was lost (its worker died mid-answer): Temporal
        counts from 1 again, but the lost attempt's words are in the log, so this one takes the next number:
        it streams as a retry, and its record closes the lost one's."""
        attempt = activity.info().attempt
        if not activity.info().is_local:
            return attempt
        return max(attempt, await self.deltas.last_attempt(step.agent_run_id, step.step) + 1)

    async def _unless_interrupted(self, agent_run_id: str, answering: Coroutine[Any, Any, None]) -> bool:
        """Run the model call; True when the gateway's cancel interrupted it first (keel/storage/interrupts.py)."""
        with self.interrupts.watch(agent_run_id) as cancelled:
            call = asyncio.ensure_future(answering)
            heard = asyncio.ensure_future(cancelled.wait())
            try:
                await asyncio.wait({call, heard}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                heard.cancel()
                if not call.done():
                    call.cancel()
                    await asyncio.gather(call, return_exceptions=True)
        if call.cancelled():
            return True
        call.result()  # the call's own failure, if it failed
        return False

    async def _keep_partial(self, step: LlmStepInput, so_far: "_Answer") -> None:
        await self.store.put_message(
            step.agent_run_id, step.reply_seq, Message(role="assistant", content="".join(so_far.text))
        )

    def _output_type(self, step: LlmStepInput) -> type[BaseModel] | None:
        """The agent's pydantic class, when this worker's app still has the agent with a class of the
        run's schema: its own validators then judge the answer too. Otherwise the snapshot's schema alone
        does (a redeploy changed or removed it)."""
        agent = self.app.agents.get(step.purpose)
        spec: OutputSpec | None = step.output
        if agent is None or spec is None or not same_schema(agent.output_type, spec):
            return None
        return agent.output_type

    @activity.defn(name=RUN_TOOL)
    async def run_tool(self, task: ToolInput) -> ToolOutcome:
        call = task.call
        info = activity.info()
        ctx = ToolContext(
            agent_run_id=task.agent_run_id,
            tool_call_id=call.id,
            data_dir=self.data_dir,
            idempotency_key=f"{info.workflow_id}/{info.activity_id}",
        )
        value: Any = None
        with self.records.tool_run(task) as record:
            try:
                if call.arguments_error:
                    # The model's arguments could not be parsed; it hears why and may try again.
                    raise ToolError(f"{call.name} was not run: {call.arguments_error}")
                async with heartbeating():
                    if task.mcp is not None:
                        value, is_error = await self._call_mcp(task.mcp, call, ctx)
                    else:
                        value, is_error = await self.app.tool(call.name).invoke(call.arguments, ctx), False
                content = result_text(value)
            except ToolError as err:
                content, is_error = str(err), True
            except Exception as err:
                if not _last_attempt():
                    raise  # Temporal retries it
                # Out of retries: the model hears about the crash and may try something else.
                content, is_error = f"{call.name} failed: {type(err).__name__}: {err}", True
            record.finished(value, content, is_error)
        result = Message(
            role="tool", content=content, tool_call_id=call.id, name=call.name, is_error=is_error
        )
        await until_stored(lambda: self.store.put_message(task.agent_run_id, task.result_seq, result))
        return ToolOutcome(tool_call_id=call.id, result_seq=task.result_seq, is_error=is_error)

    def _policy(
        self,
        call: ToolCall,
        server_tools: set[str],
        client_tools: set[str],
        mcp_tools: dict[str, MCPToolSpec] | None = None,
    ) -> ToolPolicy:
        if call.arguments_error:
            return ToolPolicy()  # nothing to approve: run_tool answers a broken call with an error, unrun
        if call.name in server_tools:
            return self.app.tools[call.name].policy(call.arguments)
        if (mcp := (mcp_tools or {}).get(call.name)) is not None:
            return ToolPolicy(needs_approval=mcp.needs_approval, heavy=mcp.heavy)
        if call.name in client_tools:
            return ToolPolicy(handled_by="client")
        # Not offered to this run (a model may name any tool, in json mode especially): never run it, not
        # even a tool of another agent, since that would skip its approval.
        return ToolPolicy(handled_by="nobody")

    async def _call_mcp(self, spec: MCPToolSpec, call: ToolCall, ctx: ToolContext) -> tuple[Any, bool]:
        """An MCP server's tool: its result and whether the server said it is an error (`isError`), which
        goes back to the model unretried. A broken connection raises, and Temporal retries the call."""

        async def progressed(progress: float, total: float | None, message: str | None) -> None:
            # Called from the connection's own task, outside the activity's context: it names the run itself.
            log.info(
                "mcp progress %s/%s%s",
                progress,
                total,
                f": {message}" if message else "",
                extra={"agent_run_id": ctx.agent_run_id, "tool": call.name},
            )

        result = await self.mcp.call(
            spec, call.arguments, idempotency_key=ctx.idempotency_key, on_progress=progressed
        )
        return result_value(result), bool(result.is_error)

    @activity.defn(name=LIST_MCP_TOOLS)
    async def list_mcp_tools(self, listing: MCPListingInput) -> MCPListing:
        """The tools of the run's MCP servers, snapshotted into its history when it starts. A server that
        can't be listed leaves its tools out of the run, saying why; the run goes on with the others."""
        found = MCPListing()
        for server in listing.servers:
            try:
                found.tools += await self.mcp.list_tools(server)
            except Exception as err:
                found.problems[server] = str(err) or type(err).__name__
                activity.logger.warning(
                    "MCP server %s could not be listed: %s", server, found.problems[server]
                )
        return found

    @activity.defn(name=CHECK_STOP_WHEN)
    async def check_stop_when(self, check: StopWhenInput) -> StopWhenVerdict:
        """The agent's own stop_when predicates, in order: the first reason to stop. App code runs here, not
        in the workflow, so history records the verdict and a run replays the same after a redeploy that
        changed or dropped a predicate (one the app no longer has stops nothing)."""
        progress = Progress(
            step=check.step,
            usage=check.usage,
            elapsed_s=check.elapsed_s,
            asked_for_tools=check.asked_for_tools,
            tool_calls=dict(check.tool_calls),
            unanswerable_question=check.unanswerable_question,
        )
        for name in check.names:
            predicate = self.app.stop_when(name)
            if predicate is None:
                continue
            try:
                reason = predicate(progress)
            except Exception as err:  # the app's code: its failure ends the run, saying so
                return StopWhenVerdict(reason=f"{name} raised {type(err).__name__}: {err}", failed=True)
            if reason is not None:
                return StopWhenVerdict(reason=str(reason))
        return StopWhenVerdict()

    @activity.defn(name=SAVE_MESSAGE)
    async def save_message(self, task: SaveMessageInput) -> ToolOutcome:
        """Store a tool result the workflow produced: a denial, the user's answer, a client tool's output."""
        message = task.message
        if task.output_schema is not None and not message.is_error:
            problem = _schema_problem(message.content, task.output_schema)
            if problem:
                message = message.model_copy(
                    update={
                        "content": f"the client's result does not match the tool's output schema: {problem}",
                        "is_error": True,
                    }
                )
        await until_stored(lambda: self.store.put_message(task.agent_run_id, task.seq, message))
        return ToolOutcome(
            tool_call_id=message.tool_call_id or "", result_seq=task.seq, is_error=message.is_error
        )

    @activity.defn(name=OPEN_SUB_RUN)
    async def open_sub_run(self, opening: SubRunOpening) -> SubRunOpened:
        """What a sub-agent's child run needs before its workflow starts, as the gateway writes it for a
        run it starts: its conversation (the sub-agent's instructions, then the task as the user's message)
        and its record, linked to the run that called it. Upserts: safe to retry."""
        run = opening.run
        messages = [
            Message(role="system", content=opening.instructions),
            Message(role="user", content=opening.input),
        ]
        await until_stored(lambda: self.store.put_messages(run.agent_run_id, 0, messages))
        await run_records.run_started(
            self.store.pool,
            agent_run_id=run.agent_run_id,
            purpose=run.purpose.slug,
            model=run.purpose.model,
            chat_id=None,
            user_id=run.user_id,
            input_summary=run.input_summary,
            parent_run_id=run.parent_run_id,
        )
        return SubRunOpened(agent_run_id=run.agent_run_id)

    @activity.defn(name=SAVE_SUB_RUN_RESULT)
    async def save_sub_run_result(self, ended: SubRunResult) -> SubRunSaved:
        """The calling run's tool result from its child run: the child's final answer (its structured
        output as JSON when it has one), or an error saying how the child ended without one."""
        answer = await self._final_answer(ended.child_run_id)
        if ended.status == "completed" and answer is not None:
            content, is_error = answer, False
        else:
            why = f": {ended.detail}" if ended.detail else ""
            content, is_error = f"{ended.call.name} ended {ended.status.value}{why}", True
            if answer:
                content += f"\nIts last words: {answer}"
        result = Message(
            role="tool", content=content, tool_call_id=ended.call.id, name=ended.call.name, is_error=is_error
        )
        await until_stored(lambda: self.store.put_message(ended.agent_run_id, ended.seq, result))
        usage = (
            await run_records.usage_of(self.store.pool, ended.child_run_id)
            if ended.status == "failed"
            else None
        )
        return SubRunSaved(tool_call_id=ended.call.id, result_seq=ended.seq, is_error=is_error, usage=usage)

    @activity.defn(name=SAVE_HANDOFF)
    async def save_handoff(self, handoff: HandoffInput) -> HandoffSaved:
        """A handoff's system message: the next agent's instructions, which from now on replace those the
        run started with (`instructions_in_force`). An upsert: safe to retry."""
        message = Message(role="system", name=HANDOFF_MESSAGE_NAME, content=handoff.instructions)
        await until_stored(lambda: self.store.put_message(handoff.agent_run_id, handoff.seq, message))
        return HandoffSaved(seq=handoff.seq)

    async def _final_answer(self, agent_run_id: str) -> str | None:
        """A run's last reply with words in it, or None."""
        conversation = await self.store.conversation(agent_run_id, 2**31 - 1)
        for message in reversed(conversation):
            if message.role == "assistant" and (message.output_json or message.content):
                return message.output_json or message.content
        return None


def instructions_in_force(conversation: list[Message]) -> list[Message]:
    """The conversation as the model is shown it: after a handoff, the latest handoff's instructions go
    first in place of the run's first ones, and earlier handoffs' are dropped; other system messages (the
    application context) stay where they are. A conversation without a handoff is returned as it is."""
    handoffs = [m for m in conversation if _is_handoff(m)]
    if not handoffs:
        return conversation
    first = conversation[0]
    first_instructions = first if first.role == "system" and not first.name else None
    rest = [m for m in conversation if m is not first_instructions and not _is_handoff(m)]
    # The name only marks the message in the store; providers are sent plain system instructions.
    return [handoffs[-1].model_copy(update={"name": None}), *rest]


def _is_handoff(message: Message) -> bool:
    return message.role == "system" and message.name == HANDOFF_MESSAGE_NAME


def _schema_problem(content: str, schema: dict[str, Any]) -> str | None:
    try:
        value = json.loads(content)
    except ValueError:
        value = content
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as err:
        return err.message
    except jsonschema.SchemaError as err:
        return f"the declared schema is invalid: {err.message}"
    return None


def _last_attempt() -> bool:
    info = activity.info()
    limit = info.retry_policy.maximum_attempts if info.retry_policy else 0
    return limit > 0 and info.attempt >= limit
