"""Waiting for a wake-up with a time limit, in the loops that run until they are cancelled."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable


async def wait_at_most(awaitable: Awaitable[object], timeout_s: float) -> None:
    """Await ``awaitable`` for at most ``timeout_s``, then go on either way.

    Not ``asyncio.wait_for``: on Python 3.11, a cancellation that arrives just as the awaited event is
    set is lost there (CPython gh-86296, fixed in 3.12), and a loop around it never stops: a shutdown
    hung on the webhook loop that way when a run finished during it.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await awaitable
