"""An app with a tool whose argument has no JSON schema: the model could never be told how to call it."""

from keel import Agent, tool


class Opaque:
    """Not a type pydantic can describe."""


@tool
def inspect_thing(thing: Opaque) -> str:
    """Look at a thing."""
    return "seen"


support = Agent(name="support", instructions="x", tools=[inspect_thing])
