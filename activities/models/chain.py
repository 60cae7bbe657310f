"""A fallback chain of routes behind the one `ChatModel` interface, and how its failures meet Temporal.

Temporal owns the retries. Each `call_llm` attempt asks one route, chosen from the attempt number: the
first route gets attempts 1..N (N = CALL_LLM_ATTEMPTS_PER_ROUTE), the second the next N, and so on, the
last route keeping whatever remains of the activity's retry policy. So a route that stays unavailable or
rate-limited through its N attempts hands over to the next one, and nothing has to be remembered between
attempts. Within one attempt:

- a retryable failure (429, 5xx, an overload reported inside the stream, connection, timeout, a stream
  cut or garbled) fails the attempt with a retryable ApplicationError; its next_retry_delay is the
  provider's Retry-After (of a second or more: a shorter one keeps the retry policy's backoff) when the next
  attempt stays on this route, and a second when the next attempt moves on to another route;
- a permanent failure (401, 404, context length, out of credit...) moves on to the next route at once, in
  the same attempt; when no route is left the activity fails for good with every route's reason.

Which failure is which is decided in `errors.py` alone.

The route that answered goes into `Finish.route`, and the cost from its price into `Finish.usage`.
"""

import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import timedelta

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.models.base import ChatModel, Finish, ModelChunk, OutputRequest, ToolChoice
from activities.models.errors import ModelCallFailed
from activities.models.pricing import Price, with_cost
from keel.contracts import CALL_LLM_ATTEMPTS_PER_ROUTE, MAX_RETRY_AFTER, ErrorType, Message, ToolSpec
from keel.routes import Route

log = logging.getLogger("keel.models")

# When the next attempt goes to another route there is nothing to wait for; Temporal's server retries an
# activity no sooner than about a second anyway.
_HANDOVER_DELAY = timedelta(seconds=1)
# A Retry-After shorter than this is left to the retry policy's backoff (see `_retry`).
_MIN_RETRY_AFTER_S = 1.0


def route_index(attempt: int, routes: int, per_route: int = CALL_LLM_ATTEMPTS_PER_ROUTE) -> int:
    """Which route of the chain attempt number `attempt` (1-based) asks first."""
    return min((attempt - 1) // per_route, routes - 1)


class FallbackChain:
    def __init__(
        self,
        routes: Sequence[Route],
        provider_for: Callable[[Route], tuple[ChatModel, str]],
        *,
        prices: Mapping[str, Price] | None = None,
        attempt: int | None = None,
        per_route: int = CALL_LLM_ATTEMPTS_PER_ROUTE,
        first_route: int = 0,
    ) -> None:
        self.routes = tuple(routes)
        self.provider = ",".join(map(str, self.routes))
        self._provider_for = provider_for
        self._prices = prices
        self._attempt = attempt
        self._per_route = per_route
        # The route asked last: the one that answered, or the one whose failure ended the attempt.
        self.route: str | None = None
        # The failure that ended the attempt (provider limits read a 429's Retry-After from it).
        self.failure: ModelCallFailed | None = None
        # Provider limits granted this call a later route of the chain (the earlier ones were at capacity).
        self._first_route = min(first_route, len(self.routes) - 1)

    async def stream(
        self,
        *,
        messages: list[Message],
        model: str,
        tools: list[ToolSpec],
        tool_choice: ToolChoice = "auto",
        output: OutputRequest | None = None,
    ) -> AsyncIterator[ModelChunk]:
        # Only a run that wants structured output passes it on: a provider may not know the argument.
        wanted = {"output": output} if output is not None else {}
        attempt = self._attempt or (activity.info().attempt if activity.in_activity() else 1)
        first = max(route_index(attempt, len(self.routes), self._per_route), self._first_route)
        refusals: list[str] = []
        for index in range(first, len(self.routes)):
            route = self.routes[index]
            self.route = str(route)
            provider, model_name = self._provider_for(route)
            started = False
            try:
                async for chunk in provider.stream(
                    messages=messages, model=model_name, tools=tools, tool_choice=tool_choice, **wanted
                ):
                    if isinstance(chunk, Finish):
                        usage = with_cost(chunk.usage, route, self._prices)
                        chunk = Finish(chunk.reason, usage, chunk.request_id, str(route))
                    started = True
                    yield chunk
                return
            except ModelCallFailed as failure:
                self.failure = failure
                if failure.retryable or started:
                    # Part of the answer is out already, so another route can't just carry on from here.
                    raise self._retry(failure, index, attempt) from None
                refusals.append(f"{route}: {failure.message}")
                if index + 1 < len(self.routes):
                    log.warning(
                        "%s failed for good (%s); trying %s", route, failure.message, self.routes[index + 1]
                    )
        raise ApplicationError(
            "; ".join(refusals) if len(refusals) == 1 else "every route failed: " + "; ".join(refusals),
            type=ErrorType.model_request_rejected,
            non_retryable=True,
        )

    def _retry(self, failure: ModelCallFailed, index: int, attempt: int) -> ApplicationError:
        route = self.routes[index]
        next_index = route_index(attempt + 1, len(self.routes), self._per_route)
        delay: timedelta | None = None
        handover = ""
        # (An earlier route that refused for good is asked again next attempt and hands over again.)
        if next_index > index:
            delay = _HANDOVER_DELAY
            handover = f"; the next attempt uses {self.routes[next_index]}"
        elif failure.retry_after is not None and failure.retry_after >= _MIN_RETRY_AFTER_S:
            delay = min(timedelta(seconds=failure.retry_after), MAX_RETRY_AFTER)
        # (A Retry-After under a second keeps the retry policy's backoff: the model call is a local
        # activity, whose retries nothing else paces, and "try again in 0.0s" would use them all at once.)
        log.warning(
            "%s failed on attempt %d, Temporal retries: %s%s", route, attempt, failure.message, handover
        )
        return ApplicationError(
            f"{route}: {failure.message}{handover}",
            type=ErrorType.model_unavailable,
            next_retry_delay=delay,
        )
