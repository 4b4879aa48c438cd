"""A store call tried again through a passing outage (``StoreUnavailable``): only for calls safe to repeat."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ..errors import StoreUnavailable
from .records import LeaseLost

log = logging.getLogger("frontend.store")
T = TypeVar("T")
FIRST_DELAY_S, MAX_DELAY_S = 0.05, 1.0


async def retrying(call: Callable[[], Awaitable[T]], within_s: float, what: str) -> T:
    """``call()``, again with backoff while the store is unavailable; its ``StoreUnavailable`` once
    ``within_s`` has passed. A failed call may have taken effect (its answer lost with the connection), so
    ``call`` must be safe to repeat; a fenced write refused on a repeat says so (``LeaseLost.after_lost_answer``):
    it may be its own first try that ended the lease."""
    deadline = time.monotonic() + within_s
    delay = FIRST_DELAY_S
    answer_lost = False
    while True:
        try:
            return await call()
        except LeaseLost as refused:
            refused.after_lost_answer = answer_lost
            raise
        except StoreUnavailable as exc:
            if time.monotonic() + delay > deadline:
                raise
            answer_lost = True
            log.warning("%s: %s; trying again in %.2f s", what, exc.message, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_DELAY_S)
