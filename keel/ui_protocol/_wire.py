"""What every model of the UI message stream protocol shares: camelCase on the wire, snake_case in Python,
and a written form that holds exactly the fields that were given.

The AI SDK's chunk schemas (ai 5.0.x and 6.0.x) reject a field they don't know, even a null one, so a model
is written with the fields that were given and no others (`exclude_unset`), rather than without the ones
that are None: `"detail": null` in a `data-run` part is part of Keel's wire format.
"""

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

CAMEL = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class WireModel(BaseModel):
    """A protocol object: built with Python names (`tool_call_id=`), written with the wire's (`toolCallId`)."""

    model_config = CAMEL

    def wire(self) -> dict[str, Any]:
        """The object as the protocol writes it: the wire's names, only the fields that were given."""
        return self.model_dump(by_alias=True, exclude_unset=True)


class Typed(WireModel):
    """A chunk or a part: a model whose `type` says what it is, and is always written.

    `type` has a default (a chunk knows its own type), and a default counts as unset: this marks it set on
    every instance, built or parsed."""

    def model_post_init(self, context: Any, /) -> None:
        self.__pydantic_fields_set__.add("type")
