"""The one place that declares each activity kind's timeouts and retry policy."""

from datetime import timedelta
from typing import Any

from temporalio.common import RetryPolicy

# An LLM call streams, so it heartbeats: a dead worker or a cancelled run is noticed within the heartbeat
# timeout instead of the whole start-to-close timeout. Provider outages are retried with backoff.
CALL_LLM_OPTIONS: dict[str, Any] = {
    "start_to_close_timeout": timedelta(minutes=5),
    "heartbeat_timeout": timedelta(seconds=30),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(minutes=1),
        maximum_attempts=8,
    ),
}

# Tools report their own failures as error results for the model; an exception escaping a tool is
# unexpected, so it gets a few quick retries and then goes back to the model as an error.
RUN_TOOL_OPTIONS: dict[str, Any] = {
    "start_to_close_timeout": timedelta(minutes=2),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=10),
        maximum_attempts=3,
    ),
}
