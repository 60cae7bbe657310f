"""Structured output: an agent whose final answer is a validated object instead of free text.

    class Shipment(BaseModel):
        order_number: int
        status: Literal["in_transit", "delivered"]

    tracker = Agent(name="tracker", instructions="...", tools=[track], output_type=Shipment)

When a run starts, its snapshot of the agent takes the model's JSON schema (`OutputSpec`), so a redeploy
that changes the class never changes what a live run is held to. Each provider is asked for an answer of
that shape in its own way (activities/models/), and `check_answer` decides whether what came back is one:
against the snapshot's schema always, and through the pydantic class as well while the worker's app has a
class with that same schema (its own validators then run too, and the object is the class's dump of it).
An answer that fails goes back to the model with what is wrong; workflows/structured_output.py counts the tries.

Pure functions, no I/O: the gateway (the app check), the activities and the offline model use them.
"""

import json
import re
from typing import Any

import jsonschema
from pydantic import BaseModel, ValidationError
from pydantic.errors import PydanticSchemaGenerationError, PydanticUserError

from keel.contracts import OutputSpec
from keel.text import clip, one_line

# Errors named in one verdict, at most: enough for the model to fix its answer, short enough for history.
_ERRORS_SHOWN = 3
_PROBLEM_LIMIT = 1000


def output_spec(output_type: type[BaseModel], retries: int) -> OutputSpec:
    """The snapshot a run takes of an agent's output_type."""
    return OutputSpec(
        name=format_name(output_type.__name__), json_schema=output_type.model_json_schema(), retries=retries
    )


def format_name(class_name: str) -> str:
    # Providers accept names of [A-Za-z0-9_-], at most 64 (a generic class is called `Page[int]`).
    return re.sub(r"[^A-Za-z0-9_-]", "_", class_name)[:64] or "output"


def output_problem(output_type: object, retries: object) -> str | None:
    """What is wrong with an agent's output_type and output_retries, for the app check; None if nothing."""
    if not (isinstance(output_type, type) and issubclass(output_type, BaseModel)):
        what = output_type.__name__ if isinstance(output_type, type) else repr(output_type)
        return f"output_type must be a pydantic model, not {what}"
    try:
        schema = output_type.model_json_schema()
    except (PydanticSchemaGenerationError, PydanticUserError) as err:
        return f"output_type {output_type.__name__} has no JSON schema: {one_line(str(err), 200)}"
    if schema.get("type") != "object":
        # Providers take an object only (OpenAI's response format, a tool's input): not a RootModel's list.
        return f"output_type {output_type.__name__} must describe a JSON object, not {schema.get('type')!r}"
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        return f"output_retries must be a whole number of at least 0, not {retries!r}"
    return None


def check_answer(
    text: str, spec: OutputSpec, output_type: type[BaseModel] | None = None
) -> tuple[dict[str, Any] | None, str | None]:
    """The validated object an answer gives, or (None, what is wrong with it, in words the model can act
    on). `output_type` is the agent's class when it still has the snapshot's schema (see `same_schema`)."""
    value, problem = parse_answer(text)
    if problem is None:
        problem = schema_problem(value, spec.json_schema)
    if problem is None and output_type is not None:
        try:
            value = output_type.model_validate_json(json.dumps(value)).model_dump(mode="json")
        except ValidationError as err:
            problem = _pydantic_problem(err)
    if problem is not None:
        return None, clip(problem, _PROBLEM_LIMIT)
    return value, None


def same_schema(output_type: object, spec: OutputSpec) -> bool:
    """Whether a class (the worker's app's, today) still has the schema a run was started with."""
    if not (isinstance(output_type, type) and issubclass(output_type, BaseModel)):
        return False
    try:
        return output_type.model_json_schema() == spec.json_schema
    except (PydanticSchemaGenerationError, PydanticUserError):
        return False


def parse_answer(text: str) -> tuple[Any, str | None]:
    """The JSON value an answer holds: the whole text, or the first JSON object in it, since models like
    to wrap it in a code fence or a sentence."""
    stripped = text.strip()
    if not stripped:
        return None, "the answer was empty: it must be one JSON object"
    try:
        return json.loads(stripped), None
    except ValueError as err:
        whole = err
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", stripped):
        try:
            value, _ = decoder.raw_decode(stripped, match.start())
        except ValueError:
            continue
        return value, None
    return None, f"the answer is not JSON ({whole}): {clip(stripped, 300)}"


def schema_problem(value: Any, schema: dict[str, Any]) -> str | None:
    """What keeps a value from matching a JSON schema (its first few errors, each with where), or None."""
    try:
        validator_class = jsonschema.validators.validator_for(schema)
        validator_class.check_schema(schema)
    except jsonschema.SchemaError as err:
        return f"the output schema itself is invalid: {err.message}"
    errors = sorted(validator_class(schema).iter_errors(value), key=lambda e: list(map(str, e.absolute_path)))
    if not errors:
        return None
    shown = [f"{_where(list(e.absolute_path))}: {e.message}" for e in errors[:_ERRORS_SHOWN]]
    more = len(errors) - len(shown)
    return "; ".join(shown) + (f" (and {more} more)" if more else "")


def _pydantic_problem(err: ValidationError) -> str:
    problems = err.errors(include_url=False)
    shown = [f"{_where(list(p['loc']))}: {p['msg']}" for p in problems[:_ERRORS_SHOWN]]
    more = len(problems) - len(shown)
    return "; ".join(shown) + (f" (and {more} more)" if more else "")


def _where(path: list[Any]) -> str:
    """A place in the answer as a person writes it: `items[0].qty`; the whole answer when empty."""
    if not path:
        return "the answer"
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
