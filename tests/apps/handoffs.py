"""Agents that hand the conversation to each other (`Agent(handoffs=[...])`), written with nothing but
Keel's public API: a triage agent that hands billing questions to a billing agent (named, so the two can
hand back and forth), each with a tool of its own; billing takes fewer steps."""

from keel import Agent, tool


@tool(triggers=("faq",))
def search_faq(topic: str = "general") -> dict[str, str]:
    """Search the frequently asked questions (triage's own tool)."""
    return {"answer": f"the FAQ on {topic}"}


@tool(triggers=("invoice",))
def find_invoice(number: str = "42") -> dict[str, str]:
    """Find an invoice (billing's own tool)."""
    return {"invoice": number, "amount_eur": "12.50"}


triage = Agent(
    name="triage",
    title="Triage",
    instructions="You sort requests out and hand each to the agent that handles it.",
    handoff_description="Sorts out requests that are not about billing.",
    tools=[search_faq],
    handoffs=["billing"],
)

billing = Agent(
    name="billing",
    title="Billing",
    instructions="You handle invoices and refunds.",
    handoff_description="Invoices, payments and refunds.",
    tools=[find_invoice],
    handoffs=[triage],
    max_steps=2,
)
