"""The run store's interface: every method the rest of the frontend calls, one implementation per engine.

Ownership: a replica works a run or a delivery under a lease (``owner``, ``lease_s``): ``claim_*`` hands
out work no live lease holds, ``renew_leases`` keeps it, ``release_leases`` gives it back at shutdown.
An engine that only one process can open (SQLite) has a single owner by construction: its claims hand
out all eligible work and its leases need no bookkeeping.
"""

from __future__ import annotations

from typing import Any, Protocol

from .records import Delivery, DeliveryState, DeliveryStatus, Run, RunStatus


class RunStore(Protocol):
    async def open(self) -> None:
        """Connect and bring the schema up to date."""

    async def close(self) -> None: ...

    async def create_run(
        self,
        run_id: str,
        key_hash: str,
        params: dict[str, Any],
        image_png: bytes | None,
        webhook_endpoint: str | None,
        status: RunStatus = RunStatus.QUEUED,
    ) -> None:
        """Record an accepted run before it is answered."""

    async def mark_processing(self, run_id: str) -> None: ...

    async def finish_run(self, run_id: str, status: RunStatus, body: dict[str, Any], delivery: Delivery | None) -> None:
        """Store the outcome and, in the same transaction, the delivery that announces it (an outbox)."""

    async def get_run(self, run_id: str, key_hash: str | None = None) -> Run | None:
        """The run; with ``key_hash``, only if that key created it (another key's run does not exist)."""

    async def claim_unfinished_runs(self, owner: str, lease_s: float) -> list[Run]:
        """Queued and processing runs no live lease holds, oldest first, now leased to ``owner``."""

    async def claim_due_deliveries(self, owner: str, now: float, lease_s: float, limit: int = 32) -> list[Delivery]:
        """Pending deliveries due by ``now`` that no live lease holds, soonest first, now leased to ``owner``."""

    async def next_delivery_at(self) -> float | None:
        """When the next pending delivery is due (None: none pending)."""

    async def record_attempt(
        self,
        delivery_id: str,
        *,
        status: DeliveryStatus,
        attempts: int,
        next_attempt_at: float,
        http_status: int | None,
        error: str | None,
    ) -> None:
        """An attempt's outcome; the delivery's lease ends with it."""

    async def delivery_for_run(self, run_id: str) -> DeliveryState | None: ...

    async def renew_leases(self, owner: str, lease_s: float) -> None:
        """Heartbeat: extend every lease ``owner`` holds."""

    async def release_leases(self, owner: str) -> None:
        """Give back every lease ``owner`` holds (graceful shutdown), so others may take the work now."""
