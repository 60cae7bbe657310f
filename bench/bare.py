"""The baseline: the agent loop written by hand on bare temporalio, calling Keel's own activities.

It does what a careful developer would write without Keel: call_llm, then each tool call as an activity
(all at once), until the model stops asking for tools. No run events, no run records, no approvals, no
budgets, no queries. Same activity code, same task timeouts, same server, so the difference between a Keel
run and this one is what Keel's workflow itself costs.

Only deterministic code here: the workflow sandbox imports this module. The worker is bench/bare_worker.py.
"""

import asyncio
from datetime import timedelta

from pydantic import BaseModel
from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from keel.contracts import CALL_LLM, RUN_TOOL, LlmStepInput, LlmStepResult, ToolInput, ToolOutcome

BARE_WORKFLOW = "BareAgentLoop"
BARE_TASK_QUEUE = "bench-bare"
# Keel's own values (workflows/activity_options.py) for the happy path: the timeouts of an LLM call and a
# tool. Retries never happen here, so their policy doesn't matter.
_LLM_TIMEOUT = timedelta(minutes=5)
_TOOL_TIMEOUT = timedelta(minutes=10)
_LOCAL_TOOL_TIMEOUT = timedelta(seconds=30)


class BareInput(BaseModel):
    agent_run_id: str
    model: str
    tools: list[str]
    # The conversation is in PostgreSQL at seq 0..message_count-1, as for a Keel run.
    message_count: int
    max_steps: int = 10
    # Tools as local activities (inside the workflow task) instead of activities on the task queue.
    local_tools: bool = False
    # The model calls too, as Keel's runs make them.
    local_llm: bool = False


@workflow.defn(name=BARE_WORKFLOW)
class BareAgentLoop:
    @workflow.run
    async def run(self, run: BareInput) -> int:
        """Returns the number of steps taken."""
        next_seq = run.message_count
        for step in range(1, run.max_steps + 1):
            call = LlmStepInput(
                agent_run_id=run.agent_run_id, step=step, model=run.model, tools=run.tools, reply_seq=next_seq
            )
            if run.local_llm:
                reply = await workflow.execute_local_activity(
                    CALL_LLM, call, result_type=LlmStepResult, start_to_close_timeout=_LLM_TIMEOUT
                )
            else:
                reply = await workflow.execute_activity(
                    CALL_LLM, call, result_type=LlmStepResult, start_to_close_timeout=_LLM_TIMEOUT
                )
            next_seq += 1
            if not reply.tool_calls:
                return step
            calls = []
            for call in reply.tool_calls:
                task = ToolInput(agent_run_id=run.agent_run_id, step=step, call=call, result_seq=next_seq)
                next_seq += 1
                calls.append(self._tool(task, run.local_tools))
            await asyncio.gather(*calls)
        return run.max_steps

    async def _tool(self, task: ToolInput, local: bool) -> ToolOutcome:
        if local:
            return await workflow.execute_local_activity(
                RUN_TOOL, task, result_type=ToolOutcome, start_to_close_timeout=_LOCAL_TOOL_TIMEOUT
            )
        return await workflow.execute_activity(
            RUN_TOOL, task, result_type=ToolOutcome, start_to_close_timeout=_TOOL_TIMEOUT
        )
