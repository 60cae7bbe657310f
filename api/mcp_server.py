"""`/mcp`: Keel's agents as tools for any MCP client (Claude Desktop, an IDE, another agent).

The gateway speaks MCP over streamable HTTP with the `mcp` SDK's low-level server and its session manager,
behind the same authentication as `/api` (api/auth.py). Each agent of the app is one tool, named as the
agent; calling it starts an ordinary Keel run through the run service (a chat of its own per call, owned by
the authenticated user: records, viewer, Web UI as for any run), follows the run's events, and answers
with the run's final text (and its validated object as `structuredContent` when the agent has an
`output_type`).

While the run goes on, its steps go back as progress notifications (when the call carries a progress
token). A run that waits for a person asks the MCP client through elicitation when the client declared it:
an approval as a form whose accept approves and decline denies, the agent's question as a text field. A
client that can't be asked, or a person who dismisses the form (`cancel`: no decision), gets the run id and
how to decide it instead; the run stays parked. Cancelling the call (`notifications/cancelled`, or the
client ending its session) cancels the run; a gateway shutting down cancels nothing, its runs go on.
"""

import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp_types as types
from fastapi import HTTPException
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from api.auth import User
from api.chat_request import ChatRequest
from api.gateway import Gateway
from api.run_service import RunService
from api.sse import WATCHERS
from keel.agent import Agent
from keel.contracts import (
    WAITING_EVENTS,
    ApprovalRequested,
    QuestionAsked,
    RunEvent,
    RunFinished,
    RunState,
    RunStatus,
    StepStarted,
    ToolCallRequested,
    ToolResultReady,
)
from keel.text import one_line

log = logging.getLogger("keel.api.mcp")

PATH = "/mcp"
# Where every tool result names its run.
RUN_ID_META = "keel/agent_run_id"
# The scope key under which the authenticated Keel user reaches the tool handlers.
_USER_KEY = "keel.user"
_DESCRIPTION_CHARS = 300
_INPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "message": {"type": "string", "minLength": 1, "description": "What you ask the agent"},
        "context": {
            "type": "object",
            "description": "Application context shown to the agent (as `context` in POST /api/chat)",
        },
    },
    "required": ["message"],
    "additionalProperties": False,
}
# An approval form: accept approves, decline denies; the reason is optional and goes into the audit.
_APPROVAL_FORM: dict[str, Any] = {
    "type": "object",
    "properties": {"reason": {"type": "string", "title": "Reason (optional)"}},
}
_QUESTION_FORM: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "string", "title": "Your answer", "minLength": 1}},
    "required": ["answer"],
}
DECLINED_ANSWER = "(the user declined to answer)"


class KeelMCP:
    """The MCP server of one gateway: its tools, its session manager and the `/mcp` route."""

    def __init__(self, app_state: Any, *, loopback_only: bool) -> None:
        self._app_state = app_state  # the gateway is set on it by the application's lifespan
        self._stopping = False
        self.server: Server[Any] = Server(
            "keel",
            title="Keel",
            instructions="Each tool is a Keel agent: send it a message, get its final answer.",
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
        )
        self._sessions = StreamableHTTPSessionManager(
            app=self.server,
            # Without authentication the gateway listens on loopback only: refuse other hosts and origins,
            # so a web page can't reach it through DNS rebinding.
            security_settings=_loopback_security() if loopback_only else None,
        )

    def route(self) -> Route:
        return Route(PATH, endpoint=_Authenticated(self._app_state, self._sessions.handle_request))

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The session manager, for as long as the gateway serves. Runs in flight are not cancelled by a
        shutdown: they are durable, and finish without this gateway."""
        async with self._sessions.run():
            try:
                yield
            finally:
                self._stopping = True

    @property
    def _gateway(self) -> Gateway:
        gateway: Gateway = self._app_state.gateway
        return gateway

    async def _list_tools(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[agent_tool(a) for a in self._gateway.app.agents.values()])

    async def _call_tool(
        self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        if params.name not in self._gateway.app.agents:
            raise MCPError(
                types.INVALID_PARAMS, f"no tool {params.name!r}: each tool is one of Keel's agents"
            )
        user = _user_of(ctx)
        service = RunService(self._gateway)
        try:
            if params.request_state is not None:  # a 2026-07-28 client answering what the run asked
                call = await _AgentCall.resumed(ctx, service, user, params)
                if call.parked is not None:
                    return call.parked
            else:
                request = _chat_request(params.name, params.arguments or {})
                call = _AgentCall(ctx, service, user, await service.start_run(request, user))
        except (ValidationError, HTTPException) as err:
            return _result(f"no run was started: {_why(err)}", None, is_error=True)
        try:
            return await call.run()
        except anyio.get_cancelled_exc_class():
            if not self._stopping:
                with anyio.CancelScope(shield=True):
                    await call.cancel()
            raise


def agent_tool(agent: Agent) -> types.Tool:
    """An agent as an MCP tool: its name, its title, a summary of its instructions, a message in, its final
    text (and its structured output's schema) out."""
    output_schema = agent.output_type.model_json_schema() if agent.output_type is not None else None
    return types.Tool(
        name=agent.name,
        title=agent.title or None,
        description=_description(agent),
        input_schema=_INPUT_SCHEMA,
        output_schema=output_schema,
    )


def _description(agent: Agent) -> str:
    about = agent.instructions if isinstance(agent.instructions, str) else ""
    head = f"Keel agent {agent.title or agent.name}"
    return one_line(f"{head}: {about}" if about else head, _DESCRIPTION_CHARS)


@dataclass
class _AgentCall:
    """One `tools/call`: the run it started, followed to its end or to a wait no one here can answer."""

    ctx: ServerRequestContext[Any]
    service: RunService
    user: User
    agent_run_id: str
    _tool_names: dict[str, str] = field(default_factory=dict)
    _asked: set[str] = field(default_factory=set)
    # Set by `resumed` when the person dismissed what they were asked: the answer to give.
    parked: types.CallToolResult | None = None

    @classmethod
    async def resumed(
        cls,
        ctx: ServerRequestContext[Any],
        service: RunService,
        user: User,
        params: types.CallToolRequestParams,
    ) -> "_AgentCall":
        """The call again, with the answers to its `InputRequiredResult`: the run its state names (404
        unless it is the caller's run of this agent), the answers delivered."""
        agent_run_id = params.request_state or ""
        state = await service.owned_state(agent_run_id, user)
        if state.purpose != params.name:
            raise HTTPException(404, f"no run {agent_run_id!r} of {params.name!r}")
        call = cls(ctx, service, user, agent_run_id)
        for key, answer in (params.input_responses or {}).items():
            if isinstance(answer, types.ElicitResult) and not await call.deliver(key, answer):
                call.parked = _parked(await service.owned_state(agent_run_id, user))
                break
        return call

    async def run(self) -> types.CallToolResult | types.InputRequiredResult:
        # First the run's id, so a client can watch it in the viewer (or cancel it) while it runs.
        await self.ctx.session.report_progress(0, None, f"started run {self.agent_run_id}")
        async for events in WATCHERS.follow(self.service.gw.run(self.agent_run_id)):
            for event in events:
                await self._report(event)
            if isinstance(events[-1], RunFinished):
                break
            if any(isinstance(e, WAITING_EVENTS) for e in events):
                parked = await self._ask_for_what_the_run_waits_for()
                if parked is not None:
                    return parked
        return await self._final_result()

    async def cancel(self) -> None:
        try:
            await self.service.cancel(self.agent_run_id, "the MCP client cancelled the tool call", self.user)
            log.info("cancelled run %s: its MCP call was cancelled", self.agent_run_id)
        except HTTPException:
            pass  # it had already finished

    # --- Progress ---

    async def _report(self, event: RunEvent) -> None:
        if isinstance(event, ToolCallRequested):
            self._tool_names[event.call.id] = event.call.name
        message = self._progress_message(event)
        if message is not None:
            # The event's seq only grows, as progress must; a no-op when the call sent no progress token.
            await self.ctx.session.report_progress(event.seq, None, message)

    def _progress_message(self, event: RunEvent) -> str | None:
        if isinstance(event, StepStarted):
            return f"step {event.step}"
        if isinstance(event, ToolCallRequested):
            return f"calling {event.call.name}"
        if isinstance(event, ToolResultReady):
            name = self._tool_names.get(event.tool_call_id, "a tool")
            return f"{name} denied" if event.denied else f"{name} finished"
        if isinstance(event, ApprovalRequested):
            return f"waiting for approval of {self._tool_names.get(event.tool_call_id, 'a tool call')}"
        if isinstance(event, QuestionAsked):
            return f"asking: {one_line(event.question, 200)}"
        if isinstance(event, RunFinished):
            return f"run {event.status.value}"
        return None

    # --- Waiting for people ---

    async def _ask_for_what_the_run_waits_for(
        self,
    ) -> types.CallToolResult | types.InputRequiredResult | None:
        """Ask the client for every decision the run waits for. None when all were given (the run goes
        on); the parked result when one can't be asked here; on a 2026-07-28 connection, which can't carry
        the server's requests, the questions as an `InputRequiredResult` whose state is the run's id."""
        state = await self.service.owned_state(self.agent_run_id, self.user)
        if state.status.is_final or state.status == RunStatus.running:
            return None
        asks = [a for a in _asks(state) if a.key not in self._asked]
        if state.status == RunStatus.waiting_for_tool_result or not self._elicitation_declared():
            return _parked(state)
        if not self.ctx.session.can_send_request:
            return _input_required(self.agent_run_id, asks)
        for ask in asks:
            self._asked.add(ask.key)
            answer = await self.ctx.session.elicit_form(
                ask.message, ask.form, related_request_id=self.ctx.request_id
            )
            if not await self.deliver(ask.key, answer):
                return _parked(state)
        return None

    def _elicitation_declared(self) -> bool:
        capabilities = self.ctx.session.client_capabilities
        return bool(capabilities and capabilities.elicitation is not None)

    async def deliver(self, key: str, answer: types.ElicitResult) -> bool:
        """Give the run the person's answer to ask `key`. False when they dismissed it (`cancel`: no
        decision, the run stays parked). For an approval, accept approves and decline denies; for a
        question, decline tells the agent the user declined to answer."""
        if answer.action == "cancel":
            return False
        self._asked.add(key)
        kind, _, tool_call_id = key.partition(":")
        if kind not in (_APPROVAL, _QUESTION):
            return True  # not something this server asked
        content = answer.content or {}
        decision: Awaitable[object]
        if kind == _APPROVAL:
            reason = content.get("reason") if answer.action == "accept" else None
            decision = self.service.decide(
                self.agent_run_id,
                tool_call_id,
                self.user,
                approved=answer.action == "accept",
                reason=str(reason) if reason else "decided in the MCP client",
            )
        else:
            text = str(content.get("answer") or "") if answer.action == "accept" else ""
            decision = self.service.answer(self.agent_run_id, text or DECLINED_ANSWER, self.user)
        await self._settle(decision)
        return True

    @staticmethod
    async def _settle(decision: Any) -> None:
        """Deliver a decision; one that lost a race (decided elsewhere, expired, the run ended) changes
        nothing, and the run's events say what happened."""
        try:
            await decision
        except HTTPException as err:
            log.info("an MCP client's decision was refused: %s", err.detail)

    # --- The answer ---

    async def _final_result(self) -> types.CallToolResult:
        state = await self.service.state(self.agent_run_id, self.user)
        text = await self.service.final_text(self.agent_run_id)
        if state.status != RunStatus.completed:
            why = f"run {self.agent_run_id} ended {state.status.value}" + (
                f": {state.detail}" if state.detail else ""
            )
            return _result(f"{why}\n\n{text}" if text else why, self.agent_run_id, is_error=True)
        if state.output is not None:
            answer = json.dumps(state.output, ensure_ascii=False)
            return _result(answer, self.agent_run_id, structured=state.output)
        return _result(text or "", self.agent_run_id)


_APPROVAL, _QUESTION = "approval", "question"


@dataclass(frozen=True)
class _Ask:
    """One decision the run waits for, as the client is asked it: `approval:<call id>` or
    `question:<call id>`, the message shown and the form to fill."""

    key: str
    message: str
    form: dict[str, Any]


def _asks(state: RunState) -> list[_Ask]:
    asks = [
        _Ask(
            f"{_APPROVAL}:{a.tool_call_id}",
            f"Agent run {state.agent_run_id} wants to call {a.tool_name} with "
            f"{json.dumps(a.arguments, ensure_ascii=False)}. Accept to approve it, decline to deny it.",
            _APPROVAL_FORM,
        )
        for a in state.pending_approvals
    ]
    if state.pending_question is not None:
        question = state.pending_question
        asks.append(_Ask(f"{_QUESTION}:{question.tool_call_id}", question.question, _QUESTION_FORM))
    return asks


def _input_required(agent_run_id: str, asks: list[_Ask]) -> types.InputRequiredResult:
    """The 2026-07-28 way to ask: the client fills the forms and calls the tool again with the answers and
    this state, the run's id (checked against the caller on the way back in, as any run id is)."""
    return types.InputRequiredResult(
        input_requests={
            ask.key: types.ElicitRequest(
                params=types.ElicitRequestFormParams(message=ask.message, requested_schema=ask.form)
            )
            for ask in asks
        },
        request_state=agent_run_id,
    )


def _parked(state: RunState) -> types.CallToolResult:
    """The run waits for a decision this call can't get: say which, and how to give it."""
    run = state.agent_run_id
    lines = [f"Run {run} is waiting ({state.status.value}); it stays parked until someone decides."]
    for approval in state.pending_approvals:
        arguments = json.dumps(approval.arguments, ensure_ascii=False)
        lines.append(
            f"- {approval.tool_name} {arguments} needs approval: POST /api/runs/{run}/approvals/"
            f'{approval.tool_call_id} with {{"approved": true}} or {{"approved": false}}, or '
            f"`keel approve {run} {approval.tool_call_id}` / `keel deny {run} {approval.tool_call_id}`."
        )
    if state.pending_question is not None:
        lines.append(
            f"- the agent asks: {state.pending_question.question!r}: answer with POST /api/runs/{run}/answer "
            'and {"text": "..."}.'
        )
    for pending in state.pending_tool_results:
        lines.append(
            f"- client tool {pending.tool_name} waits for its result: POST /api/runs/{run}/tool-results/"
            f"{pending.tool_call_id}."
        )
    lines.append(f"Follow it with GET /api/runs/{run}.")
    return _result("\n".join(lines), run, is_error=True)


def _result(
    text: str, run_id: str | None, *, is_error: bool = False, structured: dict[str, Any] | None = None
) -> types.CallToolResult:
    """A tool result; its `_meta` names the run (`keel/agent_run_id`), to find it in the viewer and /api."""
    return types.CallToolResult(
        content=[types.TextContent(text=text)],
        structured_content=structured,
        is_error=is_error,
        meta={RUN_ID_META: run_id} if run_id else None,
    )


def _chat_request(agent_name: str, arguments: dict[str, Any]) -> ChatRequest:
    """The tool call as the chat request every run starts from: one chat per call, its message first.
    Raises ValidationError for arguments that don't fit."""
    unknown = set(arguments) - {"message", "context"}
    if unknown:
        raise HTTPException(400, f"unknown arguments {sorted(unknown)}: a message and an optional context")
    message = arguments.get("message")
    if not isinstance(message, str):
        raise HTTPException(400, "`message` must be a string")
    return ChatRequest.model_validate(
        {
            "id": f"mcp-{uuid.uuid4()}",
            "messages": [
                {"id": f"msg-{uuid.uuid4()}", "role": "user", "parts": [{"type": "text", "text": message}]}
            ],
            "purpose": agent_name,
            "context": arguments.get("context"),
        }
    )


def _why(err: ValidationError | HTTPException) -> str:
    if isinstance(err, HTTPException):
        return str(err.detail)
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in err.errors())


def _user_of(ctx: ServerRequestContext[Any]) -> User:
    request = ctx.request
    user = request.scope.get(_USER_KEY) if isinstance(request, Request) else None
    if not isinstance(user, User):  # every request passed _Authenticated; this would be a wiring bug
        raise MCPError(types.INTERNAL_ERROR, "the request was not authenticated")
    return user


class _Authenticated:
    """The session manager's ASGI app behind Keel's authentication: 401 as on /api without valid
    credentials. The session is bound to the credential that opened it (the SDK compares the principal)."""

    def __init__(self, app_state: Any, app: Any) -> None:
        self._app_state = app_state
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        bearer = credentials.strip() if scheme.lower() == "bearer" and credentials.strip() else None
        try:
            user = await self._app_state.auth.authenticate(
                self._app_state.gateway.store.pool, bearer, headers.get("x-api-key")
            )
        except HTTPException as err:
            response = JSONResponse({"detail": err.detail}, err.status_code, headers=err.headers)
            await response(scope, receive, send)
            return
        principal = AccessToken(token="", client_id=user.id or "local", scopes=[], subject=user.id)
        scope = {**scope, _USER_KEY: user, "user": AuthenticatedUser(principal)}
        await self._app(scope, receive, send)


def _loopback_security() -> TransportSecuritySettings:
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*", "127.0.0.1", "localhost", "[::1]"],
        allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
    )
