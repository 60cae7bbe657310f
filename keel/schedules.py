"""Scheduled agents: the shapes a schedule has on every side of Temporal.

A schedule is a Temporal Schedule whose action starts the `ScheduledRun` workflow (workflows/scheduled_run.py)
with a `ScheduledRunInput`; each firing opens an ordinary run of the agent as the current deploy has it
(activities/scheduled_runs.py) and runs it as a child `AgentRun`, waiting for it so the overlap policy holds
for the run itself. The gateway (api/schedules.py), the workflow, the activity and `keel.client` all use these
models, so they live at the bottom layer. Like keel/contracts.py this module does no I/O: the workflow
sandbox imports it.
"""

import re
import uuid
from datetime import datetime
from typing import Any, Literal
from zoneinfo import available_timezones

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from keel.contracts import RunStatus

SCHEDULED_RUN_WORKFLOW = "ScheduledRun"
OPEN_SCHEDULED_RUN = "open_scheduled_run"
# The prefix of each firing's workflow id; Temporal appends the firing's time to it.
FIRING_ID_PREFIX = "scheduled-"
# The key of a scheduled run's metadata naming its schedule (its record, its state, its webhooks).
SCHEDULE_ID_KEY = "schedule_id"
# The failure of a firing whose agent the deploy no longer has (`ApplicationError.type`).
UNKNOWN_PURPOSE = "UnknownPurpose"

# Temporal's overlap policies, named plainly: what a firing does while the previous firing's run still goes.
Overlap = Literal["skip", "buffer_one", "buffer_all", "cancel_other", "terminate_other", "allow_all"]

_SCHEDULE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# A firing's run id comes from its workflow's id and run id, so the gateway can name a firing's run from
# the schedule's description alone, and the workflow replays to the same id.
_FIRING_RUNS = uuid.UUID("0d7f3f0e-52a1-4c36-9a57-8e2b6c1f4a90")
MAX_MESSAGE_CHARS = 100_000


def firing_run_id(workflow_id: str, temporal_run_id: str) -> str:
    """The agent run a firing starts (its `ScheduledRun` workflow's id and first run id)."""
    return f"run-{uuid.uuid5(_FIRING_RUNS, f'{workflow_id}/{temporal_run_id}')}"


class ScheduleRequest(BaseModel):
    """`POST /api/schedules`: run `purpose` on `message` by `cron` or every `interval_seconds` (one of the two)."""

    model_config = ConfigDict(extra="forbid")

    schedule_id: str = Field(
        description="Your name for it: letters, digits, `.`, `_`, `-`, at most 100; unique in the namespace"
    )
    purpose: str = Field(max_length=100, description="The agent each firing runs (GET /api/purposes)")
    message: str = Field(
        min_length=1, max_length=MAX_MESSAGE_CHARS, description="What each run is asked: the user's message"
    )
    cron: str | None = Field(
        None, max_length=200, description="A cron expression (5 fields, or Temporal's 6/7 and @daily etc.)"
    )
    interval_seconds: int | None = Field(None, ge=1, le=366 * 86400, description="Or: fire every N seconds")
    timezone: str = Field("UTC", description="The IANA time zone a cron expression is read in")
    overlap: Overlap = Field("skip", description="What a firing does while the last firing's run still goes")
    catchup_window_seconds: int | None = Field(
        None,
        ge=10,
        le=366 * 86400,
        description="How late a missed firing (Temporal down) may still start; Temporal's default (a year)",
    )
    context: dict[str, Any] | None = Field(None, description="Application context shown to the model")
    metadata: dict[str, Any] | None = Field(
        None, description="Your own data about each run; `schedule_id` is added to it"
    )

    @field_validator("schedule_id")
    @classmethod
    def _plain_id(cls, value: str) -> str:
        if not _SCHEDULE_ID.match(value):
            raise ValueError(
                "a schedule_id is 1 to 100 letters, digits, `.`, `_` or `-`, starting with a letter or digit"
            )
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        if value not in available_timezones():
            raise ValueError(
                f"{value!r} is not an IANA time zone (e.g. UTC, Europe/Madrid, America/New_York)"
            )
        return value

    @model_validator(mode="after")
    def _one_timing(self) -> "ScheduleRequest":
        if (self.cron is None) == (self.interval_seconds is None):
            raise ValueError("give exactly one of `cron` and `interval_seconds`")
        return self


class ScheduledRunInput(BaseModel):
    """The `ScheduledRun` workflow's input: the schedule's request and its owner (the schedule's action
    holds it, and every firing starts with it)."""

    schedule_id: str
    purpose: str
    message: str
    user_id: str | None = None
    context: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)


class ScheduledRunOpening(BaseModel):
    """What the `open_scheduled_run` activity is asked: open this firing's run under this id."""

    request: ScheduledRunInput
    agent_run_id: str


class ScheduledRunResult(BaseModel):
    """How a firing ended: its run, and that run's final status."""

    agent_run_id: str
    status: RunStatus
    detail: str | None = None


class ScheduleFiring(BaseModel):
    """One recent firing: when it was due, when it started, and the run it started."""

    scheduled_at: datetime
    started_at: datetime
    workflow_id: str
    agent_run_id: str


class ScheduleView(BaseModel):
    """A schedule as the API shows it: its request, its owner, its state, and its next and last firings."""

    schedule_id: str
    purpose: str
    message: str
    user_id: str | None = None
    cron: str | None = None
    interval_seconds: int | None = None
    timezone: str = "UTC"
    overlap: Overlap = "skip"
    catchup_window_seconds: int | None = None
    context: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    paused: bool = False
    note: str | None = None
    created_at: datetime | None = None
    next_runs: list[datetime] = Field(default_factory=list)
    recent_runs: list[ScheduleFiring] = Field(default_factory=list)
    running: list[str] = Field(default_factory=list, description="The runs of firings still going")
    actions: int = Field(0, description="How many firings started a run")
    skipped_overlap: int = Field(0, description="How many firings were skipped by the overlap policy")
    missed_catchup: int = Field(0, description="How many firings were missed past the catch-up window")
