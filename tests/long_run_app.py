"""An app for the long-run tests (KEEL_APP=tests.long_run_app): one agent that writes long chapters, and a
front desk that hands the conversation over to it."""

from typing import Annotated

from pydantic import Field

from keel import Agent, tool

CHAPTER_BYTES = 7_000


# Heavy: each step then waits for the heavy worker, and the run sees Temporal's continue-as-new suggestion at
# every step. (A run whose tools are all inline takes its steps inside one workflow task, which the worker
# extends every few seconds; it sees the suggestion at those extensions.)
@tool(triggers=("chapter",), heavy=True)
def write_chapter(number: Annotated[int, Field(ge=0, description="The chapter's number")]) -> str:
    """Write a chapter of about 7 KB of text."""
    line = f"Chapter {number}: the same sentence again, for size. "
    return (line * (CHAPTER_BYTES // len(line) + 1))[:CHAPTER_BYTES]


chapter_writer = Agent(
    name="chapter-writer", instructions="Write the chapters asked for.", tools=[write_chapter], max_steps=1000
)

front_desk = Agent(
    name="front-desk",
    instructions="Hand chapter work to the chapter writer.",
    handoffs=[chapter_writer],
    max_steps=5,
)
