"""The run service: what the gateway does to runs, between its routes and Temporal and PostgreSQL.

Routes (api/chat.py, api/runs.py, api/viewer.py) parse a request, call one method here and shape the
answer; the Temporal calls and SQL behind them are here, or in what this builds on: the gateway's handles
and error mapping (api/gateway.py), the double-texting policies (api/double_texting.py) and how any run
starts (keel/run_start.py). Every method takes the user asking: a run or chat that is not theirs is 404,
exactly as an unknown one. Refusals are HTTPExceptions, as the gateway's helpers already raise them.
"""

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Annotated, Any, TypeVar, overload

import asyncpg
from fastapi import Depends, HTTPException
from pydantic import BaseModel
from temporalio.client import WorkflowExecutionDescription, WorkflowExecutionStatus, WorkflowUpdateFailedError
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from api.auth import User, check_owner, no_run, require_chat
from api.chat_request import BadChatRequest, ChatRequest, RunRequest, pending_answers, to_conversation
from api.double_texting import make_room, queue_behind
from api.gateway import Gateway, GatewayDep, http_error, is_run_id, refusal
from api.limits import check_run_start
from api.run_stream import StreamStart, follow_run, pause_after
from keel.agent import Agent, RunContext
from keel.app import UnknownAgent
from keel.contracts import (
    ANSWER_UPDATE,
    APPROVAL_UPDATE,
    CANCEL_SIGNAL,
    EVENTS_QUERY,
    TOOL_RESULT_UPDATE,
    WAITING_EVENTS,
    AgentRunInput,
    ApprovalDecision,
    ApprovalRecord,
    CancelRequest,
    Message,
    RunEvent,
    RunFinished,
    RunState,
    RunStatus,
    TextProduced,
    ToolResultSubmission,
    UserAnswer,
)
from keel.observability import metrics
from keel.run_start import first_messages, record_start, run_input, start_run
from keel.storage import idempotency, run_records
from keel.storage.store import RunStore
from keel.webhooks import endpoint_problem, run_endpoints

log = logging.getLogger("keel.api")
Result = TypeVar("Result")


@dataclass(frozen=True)
class RunService:
    """One per request (`RunServiceDep`), over the gateway's connections."""

    gw: Gateway

    # --- Starting a run (POST /api/chat, the user's message last) ---

    async def start_run(self, request: ChatRequest, user: User) -> str:
        """Start a run of the request's agent on its conversation, under the chat's double-texting policy.
        Returns the run's id."""
        agent, run, messages = self._new_run(request, user)
        regenerating = request.messageId if request.trigger == "regenerate-message" else None
        try:
            # One start at a time per chat, on every gateway: its owner, its active runs and this start are
            # decided together, so two requests at once never both find the chat free (or unowned).
            async with self.gw.store.chat_lock(request.id) as chat:
                await require_chat(chat.pool, request.id, user, to_start=True)
                check_run_start(self.gw.settings, user)
                run.queued_behind = await make_room(request.id, self.gw, chat, regenerating)
                await record_start(chat, run, messages)
                await self._launch(chat, run)
        except asyncpg.DataError:
            raise  # the client's own data, not an outage: answered 400 (api/limits.py)
        except (OSError, asyncpg.PostgresError) as err:
            raise HTTPException(503, f"PostgreSQL is unavailable, no run was started: {err}") from None
        metrics.RUNS_STARTED.labels(agent.name).inc()
        log.info(
            "started run %s (purpose %s, chat %s)",
            run.agent_run_id,
            agent.name,
            request.id,
            extra={"agent_run_id": run.agent_run_id, "purpose": agent.name},
        )
        return run.agent_run_id

    def _new_run(
        self, request: ChatRequest | RunRequest, user: User
    ) -> tuple[Agent, AgentRunInput, list[Message]]:
        """The request's agent, the new run's input and its first messages; 400 for an unknown agent or a
        conversation that can't be one, 500 when the app's own instructions fail. A chat's request names
        its chat and may declare client tools; a server's (POST /api/runs) its metadata and webhook."""
        chat = request if isinstance(request, ChatRequest) else None
        server = request if isinstance(request, RunRequest) else None
        try:
            agent = self.gw.app.agent(request.purpose) if request.purpose else self.gw.app.default_agent
            conversation = to_conversation(request)
        except (UnknownAgent, BadChatRequest) as err:
            raise HTTPException(400, str(err)) from None
        context = RunContext(
            context=request.context or {}, user_id=user.id, chat_id=chat.id if chat else None
        )
        try:
            # Its sub-agents' instructions are written from the same context, as its own are.
            spec = agent.spec(
                self.gw.settings.model,
                request.requested_budgets(),
                chat.stop_after_tool_calls if chat else None,
                run=context,
                agents=self.gw.app.reachable,
            )
            messages = first_messages(agent, context, conversation)
        except Exception as err:  # the app's own function: its failure is the deployment's, not the client's
            log.exception("the instructions of agent %s failed", agent.name)
            raise HTTPException(
                500, f"agent {agent.name!r} could not write its instructions: {err}"
            ) from None
        run = run_input(
            spec,
            messages,
            chat_id=context.chat_id,
            user_id=user.id,
            client_tools=[*agent.client_tools, *(chat.client_tools() if chat else [])],
            heavy_task_queue=self.gw.settings.heavy_task_queue,
            webhooks=run_endpoints(
                server.webhook_url if server else None, self.gw.settings.webhook_endpoints
            ),
            limited_routes=list(self.gw.settings.provider_limits),
            metadata=server.metadata if server else None,
        )
        return agent, run, messages

    # --- Starting a run server to server (POST /api/runs) ---

    async def start_server_run(
        self, request: RunRequest, user: User, idempotency_key: str | None
    ) -> tuple[str, RunStatus, bool]:
        """Start a run outside any chat; with an Idempotency-Key, the run the key already names (for the same
        body) instead. Returns the run's id, its status, and whether it was started before this request."""
        self._check_webhook_url(request.webhook_url)
        agent, run, messages = self._new_run(request, user)
        check_run_start(self.gw.settings, user)
        replayed = False
        if idempotency_key is not None:
            claim = await self._claim(idempotency_key, request, user, run.agent_run_id)
            replayed = not claim.claimed
            if replayed:
                state = await self._state_if_started(claim.agent_run_id)
                if state is not None:
                    return claim.agent_run_id, state.status, True
                # The request that claimed the key has not started it yet, or never will (its gateway went
                # away): start it, under the same id, from this request's identical body; only one start
                # of that id ever succeeds.
                run = run.model_copy(update={"agent_run_id": claim.agent_run_id})
        try:
            await record_start(self.gw.store, run, messages)
        except (OSError, asyncpg.PostgresError) as err:
            raise HTTPException(503, f"PostgreSQL is unavailable, no run was started: {err}") from None
        if not await self._launch_once(run):
            # Another request with the key started it a moment ago (the one that claimed the key may be
            # this one): still this request's answer.
            return run.agent_run_id, RunStatus.running, replayed
        metrics.RUNS_STARTED.labels(agent.name).inc()
        log.info(
            "started run %s (purpose %s, server to server)",
            run.agent_run_id,
            agent.name,
            extra={"agent_run_id": run.agent_run_id, "purpose": agent.name},
        )
        return run.agent_run_id, RunStatus.running, replayed

    def _check_webhook_url(self, url: str | None) -> None:
        """422 for a `webhook_url` this gateway will not deliver to: not http(s), not public (unless
        KEEL_WEBHOOK_ALLOW_PRIVATE), or no secret to sign with (Keel never sends a webhook unsigned)."""
        settings = self.gw.settings
        if url is None:
            return
        if not settings.webhook_secrets:
            raise HTTPException(
                422,
                "webhook_url: this gateway has no KEEL_WEBHOOK_SECRET to sign webhooks with, so it takes none",
            )
        if problem := endpoint_problem(url, allow_private=settings.webhook_allow_private):
            raise HTTPException(422, f"webhook_url: {problem}")

    async def _claim(self, key: str, request: RunRequest, user: User, run_id: str) -> idempotency.Claim:
        ttl = timedelta(hours=self.gw.settings.idempotency_ttl_hours)
        digest = idempotency.body_digest(request.model_dump(mode="json", exclude_unset=True))
        try:
            return await idempotency.claim(self.gw.store.pool, user.id or "", key, digest, run_id, ttl)
        except idempotency.KeyReused:
            raise HTTPException(
                422, f"Idempotency-Key {key!r} was already used with another request body"
            ) from None
        except (OSError, asyncpg.PostgresError) as err:
            raise HTTPException(503, f"PostgreSQL is unavailable, no run was started: {err}") from None

    async def _state_if_started(self, agent_run_id: str) -> RunState | None:
        try:
            return await self.gw.state(agent_run_id)
        except HTTPException as err:
            if err.status_code == 404:
                return None
            raise

    async def _launch_once(self, run: AgentRunInput) -> bool:
        """Start the run's workflow unless it exists already (a request with the same key started it a moment
        ago): never a second execution under the run's id, even after the first one ended. True when this
        call started it."""
        try:
            await start_run(self.gw.temporal, run, self.gw.settings.task_queue, once=True)
        except WorkflowAlreadyStartedError:
            return False
        except RPCError as err:
            why = f"Temporal is unavailable, no run was started: {err.message}"
            await run_records.run_not_started(self.gw.store.pool, run.agent_run_id, why)
            raise HTTPException(503, why) from None
        return True

    async def wait(self, agent_run_id: str, user: User, timeout_s: float) -> RunState:
        """The run's state once it is final or waits for a person, or after `timeout_s` as it is then.

        A run whose model is answering takes the `state` query only when its workflow task ends or is
        extended (about 3 s): its state as it is then, once the time is up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        state = await self.owned_state(agent_run_id, user)
        if not _settled(state) and (remaining := deadline - loop.time()) > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    async for _ in follow_run(self.gw.run(agent_run_id), after=state.last_event_seq):
                        if _settled(await self.gw.state(agent_run_id)):
                            break
            state = await self.owned_state(agent_run_id, user)
        return await self._with_output(state)

    async def _launch(self, chat: RunStore, run: AgentRunInput) -> None:
        """Start the run's workflow (and queue it, under `enqueue`). If Temporal refuses, the run never
        started: its record says so and the chat forgets it, so nothing is left claiming it runs."""
        try:
            await start_run(self.gw.temporal, run, self.gw.settings.task_queue)
        except RPCError as err:
            why = f"Temporal is unavailable, no run was started: {err.message}"
            await run_records.run_not_started(chat.pool, run.agent_run_id, why)
            await chat.forget_chat_run(run.agent_run_id)
            raise HTTPException(503, why) from None
        if run.queued_behind:
            try:
                await queue_behind(self.gw, chat, run.chat_id or "", run.queued_behind, run.agent_run_id)
            except RPCError as err:
                raise HTTPException(
                    503, f"run {run.agent_run_id} started but could not be queued: {err.message}"
                ) from None

    # --- Continuing one (POST /api/chat, the assistant's message last: the AI SDK answering the run) ---

    async def continue_run(self, request: ChatRequest, user: User) -> tuple[str, StreamStart]:
        """Deliver the client's answers to the run the last assistant message belongs to. Returns the run's
        id and where its stream goes on from."""
        state = await self._run_of_chat(request, user)
        approvals, results = self._answers(request, user)
        events = await self._events(state.agent_run_id)
        last_answered = _last_answered(state.agent_run_id, events, approvals, results)
        finished = state.status.is_final or await self._deliver_answers(state, approvals, results)
        # The segment after the pause at the waiting events this message answers (earlier ones were streamed
        # already). A run that has finished (cancelled, out of time) is streamed to its end instead: the client
        # learns the final state, and every call it answered gets its outcome (denied, if never decided).
        return state.agent_run_id, StreamStart(
            after_pause=pause_after(events, last_answered), to_the_end=finished
        )

    async def _run_of_chat(self, request: ChatRequest, user: User) -> RunState:
        agent_run_id = request.messageId or request.messages[-1].id
        if not is_run_id(agent_run_id):
            raise HTTPException(
                400, "the last message is the assistant's but does not name a run to continue"
            )
        state = await self.owned_state(agent_run_id, user)
        if state.chat_id != request.id:
            raise HTTPException(404, f"no run {agent_run_id!r} in chat {request.id!r}")
        return state

    @staticmethod
    def _answers(
        request: ChatRequest, user: User
    ) -> tuple[list[ApprovalDecision], list[ToolResultSubmission]]:
        """The approvals and tool results the last message carries; 400 when it carries none."""
        approvals, results = pending_answers(request.messages[-1])
        if user.name:  # the authenticated approver, not the client's say-so
            approvals = [a.model_copy(update={"approver": user.name}) for a in approvals]
        if not approvals and not results:
            raise HTTPException(
                400, "the last message answers nothing: no approval response or tool result in it"
            )
        return approvals, results

    async def _events(self, agent_run_id: str) -> list[RunEvent]:
        events: list[RunEvent] = await self.gw.run(agent_run_id).query(
            EVENTS_QUERY, 0, result_type=list[RunEvent]
        )
        return events

    async def _deliver_answers(
        self, state: RunState, approvals: list[ApprovalDecision], results: list[ToolResultSubmission]
    ) -> bool:
        """Send the run the answers it still waits for. True when it turns out to have finished meanwhile (a
        cancel won the race), so its stream should go to its end; answers it has already are skipped."""
        decided = {a.tool_call_id for a in state.approvals if a.decided_at}
        try:
            for decision in approvals:
                if decision.tool_call_id not in decided:
                    await self._update(state.agent_run_id, APPROVAL_UPDATE, decision)
            for result in results:
                await self._deliver_result(state, result)
        except HTTPException as err:
            if err.status_code == 409 and "has already finished" in str(err.detail):  # see `refusal`
                return True
            raise
        return False

    async def _deliver_result(self, state: RunState, result: ToolResultSubmission) -> None:
        """A tool result from the chat: the user's answer to the run's question, or a client tool's output
        the run waits for (anything else it no longer waits for)."""
        if state.pending_question and state.pending_question.tool_call_id == result.tool_call_id:
            text = result.output if isinstance(result.output, str) else json.dumps(result.output)
            answer = UserAnswer(text=result.error or text or "(no answer)")
            await self._update(state.agent_run_id, ANSWER_UPDATE, answer)
        elif any(p.tool_call_id == result.tool_call_id for p in state.pending_tool_results):
            await self._update(state.agent_run_id, TOOL_RESULT_UPDATE, result)

    # --- Deciding, answering, cancelling (POST /api/runs/{id}/...) ---

    # A run's sub-agents wait for people through it too: what the run itself does not wait for goes to the
    # child run (or grandchild) that does, so the parent's endpoints answer its whole tree.

    async def decide(
        self, agent_run_id: str, tool_call_id: str, user: User, *, approved: bool, reason: str | None
    ) -> ApprovalRecord:
        """Approve or deny a tool call the run, or one of its sub-agents' runs, waits for; the decision
        names the authenticated user."""
        decision = ApprovalDecision(
            tool_call_id=tool_call_id, approved=approved, reason=reason, approver=user.name or "api"
        )
        await self._require_run(agent_run_id, user)
        try:
            return await self._update(agent_run_id, APPROVAL_UPDATE, decision, ApprovalRecord)
        except HTTPException as refused:
            if refused.status_code != 404:
                raise
            child = await self._one_below(
                agent_run_id,
                refused,
                lambda s: any(a.tool_call_id == tool_call_id for a in s.pending_approvals),
            )
            return await self._update(child, APPROVAL_UPDATE, decision, ApprovalRecord)

    async def answer(self, agent_run_id: str, text: str, user: User, tool_call_id: str | None = None) -> str:
        """Answer the question the run asked, or one its sub-agents' runs asked (the one asking
        `tool_call_id`, when named). Returns the id of the run that took the answer."""
        await self._require_run(agent_run_id, user)

        def asks(state: RunState) -> bool:
            question = state.pending_question
            return question is not None and tool_call_id in (None, question.tool_call_id)

        target = agent_run_id
        if tool_call_id is not None and not asks(await self.gw.state(agent_run_id)):
            refused = HTTPException(
                404, f"run {agent_run_id!r} asked no question in tool call {tool_call_id!r}"
            )
            target = await self._one_below(agent_run_id, refused, asks)
        try:
            await self._update(target, ANSWER_UPDATE, UserAnswer(text=text))
        except HTTPException as refused:
            if refused.status_code != 409 or target != agent_run_id:
                raise
            target = await self._one_below(agent_run_id, refused, asks)
            await self._update(target, ANSWER_UPDATE, UserAnswer(text=text))
        return target

    async def submit_tool_result(self, agent_run_id: str, result: ToolResultSubmission, user: User) -> None:
        """The output (or the error) of a client-side tool call the run, or one of its sub-agents' runs,
        waits for."""
        await self._require_run(agent_run_id, user)
        try:
            await self._update(agent_run_id, TOOL_RESULT_UPDATE, result)
        except HTTPException as refused:
            if refused.status_code != 404:
                raise
            call_id = result.tool_call_id
            child = await self._one_below(
                agent_run_id,
                refused,
                lambda s: any(p.tool_call_id == call_id for p in s.pending_tool_results),
            )
            await self._update(child, TOOL_RESULT_UPDATE, result)

    async def _one_below(
        self, agent_run_id: str, refused: HTTPException, waits: Callable[[RunState], bool]
    ) -> str:
        """The one run below this one (its sub-agents' runs, theirs...) that `waits` for what was sent;
        the run's own refusal when none does, a 409 when several do and the request did not say which."""
        found = await self._runs_below(agent_run_id, waits)
        if not found:
            raise refused
        if len(found) > 1:
            raise HTTPException(
                409, f"several sub-agent runs of {agent_run_id!r} wait for this: {', '.join(found)}; name one"
            )
        return found[0]

    async def _runs_below(self, agent_run_id: str, waits: Callable[[RunState], bool]) -> list[str]:
        """The runs below this one, still running, that `waits` holds for: children first, then theirs."""
        found: list[str] = []
        parents = [await self.gw.state(agent_run_id)]
        while parents:
            ids = [r.agent_run_id for s in parents for r in s.sub_runs if r.status is RunStatus.running]
            children = list(await asyncio.gather(*(self.gw.state(run_id) for run_id in ids)))
            found += [child.agent_run_id for child in children if waits(child)]
            parents = children
        return found

    async def cancel(self, agent_run_id: str, reason: str | None, user: User) -> None:
        """Ask the run to stop; 409 when it has already finished.

        Whose run it is and whether it still runs come from Temporal's own record of it (its memo and
        status), not the `state` query: a run in the middle of a model call answers queries only when its
        workflow task ends, and a cancel must not wait for that."""
        described = await self.owned_execution(agent_run_id, user)
        if described.status != WorkflowExecutionStatus.RUNNING:
            state = await self.gw.state(agent_run_id)
            raise HTTPException(409, f"run {agent_run_id!r} has already finished ({state.status.value})")
        try:
            await self.gw.run(agent_run_id).signal(CANCEL_SIGNAL, CancelRequest(reason=reason))
        except RPCError as err:
            raise http_error(err, agent_run_id) from None
        await self.gw.interrupt(agent_run_id)

    @overload
    async def _update(self, agent_run_id: str, update: str, arg: BaseModel) -> None: ...

    @overload
    async def _update(
        self, agent_run_id: str, update: str, arg: BaseModel, result_type: type[Result]
    ) -> Result: ...

    async def _update(
        self, agent_run_id: str, update: str, arg: BaseModel, result_type: type[Result] | None = None
    ) -> Result | None:
        """The run's update `update`; its refusal as the HTTP error a client can act on."""
        try:
            result: Result | None = await self.gw.run(agent_run_id).execute_update(
                update, arg, result_type=result_type
            )
            return result
        except (WorkflowUpdateFailedError, RPCError) as err:
            raise await refusal(self.gw, err, agent_run_id) from None

    # --- Reading ---

    async def owned_execution(self, agent_run_id: str, user: User) -> WorkflowExecutionDescription:
        """Temporal's own record of the run (its status, its memo), which the server answers even while the
        run is in the middle of a workflow task; 404 unless the run is the user's."""
        try:
            described = await self.gw.run(agent_run_id).describe()
        except RPCError as err:
            raise http_error(err, agent_run_id) from None
        if not user.owns((await described.memo()).get("user_id")):
            raise no_run(agent_run_id)
        return described

    async def _require_run(self, agent_run_id: str, user: User) -> None:
        """404 unless the run exists and is the user's (admins: any run, and Temporal says whether it
        exists). From Temporal's record, which the server answers alone, not the `state` query: that is a
        trip through the worker (and a replay, for a parked run evicted from its cache) before the
        decision makes its own."""
        if not user.admin:
            await self.owned_execution(agent_run_id, user)

    async def owned_state(self, agent_run_id: str, user: User) -> RunState:
        """The run's state (its `state` query); 404 unless the run is the user's."""
        return check_owner(user, await self.gw.state(agent_run_id))

    async def state(self, agent_run_id: str, user: User) -> RunState:
        """The run's state with its structured output (`output`): the workflow knows only where the
        validated answer is stored, with its reply, so the object itself never passes through Temporal."""
        return await self._with_output(await self.owned_state(agent_run_id, user))

    async def _with_output(self, state: RunState) -> RunState:
        if state.output_seq is None:
            return state
        reply = (await self.gw.store.messages(state.agent_run_id, [state.output_seq])).get(state.output_seq)
        return state.model_copy(update={"output": reply.output if reply is not None else None})

    async def final_text(self, agent_run_id: str) -> str | None:
        """The text of the run's last reply (the partial one of a run cancelled mid-reply), or None when it
        wrote none: a run's answer for a client that wants it whole (api/mcp_server.py). Call it after
        checking the run is the user's."""
        events = await self._events(agent_run_id)
        seqs = [e.message_seq for e in events if isinstance(e, TextProduced)]
        seqs += [
            e.partial_message_seq for e in events if isinstance(e, RunFinished) and e.partial_message_seq
        ]
        if not seqs:
            return None
        reply = (await self.gw.store.messages(agent_run_id, [seqs[-1]])).get(seqs[-1])
        return reply.content if reply is not None else None

    async def check_chat(self, chat_id: str, user: User) -> None:
        """404 unless the chat is the user's (or new)."""
        await require_chat(self.gw.store.pool, chat_id, user)

    async def list_runs(self, filters: run_records.RunFilter, user: User) -> list[dict[str, Any]]:
        """Run records, newest first. A user lists only their own runs (asking for another's finds none).
        With only a chat named, the chat's runs from `chat_runs`, runs from before run records included."""
        if not user.admin:
            if filters.user_id is not None and filters.user_id != user.id:
                return []
            filters = replace(filters, user_id=user.id)
        others = (filters.status, filters.purpose, filters.user_id, filters.since, filters.until)
        if filters.chat_id is not None and not any(others):
            return await run_records.chat_runs(self.gw.store.pool, filters.chat_id, filters.limit)
        return await run_records.list_runs(self.gw.store.pool, filters)

    async def timeline(self, agent_run_id: str, user: User) -> dict[str, Any]:
        """The run's record with its LLM calls and tool runs, the runs its sub-agents started below it
        (`descendants`) and the tree's usage; 404 when there is none, or it is not theirs."""
        found = (
            await run_records.timeline(self.gw.store.pool, agent_run_id) if is_run_id(agent_run_id) else None
        )
        if found is None or not user.owns(found["run"].get("user_id")):
            raise HTTPException(404, f"no records of run {agent_run_id!r}")
        # Its sub-agents' runs below it, and the usage of the whole tree (each LLM call once).
        found["descendants"] = await run_records.descendants(self.gw.store.pool, agent_run_id)
        tree = [agent_run_id, *(row["agent_run_id"] for row in found["descendants"])]
        found["tree_usage"] = await run_records.own_usage(self.gw.store.pool, tree)
        return found


def _settled(state: RunState) -> bool:
    """Whether a run is where a waiting caller wants to hear of it: ended, or waiting for someone."""
    return state.status.is_final or state.status in (
        RunStatus.waiting_for_approval,
        RunStatus.waiting_for_input,
        RunStatus.waiting_for_tool_result,
    )


def _last_answered(
    agent_run_id: str,
    events: list[RunEvent],
    approvals: list[ApprovalDecision],
    results: list[ToolResultSubmission],
) -> int:
    """The seq of the last waiting event the answers answer; 404 when the run never waited for any."""
    answered = [a.tool_call_id for a in approvals] + [r.tool_call_id for r in results]
    waiting = {e.tool_call_id: e.seq for e in events if isinstance(e, WAITING_EVENTS)}
    known = [waiting[call_id] for call_id in answered if call_id in waiting]
    if not known:
        raise HTTPException(404, f"run {agent_run_id!r} never waited for {', '.join(answered)}")
    return max(known)


def _run_service(gw: GatewayDep) -> RunService:
    return RunService(gw)


RunServiceDep = Annotated[RunService, Depends(_run_service)]
