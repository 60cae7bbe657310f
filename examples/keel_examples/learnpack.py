"""The seed's LearnPack example: plan a syllabus, write the lesson, publish the package."""

from typing import Annotated

from pydantic import Field

from keel import ToolContext, ToolError, tool
from keel_examples.packages import PackageRegistry


@tool(triggers=("plan", "syllabus", "outline"))
def plan_syllabus(
    topic: Annotated[str, Field(min_length=1, max_length=200, description="What the lesson teaches")],
    sections: Annotated[int, Field(ge=2, le=8, description="How many sections")] = 4,
) -> dict[str, object]:
    """Plan a lesson: a title and an ordered outline of sections."""
    topic = topic.strip()
    templates = [
        "What {t} is and why it matters",
        "The core idea of {t}, step by step",
        "A worked example of {t}",
        "Common mistakes with {t}",
        "{t} in real code",
        "Practice exercises on {t}",
        "Going further with {t}",
        "Summary of {t}",
    ]
    outline = [tpl.format(t=topic) for tpl in templates[: sections - 1]] + [f"Summary of {topic}"]
    return {"topic": topic, "title": f"Learn {topic}", "outline": outline}


@tool(triggers=("write", "lesson", "markdown", "generate"))
def generate_markdown(
    title: Annotated[str, Field(min_length=1, max_length=200, description="The lesson's title")],
    outline: Annotated[list[str], Field(description="Section headings, in order")],
) -> dict[str, str]:
    """Write the lesson as Markdown, one section per outline entry."""
    parts = [f"# {title}", ""]
    for number, heading in enumerate(outline, start=1):
        parts += [
            f"## {number}. {heading}",
            "",
            f"This section covers {heading[0].lower() + heading[1:]}.",
            "",
        ]
    return {"title": title, "markdown": "\n".join(parts).rstrip() + "\n"}


@tool(triggers=("publish",), side_effects=True, approval="always", max_calls_per_run=1)
def publish_package(
    title: Annotated[str, Field(min_length=1, max_length=200, description="The lesson's title")],
    markdown: Annotated[str, Field(min_length=1, description="The lesson in Markdown")],
    ctx: ToolContext,
) -> dict[str, object]:
    """Publish the lesson as a LearnPack package (a folder with learn.json and README.md)."""
    registry = PackageRegistry(ctx.data_dir / "packages")
    try:
        # A retried or re-executed call carries the same key, and the registry publishes it once.
        return registry.publish(
            title, markdown, idempotency_key=ctx.idempotency_key, agent_run_id=ctx.agent_run_id
        )
    except OSError as err:
        raise ToolError(f"could not write the package: {err.strerror}") from None
