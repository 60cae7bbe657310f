"""What `POST /api/chat` accepts: the body the AI SDK's `useChat` sends, plus Keel's own fields.

UI messages are turned into Keel `Message`s here, so nothing downstream knows about the AI SDK's shapes.
Their parts are read as the typed parts of keel/ui_protocol/messages.py. A part that fits none (a type
newer than Keel, or a field of the wrong kind) stays the JSON object it is and is skipped, as unknown parts
always were; only a text part must fit, as the message's text is read from it (400 otherwise).
"""

import json
import math
import warnings
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from jsonschema import Draft202012Validator, SchemaError
from jsonschema.validators import validator_for
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError, PydanticKnownError

from keel.contracts import (
    ApprovalDecision,
    Budgets,
    ClientTool,
    Message,
    ToolCall,
    ToolResultSubmission,
)
from keel.ui_protocol import TextUIPart, ToolUIPart, UIMessagePart

# The largest budgets a request may ask for. Workflow code turns them into timers and comparisons, so each
# is finite and far from overflowing anything (`timedelta` ends at 999,999,999 days). They are checked here,
# at the edge, not on the contract models: a workflow whose input no longer validated could never run again.
MAX_BUDGET_STEPS = 10_000
MAX_BUDGET_TOKENS = 100_000_000
MAX_BUDGET_COST_USD = 10_000.0
MAX_BUDGET_DURATION_S = 30 * 24 * 3600
MAX_TEXT = 100_000
MAX_CONTEXT_BYTES = 20_000
# A run's metadata (POST /api/runs), as JSON.
MAX_METADATA_BYTES = 16_000
# All client tool declarations of one request together, as JSON: they travel in the workflow's input, which
# Temporal caps (2 MB), and are sent to the model on every step.
MAX_TOOLS_BYTES = 100_000
# The most steps a request may ask for (a purpose may allow more).
MAX_REQUEST_STEPS = 100
# stop_after_tool_calls: a count past this could never be reached in a run of MAX_REQUEST_STEPS steps.
MAX_STOP_AFTER_CALLS = 1_000
# Levels of objects and arrays: inside a free-form value (`context`, a message part, a tool's schema, a tool's
# output), and in a request body as a whole. They keep every recursive step after this one (serializing,
# jsonb, JSON Schema checks, the model's prompt) far from Python's recursion limit.
MAX_JSON_DEPTH = 32
MAX_BODY_DEPTH = 64
# A body with more problems than this is reported by its first ones.
MAX_REPORTED_PROBLEMS = 20

Loc = tuple[str | int, ...]


# --- JSON that PostgreSQL, Temporal and the workflow can hold ---


def json_problems(value: Any, loc: Loc = (), max_depth: int = MAX_BODY_DEPTH) -> list[InitErrorDetails]:
    """What in a parsed JSON value can't go further, each with where it is: NaN and infinities (Python's JSON
    parser accepts `NaN`, `Infinity` and `1e400`), text with NUL (PostgreSQL stores none) or a lone UTF-16
    surrogate (`"\\ud800"` parses, but is not Unicode and can't be encoded), and nesting past `max_depth`.

    Iterative, so a value nested as deep as the parser allowed is walked without recursion."""
    problems: list[InitErrorDetails] = []
    stack: list[tuple[Any, Loc, int]] = [(value, loc, 0)]
    while stack and len(problems) < MAX_REPORTED_PROBLEMS:
        item, where, depth = stack.pop()
        if isinstance(item, str):
            problems += _text_problems(item, where)
        elif isinstance(item, float) and not math.isfinite(item):
            problems.append(_problem("finite_number", _NOT_FINITE, where, _number_text(item)))
        elif isinstance(item, dict | list):
            if depth + 1 > max_depth:
                problems.append(_problem("json_too_deep", _too_deep(max_depth), where, "[…]"))
                continue
            stack += reversed(list(_children(item, where, depth + 1)))
            if isinstance(item, dict):
                for key in item:
                    problems += _text_problems(key, (*where, printable(key), "[key]"))
    return problems[:MAX_REPORTED_PROBLEMS]


def _children(item: dict[str, Any] | list[Any], where: Loc, depth: int) -> Iterator[tuple[Any, Loc, int]]:
    pairs = item.items() if isinstance(item, dict) else enumerate(item)
    for key, child in pairs:
        yield child, (*where, printable(key) if isinstance(key, str) else key), depth


_NOT_FINITE = "Input should be a finite number: NaN and infinities are not JSON numbers"
_NUL = "Text must not contain NUL characters (\\u0000): PostgreSQL can't store them"


def _too_deep(limit: int) -> str:
    return f"JSON nested deeper than {limit} levels of objects and arrays"


def _text_problems(text: str, where: Loc) -> list[InitErrorDetails]:
    if "\x00" in text:
        return [_problem("string_nul", _NUL, where, printable(text))]
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        half = f"\\u{ord(text[err.start]):04x}"
        message = f"Text must be valid Unicode: a lone UTF-16 surrogate ({half}) is not a character"
        return [_problem("string_unicode", message, where, printable(text))]
    return []


def _problem(kind: str, message: str, where: Loc, shown: Any) -> InitErrorDetails:
    return InitErrorDetails(type=PydanticCustomError(kind, message), loc=where, input=shown)


def _number_text(number: float) -> str:
    return "NaN" if math.isnan(number) else "Infinity" if number > 0 else "-Infinity"


def printable(text: str, limit: int = 200) -> str:
    """Text safe to send back in an error: lone surrogates escaped, and at most `limit` characters."""
    shown = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return shown if len(shown) <= limit else shown[:limit] + "…"


def _refuse(title: str, problems: list[InitErrorDetails]) -> None:
    if problems:
        raise ValidationError.from_exception_data(title, problems)


def _within_json_depth(value: Any) -> Any:
    _refuse("JSON value", json_problems(value, max_depth=MAX_JSON_DEPTH))
    return value


def _part_object(part: Any) -> Any:
    """A message part is a JSON object whose values (a tool call's `input`, its `output`) are each as deep
    as a free-form value may be: an output sent to `POST /api/runs/{id}/tool-results` fits in the part
    that later carries it."""
    if not isinstance(part, dict):
        raise PydanticKnownError("dict_type")
    _refuse("message part", [p for k, v in part.items() for p in json_problems(v, (k,), MAX_JSON_DEPTH)])
    return part


# A free-form JSON value from the client: any shape, at most MAX_JSON_DEPTH levels deep.
JsonValue = Annotated[Any, BeforeValidator(_within_json_depth)]
JsonObject = Annotated[dict[str, Any], BeforeValidator(_within_json_depth)]
# A message part: typed where it fits its type (left to right: the typed union first), else the JSON object.
# Any object is taken, so that is what the OpenAPI schema says, as it always has.
UIPart = Annotated[
    UIMessagePart | dict[str, Any],
    Field(union_mode="left_to_right"),
    BeforeValidator(_part_object),
    WithJsonSchema({"type": "object", "additionalProperties": True}),
]
ToolName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class Strict(BaseModel):
    """Part of a request body: types are strict. `true` is not 1, `"5"` is not 5, `1.0` is not an integer,
    and only `true` and `false` are booleans: where a person's decision is at stake, nothing is guessed."""

    model_config = ConfigDict(strict=True)


class StrictBody(Strict):
    """A request body: strict types, and JSON that every later step can hold (see `json_problems`); 422
    naming the field otherwise, before anything else looks at it."""

    @model_validator(mode="before")
    @classmethod
    def _storable_json(cls, data: Any) -> Any:
        _refuse(cls.__name__, json_problems(data))
        return data


# A message of the chat's history: the AI SDK's UIMessage (keel.ui_protocol.UIMessage) within Keel's bounds,
# its parts typed where they fit (see the module's docs). (Not a docstring, which would become its
# description in the OpenAPI schema.)
class UIMessage(Strict):
    model_config = ConfigDict(extra="allow")

    id: str = Field(max_length=200)
    role: Literal["system", "user", "assistant"]
    parts: list[UIPart] = Field(max_length=1_000)


class RequestBudgets(Strict):
    """Limits for this run; each can only lower the purpose's own."""

    max_steps: int | None = Field(None, ge=1, le=MAX_REQUEST_STEPS)
    max_tokens: int | None = Field(None, ge=1, le=MAX_BUDGET_TOKENS)
    max_cost_usd: float | None = Field(None, gt=0, le=MAX_BUDGET_COST_USD, allow_inf_nan=False)
    max_duration_s: float | None = Field(
        None, gt=0, le=MAX_BUDGET_DURATION_S, allow_inf_nan=False, description="At most 30 days"
    )


class ClientToolDeclaration(Strict):
    """A tool the frontend runs itself. `parameters` (or the AI SDK's `inputSchema`) is a JSON schema."""

    name: ToolName
    description: str = Field("", max_length=2000)
    parameters: JsonObject | None = None
    inputSchema: JsonObject | None = None  # noqa: N815 (the AI SDK's spelling)
    outputSchema: JsonObject | None = None  # noqa: N815

    @field_validator("parameters", "inputSchema", "outputSchema")
    @classmethod
    def _json_schema(cls, schema: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
        """A schema that is not JSON Schema would only fail later, inside the run: refuse it here."""
        if schema is None:
            return None
        tool, field = info.data.get("name", "?"), info.field_name
        if problem := schema_problem(schema):
            raise ValueError(f"tool {tool!r}: {field} is not a valid JSON Schema: {problem}")
        if field != "outputSchema" and schema.get("type", "object") not in ("object", ["object"]):
            raise ValueError(f'tool {tool!r}: {field} must describe an object (`"type": "object"`)')
        return schema


def schema_problem(schema: dict[str, Any]) -> str | None:
    """Why `schema` is not a JSON Schema, checked against the meta-schema of the dialect it names in
    `$schema` (draft 2020-12 when it names none), as the worker will read it."""
    dialect: type[Any] = Draft202012Validator
    if isinstance(schema.get("$schema"), str):
        with warnings.catch_warnings():  # an unknown dialect is read as 2020-12, like the worker does
            warnings.simplefilter("ignore", DeprecationWarning)
            dialect = validator_for(schema, default=Draft202012Validator)
    try:
        dialect.check_schema(schema)
    except SchemaError as err:
        return f"at {err.json_path}: {err.message}"
    return None


class ChatRequest(StrictBody):
    # useChat may send fields of its own (and apps add theirs through `body`); they are ignored.
    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1, max_length=200, description="The chat id")
    messages: list[UIMessage] = Field(min_length=1, max_length=500)
    trigger: Literal["submit-message", "regenerate-message"] = "submit-message"
    messageId: str | None = Field(None, max_length=200)  # noqa: N815 (the AI SDK's spelling)
    purpose: str | None = Field(None, max_length=100, description="A purpose slug; `assistant` by default")
    context: JsonObject | None = Field(None, description="Application context shown to the model")
    max_steps: int | None = Field(
        None, ge=1, le=MAX_REQUEST_STEPS, description="Lower the purpose's step limit for this run"
    )
    budgets: RequestBudgets | None = Field(None, description="Lower the purpose's budgets for this run")
    stop_after_tool_calls: dict[ToolName, Annotated[int, Field(ge=1, le=MAX_STOP_AFTER_CALLS)]] | None = (
        Field(
            None,
            max_length=64,
            description="stopWhen: end the run once a tool was called this many times, e.g. {'publish_package': 1}",
        )
    )
    tools: list[ClientToolDeclaration] | None = Field(
        None, max_length=64, description="Client-side tools the frontend runs itself"
    )

    @field_validator("tools")
    @classmethod
    def _tools_fit_a_run(
        cls, tools: list[ClientToolDeclaration] | None
    ) -> list[ClientToolDeclaration] | None:
        size = len(json.dumps([t.model_dump(exclude_none=True) for t in tools or []]))
        if size > MAX_TOOLS_BYTES:
            raise ValueError(f"the tool declarations take {size} bytes of JSON; at most {MAX_TOOLS_BYTES}")
        return tools

    def requested_budgets(self) -> Budgets | None:
        """The limits this request asks for (`requested_budgets`)."""
        return requested_budgets(self.budgets, self.max_steps)

    def client_tools(self) -> list[ClientTool]:
        return [
            ClientTool(
                name=t.name,
                description=t.description,
                parameters=t.parameters or t.inputSchema or {"type": "object", "properties": {}},
                output_schema=t.outputSchema,
            )
            for t in self.tools or []
        ]


class RunRequest(StrictBody):
    """`POST /api/runs`: a run started server to server. `purpose`, `messages`, `context` and `budgets` mean
    what they mean in `POST /api/chat`; the run belongs to no chat. A field it doesn't know is refused (a
    misspelt `webhook_url` must not go unnoticed)."""

    model_config = ConfigDict(extra="forbid")

    purpose: str | None = Field(None, max_length=100, description="A purpose slug; `assistant` by default")
    messages: list[UIMessage] = Field(
        min_length=1, max_length=500, description="UI messages, the user's last"
    )
    context: JsonObject | None = Field(None, description="Application context shown to the model")
    metadata: JsonObject | None = Field(
        None,
        description="Your own data about the run: in its state, its record and its webhooks; not shown to the model",
    )
    webhook_url: str | None = Field(
        None,
        max_length=2000,
        description="Where this run's events are POSTed, signed, besides the app's endpoints (KEEL_WEBHOOK_URLS); "
        "http(s) and public unless KEEL_WEBHOOK_ALLOW_PRIVATE",
    )
    budgets: RequestBudgets | None = Field(None, description="Lower the purpose's budgets for this run")

    @field_validator("metadata")
    @classmethod
    def _metadata_fits_a_record(cls, metadata: dict[str, Any] | None) -> dict[str, Any] | None:
        size = len(json.dumps(metadata or {}))
        if size > MAX_METADATA_BYTES:
            raise ValueError(f"metadata takes {size} bytes of JSON; at most {MAX_METADATA_BYTES}")
        return metadata

    def requested_budgets(self) -> Budgets | None:
        """The limits this request asks for (None: the purpose's own)."""
        return requested_budgets(self.budgets)


def requested_budgets(budgets: RequestBudgets | None, max_steps: int | None = None) -> Budgets | None:
    """The limits a request asks for, None when it asks for none; where `max_steps` and
    `budgets.max_steps` both are set, the lower wins, as it does against the purpose's own
    (`keel.agent.tighter`)."""
    asked = budgets or RequestBudgets()
    steps = [s for s in (max_steps, asked.max_steps) if s is not None]
    if not steps and asked == RequestBudgets():
        return None
    return Budgets(
        # No step limit asked for: the largest, so the purpose's own stands.
        max_steps=min(steps, default=MAX_BUDGET_STEPS),
        max_tokens=asked.max_tokens,
        max_cost_usd=asked.max_cost_usd,
        max_duration_s=asked.max_duration_s,
    )


class BadChatRequest(ValueError):
    """A body that is valid JSON of the right shape but can't start a run; answered with 400."""


def to_conversation(request: ChatRequest | RunRequest) -> list[Message]:
    """The chat history as Keel messages. The purpose's system prompt is added by the caller.

    System messages from the client are dropped: the purpose owns the system prompt.
    """
    conversation: list[Message] = []
    for ui in request.messages:
        if ui.role == "user":
            conversation.append(Message(role="user", content=_text(ui)))
        elif ui.role == "assistant":
            conversation.extend(_assistant_messages(ui))
    last = request.messages[-1]
    if last.role != "user" or not conversation or not conversation[-1].content.strip():
        raise BadChatRequest("the last message must be a user message with a text part")
    if request.context is not None and len(json.dumps(request.context)) > MAX_CONTEXT_BYTES:
        raise BadChatRequest(f"context is larger than {MAX_CONTEXT_BYTES} bytes of JSON")
    if any(len(m.content) > MAX_TEXT for m in conversation):
        raise BadChatRequest(f"a message is longer than {MAX_TEXT} characters")
    return conversation


def _text(ui: UIMessage) -> str:
    texts = []
    for part in ui.parts:
        if isinstance(part, TextUIPart):
            texts.append(part.text)
        elif isinstance(part, dict) and part.get("type") == "text":
            raise BadChatRequest(f"message {ui.id}: a text part needs a string `text`")
    return "\n".join(texts)


def _tool_parts(ui: UIMessage) -> list[ToolUIPart]:
    """The message's calls of tools the server declared (`tool-<name>`; not the client's dynamic tools)."""
    return [part for part in ui.parts if isinstance(part, ToolUIPart)]


def _assistant_messages(ui: UIMessage) -> list[Message]:
    """An assistant UI message becomes its text and tool calls, followed by the tool results it shows."""
    calls: list[ToolCall] = []
    results: list[Message] = []
    for part in _tool_parts(ui):
        if not part.tool_call_id or part.state not in ("output-available", "output-error"):
            continue  # a call without a result (or only an approval) can't be replayed to a model
        arguments = part.input if isinstance(part.input, dict) else {}
        calls.append(ToolCall(id=part.tool_call_id, name=part.tool_name, arguments=arguments))
        failed = part.state == "output-error"
        output = part.error_text if failed else part.output
        results.append(
            Message(
                role="tool",
                content=output if isinstance(output, str) else json.dumps(output),
                tool_call_id=part.tool_call_id,
                name=part.tool_name,
                is_error=failed,
            )
        )
    text = _text(ui)
    if not text and not calls:
        return []
    return [Message(role="assistant", content=text, tool_calls=calls), *results]


def pending_answers(ui: UIMessage) -> tuple[list[ApprovalDecision], list[ToolResultSubmission]]:
    """What an assistant message resubmitted by the AI SDK answers: approval responses and tool results."""
    approvals: list[ApprovalDecision] = []
    results: list[ToolResultSubmission] = []
    for part in _tool_parts(ui):
        call_id, approval = part.tool_call_id, part.approval
        if part.state == "approval-responded" and approval is not None and approval.approved is not None:
            approvals.append(
                ApprovalDecision(
                    tool_call_id=call_id, approved=approval.approved, reason=approval.reason, approver="chat"
                )
            )
        elif part.state == "output-available" and getattr(part, "preliminary", None) is not True:
            # A preliminary output is a sub-agent's progress the gateway sent, not the client's answer.
            results.append(ToolResultSubmission(tool_call_id=call_id, output=part.output))
        elif part.state == "output-error":
            results.append(ToolResultSubmission(tool_call_id=call_id, error=part.error_text or "failed"))
    return approvals, results
