"""The shared-server watchdog (tests/helpers/watchdog.py), with fake servers."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest

from tests.helpers.watchdog import Watchdog

CRASH_LOG = "Signal (11) received.\n 0# handler\n"


@dataclass
class FakeProcess:
    pid: int = 4242
    returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode


@dataclass
class FakeServer:
    """What the supervisor uses of an ``EmbeddedTriton``; its process has died (SIGSEGV)."""

    http_url: str = "127.0.0.1:1"
    host: str = "127.0.0.1"
    metrics_port: int = 2
    process: FakeProcess = field(default_factory=lambda: FakeProcess(returncode=-11))
    events: list[str] = field(default_factory=list)
    log: str = CRASH_LOG

    def log_tail(self) -> str:
        return self.log

    def stop(self, timeout_s: float = 30.0) -> int | None:
        self.events.append("stop")
        return self.process.returncode

    def start(self) -> FakeServer:
        self.events.append("start")
        self.process, self.log = FakeProcess(pid=self.process.pid + 1), "ready again\n"
        return self


def test_a_dead_server_is_restarted_by_its_supervisor_and_reported_with_the_dead_ones_log() -> None:
    watchdog, server = Watchdog(), FakeServer()
    watchdog.current_test = "tests/x.py::test_cancels"
    supervisor = watchdog.supervise("triton", server)
    deadline = time.monotonic() + 10
    while "start" not in server.events and time.monotonic() < deadline:
        time.sleep(0.05)
    supervisor.stop()
    assert server.events[:2] == ["stop", "start"]
    report = "\n".join(watchdog.report())
    assert "triton died (tritonserver exited (code -11)) during tests/x.py::test_cancels; restarted" in report
    assert "Signal (11) received." in report and "ready again" not in report  # the log from before the restart


def test_a_test_waits_for_its_server_to_come_back() -> None:
    answers = iter(["tritonserver exited (code -11)", "tritonserver exited (code -11)"])
    Watchdog().check("triton", "test_a", died=lambda: next(answers, None), wait_s=10)
    with pytest.raises(AssertionError, match="is dead .* did not come back"):
        Watchdog().check("triton", "test_a", died=lambda: "the Python stub of sd_img2img is gone", wait_s=0.1)


def test_a_second_death_of_one_server_fails_the_tests_that_use_it() -> None:
    watchdog = Watchdog()
    watchdog.record("triton", "tritonserver exited (code -11)", CRASH_LOG)
    watchdog.check("triton", "test_b", died=lambda: None)  # once is allowed
    watchdog.record("paced_triton", "tritonserver exited (code -6)", "")  # another server's own allowance
    watchdog.check("paced_triton", "test_b", died=lambda: None)
    watchdog.current_test = "test_c"
    watchdog.record("triton", "the Python stub of sd_img2img is gone", "stub gone\n")
    with pytest.raises(AssertionError, match=r"died 2 times \(during \(session set-up\), test_c\)"):
        watchdog.check("triton", "test_d", died=lambda: None)
