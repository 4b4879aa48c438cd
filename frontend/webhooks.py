"""Webhook delivery: Standard Webhooks signatures, retries with backoff and jitter, durable outbox."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from datetime import UTC, datetime

import aiohttp
from standardwebhooks import Webhook

from .metrics import Metrics
from .netguard import AddressDenied
from .settings import Settings
from .store import Delivery, DeliveryStatus, LeaseLost, RunStore
from .waits import wait_at_most

log = logging.getLogger("frontend.webhooks")
RETRY_AFTER_STATUSES = {429, 503}


class WebhookSigner:
    """``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` (v1, HMAC-SHA256 over id.ts.body)."""

    def __init__(self, secret: str) -> None:
        self._webhook = Webhook(secret)

    def headers(self, message_id: str, body: str, now: datetime | None = None) -> dict[str, str]:
        timestamp = now or datetime.now(tz=UTC)
        return {
            "webhook-id": message_id,
            "webhook-timestamp": str(int(timestamp.timestamp())),
            "webhook-signature": self._webhook.sign(message_id, timestamp, body),
            "content-type": "application/json",
        }


def backoff_s(attempts: int, base_s: float, max_s: float) -> float:
    """Exponential with full-range jitter in [0.5, 1.5) so retries from many runs do not align."""
    return float(min(max_s, base_s * 2 ** (attempts - 1)) * (0.5 + random.random()))  # noqa: S311 - jitter, not crypto


def retry_after_s(response: aiohttp.ClientResponse) -> float | None:
    value = response.headers.get("Retry-After", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class WebhookDeliverer:
    """Sends due deliveries from the store; one background task per app."""

    def __init__(
        self,
        store: RunStore,
        session: aiohttp.ClientSession,
        signer: WebhookSigner,
        settings: Settings,
        metrics: Metrics,
        owner: str,
    ) -> None:
        self.store, self.session, self.signer, self.settings, self.metrics = store, session, signer, settings, metrics
        self.owner = owner  # this replica, holder of the delivery leases it claims
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run_forever(self) -> None:
        while True:
            try:
                due = await self.store.claim_due_deliveries(self.owner, time.time(), self.settings.lease_s)
                if due:
                    await asyncio.gather(*(self.attempt(delivery) for delivery in due))
                    continue
                next_at = await self.store.next_delivery_at()
            except Exception:  # the loop must survive a bad row or a database hiccup
                log.exception("webhook delivery loop error")
                next_at = None
            wait = self.settings.webhook_poll_s if next_at is None else max(0.0, next_at - time.time())
            self._wake.clear()
            await wait_at_most(self._wake.wait(), min(wait, self.settings.webhook_poll_s))

    async def attempt(self, delivery: Delivery) -> None:
        attempts = delivery.attempts + 1
        http_status: int | None = None
        error: str | None = None
        retry_after: float | None = None
        try:
            timeout = aiohttp.ClientTimeout(total=self.settings.webhook_timeout_s)
            headers = self.signer.headers(delivery.id, delivery.payload)
            async with self.session.post(
                delivery.url, data=delivery.payload.encode(), headers=headers, timeout=timeout, allow_redirects=False
            ) as response:
                http_status = response.status
                if response.status in RETRY_AFTER_STATUSES:
                    retry_after = retry_after_s(response)
                # The receiver's body is never read or stored: it is not ours to keep.
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, AddressDenied):
                await self._finish(
                    delivery, DeliveryStatus.FAILED, attempts, None, f"refused by policy: {exc.os_error}"
                )
                return
            error = f"connection failed: {exc.os_error}"
        except TimeoutError:
            error = f"no answer within {self.settings.webhook_timeout_s:g} s"
        except aiohttp.ClientError as exc:
            error = f"{type(exc).__name__}"

        if http_status is not None and 200 <= http_status < 300:
            await self._finish(delivery, DeliveryStatus.DELIVERED, attempts, http_status, None)
        elif http_status == 410:
            await self._finish(delivery, DeliveryStatus.GONE, attempts, http_status, "receiver answered 410 Gone")
        elif attempts >= self.settings.webhook_max_attempts:
            await self._finish(delivery, DeliveryStatus.FAILED, attempts, http_status, error or f"HTTP {http_status}")
        else:
            delay = backoff_s(attempts, self.settings.webhook_retry_base_s, self.settings.webhook_retry_max_s)
            if retry_after is not None:
                delay = max(delay, min(retry_after, self.settings.webhook_retry_max_s))
            self.metrics.webhooks.labels("retry").inc()
            log.info(
                "webhook attempt failed; retrying",
                extra={"run_id": delivery.run_id, "attempt": attempts, "http_status": http_status, "delay_s": delay},
            )
            error = error or f"HTTP {http_status}"
            await self._record(delivery, DeliveryStatus.PENDING, attempts, time.time() + delay, http_status, error)

    async def _finish(
        self, delivery: Delivery, status: DeliveryStatus, attempts: int, http_status: int | None, error: str | None
    ) -> None:
        self.metrics.webhooks.labels(str(status)).inc()
        log.info(
            "webhook %s", status, extra={"run_id": delivery.run_id, "attempt": attempts, "http_status": http_status}
        )
        await self._record(delivery, status, attempts, time.time(), http_status, error)

    async def _record(
        self,
        delivery: Delivery,
        status: DeliveryStatus,
        attempts: int,
        next_attempt_at: float,
        http_status: int | None,
        error: str | None,
    ) -> None:
        try:
            await self.store.record_attempt(
                delivery.id,
                delivery.lease,
                status=status,
                attempts=attempts,
                next_attempt_at=next_attempt_at,
                http_status=http_status,
                error=error,
            )
        except LeaseLost as exc:  # we stalled past the lease; the new holder's record stands
            self.metrics.leases_lost.labels("delivery").inc()
            log.warning("webhook attempt not recorded: %s", exc, extra={"run_id": delivery.run_id})
