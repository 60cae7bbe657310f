"""The contracts shared by the workflow, the activities and the gateway.

Everything that crosses a Temporal boundary (workflow input, activity inputs and results, query results)
is defined here, as pydantic models, so the three layers cannot drift apart. This module does no I/O and
imports nothing that does: the workflow sandbox imports it.

Message bodies and tool results never travel through workflow history. Activities store them in
PostgreSQL under (agent_run_id, seq) and the workflow passes those sequence numbers around instead.
"""

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

# Names the worker registers and the workflow calls; the Temporal CLI and Web UI show them too.
WORKFLOW_TYPE = "AgentRun"
CALL_LLM = "call_llm"
RUN_TOOL = "run_tool"
STATE_QUERY = "state"
EVENTS_QUERY = "events"


class RunStatus(StrEnum):
    running = "running"
    completed = "completed"
    failed = "failed"
    step_limit = "step_limit"

    @property
    def is_final(self) -> bool:
        return self is not RunStatus.running


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # What the tokens cost in USD, from the route's price table (0 when the price is unknown).
    cost_usd: float = 0.0
    # Calls whose route has no price: their cost is missing from cost_usd, which is then a lower bound.
    unpriced_calls: int = 0

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cost_usd=self.cost_usd + other.cost_usd,
            unpriced_calls=self.unpriced_calls + other.unpriced_calls,
        )


class ToolCall(BaseModel):
    """A tool call as every model provider reports it, once normalized."""

    type: Literal["tool_call"] = "tool_call"
    id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    # Set when the model's arguments could not be parsed (not JSON, not an object): what was wrong. The
    # tool then does not run and the model gets this back as an error result.
    arguments_error: str | None = None


class Message(BaseModel):
    """One conversation message, as stored in PostgreSQL and sent to model providers."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    # Set on role="tool": which call this answers, the tool's name, and whether the tool failed.
    tool_call_id: str | None = None
    name: str | None = None
    is_error: bool = False


class ToolSpec(BaseModel):
    """What a model is told about a tool: its name, what it does and its JSON-schema parameters."""

    name: str
    description: str
    parameters: dict[str, Any]


class PurposeSpec(BaseModel):
    """A snapshot of a purpose taken when the run starts, so editing a purpose never changes a live run."""

    slug: str
    model: str
    tools: list[str]
    step_limit: int


class AgentRunInput(BaseModel):
    """Workflow input. The conversation itself is already in PostgreSQL at seq 0..message_count-1."""

    agent_run_id: str
    purpose: PurposeSpec
    message_count: int
    max_steps: int
    chat_id: str | None = None
    # A short preview of the user's request, for people reading the run in the Temporal Web UI.
    input_summary: str = ""


class LlmStepInput(BaseModel):
    agent_run_id: str
    step: int
    model: str
    tools: list[str]
    # The model sees messages with seq < reply_seq and its reply is stored at reply_seq.
    reply_seq: int


class LlmStepResult(BaseModel):
    reply_seq: int
    has_text: bool
    tool_calls: list[ToolCall]
    finish_reason: str
    usage: Usage
    # The route that answered: one route of the purpose's fallback chain.
    model: str
    # The provider's id for the request (its request-id header), for support tickets and log searches.
    request_id: str | None = None


class ToolInput(BaseModel):
    agent_run_id: str
    step: int
    call: ToolCall
    # Where the tool's result message is stored.
    result_seq: int


class ToolOutcome(BaseModel):
    tool_call_id: str
    result_seq: int
    is_error: bool


# --- Run events: the one family of progress events, numbered per run by `seq` (1, 2, 3, ...). ---


class StepStarted(BaseModel):
    type: Literal["step_started"] = "step_started"
    seq: int
    step: int


class TextProduced(BaseModel):
    """The model wrote text; its body is the message stored at `message_seq`."""

    type: Literal["text"] = "text"
    seq: int
    step: int
    message_seq: int


class ToolCallRequested(BaseModel):
    type: Literal["tool_call"] = "tool_call"
    seq: int
    step: int
    call: ToolCall


class ToolResultReady(BaseModel):
    """A tool finished; its result is the message stored at `message_seq`."""

    type: Literal["tool_result"] = "tool_result"
    seq: int
    step: int
    tool_call_id: str
    message_seq: int
    is_error: bool


class StepFinished(BaseModel):
    type: Literal["step_finished"] = "step_finished"
    seq: int
    step: int


class RunFinished(BaseModel):
    type: Literal["run_finished"] = "run_finished"
    seq: int
    status: RunStatus
    # Why the run ended when it is not a plain completion, in words a person can act on.
    detail: str | None = None


RunEvent = Annotated[
    StepStarted | TextProduced | ToolCallRequested | ToolResultReady | StepFinished | RunFinished,
    Field(discriminator="type"),
]


class RunState(BaseModel):
    """The `state` query's answer, also served as `GET /api/runs/{id}`."""

    agent_run_id: str
    purpose: str
    model: str
    status: RunStatus
    step: int
    max_steps: int
    usage: Usage
    last_event_seq: int
    detail: str | None = None
