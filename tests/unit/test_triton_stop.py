"""``EmbeddedTriton.stop`` signals only its own process group, once: a second stop (a supervisor whose
restart failed stops the server again) must not signal a pid the kernel may have reused."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from embedded import triton_server
from embedded.triton_server import EmbeddedTriton


def test_a_second_stop_signals_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = EmbeddedTriton(model_path=None, build_dir=tmp_path)
    # A stand-in for tritonserver: a process in a session of its own, as spawn_server starts it.
    server.process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True, text=True
    )
    signalled: list[int] = []
    real_killpg = os.killpg

    def killpg(pgid: int, signum: int) -> None:
        signalled.append(pgid)
        real_killpg(pgid, signum)

    monkeypatch.setattr(triton_server.os, "killpg", killpg)
    server.stop(timeout_s=5)
    assert server.process.returncode is not None and signalled == [server.process.pid]
    server.stop(timeout_s=5)
    assert signalled == [server.process.pid]  # the stale pid was not signalled again
