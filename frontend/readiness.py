"""``/readyz``: can this replica take work now? Busy is not dead; one pod out is not the replica out.

Ready means the run store answers and at least one pod can serve: its model is loaded, nothing says it is
dead, its queue is not full. The evidence comes first from real traffic (every call to a pod is recorded
in its ``BackendHealth``), and only when there is none, from one canary inference on that pod. A canary is
never taken to mean death by waiting: the model's stub runs one batch at a time, so behind a long batch
(minutes for a full-size model on a CPU) any canary waits; only a canary that waits ``readyz_stall_s``
counts against its pod. At most one canary per pod is in flight, so probes never fill a queue with canaries.

A probe's finding that a pod cannot serve keeps it out of placement (``fleet.py``) until a probe or a call
shows it serving again: ``probe_out`` probes the pods that are out, and the app calls it every second, so a
pod comes back without waiting for Kubernetes to ask ``/readyz``.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field

import numpy as np

from .backend import Backend, Pod
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
class PodProbe:
    """One pod's verdict: None when it can take work, else why not."""

    pod: Pod
    settings: Settings
    _canary: asyncio.Task[object] | None = None
    _canary_sent_at: float = -math.inf

    async def verdict(self) -> str | None:
        verdict, cannot_serve = await self._check()
        self.pod.health.probed(time.monotonic(), cannot_serve)
        return verdict

    async def _check(self) -> tuple[str | None, str | None]:
        """(the verdict, and the same when it means the pod cannot serve rather than that it is busy)."""
        if not await self.pod.is_model_ready():
            reason = f"Triton model {self.settings.triton_model!r} is not ready"
            return reason, reason
        health, now = self.pod.health, time.monotonic()
        unready = health.unready(now, self.settings.readyz_cache_s)
        if unready is None:
            if now - health.ok_at <= self.settings.readyz_cache_s:
                return None, None  # real traffic just succeeded
            if health.in_flight > self._canaries_in_flight():
                return None, None  # busy with our own requests: a canary would only wait behind them
        return await self._ask_canary(unready)

    def _canaries_in_flight(self) -> int:
        return int(self._canary is not None and not self._canary.done())

    async def _ask_canary(self, unready: str | None) -> tuple[str | None, str | None]:
        if self._canary is None or self._canary.done():
            self._canary = asyncio.create_task(
                self.pod.generate(CANARY, timeout_s=self.settings.readyz_stall_s, request_id="readyz-canary")
            )
            self._canary.add_done_callback(_retrieve)
            self._canary_sent_at = time.monotonic()
        await asyncio.wait({self._canary}, timeout=self.settings.canary_timeout_s)  # never cancels it
        if not self._canary.done():
            waited = time.monotonic() - self._canary_sent_at
            if waited > self.settings.readyz_stall_s:
                reason = f"the canary inference has waited {waited:.0f} s"
                return reason, reason
            return unready, None  # busy: the model is working through something else
        failure = self._canary.exception()
        if failure is not None:  # the server's words when the failure proved death, else the caller's
            reason = (
                self.pod.health.out()
                or f"canary inference failed: {getattr(failure, 'message', type(failure).__name__)}"
            )
            return reason, reason
        return self.pod.health.unready(time.monotonic(), self.settings.readyz_cache_s), None


@dataclass
class Readiness:
    backend: Backend
    settings: Settings
    store: RunStore
    pods_out: dict[str, str] = field(default_factory=dict)  # by the last check: each pod that cannot take work, why
    _probes: dict[str, PodProbe] = field(default_factory=dict)
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
        pods = list(self.backend.pods())
        self._probes = {pod.address: self._probe(pod) for pod in pods}  # a drained pod's probe goes
        verdicts = await asyncio.gather(*(self._probe(pod).verdict() for pod in pods))
        self.pods_out = {pod.address: verdict for pod, verdict in zip(pods, verdicts, strict=True) if verdict}
        if len(pods) == 1 and verdicts[0] is not None:
            return verdicts[0]
        if pods and len(self.pods_out) == len(pods):
            return "no model server can take work: " + "; ".join(f"{a}: {v}" for a, v in self.pods_out.items())
        return None if pods else "no model server is known"

    async def probe_out(self) -> None:
        """Probe every pod that is out of placement now (the one that answers comes back)."""
        out = [pod for pod in self.backend.pods() if pod.health.out() is not None]
        await asyncio.gather(*(self._probe(pod).verdict() for pod in out))

    def _probe(self, pod: Pod) -> PodProbe:
        probe = self._probes.get(pod.address)
        if probe is None or probe.pod is not pod:
            probe = self._probes[pod.address] = PodProbe(pod, self.settings)
        return probe


def _retrieve(task: asyncio.Task[object]) -> None:
    if not task.cancelled():
        task.exception()  # read here so a failure nobody awaited is not logged as never retrieved
