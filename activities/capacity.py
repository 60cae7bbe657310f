"""Provider limits in the worker: `reserve_capacity` (the local activity a step asks for capacity with before
its LLM call), the accounting `call_llm` does around its call (the request's start, the tokens it really
used, a 429's cooldown), and the utilization gauges the worker samples.

The accounting itself is shared by every worker in PostgreSQL (keel/storage/provider_limits.py). Asking
is cheap and answers at once: granted, or "wait N seconds", which the workflow sleeps durably, holding no
worker slot (workflows/capacity.py).
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass

from temporalio import activity

from activities.models.chain import FallbackChain
from keel.contracts import (
    MAX_RETRY_AFTER,
    RESERVE_CAPACITY,
    CapacityAnswer,
    CapacityLease,
    CapacityRequest,
    LlmStepInput,
    Message,
    Usage,
)
from keel.observability.metrics import (
    PROVIDER_CAPACITY_WAIT_SECONDS,
    PROVIDER_CAPACITY_WAITS,
    PROVIDER_LIMIT_UTILIZATION,
    PROVIDER_RATE_LIMITED,
)
from keel.provider_limits import chain_patterns, governing_pattern
from keel.storage.provider_limits import Grant, ProviderLedger, Wait
from keel.storage.store import RunStore

log = logging.getLogger("keel.provider_limits")

# Characters per token for the estimate before a call (its reported usage replaces it afterwards), and the
# tokens set aside for the answer, which no one knows in advance.
CHARS_PER_TOKEN = 4
ANSWER_TOKENS = 512
# A 429 without Retry-After pauses the route this long.
DEFAULT_COOLDOWN_S = 1.0
# How often the worker samples keel_provider_limit_utilization.
SAMPLE_EVERY_S = 5.0


def estimate_tokens(conversation: Sequence[Message]) -> int:
    """Roughly what a call over this conversation will use, prompt and answer together."""
    chars = sum(len(m.content) + sum(len(str(c.arguments)) for c in m.tool_calls) for m in conversation)
    return chars // CHARS_PER_TOKEN + ANSWER_TOKENS


@dataclass
class CapacityActivities:
    store: RunStore
    # None: this deployment configures no limit (every ask is granted at once).
    ledger: ProviderLedger | None

    @activity.defn(name=RESERVE_CAPACITY)
    async def reserve_capacity(self, request: CapacityRequest) -> CapacityAnswer:
        ledger = self.ledger
        patterns = chain_patterns(request.model, ledger.limits) if ledger else []
        if ledger is None or all(p is None for p in patterns):
            return CapacityAnswer(lease=CapacityLease())
        conversation = await self.store.conversation(request.agent_run_id, request.reply_seq)
        tokens = estimate_tokens(conversation)
        ticket = request.ticket
        if ticket is not None and ticket.pattern in ledger.limits and ticket.lease_id:
            # Back for the slot booked for it: only that route is asked.
            booked = await ledger.reserve(ticket.pattern, tokens, request.priority, ticket.lease_id)
            return self._answer(request, booked, ticket.route_index, ticket.pattern, tokens)
        waits: list[CapacityAnswer] = []
        for index, pattern in enumerate(patterns):
            if pattern is None:  # an unlimited route of the chain: granted at once
                return self._granted(request, CapacityLease(route_index=index))
            answer = self._answer(
                request, await ledger.reserve(pattern, tokens, request.priority), index, pattern, tokens
            )
            if answer.lease is not None:
                return answer
            waits.append(answer)
        if request.waited_s == 0:
            route = next(p for p in patterns if p is not None)
            PROVIDER_CAPACITY_WAITS.labels(route=route, priority=request.priority).inc()
        # The soonest route; a slot booked on another one lapses unused (the window counts it meanwhile).
        return min(waits, key=lambda w: w.wait_s)

    def _answer(
        self, request: CapacityRequest, answer: Grant | Wait, index: int, pattern: str, tokens: int
    ) -> CapacityAnswer:
        def lease(lease_id: str) -> CapacityLease:
            return CapacityLease(
                lease_id=lease_id,
                route_index=index,
                pattern=pattern,
                estimated_tokens=tokens,
                priority=request.priority,
            )

        if isinstance(answer, Grant):
            return self._granted(request, lease(answer.lease_id))
        ticket = lease(answer.ticket) if answer.ticket else None
        return CapacityAnswer(wait_s=answer.seconds, reason=answer.reason, ticket=ticket)

    def _granted(self, request: CapacityRequest, lease: CapacityLease) -> CapacityAnswer:
        if request.waited_s > 0:
            route = lease.pattern or "unlimited"
            PROVIDER_CAPACITY_WAIT_SECONDS.labels(route=route).observe(request.waited_s)
        return CapacityAnswer(lease=lease)


class CallAccount:
    """What call_llm tells the ledger about its call: when the request left, the tokens it used, a 429."""

    def __init__(self, ledger: ProviderLedger | None, step: LlmStepInput, attempt: int) -> None:
        self._ledger = ledger
        self._step = step
        self._attempt = attempt
        self._lease = step.lease
        # The workflow's grant covers the first attempt; a retry is counted after the fact.
        self._granted = self._lease is not None and self._lease.lease_id is not None and attempt == 1
        self._answering = False

    async def answering(self) -> None:
        """The first chunk of the answer arrived, so the provider has counted the request by now: the
        window counts it from here. (From the grant would be too early: a worker's first call builds its
        provider's client first, a second or so in which the provider's own window has not started.)"""
        if self._answering:
            return
        self._answering = True
        if self._ledger is not None and self._granted and self._lease and self._lease.lease_id:
            await _quietly(self._ledger.started(self._lease.lease_id), "mark a call started")

    async def ended(self, model: FallbackChain, usage: Usage | None) -> None:
        """Release the lease with the tokens really used; count a retry; a 429 pauses its route for all."""
        ledger = self._ledger
        failure = model.failure
        # A 429 that retrying can fix (not an account out of credit) pauses the route for every caller.
        if failure is not None and failure.status == 429 and failure.retryable and model.route:
            await self._rate_limited(model.route, failure.retry_after)
        if ledger is None:
            return
        tokens = usage.total_tokens if usage is not None else None
        if self._granted and self._lease and self._lease.lease_id:
            await _quietly(ledger.release(self._lease.lease_id, tokens), "release a lease")
        elif self._lease is not None and model.route is not None:
            pattern = governing_pattern(model.route, ledger.limits)
            if pattern is not None:
                estimate = tokens if tokens is not None else self._lease.estimated_tokens
                await _quietly(ledger.account(pattern, estimate, self._lease.priority), "count a retry")

    async def _rate_limited(self, route: str, retry_after: float | None) -> None:
        pattern = governing_pattern(route, self._ledger.limits) if self._ledger else None
        PROVIDER_RATE_LIMITED.labels(route=pattern or route.partition("?")[0]).inc()
        if self._ledger is None or pattern is None:
            return
        seconds = min(retry_after or DEFAULT_COOLDOWN_S, MAX_RETRY_AFTER.total_seconds())
        log.warning("%s answered 429: every caller of %s waits %.1f s", route, pattern, seconds)
        await _quietly(self._ledger.cool_down(pattern, seconds, f"429 from {route}"), "set a cooldown")


async def _quietly(work: Awaitable[object], what: str) -> None:
    """Accounting must never fail the LLM call it accounts: a failure is logged and the call goes on."""
    try:
        await work
    except Exception as err:  # noqa: BLE001 - any database trouble; the call's own result matters more
        log.warning("provider limits: could not %s: %s", what, err)


async def sample_utilization(ledger: ProviderLedger, stop: asyncio.Event) -> None:
    """Keep keel_provider_limit_utilization current while the worker runs."""
    while not stop.is_set():
        started = time.monotonic()
        try:
            for (pattern, kind), value in (await ledger.utilization()).items():
                PROVIDER_LIMIT_UTILIZATION.labels(route=pattern, kind=kind).set(value)
        except Exception as err:  # noqa: BLE001 - a sample missed; the next one comes soon
            log.warning("provider limits: could not sample utilization: %s", err)
        delay = max(0.0, SAMPLE_EVERY_S - (time.monotonic() - started))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)
