"""Keel's Python client (`keel.client`): the gateway from another backend, typed with the gateway's own
models, synchronous (`KeelClient`) and for asyncio (`AsyncKeelClient`).

- Runs: start one server to server (with an Idempotency-Key), read its state, wait for it (a long poll),
  approve, deny, answer, cancel, and read its UI message stream (`events`).
- Schedules and webhook deliveries.
- Chatting the way `useChat` does (`ChatClient`, what `keel run` is built on): it streams `POST /api/chat`,
  assembles the assistant message from the chunks (`AssistantMessage`, like the AI SDK's
  `readUIMessageStream`), and answers a waiting run the AI SDK way: the history plus the assistant message
  with approval responses or tool outputs added, posted again.

Each group of calls is written once per transport, in a pair of classes (`RunCalls`/`AsyncRunCalls`...) over
the client's `http`; the request itself is built once, for both. A refusal raises ChatError with the
gateway's own explanation.
"""

import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import TypeAdapter

from keel.api_models import Accepted, RunStarted
from keel.contracts import ApprovalRecord, RunState, RunStatus
from keel.schedules import ScheduleRequest, ScheduleView
from keel.ui_protocol import (
    ErrorChunk,
    FinishChunk,
    RunDataChunk,
    StartChunk,
    TextDeltaChunk,
    TextStartChunk,
    TextUIPart,
    ToolApproval,
    ToolApprovalRequestChunk,
    ToolInputAvailableChunk,
    ToolOutputAvailableChunk,
    ToolOutputDeniedChunk,
    ToolOutputErrorChunk,
    ToolUIPart,
    UIMessage,
    UIMessageChunk,
    decode,
)
from keel.webhooks import WebhookDeliveryView


@dataclass
class AssistantMessage:
    """The assistant message of one run, assembled across the streams that carried it."""

    id: str = ""
    parts: list[TextUIPart | ToolUIPart] = field(default_factory=list)
    status: str = "running"
    detail: str | None = None
    finish_reason: str | None = None
    errors: list[str] = field(default_factory=list)
    # Each text part by the id its chunks name it with (a later `text-start` of the same id wins).
    _texts: dict[str, TextUIPart] = field(default_factory=dict, repr=False)

    def tools(self) -> dict[str, ToolUIPart]:
        return {p.tool_call_id: p for p in self.parts if isinstance(p, ToolUIPart)}

    def apply(self, chunk: UIMessageChunk) -> None:
        tools = self.tools()
        match chunk:
            case StartChunk(message_id=message_id):
                self.id = message_id or self.id
            case TextStartChunk(id=text_id):
                self._texts[text_id] = TextUIPart(text="")
                self.parts.append(self._texts[text_id])
            case TextDeltaChunk(id=text_id, delta=delta):
                self._texts[text_id].text += delta
            case ToolInputAvailableChunk():
                self.parts.append(
                    ToolUIPart(
                        type=f"tool-{chunk.tool_name}",
                        tool_call_id=chunk.tool_call_id,
                        state="input-available",
                        input=chunk.input,
                    )
                )
            case ToolApprovalRequestChunk(tool_call_id=call_id, approval_id=approval_id):
                part = tools[call_id]
                part.state, part.approval = "approval-requested", ToolApproval(id=approval_id)
            case ToolOutputAvailableChunk(tool_call_id=call_id, output=output, preliminary=True):
                # A sub-agent's progress so far (SubRunProgress): kept, each replacing the one before, and
                # the call stays unfinished — a part posted back as output-available would be its result.
                tools[call_id].output = output
                _mark_preliminary(tools[call_id], True)
            case ToolOutputAvailableChunk(tool_call_id=call_id, output=output):
                tools[call_id].state, tools[call_id].output = "output-available", output
                _mark_preliminary(tools[call_id], False)
            case ToolOutputErrorChunk(tool_call_id=call_id, error_text=error_text):
                tools[call_id].state, tools[call_id].error_text = "output-error", error_text
            case ToolOutputDeniedChunk(tool_call_id=call_id):
                tools[call_id].state = "output-denied"
            case RunDataChunk(data=run):
                self.status, self.detail = run.status, run.detail
            case ErrorChunk(error_text=error_text):
                self.errors.append(error_text)
            case FinishChunk(finish_reason=finish_reason):
                self.finish_reason = finish_reason

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.parts if isinstance(p, TextUIPart))

    def as_ui_message(self) -> dict[str, Any]:
        """The message as `useChat` posts it back: its text and tool parts, with the answers added to them."""
        return UIMessage(id=self.id, role="assistant", parts=list(self.parts)).wire()


def _mark_preliminary(part: ToolUIPart, preliminary: bool) -> None:
    """`preliminary: true` on a part whose output is progress, as the AI SDK's client marks it; gone once
    the call has its result. (A part's fields it doesn't declare are its extra ones.)"""
    extra = part.model_extra if part.model_extra is not None else {}
    if preliminary:
        extra["preliminary"] = True
    else:
        extra.pop("preliminary", None)


class ChatError(Exception):
    """The gateway refused a request; the message is its own explanation."""


# --- Schedules (/api/schedules): the calls of both clients, typed with keel.schedules' models ---


class ScheduleCalls:
    """Create, list, show, pause, unpause and delete schedules, over a client's `http` (sync)."""

    http: httpx.Client

    def create_schedule(self, request: ScheduleRequest) -> ScheduleView:
        return ScheduleView.model_validate(
            _checked(self.http.post("/api/schedules", json=request.model_dump(exclude_none=True))).json()
        )

    def list_schedules(self) -> list[ScheduleView]:
        return _SCHEDULES.validate_python(_checked(self.http.get("/api/schedules")).json())

    def get_schedule(self, schedule_id: str) -> ScheduleView:
        return ScheduleView.model_validate(_checked(self.http.get(f"/api/schedules/{schedule_id}")).json())

    def pause_schedule(self, schedule_id: str, *, paused: bool = True) -> ScheduleView:
        """Pause it (`paused=False`: unpause it)."""
        verb = "pause" if paused else "unpause"
        return ScheduleView.model_validate(
            _checked(self.http.post(f"/api/schedules/{schedule_id}/{verb}")).json()
        )

    def delete_schedule(self, schedule_id: str) -> None:
        _checked(self.http.delete(f"/api/schedules/{schedule_id}"))


class AsyncScheduleCalls:
    """The same calls over an `httpx.AsyncClient`."""

    http: httpx.AsyncClient

    async def create_schedule(self, request: ScheduleRequest) -> ScheduleView:
        response = await self.http.post("/api/schedules", json=request.model_dump(exclude_none=True))
        return ScheduleView.model_validate(_checked(response).json())

    async def list_schedules(self) -> list[ScheduleView]:
        return _SCHEDULES.validate_python(_checked(await self.http.get("/api/schedules")).json())

    async def get_schedule(self, schedule_id: str) -> ScheduleView:
        response = await self.http.get(f"/api/schedules/{schedule_id}")
        return ScheduleView.model_validate(_checked(response).json())

    async def pause_schedule(self, schedule_id: str, *, paused: bool = True) -> ScheduleView:
        """Pause it (`paused=False`: unpause it)."""
        verb = "pause" if paused else "unpause"
        response = await self.http.post(f"/api/schedules/{schedule_id}/{verb}")
        return ScheduleView.model_validate(_checked(response).json())

    async def delete_schedule(self, schedule_id: str) -> None:
        _checked(await self.http.delete(f"/api/schedules/{schedule_id}"))


_SCHEDULES = TypeAdapter(list[ScheduleView])


def _checked(response: httpx.Response) -> httpx.Response:
    """The response, or ChatError with the gateway's own explanation of a refusal."""
    if response.status_code >= 400:
        raise ChatError(_detail(response))
    return response


# --- end of the schedules block ---


# --- Webhook deliveries (/api/webhooks/deliveries): the calls of both clients, typed with keel.webhooks ---


class WebhookCalls:
    """List webhook deliveries and send one again, over a client's `http` (sync)."""

    http: httpx.Client

    def list_webhook_deliveries(
        self, *, agent_run_id: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[WebhookDeliveryView]:
        params = _present(agent_run_id=agent_run_id, status=status, limit=limit)
        return _DELIVERIES.validate_python(_checked(self.http.get(_DELIVERIES_PATH, params=params)).json())

    def redeliver_webhook(self, webhook_id: str) -> WebhookDeliveryView:
        """Send a delivery again, under the same webhook-id."""
        response = self.http.post(f"{_DELIVERIES_PATH}/{webhook_id}/redeliver")
        return WebhookDeliveryView.model_validate(_checked(response).json())


class AsyncWebhookCalls:
    """The same calls over an `httpx.AsyncClient`."""

    http: httpx.AsyncClient

    async def list_webhook_deliveries(
        self, *, agent_run_id: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[WebhookDeliveryView]:
        params = _present(agent_run_id=agent_run_id, status=status, limit=limit)
        response = await self.http.get(_DELIVERIES_PATH, params=params)
        return _DELIVERIES.validate_python(_checked(response).json())

    async def redeliver_webhook(self, webhook_id: str) -> WebhookDeliveryView:
        response = await self.http.post(f"{_DELIVERIES_PATH}/{webhook_id}/redeliver")
        return WebhookDeliveryView.model_validate(_checked(response).json())


_DELIVERIES_PATH = "/api/webhooks/deliveries"
_DELIVERIES = TypeAdapter(list[WebhookDeliveryView])


def _present(**params: Any) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


# --- end of the webhooks block ---


# --- Runs (/api/runs): start, state, wait, decide, answer, cancel, stream; the calls of both clients ---


@dataclass(frozen=True)
class _Request:
    """One call of the gateway, as both clients send it: built once, by the functions below."""

    method: str
    path: str
    json: Any = None
    params: dict[str, Any] | None = None
    headers: dict[str, str] | None = None
    # Seconds the call may take over the client's own timeout (a long poll asks for its wait).
    extra_timeout: float = 0.0

    def send(self, http: httpx.Client) -> Any:
        timeout = _longer(http.timeout, self.extra_timeout)
        kwargs = {"json": self.json, "params": self.params, "headers": self.headers, "timeout": timeout}
        return _checked(http.request(self.method, self.path, **kwargs)).json()

    async def send_async(self, http: httpx.AsyncClient) -> Any:
        timeout = _longer(http.timeout, self.extra_timeout)
        kwargs = {"json": self.json, "params": self.params, "headers": self.headers, "timeout": timeout}
        return _checked(await http.request(self.method, self.path, **kwargs)).json()


def _longer(timeout: httpx.Timeout, extra: float) -> httpx.Timeout:
    return timeout if not extra else httpx.Timeout((timeout.read or 0) + extra, connect=timeout.connect)


def _start_request(
    messages: str | Sequence[UIMessage | dict[str, Any]],
    *,
    purpose: str | None,
    context: dict[str, Any] | None,
    metadata: dict[str, Any] | None,
    webhook_url: str | None,
    idempotency_key: str | None,
) -> _Request:
    if isinstance(messages, str):
        # A fixed message id: the same text is the same body, which an Idempotency-Key compares.
        messages = [UIMessage(id="msg-1", role="user", parts=[TextUIPart(text=messages)])]
    body: dict[str, Any] = {"messages": [m.wire() if isinstance(m, UIMessage) else m for m in messages]}
    body.update(_present(purpose=purpose, context=context, metadata=metadata, webhook_url=webhook_url))
    headers = {"idempotency-key": idempotency_key} if idempotency_key else None
    return _Request("POST", "/api/runs", json=body, headers=headers)


def _run_path(agent_run_id: str, *rest: str) -> str:
    return "/".join(["/api/runs", quote(agent_run_id, safe=""), *(quote(r, safe="") for r in rest)])


def _decide_request(agent_run_id: str, tool_call_id: str, approved: bool, reason: str | None) -> _Request:
    path = _run_path(agent_run_id, "approvals", tool_call_id)
    return _Request("POST", path, json={"approved": approved, "reason": reason})


def _answer_request(agent_run_id: str, text: str, tool_call_id: str | None) -> _Request:
    return _Request(
        "POST", _run_path(agent_run_id, "answer"), json=_present(text=text, tool_call_id=tool_call_id)
    )


def _wait_request(agent_run_id: str, timeout: float) -> _Request:
    return _Request(
        "GET", _run_path(agent_run_id, "wait"), params={"timeout": timeout}, extra_timeout=timeout
    )


def _cancel_request(agent_run_id: str, reason: str | None) -> _Request:
    return _Request("POST", _run_path(agent_run_id, "cancel"), json={"reason": reason})


class _SegmentReader:
    """Reads a run's stream across its segments: each response is one segment (start ... finish), the next
    one is asked for after the last id read, until the run has ended (`data-run` final) or the gateway
    says nothing is left (204)."""

    def __init__(self, after: int | None) -> None:
        self.last_id = after
        self.done = False

    def next_request(self) -> dict[str, str] | None:
        if self.done:
            return None
        return {"last-event-id": str(self.last_id)} if self.last_id is not None else {}

    def ended(self, response: httpx.Response) -> httpx.Response:
        """A 204: a finished run has nothing after the last id."""
        if response.status_code == 204:
            self.done = True
        return response

    def lines(self, response: httpx.Response) -> Iterator[str]:
        return iter(()) if self.ended(response).status_code == 204 else response.iter_lines()

    def take(self, line: str) -> UIMessageChunk | None:
        if line.startswith("id: "):
            self.last_id = int(line.removeprefix("id: "))
            return None
        if not line.startswith("data: {"):
            return None
        chunk = decode(line.removeprefix("data: "))
        if isinstance(chunk, RunDataChunk) and RunStatus(chunk.data.status).is_final:
            self.done = True
        return chunk


class RunCalls:
    """A run's whole life from a server, over a client's `http` (sync). Every refusal is a ChatError
    carrying the gateway's own explanation (4xx), never a silent None."""

    http: httpx.Client

    def start_run(
        self,
        messages: str | Sequence[UIMessage | dict[str, Any]],
        *,
        purpose: str | None = None,
        context: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> RunStarted:
        """Start a run (`POST /api/runs`): a text is the user's message; or UI messages, the user's last.
        With `idempotency_key`, sending it again (any gateway, within the key's lifetime) gives the same run."""
        request = _start_request(
            messages,
            purpose=purpose,
            context=context,
            metadata=metadata,
            webhook_url=webhook_url,
            idempotency_key=idempotency_key,
        )
        return RunStarted.model_validate(request.send(self.http))

    def run_state(self, agent_run_id: str) -> RunState:
        return RunState.model_validate(_Request("GET", _run_path(agent_run_id)).send(self.http))

    def wait(self, agent_run_id: str, within: float = 30) -> RunState:
        """The run's state once it is final or waits for a person, or after `within` seconds as it is."""
        return RunState.model_validate(_wait_request(agent_run_id, within).send(self.http))

    def approve(self, agent_run_id: str, tool_call_id: str, reason: str | None = None) -> ApprovalRecord:
        """Approve a call the run, or one of its sub-agents' runs, waits for."""
        return ApprovalRecord.model_validate(
            _decide_request(agent_run_id, tool_call_id, True, reason).send(self.http)
        )

    def deny(self, agent_run_id: str, tool_call_id: str, reason: str | None = None) -> ApprovalRecord:
        return ApprovalRecord.model_validate(
            _decide_request(agent_run_id, tool_call_id, False, reason).send(self.http)
        )

    def answer_question(self, agent_run_id: str, text: str, tool_call_id: str | None = None) -> Accepted:
        """Answer the question the run (or one of its sub-agents) asked; the answer names who took it."""
        return Accepted.model_validate(_answer_request(agent_run_id, text, tool_call_id).send(self.http))

    def cancel(self, agent_run_id: str, reason: str | None = None) -> Accepted:
        return Accepted.model_validate(_cancel_request(agent_run_id, reason).send(self.http))

    def events(self, agent_run_id: str, after: int | None = None) -> Iterator[UIMessageChunk]:
        """The run's UI message stream from its start (or after chunk id `after`) to its end, segment after
        segment (Last-Event-ID): while the run waits for someone, so does this."""
        reader = _SegmentReader(after)
        while (headers := reader.next_request()) is not None:
            with self.http.stream(
                "GET", _run_path(agent_run_id, "events"), headers=headers, timeout=None
            ) as sse:
                if sse.status_code >= 400:
                    sse.read()
                for line in reader.lines(_checked(sse)):
                    if (chunk := reader.take(line)) is not None:
                        yield chunk


class AsyncRunCalls:
    """The same calls over an `httpx.AsyncClient`."""

    http: httpx.AsyncClient

    async def start_run(
        self,
        messages: str | Sequence[UIMessage | dict[str, Any]],
        *,
        purpose: str | None = None,
        context: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> RunStarted:
        request = _start_request(
            messages,
            purpose=purpose,
            context=context,
            metadata=metadata,
            webhook_url=webhook_url,
            idempotency_key=idempotency_key,
        )
        return RunStarted.model_validate(await request.send_async(self.http))

    async def run_state(self, agent_run_id: str) -> RunState:
        return RunState.model_validate(await _Request("GET", _run_path(agent_run_id)).send_async(self.http))

    async def wait(self, agent_run_id: str, within: float = 30) -> RunState:
        return RunState.model_validate(await _wait_request(agent_run_id, within).send_async(self.http))

    async def approve(
        self, agent_run_id: str, tool_call_id: str, reason: str | None = None
    ) -> ApprovalRecord:
        request = _decide_request(agent_run_id, tool_call_id, True, reason)
        return ApprovalRecord.model_validate(await request.send_async(self.http))

    async def deny(self, agent_run_id: str, tool_call_id: str, reason: str | None = None) -> ApprovalRecord:
        request = _decide_request(agent_run_id, tool_call_id, False, reason)
        return ApprovalRecord.model_validate(await request.send_async(self.http))

    async def answer_question(
        self, agent_run_id: str, text: str, tool_call_id: str | None = None
    ) -> Accepted:
        return Accepted.model_validate(
            await _answer_request(agent_run_id, text, tool_call_id).send_async(self.http)
        )

    async def cancel(self, agent_run_id: str, reason: str | None = None) -> Accepted:
        return Accepted.model_validate(await _cancel_request(agent_run_id, reason).send_async(self.http))

    async def events(self, agent_run_id: str, after: int | None = None) -> AsyncIterator[UIMessageChunk]:
        reader = _SegmentReader(after)
        while (headers := reader.next_request()) is not None:
            path = _run_path(agent_run_id, "events")
            async with self.http.stream("GET", path, headers=headers, timeout=None) as sse:
                if sse.status_code >= 400:
                    await sse.aread()
                async for line in _checked(reader.ended(sse)).aiter_lines():
                    if (chunk := reader.take(line)) is not None:
                        yield chunk


# --- end of the runs block ---


def _http_options(base_url: str, token: str | None, timeout: float) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return {"base_url": base_url, "timeout": httpx.Timeout(timeout, connect=10), "headers": headers}


class KeelClient(RunCalls, ScheduleCalls, WebhookCalls):
    """Keel's gateway from Python, synchronously: runs, schedules, webhook deliveries.

    with KeelClient("http://127.0.0.1:8000", token=KEY) as keel:
        run = keel.start_run("refund order A-17", purpose="support", idempotency_key="refund-A-17")
        state = keel.wait(run.agent_run_id, timeout=60)
    """

    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 60) -> None:
        self.http = httpx.Client(**_http_options(base_url, token, timeout))

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "KeelClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncKeelClient(AsyncRunCalls, AsyncScheduleCalls, AsyncWebhookCalls):
    """The same, for asyncio: `async with AsyncKeelClient(url) as keel: await keel.start_run(...)`."""

    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 60) -> None:
        self.http = httpx.AsyncClient(**_http_options(base_url, token, timeout))

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> "AsyncKeelClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class ChatClient(KeelClient):
    """A KeelClient that also chats the way `useChat` does (`POST /api/chat`): what `keel run` is built on."""

    def __init__(self, base_url: str, *, timeout: float = 600, token: str | None = None) -> None:
        super().__init__(base_url, token=token, timeout=timeout)

    def start(
        self, text: str, *, purpose: str | None = None, chat_id: str | None = None
    ) -> tuple[dict[str, Any], AssistantMessage]:
        """A chat's first request body, and the message its stream will fill."""
        question = UIMessage(id=f"msg-{uuid.uuid4().hex[:12]}", role="user", parts=[TextUIPart(text=text)])
        body: dict[str, Any] = {
            "id": chat_id or f"chat-{uuid.uuid4().hex[:12]}",
            "messages": [question.wire()],
            "trigger": "submit-message",
        }
        if purpose:
            body["purpose"] = purpose
        return body, AssistantMessage()

    def stream(self, body: dict[str, Any], message: AssistantMessage) -> Iterator[UIMessageChunk]:
        """POST /api/chat; yields each chunk after applying it to `message`."""
        with self.http.stream("POST", "/api/chat", json=body) as response:
            if response.status_code != 200:
                response.read()
                raise ChatError(_detail(response))
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = decode(line.removeprefix("data: "))
                message.apply(chunk)
                yield chunk

    @staticmethod
    def answer(body: dict[str, Any], message: AssistantMessage) -> dict[str, Any]:
        """The next request: the history with the assistant message (and the user's answers in it)."""
        return {**body, "messages": [*body["messages"], message.as_ui_message()]}

    def post(self, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self.http.post(path, json=payload or {})
        if response.status_code >= 400:
            raise ChatError(_detail(response))
        answer: dict[str, Any] = response.json()
        return answer

    def get(self, path: str, **params: Any) -> Any:
        response = self.http.get(path, params={k: v for k, v in params.items() if v is not None})
        if response.status_code >= 400:
            raise ChatError(_detail(response))
        return response.json()


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = response.text
    if isinstance(detail, list):  # pydantic's 422 list
        detail = "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail)
    return f"HTTP {response.status_code}: {detail}"
