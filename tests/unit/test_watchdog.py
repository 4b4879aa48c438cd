"""The session's shared-server watchdog (tests/helpers/watchdog.py), with a fake server."""

from __future__ import annotations

import pytest

from tests.helpers.watchdog import Watchdog


class FakeServer:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def log_tail(self) -> str:
        return "Signal (11) received.\n 0# handler\n"

    def stop(self, timeout_s: float = 30.0) -> int | None:
        self.calls.append("stop")
        return -11

    def start(self) -> FakeServer:
        self.calls.append("start")
        return self


def test_a_live_server_is_left_alone() -> None:
    watchdog, server = Watchdog(), FakeServer()
    assert watchdog.check("triton", server, None, "test_a") is None
    assert server.calls == [] and watchdog.report() == []


def test_a_dead_server_is_restarted_once_and_reported_with_its_log() -> None:
    watchdog, server = Watchdog(), FakeServer()
    revival = watchdog.check("triton", server, "tritonserver exited (code -11)", "tests/x.py::test_b")
    assert server.calls == ["stop", "start"]
    assert revival is not None and revival.before == "tests/x.py::test_b"
    report = "\n".join(watchdog.report())
    assert "triton died (tritonserver exited (code -11)); restarted before tests/x.py::test_b" in report
    assert "Signal (11) received." in report
    # Another server has its own allowance.
    assert watchdog.check("paced_triton", server, "the Python stub of sd_img2img is gone", "test_c") is not None


def test_a_second_death_of_one_server_fails_the_test_instead() -> None:
    watchdog, server = Watchdog(), FakeServer()
    watchdog.check("triton", server, "tritonserver exited (code -11)", "test_b")
    with pytest.raises(AssertionError, match="died again before test_d .*revived before test_b"):
        watchdog.check("triton", server, "tritonserver exited (code -6)", "test_d")
    assert server.calls == ["stop", "start"]  # not restarted a second time
