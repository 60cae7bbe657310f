"""Routes, prices and the failure classification: the pure parts of the model layer."""

from datetime import timedelta

import pytest
from pydantic import ValidationError

from activities.models import implementation, provider_for
from activities.models.chain import route_index
from activities.models.errors import classify, redact, retry_after
from activities.models.pricing import price_of, with_cost
from keel.contracts import CALL_LLM_ATTEMPTS_PER_ROUTE, Usage
from keel.routes import REGISTRY, Route, RouteError, parse_chain, parse_route
from keel.settings import Settings
from workflows.activity_options import CALL_LLM_OPTIONS


def test_routes_name_a_provider_and_a_model() -> None:
    assert parse_route("openai:gpt-4o-mini") == Route("openai", "gpt-4o-mini")
    # Only the first colon separates: Ollama's model names have their own.
    assert parse_route("local:llama3.1:8b") == Route("local", "llama3.1:8b")
    assert parse_route("local:phi3?tools=json") == Route("local", "phi3", "json")
    assert parse_route("scripted") == Route("scripted", "")
    assert str(parse_route(" anthropic:claude-sonnet-4-5 ")) == "anthropic:claude-sonnet-4-5"
    assert str(parse_route("local:phi3?tools=json")) == "local:phi3?tools=json"


def test_a_comma_separated_list_is_a_fallback_chain() -> None:
    assert parse_chain("openai:gpt-4o-mini, anthropic:claude-haiku-4-5") == (
        Route("openai", "gpt-4o-mini"),
        Route("anthropic", "claude-haiku-4-5"),
    )


@pytest.mark.parametrize(
    ("route", "problem"),
    [
        ("gpt-4o", "unknown provider 'gpt-4o'"),
        ("openai:", "names no model"),
        ("openai:gpt-4o,,scripted", "empty route"),
        ("local:phi3?tools=xml", "unknown option"),
        ("scripted?tools=json", "no json tool mode"),
    ],
)
def test_bad_routes_say_what_is_wrong(route: str, problem: str) -> None:
    with pytest.raises(RouteError, match=problem):
        parse_chain(route)


def test_a_mistyped_keel_model_stops_startup() -> None:
    with pytest.raises(ValidationError, match="unknown provider"):
        Settings(KEEL_MODEL="gpt-4o-mini")


def test_each_route_gets_its_attempts_then_the_next_takes_over() -> None:
    per_route = CALL_LLM_ATTEMPTS_PER_ROUTE
    assert [route_index(a, 2, per_route=3) for a in range(1, 9)] == [0, 0, 0, 1, 1, 1, 1, 1]
    assert [route_index(a, 3, per_route=3) for a in range(1, 9)] == [0, 0, 0, 1, 1, 1, 2, 2]
    assert route_index(5, 1, per_route) == 0
    # A two-route chain gives its second route attempts of its own within the activity's retry policy.
    assert CALL_LLM_OPTIONS["retry_policy"].maximum_attempts > per_route


def test_prices_come_from_the_route_longest_pattern_first() -> None:
    assert price_of(parse_route("openai:gpt-4o-mini")) == (0.15, 0.60)
    assert price_of(parse_route("openai:gpt-4o-mini-2024-07-18")) == (0.15, 0.60)
    assert price_of(parse_route("openai:gpt-4o")) == (2.50, 10.00)
    assert price_of(parse_route("local:anything?tools=json")) == (0.0, 0.0)
    assert price_of(parse_route("openai:some-new-model")) is None
    assert price_of(parse_route("openai:some-new-model"), {"openai:some-new-*": (1.0, 2.0)}) == (1.0, 2.0)


def test_cost_per_call_and_per_run() -> None:
    call = with_cost(
        Usage(prompt_tokens=1_000_000, completion_tokens=500_000), parse_route("openai:gpt-4o-mini")
    )
    assert call.cost_usd == pytest.approx(0.15 + 0.30)
    unknown = with_cost(Usage(prompt_tokens=10, completion_tokens=10), parse_route("openai:mystery"))
    assert (unknown.cost_usd, unknown.unpriced_calls) == (0.0, 1)
    run = Usage() + call + unknown
    assert run.cost_usd == pytest.approx(0.45)
    assert run.unpriced_calls == 1
    assert run.prompt_tokens == 1_000_010


def test_prices_are_configurable_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEEL_MODEL_PRICES", '{"openai:gpt-4o-mini*": [1, 4]}')
    prices = Settings().model_prices
    assert price_of(parse_route("openai:gpt-4o-mini"), prices) == (1.0, 4.0)


def test_retry_after_in_milliseconds_seconds_or_as_a_date() -> None:
    assert retry_after({"retry-after-ms": "250", "retry-after": "1"}) == 0.25
    assert retry_after({"retry-after": "3"}) == 3.0
    assert (retry_after({"retry-after": "Wed, 21 Oct 2099 07:28:00 GMT"}) or 0) > 0
    assert retry_after({}) is None
    assert timedelta(seconds=retry_after({"retry-after": "1.5"}) or 0) == timedelta(seconds=1.5)


def test_secrets_are_scrubbed_from_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEEL_LOCAL_API_KEY", "local-secret-value")
    text = redact("key sk-proj-abc123XYZ****wxyz, Bearer abcdef123456, and local-secret-value")
    assert "abc123" not in text and "abcdef123456" not in text and "local-secret-value" not in text


def test_exceptions_that_are_not_provider_failures_are_left_alone() -> None:
    assert classify("openai", KeyError("x")) is None


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_registered_provider_names_an_implementation_that_exists(name: str) -> None:
    # A registration names its implementation as an import path, which only a worker resolves: a typo
    # would otherwise show only when a run first asks that provider.
    assert callable(implementation(REGISTRY[name]))


@pytest.mark.parametrize(
    "route", ["openai:m", "anthropic:m", "local:m", "local:m?tools=json", "scripted:slow"]
)
def test_a_route_is_built_by_its_provider_and_answers_as_it(route: str) -> None:
    model, name = provider_for(parse_route(route), Settings())
    assert (model.provider, name) == (parse_route(route).provider, parse_route(route).model)
