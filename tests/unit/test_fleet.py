"""The fleet's rules (frontend/fleet.py) on scripted pods: placement, affinity, ejection, failover, pods
that join and leave. The same rules on real tritonservers: tests/integration/test_fleet.py."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from frontend.backend import QueueDeadlineExpired
from frontend.errors import BackendUnavailable
from frontend.fleet import Fleet, Targets, parse_targets
from frontend.generation import Generated, GenerationInput, PodLoad, Progress
from frontend.health import BackendHealth
from frontend.metrics import Metrics
from frontend.model_card import ModelCard


@dataclass
class ScriptedPod:
    """Runs wait on ``release``; a dead pod fails every call as Triton's dead stub does."""

    address: str
    health: BackendHealth = field(default_factory=BackendHealth)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    dead: bool = False
    calls: list[str] = field(default_factory=list)
    closed: bool = False
    reports: PodLoad | None = None  # what its model says it holds (other frontends' runs)

    async def generate(self, job: GenerationInput, *, request_id: str = "", **_: Any) -> Generated:
        self.calls.append(request_id)
        self.health.in_flight += 1
        try:
            await self.release.wait()
            if self.dead:
                self.health.dead_at, self.health.dead_reason = time.monotonic(), "Stub process is not healthy"
                raise BackendUnavailable("the model is not available; retry later")
            self.health.ok_at = time.monotonic()
            return Generated(images=np.zeros((1, 8, 8, 3), np.uint8), seeds=[job.seed])
        finally:
            self.health.in_flight -= 1

    async def progress(self, request_id: str) -> Progress | None:
        return Progress(1, 2, self.address.encode()) if request_id in self.calls else None

    async def load(self) -> PodLoad | None:
        return self.reports

    async def is_model_ready(self) -> bool:
        return True

    async def close(self) -> None:
        self.closed = True


def job(size: int = 64, images: int = 1, guidance_scale: float = 7.5, seed: int = 1) -> GenerationInput:
    return GenerationInput(
        prompt="p",
        image=np.zeros((size, size, 3), np.uint8),
        num_images_per_prompt=images,
        guidance_scale=guidance_scale,
        seed=seed,
    )


def fleet(*names: str, **kwargs: Any) -> tuple[Fleet, dict[str, ScriptedPod]]:
    pods = {name: ScriptedPod(name) for name in names}
    return Fleet(Targets(addresses=names), pods.__getitem__, **kwargs), pods


async def settled() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_the_url_names_one_pod_several_or_a_service() -> None:
    assert parse_targets("127.0.0.1:8001") == Targets(addresses=("127.0.0.1:8001",))
    assert parse_targets("ipv4:127.0.0.2:8001,127.0.0.3:8001") == Targets(
        addresses=("127.0.0.2:8001", "127.0.0.3:8001")
    )
    assert parse_targets("a:1, b:2") == Targets(addresses=("a:1", "b:2"))
    assert parse_targets("ipv6:[::1]:8001") == Targets(addresses=("[::1]:8001",))
    assert parse_targets("dns:///triton-grpc:8001") == Targets(dns=("triton-grpc", 8001))
    assert parse_targets("dns://8.8.8.8/triton-grpc:8001") == Targets(dns=("triton-grpc", 8001))
    for bad in ("", "triton", "a:1,b", "dns:///triton"):
        with pytest.raises(ValueError, match="SD_TRITON_URL"):
            parse_targets(bad)


async def test_a_run_goes_to_the_pod_where_it_shares_its_step_with_the_fewest_forwards() -> None:
    backend, pods = fleet("a", "b", "c")
    long_runs = [asyncio.create_task(backend.generate(job(128), request_id=f"long{i}")) for i in range(2)]
    await settled()
    assert sorted(p for p in pods if pods[p].calls) == ["a", "b"]  # two long runs: two pods
    short = asyncio.create_task(backend.generate(job(64), request_id="short"))
    await settled()
    assert pods["c"].calls == ["short"]  # the free pod, not one whose steps alternate with 128 px
    # A second 64 px run shares the short one's forward rather than add a size to a 128 px pod.
    second = asyncio.create_task(backend.generate(job(64), request_id="short2"))
    await settled()
    assert pods["c"].calls == ["short", "short2"]
    for pod in pods.values():
        pod.release.set()
    await asyncio.gather(*long_runs, short, second)


async def test_among_pods_of_the_same_forwards_the_fewest_rows_win_then_round_robin() -> None:
    backend, pods = fleet("a", "b")
    big = asyncio.create_task(backend.generate(job(64, images=4), request_id="big"))
    await settled()
    (first,) = [p for p in pods if pods[p].calls]
    small = asyncio.create_task(backend.generate(job(64), request_id="small"))
    await settled()
    other = "b" if first == "a" else "a"
    assert pods[other].calls == ["small"]
    # Its turn would be the big run's pod again; the fewer rows (2 against 8) win over the turn.
    again = asyncio.create_task(backend.generate(job(64), request_id="again"))
    await settled()
    assert pods[other].calls == ["small", "again"]
    for pod in pods.values():
        pod.release.set()
    await asyncio.gather(big, small, again)
    # Idle pods take turns.
    for pod in pods.values():
        pod.calls.clear()
    for i in range(4):
        await backend.generate(job(64), request_id=f"turn{i}")
    assert len(pods["a"].calls) == len(pods["b"].calls) == 2


async def test_other_frontends_runs_count_as_the_pod_reports_them() -> None:
    backend, pods = fleet("a", "b", "c")
    pods["a"].reports = PodLoad(rows=4, sizes=frozenset({(128, 128)}))  # another frontend's long run
    pods["b"].reports = PodLoad(rows=2, sizes=frozenset({(64, 64)}))  # another frontend's short one
    pods["c"].reports = PodLoad(rows=2, sizes=frozenset({(96, 96)}))
    await backend.refresh()
    for pod in pods.values():
        pod.release.set()
    await backend.generate(job(128), request_id="big")
    await backend.generate(job(64), request_id="small")
    # Every pod is busy: each run joins the forward of its own size, where it adds no forward.
    assert (pods["a"].calls, pods["b"].calls, pods["c"].calls) == (["big"], ["small"], [])
    # The pod c's model no longer reports (a read that failed counts as nothing): it is the free pod.
    pods["c"].reports = None
    await backend.refresh()
    await backend.generate(job(128), request_id="big2")
    assert pods["c"].calls == ["big2"]


async def test_a_pod_without_room_for_the_run_comes_last() -> None:
    backend, pods = fleet("a", "b", max_rows=4)
    held = asyncio.create_task(backend.generate(job(64, images=2), request_id="full"))  # 4 rows: a full pod
    await settled()
    (full,) = [p for p in pods if pods[p].calls]
    other = asyncio.create_task(backend.generate(job(128), request_id="other"))  # another size, yet room
    await settled()
    assert pods["b" if full == "a" else "a"].calls == ["other"]
    for pod in pods.values():
        pod.release.set()
    await asyncio.gather(held, other)


async def test_progress_is_asked_of_the_pod_running_the_run_and_of_none_after() -> None:
    backend, pods = fleet("a", "b", "c")
    runs = [asyncio.create_task(backend.generate(job(64), request_id=f"r{i}")) for i in range(3)]
    await settled()
    for i in range(3):
        progress = await backend.progress(f"r{i}")
        assert progress is not None
        assert pods[progress.preview.decode()].calls == [f"r{i}"]
    assert await backend.progress("unknown") is None
    for pod in pods.values():
        pod.release.set()
    await asyncio.gather(*runs)
    assert await backend.progress("r0") is None


async def test_a_pod_that_died_is_out_of_placement_at_once_and_back_once_it_answers() -> None:
    metrics = Metrics()
    backend, pods = fleet("a", "b", metrics=metrics)
    pods["a"].dead = True
    for pod in pods.values():
        pod.release.set()
    # The run placed on the dead pod is placed again on the other, once: its caller sees images.
    results = [await backend.generate(job(64, seed=i), request_id=f"r{i}") for i in range(4)]
    assert [r.seeds for r in results] == [[0], [1], [2], [3]]
    assert len(pods["a"].calls) == 1  # out after its first failure
    assert backend.out() == {"a": "the model cannot serve: Stub process is not healthy"}
    await backend.refresh()
    assert metrics.pod_out.labels("a")._value.get() == 1  # noqa: SLF001 - the gauge's value
    assert metrics.pod_runs.labels("a", "failover")._value.get() == 1  # noqa: SLF001
    pods["a"].dead = False
    pods["a"].health.ok_at = time.monotonic()  # what a canary that answers records
    assert backend.out() == {}
    await backend.refresh()
    assert metrics.pod_out.labels("a")._value.get() == 0  # noqa: SLF001
    await backend.generate(job(64), request_id="back")
    await backend.generate(job(64), request_id="back2")
    assert pods["a"].calls[1:] in (["back"], ["back2"])


async def test_a_run_is_placed_again_only_once_and_only_on_evidence_of_death() -> None:
    backend, pods = fleet("a", "b")
    for pod in pods.values():
        pod.dead = True
        pod.release.set()
    with pytest.raises(BackendUnavailable):
        await backend.generate(job(64), request_id="r")
    assert len(pods["a"].calls) + len(pods["b"].calls) == 2
    # Every pod out: a run is still placed (its answer is the evidence), and not placed again.
    with pytest.raises(BackendUnavailable):
        await backend.generate(job(64), request_id="r2")
    assert len(pods["a"].calls) + len(pods["b"].calls) == 3

    # A failure that is not death (a full queue, say) is the caller's to retry: no failover.
    backend, pods = fleet("a", "b")

    async def full(*_: Any, **__: Any) -> Generated:
        raise BackendUnavailable("the model's queue is full; retry later", retry_after_s=2)

    pods["a"].generate = pods["b"].generate = full  # type: ignore[method-assign]
    with pytest.raises(BackendUnavailable, match="queue is full"):
        await backend.generate(job(64), request_id="r3")


async def test_a_run_placed_again_keeps_only_what_is_left_of_its_queue_deadline() -> None:
    backend, pods = fleet("a", "b")
    first = next(iter(pods.values()))
    seen: list[float | None] = []
    real = ScriptedPod.generate

    async def slow_death(self: ScriptedPod, job: GenerationInput, **kwargs: Any) -> Generated:
        seen.append(kwargs.get("queue_timeout_s"))
        if self is first:
            await asyncio.sleep(0.2)
            self.health.dead_at, self.health.dead_reason = time.monotonic(), "Stub process is not healthy"
            raise BackendUnavailable("the model is not available; retry later")
        self.release.set()
        return await real(self, job, **kwargs)

    for pod in pods.values():
        pod.generate = slow_death.__get__(pod)  # type: ignore[method-assign]
    # Round robin starts at the first pod; its death leaves 0.3 s of the 0.5 s for the second.
    await backend.generate(job(64), request_id="r", queue_timeout_s=0.5)
    assert seen[0] == 0.5 and seen[1] is not None and 0.2 < seen[1] < 0.31
    first.health.ok_at = time.monotonic()
    with pytest.raises(QueueDeadlineExpired):
        await backend.generate(job(64), request_id="r2", queue_timeout_s=0.1)


async def test_a_service_resolved_again_adds_new_pods_and_drains_vanished_ones() -> None:
    answers = [["10.0.0.1:8001", "10.0.0.2:8001"]]
    made: dict[str, ScriptedPod] = {}

    async def resolver(name: str, port: int) -> list[str]:
        assert (name, port) == ("triton-grpc", 8001)
        if isinstance(answers[0], Exception):
            raise answers[0]
        return list(answers[0])

    def make(address: str) -> ScriptedPod:
        made[address] = ScriptedPod(address)
        return made[address]

    backend = Fleet(parse_targets("dns:///triton-grpc:8001"), make, resolve_s=0, resolver=resolver)
    await backend.refresh()
    assert [p.address for p in backend.pods()] == ["10.0.0.1:8001", "10.0.0.2:8001"]
    running = [asyncio.create_task(backend.generate(job(64), request_id=f"r{i}")) for i in range(2)]
    await settled()
    answers[0] = ["10.0.0.2:8001", "10.0.0.3:8001"]
    await backend.refresh()
    assert [p.address for p in backend.pods()] == ["10.0.0.2:8001", "10.0.0.3:8001"]
    assert not made["10.0.0.1:8001"].closed  # drained: its run goes on
    answers[0] = OSError("no DNS")  # type: ignore[list-item]
    await backend.refresh()
    assert len(backend.pods()) == 2  # a failed resolution drops no pod
    for pod in made.values():
        pod.release.set()
    await asyncio.gather(*running)
    await backend.refresh()
    assert made["10.0.0.1:8001"].closed
    await backend.close()
    assert all(pod.closed for pod in made.values())
    assert math.isinf(made["10.0.0.3:8001"].health.ok_at)


def card(family: str, title: str) -> ModelCard:
    return ModelCard(family, title, ("euler",), frozenset(), 1024, 2048)


async def test_the_model_card_is_the_pods_last_one_while_they_agree() -> None:
    backend, pods = fleet("a", "b")
    assert backend.model_card() is None  # nothing read yet
    base, refiner = card("sdxl", "SDXL base"), card("sdxl-refiner", "SDXL refiner")
    pods["a"].reports = PodLoad(rows=0, sizes=frozenset(), model=base)
    await backend.refresh()
    assert backend.model_card() == base  # b has said nothing (an older model): a's card stands
    pods["b"].reports = PodLoad(rows=0, sizes=frozenset(), model=base)
    await backend.refresh()
    pods["a"].reports = None  # a report that failed (a busy moment) forgets nothing
    await backend.refresh()
    assert backend.model_card() == base
    pods["b"].reports = PodLoad(rows=0, sizes=frozenset(), model=refiner)  # b restarted with another model
    await backend.refresh()
    assert backend.model_card() is None  # which one a run meets is placement's choice: unknown
    pods["a"].reports = PodLoad(rows=0, sizes=frozenset(), model=refiner)
    await backend.refresh()
    assert backend.model_card() == refiner


async def test_round_robin_placement_is_blind_to_load_and_an_unknown_rule_is_refused() -> None:
    backend, pods = fleet("a", "b", placement="round_robin")
    long_run = asyncio.create_task(backend.generate(job(128), request_id="long"))
    await settled()
    shorts = [asyncio.create_task(backend.generate(job(64), request_id=f"s{i}")) for i in range(2)]
    await settled()
    assert sorted(len(pod.calls) for pod in pods.values()) == [1, 2]  # one short run beside the long one
    for pod in pods.values():
        pod.release.set()
    await asyncio.gather(long_run, *shorts)
    with pytest.raises(ValueError, match="placement must be one of"):
        fleet("a", placement="random")
