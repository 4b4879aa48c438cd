"""``/readyz``'s rules (frontend/readiness.py) with a scripted backend: busy is ready, evidence of death is not."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from frontend.errors import BackendUnavailable
from frontend.health import BackendHealth
from frontend.readiness import Readiness
from frontend.settings import Settings


@dataclass
class ScriptedBackend:
    """Canaries wait on ``release``; each then answers with ``outcome`` (None: images)."""

    model_ready: bool = True
    health: BackendHealth = field(default_factory=BackendHealth)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    outcome: Exception | None = None
    canaries: int = 0
    address: str = "pod-a:8001"

    async def is_model_ready(self) -> bool:
        return self.model_ready

    def pods(self) -> list[ScriptedBackend]:
        return [self]

    async def generate(self, job: Any, *, timeout_s: float | None = None, request_id: str = "", **_: Any) -> Any:
        self.canaries += 1
        self.health.in_flight += 1
        try:
            await self.release.wait()
            if self.outcome is not None:
                if "not healthy" in str(self.outcome):
                    self.health.dead_at, self.health.dead_reason = time.monotonic(), str(self.outcome)
                raise self.outcome
            self.health.ok_at = time.monotonic()
        finally:
            self.health.in_flight -= 1


@dataclass
class ScriptedStore:
    """Only what readiness asks of the run store: does it answer?"""

    down: Exception | None = None

    async def ping(self) -> None:
        if self.down is not None:
            raise self.down


def readiness(backend: ScriptedBackend, store: ScriptedStore | None = None, **settings: Any) -> Readiness:
    values = {"readyz_cache_s": 0, "canary_timeout_s": 0.05, "readyz_stall_s": 60} | settings
    return Readiness(backend, Settings(**values), store or ScriptedStore())  # type: ignore[arg-type]


async def test_a_replica_whose_run_store_does_not_answer_is_unready_whatever_triton_says() -> None:
    backend = ScriptedBackend()
    backend.release.set()
    store = ScriptedStore(down=ConnectionRefusedError("connection refused"))
    probe = readiness(backend, store)
    assert await probe.verdict() == "the run store does not answer: ConnectionRefusedError: connection refused"
    assert backend.canaries == 0  # no work sent to a model this replica could not record
    store.down = None
    assert await probe.verdict() is None


async def test_an_idle_model_is_ready_once_its_canary_answers() -> None:
    backend = ScriptedBackend()
    backend.release.set()
    assert await readiness(backend).verdict() is None
    assert backend.canaries == 1


async def test_a_model_busy_with_someone_elses_batch_stays_ready_with_one_canary() -> None:
    backend = ScriptedBackend()  # the canary waits behind another replica's long batch
    probe = readiness(backend)
    for _ in range(5):
        assert await probe.verdict() is None
    assert backend.canaries == 1  # never a second canary while one waits: the queue does not fill


async def test_a_canary_unanswered_for_the_stall_time_is_unready() -> None:
    backend = ScriptedBackend()
    probe = readiness(backend, readyz_stall_s=0.2)
    assert await probe.verdict() is None
    await asyncio.sleep(0.25)
    verdict = await probe.verdict()
    assert verdict is not None and "has waited" in verdict


async def test_our_own_requests_in_flight_mean_busy_without_a_canary() -> None:
    backend = ScriptedBackend()
    backend.health.in_flight = 1
    assert await readiness(backend).verdict() is None
    assert backend.canaries == 0


async def test_a_recent_success_needs_no_canary() -> None:
    backend = ScriptedBackend()
    backend.health.ok_at = time.monotonic()
    assert await readiness(backend, readyz_cache_s=5).verdict() is None
    assert backend.canaries == 0


async def test_a_dead_stub_seen_by_real_traffic_is_unready_until_a_canary_passes() -> None:
    backend = ScriptedBackend()
    backend.health.in_flight = 1  # busy with our own requests, yet one of them saw the stub die
    backend.health.dead_at, backend.health.dead_reason = time.monotonic(), "Stub process is not healthy"
    backend.outcome = BackendUnavailable("Stub process 'sd_img2img_0' is not healthy")
    backend.release.set()
    probe = readiness(backend)
    verdict = await probe.verdict()
    assert verdict is not None and "not healthy" in verdict
    backend.outcome = None  # restarted
    assert await probe.verdict() is None


async def test_a_recent_full_queue_is_unready() -> None:
    backend = ScriptedBackend()
    backend.health.ok_at = time.monotonic() - 1
    backend.health.full_at = time.monotonic()
    verdict = await readiness(backend, readyz_cache_s=5).verdict()
    assert verdict == "the model's queue is full"


async def test_a_model_triton_calls_unready_is_unready() -> None:
    backend = ScriptedBackend(model_ready=False)
    verdict = await readiness(backend).verdict()
    assert verdict is not None and "is not ready" in verdict


@dataclass
class ScriptedFleet:
    """Several scripted pods behind one backend."""

    members: list[ScriptedBackend]

    def pods(self) -> list[ScriptedBackend]:
        return self.members


async def test_a_replica_is_ready_while_any_pod_can_serve_and_names_the_pods_out() -> None:
    dead, loading, alive = (ScriptedBackend(address=f"pod-{n}:8001") for n in "abc")
    dead.outcome = BackendUnavailable("Stub process 'sd_img2img_0' is not healthy")
    loading.model_ready = False
    for pod in (dead, loading, alive):
        pod.release.set()
    probe = readiness(ScriptedFleet([dead, loading, alive]))  # type: ignore[arg-type]
    assert await probe.verdict() is None
    assert set(probe.pods_out) == {"pod-a:8001", "pod-b:8001"}
    assert "not healthy" in probe.pods_out["pod-a:8001"] and "is not ready" in probe.pods_out["pod-b:8001"]
    # Both are out of placement: the dead one by its call, the one not loaded by its probe.
    assert dead.health.out() is not None and loading.health.out() is not None and alive.health.out() is None
    alive.model_ready = False
    verdict = await probe.verdict()
    assert verdict is not None and verdict.startswith("no model server can take work: pod-a:8001: ")


async def test_a_pod_out_of_placement_is_probed_until_its_canary_answers_and_then_is_back() -> None:
    dead, alive = ScriptedBackend(address="pod-a:8001"), ScriptedBackend(address="pod-b:8001")
    dead.outcome = BackendUnavailable("Stub process 'sd_img2img_0' is not healthy")
    dead.health.dead_at, dead.health.dead_reason = time.monotonic(), "Stub process is not healthy"
    for pod in (dead, alive):
        pod.release.set()
    probe = readiness(ScriptedFleet([dead, alive]))  # type: ignore[arg-type]
    await probe.probe_out()
    assert (dead.canaries, alive.canaries) == (1, 0)  # only the pod that is out is probed
    assert dead.health.out() is not None
    dead.outcome = None  # restarted
    await probe.probe_out()
    assert dead.health.out() is None
    await probe.probe_out()
    assert dead.canaries == 2  # back in: no more probes
