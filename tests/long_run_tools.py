"""A tool for long-run tests, loaded into a test worker with KEEL_TOOL_MODULES=tests.long_run_tools."""

from typing import Annotated

from pydantic import Field

from activities.tools.registry import TOOLS

CHAPTER_BYTES = 7_000


@TOOLS.tool(triggers=("chapter",))
def write_chapter(number: Annotated[int, Field(ge=0, description="The chapter's number")]) -> str:
    """Write a chapter of about 7 KB of text."""
    line = f"Chapter {number}: the same sentence again, for size. "
    return (line * (CHAPTER_BYTES // len(line) + 1))[:CHAPTER_BYTES]
