"""The liveness rules (docker/triton_canary.py) and the supervisor loop that acts on them, with fakes.

The real server: tests/integration/test_busy_is_not_dead.py and tests/reliability/test_backend_faults.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from embedded import supervisor as supervisor_module
from embedded.supervisor import Supervisor
from tests.helpers.fake_triton import FakeProcess, FakeTriton

canary = supervisor_module.canary
STUB_DEAD = 'HTTP 500: {"error":"Stub process \'sd_img2img_0\' is not healthy."}'


@dataclass
class World:
    """What the server shows a probe: each field can be changed between probes."""

    stub: str | None = "alive"
    unreachable: str | None = None
    counters: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    pending: int | None = 0
    canary_answers: list[str | None] = field(default_factory=list)
    canaries_sent: int = 0


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> World:
    state = World()

    def probe(*_: Any, **__: Any) -> str | None:
        state.canaries_sent += 1
        return state.canary_answers.pop(0) if state.canary_answers else None

    monkeypatch.setattr(canary, "stub_state", lambda *_: state.stub)
    monkeypatch.setattr(canary, "is_reachable", lambda *_: state.unreachable)
    monkeypatch.setattr(canary, "read_progress", lambda *_: (list(state.counters), state.pending))
    monkeypatch.setattr(canary, "probe", probe)
    return state


def liveness(stall_s: float = 60) -> Any:
    return canary.Liveness("127.0.0.1:1", "127.0.0.1:2", stall_s=stall_s)


def test_an_idle_model_that_answers_the_canary_is_alive(world: World) -> None:
    verdict = liveness().judge(now=100)
    assert (verdict.alive, world.canaries_sent) == (True, 1)


def test_a_gone_stub_is_dead_at_once_without_a_canary(world: World) -> None:
    world.stub = "gone"
    verdict = liveness().judge(now=100)
    assert (verdict.alive, verdict.fatal, world.canaries_sent) == (False, True, 0)


def test_the_stubs_not_healthy_error_is_fatal(world: World) -> None:
    world.canary_answers = [STUB_DEAD]
    verdict = liveness().judge(now=100)
    assert (verdict.alive, verdict.fatal) == (False, True)


def test_a_server_that_does_not_answer_is_dead_but_not_fatal(world: World) -> None:
    world.unreachable = "tritonserver does not answer: ConnectionRefusedError"
    verdict = liveness().judge(now=100)
    assert (verdict.alive, verdict.fatal) == (False, False)


def test_queued_work_with_progress_is_busy_and_sends_no_canary(world: World) -> None:
    probe = liveness(stall_s=60)
    world.pending = 3
    for step, now in enumerate((100, 150, 200, 250, 300)):  # a step every 50 s, over 200 s of waiting
        world.counters[3] = step
        verdict = probe.judge(now=now)
        assert verdict.alive and verdict.reason.startswith("busy"), verdict
    assert world.canaries_sent == 0


def test_queued_work_without_progress_for_longer_than_stall_is_dead(world: World) -> None:
    probe = liveness(stall_s=60)
    world.pending = 1
    assert probe.judge(now=100).alive
    assert probe.judge(now=159).alive
    verdict = probe.judge(now=161)
    assert (verdict.alive, verdict.fatal) == (False, False)
    assert "no progress for 61 s" in verdict.reason


def test_a_canary_that_waits_behind_a_batch_is_busy_until_stall(world: World) -> None:
    probe = liveness(stall_s=60)
    assert probe.judge(now=100).alive  # idle, answered: progress noted at 100
    world.canary_answers = ["TimeoutError: timed out"] * 3
    verdict = probe.judge(now=130)
    assert verdict.alive and "canary: TimeoutError" in verdict.reason
    world.counters[0] += 1  # a batch finished meanwhile
    assert probe.judge(now=170).alive
    verdict = probe.judge(now=231)
    assert not verdict.alive and "no progress for 61 s" in verdict.reason


def test_a_full_queue_is_alive(world: World) -> None:
    world.canary_answers = ["HTTP 503: Exceeds maximum queue size"]
    assert liveness().judge(now=100).alive


def test_memory_survives_between_exec_probes(world: World, tmp_path: Path) -> None:
    path = str(tmp_path / "state.json")
    world.pending = 1
    first = liveness(stall_s=60)
    first.judge(now=100)
    first.memory.save(path)
    second = canary.Liveness("127.0.0.1:1", stall_s=60, memory=canary.Memory().load(path))
    assert not second.judge(now=170).alive  # 70 s without progress, seen across two processes


@dataclass
class FakeLiveness:
    verdicts: list[Any]
    server_pid: int = 4242
    calls: int = 0

    def judge(self) -> Any:
        self.calls += 1
        return self.verdicts.pop(0) if self.verdicts else canary.Verdict(True, False, "answered")


def supervise(
    verdicts: list[Any], triton: FakeTriton | None = None, stub: str = "alive", **options: Any
) -> tuple[FakeTriton, Any]:
    """Run the loop until every scripted verdict was judged, or with none until it acted (at most 10 s)."""
    triton = triton or FakeTriton()
    fake = FakeLiveness(list(verdicts))
    scripted = len(verdicts)
    supervisor = Supervisor(
        triton, interval_s=0.01, exit_poll_s=0.005, backoff_s=0.01, report=lambda m: None, **options
    )  # type: ignore[arg-type]
    supervisor._liveness = fake
    original = canary.stub_state
    canary.stub_state = lambda *_: stub
    try:
        supervisor.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (fake.calls >= scripted if scripted else triton.events):
            time.sleep(0.005)
        time.sleep(0.05)  # time to act on the last verdict
        supervisor.stop()
    finally:
        canary.stub_state = original
    return triton, fake


def test_the_supervisor_probes_and_leaves_a_busy_server_alone() -> None:
    busy = [canary.Verdict(True, False, "busy: 1 request(s) waiting")] * 20
    triton, fake = supervise(busy)
    assert fake.calls >= 20  # it did probe, every interval
    assert triton.events == []


def test_a_fatal_verdict_restarts_at_once_without_grace() -> None:
    triton, _ = supervise([canary.Verdict(False, True, STUB_DEAD)])
    assert triton.events[:2] == ["stop 0", "start"]


def test_failures_in_a_row_restart_gracefully_and_interrupted_ones_do_not() -> None:
    dead = canary.Verdict(False, False, "no progress for 700 s")
    alive = canary.Verdict(True, False, "answered")
    triton, _ = supervise([dead, dead, alive, dead, dead, alive])
    assert triton.events == []  # never three in a row
    triton, _ = supervise([dead, dead, dead])
    assert triton.events[:2] == ["stop 5", "start"]


def test_an_exited_server_or_a_gone_stub_is_restarted_without_a_probe() -> None:
    triton = FakeTriton(process=FakeProcess(returncode=-9))
    triton, fake = supervise([], triton, before_restart=lambda reason: triton.events.append(f"told: {reason}"))
    assert triton.events[:3] == ["told: tritonserver exited (code -9)", "stop 0", "start"]
    triton, fake = supervise([], stub="gone")
    assert triton.events[:2] == ["stop 0", "start"]
