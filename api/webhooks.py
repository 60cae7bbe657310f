"""Webhook deliveries, for the people who run the backend on the other end (docs/how-to/webhooks.md):

- `GET /api/webhooks/deliveries`: deliveries newest first, by run and status (pending, delivered, failed,
  refused); a user sees those of their own runs, an admin every one.
- `POST /api/webhooks/deliveries/{id}/redeliver`: send a delivery again, under the same `webhook-id` (a
  receiver that has it already drops it): a new `WebhookDelivery` workflow with the stored input. 409 while
  that delivery is still under way (it goes on retrying by itself).
"""

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from api.auth import CurrentUser, User
from api.gateway import GatewayDep
from keel.storage import webhook_deliveries
from keel.webhooks import WEBHOOK_WORKFLOW, WebhookDeliveryView, delivery_workflow_id

router = APIRouter(prefix="/api/webhooks", tags=["webhooks"])

DeliveryStatus = Literal["pending", "delivered", "failed", "refused"]


def mine(user: User) -> str | None:
    """Whose deliveries a user may see: their runs' (None: an admin's, everyone's)."""
    return None if user.admin else user.id or ""


@router.get("/deliveries", summary="Webhook deliveries, newest first: filter by run and status")
async def list_deliveries(
    gw: GatewayDep,
    me: CurrentUser,
    agent_run_id: Annotated[str | None, Query(max_length=200)] = None,
    status: DeliveryStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[WebhookDeliveryView]:
    rows = await webhook_deliveries.list_deliveries(
        gw.store.pool,
        webhook_deliveries.DeliveryFilter(
            agent_run_id=agent_run_id, status=status, user_id=mine(me), limit=limit
        ),
    )
    return [WebhookDeliveryView(**row) for row in rows]


@router.post(
    "/deliveries/{webhook_id}/redeliver",
    status_code=202,
    summary="Send a delivery again, with the same webhook-id",
    responses={
        404: {"description": "No such delivery of your runs"},
        409: {"description": "Still under way"},
    },
)
async def redeliver(webhook_id: str, gw: GatewayDep, me: CurrentUser) -> WebhookDeliveryView:
    found = await webhook_deliveries.delivery(gw.store.pool, webhook_id)
    if found is None or not me.owns(found[0]["user_id"]):
        raise HTTPException(404, f"no webhook delivery {webhook_id!r}")
    _, delivery = found
    try:
        await gw.temporal.start_workflow(
            WEBHOOK_WORKFLOW,
            delivery,
            id=delivery_workflow_id(webhook_id),
            task_queue=gw.settings.task_queue,
            static_summary=f"redelivery of {delivery.type} → {delivery.endpoint}",
        )
    except WorkflowAlreadyStartedError:
        raise HTTPException(
            409, f"webhook {webhook_id} is being delivered now; it retries by itself"
        ) from None
    except RPCError as err:
        raise HTTPException(503, f"Temporal is unavailable, nothing was redelivered: {err.message}") from None
    await webhook_deliveries.reopen(gw.store.pool, webhook_id)
    row, _ = await webhook_deliveries.delivery(gw.store.pool, webhook_id) or found
    return WebhookDeliveryView(**row)
