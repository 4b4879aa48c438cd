"""Progress of the runs this replica is generating: asked of the model while its call is in flight.

The replica that runs a run polls the model's progress (``Fleet.progress``, asking the pod that runs it, every
``SD_PROGRESS_POLL_S``) and keeps the latest here, where its own event streams wait on it; it posts it
to the run store at most every ``SD_PROGRESS_STORE_S`` (one small write a second, not one a step), where
every other replica's streams read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

from ..generation import Progress
from ..store import RunStore
from ..waits import wait_at_most

log = logging.getLogger("frontend.runs")


class ProgressSource(Protocol):
    async def progress(self, request_id: str) -> Progress | None: ...


class ProgressFeed:
    def __init__(self, source: ProgressSource, store: RunStore, poll_s: float, store_s: float) -> None:
        self.source, self.store, self.poll_s, self.store_s = source, store, poll_s, store_s
        self._latest: dict[str, dict[str, Any]] = {}
        self._changed = asyncio.Condition()

    def latest(self, run_id: str) -> dict[str, Any] | None:
        """The latest progress of a run this replica is generating now, else None."""
        return self._latest.get(run_id)

    def following(self, run_id: str) -> bool:
        return run_id in self._latest

    async def wait(self, timeout_s: float) -> None:
        """Until any run's progress changes, or ``timeout_s``."""
        async with self._changed:
            await wait_at_most(self._changed.wait(), timeout_s)

    @contextlib.asynccontextmanager
    async def follow(self, run_id: str) -> AsyncIterator[None]:
        """While the body runs (the run's Triton call), poll the run's progress in the background."""
        self._latest[run_id] = {}
        task = asyncio.create_task(self._poll(run_id), name=f"progress {run_id}")
        try:
            yield
        finally:
            self._latest.pop(run_id, None)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():  # we are cancelled too: never swallow that
                    raise

    async def _poll(self, run_id: str) -> None:
        stored_at = 0.0
        last: Progress | None = None
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                progress = await self.source.progress(run_id)
            except Exception:  # best effort: the run goes on without progress
                log.warning("could not read progress", exc_info=True, extra={"run_id": run_id})
                return
            if progress is None or progress == last:
                continue
            last = progress
            self._latest[run_id] = progress.as_dict()
            async with self._changed:
                self._changed.notify_all()
            if time.monotonic() - stored_at >= self.store_s:
                stored_at = time.monotonic()
                try:
                    await self.store.set_progress(run_id, progress.as_dict())
                except Exception:  # advisory: a failed write must not touch the run
                    log.warning("could not store progress", exc_info=True, extra={"run_id": run_id})
