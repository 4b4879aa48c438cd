"""The shared-server watchdog (tests/helpers/watchdog.py), with fake servers."""

from __future__ import annotations

import time

import pytest

from tests.helpers.fake_triton import FakeProcess, FakeTriton
from tests.helpers.watchdog import Watchdog

CRASH_LOG = "Signal (11) received.\n 0# handler\n"


def test_a_dead_server_is_restarted_by_its_supervisor_and_reported_with_the_dead_ones_log() -> None:
    # Its process died of SIGSEGV.
    watchdog, server = Watchdog(), FakeTriton(process=FakeProcess(returncode=-11), log=CRASH_LOG)
    watchdog.current_test = "tests/x.py::test_cancels"
    supervisor = watchdog.supervise("triton", server)
    deadline = time.monotonic() + 10
    while "start" not in server.events and time.monotonic() < deadline:
        time.sleep(0.05)
    supervisor.stop()
    assert server.events[:2] == ["stop 0", "start"]  # a dead server: no grace
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
