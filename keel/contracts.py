"""The contracts shared by the workflow, the activities and the gateway.

Everything that crosses a Temporal boundary (workflow input, activity inputs and results, query results)
is defined here, as pydantic models, so the three layers cannot drift apart. This module does no I/O and
imports nothing that does: the workflow sandbox imports it.

Message bodies and tool results never travel through workflow history. Activities store them in
PostgreSQL under (agent_run_id, seq) and the workflow passes those sequence numbers around instead.
"""

import json
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

# Names the worker registers and the workflow calls; the Temporal CLI and Web UI show them too.
WORKFLOW_TYPE = "AgentRun"
# An AgentRun's workflow task timeout, set by whatever starts one. A run calls its model in a local activity
# inside a workflow task (workflows/activity_options.py); the worker extends that task every 80% of this
# (three events in history each time), and only then does the run take in the signals, updates and queries
# that arrived meanwhile: shorter than Temporal's 10 s, they wait at most about 3 s, and a dead worker's run
# goes on elsewhere after 4.
RUN_TASK_TIMEOUT = timedelta(seconds=4)
CALL_LLM = "call_llm"
# Provider limits: the local activity a step asks for capacity with before call_llm (activities/capacity.py).
RESERVE_CAPACITY = "reserve_capacity"
RUN_TOOL = "run_tool"
SAVE_MESSAGE = "save_message"
# Writes the workflow's own facts (status changes, approvals, the outcome) to the run records.
RECORD_RUN = "record_run"
# Checks the agent's own stop_when predicates (app code) after a step, so history records the verdict.
CHECK_STOP_WHEN = "check_stop_when"
# Lists the tools of the agent's MCP servers when a run starts (only runs of agents with MCP servers).
LIST_MCP_TOOLS = "list_mcp_tools"
# The activities that open a sub-agent's child run (its first messages and record) and bring its answer back.
OPEN_SUB_RUN = "open_sub_run"
SAVE_SUB_RUN_RESULT = "save_sub_run_result"
# Stores a handoff's system message (the next agent's instructions) when a run hands over to another agent.
SAVE_HANDOFF = "save_handoff"
# Handoffs: the tool through which a model hands the conversation to agent X is `transfer_to_X`, and the
# system message that carries X's instructions is marked with this name.
HANDOFF_TOOL_PREFIX = "transfer_to_"
HANDOFF_MESSAGE_NAME = "handoff"
STATE_QUERY = "state"
EVENTS_QUERY = "events"
# Signals: fixed names, usable from `temporal workflow signal` and the Web UI.
APPROVAL_SIGNAL = "approval"
ANSWER_SIGNAL = "answer"
CANCEL_SIGNAL = "cancel"
TOOL_RESULT_SIGNAL = "tool_result"
# Double texting with the `enqueue` policy: the active run hears which run waits for it, and tells it when
# it is done.
QUEUE_NEXT_SIGNAL = "queue_next"
PREVIOUS_DONE_SIGNAL = "previous_run_finished"
# Updates: the same decisions, for the gateway, which needs to know at once whether one was accepted.
APPROVAL_UPDATE = "decide_approval"
ANSWER_UPDATE = "submit_answer"
TOOL_RESULT_UPDATE = "submit_tool_result"
# The built-in tool through which a model asks the user a question; the workflow handles it itself.
ASK_USER_TOOL = "ask_user"
# Structured output: the synthetic tool through which a model that answers with tool calls (Anthropic)
# gives its final answer, and how the message that sends a failed answer back to the model begins.
OUTPUT_TOOL = "keel_final_answer"
OUTPUT_FEEDBACK_PREFIX = "Your final answer did not validate against the required JSON schema"

# Fallback chains (`KEEL_MODEL=openai:gpt-4o-mini,anthropic:claude-haiku-4-5`): a route gets this many
# consecutive call_llm attempts before the next route takes over; the last route keeps the attempts that
# remain of the call_llm retry policy's maximum (workflows/activity_options.py). A route that fails for good (401, 404...) hands over at once.
CALL_LLM_ATTEMPTS_PER_ROUTE = 3
# A provider's Retry-After is honoured up to this; a longer one is a sign to wait with normal backoff.
MAX_RETRY_AFTER = timedelta(minutes=2)


class ErrorType(StrEnum):
    """`ApplicationError.type` of the failures Keel raises across a Temporal boundary, in one place: the
    workflow raises them, activities raise them, the gateway maps them to HTTP statuses, and the Temporal CLI
    and Web UI show them. StrEnum, so each is the plain string Temporal carries."""

    # An update or signal the run refuses: nothing of that name is waiting (404), or it was already decided
    # or the run has ended (409).
    not_found = "NotFound"
    conflict = "Conflict"
    # The run itself failed; its message says why.
    agent_run_failed = "AgentRunFailed"
    # Model calls (activities/models/): a route no provider serves, a request the provider refuses, every
    # route of a chain unavailable, an answer cut off mid-stream.
    unknown_model_route = "UnknownModelRoute"
    model_request_rejected = "ModelRequestRejected"
    model_unavailable = "ModelUnavailable"
    model_stream_cut = "ModelStreamCut"
    # The run records refused a note (activities/records.py).
    record_refused = "RecordRefused"
    # keel.testing: a scripted test model ran out of script or was scripted wrongly.
    test_script_exhausted = "TestScriptExhausted"
    test_script_error = "TestScriptError"


class RunStatus(StrEnum):
    running = "running"
    waiting_for_approval = "waiting_for_approval"
    waiting_for_input = "waiting_for_input"
    waiting_for_tool_result = "waiting_for_tool_result"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"
    step_limit = "step_limit"
    budget_exceeded = "budget_exceeded"
    needs_input = "needs_input"

    @property
    def is_final(self) -> bool:
        return self not in _ACTIVE


_ACTIVE = {
    RunStatus.running,
    RunStatus.waiting_for_approval,
    RunStatus.waiting_for_input,
    RunStatus.waiting_for_tool_result,
}


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # What the tokens cost in USD, from the route's price table (0 when the price is unknown).
    cost_usd: float = 0.0
    # Calls whose route has no price: their cost is missing from cost_usd, which is then a lower bound.
    unpriced_calls: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

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
    # On an assistant reply that is the run's structured answer: the object, validated (Agent.output_type),
    # as JSON text, which keeps its class's field order (a jsonb body would not). It lives with the reply
    # in PostgreSQL, never in Temporal history.
    output_json: str | None = None

    @property
    def output(self) -> dict[str, Any] | None:
        return None if self.output_json is None else json.loads(self.output_json)


class ToolSpec(BaseModel):
    """What a model is told about a tool: its name, what it does and its JSON-schema parameters."""

    name: str
    description: str
    parameters: dict[str, Any]


class MCPToolSpec(ToolSpec):
    """A tool of one of the agent's MCP servers as the run saw it listed when it started (keel/mcp.py): its
    Keel name (`name`, `<server>__<tool>`), where it lives, and how calls of it are run, decided then."""

    server: str
    # The tool's own name on its server.
    tool: str
    needs_approval: bool = True
    heavy: bool = False


class MCPListingInput(BaseModel):
    agent_run_id: str
    # The agent's name, for logs and the listing's record.
    purpose: str
    servers: list[str]


class MCPListing(BaseModel):
    """What `list_mcp_tools` found: every tool of the servers that answered, and why the others did not
    (the run goes on without their tools)."""

    tools: list[MCPToolSpec] = Field(default_factory=list)
    problems: dict[str, str] = Field(default_factory=dict)


class ClientTool(ToolSpec):
    """A tool the frontend declares and runs itself; the run waits for its result."""

    output_schema: dict[str, Any] | None = None


class Budgets(BaseModel):
    """Limits on one run; None means no limit. A run that reaches one ends with a status naming it."""

    max_steps: int = Field(10, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    max_cost_usd: float | None = Field(None, gt=0)
    max_duration_s: float | None = Field(None, gt=0)


class OutputSpec(BaseModel):
    """Structured output (Agent(output_type=...)): what the run's final answer must be, snapshotted when the
    run starts, so a redeploy that changes the class never changes what a live run is held to."""

    # The pydantic model's class name: the name the provider is given for the answer's format.
    name: str
    # The model's JSON schema; the answer is validated against it.
    json_schema: dict[str, Any]
    # How many times an answer that fails validation goes back to the model before the run fails.
    retries: int = Field(2, ge=0)


class PurposeSpec(BaseModel):
    """A snapshot of the run's agent (keel/agent.py) taken when the run starts, so a redeployed agent never
    changes a live run. `slug` is the agent's name."""

    slug: str
    model: str
    tools: list[str]
    budgets: Budgets = Budgets()
    # How long a tool call waits for a person's approval before it counts as denied.
    approval_timeout_s: float = 3600
    # Whether the run may pause for the user's answer when the model asks (ask_user); if not, the run
    # ends with status needs_input.
    allow_questions: bool = True
    # stopWhen: end the run once a tool has been called this many times (like the AI SDK's hasToolCall).
    stop_after_tool_calls: dict[str, int] = Field(default_factory=dict)
    # The agent's own stop_when predicates, by name (`module:qualname`), found in the app the worker loaded.
    stop_when: list[str] = Field(default_factory=list)
    # Set when the agent's final answer must be a validated object (structured output).
    output: OutputSpec | None = None
    # The names of the agent's MCP servers (keel/mcp.py); their tools are listed when the run starts.
    mcp_servers: list[str] = Field(default_factory=list)
    # The agents this one may call as tools (`Agent.as_tool`), by tool name: snapshots taken with this one,
    # since workflow code cannot import the app to build them when the call comes.
    sub_agents: "dict[str, SubAgentSpec]" = Field(default_factory=dict)
    # How deep delegation may go below a run of this agent (a child of a child... is one level deeper).
    max_depth: int = Field(3, ge=0)
    # Handoffs (Agent(handoffs=...)): the agents this one may hand the conversation to, by name, and, on
    # the run's snapshot, every agent reachable by handoffs from its first one (that one included), each
    # with its instructions; their own `handoff_agents` are empty (one flat map per run, cycles allowed).
    handoffs: list[str] = Field(default_factory=list)
    handoff_agents: "dict[str, SubAgentSpec]" = Field(default_factory=dict)
    # The agent's title for people (Agent.title; empty: its name), shown when a run hands over to it.
    title: str = ""


class SubAgentSpec(BaseModel):
    """An agent called as a tool: its snapshot and its system prompt, fixed when the calling run started."""

    purpose: PurposeSpec
    instructions: str


class AgentRunInput(BaseModel):
    """Workflow input. The conversation itself is already in PostgreSQL at seq 0..message_count-1."""

    agent_run_id: str
    purpose: PurposeSpec
    message_count: int
    chat_id: str | None = None
    user_id: str | None = None
    client_tools: list[ClientTool] = Field(default_factory=list)
    # Set when this run was queued behind the chat's active run; it starts once that one finishes.
    queued_behind: str | None = None
    # A short preview of the user's request, for people reading the run in the Temporal Web UI.
    input_summary: str = ""
    # The task queue of the heavy-tool workers (`python worker.py --queue heavy`), from the gateway's settings.
    heavy_task_queue: str = "agent-heavy"
    # Set when the run continued as new: what the run had done so far (see workflows/agent_run.py).
    carried: "CarriedRun | None" = None
    # Set on a sub-agent's run (a child workflow): the run that called it, and how deep below the top run
    # it is (the top run is 0).
    parent_run_id: str | None = None
    depth: int = 0
    # The endpoints the run's events are POSTed to (its own `webhook_url`, then the app's KEEL_WEBHOOK_URLS),
    # fixed when it starts; the secrets that sign them never enter the run.
    webhooks: list[str] = Field(default_factory=list)
    # The caller's own data about the run (`POST /api/runs`): in its record, its state and its webhooks.
    metadata: dict[str, Any] = Field(default_factory=dict)
    # Provider limits: the KEEL_PROVIDER_LIMITS patterns configured when the run started (its sub-agents get
    # the same). A step whose route matches one asks for capacity before its LLM call; with none the run
    # issues exactly the commands it did before limits existed. The numbers stay in the workers' settings.
    limited_routes: list[str] = Field(default_factory=list)
    # Who goes first for limited capacity: None means by the run itself (a chat's run is interactive);
    # a sub-agent's run carries its parent's.
    priority: Literal["interactive", "batch"] | None = None

    @property
    def effective_priority(self) -> Literal["interactive", "batch"]:
        if self.priority is not None:
            return self.priority
        return "interactive" if self.chat_id is not None else "batch"


class CapacityRequest(BaseModel):
    """A step asking for provider capacity before its LLM call (RESERVE_CAPACITY)."""

    agent_run_id: str
    # The conversation the call will send (seq < reply_seq): the activity estimates its tokens from it.
    reply_seq: int
    model: str
    limited_routes: list[str]
    priority: Literal["interactive", "batch"]
    # Seconds this step has waited so far (0 on its first ask): for the wait metrics.
    waited_s: float = 0.0
    # The slot booked for it by the last answer, if any: presented when due, it is granted at once.
    ticket: "CapacityLease | None" = None


class CapacityLease(BaseModel):
    """Capacity granted to one LLM call: which route of the chain it starts with, and the lease to end."""

    # None when the granted route has no limit (nothing to release).
    lease_id: str | None = None
    route_index: int = 0
    pattern: str | None = None
    estimated_tokens: int = 0
    priority: Literal["interactive", "batch"] = "batch"


class CapacityAnswer(BaseModel):
    """Granted (`lease`), or how long to wait before asking again, and why."""

    lease: CapacityLease | None = None
    wait_s: float = 0.0
    # A slot booked in a later window (rpm), to present on the next ask.
    ticket: CapacityLease | None = None
    # Which pattern and limit made the step wait, for its current details: "openai:* rpm".
    reason: str = ""


class LlmStepInput(BaseModel):
    agent_run_id: str
    step: int
    model: str
    tools: list[str]
    client_tools: list[ToolSpec] = Field(default_factory=list)
    # The model sees messages with seq < reply_seq and its reply is stored at reply_seq.
    reply_seq: int
    # The seq of the step's `step_started` event: live token deltas carry it, so a gateway can stream the
    # step's first words before the `events` query has told it the step began (0: unknown).
    step_event_seq: int = 0
    # The agent's name: for logs and records, and to find its output_type for structured output.
    purpose: str = ""
    # Structured output: the run's snapshot of the answer's schema, when its agent has one.
    output: OutputSpec | None = None
    # The model's last answer failed validation: this step must give the structured answer, no tools.
    force_output: bool = False
    # The run's snapshot of its MCP servers' tools (empty for agents without any).
    mcp_tools: list[MCPToolSpec] = Field(default_factory=list)
    # Provider limits: the capacity granted to this call (None: the run's routes have no limit).
    lease: CapacityLease | None = None
    # A call run as a local activity, inside the workflow task that emitted them: the run's events since its
    # previous call, which the `events` query serves only once that task ends. The call announces them with
    # its first deltas, so a stream shows the last step's tools before this step's words (never in history:
    # a local activity's input is not recorded).
    events: list["RunEvent"] = Field(default_factory=list)


class ToolPolicy(BaseModel):
    """How the workflow must treat one tool call, decided by the tool's own declaration."""

    needs_approval: bool = False
    max_calls_per_run: int | None = None
    # worker: run_tool runs it; workflow: built in (ask_user); client: the frontend runs it;
    # nobody: the run doesn't offer a tool of that name, and the model is told so; agent: another agent,
    # run as a child workflow (`Agent.as_tool`); handoff: `transfer_to_<agent>`, the run goes on as that
    # agent (Agent(handoffs=...)).
    handled_by: Literal["worker", "workflow", "client", "nobody", "agent", "handoff"] = "worker"
    # A heavy tool runs as an activity on the heavy task queue (its own worker pool, long timeouts);
    # every other worker tool runs inline in the agent worker as a local activity.
    heavy: bool = False


class StopWhenInput(BaseModel):
    """The agent's own stop_when predicates (by name) and the run's progress after a step."""

    names: list[str]
    step: int
    usage: "Usage"
    elapsed_s: float
    asked_for_tools: bool
    tool_calls: dict[str, int]
    unanswerable_question: str | None = None


class StopWhenVerdict(BaseModel):
    """Why the run stops (None: it goes on); `failed` when a predicate raised instead of answering."""

    reason: str | None = None
    failed: bool = False


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
    # Per tool_call_id. Approval predicates are code next to the tool, so the activity evaluates them
    # and history records the verdict, which keeps replays deterministic.
    policies: dict[str, ToolPolicy] = Field(default_factory=dict)
    # Structured output, when the step wanted it and the model gave its final answer (no tool calls): the
    # activity's verdict, so the workflow decides from history alone. `valid`: the object is stored with
    # the reply (Message.output); `invalid`: `output_error` says why, for the model to hear.
    output_status: Literal["valid", "invalid"] | None = None
    output_error: str | None = None
    # The gateway's cancel stopped the call mid-answer, out of band (keel/storage/interrupts.py): what was
    # written is stored, and the run's cancel signal, sent first, ends the run.
    interrupted: bool = False


class ToolInput(BaseModel):
    agent_run_id: str
    step: int
    call: ToolCall
    # Where the tool's result message is stored.
    result_seq: int
    # For logs and records only.
    purpose: str = ""
    # Set when the tool is an MCP server's: which one, from the run's snapshot.
    mcp: MCPToolSpec | None = None


class ToolOutcome(BaseModel):
    tool_call_id: str
    result_seq: int
    is_error: bool
    denied: bool = False


class SaveMessageInput(BaseModel):
    """A tool result the workflow produced itself (a denial, an answer, a client tool's output)."""

    agent_run_id: str
    seq: int
    message: Message
    # For a client tool's output: checked against this schema before it reaches the model.
    output_schema: dict[str, Any] | None = None


class SubRunOpening(BaseModel):
    """What `open_sub_run` writes before a sub-agent's child run starts: its conversation (its instructions,
    then the calling model's input as the user's message) and its record, linked to its parent."""

    run: AgentRunInput
    instructions: str
    input: str


class SubRunOpened(BaseModel):
    """`open_sub_run`'s answer: the child run whose conversation and record are now in PostgreSQL."""

    agent_run_id: str


class SubRunSaved(ToolOutcome):
    """The calling run's tool result from a child run; with the usage its record holds when the child
    failed, since a failed workflow returns no state to read it from."""

    usage: "Usage | None" = None


class SubRunResult(BaseModel):
    """What `save_sub_run_result` turns into the calling run's tool result: the child run's final answer,
    or why it has none."""

    agent_run_id: str
    seq: int
    call: ToolCall
    child_run_id: str
    status: "RunStatus"
    detail: str | None = None


class HandoffInput(BaseModel):
    """What `save_handoff` stores at `seq`: the system message that gives the run to `to_agent`, carrying
    its instructions (already in the run's snapshot, so history holds nothing new)."""

    agent_run_id: str
    seq: int
    from_agent: str
    to_agent: str
    instructions: str


class HandoffSaved(BaseModel):
    """`save_handoff`'s answer: where the handoff's system message is stored."""

    seq: int


# --- Signal and update payloads ---


class ApprovalDecision(BaseModel):
    tool_call_id: str
    approved: bool
    reason: str | None = None
    # Who decided. The gateway sets the authenticated user; a CLI signal may name anyone.
    approver: str | None = None


class UserAnswer(BaseModel):
    text: str = Field(min_length=1)


class CancelRequest(BaseModel):
    reason: str | None = None


class QueuedRun(BaseModel):
    agent_run_id: str


class ToolResultSubmission(BaseModel):
    tool_call_id: str
    output: Any = None
    # Set when the client's tool failed; the model sees this text as the error.
    error: str | None = None


class ApprovalRecord(BaseModel):
    """The audit trail of one approval: what was asked, who decided what and when."""

    tool_call_id: str
    tool_name: str
    arguments: dict[str, Any]
    arguments_sha256: str
    requested_at: datetime
    expires_at: datetime
    decided_at: datetime | None = None
    approved: bool | None = None
    reason: str | None = None
    approver: str | None = None
    expired: bool = False


class PendingQuestion(BaseModel):
    tool_call_id: str
    question: str


class PendingToolResult(BaseModel):
    tool_call_id: str
    tool_name: str
    arguments: dict[str, Any]


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
    """A tool finished (or was denied); its result is the message stored at `message_seq`."""

    type: Literal["tool_result"] = "tool_result"
    seq: int
    step: int
    tool_call_id: str
    message_seq: int
    is_error: bool
    denied: bool = False


class ApprovalRequested(BaseModel):
    type: Literal["approval_requested"] = "approval_requested"
    seq: int
    step: int
    tool_call_id: str
    expires_at: datetime


class ApprovalDecided(BaseModel):
    type: Literal["approval_decided"] = "approval_decided"
    seq: int
    step: int
    tool_call_id: str
    approved: bool
    expired: bool = False


class QuestionAsked(BaseModel):
    type: Literal["question_asked"] = "question_asked"
    seq: int
    step: int
    tool_call_id: str
    question: str


class ClientToolRequested(BaseModel):
    """The run waits for the frontend to run this tool call and send its result."""

    type: Literal["client_tool_requested"] = "client_tool_requested"
    seq: int
    step: int
    tool_call_id: str


class SubRunStarted(BaseModel):
    """A tool call of the run started a sub-agent's child run (Agent.as_tool): the child's id, so a
    stream of this run can follow the child, and its agent."""

    type: Literal["sub_run_started"] = "sub_run_started"
    seq: int
    step: int
    tool_call_id: str
    agent_run_id: str
    agent: str


class HandedOff(BaseModel):
    """The run handed the conversation to another agent (a `transfer_to_<agent>` call): from the next step
    on, that agent's instructions, tools and limits are in force."""

    type: Literal["handed_off"] = "handed_off"
    seq: int
    step: int
    tool_call_id: str
    from_agent: str
    to_agent: str
    # The new agent's title for people, from the run's snapshot (None: it has none).
    to_title: str | None = None


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
    # A model reply cut short by cancellation: whatever text it had written is stored here.
    partial_message_seq: int | None = None
    # Structured output: the reply whose validated object (Message.output) is the run's answer.
    output_seq: int | None = None


RunEvent = Annotated[
    StepStarted
    | TextProduced
    | ToolCallRequested
    | ToolResultReady
    | ApprovalRequested
    | ApprovalDecided
    | QuestionAsked
    | ClientToolRequested
    | SubRunStarted
    | HandedOff
    | StepFinished
    | RunFinished,
    Field(discriminator="type"),
]
LlmStepInput.model_rebuild()

# Events after which the run waits for someone outside it.
WAITING_EVENTS = (ApprovalRequested, QuestionAsked, ClientToolRequested)


class CarriedRun(BaseModel):
    """What a run hands to its next Temporal run when it continues as new, between two steps.

    Its events are carried whole, so `events` still answers from seq 1 and a stream resumes anywhere;
    message bodies stay in PostgreSQL, so this grows with the number of steps, never with their size.
    """

    started_at: datetime
    step: int
    usage: "Usage"
    events: list[RunEvent]
    next_seq: int
    tool_runs: dict[str, int]
    # The approval audit: every decision so far (nothing is pending between steps).
    approvals: list["ApprovalRecord"]
    model_route: str | None
    output_seq: int | None
    asked_for_tools: bool
    # Runs queued behind this one (double texting: enqueue), started when it finishes.
    queued: list[str]
    # How many Temporal runs came before this one.
    continued: int
    # Structured output: answers that failed validation so far, and whether the next step must fix one.
    output_failures: int = 0
    fix_output: bool = False
    # The MCP tools listed when the run started (None: the agent has no MCP servers).
    mcp_tools: list[MCPToolSpec] | None = None
    # The sub-agents' child runs started so far.
    sub_runs: list["SubRunRef"] = Field(default_factory=list)


class BudgetsLeft(BaseModel):
    steps: int
    tokens: int | None = None
    cost_usd: float | None = None
    seconds: float | None = None


class SubRunRef(BaseModel):
    """A sub-agent's child run, as the run that called it knows it: running until its answer is back."""

    tool_call_id: str
    agent_run_id: str
    agent: str
    status: RunStatus = RunStatus.running


class RunState(BaseModel):
    """The `state` query's answer, also served as `GET /api/runs/{id}`."""

    agent_run_id: str
    purpose: str
    model: str
    status: RunStatus
    step: int
    budgets: Budgets
    budgets_left: BudgetsLeft
    usage: Usage
    last_event_seq: int
    started_at: datetime
    chat_id: str | None = None
    user_id: str | None = None
    detail: str | None = None
    pending_approvals: list[ApprovalRecord] = Field(default_factory=list)
    pending_question: PendingQuestion | None = None
    pending_tool_results: list[PendingToolResult] = Field(default_factory=list)
    approvals: list[ApprovalRecord] = Field(default_factory=list)
    # Structured output: the run's validated answer. The workflow knows only where it is stored
    # (`output_seq`, its final reply); the gateway reads the object from PostgreSQL for GET /api/runs/{id}.
    output_seq: int | None = None
    output: dict[str, Any] | None = None
    # The sub-agents' child runs this run started, in the order it started them.
    sub_runs: list[SubRunRef] = Field(default_factory=list)
    # The caller's own data about the run (POST /api/runs `metadata`).
    metadata: dict[str, Any] = Field(default_factory=dict)


class FinalRunState(RunState):
    """What an AgentRun returns when it ends: its last state and every event it emitted. The workflow's
    result is in its history, so a stream reads the run's last events from there: a query of a closed
    workflow would replay the whole run on a worker first. Read as a RunState, the events are ignored."""

    events: list[RunEvent] = Field(default_factory=list)


# --- Run records: the workflow's own facts, written by the `record_run` activity (keel/storage/run_records.py) ---


class ToolRunNote(BaseModel):
    """A tool call as the workflow sees it: waiting for someone, decided, or answered without run_tool."""

    seq: int
    step: int
    tool_call_id: str
    tool_name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    # waiting_for_approval, waiting_for_input, waiting_for_tool_result, approved, ok, error, denied,
    # expired, not_run
    status: str
    approval: ApprovalRecord | None = None
    error_message: str | None = None
    result: Any = None
    # When the tool call started waiting for the user or the client, and when it ended (final statuses).
    started_at: datetime | None = None
    finished_at: datetime | None = None


class RunNote(BaseModel):
    """The run's row in `agent_runs` as the workflow knows it at one moment."""

    agent_run_id: str
    temporal_run_id: str
    # The workflow's event count when the note was taken: a later note always has a higher one, so a note
    # that arrives late never overwrites a newer status.
    version: int
    status: RunStatus
    purpose: str
    model: str
    chat_id: str | None = None
    user_id: str | None = None
    input_summary: str = ""
    started_at: datetime
    step: int
    usage: Usage
    # The route that answered the latest LLM call.
    model_route: str | None = None
    finished_at: datetime | None = None
    detail: str | None = None
    error_type: str | None = None
    # Where the run's last text answer is stored, for the record's output summary.
    output_seq: int | None = None
    tool_runs: list[ToolRunNote] = Field(default_factory=list)
    # The run's events since its model calls last announced them (LlmStepInput.events), stored with the
    # record when it is a local activity: a note goes out as the run starts waiting for someone, so a stream
    # that begins later, while a workflow task is under way, knows the run's pauses without a query.
    events: list[RunEvent] = Field(default_factory=list)


# AgentRunInput refers to CarriedRun, which needs the event types defined after it.
AgentRunInput.model_rebuild()
PurposeSpec.model_rebuild()
