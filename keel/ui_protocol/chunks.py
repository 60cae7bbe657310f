"""The chunks of the AI SDK's UI message stream that Keel sends, as typed models, with their encoder and
decoder.

The gateway writes them (api/run_stream.py, api/sse.py); Keel's Python client, the `keel` command and
the tests read them back. One definition keeps writer and readers agreeing, with each other and with the
AI SDK's `uiMessageChunkSchema` (ai 5, 6 and 7), whose facts these are.

Only the chunk types Keel sends are here (no reasoning, sources, files or streamed tool input): a reader
that meets another type is not reading Keel's stream, or Keel's stream is wrong. Keel's data parts have a
model each (`data-run`, `data-retry`, `data-output`), as each has a data shape of its own; any other
`data-<name>` reads as a `DataChunk`, because the AI SDK lets any name through. Chunks about a text part
or a tool call share a base (`TextPartChunk`, `ToolCallChunk`) that names it.

Wire-exact: ai 5.0.x and 6.0.x reject a known chunk with a field they don't know, so each model names only
its type's fields and refuses others (a misspelt field fails where the chunk is built, not in a browser),
and `encode` writes only the fields that were given (see keel/ui_protocol/_wire.py).
"""

import json
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Discriminator, Field, Tag, TypeAdapter

from keel.contracts import RunStatus
from keel.ui_protocol._wire import Typed, WireModel

FinishReason = Literal["stop", "length", "content-filter", "tool-calls", "error", "other"]


class BaseChunk(Typed):
    """One event of the stream; frozen, as a chunk that was sent never changes. Built with the validating
    constructor: for a handful of fields it costs less than `model_construct` (a loop in Python), and it
    refuses a misspelt field."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --- the message and its steps ---


class StartChunk(BaseChunk):
    type: Literal["start"] = "start"
    message_id: str | None = None
    message_metadata: Any = None


class FinishChunk(BaseChunk):
    type: Literal["finish"] = "finish"
    finish_reason: FinishReason | None = None
    message_metadata: Any = None


class StartStepChunk(BaseChunk):
    type: Literal["start-step"] = "start-step"


class FinishStepChunk(BaseChunk):
    type: Literal["finish-step"] = "finish-step"


class ErrorChunk(BaseChunk):
    type: Literal["error"] = "error"
    error_text: str


# --- text, streamed as a part: start, deltas, end ---


class TextPartChunk(BaseChunk):
    """A chunk of a text part, which it names by `id`."""

    type: str
    id: str


class TextStartChunk(TextPartChunk):
    type: Literal["text-start"] = "text-start"


class TextDeltaChunk(TextPartChunk):
    type: Literal["text-delta"] = "text-delta"
    delta: str


class TextEndChunk(TextPartChunk):
    type: Literal["text-end"] = "text-end"


# --- tool calls and their outcomes ---


class ToolCallChunk(BaseChunk):
    """A chunk about one tool call, which it names by `toolCallId`."""

    type: str
    tool_call_id: str


class ToolInputAvailableChunk(ToolCallChunk):
    type: Literal["tool-input-available"] = "tool-input-available"
    tool_name: str
    input: Any


class ToolApprovalRequestChunk(BaseChunk):
    """ai 6 and later: the call waits for a person's approval."""

    type: Literal["tool-approval-request"] = "tool-approval-request"
    approval_id: str
    tool_call_id: str


class ToolOutputAvailableChunk(ToolCallChunk):
    type: Literal["tool-output-available"] = "tool-output-available"
    output: Any
    # The AI SDK's preliminary tool results: each replaces the one before, and the output without the flag
    # is the call's result. Keel sends a sub-agent's progress so (`SubRunProgress`).
    preliminary: bool | None = None


class ToolOutputErrorChunk(ToolCallChunk):
    type: Literal["tool-output-error"] = "tool-output-error"
    error_text: str


class ToolOutputDeniedChunk(ToolCallChunk):
    """ai 6 and later: the call was denied (or its approval never came)."""

    type: Literal["tool-output-denied"] = "tool-output-denied"


# --- data parts: a part of the message with the same type and id replaces the one before it ---


class DataChunk(BaseChunk):
    """A `data-<name>` part. Keel's own have a model each, below; any other name reads as this one, as
    the AI SDK accepts any name."""

    type: Annotated[str, Field(pattern=r"^data-")]
    id: str | None = None
    data: Any = None
    transient: bool | None = None


class RunData(WireModel):
    """The run a message belongs to, and where it stands. `detail` is always written, null or not."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    agent_run_id: str
    status: RunStatus
    detail: str | None


class RetryData(WireModel):
    """A retried LLM call: the text part of the attempt it gave up on (None: nothing was streamed), and
    which attempt began (None: the step's final text replaced what was streamed)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    step: int
    attempt: int | None
    discarded_text_id: str | None


class SubRunProgress(WireModel):
    """A sub-agent's run as its caller's stream shows it, while it runs: the preliminary output of the
    tool call that started it. `parts` are the child's own message parts so far (its text, its tool calls
    and where each stands, an approval it waits for), as its own stream would build them; a grandchild's
    progress is inside its tool part's output in turn. The call's final output is the child's answer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    agent_run_id: str
    agent: str
    status: RunStatus
    detail: str | None = None
    parts: list[dict[str, Any]] = Field(default_factory=list)


class HandoffData(WireModel):
    """A handoff: the run's conversation went from one agent to another (Agent(handoffs=...)); `title` is
    the new agent's title for people (its name when it has none)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    from_agent: str
    to_agent: str
    title: str


class HandoffDataChunk(DataChunk):
    """`data-handoff`: the agent speaking changed here, one part per handoff (id `handoff-<event seq>`)."""

    type: Literal["data-handoff"] = "data-handoff"
    data: HandoffData


class RunDataChunk(DataChunk):
    """`data-run`: the run's id and status, replaced in place as it changes."""

    type: Literal["data-run"] = "data-run"
    data: RunData


class RetryDataChunk(DataChunk):
    """`data-retry`: an abandoned attempt's text part is not part of the answer."""

    type: Literal["data-retry"] = "data-retry"
    data: RetryData


class OutputDataChunk(DataChunk):
    """`data-output`: a run's structured output (Agent(output_type=...)), the validated object."""

    type: Literal["data-output"] = "data-output"
    data: Any


_KEEL_DATA = {"data-run", "data-retry", "data-output", "data-handoff"}


def _chunk_type(value: Any) -> str | None:
    """The union's tag: the chunk's type, or "data" for a data part of a name Keel doesn't send."""
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if isinstance(kind, str) and kind.startswith("data-") and kind not in _KEEL_DATA:
        return "data"
    return kind if isinstance(kind, str) else None


UIMessageChunk = Annotated[
    Annotated[StartChunk, Tag("start")]
    | Annotated[FinishChunk, Tag("finish")]
    | Annotated[StartStepChunk, Tag("start-step")]
    | Annotated[FinishStepChunk, Tag("finish-step")]
    | Annotated[ErrorChunk, Tag("error")]
    | Annotated[TextStartChunk, Tag("text-start")]
    | Annotated[TextDeltaChunk, Tag("text-delta")]
    | Annotated[TextEndChunk, Tag("text-end")]
    | Annotated[ToolInputAvailableChunk, Tag("tool-input-available")]
    | Annotated[ToolApprovalRequestChunk, Tag("tool-approval-request")]
    | Annotated[ToolOutputAvailableChunk, Tag("tool-output-available")]
    | Annotated[ToolOutputErrorChunk, Tag("tool-output-error")]
    | Annotated[ToolOutputDeniedChunk, Tag("tool-output-denied")]
    | Annotated[RunDataChunk, Tag("data-run")]
    | Annotated[RetryDataChunk, Tag("data-retry")]
    | Annotated[OutputDataChunk, Tag("data-output")]
    | Annotated[HandoffDataChunk, Tag("data-handoff")]
    | Annotated[DataChunk, Tag("data")],
    Discriminator(_chunk_type),
]
"""Any chunk of Keel's stream, told apart by its `type`."""

_CHUNKS: TypeAdapter[UIMessageChunk] = TypeAdapter(UIMessageChunk)

# Python's own JSON, compact, as the gateway has always written it: non-ASCII escaped, floats as Python
# spells them (1e-05), and text that is not valid Unicode (a lone surrogate from a model) still written.
# Pydantic's JSON writer would save a step but differs on each, and fails on the last.
_JSON = json.JSONEncoder(separators=(",", ":"))


def encode(chunk: BaseChunk) -> str:
    """The chunk as the JSON text of one SSE `data:` line."""
    return _JSON.encode(chunk.wire())


def decode(payload: str | bytes) -> UIMessageChunk:
    """One SSE `data:` payload as its chunk. Python's JSON parser reads it (it takes what the encoder
    writes, lone surrogates included), then the union: an unknown type or field is a ValidationError."""
    return decode_object(json.loads(payload))


def decode_object(value: Any) -> UIMessageChunk:
    """A chunk already parsed from JSON, as its model."""
    return _CHUNKS.validate_python(value)
