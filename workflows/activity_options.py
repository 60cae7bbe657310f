"""The one place that declares each activity kind's timeouts and retry policy."""

from datetime import timedelta
from typing import Any

from temporalio.common import RetryPolicy
from temporalio.workflow import ActivityCancellationType

# LLM calls and tools heartbeat every second (activities/heartbeat.py): a dead worker is noticed within
# the heartbeat timeout instead of the whole start-to-close timeout, and a cancelled run stops them at
# once. Cancellation waits for the activity to finish stopping, so the words written so far are kept.
_HEARTBEAT_TIMEOUT = timedelta(seconds=10)
_ON_CANCEL = ActivityCancellationType.WAIT_CANCELLATION_COMPLETED

# Provider outages are retried with backoff.
CALL_LLM_OPTIONS: dict[str, Any] = {
    "start_to_close_timeout": timedelta(minutes=5),
    "heartbeat_timeout": _HEARTBEAT_TIMEOUT,
    "cancellation_type": _ON_CANCEL,
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(minutes=1),
        maximum_attempts=8,
    ),
}

# New runs call the model in a local activity, inside the workflow task (AgentRun._think): no round trip
# through the server before and after each call. Local activities have no heartbeats: the workflow task
# timeout notices a dead worker (keel.contracts.RUN_TASK_TIMEOUT), and the gateway's cancel reaches the call directly
# (keel/storage/interrupts.py).
CALL_LLM_LOCAL_OPTIONS: dict[str, Any] = {
    key: value for key, value in CALL_LLM_OPTIONS.items() if key != "heartbeat_timeout"
}

# Tools report their own failures as error results for the model; an exception escaping a tool is
# unexpected, so it gets a few quick retries and then goes back to the model as an error.
_TOOL_RETRIES = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=3,
)

# Inline tools run as local activities inside the agent worker's workflow task: cheap calls that finish in
# well under the timeout. A dead worker is noticed by the workflow task timeout and the call runs again
# on another worker.
RUN_TOOL_INLINE_OPTIONS: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=30),
    "cancellation_type": _ON_CANCEL,
    "retry_policy": _TOOL_RETRIES,
}

# Heavy tools run on the heavy workers' task queue (`python worker.py --queue heavy`): long timeouts, and
# heartbeats so a dead heavy worker is noticed within seconds and cancellation reaches the tool.
RUN_TOOL_HEAVY_OPTIONS: dict[str, Any] = {
    "start_to_close_timeout": timedelta(hours=1),
    "heartbeat_timeout": _HEARTBEAT_TIMEOUT,
    "cancellation_type": _ON_CANCEL,
    "retry_policy": _TOOL_RETRIES,
}

# Storing a message the workflow produced (a denial, an answer): quick, and retried while PostgreSQL is away.
SAVE_MESSAGE_OPTIONS: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=30),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=30),
    ),
}

# Writing the run records (agent_runs, and the tool rows the workflow owns): retried without limit, so a
# PostgreSQL outage only delays them. Quick retries first, then every 10 s at most, so records catch up soon
# after the database returns. A run's last record is awaited before the workflow completes.
RECORD_RUN_OPTIONS: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=30),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=10),
    ),
}


# The agent's own stop_when predicates (app code, pure by contract): quick, local to the agent worker.
CHECK_STOP_WHEN_OPTIONS: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=10),
    "retry_policy": RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=3),
}


# Listing the agent's MCP servers' tools when a run starts (the activity notes a server that can't be listed
# and goes on): time to start a stdio server and list it, a few quick retries if the worker goes away.
LIST_MCP_TOOLS_OPTIONS: dict[str, Any] = {
    "start_to_close_timeout": timedelta(minutes=2),
    "retry_policy": RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=3),
}


# Asking for provider capacity before an LLM call (activities/capacity.py): one quick PostgreSQL transaction,
# local to the agent worker; retried while PostgreSQL is away, like the run's records.
RESERVE_CAPACITY_OPTIONS: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=10),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=1), backoff_coefficient=2.0, maximum_interval=timedelta(seconds=10)
    ),
}
