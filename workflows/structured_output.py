"""Structured output from the workflow's side: an agent with `output_type` owes a final answer that
validates, and this keeps count of the answers that did not.

`call_llm` judges the final answer and history records its verdict; an answer that failed goes back to the
model with what is wrong, as the next user message, at most `retries` times, and then the run fails saying
why. Runs without an output schema never take that path, so no patch guards it: their histories replay
exactly as before.
"""

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from keel.contracts import (
        OUTPUT_FEEDBACK_PREFIX,
        SAVE_MESSAGE,
        AgentRunInput,
        LlmStepResult,
        Message,
        RunStatus,
        SaveMessageInput,
        ToolOutcome,
    )
    from workflows.activity_options import SAVE_MESSAGE_OPTIONS
    from workflows.activity_runner import ActivityRunner
    from workflows.ledger import RunLedger
    from workflows.stop_conditions import Stop

# The run record's error_type of a run whose final answer never validated. Not an ApplicationError type
# (the run fails as AgentRunFailed), so it is not in keel.contracts.ErrorType.
OUTPUT_VALIDATION_FAILED = "OutputValidationFailed"


class OutputJudge:
    """The failed answers so far, whether the next step must fix one, and where the valid answer is."""

    def __init__(self, run: AgentRunInput, ledger: RunLedger, activities: ActivityRunner) -> None:
        self._run = run
        self._ledger = ledger
        self._activities = activities
        carried = run.carried
        self.failures = 0 if carried is None else carried.output_failures
        # The last answer failed: the next step must give the structured answer, no tools.
        self.must_fix = False if carried is None else carried.fix_output
        # The reply holding the valid answer (its object lives with that reply in PostgreSQL, not in history).
        self.answer_seq: int | None = None

    async def judge(self, reply: LlmStepResult) -> Stop | None:
        """A final answer that had to be a structured object, as call_llm judged it: the run's answer, or
        sent back to the model with what is wrong (the run then owes another answer, as after a tool call),
        or, past the agent's retries, the run's failure (its record's error type: OUTPUT_VALIDATION_FAILED)."""
        spec = self._run.purpose.output
        if reply.output_status == "valid" or spec is None:
            self.answer_seq, self.must_fix = reply.reply_seq, False
            return None
        self.failures += 1
        why = reply.output_error or "the answer is not valid"
        tries = f"{self.failures} attempt(s)"
        if self.failures > spec.retries:
            return self._failed(f"the final answer did not validate as {spec.name} after {tries}: {why}")
        if self._ledger.step >= self._run.purpose.budgets.max_steps:
            return self._failed(
                f"the final answer did not validate as {spec.name} ({tries}) and the step limit leaves no "
                f"step to fix it: {why}"
            )
        feedback = Message(
            role="user",
            content=f"{OUTPUT_FEEDBACK_PREFIX} ({spec.name}): {why}\nReply again with only the corrected "
            "final answer: one JSON object that matches the schema.",
        )
        await self._activities.execute(
            SAVE_MESSAGE,
            SaveMessageInput(
                agent_run_id=self._run.agent_run_id, seq=self._ledger.take_seq(), message=feedback
            ),
            ToolOutcome,
            summary=f"output feedback {self.failures}",
            options=SAVE_MESSAGE_OPTIONS,
            failure="could not store the output's validation errors",
        )
        self.must_fix = True
        return None

    def _failed(self, detail: str) -> Stop:
        self.must_fix = False
        return Stop(RunStatus.failed, detail)
