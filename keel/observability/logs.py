"""JSON logs, one line per event, from the worker and the gateway, all carrying `agent_run_id`.

Each line is one JSON object with `time`, `level`, `logger`, `message`, the process (`service`) and, where
known, `agent_run_id`, `purpose`, `phase`, `step`, `tool` and `attempt`. Those come, in this order of
precedence, from the logging call's `extra`, from `log_context(...)` (set per activity attempt and per
request), and from what Temporal's own `workflow.logger` / `activity.logger` attach.
"""

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from temporalio.runtime import LoggingConfig

RUN_FIELDS = ("agent_run_id", "purpose", "phase", "step", "tool", "attempt")

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "keel_log_context", default=None
)


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Adds fields to every log line written inside the block (in this task and the tasks it starts)."""
    token = _context.set({**(_context.get() or {}), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> dict[str, Any]:
    return dict(_context.get() or {})


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields: dict[str, Any] = {}
        # Temporal's loggers: the workflow id is Keel's agent_run_id.
        for key in ("temporal_workflow", "temporal_activity"):
            info = getattr(record, key, None)
            if isinstance(info, dict):
                fields.setdefault("agent_run_id", info.get("workflow_id"))
                if "attempt" in info and key == "temporal_activity":
                    fields["attempt"] = info["attempt"]
        fields.update(_context.get() or {})
        for name in RUN_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                fields[name] = value
        line.update({k: fields[k] for k in RUN_FIELDS if fields.get(k) is not None})
        for extra in ("event", "latency_ms", "status", "error", "value_ms", "client", "detail"):
            value = getattr(record, extra, None)
            if value is not None:
                line[extra] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(level: str, service: str) -> None:
    """JSON lines on stderr for this process, replacing any handlers set before."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # uvicorn configures its own loggers unless told not to (api/__main__.py passes log_config=None); make
    # sure they reach the JSON handler either way.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    # The run's fields are in the JSON; Temporal's default "({...info...})" message suffix is not needed.
    from temporalio import activity, workflow

    workflow.logger.workflow_info_on_message = False
    activity.logger.activity_info_on_message = False


def temporal_core_logging() -> "LoggingConfig":
    """The Temporal SDK core's own log lines (its Rust part: "Activity not found on completion", poller
    errors...) handed to the `temporalio.core` logger, so they come out as JSON lines like every other line
    instead of as the core's own coloured text on stderr. Give it to the process's `Runtime`."""
    from temporalio.runtime import LogForwardingConfig, LoggingConfig, TelemetryFilter

    forwarding = LogForwardingConfig(logger=logging.getLogger("temporalio.core"))
    return LoggingConfig(
        filter=TelemetryFilter(core_level="WARN", other_level="ERROR"), forwarding=forwarding
    )
