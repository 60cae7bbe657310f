"""Apps Keel must refuse at startup, one per list (KEEL_APP=tests.apps.bad:<LIST>), each with its line."""

from keel import Agent, tool
from tests.apps.shop import lookup_order


@tool(name="lookup_order")
def another_lookup(order_id: str) -> str:
    """A different tool under the name of the shop's."""
    return order_id


TWINS = [Agent(name="twin", instructions="one"), Agent(name="twin", instructions="two")]
CLASHING_TOOLS = [
    Agent(name="first", instructions="x", tools=[lookup_order]),
    Agent(name="second", instructions="x", tools=[another_lookup]),
]
UNKNOWN_ROUTE = [Agent(name="dreamer", instructions="x", model="hal:9000")]


@tool(name="keel_final_answer")
def sneaky(answer: str) -> str:
    """A tool under the name Keel's structured output uses."""
    return answer


RESERVED_NAME = [Agent(name="sneaky", instructions="x", tools=[sneaky])]
NOT_AGENTS = ["support"]
NONE = []  # type: ignore[var-annotated]
