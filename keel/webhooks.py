"""Webhooks: what a run's events look like on the way to a backend, and the rules every process applies to
them — the gateway (a run's `webhook_url`, redelivery), the workflow (which events, which delivery ids) and
the worker's `deliver_webhook` activity (signing, which addresses it may reach).

Deliveries are signed as the Standard Webhooks specification says: `webhook-id`, `webhook-timestamp` and
`webhook-signature`, a space-separated list of `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, one
per secret of KEEL_WEBHOOK_SECRET, so a receiver that knows either the old or the new secret verifies a
delivery while secrets rotate.

Pure code (no I/O): the workflow sandbox imports it. Resolving names and sending is the activity's.
"""

import base64
import hashlib
import hmac
import ipaddress
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, Field

# The delivery workflow and its activities, as the worker registers them and the gateway starts them.
WEBHOOK_WORKFLOW = "WebhookDelivery"
DELIVER_WEBHOOK = "deliver_webhook"
WEBHOOK_GAVE_UP = "webhook_gave_up"
# Failure types: a delivery Keel will not make (a private address, no secret), and one that ran out of time.
WEBHOOK_REFUSED = "WebhookRefused"
WEBHOOK_UNDELIVERED = "WebhookUndelivered"

# Run events a backend hears of. A final status is `run.<status>`; a run that waits for a person sends
# `run.waiting_for_approval` (each approval asked for) or `run.needs_input` (the agent asks the user).
WAITING_FOR_APPROVAL = "run.waiting_for_approval"
NEEDS_INPUT = "run.needs_input"
EVENT_TYPES = (
    "run.completed",
    "run.failed",
    "run.cancelled",
    "run.step_limit",
    "run.budget_exceeded",
    NEEDS_INPUT,
    WAITING_FOR_APPROVAL,
)

SECRET_PREFIX = "whsec_"
# The Standard Webhooks specification asks for secrets of 24 to 64 random bytes.
MIN_SECRET_BYTES, MAX_SECRET_BYTES = 24, 64
MAX_URL_CHARS = 2000
# webhook-ids are derived from (run, event, endpoint): the same delivery always has the same id.
_WEBHOOK_IDS = uuid.UUID("0d6f3c1e-8b7a-4c55-9a0e-2f4b6d8c1a93")


class WebhookDeliveryInput(BaseModel):
    """One event for one endpoint: the input of a `WebhookDelivery` workflow, also kept with the delivery's
    record so it can be sent again. Small facts only: the activity reads the run's answer and the waiting
    tool call from PostgreSQL when it builds the payload, so no message body enters history."""

    webhook_id: str
    endpoint: str
    type: str
    # When the event happened in the run (workflow time): the payload's `timestamp`.
    occurred_at: datetime
    agent_run_id: str
    user_id: str | None = None
    status: str
    detail: str | None = None
    purpose: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)
    parent_run_id: str | None = None
    # The tool call a waiting event is about (an approval, a question).
    tool_call_id: str | None = None
    # When an approval the event is about expires.
    expires_at: datetime | None = None
    # A final event of a run with structured output: the reply that holds the validated object.
    output_seq: int | None = None

    @property
    def is_final(self) -> bool:
        return self.tool_call_id is None


class WebhookGaveUp(BaseModel):
    """A delivery that ran out of time: its record is marked failed, with the last reason."""

    webhook_id: str
    error: str


class WebhookDeliveryView(BaseModel):
    """A delivery as `GET /api/webhooks/deliveries` shows it: one event for one endpoint, as its last
    attempt left it (status pending, delivered, failed or refused)."""

    id: str
    agent_run_id: str
    event_type: str
    endpoint: str
    status: str
    attempts: int
    last_status_code: int | None = None
    last_error: str | None = None
    created_at: datetime
    delivered_at: datetime | None = None
    # When the next attempt is due, while it is pending after a failed one.
    next_attempt_at: datetime | None = None
    updated_at: datetime


def webhook_id(agent_run_id: str, event_key: str, endpoint: str) -> str:
    """The delivery's `webhook-id`: stable per (run, event, endpoint), so a receiver deduplicates retries and
    redeliveries by it. `event_key` is the event type, with the tool call for events a run has several of."""
    name = "\n".join((agent_run_id, event_key, endpoint))
    return f"msg_{uuid.uuid5(_WEBHOOK_IDS, name).hex}"


def delivery_workflow_id(webhook_id: str) -> str:
    """The delivery's Temporal workflow id: one delivery of an id at a time; a second start is refused."""
    return f"webhook-{webhook_id}"


# --- endpoints ---


def endpoint_problem(url: str, *, allow_private: bool) -> str | None:
    """Why Keel will not POST to `url`, judged from the URL alone (a name is judged again, resolved, at each
    delivery), or None: http(s), a host, no credentials, and no literal address that is not public unless
    `allow_private`."""
    if len(url) > MAX_URL_CHARS:
        return f"a webhook URL has at most {MAX_URL_CHARS} characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as err:
        return f"{url!r} is not a URL: {err}"
    if parts.scheme not in ("http", "https"):
        return f"a webhook URL must be http or https, not {parts.scheme or 'schemeless'}: {url!r}"
    if not parts.hostname:
        return f"a webhook URL needs a host: {url!r}"
    if parts.username is not None or parts.password is not None:
        return "a webhook URL may not carry credentials; deliveries are authenticated by their signature"
    address = None if allow_private else _literal_address(parts.hostname)
    if address is not None and (why := address_problem(address)):
        return f"{url!r} points to {why} (set KEEL_WEBHOOK_ALLOW_PRIVATE=true to allow it)"
    return None


def _literal_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def address_problem(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why a delivery may not go to this address (loopback, private, link-local, multicast, reserved,
    unspecified, or otherwise not globally reachable), or None for a public one. An IPv4 address written as
    IPv6 (`::ffff:127.0.0.1`) is judged as the IPv4 address it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for kind in ("loopback", "link_local", "multicast", "unspecified", "reserved", "private"):
        if getattr(address, f"is_{kind}"):
            return f"a {kind.replace('_', '-')} address ({address})"
    if not address.is_global:
        return f"an address that is not public ({address})"
    return None


def run_endpoints(own: str | None, app_endpoints: Sequence[str]) -> list[str]:
    """A run's endpoints: its own `webhook_url` first, then the app's (KEEL_WEBHOOK_URLS), each once."""
    return list(dict.fromkeys([*([own] if own else []), *app_endpoints]))


def split_list(value: str) -> list[str]:
    """A comma-separated setting as its items, blanks dropped."""
    return [item.strip() for item in value.split(",") if item.strip()]


# --- signing ---


def secret_key(secret: str) -> bytes:
    """The key of a `whsec_<base64>` secret; ValueError saying what is wrong with it."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"a webhook secret starts with {SECRET_PREFIX} (whsec_ + base64 of random bytes)")
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except ValueError:
        raise ValueError("a webhook secret is whsec_ followed by base64") from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ValueError(
            f"a webhook secret holds {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} random bytes, not {len(key)}"
        )
    return key


def signature_header(keys: Iterable[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header: one `v1,<base64 HMAC-SHA256>` per key, space-separated."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode() for key in keys
    )


def signed_headers(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Every header a delivery carries: the Standard Webhooks three and its content type."""
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(keys, msg_id, timestamp, body),
        "user-agent": "Keel-Webhooks/1",
    }
