"""The run store: records, the ``RunStore`` interface, its engines, and ``open_store(url)``."""

from .base import RunStore
from .open import open_store
from .records import Delivery, DeliveryState, DeliveryStatus, Run, RunStatus

__all__ = ["Delivery", "DeliveryState", "DeliveryStatus", "Run", "RunStatus", "RunStore", "open_store"]
