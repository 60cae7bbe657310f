"""The run's own bookkeeping: its clock, steps, usage, tool counts and the numbering of its messages.

The loop keeps it, the stop conditions and the budgets read it, and it goes whole to the next Temporal run
when a long run continues as new. Its parts of the `state` query and the run records come from here too.
"""

from collections import Counter
from datetime import datetime

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from keel.agent import Progress
    from keel.contracts import AgentRunInput, BudgetsLeft, LlmStepResult, Usage


class RunLedger:
    """Where the run stands; the loop moves it on, everyone else reads it."""

    def __init__(self, run: AgentRunInput) -> None:
        # Read at each use, not copied: a handoff changes the run's agent, and its budgets with it.
        self._run = run
        carried = run.carried
        self.started_at: datetime = workflow.now() if carried is None else carried.started_at
        self.step = 0 if carried is None else carried.step
        self.usage = Usage() if carried is None else carried.usage
        # Conversation messages 0..message_count-1 are the input; replies and tool results follow.
        self._next_seq = run.message_count if carried is None else carried.next_seq
        self.tool_runs: Counter[str] = Counter() if carried is None else Counter(carried.tool_runs)
        # Whether the last step asked for tools (False: the model gave its final answer).
        self.asked_for_tools = False if carried is None else carried.asked_for_tools
        # The route that answered the latest LLM call, and where the run's last text answer is stored.
        self.model_route: str | None = None if carried is None else carried.model_route
        self.output_seq: int | None = None if carried is None else carried.output_seq
        # Where the reply the model is writing right now goes; None between LLM calls.
        self.thinking_seq: int | None = None
        # How many Temporal runs came before this one.
        self.continued = 0 if carried is None else carried.continued

    @property
    def next_seq(self) -> int:
        return self._next_seq

    def take_seq(self) -> int:
        """The seq of the run's next stored message (a reply, a tool result), unique across continue-as-new."""
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def begin_step(self) -> int:
        self.step += 1
        return self.step

    def begin_thinking(self) -> int:
        self.thinking_seq = self.take_seq()
        return self.thinking_seq

    def thought(self, reply: LlmStepResult) -> None:
        """The model's reply arrived: its cost, the route that gave it, and where its words are."""
        self.thinking_seq = None
        self.usage += reply.usage
        self.model_route = reply.model
        if reply.has_text:
            self.output_seq = reply.reply_seq

    def keep_partial_reply(self) -> int | None:
        """A reply cut short (cancelled, out of budget) keeps the words written so far, stored at its seq."""
        if self.thinking_seq is not None:
            self.output_seq = self.thinking_seq
        return self.thinking_seq

    def count_tool_run(self, name: str) -> None:
        self.tool_runs[name] += 1

    def elapsed_s(self) -> float:
        return (workflow.now() - self.started_at).total_seconds()

    def seconds_left(self) -> float | None:
        limit = self._run.purpose.budgets.max_duration_s
        if limit is None:
            return None
        return max(0.0, limit - self.elapsed_s())

    def budgets_left(self) -> BudgetsLeft:
        budgets = self._run.purpose.budgets
        left = self.seconds_left()
        return BudgetsLeft(
            steps=max(0, budgets.max_steps - self.step),
            tokens=None
            if budgets.max_tokens is None
            else max(0, budgets.max_tokens - self.usage.total_tokens),
            cost_usd=None
            if budgets.max_cost_usd is None
            else max(0.0, budgets.max_cost_usd - self.usage.cost_usd),
            seconds=left,
        )

    def progress(self, unanswerable_question: str | None) -> Progress:
        """What the stop conditions read after a step."""
        return Progress(
            step=self.step,
            usage=self.usage,
            elapsed_s=self.elapsed_s(),
            asked_for_tools=self.asked_for_tools,
            tool_calls=dict(self.tool_runs),
            unanswerable_question=unanswerable_question,
        )
