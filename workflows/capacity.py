"""Provider limits in the workflow: before an LLM call of a limited route, the step asks for capacity and,
when there is none, sleeps durably until it may ask again, holding no worker slot meanwhile.

A run knows which route patterns are limited from its input (`AgentRunInput.limited_routes`, the gateway's
KEEL_PROVIDER_LIMITS when the run started): a run with none, or whose routes match none, issues exactly the
commands it issued before limits existed, so recorded histories replay unchanged.

While it waits, the run says so everywhere a person looks: its current details (Temporal Web UI,
`describe`), its record (the viewer) and keel_provider_capacity_wait* (the worker's metrics).
"""

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from keel.contracts import (
        RESERVE_CAPACITY,
        AgentRunInput,
        CapacityAnswer,
        CapacityLease,
        CapacityRequest,
    )
    from keel.provider_limits import is_limited
    from workflows.activity_options import RESERVE_CAPACITY_OPTIONS
    from workflows.activity_runner import ActivityRunner
    from workflows.reporting import RunReporter
    from workflows.run_notes import RunNotes

WAITING = "waiting for provider capacity"


class CapacityGate:
    """Asks for capacity before each LLM call of a limited route, and waits for it."""

    def __init__(
        self, run: AgentRunInput, reporter: RunReporter, recorder: RunNotes, activities: ActivityRunner
    ) -> None:
        self._run = run
        self._reporter = reporter
        self._recorder = recorder
        self._activities = activities

    def applies_to(self, model: str) -> bool:
        return bool(self._run.limited_routes) and is_limited(model, self._run.limited_routes)

    async def wait_for_capacity(self, model: str, reply_seq: int, label: str) -> CapacityLease | None:
        """The lease for the next LLM call (None when its routes have no limit: nothing is asked).

        `label` names the call in the run's current details ("LLM call 2 · openai:gpt-4o")."""
        if not self.applies_to(model):
            return None
        started = workflow.time()
        waited = 0.0
        ticket: CapacityLease | None = None
        while True:
            answer = await self._ask(model, reply_seq, waited, ticket)
            if answer.lease is not None:
                if waited:
                    self._waited_over(label)
                return answer.lease
            self._waiting(answer, label)
            await workflow.sleep(timedelta(seconds=answer.wait_s))
            waited, ticket = workflow.time() - started, answer.ticket

    async def _ask(
        self, model: str, reply_seq: int, waited: float, ticket: CapacityLease | None
    ) -> CapacityAnswer:
        return await self._activities.execute(
            RESERVE_CAPACITY,
            CapacityRequest(
                agent_run_id=self._run.agent_run_id,
                reply_seq=reply_seq,
                model=model,
                limited_routes=self._run.limited_routes,
                priority=self._run.effective_priority,
                waited_s=waited,
                ticket=ticket,
            ),
            CapacityAnswer,
            summary=f"capacity for {model}",
            options=RESERVE_CAPACITY_OPTIONS,
            failure="could not ask for provider capacity",
            local=True,
        )

    def _waiting(self, answer: CapacityAnswer, label: str) -> None:
        line = f"{WAITING} ({answer.reason}), asking again in {answer.wait_s:.0f} s"
        first = not self._reporter.capacity_wait
        self._reporter.capacity_wait = line
        self._reporter.set_doing("think", f"{label}: {line}")
        if first:
            self._recorder.send()  # the run's record says so too (the viewer)

    def _waited_over(self, label: str) -> None:
        # An empty detail clears the record's (a record's missing fields keep what it had).
        self._reporter.capacity_wait = ""
        self._reporter.set_doing("think", f"{label}: waiting for the model")
        self._recorder.send()
