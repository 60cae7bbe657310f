"""The shop redeployed: `shop-support` without its refund tool, `shop-tracker` gone."""

from keel import Agent
from tests.apps.shop import lookup_order

support = Agent(
    name="shop-support",
    instructions="You help the customers of the shop. Refunds are handled by people now.",
    tools=[lookup_order],
)
