"""Each real provider through its official SDK, against a local server speaking the vendor's wire format.

What is checked is what reaches the workflow: normalized chunks, and for failures the ApplicationError
Temporal acts on (retryable or not, the delay before the next try, a message naming the route, the
provider and what went wrong, with a hint about the key only when the key is the problem).
"""

from datetime import timedelta

import pytest
from temporalio.exceptions import ApplicationError

from activities.models import Finish, TextDelta, resolve_model
from keel.contracts import Message, ToolCall
from keel.settings import Settings
from keel.stack.embedded import free_port
from tests.conftest import EXAMPLES, FAKE_ANTHROPIC_KEY, FAKE_OPENAI_KEY
from tests.fake_vendors import FakeVendors

PROVIDERS = ["openai", "anthropic", "local"]
ASSISTANT_TOOLS = [EXAMPLES.tools[n].spec() for n in ("calculate", "current_time")]
KEY_VARIABLE = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY", "local": "KEEL_LOCAL_API_KEY"}


async def ask(settings: Settings, route: str, text: str = "calculate 2 + 3", attempt: int = 1) -> list:
    model, _ = resolve_model(route, settings, attempt=attempt)
    messages = [Message(role="system", content="You are terse."), Message(role="user", content=text)]
    return [chunk async for chunk in model.stream(messages=messages, model="", tools=ASSISTANT_TOOLS)]


async def failure(settings: Settings, route: str, text: str = "calculate 2 + 3") -> ApplicationError:
    return (await broken_answer(settings, route, text))[1]


async def broken_answer(settings: Settings, route: str, text: str) -> tuple[list, ApplicationError]:
    """What a failing call streamed before it failed, and the failure."""
    model, _ = resolve_model(route, settings, attempt=1)
    messages = [Message(role="user", content=text)]
    received: list = []
    with pytest.raises(ApplicationError) as caught:
        async for chunk in model.stream(messages=messages, model="", tools=ASSISTANT_TOOLS):
            received.append(chunk)
    return received, caught.value


def assert_no_key_hint(err: ApplicationError) -> None:
    assert not any(variable in err.message for variable in KEY_VARIABLE.values()), err.message


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_text_streams_in_deltas_with_usage_and_request_id(
    provider: str, vendor_settings: Settings, fake_vendors: FakeVendors
) -> None:
    chunks = await ask(vendor_settings, f"{provider}:chatty", "hello there")

    deltas = [c for c in chunks if isinstance(c, TextDelta)]
    assert len(deltas) > 10
    assert "hello there" in "".join(d.text for d in deltas)
    finish = chunks[-1]
    assert isinstance(finish, Finish) and finish.reason == "stop"
    assert finish.usage.prompt_tokens > 0 and finish.usage.completion_tokens > 0
    assert finish.request_id and finish.request_id.startswith(
        f"req_fake_{'anthropic' if provider == 'anthropic' else 'openai'}"
    )
    assert finish.route == f"{provider}:chatty"

    sent = fake_vendors.last("chatty")
    assert sent.body["stream"] is True
    if provider == "anthropic":
        assert sent.path == "/v1/messages"
        # The SDK sends the key as x-api-key or, in newer versions, as a bearer token.
        assert FAKE_ANTHROPIC_KEY in (
            sent.headers.get("x-api-key"),
            sent.headers.get("authorization", "")[7:],
        )
        assert sent.body["system"] == "You are terse."
        assert sent.body["max_tokens"] == vendor_settings.anthropic_max_tokens
        assert sent.body["tools"][0]["input_schema"]["properties"]["expression"]["type"] == "string"
    else:
        assert sent.path == "/v1/chat/completions"
        assert sent.body["stream_options"] == {"include_usage": True}
        assert sent.body["tools"][0]["function"]["name"] == "calculate"
        expected_key = FAKE_OPENAI_KEY if provider == "openai" else "no-key-needed"
        assert sent.headers["authorization"] == f"Bearer {expected_key}"


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_tool_call_arguments_split_across_chunks_are_reassembled(
    provider: str, vendor_settings: Settings
) -> None:
    chunks = await ask(vendor_settings, f"{provider}:m", "calculate (12 + 30) * 4 - 10 / 5")

    assert chunks[:-1] == [
        ToolCall(id="call_1", name="calculate", arguments={"expression": "(12 + 30) * 4 - 10 / 5"})
    ]
    assert chunks[-1].reason == "tool_calls"


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_429_is_left_to_temporal_with_the_retry_after_delay(
    provider: str, vendor_settings: Settings, fake_vendors: FakeVendors
) -> None:
    err = await failure(vendor_settings, f"{provider}:status429")

    assert not err.non_retryable and err.type == "ModelUnavailable"
    assert err.next_retry_delay == timedelta(milliseconds=1500)
    assert err.message.startswith(f"{provider}:status429: {provider} answered HTTP 429")
    assert_no_key_hint(err)
    # The SDK's own retries are off: one request, and Temporal decides about the next.
    assert fake_vendors.count("status429") >= 1
    before = fake_vendors.count("status429")
    await failure(vendor_settings, f"{provider}:status429")
    assert fake_vendors.count("status429") == before + 1


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_500_is_retryable_with_temporal_backoff(provider: str, vendor_settings: Settings) -> None:
    err = await failure(vendor_settings, f"{provider}:status500")
    assert not err.non_retryable
    assert err.next_retry_delay is None  # no Retry-After: the retry policy's backoff applies
    assert err.message.startswith(f"{provider}:status500: {provider} answered HTTP 500")
    assert_no_key_hint(err)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_401_fails_for_good_naming_provider_and_status_without_the_key(
    provider: str, vendor_settings: Settings
) -> None:
    err = await failure(vendor_settings, f"{provider}:status401")

    assert err.non_retryable and err.type == "ModelRequestRejected"
    assert err.message.startswith(f"{provider}:status401: {provider} answered HTTP 401")
    assert err.message.endswith(f"(check {KEY_VARIABLE[provider]} in the worker's environment)")
    # The fake echoes the key it was sent, as OpenAI does (masked) in its 401s. (A local server gets a
    # placeholder, which is no secret.)
    if provider != "local":
        assert "Incorrect API key provided: [redacted]" in err.message
    assert FAKE_OPENAI_KEY not in str(err) and FAKE_ANTHROPIC_KEY not in str(err)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_context_length_errors_are_not_retried(provider: str, vendor_settings: Settings) -> None:
    err = await failure(vendor_settings, f"{provider}:status400")
    assert err.non_retryable
    assert "HTTP 400" in err.message and "context window" in err.message
    assert_no_key_hint(err)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_malformed_arguments_become_a_call_the_model_hears_about(
    provider: str, vendor_settings: Settings
) -> None:
    chunks = await ask(vendor_settings, f"{provider}:malformed")

    [call] = [c for c in chunks if isinstance(c, ToolCall)]
    assert call.name == "calculate" and call.arguments == {}
    assert call.arguments_error and "not valid JSON" in call.arguments_error
    assert chunks[-1].reason == "tool_calls"


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_stream_cut_mid_way_is_retryable(provider: str, vendor_settings: Settings) -> None:
    err = await failure(vendor_settings, f"{provider}:cut")
    assert not err.non_retryable
    assert "broke mid-answer" in err.message


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_an_overload_reported_as_the_first_event_of_a_stream_is_retried(
    provider: str, vendor_settings: Settings
) -> None:
    # HTTP 200, and then the stream's first event is an error (OpenAI: {"error": {"type": "server_error"}},
    # Anthropic: an `error` event of type overloaded_error).
    received, err = await broken_answer(vendor_settings, f"{provider}:errorfirst", "hello there")

    assert received == []
    assert not err.non_retryable and err.type == "ModelUnavailable"
    expected = (
        "(overloaded_error): Overloaded"
        if provider == "anthropic"
        else "(server_error): server is overloaded"
    )
    assert err.message == f"{provider}:errorfirst: {provider} reported an error in its stream {expected}"
    assert_no_key_hint(err)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_an_overload_after_some_text_is_retried(provider: str, vendor_settings: Settings) -> None:
    received, err = await broken_answer(vendor_settings, f"{provider}:errorlate", "hello there")

    assert len(received) == 3 and all(isinstance(c, TextDelta) for c in received)
    assert not err.non_retryable and err.type == "ModelUnavailable"
    assert err.message.startswith(f"{provider}:errorlate: {provider} reported an error in its stream")
    assert "overloaded" in err.message.lower()
    assert_no_key_hint(err)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_chunk_that_is_not_json_is_a_malformed_stream_and_retried(
    provider: str, vendor_settings: Settings
) -> None:
    received, err = await broken_answer(vendor_settings, f"{provider}:badchunk", "hello there")

    assert len(received) == 3
    assert not err.non_retryable and err.type == "ModelUnavailable"
    assert err.message.startswith(
        f"{provider}:badchunk: {provider} sent a malformed stream: an event's data is not valid JSON"
    )
    assert '"chat.completion.chu' in err.message or '"delta": {"type": "te' in err.message
    assert_no_key_hint(err)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_bad_request_reported_inside_the_stream_fails_for_good(
    provider: str, vendor_settings: Settings
) -> None:
    err = await failure(vendor_settings, f"{provider}:invalidfirst", "hello there")

    assert err.non_retryable and err.type == "ModelRequestRejected"
    assert err.message.startswith(
        f"{provider}:invalidfirst: {provider} reported an error in its stream (invalid_request_error): "
        "Invalid value for 'messages[1].content'"
    )
    assert_no_key_hint(err)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_an_account_out_of_credit_fails_for_good_whatever_the_status(
    provider: str, vendor_settings: Settings
) -> None:
    # OpenAI answers 429 insufficient_quota (with a Retry-After!), yet no retry brings credit back.
    err = await failure(vendor_settings, f"{provider}:quota")

    assert err.non_retryable and err.next_retry_delay is None
    status = 400 if provider == "anthropic" else 429
    assert err.message.startswith(f"{provider}:quota: {provider} answered HTTP {status}")
    assert "credit" in err.message or "quota" in err.message
    assert_no_key_hint(err)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_missing_key_is_a_permanent_error_naming_the_variable(
    provider: str, vendor_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_VARIABLE[provider])
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    err = await failure(vendor_settings, f"{provider}:a-model")

    assert err.non_retryable and err.type == "ModelRequestRejected"
    assert err.message.startswith(f"{provider}:a-model: {provider} client error: ")
    assert err.message.endswith(f"(check {KEY_VARIABLE[provider]} in the worker's environment)")


async def test_a_server_that_is_not_there_is_retryable(vendor_settings: Settings) -> None:
    nowhere = vendor_settings.model_copy(update={"local_base_url": f"http://127.0.0.1:{free_port()}/v1"})
    err = await failure(nowhere, "local:llama3")
    assert not err.non_retryable
    assert "could not reach local" in err.message
