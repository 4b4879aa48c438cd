"""Webhook delivery: Standard Webhooks signatures, retries with backoff and jitter, durable outbox."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from datetime import UTC, datetime

import aiohttp
from standardwebhooks import Webhook

from .errors import StoreUnavailable
from .metrics import Metrics
from .netguard import AddressDenied
from .settings import Settings
from .store import Delivery, DeliveryStatus, LeaseLost, RunStore
from .store.retry import retrying
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
        self._in_flight: set[str] = set()

    def wake(self) -> None:
        self._wake.set()

    def in_flight(self) -> list[str]:
        """The deliveries an attempt of this replica is making now: the only delivery leases its heartbeat renews."""
        return list(self._in_flight)

    async def run_forever(self) -> None:
        while True:
            try:
                due = await self.store.claim_due_deliveries(self.owner, time.time(), self.settings.lease_s)
                if due:
                    await asyncio.gather(*(self.attempt_guarded(delivery) for delivery in due))
                    continue
                next_at = await self.store.next_delivery_at()
            except StoreUnavailable as exc:  # a database hiccup: polled again
                log.warning("webhook delivery loop: %s", exc.message)
                next_at = None
            except Exception:  # the loop must survive anything
                log.exception("webhook delivery loop error")
                next_at = None
            wait = self.settings.webhook_poll_s if next_at is None else max(0.0, next_at - time.time())
            self._wake.clear()
            await wait_at_most(self._wake.wait(), min(wait, self.settings.webhook_poll_s))

    async def attempt_guarded(self, delivery: Delivery) -> None:
        """One delivery's attempt, renewed while it runs. Whatever it raises stays with it: the delivery goes
        back to pending as a failed attempt (else its lease lapses: it is no longer renewed), and the rest
        of its batch is not touched."""
        self._in_flight.add(delivery.id)
        try:
            await self.attempt(delivery)
        except Exception:
            log.exception("webhook attempt failed unexpectedly", extra={"run_id": delivery.run_id})
            try:
                await self._retry_later(delivery, delivery.attempts + 1, None, "internal error; the failure was logged")
            except Exception as exc:  # noqa: BLE001 - its lease lapses instead, and it is claimed again
                log.warning("could not put the delivery back: %r", exc, extra={"run_id": delivery.run_id})
        finally:
            self._in_flight.discard(delivery.id)

    async def attempt(self, delivery: Delivery) -> None:
        attempts = delivery.attempts + 1
        try:
            payload = delivery.payload
        except ValueError as exc:  # a run with no answer to send (a torn write): it never will have one
            await self._finish(delivery, DeliveryStatus.FAILED, attempts, None, str(exc))
            return
        http_status: int | None = None
        error: str | None = None
        retry_after: float | None = None
        try:
            timeout = aiohttp.ClientTimeout(total=self.settings.webhook_timeout_s)
            headers = self.signer.headers(delivery.id, payload)
            async with self.session.post(
                delivery.url, data=payload.encode(), headers=headers, timeout=timeout, allow_redirects=False
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
        else:
            await self._retry_later(delivery, attempts, http_status, error or f"HTTP {http_status}", retry_after)

    async def _retry_later(
        self,
        delivery: Delivery,
        attempts: int,
        http_status: int | None,
        error: str,
        retry_after: float | None = None,
    ) -> None:
        """A failed attempt: pending again after a backoff, or failed for good once out of attempts."""
        if attempts >= self.settings.webhook_max_attempts:
            await self._finish(delivery, DeliveryStatus.FAILED, attempts, http_status, error)
            return
        delay = backoff_s(attempts, self.settings.webhook_retry_base_s, self.settings.webhook_retry_max_s)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.settings.webhook_retry_max_s))
        self.metrics.webhooks.labels("retry").inc()
        log.info(
            "webhook attempt failed; retrying",
            extra={"run_id": delivery.run_id, "attempt": attempts, "http_status": http_status, "delay_s": delay},
        )
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
        async def record() -> None:
            await self.store.record_attempt(
                delivery.id,
                delivery.lease,
                status=status,
                attempts=attempts,
                next_attempt_at=next_attempt_at,
                http_status=http_status,
                error=error,
            )

        try:
            await retrying(record, self.settings.store_retry_s, "record_attempt")
        except LeaseLost as exc:
            if exc.after_lost_answer:  # our earlier try may have landed (it ends the lease): not ours now either way
                log.info("webhook attempt recorded before its answer was lost", extra={"run_id": delivery.run_id})
                return
            # We stalled past the lease; the new holder's record stands.
            self.metrics.leases_lost.labels("delivery").inc()
            log.warning("webhook attempt not recorded: %s", exc, extra={"run_id": delivery.run_id})
