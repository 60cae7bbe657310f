"""How a provider's failure becomes the right Temporal retry, in one place for every provider.

SDK clients are created with their own retries off, so each failure surfaces here once. `classify` reads
what the SDK raised into one shape, `ErrorReport` (an HTTP status, or an error the provider wrote inside an
answer it had begun with 200; the error's type and code; its message), and `_sort` alone decides what it
means, for OpenAI, Anthropic and OpenAI-compatible local servers alike:

- retryable: 408, 409, 429 and 5xx answers, overload or server errors reported inside a stream (and any
  in-stream error that does not say the request itself was bad), connection errors, timeouts, a stream cut
  mid-way, a stream whose data is not valid JSON. Temporal retries the activity; a Retry-After header
  becomes the next retry's delay.
- permanent: 400, 401, 403, 404, 422 (any other 4xx too), bad-request, auth and content-policy errors
  reported inside a stream, context-length errors, an account out of credit (OpenAI's 429
  insufficient_quota included), missing credentials. Retrying can't help, so the activity fails at once
  (or a fallback route takes over).

Messages name the provider and what went wrong; the fallback chain puts the route in front. A hint about
the API key is added only to authentication failures. Messages are scrubbed of anything that looks like a
key, and of the value of every credential variable a provider's registration names (keel.routes): they end
up in workflow history, run events and logs.

`classify` knows the exceptions of the SDKs OpenAI and Anthropic ship (and of httpx beneath them). A
provider whose SDK raises others passes its own classifier to `provider_failures`: it reads them into an
`ErrorReport` (`error_report`) and lets `judge` decide, so every provider's failures mean the same to
Temporal.
"""

import email.utils
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Literal

from keel.routes import REGISTRY
from keel.text import one_line

# Environment variables whose values must never appear in a message: every provider's credentials.
SECRET_VARIABLES = tuple(variable for provider in REGISTRY.values() for variable in provider.secrets)
_SECRET_PATTERNS = (
    # OpenAI- and Anthropic-style keys, including the masked form OpenAI echoes in 401s (sk-proj-****abcd).
    re.compile(r"\bsk-[A-Za-z0-9_\-*]{6,}"),
    re.compile(r"(?i)\b(bearer|x-api-key:?|api[_-]?key[\"':= ]+)\s*[A-Za-z0-9_\-.*]{6,}"),
)
_CONTEXT_LENGTH = re.compile(
    r"context[_ ]length|context window|maximum context|prompt is too long|too many tokens|"
    r"max_tokens.*exceed|exceeds? the (model's )?(maximum|context)",
    re.IGNORECASE,
)
_CREDENTIALS = re.compile(r"api[_ ]?key|credential|authenticat|auth[_ ]?token", re.IGNORECASE)
# Error types and codes, squeezed to lowercase letters so `rate_limit_error` (Anthropic),
# `rate_limit_exceeded` (OpenAI) and `RateLimitError` (vLLM) read alike; matched by what they contain.
_OUT_OF_CREDIT_KINDS = ("insufficientquota", "billing")
_CONTENT_POLICY_KINDS = ("contentpolicy", "contentfilter")
_AUTH_KINDS = ("authentication", "permission", "invalidapikey", "unauthorized")
_RATE_LIMIT_KINDS = ("ratelimit",)
# Only consulted for errors inside a stream, where no HTTP status says it: the request itself was at fault.
_BAD_REQUEST_KINDS = ("invalidrequest", "badrequest", "notfound", "requesttoolarge", "unprocessable")
_RETRYABLE_STATUS = {408, 409, 429}
_MESSAGE_LIMIT = 400
_SDK_PACKAGES = {"openai", "anthropic", "httpx", "httpx2", "httpcore"}

Verdict = Literal[
    "unavailable", "rate_limited", "auth", "context_length", "content_policy", "out_of_credit", "bad_request"
]
_RETRYABLE_VERDICTS = {"unavailable", "rate_limited"}


class ModelCallFailed(Exception):
    """A provider call failed; `retryable` says whether trying the same route again can help."""

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        retryable: bool,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True)
class ErrorReport:
    """What a provider said went wrong, in one shape whichever SDK raised it and however it was sent."""

    # The HTTP status, or for an error inside a stream the numeric code it carries (vLLM, llama.cpp), if any.
    status: int | None
    in_stream: bool
    kinds: tuple[str, ...]  # the error's type and code, squeezed (see _squeeze)
    label: str | None  # the type or code as the provider wrote it, for the message
    detail: str
    headers: Mapping[str, str] = field(default_factory=dict)


# Reads an exception raised by a provider's SDK: the failure it stands for, or None if it is none.
Classifier = Callable[[str, BaseException], ModelCallFailed | None]


@contextmanager
def provider_failures(provider: str, classifier: Classifier | None = None) -> Iterator[None]:
    """Around a provider's whole call: whatever the SDK raises leaves as a classified ModelCallFailed.

    Anything that is not a provider failure (a bug of ours) leaves unchanged, so it stays visible.
    `classifier` defaults to `classify`, which knows OpenAI's and Anthropic's SDKs.
    """
    try:
        yield
    except Exception as err:
        failure = (classifier or classify)(provider, err)
        if failure is None:
            raise
        raise failure from None


def classify(provider: str, err: BaseException) -> ModelCallFailed | None:
    """The failure an SDK or transport exception stands for, or None for an exception that is not one."""
    if isinstance(err, ModelCallFailed):
        return err
    if isinstance(err, ValueError) and _raised_while_reading_stream(err):
        return _malformed_stream(provider, err)
    if not _from_sdk(err):
        # Anthropic's SDK reports missing credentials with a plain TypeError.
        if isinstance(err, TypeError) and _raised_in_sdk(err) and _CREDENTIALS.search(str(err)):
            return _client_error(provider, err)
        return None
    if _is(err, "APIStatusError"):
        status_error: Any = err
        # Anthropic raises an `error` event inside a 200 stream as a status error carrying that 200.
        in_stream = status_error.status_code < 400
        status = None if in_stream else status_error.status_code
        headers = status_error.response.headers
        return judge(
            provider, error_report(status, status_error.body, headers, str(err), in_stream=in_stream)
        )
    if _is(err, "APITimeoutError", "TimeoutException"):
        return ModelCallFailed(f"{provider} did not answer in time", provider=provider, retryable=True)
    if _is(err, "APIConnectionError", "TransportError"):
        return _connection_failure(provider, err)
    if _is(err, "APIResponseValidationError"):
        return _malformed_stream(provider, err)
    if _is(err, "APIError"):
        # OpenAI's SDK raises an error object inside a stream (`data: {"error": {...}}`) as a bare APIError.
        api_error: Any = err
        return judge(provider, error_report(None, api_error.body, {}, api_error.message, in_stream=True))
    if _is(err, "OpenAIError", "AnthropicError"):
        return _client_error(provider, err)
    return None


def _sort(report: ErrorReport) -> Verdict:
    """The one decision about what a provider's error means; everything else only reads errors into an
    `ErrorReport` or words the outcome."""
    if _CONTEXT_LENGTH.search(report.detail) or _kind_is(report, ("contextlength",)):
        return "context_length"
    if _kind_is(report, _OUT_OF_CREDIT_KINDS):
        return "out_of_credit"  # before the status: OpenAI says it with a 429, which no retry fixes
    if _kind_is(report, _CONTENT_POLICY_KINDS):
        return "content_policy"
    if report.status in (401, 403) or _kind_is(report, _AUTH_KINDS):
        return "auth"
    if report.status == 429 or _kind_is(report, _RATE_LIMIT_KINDS):
        return "rate_limited"
    if report.status is not None:
        return "unavailable" if report.status in _RETRYABLE_STATUS or report.status >= 500 else "bad_request"
    # An error inside a stream the provider had accepted, with no status to go by: unless it says the
    # request was at fault, it is the server's (overloaded, internal), and asking again can help.
    return "bad_request" if _kind_is(report, _BAD_REQUEST_KINDS) else "unavailable"


def judge(provider: str, report: ErrorReport) -> ModelCallFailed:
    """The failure a provider's error stands for, retryable or not, in words that name the provider."""
    verdict = _sort(report)
    retryable = verdict in _RETRYABLE_VERDICTS
    label = f" ({report.label})" if report.label else ""
    if report.in_stream:
        what = f"{provider} reported an error in its stream{label}"
    else:
        what = f"{provider} answered HTTP {report.status}{label}"
    detail = report.detail
    if verdict == "context_length":
        detail = f"the conversation is too long for the model's context window: {detail}"
    return ModelCallFailed(
        f"{what}: {detail}{_hint(provider) if verdict == 'auth' else ''}",
        provider=provider,
        retryable=retryable,
        status=report.status,
        retry_after=retry_after(report.headers) if retryable else None,
    )


def error_report(
    status: int | None, body: object, headers: Mapping[str, str], fallback: str, *, in_stream: bool
) -> ErrorReport:
    """The error's type or code and its message, from the shapes OpenAI, Anthropic and vLLM use (an
    `{"error": {"type", "code", "message"}}` body, the inner object alone, or a string); `fallback` is the
    message when the body has none."""
    error: Any = body.get("error", body) if isinstance(body, dict) else body
    if not isinstance(error, dict):
        text = error if isinstance(error, str) and error else fallback
        return ErrorReport(status, in_stream, (), None, _clean(text), headers)
    code, kind = error.get("code"), error.get("type")
    # vLLM and llama.cpp put the HTTP status they would have answered in `code`.
    if status is None and isinstance(code, int) and 400 <= code < 600:
        status = code
    names = [str(name) for name in (code, kind) if isinstance(name, str) and name]
    return ErrorReport(
        status,
        in_stream,
        tuple(_squeeze(name) for name in names),
        names[0] if names else None,
        _clean(str(error.get("message") or fallback)),
        headers,
    )


def _squeeze(kind: str) -> str:
    return re.sub(r"[^a-z]", "", kind.lower())


def _kind_is(report: ErrorReport, fragments: tuple[str, ...]) -> bool:
    return any(fragment in kind for kind in report.kinds for fragment in fragments)


def _connection_failure(provider: str, err: BaseException) -> ModelCallFailed:
    # The SDKs wrap transport errors, but some streams let a dropped connection through unwrapped.
    cause = err.__cause__ if _is(err, "APIConnectionError") and err.__cause__ is not None else err
    if _is(cause, "TransportError") and not _is(cause, "ConnectError"):
        return ModelCallFailed(
            f"the connection to {provider} broke mid-answer: {type(cause).__name__}: {_clean(str(cause))}",
            provider=provider,
            retryable=True,
        )
    return ModelCallFailed(
        f"could not reach {provider}: {_clean(str(cause))}", provider=provider, retryable=True
    )


def _malformed_stream(provider: str, err: BaseException) -> ModelCallFailed:
    """Data the provider (or a proxy on the way) garbled: another try usually comes through whole."""
    if isinstance(err, json.JSONDecodeError):
        reason = f"an event's data is not valid JSON ({err.msg} at character {err.pos}): {_clean(err.doc)}"
    else:
        reason = f"{type(err).__name__}: {_clean(str(err))}"
    return ModelCallFailed(f"{provider} sent a malformed stream: {reason}", provider=provider, retryable=True)


def _client_error(provider: str, err: BaseException) -> ModelCallFailed:
    """A problem with the client's own configuration, found before anything was sent: retrying can't fix
    it. Missing credentials are the usual one, and only they get the hint."""
    hint = _hint(provider) if _CREDENTIALS.search(str(err)) else ""
    return ModelCallFailed(
        f"{provider} client error: {_clean(str(err))}{hint}", provider=provider, retryable=False
    )


def stream_cut(provider: str) -> ModelCallFailed:
    return ModelCallFailed(
        f"{provider}'s stream ended before the answer was finished", provider=provider, retryable=True
    )


def _from_sdk(err: BaseException) -> bool:
    return type(err).__module__.split(".")[0] in _SDK_PACKAGES


def _is(err: BaseException, *class_names: str) -> bool:
    """Matched by class name, so this module need not import both vendors' SDKs (seconds of worker
    startup) to recognise their exceptions; `_from_sdk` keeps the match to those packages."""
    return any(cls.__name__ in class_names for cls in type(err).__mro__)


def _modules(tb: TracebackType | None) -> list[str]:
    """The module of each frame an exception passed through, outermost first."""
    names = []
    while tb is not None:
        names.append(str(tb.tb_frame.f_globals.get("__name__", "")))
        tb = tb.tb_next
    return names


def _raised_while_reading_stream(err: BaseException) -> bool:
    """Raised inside an SDK's stream decoding (`openai._streaming`, `anthropic._streaming`): a chunk that
    is not valid JSON surfaces as a plain JSONDecodeError from there."""
    return any(
        name.split(".")[0] in _SDK_PACKAGES and "streaming" in name for name in _modules(err.__traceback__)
    )


def _raised_in_sdk(err: BaseException) -> bool:
    modules = _modules(err.__traceback__)
    return bool(modules) and modules[-1].split(".")[0] in _SDK_PACKAGES


def _hint(provider: str) -> str:
    registered = REGISTRY.get(provider)
    if registered is None or not registered.secrets:
        return ""
    return f" (check {registered.secrets[0]} in the worker's environment)"


def _clean(text: str) -> str:
    return one_line(redact(text), _MESSAGE_LIMIT)


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the provider asked us to wait: retry-after-ms, retry-after in seconds or as an HTTP date;
    without them, when the exhausted rate limit resets (OpenAI's `x-ratelimit-reset-*` durations,
    Anthropic's `anthropic-ratelimit-*-reset` times)."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            parsed = email.utils.parsedate_tz(value)
            if parsed is None:
                continue
            seconds = email.utils.mktime_tz(parsed) - time.time()
        if seconds >= 0:
            return seconds
    return _rate_limit_reset(headers)


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _rate_limit_reset(headers: Mapping[str, str]) -> float | None:
    """The longest reset among the rate limits a 429 reports exhausted (remaining 0), if any says when."""
    resets: list[float] = []
    for kind in ("requests", "tokens", "input-tokens", "output-tokens"):
        openai = (headers.get(f"x-ratelimit-remaining-{kind}"), headers.get(f"x-ratelimit-reset-{kind}"))
        anthropic = (
            headers.get(f"anthropic-ratelimit-{kind}-remaining"),
            headers.get(f"anthropic-ratelimit-{kind}-reset"),
        )
        for remaining, reset in (openai, anthropic):
            if remaining is None or reset is None or remaining.strip() != "0":
                continue
            if (seconds := _reset_seconds(reset.strip())) is not None:
                resets.append(seconds)
    return max(resets) if resets else None


def _reset_seconds(value: str) -> float | None:
    """`6m0s`, `1.5s`, `20ms` (OpenAI) or an RFC 3339 time (Anthropic) as seconds from now."""
    parts = _DURATION_PART.findall(value)
    if parts and "".join(n + u for n, u in parts) == value:
        return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return max(0.0, at.timestamp() - time.time())


def redact(text: str) -> str:
    for variable in SECRET_VARIABLES:
        secret = os.environ.get(variable)
        if secret and len(secret) >= 8:
            text = text.replace(secret, "[redacted]")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub("[redacted]", text)
    return text
