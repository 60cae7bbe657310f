"""Run records, metrics and spans from inside the activities.

- `RunRecorder.llm_call(...)` wraps a model's stream: one `llm_calls` row per attempt (running, then ok,
  error or cancelled, with latency, time to first token, tokens, cost), the LLM metrics, and a GenAI
  `chat` span.
- `RunRecorder.tool_run(...)` does the same for one `run_tool` attempt (`tool_runs`, tool metrics, an
  `execute_tool` span).
- `RecordActivities.record_run` is the activity through which the workflow records its own facts.
- `ObservingInterceptor` gives every activity attempt its log context and a log line, and lets the
  attempt's records reach PostgreSQL before it reports back (never more than a second, never while
  PostgreSQL is away: the write-behind queue keeps them).
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TypeVar

import asyncpg
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from activities.models import ChatModel, Finish, ModelChunk
from keel.contracts import RECORD_RUN, ErrorType, LlmStepInput, RunNote, RunStatus, ToolInput, ToolRunNote
from keel.observability import metrics
from keel.observability.logs import log_context
from keel.observability.tracing import tracer
from keel.storage.deltas import store_events
from keel.storage.run_records import RecordWriter, Row, is_unavailable, snapshot, write_run_note

log = logging.getLogger("keel.activities")
T = TypeVar("T")


async def until_stored(operation: Callable[[], Awaitable[T]]) -> T:
    """Run a PostgreSQL operation of the run's conversation; while PostgreSQL is unreachable, wait for it.

    The attempt stays alive meanwhile (it heartbeats), so an outage pauses the run instead of using up
    the activity's retries, and a model's answer already paid for is not asked for again. The attempt
    still ends at its start-to-close timeout, or at once when the run is cancelled.
    """
    delay, warned = 0.2, False
    while True:
        try:
            return await operation()
        except Exception as err:
            if not is_unavailable(err):
                raise
            if not warned:
                log.warning("PostgreSQL is unavailable (%s: %s); waiting for it", type(err).__name__, err)
                warned = True
        if activity.in_activity():
            activity.heartbeat()
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


@dataclass
class RunRecorder:
    writer: RecordWriter = field(default_factory=RecordWriter.disabled)

    def llm_call(self, step: LlmStepInput, model: ChatModel, attempt: int | None = None) -> "LlmCallRecord":
        """The call's record; `attempt` when it is not Temporal's own (see AgentActivities._attempt)."""
        return LlmCallRecord(self.writer, step, model, attempt)

    def tool_run(self, task: ToolInput) -> "ToolRunRecord":
        return ToolRunRecord(self.writer, task)


def _attempt() -> tuple[int, str | None]:
    if not activity.in_activity():
        return 1, None
    info = activity.info()
    return info.attempt, info.activity_id


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _error_type(err: BaseException) -> str:
    return (err.type if isinstance(err, ApplicationError) else None) or type(err).__name__


class LlmCallRecord:
    """One call_llm attempt's call to a provider."""

    def __init__(
        self, writer: RecordWriter, step: LlmStepInput, model: ChatModel, attempt: int | None = None
    ) -> None:
        self._writer = writer
        self._step = step
        self._model = model
        temporal_attempt, activity_id = _attempt()
        attempt = attempt or temporal_attempt
        self._key: dict[str, Any] = {
            "agent_run_id": step.agent_run_id,
            "seq": step.reply_seq,
            "attempt": attempt,
            "step": step.step,
            "activity_id": activity_id,
        }

    def _put(self, **values: Any) -> None:
        self._writer.put(Row("llm_calls", {**self._key, **values}))

    async def watch(self, chunks: AsyncIterator[ModelChunk]) -> AsyncIterator[ModelChunk]:
        """Pass the stream through, timing it; records the call however it ends."""
        started, t0 = datetime.now(UTC), time.monotonic()
        first: float | None = None
        finish: Finish | None = None
        error: tuple[str, str] | None = None
        span = tracer().start_span(
            f"chat {self._step.model}",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": self._step.model,
                "keel.agent_run_id": self._step.agent_run_id,
                "keel.step": self._step.step,
                "keel.attempt": self._key["attempt"],
            },
        )
        self._put(status="running", started_at=started, route=self._step.model)
        status = "error"
        try:
            async for chunk in chunks:
                if first is None and not isinstance(chunk, Finish):
                    first = time.monotonic()
                if isinstance(chunk, Finish):
                    finish = chunk
                yield chunk
            if finish is not None:
                status = "ok"
            else:
                error = (ErrorType.model_stream_cut, "the answer ended without finishing")
        except (asyncio.CancelledError, GeneratorExit):
            status = "cancelled"
            raise
        except BaseException as err:
            error = (_error_type(err), str(err))
            raise
        finally:
            self._finished(status, error, finish, started, time.monotonic() - t0, first and first - t0, span)

    def _finished(
        self,
        status: str,
        error: tuple[str, str] | None,
        finish: Finish | None,
        started: datetime,
        seconds: float,
        ttft: float | None,
        span: Span,
    ) -> None:
        route = (finish.route if finish else None) or getattr(self._model, "route", None) or self._step.model
        provider, model = metrics.split_route(route)
        usage = finish.usage if finish else None
        cost = None if usage is None or usage.unpriced_calls else usage.cost_usd
        self._put(
            status=status,
            route=route,
            provider=provider,
            model=model,
            started_at=started,
            finished_at=datetime.now(UTC),
            latency_ms=_ms(seconds),
            time_to_first_token_ms=None if ttft is None else _ms(ttft),
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            cost_usd=cost,
            finish_reason=finish.reason if finish else None,
            request_id=finish.request_id if finish else None,
            error_type=error[0] if error else None,
            error_message=error[1] if error else None,
        )
        metrics.LLM_CALLS.labels(provider, model, status).inc()
        metrics.LLM_DURATION.labels(provider, model, status).observe(seconds)
        if ttft is not None:
            metrics.LLM_TTFT.labels(provider, model).observe(ttft)
        if usage is not None:
            metrics.LLM_TOKENS.labels(provider, model, "prompt").inc(usage.prompt_tokens)
            metrics.LLM_TOKENS.labels(provider, model, "completion").inc(usage.completion_tokens)
            metrics.LLM_COST.labels(provider, model).inc(usage.cost_usd)
        # GenAI semantic conventions (gen_ai.*), plus Keel's own.
        span.update_name(f"chat {model}")
        span.set_attribute("gen_ai.provider.name", provider)
        span.set_attribute("gen_ai.system", provider)
        span.set_attribute("gen_ai.response.model", model)
        span.set_attribute("keel.route", route)
        if ttft is not None:
            span.set_attribute("keel.time_to_first_token_ms", _ms(ttft))
        if finish is not None:
            span.set_attribute("gen_ai.response.finish_reasons", [finish.reason])
            if finish.request_id:
                span.set_attribute("gen_ai.response.id", finish.request_id)
        if usage is not None:
            span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
            span.set_attribute("keel.cost_usd", usage.cost_usd)
        if error is not None:
            span.set_attribute("error.type", error[0])
            span.set_status(Status(StatusCode.ERROR, error[1]))
        elif status == "cancelled":
            span.set_attribute("error.type", "cancelled")
        span.end()


class ToolRunRecord:
    """One run_tool attempt. Use as `with`; call `finished(...)` once the tool has an outcome."""

    def __init__(self, writer: RecordWriter, task: ToolInput) -> None:
        self._writer = writer
        self._task = task
        attempt, activity_id = _attempt()
        # The approval it waited for, if any, is on the attempt-1 row: the workflow records it (record_run).
        self._key: dict[str, Any] = {
            "agent_run_id": task.agent_run_id,
            "seq": task.result_seq,
            "attempt": attempt,
            "step": task.step,
            "activity_id": activity_id,
            "tool_call_id": task.call.id,
            "tool_name": task.call.name,
        }
        self._done = False
        self._span: Span | None = None

    def _put(self, **values: Any) -> None:
        self._writer.put(Row("tool_runs", {**self._key, **values}))

    def __enter__(self) -> "ToolRunRecord":
        self._started, self._t0 = datetime.now(UTC), time.monotonic()
        self._span = tracer().start_span(
            f"execute_tool {self._task.call.name}",
            kind=SpanKind.INTERNAL,
            attributes={
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": self._task.call.name,
                "gen_ai.tool.call.id": self._task.call.id,
                "keel.agent_run_id": self._task.agent_run_id,
                "keel.step": self._task.step,
                "keel.attempt": self._key["attempt"],
            },
        )
        self._put(
            status="running", started_at=self._started, params_snapshot=snapshot(self._task.call.arguments)
        )
        return self

    def finished(self, value: Any, content: str, is_error: bool) -> None:
        """The tool's outcome: its value, or (is_error) the error text the model will read."""
        self._end(
            "error" if is_error else "ok",
            error=content if is_error else None,
            result=None if is_error else value,
        )

    def _end(self, status: str, *, error: str | None = None, result: Any = None) -> None:
        if self._done:
            return
        self._done = True
        seconds = time.monotonic() - self._t0
        self._put(
            status=status,
            started_at=self._started,
            finished_at=datetime.now(UTC),
            latency_ms=_ms(seconds),
            error_message=error,
            result_snapshot=None if result is None else snapshot(result),
        )
        tool = self._task.call.name
        metrics.TOOL_RUNS.labels(tool, status).inc()
        metrics.TOOL_DURATION.labels(tool, status).observe(seconds)
        if self._span is not None:
            if status != "ok":
                self._span.set_attribute("error.type", status if error is None else "tool_error")
                self._span.set_status(Status(StatusCode.ERROR, error or status))
            self._span.end()

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, _tb: TracebackType | None
    ) -> None:
        if err is None:
            self._end("error", error="the attempt ended without an outcome")
        elif isinstance(err, asyncio.CancelledError):
            self._end("cancelled", error="cancelled")
        else:
            # A crash: Temporal retries the attempt, and the next one gets its own row.
            self._end("error", error=f"{type(err).__name__}: {err}")


# --- the workflow's notes ---


def tool_note_row(agent_run_id: str, note: ToolRunNote) -> dict[str, Any]:
    approval = note.approval
    row: dict[str, Any] = {
        "agent_run_id": agent_run_id,
        "seq": note.seq,
        "attempt": 1,
        "step": note.step,
        "tool_call_id": note.tool_call_id,
        "tool_name": note.tool_name,
        "status": note.status,
        "started_at": note.started_at,
        "finished_at": note.finished_at,
        "latency_ms": _ms((note.finished_at - note.started_at).total_seconds())
        if note.started_at and note.finished_at
        else None,
        "error_message": note.error_message,
        "params_snapshot": snapshot(note.arguments),
        "result_snapshot": None if note.result is None else snapshot(note.result),
    }
    if approval is not None:
        decided = approval.decided_at is not None
        row.update(
            approval=None
            if not decided
            else ("approved" if approval.approved else ("expired" if approval.expired else "denied")),
            approver=approval.approver,
            approval_reason=approval.reason,
            approval_requested_at=approval.requested_at,
            approval_decided_at=approval.decided_at,
        )
    return row


@dataclass
class RecordActivities:
    pool: asyncpg.Pool

    @activity.defn(name=RECORD_RUN)
    async def record_run(self, note: RunNote) -> None:
        """Write the workflow's note. PostgreSQL unreachable: fail, and Temporal retries (no limit)."""
        usage = note.usage
        run = {
            "id": note.agent_run_id,
            "temporal_run_id": note.temporal_run_id,
            "chat_id": note.chat_id,
            "user_id": note.user_id,
            "purpose_slug": note.purpose,
            "status": note.status.value,
            "status_version": note.version,
            "step_count": note.step,
            "model": note.model,
            "model_route": note.model_route,
            "started_at": note.started_at,
            "finished_at": note.finished_at,
            "error_type": note.error_type,
            "error_message": note.detail if note.status == RunStatus.failed else None,
            "detail": note.detail,
            "input_summary": note.input_summary or None,
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "cost_usd": usage.cost_usd,
            "unpriced_calls": usage.unpriced_calls,
        }
        rows = [tool_note_row(note.agent_run_id, t) for t in note.tool_runs]
        try:
            written, _ = await asyncio.gather(
                write_run_note(self.pool, run, rows, note.output_seq),
                store_events(self.pool, note.agent_run_id, note.events),
            )
        except Exception as err:
            if is_unavailable(err):
                raise
            raise ApplicationError(
                f"PostgreSQL refused the run record: {type(err).__name__}: {err}",
                type=ErrorType.record_refused,
                non_retryable=True,
            ) from err
        # Counted once per run: only the write that moved it into a final status counts it.
        if RunStatus(written.status).is_final and (
            written.previous_status is None or not RunStatus(written.previous_status).is_final
        ):
            metrics.RUNS_FINISHED.labels(note.purpose, written.status).inc()
            metrics.RUN_STEPS.labels(note.purpose).inc(note.step)
            metrics.RUN_TOKENS.labels(note.purpose, "prompt").inc(usage.prompt_tokens)
            metrics.RUN_TOKENS.labels(note.purpose, "completion").inc(usage.completion_tokens)
            metrics.RUN_COST.labels(note.purpose).inc(usage.cost_usd)
            if note.finished_at is not None:
                seconds = (note.finished_at - note.started_at).total_seconds()
                metrics.RUN_DURATION.labels(note.purpose, written.status).observe(seconds)
        for tool, decision, waited in written.approvals_decided:
            metrics.APPROVAL_WAIT.labels(tool, decision).observe(waited)


# --- every activity attempt ---

_PHASES = {"call_llm": "think", "run_tool": "act", "save_message": "act", RECORD_RUN: "record"}


class ObservingInterceptor(Interceptor):
    def __init__(self, writer: RecordWriter, settle_seconds: float = 1.0) -> None:
        self.writer = writer
        self.settle_seconds = settle_seconds

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ObservedActivity(next, self)


class _ObservedActivity(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, root: ObservingInterceptor) -> None:
        super().__init__(next)
        self.root = root

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        arg = input.args[0] if input.args else None
        call = getattr(arg, "call", None)
        fields = {
            "agent_run_id": info.workflow_id,
            "purpose": getattr(arg, "purpose", None) or None,
            "phase": _PHASES.get(info.activity_type, info.activity_type),
            "step": getattr(arg, "step", None),
            "tool": call.name if call is not None else None,
            "attempt": info.attempt,
        }
        t0 = time.monotonic()
        with log_context(**fields):
            try:
                result = await super().execute_activity(input)
            except BaseException as err:
                ms = _ms(time.monotonic() - t0)
                outcome = "cancelled" if isinstance(err, asyncio.CancelledError) else "failed"
                log.warning(
                    "%s attempt %d %s after %d ms: %s",
                    info.activity_type,
                    info.attempt,
                    outcome,
                    ms,
                    f"{type(err).__name__}: {err}",
                    extra={"latency_ms": ms, "status": outcome},
                )
                raise
            finally:
                # The attempt's own rows reach PostgreSQL before Temporal hears the outcome, unless it is away.
                await self.root.writer.settle(self.root.settle_seconds)
            ms = _ms(time.monotonic() - t0)
            log.info(
                "%s attempt %d done in %d ms",
                info.activity_type,
                info.attempt,
                ms,
                extra={"latency_ms": ms, "status": "ok"},
            )
            return result
