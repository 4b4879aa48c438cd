"""embedded/supervisor.py's decisions, with a fake server and a fake canary (the real one: tests/reliability)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from embedded.supervisor import Supervisor


@dataclass
class FakeProcess:
    returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode


@dataclass
class FakeTriton:
    http_url: str = "127.0.0.1:1"
    process: FakeProcess = field(default_factory=FakeProcess)
    events: list[str] = field(default_factory=list)

    def stop(self, timeout_s: float = 30.0) -> None:
        self.events.append(f"stop {timeout_s:g}")

    def start(self) -> FakeTriton:
        self.process = FakeProcess()
        self.events.append("start")
        return self


def supervise(answers: list[str | None], triton: FakeTriton | None = None, seconds: float = 0.6) -> FakeTriton:
    triton = triton or FakeTriton()
    pending = list(answers)

    def probe(url: str, **_: Any) -> str | None:
        return pending.pop(0) if pending else None

    supervisor = Supervisor(triton, interval_s=0.02, exit_poll_s=0.01, backoff_s=0.01, report=lambda m: None)  # type: ignore[arg-type]
    supervisor._probe = probe
    supervisor.start()
    time.sleep(seconds)
    supervisor.stop()
    return triton


def test_a_dead_stub_is_killed_and_restarted_at_once() -> None:
    triton = supervise(['HTTP 500: {"error":"Stub process \'sd_img2img_0\' is not healthy."}'])
    assert triton.events == ["stop 0", "start"]


def test_an_exited_server_is_restarted() -> None:
    triton = FakeTriton(process=FakeProcess(returncode=-9))
    assert supervise([], triton).events == ["stop 0", "start"]


def test_a_full_queue_is_alive_and_one_slow_canary_is_not_enough() -> None:
    assert supervise(["HTTP 503: Exceeds maximum queue size"] * 5).events == []
    assert supervise(["TimeoutError: timed out", None, "TimeoutError: timed out", None]).events == []


def test_failures_in_a_row_restart_gracefully() -> None:
    triton = supervise(["URLError: refused"] * 3)
    assert triton.events == ["stop 5", "start"]
