"""Agents as tools (`Agent.as_tool`): a call runs the other agent as a child `AgentRun` workflow, with its
own run id, history and records, governed by the run that called it.

The child is bounded by its parent: it gets at most the steps, tokens, cost and time the parent has left (the
sub-agent calls of one step share its tokens and cost evenly), and at most the delegation depth it has
left; Temporal cancels it when the parent is cancelled (the call's task is cancelled with the step, and the
child with it), and its usage is added to the parent's.
Its conversation and record are written by an activity before it starts, and its final answer comes back
through one, so no message body enters either history. A `SubRunStarted` event names the child to the
run's streams, which follow it (api/run_stream.py), and the `state` query lists the run's children
(`sub_runs`), so a decision sent to the parent can find the child that waits for it (api/run_service.py).
"""

import asyncio
import uuid
from dataclasses import dataclass, field

from temporalio import workflow
from temporalio.exceptions import CancelledError, ChildWorkflowError

with workflow.unsafe.imports_passed_through():
    from keel.agent import tighter
    from keel.contracts import (
        OPEN_SUB_RUN,
        RUN_TASK_TIMEOUT,
        SAVE_SUB_RUN_RESULT,
        WORKFLOW_TYPE,
        AgentRunInput,
        Budgets,
        PurposeSpec,
        RunState,
        RunStatus,
        SubAgentSpec,
        SubRunOpened,
        SubRunOpening,
        SubRunRef,
        SubRunResult,
        SubRunSaved,
        SubRunStarted,
        ToolCall,
        ToolOutcome,
    )
    from keel.text import one_line
    from workflows.activity_options import SAVE_MESSAGE_OPTIONS
    from workflows.activity_runner import ActivityRunner
    from workflows.ledger import RunLedger
    from workflows.reporting import RunReporter

# How many of a run's sub-agents may run at once; further calls wait for one to finish.
MAX_PARALLEL_SUB_AGENTS = 4
# Child run ids are derived from the parent's id and the call's result seq (unique in the run, across
# continue-as-new), in the `run-<uuid>` form the gateway accepts, so a child is addressable like any run.
_CHILD_IDS = uuid.UUID("5b0f7c4e-3a51-4f0e-9d52-6a4f1c2b8e77")
# The preview of a child's task in its record and the Web UI, in characters (as keel/run_start.py).
_SUMMARY_CHARS = 120


@dataclass(eq=False)
class Refused:
    """Why a sub-agent call did not start: told to the model as the call's error result."""

    why: str


@dataclass(eq=False)
class SubAgents:
    """Runs the run's calls of other agents as child workflows, a few at a time."""

    run: AgentRunInput
    ledger: RunLedger
    reporter: RunReporter
    activities: ActivityRunner
    # Every child run started so far, in order (carried across continue-as-new).
    started: list[SubRunRef] = field(default_factory=list)
    # How many sub-agent calls the step in progress makes: they share what the run has left of its tokens
    # and cost, so together they never spend more than that (steps and time are each child's own).
    step_calls: int = 1
    _slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(MAX_PARALLEL_SUB_AGENTS))

    def child_input(self, call: ToolCall, seq: int) -> AgentRunInput | Refused:
        """The child run for this call, bounded by what this run has left; or why there is none."""
        sub_agent = self.run.purpose.sub_agents.get(call.name)
        if sub_agent is None:
            return Refused(f"{call.name} is not an agent this one may call")
        if self.run.purpose.max_depth < 1:
            return Refused(f"{call.name} was not called: agents may delegate no deeper here (depth limit)")
        budgets = self._budgets_left()
        if isinstance(budgets, Refused):
            return budgets
        task = str(call.arguments.get("input") or "").strip()
        if not task:
            return Refused(f"{call.name} was not called: its `input` (the task) is empty")
        return AgentRunInput(
            agent_run_id=f"run-{uuid.uuid5(_CHILD_IDS, f'{self.run.agent_run_id}/{seq}')}",
            purpose=self._bounded(sub_agent.purpose, budgets),
            message_count=2,
            user_id=self.run.user_id,
            input_summary=one_line(task, _SUMMARY_CHARS),
            heavy_task_queue=self.run.heavy_task_queue,
            parent_run_id=self.run.agent_run_id,
            depth=self.run.depth + 1,
            # Provider limits: the parent's snapshot, and its priority (a chat's sub-agents are interactive).
            limited_routes=self.run.limited_routes,
            priority=self.run.effective_priority if self.run.limited_routes else None,
        )

    def _budgets_left(self) -> Budgets | Refused:
        left = self.ledger.budgets_left()
        spent = [
            name
            for name, value in (
                ("steps", left.steps),
                ("tokens", left.tokens),
                ("cost", left.cost_usd),
                ("time", left.seconds),
            )
            if value is not None and value <= 0
        ]
        if spent:
            return Refused(f"not called: this run has no {' or '.join(spent)} left to give a sub-agent")
        share = max(1, self.step_calls)
        return Budgets(
            max_steps=left.steps,
            max_tokens=None if left.tokens is None else max(1, left.tokens // share),
            max_cost_usd=None if left.cost_usd is None else left.cost_usd / share,
            max_duration_s=left.seconds,
        )

    def _bounded(self, purpose: PurposeSpec, budgets: Budgets) -> PurposeSpec:
        """The sub-agent's snapshot held to the parent's budgets left and to one level less of depth."""
        return purpose.model_copy(
            update={
                "budgets": tighter(purpose.budgets, budgets),
                "max_depth": min(purpose.max_depth, self.run.purpose.max_depth - 1),
            }
        )

    async def run_child(self, step: int, call: ToolCall, seq: int, child: AgentRunInput) -> ToolOutcome:
        """Open the child run, wait for it, add its usage to this run's, and store its answer as the
        call's result. Cancelling the call (the parent cancelled) cancels the child and waits for it."""
        async with self._slots:
            sub_agent: SubAgentSpec = self.run.purpose.sub_agents[call.name]
            task = str(call.arguments.get("input") or "").strip()
            await self.activities.execute(
                OPEN_SUB_RUN,
                SubRunOpening(run=child, instructions=sub_agent.instructions, input=task),
                SubRunOpened,
                summary=f"open sub-agent {call.name}",
                options=SAVE_MESSAGE_OPTIONS,
                failure=f"could not open a run of sub-agent {call.name}",
            )
            status, detail = await self._outcome_of(step, call, child)
            saved = await self.activities.execute(
                SAVE_SUB_RUN_RESULT,
                SubRunResult(
                    agent_run_id=self.run.agent_run_id,
                    seq=seq,
                    call=call,
                    child_run_id=child.agent_run_id,
                    status=status,
                    detail=detail,
                ),
                SubRunSaved,
                summary=f"result of {call.name}",
                options=SAVE_MESSAGE_OPTIONS,
                failure=f"could not store the result of sub-agent {call.name}",
            )
            if saved.usage is not None:
                # A failed child returned no state: its usage comes from its record.
                self.ledger.usage += saved.usage
            return saved

    def _started(self, step: int, call: ToolCall, child: AgentRunInput) -> SubRunRef:
        """Note the child that has just started, for the state query and (runs from this release on, which
        the patch marks) as an event of the run's stream: once it exists, so a stream can follow it."""
        ref = SubRunRef(tool_call_id=call.id, agent_run_id=child.agent_run_id, agent=child.purpose.slug)
        self.started.append(ref)
        if workflow.patched("keel-sub-run-events"):
            self.reporter.emit(
                SubRunStarted,
                step=step,
                tool_call_id=call.id,
                agent_run_id=child.agent_run_id,
                agent=child.purpose.slug,
            )
        return ref

    def _memo(self, child: AgentRunInput) -> dict[str, str]:
        """The child's memo: its parent, and its user as a run the gateway starts names it."""
        memo = {"parent_run_id": self.run.agent_run_id}
        if child.user_id:
            memo["user_id"] = child.user_id
        return memo

    async def _outcome_of(
        self, step: int, call: ToolCall, child: AgentRunInput
    ) -> tuple[RunStatus, str | None]:
        handle = await workflow.start_child_workflow(
            WORKFLOW_TYPE,
            child,
            id=child.agent_run_id,
            task_timeout=RUN_TASK_TIMEOUT,
            result_type=RunState,
            cancellation_type=workflow.ChildWorkflowCancellationType.WAIT_CANCELLATION_COMPLETED,
            parent_close_policy=workflow.ParentClosePolicy.REQUEST_CANCEL,
            memo=self._memo(child),
            static_summary=f"{child.purpose.slug}: {child.input_summary}",
        )
        ref = self._started(step, call, child)
        try:
            state: RunState = await handle
        except ChildWorkflowError as err:
            if isinstance(err.cause, CancelledError):
                ref.status = RunStatus.cancelled
                raise asyncio.CancelledError() from err
            # The child failed (its record says why); the parent's model hears it and may go on.
            ref.status = RunStatus.failed
            return RunStatus.failed, str(err.cause or err)
        ref.status = state.status
        self.ledger.usage += state.usage
        return state.status, state.detail
