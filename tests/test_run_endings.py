"""A run's end closes every tool call it left open, for every client.

Every final status a run can reach (completed, failed, cancelled, step_limit, budget_exceeded,
needs_input), with every kind of call it can leave open when it ends that way: one waiting for a person's
approval, for the user's answer (`ask_user`), for a client-side tool's result, or a tool still running.
Each run is ended the way it would be in real life — cancelled over HTTP, terminated through Temporal (an
operator, the Web UI), out of time, or by itself — and then seen by:

- raw SSE: the live stream, the answer to the resubmission the client then makes (a stale approval, answer
  or tool result, as a page that did not notice the end sends it) and a replay from the start with
  Last-Event-ID, segment by segment: each leaves no call open, with its outcome before `finish`;
- the real AI SDK clients, `ai` 5, 6 and 7 (`AbstractChat` with `sendAutomaticallyWhen` made of the SDK's
  own `lastAssistantMessageIsCompleteWith…` helpers, driven by tests/node/endings.mjs): the chat settles
  after at most one resubmission on the run's final status, with no tool part open and nothing for the
  helpers to resubmit. `ai` 5 predates tool approvals, so it meets every case but the approval ones.

All the runs go at once (a module fixture), and each test checks one outcome.
"""

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import pytest
from temporalio.client import Client

from keel.client import AssistantMessage
from keel.ui_protocol import ToolApproval, ToolUIPart
from tests.ai_sdk import NODE_DIR, PACKAGES, require_ai_sdk
from tests.conftest import Keel, wait_for_status
from tests.ui_stream import UIStream, assert_well_formed, chat, chat_body, parse, parse_text

CLIENTS = list(PACKAGES)
GET_LOCATION = {
    "name": "get_location",
    "description": "The user's city, from the browser",
    "inputSchema": {"type": "object", "properties": {}},
}
TERMINAL = ("output-available", "output-error", "output-denied")
T = TypeVar("T")


@dataclass(frozen=True)
class OpenCall:
    """A call a run can leave open, and how to make a run leave it: what to ask, and the client's answer."""

    tool: str
    text: str
    body: dict[str, Any] = field(default_factory=dict)
    # What the client sends once it answers the call (None: nothing to answer, the tool runs by itself).
    answer: dict[str, Any] | None = None


OPEN_CALLS = {
    "approval": OpenCall("wait", "wait 20 seconds", answer={"approved": True}),
    "answer": OpenCall("ask_user", "ask me my favourite colour", answer={"output": "teal"}),
    "client_tool": OpenCall(
        "get_location",
        "use get_location to find me",
        {"tools": [GET_LOCATION]},
        answer={"output": {"city": "Lisbon"}},
    ),
    "running_tool": OpenCall("wait", "wait 8 seconds please"),
    # learnpack-lesson-writer can't wait for answers: its question ends the run, unasked.
    "unasked_question": OpenCall(
        "ask_user", "ask me which lesson to write", {"purpose": "learnpack-lesson-writer"}
    ),
    "none": OpenCall("", "hello there"),
    "none_after_a_tool": OpenCall("", "calculate (2 + 3) * 4", {"max_steps": 1}),
}
# How the run is ended, and the status that makes. The time budget is long enough for the first step.
ENDINGS = {
    "cancel": "cancelled",
    "terminate": "failed",
    "time_budget": "budget_exceeded",
}
TIME_BUDGET = {"budgets": {"max_duration_s": 5}}
# Runs in flight at once: enough to finish quickly, few enough that a busy 2-core machine keeps up.
IN_FLIGHT = 6


@dataclass(frozen=True)
class Case:
    open_call: str
    ending: str  # one of ENDINGS, or "itself"
    status: str

    @property
    def name(self) -> str:
        return f"{self.status}-{self.open_call}"

    @property
    def call(self) -> OpenCall:
        return OPEN_CALLS[self.open_call]

    def body(self) -> dict[str, Any]:
        extra = TIME_BUDGET if self.ending == "time_budget" else {}
        return chat_body(self.call.text, **self.call.body, **extra)

    @property
    def live(self) -> bool:
        """Whether the run ends while its stream is still open (a tool running), or while it is parked."""
        return self.open_call == "running_tool"


CASES = [
    Case(open_call, ending, status)
    for open_call, (ending, status) in itertools.product(
        ["approval", "answer", "client_tool", "running_tool"], ENDINGS.items()
    )
] + [
    Case("unasked_question", "itself", "needs_input"),
    Case("none_after_a_tool", "itself", "step_limit"),
    Case("none", "itself", "completed"),
]
FINAL_STATUSES = {"completed", "failed", "cancelled", "step_limit", "budget_exceeded", "needs_input"}


def test_the_cases_cover_every_final_status() -> None:
    assert {case.status for case in CASES} == FINAL_STATUSES


async def end_run(case: Case, agent_run_id: str, http: httpx.AsyncClient, temporal: Client) -> None:
    """End the run the case's way, and wait until the gateway says it has ended so."""
    if case.ending == "cancel":
        response = await http.post(f"/api/runs/{agent_run_id}/cancel", json={"reason": "changed my mind"})
        assert response.status_code == 202, response.text
    elif case.ending == "terminate":
        await temporal.get_workflow_handle(agent_run_id).terminate(reason="stopped by an operator")
    await wait_for_status(http, agent_run_id, case.status, within=20)


# --- raw SSE ---


@dataclass
class RawOutcome:
    agent_run_id: str
    live: UIStream
    # The answer to the client's resubmission after the end (None when there was nothing to answer).
    resubmission: UIStream | None
    replay: list[UIStream]


async def raw_ending(case: Case, http: httpx.AsyncClient, temporal: Client) -> RawOutcome:
    body = case.body()
    if case.live:
        live = await stream_ending_mid_tool(case, body, http, temporal)
        agent_run_id = live.response.headers["x-agent-run-id"]
    else:
        live = await chat(http, body)  # to the pause, or to the end
        agent_run_id = live.response.headers["x-agent-run-id"]
        await end_run(case, agent_run_id, http, temporal)
    resubmission = None
    if case.call.answer is not None:
        answered = resubmitted_message(live, case.call)
        resubmission = await chat(http, {**body, "messages": [*body["messages"], answered]})
    return RawOutcome(agent_run_id, live, resubmission, await replay(http, agent_run_id))


async def stream_ending_mid_tool(
    case: Case, body: dict[str, Any], http: httpx.AsyncClient, temporal: Client
) -> UIStream:
    """POST /api/chat and end the run once its stream shows the tool call, reading on to the end."""
    lines: list[str] = []
    ending: asyncio.Task[None] | None = None
    async with http.stream("POST", "/api/chat", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            lines.append(line)
            if ending is None and '"type":"tool-input-available"' in line:
                agent_run_id = response.headers["x-agent-run-id"]
                ending = asyncio.create_task(end_run(case, agent_run_id, http, temporal))
    assert ending is not None, "the stream never showed the tool call"
    await ending
    stream = parse_text("\n".join(lines), response)
    assert_well_formed(stream)
    return stream


def resubmitted_message(stream: UIStream, call: OpenCall) -> dict[str, Any]:
    """The assistant message a client resubmits once a person answered the call it still shows open."""
    message = assemble(stream)
    part = next(p for p in message.tools().values() if p.tool_name == call.tool)
    assert call.answer is not None
    if "approved" in call.answer:
        part.state, part.approval = "approval-responded", ToolApproval(id=part.tool_call_id, **call.answer)
    else:
        part.state, part.output = "output-available", call.answer["output"]
    return message.as_ui_message()


async def replay(http: httpx.AsyncClient, agent_run_id: str) -> list[UIStream]:
    """The run's whole stream again, from its start, one segment after another (Last-Event-ID)."""
    segments: list[UIStream] = []
    last_id: int | None = None
    while True:
        headers = {} if last_id is None else {"Last-Event-ID": str(last_id)}
        response = await http.get(f"/api/runs/{agent_run_id}/events", headers=headers)
        if response.status_code == 204:
            return segments
        assert response.status_code == 200, response.text
        segment = parse(response)
        assert_well_formed(segment, resumed=bool(segments))
        segments.append(segment)
        last_id = max(i for i in segment.ids if i is not None)


def assemble(*streams: UIStream) -> AssistantMessage:
    message = AssistantMessage()
    for stream in streams:
        for chunk in stream.typed:
            message.apply(chunk)
    return message


def open_parts(message: AssistantMessage) -> list[ToolUIPart]:
    return [p for p in message.tools().values() if p.state not in TERMINAL]


# --- the AI SDK clients, through tests/node/endings.mjs ---


class NodeChats:
    """The endings driver: one Node process, commands and answers as JSON lines, matched by id."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read())

    async def call(self, op: str, **args: Any) -> dict[str, Any]:
        command_id = next(self._ids)
        answer = self._waiting[command_id] = asyncio.get_running_loop().create_future()
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps({"id": command_id, "op": op, **args}).encode() + b"\n")
        await self._process.stdin.drain()
        try:
            result = await asyncio.wait_for(answer, timeout=60)
        finally:
            self._waiting.pop(command_id, None)
        assert "failure" not in result, result["failure"]
        return result

    async def _read(self) -> None:
        assert self._process.stdout is not None
        async for line in self._process.stdout:
            result = json.loads(line)
            waiting = self._waiting.get(result["id"])
            if waiting is not None and not waiting.done():  # not given up on meanwhile
                waiting.set_result(result)
        for waiting in self._waiting.values():  # the process died: say so instead of hanging
            if not waiting.done():
                waiting.set_exception(RuntimeError("the Node driver exited"))

    async def close(self) -> str:
        """Ends the driver (it stops at the end of its input) and returns what it wrote to stderr."""
        assert self._process.stdin is not None and self._process.stderr is not None
        self._process.stdin.close()
        await self._reader
        stderr = await self._process.stderr.read()
        await self._process.wait()
        return stderr.decode()


@pytest.fixture(scope="module")
async def node_chats() -> AsyncIterator[NodeChats]:
    require_ai_sdk()
    process = await asyncio.create_subprocess_exec(
        "node",
        "endings.mjs",
        cwd=NODE_DIR,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    chats = NodeChats(process)
    yield chats
    await chats.close()


async def client_ending(
    pkg: str, case: Case, chats: NodeChats, http: httpx.AsyncClient, temporal: Client, url: str
) -> dict[str, Any]:
    body = {k: v for k, v in case.body().items() if k not in ("id", "messages", "trigger")}
    until = "tool-running" if case.live else "ready"
    started = await chats.call("start", pkg=pkg, url=url, text=case.call.text, body=body, until=until)
    agent_run_id = started["runId"]
    assert agent_run_id, started
    ending = end_run(case, agent_run_id, http, temporal)
    if case.live:  # the chat is streaming: it must learn of the end from its own stream
        settling = asyncio.create_task(chats.call("settle", chat=started["id"], answer=None))
        await ending
        return {"agent_run_id": agent_run_id, **await settling}
    await ending  # then a person, who did not notice, answers the call on the page
    return {
        "agent_run_id": agent_run_id,
        **await chats.call("settle", chat=started["id"], answer=case.call.answer),
    }


# --- all the runs at once ---


async def all_at_once(scenarios: list[Awaitable[T]]) -> list[T | BaseException]:
    """Every scenario, IN_FLIGHT at a time; one that breaks is its outcome, the others go on."""
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def in_turn(scenario: Awaitable[T]) -> T:
        async with slots:
            return await scenario

    return await asyncio.gather(*(in_turn(s) for s in scenarios), return_exceptions=True)


@pytest.fixture(scope="module")
async def raw_outcomes(keel: Keel, temporal: Client) -> dict[str, RawOutcome | BaseException]:
    async with httpx.AsyncClient(base_url=keel.gateway_url, timeout=60) as http:
        outcomes = await all_at_once([raw_ending(case, http, temporal) for case in CASES])
    return {case.name: outcome for case, outcome in zip(CASES, outcomes, strict=True)}


CLIENT_CASES = [
    (pkg, case) for pkg in CLIENTS for case in CASES if not (pkg == "ai5" and case.open_call == "approval")
]


@pytest.fixture(scope="module")
async def client_outcomes(
    keel: Keel, temporal: Client, node_chats: NodeChats
) -> dict[tuple[str, str], dict[str, Any] | BaseException]:
    async with httpx.AsyncClient(base_url=keel.gateway_url, timeout=60) as http:
        outcomes = await all_at_once(
            [
                client_ending(pkg, case, node_chats, http, temporal, keel.gateway_url)
                for pkg, case in CLIENT_CASES
            ]
        )
    return {(pkg, case.name): outcome for (pkg, case), outcome in zip(CLIENT_CASES, outcomes, strict=True)}


def outcome_of(outcome: T | BaseException) -> T:
    """A case's outcome; a case that broke on the way fails its own test, not its neighbours'."""
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


# --- what every client must see ---


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_raw_sse_every_stream_of_an_ended_run_closes_its_calls(
    case: Case, raw_outcomes: dict[str, RawOutcome | BaseException]
) -> None:
    outcome = outcome_of(raw_outcomes[case.name])
    seen_by_the_client = [outcome.live] + ([outcome.resubmission] if outcome.resubmission else [])

    for message in (assemble(*seen_by_the_client), assemble(*outcome.replay)):
        assert open_parts(message) == [], "a tool call is left open"
        assert message.status == case.status
    if case.call.tool:
        last = (outcome.resubmission or outcome.live).chunks
        assert_outcome_of_the_open_call(case, assemble(*outcome.replay), last)


def assert_outcome_of_the_open_call(
    case: Case, replayed: AssistantMessage, last: list[dict[str, Any]]
) -> None:
    """The call the run left open got the outcome that tells the truth, in the client's last response."""
    [part] = [p for p in replayed.tools().values() if p.tool_name == case.call.tool]
    ids = {c.get("toolCallId") for c in last}
    assert part.tool_call_id in ids, "the response the client last got does not end the call"
    if case.open_call == "approval":
        assert part.state == "output-denied", "an approval never given counts as denied"
    else:
        assert part.state == "output-error"
        assert f"the run ended as {case.status}" in (part.error_text or ""), part.error_text


@pytest.mark.parametrize(("pkg", "case"), CLIENT_CASES, ids=lambda v: v if isinstance(v, str) else v.name)
def test_the_ai_sdk_client_settles_on_the_end_with_no_call_open(
    pkg: str, case: Case, client_outcomes: dict[tuple[str, str], dict[str, Any] | BaseException]
) -> None:
    outcome = outcome_of(client_outcomes[(pkg, case.name)])
    message = outcome["message"]

    assert outcome["idle"], f"the chat never settled: {outcome['posts']} POSTs after the end"
    assert outcome["posts"] <= 1, f"{outcome['posts']} resubmissions after the run ended"
    assert not outcome["wouldResubmit"]
    tools = [p for p in message["parts"] if p["type"].startswith("tool-")]
    assert [p for p in tools if p["state"] not in TERMINAL] == [], "a tool part is left open"
    statuses = [p["data"]["status"] for p in message["parts"] if p["type"] == "data-run"]
    assert statuses == [case.status]
    if case.status == "failed":  # a failed run's stream ends with an `error` chunk, which useChat reports
        assert outcome["status"] == "error" and "outside the agent loop" in (outcome["error"] or "")
    else:
        assert outcome["status"] == "ready", outcome["error"]
