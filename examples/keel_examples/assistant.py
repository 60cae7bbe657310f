"""Harmless everyday tools for the `assistant` agent."""

import ast
import asyncio
import operator
from datetime import UTC, datetime
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field

from keel import ToolError, tool

_OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}
_MAX_EXPRESSION = 200


def _evaluate(node: ast.AST) -> float | int:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 100:
            raise ToolError("exponent too large")
        return _OPERATORS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.operand))
    raise ToolError("only numbers and + - * / // % ** and parentheses are allowed")


@tool(triggers=("calculate", "compute", "arithmetic", "sum"))
def calculate(
    expression: Annotated[str, Field(description="An arithmetic expression, such as (2 + 3) * 4")],
) -> dict[str, float | int | str]:
    """Evaluate an arithmetic expression exactly (no code is executed)."""
    text = expression.strip().replace("^", "**")
    if not text or len(text) > _MAX_EXPRESSION:
        raise ToolError(f"the expression must be 1 to {_MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise ToolError(f"not an arithmetic expression: {expression!r}") from None
    try:
        value = _evaluate(tree.body)
    except ZeroDivisionError:
        raise ToolError("division by zero") from None
    return {"expression": expression, "value": value}


@tool(triggers=("time", "date", "today", "clock"))
def current_time(
    timezone: Annotated[str, Field(description="An IANA time zone name, such as Europe/Madrid")] = "UTC",
) -> dict[str, str]:
    """The current date and time in a time zone."""
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ToolError(f"unknown time zone {timezone!r}") from None
    now = datetime.now(UTC).astimezone(zone)
    return {"timezone": timezone, "iso": now.isoformat(timespec="seconds"), "weekday": now.strftime("%A")}


# Heavy: it holds its slot for up to five minutes, which would stall the agent worker's workflow tasks.
@tool(triggers=("wait", "sleep"), approval=lambda arguments: arguments.get("seconds", 0) > 10, heavy=True)
async def wait(
    seconds: Annotated[float, Field(gt=0, le=300, description="How long to wait, in seconds")],
) -> dict[str, float]:
    """Wait for a while, then say so. Waits longer than 10 seconds need a person's approval."""
    await asyncio.sleep(seconds)
    return {"waited_seconds": seconds}
