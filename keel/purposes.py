"""Purposes: the named agent profiles a run can be started with (the seed's word for them).

A purpose names its tools; the tools themselves live in `activities.tools`. When a run starts, the gateway
takes a `PurposeSpec` snapshot into the workflow input and stores the system prompt as the conversation's
first message, so a run keeps the purpose it started with.
"""

from dataclasses import dataclass

from keel.contracts import PurposeSpec

DEFAULT_STEP_LIMIT = 10


@dataclass(frozen=True)
class Purpose:
    slug: str
    title: str
    system_prompt: str
    tools: tuple[str, ...]
    step_limit: int = DEFAULT_STEP_LIMIT
    # A `provider:model` route; None means the KEEL_MODEL default.
    model: str | None = None

    def spec(self, default_model: str) -> PurposeSpec:
        return PurposeSpec(
            slug=self.slug,
            model=self.model or default_model,
            tools=list(self.tools),
            step_limit=self.step_limit,
        )


PURPOSES: dict[str, Purpose] = {
    p.slug: p
    for p in (
        Purpose(
            slug="assistant",
            title="General assistant",
            system_prompt=(
                "You are a helpful assistant. Use the calculator for arithmetic and the clock for the "
                "current date and time; answer briefly."
            ),
            tools=("calculate", "current_time"),
        ),
        Purpose(
            slug="learnpack-lesson-writer",
            title="LearnPack lesson writer",
            system_prompt=(
                "You write short programming lessons. Plan a syllabus first, then write the lesson as "
                "Markdown, and publish the package only when the user asks for it."
            ),
            tools=("plan_syllabus", "generate_markdown", "publish_package"),
        ),
    )
}

DEFAULT_PURPOSE = "assistant"


class UnknownPurpose(LookupError):
    def __init__(self, slug: str) -> None:
        super().__init__(f"unknown purpose {slug!r}; known purposes: {', '.join(sorted(PURPOSES))}")


def get_purpose(slug: str | None) -> Purpose:
    slug = slug or DEFAULT_PURPOSE
    try:
        return PURPOSES[slug]
    except KeyError:
        raise UnknownPurpose(slug) from None
