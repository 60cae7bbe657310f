"""`deliver_webhook`: one attempt to POST a run event to one endpoint, signed (Standard Webhooks), to an
address checked at that moment; and `webhook_gave_up`, the record of a delivery that ran out of time.

Each attempt resolves the endpoint's host and refuses, for good, an address that is not public (unless
KEEL_WEBHOOK_ALLOW_PRIVATE), then connects to the very address it checked — the name is not looked up a
second time, so it cannot be pointed elsewhere in between. The payload is built here from PostgreSQL, so no
message body enters Temporal history; it is signed afresh at each attempt (the timestamp is the attempt's,
as receivers reject old ones). An answer other than 2xx is retried after KEEL_WEBHOOK_RETRY_SECONDS,
doubling up to an hour; Temporal keeps the schedule, so worker and gateway crashes only delay it.
"""

import asyncio
import ipaddress
import json
import logging
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn
from urllib.parse import SplitResult, urlsplit

import asyncpg
import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.heartbeat import heartbeating
from keel.observability import metrics
from keel.settings import Settings
from keel.storage import webhook_deliveries
from keel.webhooks import (
    DELIVER_WEBHOOK,
    WAITING_FOR_APPROVAL,
    WEBHOOK_GAVE_UP,
    WEBHOOK_REFUSED,
    WebhookDeliveryInput,
    WebhookGaveUp,
    address_problem,
    endpoint_problem,
    secret_key,
    signed_headers,
)

log = logging.getLogger("keel.webhooks")

# How long a receiver has to answer one attempt; the Standard Webhooks spec asks receivers to answer fast.
ATTEMPT_TIMEOUT_S = 15.0
MAX_RETRY_S = 3600.0
# How much of a receiver's answer is kept with the delivery's record when it is not 2xx.
_ANSWER_CHARS = 200


@dataclass(frozen=True)
class Target:
    """Where an attempt connects: the endpoint, and the address its host resolved to and was checked at."""

    url: SplitResult
    address: ipaddress.IPv4Address | ipaddress.IPv6Address

    def pinned_url(self) -> str:
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        port = self.url.port or (443 if self.url.scheme == "https" else 80)
        return self.url._replace(netloc=f"{host}:{port}").geturl()


class AttemptFailed(Exception):
    """The receiver could not be reached or did not answer 2xx: the attempt is retried."""


@dataclass
class WebhookActivities:
    pool: asyncpg.Pool
    settings: Settings

    @activity.defn(name=DELIVER_WEBHOOK)
    async def deliver_webhook(self, delivery: WebhookDeliveryInput) -> None:
        await webhook_deliveries.attempt_started(self.pool, delivery)
        keys = [secret_key(s) for s in self.settings.webhook_secrets]
        if not keys:
            await self._refuse(
                delivery, "KEEL_WEBHOOK_SECRET is not set on the worker: deliveries are never unsigned"
            )
        target = await self._target(delivery)
        body = json.dumps(await self._payload(delivery), separators=(",", ":")).encode()
        try:
            async with heartbeating():
                status = await self._post(target, delivery.webhook_id, keys, body)
        except AttemptFailed as failed:
            await self._retry_later(delivery, None, str(failed))
        if not 200 <= status.code < 300:
            await self._retry_later(delivery, status.code, f"HTTP {status.code}: {status.text}")
        await webhook_deliveries.attempt_ended(
            self.pool, delivery.webhook_id, "delivered", status_code=status.code
        )
        metrics.WEBHOOK_DELIVERIES.labels("delivered").inc()
        log.info(
            "delivered %s to %s",
            delivery.type,
            delivery.endpoint,
            extra={"agent_run_id": delivery.agent_run_id},
        )

    @activity.defn(name=WEBHOOK_GAVE_UP)
    async def webhook_gave_up(self, gave_up: WebhookGaveUp) -> None:
        await webhook_deliveries.attempt_ended(self.pool, gave_up.webhook_id, "failed", error=gave_up.error)
        metrics.WEBHOOK_DELIVERIES.labels("gave_up").inc()

    # --- where to, and whether at all ---

    async def _target(self, delivery: WebhookDeliveryInput) -> Target:
        """The endpoint and the address to connect to; a refusal when it is not one Keel may reach."""
        allow_private = self.settings.webhook_allow_private
        if problem := endpoint_problem(delivery.endpoint, allow_private=allow_private):
            await self._refuse(delivery, problem)
        url = urlsplit(delivery.endpoint)
        host = url.hostname or ""
        try:
            addresses = await _resolve(host, url.port or (443 if url.scheme == "https" else 80))
        except OSError as err:  # a name that does not resolve now may resolve later: retried
            await self._retry_later(delivery, None, f"cannot resolve {host}: {err}")
        if not allow_private:
            for address in addresses:
                if why := address_problem(address):
                    await self._refuse(
                        delivery,
                        f"{host} resolves to {why} (set KEEL_WEBHOOK_ALLOW_PRIVATE=true to allow it)",
                    )
        return Target(url, addresses[0])

    async def _refuse(self, delivery: WebhookDeliveryInput, why: str) -> NoReturn:
        """A delivery Keel will not make: recorded as refused, and never retried."""
        await webhook_deliveries.attempt_ended(self.pool, delivery.webhook_id, "refused", error=why)
        metrics.WEBHOOK_DELIVERIES.labels("refused").inc()
        log.warning("refused webhook %s to %s: %s", delivery.webhook_id, delivery.endpoint, why)
        raise ApplicationError(why, type=WEBHOOK_REFUSED, non_retryable=True)

    async def _retry_later(
        self, delivery: WebhookDeliveryInput, status_code: int | None, error: str
    ) -> NoReturn:
        """Record a failed attempt and when the next one is due, and hand Temporal that delay."""
        attempt = activity.info().attempt
        delay = min(self.settings.webhook_retry_s * 2 ** (attempt - 1), MAX_RETRY_S)
        await webhook_deliveries.attempt_ended(
            self.pool,
            delivery.webhook_id,
            "pending",
            status_code=status_code,
            error=error,
            next_attempt_at=datetime.now(UTC) + timedelta(seconds=delay),
        )
        metrics.WEBHOOK_DELIVERIES.labels("retrying").inc()
        raise ApplicationError(
            f"attempt {attempt} to {delivery.endpoint} failed: {error}",
            type="WebhookAttemptFailed",
            next_retry_delay=timedelta(seconds=delay),
        )

    # --- what is sent ---

    async def _payload(self, delivery: WebhookDeliveryInput) -> dict[str, Any]:
        """`{"type", "timestamp", "data"}` as the Standard Webhooks spec shapes an event; docs/how-to/webhooks.md
        describes every field of `data`."""
        run_id = delivery.agent_run_id
        call = None
        if delivery.tool_call_id is not None:
            call = await webhook_deliveries.tool_call(self.pool, run_id, delivery.tool_call_id)
            if call is None:  # the run records the call as it starts waiting: this attempt came first
                raise AttemptFailed(f"tool call {delivery.tool_call_id} is not recorded yet")
        final = delivery.is_final
        output_seq = delivery.output_seq
        return {
            "type": delivery.type,
            "timestamp": delivery.occurred_at.isoformat().replace("+00:00", "Z"),
            "data": {
                "agent_run_id": run_id,
                "status": delivery.status,
                "detail": delivery.detail,
                "purpose": delivery.purpose,
                "metadata": delivery.metadata,
                "parent_run_id": delivery.parent_run_id,
                "text": await webhook_deliveries.final_text(self.pool, run_id) if final else None,
                "output": (
                    await webhook_deliveries.structured_output(self.pool, run_id, output_seq)
                    if final and output_seq is not None
                    else None
                ),
                "tool_call": call,
                "approval": (
                    {"tool_call_id": delivery.tool_call_id, "expires_at": delivery.expires_at.isoformat()}
                    if delivery.type == WAITING_FOR_APPROVAL and delivery.expires_at is not None
                    else None
                ),
            },
        }

    async def _post(self, target: Target, msg_id: str, keys: list[bytes], body: bytes) -> "Answer":
        """POST the signed body to the checked address, with the endpoint's own Host (and TLS name)."""
        headers = signed_headers(keys, msg_id, int(time.time()), body)
        headers["host"] = target.url.netloc
        extensions = {"sni_hostname": target.url.hostname} if target.url.scheme == "https" else {}
        try:
            async with httpx.AsyncClient(timeout=ATTEMPT_TIMEOUT_S, follow_redirects=False) as http:
                response = await http.post(
                    target.pinned_url(), content=body, headers=headers, extensions=extensions
                )
        except httpx.HTTPError as err:
            raise AttemptFailed(f"{type(err).__name__}: {err}".rstrip(": ")) from None
        return Answer(response.status_code, response.text[:_ANSWER_CHARS])


@dataclass(frozen=True)
class Answer:
    code: int
    text: str


async def _resolve(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Every address `host` resolves to now (a literal address is itself)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    # An IPv6 link-local address may carry a zone (`fe80::1%eth0`): the address is what is judged.
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
