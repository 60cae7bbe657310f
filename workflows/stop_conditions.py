"""stopWhen: composable predicates the workflow checks after every step, as the AI SDK does.

Each condition looks at the run's progress and either lets it go on (None) or names how it ends. The
first condition that answers wins, so a final answer in the last allowed step is still `completed`.
"""

from collections.abc import Callable
from dataclasses import dataclass

from keel.agent import Progress
from keel.contracts import PurposeSpec, RunStatus


@dataclass(frozen=True)
class Stop:
    status: RunStatus
    detail: str | None = None


StopCondition = Callable[[Progress], Stop | None]


def final_answer() -> StopCondition:
    return lambda p: None if p.asked_for_tools else Stop(RunStatus.completed)


def needs_input() -> StopCondition:
    def check(p: Progress) -> Stop | None:
        if p.unanswerable_question is None:
            return None
        return Stop(RunStatus.needs_input, f"the agent needs your input: {p.unanswerable_question}")

    return check


def tool_called(name: str, times: int = 1) -> StopCondition:
    def check(p: Progress) -> Stop | None:
        if p.tool_calls.get(name, 0) < times:
            return None
        return Stop(RunStatus.completed, f"stopped after {name} was called {times} time(s)")

    return check


def agents_own(verdict: Stop | None) -> StopCondition:
    """The agent's own stop_when predicates' verdict for this step: app code, so it was reached in an
    activity (`check_stop_when`) and history holds it."""
    return lambda p: verdict


def step_count_is(limit: int) -> StopCondition:
    def check(p: Progress) -> Stop | None:
        if p.step < limit:
            return None
        return Stop(
            RunStatus.step_limit,
            f"stopped after {limit} steps (the step limit) with tool calls still pending",
        )

    return check


def token_budget(limit: int) -> StopCondition:
    def check(p: Progress) -> Stop | None:
        if p.usage.total_tokens < limit:
            return None
        return Stop(
            RunStatus.budget_exceeded,
            f"the token budget is used up ({p.usage.total_tokens} of {limit} tokens)",
        )

    return check


def cost_budget(limit_usd: float) -> StopCondition:
    def check(p: Progress) -> Stop | None:
        if p.usage.cost_usd < limit_usd:
            return None
        return Stop(
            RunStatus.budget_exceeded,
            f"the cost budget is used up (${p.usage.cost_usd:.4f} of ${limit_usd:.4f})",
        )

    return check


def time_budget(limit_s: float) -> StopCondition:
    def check(p: Progress) -> Stop | None:
        if p.elapsed_s < limit_s:
            return None
        return Stop(RunStatus.budget_exceeded, time_budget_detail(limit_s))

    return check


def time_budget_detail(limit_s: float) -> str:
    return f"the time budget of {limit_s:g} s is used up"


def conditions_for(purpose: PurposeSpec, agents_verdict: Stop | None = None) -> list[StopCondition]:
    budgets = purpose.budgets
    conditions = [final_answer(), needs_input()]
    conditions += [tool_called(name, times) for name, times in purpose.stop_after_tool_calls.items()]
    conditions.append(agents_own(agents_verdict))
    conditions.append(step_count_is(budgets.max_steps))
    if budgets.max_tokens is not None:
        conditions.append(token_budget(budgets.max_tokens))
    if budgets.max_cost_usd is not None:
        conditions.append(cost_budget(budgets.max_cost_usd))
    if budgets.max_duration_s is not None:
        conditions.append(time_budget(budgets.max_duration_s))
    return conditions


def first_stop(conditions: list[StopCondition], progress: Progress) -> Stop | None:
    return next((stop for check in conditions if (stop := check(progress)) is not None), None)
