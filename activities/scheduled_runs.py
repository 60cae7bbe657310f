"""`open_scheduled_run`: a schedule's firing opens its run here, exactly as the gateway opens one for
`POST /api/chat` — the agent as the current deploy has it (not as it was when the schedule was created), its
instructions written from the schedule's context and owner, the schedule's message as the user's, the
conversation and first record in PostgreSQL (keel/run_start.py) — and hands the workflow the run's input.
The run's metadata names its schedule.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

from temporalio import activity
from temporalio.exceptions import ApplicationError

from keel.agent import RunContext
from keel.app import App, UnknownAgent
from keel.contracts import AgentRunInput, Message
from keel.run_start import first_messages, record_start, run_input
from keel.schedules import OPEN_SCHEDULED_RUN, SCHEDULE_ID_KEY, UNKNOWN_PURPOSE, ScheduledRunOpening
from keel.storage.store import RunStore


@dataclass
class ScheduledRunActivities:
    store: RunStore
    # The app this worker serves (KEEL_APP): a firing runs its agent as this deploy has it.
    app: App
    # KEEL_MODEL, for agents that name no model of their own, as the gateway's runs get it.
    default_model: str
    heavy_task_queue: str | None = None
    # The app's webhook endpoints, as runs the gateway starts get them.
    webhooks: Sequence[str] = field(default_factory=tuple)

    @activity.defn(name=OPEN_SCHEDULED_RUN)
    async def open_scheduled_run(self, opening: ScheduledRunOpening) -> AgentRunInput:
        """The firing's run, written to PostgreSQL under the id the workflow chose. Upserts of the same
        rows under the same id: safe to retry."""
        request = opening.request
        try:
            agent = self.app.agent(request.purpose)
        except UnknownAgent as err:
            raise ApplicationError(
                f"schedule {request.schedule_id}: {err}", type=UNKNOWN_PURPOSE, non_retryable=True
            ) from None
        context = RunContext(context=request.context, user_id=request.user_id, chat_id=None)
        spec = agent.spec(self.default_model, run=context, agents=self.app.reachable)
        messages = first_messages(agent, context, [Message(role="user", content=request.message)])
        run = run_input(
            spec,
            messages,
            agent_run_id=opening.agent_run_id,
            user_id=request.user_id,
            client_tools=agent.client_tools,
            heavy_task_queue=self.heavy_task_queue,
            webhooks=self.webhooks,
            metadata={**request.metadata, SCHEDULE_ID_KEY: request.schedule_id},
        )
        await record_start(self.store, run, messages)
        return run
