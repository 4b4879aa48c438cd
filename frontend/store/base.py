"""The run store's interface: every method the rest of the frontend calls, one implementation per engine.

Ownership: a replica works a run or a delivery under a lease (``owner``, expiry, fencing ``token``).
``claim_*`` hands out work no live lease holds and raises its token; ``renew_leases`` (the heartbeat)
keeps the leases of the work the owner is still doing, named one by one, so work whose task died lapses
and is taken over; ``release_run`` and ``release_leases`` give work back at once. Every write about
claimed work names its ``Lease`` and raises ``LeaseLost``, writing nothing, when another replica has
taken it over.

Every method that writes is one transaction: it commits whole or not at all, and no other call (of this
replica or another) sees it half done. An engine raises ``StoreUnavailable`` when its database cannot be
reached or drops the connection mid-call; such a call may or may not have taken effect.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, Protocol

from ..quota import Decision, Quota
from .records import (
    Delivery,
    DeliveryState,
    DeliveryStatus,
    Expired,
    IdempotencyRecord,
    Lease,
    Run,
    RunState,
    RunStatus,
    Usage,
)


class RunStore(Protocol):
    async def open(self) -> None:
        """Connect and bring the schema up to date (safe when several replicas start at once). An engine
        only one process may use (SQLite) also hands back, at once, the leases a previous process left."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise if the database cannot answer now (``/readyz``)."""

    def subscribe(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` when another replica may have made work for this one (a wake-up, never the only
        way: callers poll as well)."""

    async def create_run(
        self,
        run_id: str,
        key_hash: str,
        params: dict[str, Any],
        image_png: bytes | None,
        webhook_endpoint: str | None,
        *,
        owner: str,
        lease_s: float,
        status: RunStatus = RunStatus.QUEUED,
    ) -> Lease:
        """Record an accepted run before it is answered, leased to the replica that accepted it. Safe to
        repeat after a lost answer: the same id again by the same owner hands back the lease it got."""

    async def mark_processing(self, run_id: str, lease: Lease) -> None:
        """Fenced; safe to repeat."""

    async def finish_run(
        self, run_id: str, lease: Lease, status: RunStatus, body: dict[str, Any], webhook_url: str | None
    ) -> None:
        """Store the outcome, end the run's lease and, in the same transaction, write the delivery that
        announces it to ``webhook_url`` (an outbox); then wake the replicas. Fenced: repeated after a lost
        answer whose write had landed, it raises ``LeaseLost`` (the lease ended with the first)."""

    async def stop_run(
        self, run_id: str, key_hash: str | None, status: RunStatus, body: dict[str, Any]
    ) -> tuple[Run, bool] | None:
        """Finish an unfinished run as ``canceled`` or ``aborted`` whoever holds it: ends its lease (the
        worker's later writes are fenced out, as after ``finish_run``) and writes its delivery, in one
        transaction.
        Returns the run as it is now and whether this call stopped it (False: it had already finished);
        None when there is no such run (for ``key_hash``)."""

    async def finished_among(self, run_ids: list[str]) -> list[str]:
        """Which of these runs have finished (a worker stops those another replica canceled)."""

    async def claim_idempotency(
        self, key_hash: str, key: str, fingerprint: str, run_id: str, *, now: float, ttl_s: float
    ) -> IdempotencyRecord | None:
        """Record ``key`` for ``run_id``, or return the live record already there (None: recorded now).
        A record older than ``ttl_s`` is replaced."""

    async def answer_idempotency(self, key_hash: str, key: str, status: int, body: str) -> None:
        """The first request's answer, to replay."""

    async def release_idempotency(self, key_hash: str, key: str) -> None:
        """Forget ``key`` (its request was refused before it became a run: a retry may try again)."""

    async def get_run(self, run_id: str, key_hash: str | None = None) -> Run | None:
        """The run; with ``key_hash``, only if that key created it (another key's run does not exist)."""

    async def run_state(self, run_id: str, key_hash: str) -> RunState | None:
        """The run's status, times and progress, if ``key_hash`` created it: a light read for event streams."""

    async def set_progress(self, run_id: str, progress: dict[str, Any]) -> None:
        """Record a processing run's progress for every replica's event streams (ignored once it is not
        processing). Unfenced: progress is advisory, and its writer bounds it to about one a second."""

    async def list_runs(self, key_hash: str, limit: int, before: tuple[float, str] | None = None) -> list[Run]:
        """``key_hash``'s runs, newest first (``created_at``, then id, descending), at most ``limit``, those
        after the cursor ``before`` = (created_at, id) of the last run of the previous page. Without their
        input images."""

    async def claim_unfinished_runs(self, owner: str, lease_s: float, limit: int = 16) -> list[Run]:
        """Queued and processing runs no live lease holds, oldest first, now leased to ``owner``."""

    async def claim_due_deliveries(self, owner: str, now: float, lease_s: float, limit: int = 32) -> list[Delivery]:
        """Pending deliveries due by ``now`` that no live lease holds, soonest first, now leased to ``owner``."""

    async def next_delivery_at(self) -> float | None:
        """When the next pending delivery is due (None: none pending)."""

    async def record_attempt(
        self,
        delivery_id: str,
        lease: Lease,
        *,
        status: DeliveryStatus,
        attempts: int,
        next_attempt_at: float,
        http_status: int | None,
        error: str | None,
    ) -> None:
        """An attempt's outcome; the delivery's lease ends with it."""

    async def delivery_for_run(self, run_id: str) -> DeliveryState | None: ...

    async def renew_leases(
        self,
        owner: str,
        lease_s: float,
        runs: Collection[str],
        deliveries: Collection[str],
        slots: Collection[str] = (),
    ) -> int:
        """Heartbeat: extend the leases ``owner`` still holds on these runs, deliveries and fairness slots, the
        work its tasks are doing now (a lapsed lease nobody took yet included); how many. Never another lease
        it holds: a run or delivery whose task ended without an outcome must lapse, so that it is taken over."""

    async def take_quota(self, key_hash: str, slot_id: str, owner: str, quota: Quota, lease_s: float) -> Decision:
        """Per-key fairness, one transaction: the key's slots whose lease lapsed go, then ``quota.decide`` on
        its slots left and its token bucket; admitted, a slot ``slot_id`` leased to ``owner`` is added and the
        bucket written. Replicas sharing the store share each key's limits."""

    async def release_quota(self, slot_id: str) -> None:
        """Give back one fairness slot (its run ended, or never started); a no-op when it is gone."""

    async def release_run(self, run_id: str, lease: Lease) -> None:
        """Give back one unfinished run at once (its task ended without recording an outcome), so any
        replica may take it over now. Fenced, and a no-op when ``lease`` is no longer current."""

    async def release_leases(self, owner: str) -> None:
        """Give back every lease ``owner`` holds (graceful shutdown), so others may take the work now; its
        fairness slots go."""

    async def expire(
        self, now: float, result_ttl_s: float, run_ttl_s: float, idempotency_ttl_s: float = 86400.0
    ) -> Expired:
        """Retention, one small batch of each: delete the results of runs finished ``result_ttl_s`` ago
        (kept while their delivery is pending), the runs (with their deliveries) created ``run_ttl_s``
        ago, and idempotency keys older than ``idempotency_ttl_s``. Safe to run on every replica at once;
        call again while it returns full batches."""

    async def usage(self) -> Usage: ...
