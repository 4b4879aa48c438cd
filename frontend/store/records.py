"""What the run store holds: runs and their webhook deliveries, as frozen records every engine returns."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

# How many rows one retention statement touches: small, so it never holds many locks for long.
RETENTION_BATCH = 200


class RunStatus(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"  # stopped on request, or past its deadline while running
    ABORTED = "aborted"  # its deadline passed before it reached the model: never used it

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELED, RunStatus.ABORTED})
UNFINISHED = (RunStatus.QUEUED, RunStatus.PROCESSING)


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # due at next_attempt_at
    DELIVERED = "delivered"  # a 2xx
    GONE = "gone"  # the receiver answered 410: never again
    FAILED = "failed"  # out of attempts, or refused by policy


class LeaseLost(Exception):
    """A write under a lease another replica has since taken over (fencing): the write did not happen."""

    def __init__(self, what: str, lease: Lease) -> None:
        super().__init__(f"{what}: the lease of {lease.owner!r} (token {lease.token}) was taken over")
        self.lease = lease
        # Refused on a repeat (``retry.retrying``) after a try whose answer was lost with the connection:
        # that try may have landed, and a write that ends the lease refuses its own repeat.
        self.after_lost_answer = False


@dataclass(frozen=True)
class Lease:
    """The right to work a run or a delivery. Every claim raises ``token``, and every write under the
    lease names it, so a replica that stalled past its lease cannot overwrite the new holder's work."""

    owner: str
    token: int


@dataclass(frozen=True)
class RunState:
    """What an event stream polls: status, times and progress; never the result or the input image."""

    id: str
    status: RunStatus
    created_at: float
    started_at: float | None
    progress: dict[str, Any] | None  # {"step", "total", "preview"} while processing, posted about once a second

    @classmethod
    def from_row(cls, row: Any) -> RunState:
        """From a row of ``sql.RUN_STATE_SQL`` (either engine's rows are read by name)."""
        progress = row["progress"]
        return cls(
            id=row["id"],
            status=RunStatus(row["status"]),
            created_at=row["created_at"],
            started_at=row["started_at"],
            progress=None if progress is None else json.loads(progress),
        )


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
    body: dict[str, Any] | None  # the answer (succeeded) or the error body (failed); None once expired
    result_expired_at: float | None = None  # when retention deleted the result (SD_RESULT_TTL_S)
    lease: Lease | None = None  # set on runs handed out by a claim


@dataclass(frozen=True)
class Delivery:
    """A claimed delivery: its payload is built from the run's stored answer (the one copy of a result)."""

    id: str  # the webhook-id, stable across retries
    run_id: str
    url: str
    run_status: str
    body: str | None  # the run's answer as stored (JSON text); None only if a write was torn
    status: DeliveryStatus
    attempts: int
    next_attempt_at: float
    lease: Lease

    @property
    def payload(self) -> str:
        """Built when it is sent, not when it is claimed: a row that cannot be built fails alone (ValueError),
        it does not fail the claim of the batch around it."""
        if self.body is None:
            raise ValueError(f"run {self.run_id} has no answer to announce")
        return webhook_payload(self.run_status, self.body)


def delivery_id(run_id: str) -> str:
    """The ``webhook-id``: one per run, stable across retries and replicas (receivers deduplicate on it)."""
    return f"msg_{run_id}"


def created_before(key_hash: str, owner: str, found: Any) -> Lease:
    """``create_run`` found its run id taken already (``found``: that run's key_hash, lease_owner, lease_token):
    our own earlier attempt, whose answer was lost with the connection, hands back its lease."""
    if found is not None and found[0] == key_hash and found[1] == owner:
        return Lease(owner, found[2])
    raise LeaseLost("create_run", Lease(owner, 1))


def webhook_payload(status: str, body_json: str) -> str:
    """The same bytes on every attempt from any replica: the body's key order survives the round trip."""
    return json.dumps({"status": status, **json.loads(body_json)}, separators=(",", ":"))


@dataclass(frozen=True)
class IdempotencyRecord:
    """The first request under an ``Idempotency-Key`` (per API key): its body's fingerprint, its run and,
    once answered, the answer to replay (``response_status`` None: still running)."""

    fingerprint: str
    run_id: str
    created_at: float
    response_status: int | None
    response_body: str | None


@dataclass(frozen=True)
class Usage:
    """What the store holds now (retention keeps it bounded); ``disk_bytes`` as the engine reports it."""

    runs: int
    results: int
    pending_deliveries: int
    result_bytes: int
    disk_bytes: int


@dataclass(frozen=True)
class Expired:
    results: int
    runs: int


@dataclass(frozen=True)
class DeliveryState:
    """What ``GET /runs/{id}`` shows of a run's delivery."""

    status: DeliveryStatus
    attempts: int
    last_status: int | None
