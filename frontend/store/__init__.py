"""The run store: records, the ``RunStore`` interface, its engines, and ``open_store(url)``."""

from .base import RunStore
from .open import open_store, redacted
from .records import (
    Delivery,
    DeliveryState,
    DeliveryStatus,
    Expired,
    IdempotencyRecord,
    Lease,
    LeaseLost,
    Run,
    RunState,
    RunStatus,
    Usage,
    delivery_id,
)

__all__ = [
    "Delivery",
    "DeliveryState",
    "DeliveryStatus",
    "Expired",
    "IdempotencyRecord",
    "Lease",
    "LeaseLost",
    "Run",
    "RunState",
    "RunStatus",
    "RunStore",
    "Usage",
    "delivery_id",
    "open_store",
    "redacted",
]
