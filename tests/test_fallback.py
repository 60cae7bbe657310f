"""Fallback chains: which route each Temporal attempt asks, and when the next route takes over."""

from datetime import timedelta

import pytest
from temporalio.exceptions import ApplicationError

from activities.models import Finish, resolve_model
from keel.contracts import Message
from keel.settings import Settings
from tests.fake_vendors import FakeVendors

MESSAGES = [Message(role="user", content="hello")]


async def answer(settings: Settings, chain: str, attempt: int) -> Finish:
    model, _ = resolve_model(chain, settings, attempt=attempt)
    chunks = [c async for c in model.stream(messages=MESSAGES, model="", tools=[])]
    assert isinstance(chunks[-1], Finish)
    return chunks[-1]


async def failure(settings: Settings, chain: str, attempt: int) -> ApplicationError:
    with pytest.raises(ApplicationError) as caught:
        await answer(settings, chain, attempt)
    return caught.value


async def test_a_route_that_stays_unavailable_hands_over_after_its_attempts(
    vendor_settings: Settings, fake_vendors: FakeVendors
) -> None:
    chain = "openai:status503,anthropic:claude-haiku-4-5"
    asked_before = fake_vendors.count("status503")

    for attempt in (1, 2):
        err = await failure(vendor_settings, chain, attempt)
        assert not err.non_retryable and err.next_retry_delay is None  # the retry policy's backoff
        assert err.message.startswith("openai:status503: openai answered HTTP 503")
    last = await failure(vendor_settings, chain, 3)
    assert last.message.endswith("the next attempt uses anthropic:claude-haiku-4-5")
    assert last.next_retry_delay == timedelta(seconds=1)  # nothing to wait for on another route

    finish = await answer(vendor_settings, chain, 4)
    assert finish.route == "anthropic:claude-haiku-4-5"
    assert fake_vendors.count("status503") - asked_before == 3


async def test_retry_after_is_honoured_while_the_next_attempt_stays_on_the_route(
    vendor_settings: Settings,
) -> None:
    chain = "openai:status429,anthropic:claude-haiku-4-5"
    assert (await failure(vendor_settings, chain, 1)).next_retry_delay == timedelta(milliseconds=1500)
    assert (await failure(vendor_settings, chain, 3)).next_retry_delay == timedelta(seconds=1)


async def test_a_route_that_fails_for_good_hands_over_within_the_same_attempt(
    vendor_settings: Settings,
) -> None:
    finish = await answer(vendor_settings, "openai:status401,local:llama3.1:8b", attempt=1)
    assert finish.route == "local:llama3.1:8b"


async def test_an_account_out_of_credit_hands_over_at_once_despite_its_429(vendor_settings: Settings) -> None:
    # OpenAI's insufficient_quota is a 429; retrying it three times would only delay the next route.
    finish = await answer(vendor_settings, "openai:quota,anthropic:claude-haiku-4-5", attempt=1)
    assert finish.route == "anthropic:claude-haiku-4-5"


async def test_when_every_route_fails_for_good_the_run_hears_every_reason(vendor_settings: Settings) -> None:
    err = await failure(vendor_settings, "openai:status401,anthropic:status404", 1)
    assert err.non_retryable and err.type == "ModelRequestRejected"
    assert err.message.startswith("every route failed: openai:status401: openai answered HTTP 401")
    assert "anthropic:status404: anthropic answered HTTP 404" in err.message


async def test_the_last_route_keeps_the_remaining_attempts(vendor_settings: Settings) -> None:
    err = await failure(vendor_settings, "openai:status503,local:status500", 8)
    assert err.message.startswith("local:status500: local answered HTTP 500")
    assert "next attempt" not in err.message
