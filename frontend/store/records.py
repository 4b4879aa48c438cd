"""What the run store holds: runs and their webhook deliveries, as frozen records every engine returns."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class RunStatus(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED})
UNFINISHED = (RunStatus.QUEUED, RunStatus.PROCESSING)


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # due at next_attempt_at
    DELIVERED = "delivered"  # a 2xx
    GONE = "gone"  # the receiver answered 410: never again
    FAILED = "failed"  # out of attempts, or refused by policy


@dataclass(frozen=True)
class Run:
    id: str
    key_hash: str
    status: RunStatus
    created_at: float
    started_at: float | None
    finished_at: float | None
    params: dict[str, Any]
    image_png: bytes | None  # kept until the run finishes, for resuming (webhook runs only)
    webhook_endpoint: str | None
    body: dict[str, Any] | None  # the answer (succeeded) or the error body (failed)


@dataclass(frozen=True)
class Delivery:
    id: str  # the webhook-id, stable across retries
    run_id: str
    url: str
    payload: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: float


@dataclass(frozen=True)
class DeliveryState:
    """What ``GET /runs/{id}`` shows of a run's delivery."""

    status: DeliveryStatus
    attempts: int
    last_status: int | None
