"""``/readyz``: can this replica take work now? Busy is not dead.

Ready means the run store answers, Triton's model is loaded, nothing says it is dead, and its queue is
not full. The evidence comes first from real traffic (every call to the model is recorded in
``BackendHealth``), and only when there is none, from one canary inference. A canary is never taken
to mean death by waiting: the model's stub runs one batch at a time, so behind a long batch (minutes
for a full-size model on a CPU) any canary waits; only a canary that waits ``readyz_stall_s`` makes the
replica unready. At most one canary is in flight, so probes never fill Triton's queue with canaries.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

import numpy as np

from .backend import Backend
from .generation import GenerationInput
from .settings import Settings
from .store import RunStore

# 64 px: the smallest side SD 1.5's UNet takes (latent 8, halved three times).
CANARY = GenerationInput(
    prompt="canary",
    image=np.full((64, 64, 3), 127, dtype=np.uint8),
    strength=1.0,
    num_inference_steps=1,
    guidance_scale=1.0,
    seed=0,
)


@dataclass
class Readiness:
    backend: Backend
    settings: Settings
    store: RunStore
    _canary: asyncio.Task[object] | None = None
    _canary_sent_at: float = -math.inf
    _verdict: str | None = None
    _checked_at: float = -math.inf
    _lock: asyncio.Lock | None = None

    async def verdict(self) -> str | None:
        """None when ready, else why not; reused for ``readyz_cache_s`` so probes cost nothing."""
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:
            if time.monotonic() - self._checked_at > self.settings.readyz_cache_s:
                self._verdict = await self._check()
                self._checked_at = time.monotonic()
        return self._verdict

    async def _check(self) -> str | None:
        try:
            await asyncio.wait_for(self.store.ping(), timeout=self.settings.canary_timeout_s)
        except Exception as exc:  # a replica that cannot record runs must not take them
            return f"the run store does not answer: {type(exc).__name__}: {exc}"
        if not await self.backend.is_model_ready():
            return f"Triton model {self.settings.triton_model!r} is not ready"
        health, now = self.backend.health, time.monotonic()
        unready = health.unready(now, self.settings.readyz_cache_s)
        if unready is None:
            if now - health.ok_at <= self.settings.readyz_cache_s:
                return None  # real traffic just succeeded
            if health.in_flight > self._canaries_in_flight():
                return None  # busy with our own requests: a canary would only wait behind them
        return await self._ask_canary(unready)

    def _canaries_in_flight(self) -> int:
        return int(self._canary is not None and not self._canary.done())

    async def _ask_canary(self, unready: str | None) -> str | None:
        if self._canary is None or self._canary.done():
            self._canary = asyncio.create_task(
                self.backend.generate(CANARY, timeout_s=self.settings.readyz_stall_s, request_id="readyz-canary")
            )
            self._canary.add_done_callback(_retrieve)
            self._canary_sent_at = time.monotonic()
        await asyncio.wait({self._canary}, timeout=self.settings.canary_timeout_s)  # never cancels it
        if not self._canary.done():
            waited = time.monotonic() - self._canary_sent_at
            if waited > self.settings.readyz_stall_s:
                return f"the canary inference has waited {waited:.0f} s"
            return unready  # busy: the model is working through something else
        failure = self._canary.exception()
        if failure is not None:
            return f"canary inference failed: {getattr(failure, 'message', type(failure).__name__)}"
        return self.backend.health.unready(time.monotonic(), self.settings.readyz_cache_s)


def _retrieve(task: asyncio.Task[object]) -> None:
    if not task.cancelled():
        task.exception()  # read here so a failure nobody awaited is not logged as never retrieved
