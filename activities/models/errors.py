"""How a provider's failure becomes the right Temporal retry, in one place for every provider.

SDK clients are created with their own retries off, so each failure surfaces here once and is sorted:

- retryable: 408, 409, 429 and 5xx answers, connection errors, timeouts, a stream cut mid-way. Temporal
  retries the activity; a Retry-After header becomes the next retry's delay.
- permanent: 400, 401, 403, 404, 422 (any other 4xx too), context-length errors, missing credentials.
  Retrying can't help, so the activity fails at once (or a fallback route takes over).

Messages name the provider and the status and are scrubbed of anything that looks like a key: they end up
in workflow history, run events and logs.
"""

import email.utils
import os
import re
import time
from collections.abc import Mapping
from typing import Any

from keel.text import one_line

# Environment variables whose values must never appear in a message.
SECRET_VARIABLES = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "KEEL_LOCAL_API_KEY")
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
_RETRYABLE_STATUS = {408, 409, 429}
# Error types a provider may report inside an otherwise successful (200) stream.
_RETRYABLE_STREAM_ERRORS = {
    "overloaded_error",
    "api_error",
    "rate_limit_error",
    "timeout_error",
    "server_error",
}
_MESSAGE_LIMIT = 400
_SDK_PACKAGES = {"openai", "anthropic", "httpx", "httpx2", "httpcore"}


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


def classify(provider: str, err: BaseException) -> ModelCallFailed | None:
    """The failure an SDK or transport exception stands for, or None for an exception that is not one."""
    if isinstance(err, ModelCallFailed):
        return err
    if not _from_sdk(err):
        return None
    if _is(err, "APIStatusError"):
        status_error: Any = err
        return _status_failure(
            provider, status_error.status_code, status_error.body, status_error.response.headers, str(err)
        )
    if _is(err, "APITimeoutError", "TimeoutException"):
        return ModelCallFailed(f"{provider} did not answer in time", provider=provider, retryable=True)
    if _is(err, "APIConnectionError", "TransportError"):
        # The SDKs wrap transport errors, but some streams let a dropped connection through unwrapped.
        cause = err.__cause__ if _is(err, "APIConnectionError") and err.__cause__ is not None else err
        if _is(cause, "TransportError") and not _is(cause, "ConnectError"):
            return ModelCallFailed(
                f"the connection to {provider} broke mid-answer: {type(cause).__name__}: "
                f"{one_line(redact(str(cause)), _MESSAGE_LIMIT)}",
                provider=provider,
                retryable=True,
            )
        return ModelCallFailed(
            f"could not reach {provider}: {one_line(redact(str(cause)), _MESSAGE_LIMIT)}",
            provider=provider,
            retryable=True,
        )
    if _is(err, "OpenAIError", "AnthropicError"):
        # Missing credentials and other client-side configuration problems: retrying can't fix them.
        return ModelCallFailed(
            f"{provider} client error: {one_line(redact(str(err)), _MESSAGE_LIMIT)}{_hint(provider, 401)}",
            provider=provider,
            retryable=False,
        )
    return None


def _from_sdk(err: BaseException) -> bool:
    return type(err).__module__.split(".")[0] in _SDK_PACKAGES


def _is(err: BaseException, *class_names: str) -> bool:
    """Matched by class name, so this module need not import both vendors' SDKs (seconds of worker
    startup) to recognise their exceptions; `_from_sdk` keeps the match to those packages."""
    return any(cls.__name__ in class_names for cls in type(err).__mro__)


def stream_cut(provider: str) -> ModelCallFailed:
    return ModelCallFailed(
        f"{provider}'s stream ended before the answer was finished", provider=provider, retryable=True
    )


def _status_failure(
    provider: str, status: int, body: object, headers: Mapping[str, str], fallback: str
) -> ModelCallFailed:
    kind, detail = _error_detail(body, fallback)
    label = f" ({kind})" if kind else ""
    if status < 400:
        # An error event inside a stream that had started well (Anthropic's overloaded_error, for one).
        retryable = kind in _RETRYABLE_STREAM_ERRORS and not _CONTEXT_LENGTH.search(detail)
        return ModelCallFailed(
            f"{provider} reported an error mid-stream{label}: {detail}",
            provider=provider,
            retryable=retryable,
            status=status,
        )
    if _CONTEXT_LENGTH.search(detail) or kind == "context_length_exceeded":
        return ModelCallFailed(
            f"{provider} answered HTTP {status}{label}: the conversation is too long for the model's context "
            f"window: {detail}",
            provider=provider,
            retryable=False,
            status=status,
        )
    retryable = status in _RETRYABLE_STATUS or status >= 500
    return ModelCallFailed(
        f"{provider} answered HTTP {status}{label}: {detail}{'' if retryable else _hint(provider, status)}",
        provider=provider,
        retryable=retryable,
        status=status,
        retry_after=retry_after(headers) if retryable else None,
    )


def _error_detail(body: object, fallback: str) -> tuple[str | None, str]:
    """The error's type or code and its message, from the shapes OpenAI, Anthropic and vLLM use."""
    error: Any = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, dict):
        kind = error.get("code") or error.get("type")
        message = error.get("message") or fallback
        return (str(kind) if kind else None), one_line(redact(str(message)), _MESSAGE_LIMIT)
    return None, one_line(
        redact(str(error if isinstance(error, str) and error else fallback)), _MESSAGE_LIMIT
    )


def _hint(provider: str, status: int) -> str:
    if status not in (401, 403):
        return ""
    variable = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}.get(
        provider, "KEEL_LOCAL_API_KEY"
    )
    return f" (check {variable} in the worker's environment)"


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the provider asked us to wait: retry-after-ms, retry-after in seconds or as an HTTP date."""
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
    return None


def redact(text: str) -> str:
    for variable in SECRET_VARIABLES:
        secret = os.environ.get(variable)
        if secret and len(secret) >= 8:
            text = text.replace(secret, "[redacted]")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub("[redacted]", text)
    return text
