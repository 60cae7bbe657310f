"""A shop's agents, written with nothing but Keel's public API: an inline tool, a heavy tool a person
approves, and a stop condition of its own."""

from typing import Annotated

from pydantic import Field

from keel import Agent, Progress, ToolContext, tool


@tool(triggers=("order", "lookup"))
def lookup_order(order_id: Annotated[str, Field(description="The order's number")]) -> dict[str, object]:
    """The order's status and total."""
    return {"order_id": order_id, "status": "shipped", "total_eur": 42.0}


@tool(approval="always", heavy=True, triggers=("refund",))
async def refund(order_id: str, amount_eur: float, ctx: ToolContext) -> dict[str, object]:
    """Refund part or all of an order."""
    return {"order_id": order_id, "refunded_eur": amount_eur, "key": ctx.idempotency_key}


def once_looked_up(progress: Progress) -> str | None:
    """Stop as soon as the order has been looked up: this agent only answers where an order is."""
    return "the order was looked up" if progress.tool_calls.get("lookup_order") else None


support = Agent(
    name="shop-support",
    title="Shop support",
    instructions=lambda run: f"You help the customers of {run.context.get('shop', 'the shop')}.",
    tools=[lookup_order, refund],
    max_steps=6,
)

tracker = Agent(
    name="shop-tracker",
    instructions="You say where an order is.",
    tools=[lookup_order],
    stop_when=[once_looked_up],
)
