"""This project's agents. Keel serves every module-level Agent in this module:

    keel dev --app agents        the whole stack on this machine, serving them
    keel check --app agents      what is wrong with them, if anything, starting nothing

In a deployment, KEEL_APP=agents names this module to the gateway and the workers.
"""

from typing import Annotated

from pydantic import Field

from keel import Agent, ToolError, tool

# A stand-in for your own system of record.
ORDERS = {
    1001: {"status": "shipped", "carrier": "DHL", "total_eur": 42.5},
    1002: {"status": "being packed", "carrier": None, "total_eur": 18.0},
}


# Inline (the default): a quick read, run inside the agent worker. A tool that changes the world would be
# `@tool(side_effects=True)`: a person approves each call first, and it runs on the heavy workers.
# `triggers`: words that make Keel's offline scripted model (KEEL_MODEL=scripted, the default) call it.
@tool(triggers=("order", "parcel", "delivery"))
def lookup_order(
    order_number: Annotated[int, Field(description="The order's number, such as 1001")],
) -> dict[str, object]:
    """Look an order up: its status, carrier and total."""
    order = ORDERS.get(order_number)
    if order is None:
        # The model hears this and can tell the customer; any other exception is retried by Temporal.
        raise ToolError(f"there is no order {order_number}")
    return {"order_number": order_number, **order}


support = Agent(
    name="support",
    title="Order support",
    instructions=(
        "You answer customers' questions about their orders. Look the order up before you answer, and "
        "never guess a status."
    ),
    # None: the KEEL_MODEL of the deployment (`scripted` offline; `openai:gpt-4o-mini` with a key...).
    model=None,
    tools=[lookup_order],
    max_steps=6,
)
