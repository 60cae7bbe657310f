"""Webhooks from the workflow's side: which run events a backend hears of, and the durable delivery of each.

`RunWebhooks` listens to the run's events (workflows/reporting.py) and, for each that matters and each of
the run's endpoints, starts a `WebhookDelivery` child workflow: abandoned when the run closes, so a slow or
absent receiver never holds the run open, but its start awaited before the run ends, so no event is lost
with it. A run without endpoints issues no command at all, exactly as before webhooks existed.

`WebhookDelivery` runs the `deliver_webhook` activity until the receiver answers 2xx or 24 hours have
passed (its retries survive worker and gateway crashes: they are Temporal's). Its workflow id is the
webhook-id's, so a second start of a delivery in flight is refused rather than sent twice at once.
"""

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, WorkflowAlreadyStartedError

with workflow.unsafe.imports_passed_through():
    from keel.contracts import AgentRunInput, ApprovalRequested, QuestionAsked, RunEvent, RunFinished
    from keel.webhooks import (
        DELIVER_WEBHOOK,
        NEEDS_INPUT,
        WAITING_FOR_APPROVAL,
        WEBHOOK_GAVE_UP,
        WEBHOOK_REFUSED,
        WEBHOOK_UNDELIVERED,
        WEBHOOK_WORKFLOW,
        WebhookDeliveryInput,
        WebhookGaveUp,
        delivery_workflow_id,
        webhook_id,
    )

# The documented delivery period: a receiver that stays down longer misses the event (and can have it
# redelivered). Each attempt has 15 s for the receiver to answer (activities/webhooks.py) and heartbeats, so
# a worker killed mid-delivery is noticed within seconds and another one tries again.
DELIVERY_PERIOD = timedelta(hours=24)
DELIVER_WEBHOOK_OPTIONS: dict[str, Any] = {
    "schedule_to_close_timeout": DELIVERY_PERIOD,
    "start_to_close_timeout": timedelta(seconds=30),
    "heartbeat_timeout": timedelta(seconds=5),
    # The activity names its own delay after an answer that is not 2xx (KEEL_WEBHOOK_RETRY_SECONDS, doubling);
    # this policy's intervals only apply when it could not (a worker crash, PostgreSQL away).
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(hours=1),
        non_retryable_error_types=[WEBHOOK_REFUSED],
    ),
}
_GAVE_UP_OPTIONS: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=30),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30)
    ),
}


class RunWebhooks:
    """The run's deliveries: started as its events happen, awaited (their starts) before it ends."""

    def __init__(self, run: AgentRunInput, agent: Callable[[], str]) -> None:
        self._run = run
        # The run's agent now (a handoff changes it).
        self._agent = agent
        self._starts: list[asyncio.Task[None]] = []

    def on_event(self, event: RunEvent) -> None:
        """Start the deliveries an event calls for; only runs with endpoints have any."""
        if not self._run.webhooks:
            return
        fields = self._announcement(event)
        if fields is None:
            return
        event_key = fields["type"] + (f"/{fields['tool_call_id']}" if fields.get("tool_call_id") else "")
        for endpoint in self._run.webhooks:
            delivery = WebhookDeliveryInput.model_validate(
                {
                    "webhook_id": webhook_id(self._run.agent_run_id, event_key, endpoint),
                    "endpoint": endpoint,
                    "occurred_at": workflow.now(),
                    "agent_run_id": self._run.agent_run_id,
                    "user_id": self._run.user_id,
                    "purpose": self._agent(),
                    "metadata": self._run.metadata,
                    "parent_run_id": self._run.parent_run_id,
                    **fields,
                }
            )
            self._starts.append(asyncio.create_task(self._start(delivery)))

    @staticmethod
    def _announcement(event: RunEvent) -> dict[str, Any] | None:
        """The webhook event's own fields for a run event, or None when it is not one a backend hears of."""
        if isinstance(event, RunFinished):
            return {
                "type": f"run.{event.status.value}",
                "status": event.status.value,
                "detail": event.detail,
                "output_seq": event.output_seq,
            }
        if isinstance(event, ApprovalRequested):
            return {
                "type": WAITING_FOR_APPROVAL,
                "status": "waiting_for_approval",
                "tool_call_id": event.tool_call_id,
                "expires_at": event.expires_at,
            }
        if isinstance(event, QuestionAsked):
            return {"type": NEEDS_INPUT, "status": "waiting_for_input", "tool_call_id": event.tool_call_id}
        return None

    async def flush(self) -> None:
        """Wait until every delivery asked for so far has started (none is lost when the run closes)."""
        await asyncio.gather(*self._starts)
        self._starts.clear()

    async def _start(self, delivery: WebhookDeliveryInput) -> None:
        try:
            await workflow.start_child_workflow(
                WEBHOOK_WORKFLOW,
                delivery,
                id=delivery_workflow_id(delivery.webhook_id),
                parent_close_policy=workflow.ParentClosePolicy.ABANDON,
                static_summary=f"{delivery.type} → {delivery.endpoint}",
            )
        except WorkflowAlreadyStartedError:
            # That very delivery is under way already (redelivered meanwhile): it is not sent twice at once.
            workflow.logger.info("webhook %s is being delivered already", delivery.webhook_id)


@workflow.defn(name=WEBHOOK_WORKFLOW)
class WebhookDelivery:
    """One event to one endpoint, until it is delivered, refused, or the delivery period is over."""

    @workflow.run
    async def run(self, delivery: WebhookDeliveryInput) -> str:
        try:
            await workflow.execute_activity(
                DELIVER_WEBHOOK,
                delivery,
                summary=f"{delivery.type} → {delivery.endpoint}",
                **DELIVER_WEBHOOK_OPTIONS,
            )
        except ActivityError as err:
            cause = err.cause
            if isinstance(cause, ApplicationError) and cause.type == WEBHOOK_REFUSED:
                raise ApplicationError(cause.message, type=WEBHOOK_REFUSED, non_retryable=True) from None
            why = str(cause or err)
            await workflow.execute_activity(
                WEBHOOK_GAVE_UP, WebhookGaveUp(webhook_id=delivery.webhook_id, error=why), **_GAVE_UP_OPTIONS
            )
            raise ApplicationError(
                f"not delivered to {delivery.endpoint} within {DELIVERY_PERIOD}: {why}",
                type=WEBHOOK_UNDELIVERED,
                non_retryable=True,
            ) from None
        return "delivered"
