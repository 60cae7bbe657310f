"""An app whose agents answer with an object (structured output), for tests/test_structured_output.py:
`KEEL_APP=tests.apps.structured:AGENTS`.

One order tracker per way a model is asked for its answer: the offline scripted model (KEEL_MODEL),
OpenAI's `response_format`, Anthropic's forced tool, a local server in json tool mode; the fake vendors'
models that get it wrong (`badoutput`, `badoutputonce`); and a tracker whose class has a validator of its
own, which no JSON schema can say. `BAD` is an app Keel refuses.
"""

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from keel import Agent, tool


class Shipment(BaseModel):
    """Where an order is, as the support desk files it."""

    order_number: int
    status: Literal["in_transit", "delivered", "lost"]
    carrier: str
    days_late: int = Field(ge=0)


class DeliveredShipment(Shipment):
    """A shipment the desk files only once it has arrived."""

    @model_validator(mode="after")
    def _arrived(self) -> "DeliveredShipment":
        if self.status != "delivered":
            raise ValueError(f"order {self.order_number} is not delivered yet")
        return self


@tool
def track(order_number: int) -> dict[str, object]:
    """Where an order is: its status, its carrier and how many days late it is."""
    return {"order_number": order_number, "status": "in_transit", "carrier": "DHL", "days_late": 2}


def tracker(name: str, model: str | None = None, output_type: type[BaseModel] = Shipment) -> Agent:
    return Agent(
        name=name,
        instructions="You track orders. Look the order up, then answer with its shipment.",
        model=model,
        tools=[track],
        output_type=output_type,
        max_steps=6,
    )


AGENTS = [
    tracker("tracker"),
    tracker("tracker-openai", "openai:gpt-4o-mini"),
    tracker("tracker-anthropic", "anthropic:claude-haiku-4-5"),
    tracker("tracker-local", "local:qwen2.5:7b?tools=json"),
    tracker("sloppy-openai", "openai:badoutput"),
    tracker("sloppy-anthropic", "anthropic:badoutput"),
    tracker("learning-openai", "openai:badoutputonce"),
    tracker("learning-anthropic", "anthropic:badoutputonce"),
    tracker("delivered-only", output_type=DeliveredShipment),
]

BAD = [Agent(name="tally", instructions="Count things.", output_type=dict)]  # type: ignore[arg-type]
