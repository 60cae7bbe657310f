"""Purposes: the named agent profiles a run can be started with (the seed's word for them).

A purpose names its tools; the tools themselves live in `activities.tools`. When a run starts, the gateway
takes a `PurposeSpec` snapshot into the workflow input and stores the system prompt as the conversation's
first message, so a run keeps the purpose it started with.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field

from keel.contracts import ASK_USER_TOOL, Budgets, PurposeSpec

DEFAULT_STEP_LIMIT = 10


@dataclass(frozen=True)
class Purpose:
    slug: str
    title: str
    system_prompt: str
    tools: tuple[str, ...]
    budgets: Budgets = field(default_factory=lambda: Budgets(max_steps=DEFAULT_STEP_LIMIT))
    # A `provider:model` route; None means the KEEL_MODEL default.
    model: str | None = None
    approval_timeout_s: float = 3600
    # When the model asks the user something: wait for the answer, or end the run as needs_input.
    allow_questions: bool = True
    stop_after_tool_calls: dict[str, int] = field(default_factory=dict)

    def spec(
        self,
        default_model: str,
        budgets: Budgets | None = None,
        stop_after_tool_calls: Mapping[str, int] | None = None,
    ) -> PurposeSpec:
        """The snapshot a run starts with. A request's `budgets` and `stop_after_tool_calls` may only lower
        the purpose's own limits, never raise them."""
        return PurposeSpec(
            slug=self.slug,
            model=self.model or default_model,
            # ask_user is built in: every purpose can ask, and allow_questions decides what happens.
            tools=[*self.tools, ASK_USER_TOOL],
            budgets=tighter(self.budgets, budgets) if budgets else self.budgets,
            approval_timeout_s=self.approval_timeout_s,
            allow_questions=self.allow_questions,
            stop_after_tool_calls=fewer_calls(self.stop_after_tool_calls, stop_after_tool_calls or {}),
        )


def tighter(limits: Budgets, requested: Budgets) -> Budgets:
    """Each limit is the smaller of the purpose's and the request's (None = no limit)."""

    def pick(a: float | None, b: float | None) -> float | None:
        return b if a is None else a if b is None else min(a, b)

    return Budgets(
        max_steps=min(limits.max_steps, requested.max_steps),
        max_tokens=pick(limits.max_tokens, requested.max_tokens),
        max_cost_usd=pick(limits.max_cost_usd, requested.max_cost_usd),
        max_duration_s=pick(limits.max_duration_s, requested.max_duration_s),
    )


def fewer_calls(own: Mapping[str, int], requested: Mapping[str, int]) -> dict[str, int]:
    """stopWhen counts of both: for a tool in both, the lower count (the run stops at whichever comes first)."""
    return {
        name: min(own.get(name, times), requested.get(name, times))
        for name, times in {**own, **requested}.items()
    }


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
            tools=("calculate", "current_time", "wait"),
        ),
        Purpose(
            slug="learnpack-lesson-writer",
            title="LearnPack lesson writer",
            system_prompt=(
                "You write short programming lessons. Plan a syllabus first, then write the lesson as "
                "Markdown, and publish the package only when the user asks for it."
            ),
            tools=("plan_syllabus", "generate_markdown", "publish_package"),
            # Lessons are written in one go: a run that needs an answer ends as needs_input instead of waiting.
            allow_questions=False,
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
