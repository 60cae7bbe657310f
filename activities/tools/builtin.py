"""Built-in tools every purpose offers."""

from typing import Annotated

from pydantic import Field

from activities.tools.registry import TOOLS
from keel.contracts import ASK_USER_TOOL


@TOOLS.tool(triggers=("ask me",), handled_by="workflow")
def ask_user(
    question: Annotated[
        str, Field(min_length=1, max_length=2000, description="The question, in one or two sentences")
    ],
) -> str:
    """Ask the user a question and wait for the answer. Use it only when you cannot go on without it."""
    # The workflow answers this tool itself (it waits for the `answer` signal); nothing runs here.
    raise AssertionError(f"{ASK_USER_TOOL} is handled by the workflow")
