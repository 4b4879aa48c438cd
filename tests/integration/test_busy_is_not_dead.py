"""Busy is not dead, on a real tritonserver: the supervisor, the Kubernetes liveness probe and ``/readyz``.

One long request (30 steps on the tiny model paced at 500 ms a step: the stub is held for at least 15 s
on any machine, as a full-size model holds it for minutes on a CPU) must cause no restart, no failed
probe and no 503, while the probes run with timeouts far shorter than the work. Then the same
supervisor must still see real deaths: a SIGKILLed stub is restarted within 5 s, and a frozen stub
(SIGSTOP: alive, no progress) after its stall time.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from embedded.pods import model_stub
from embedded.supervisor import Supervisor
from embedded.triton_server import REPO_ROOT, EmbeddedTriton, copy_model_repository

from ..helpers.servers import png_bytes
from ..helpers.support import API_KEYS, Frontend, paced, request_body, start_triton

pytestmark = pytest.mark.integration
CANARY = REPO_ROOT / "docker" / "triton_canary.py"
PROBE_TIMEOUT_S = 1.0  # far shorter than the work: a canary behind it always times out
STALL_S = 5.0  # longer than any gap between denoising steps of the long request
STEP_MS = 500  # the model's pace here: 30 steps hold the stub for at least 15 s
READYZ = {"SD_READYZ_CACHE_S": "0.5", "SD_CANARY_TIMEOUT_S": "1"}


@pytest.fixture
def supervised(tiny_model_path: Path, tmp_path: Path) -> Iterator[tuple[EmbeddedTriton, Supervisor]]:
    triton = start_triton(copy_model_repository(tmp_path, paced(STEP_MS)), tiny_model_path)
    supervisor = Supervisor(
        triton, interval_s=0.5, probe_timeout_s=PROBE_TIMEOUT_S, stall_s=STALL_S, failures_to_restart=2
    ).start()
    yield triton, supervisor
    supervisor.stop()
    triton.stop()


async def status_of(http: aiohttp.ClientSession, url: str) -> int:
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=10)) as response:
            return response.status
    except (TimeoutError, aiohttp.ClientError):
        return -1


def liveness_probe(triton: EmbeddedTriton, state: Path) -> tuple[int, str]:
    """The container's liveness probe as the kubelet runs it (a fresh process each time, memory in a file)."""
    done = subprocess.run(
        [sys.executable, str(CANARY), "--url", triton.http_url, "--metrics-url", f"127.0.0.1:{triton.metrics_port}"]
        + ["--timeout", str(PROBE_TIMEOUT_S), "--stall", str(STALL_S), "--state-file", str(state)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    return done.returncode, (done.stdout + done.stderr).strip()


def wait_until(condition: Any, timeout_s: float, what: str) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        time.sleep(0.1)
    return True


async def test_long_work_is_busy_not_dead_and_real_deaths_are_still_restarted(
    supervised: tuple[EmbeddedTriton, Supervisor], tmp_path: Path
) -> None:
    triton, supervisor = supervised
    working = Frontend(tmp_path / "working", triton.grpc_url, READYZ).start()
    idle = Frontend(tmp_path / "idle", triton.grpc_url, READYZ).start()  # its /readyz must use a canary
    readyz: dict[str, list[int]] = {"working": [], "idle": []}
    probes: list[tuple[int, str]] = []
    # 30 steps at STEP_MS: the stub is busy for at least 15 s in one pipeline call.
    image = base64.b64encode(png_bytes((128, 128))).decode()
    long_body = {"prompt": "long", "image": image, "num_inference_steps": 30, "strength": 1.0, "seed": 1}
    try:
        async with aiohttp.ClientSession(headers={"Authorization": API_KEYS[0]}) as http:
            for frontend in (working, idle):
                while await status_of(http, f"{frontend.url}/readyz") != 200:
                    await asyncio.sleep(0.2)

            async def predict(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
                timeout = aiohttp.ClientTimeout(total=600)
                data = request_body(json.dumps(body))
                async with http.post(f"{working.url}/predict", data=data, timeout=timeout) as response:
                    return response.status, await response.json()

            request = asyncio.create_task(predict(long_body))
            next_probe = time.monotonic() + 2
            while not request.done():
                readyz["working"].append(await status_of(http, f"{working.url}/readyz"))
                readyz["idle"].append(await status_of(http, f"{idle.url}/readyz"))
                if time.monotonic() >= next_probe:
                    probes.append(await asyncio.to_thread(liveness_probe, triton, tmp_path / "probe.json"))
                    next_probe = time.monotonic() + 3
                await asyncio.sleep(0.5)
            status, answer = await request

            # 1. Busy: answered, no restart, every probe alive, /readyz 200 throughout on both replicas.
            assert status == 200, answer
            assert supervisor.restarts == [], supervisor.restarts
            busy = [v for v in supervisor.verdicts if v.alive and v.reason.startswith("busy")]
            assert len(busy) >= 3, supervisor.verdicts  # it did probe, and its canaries did wait
            assert probes and all(rc == 0 for rc, _ in probes), probes
            assert any("busy" in said for _, said in probes), probes
            assert set(readyz["working"]) == {200} and set(readyz["idle"]) == {200}, readyz

            # 2. Dead stub (SIGKILL): restarted within 5 s; the idle replica says unready meanwhile.
            stub = model_stub(triton)
            killed_at = time.monotonic()
            stub.send_signal(signal.SIGKILL)
            seen_503 = False
            while not supervisor.restarts or supervisor.restarts[0].ready_after_s is None:
                seen_503 = seen_503 or await status_of(http, f"{idle.url}/readyz") == 503
                assert time.monotonic() - killed_at < 120, supervisor.restarts
                await asyncio.sleep(0.1)
            detected_after = supervisor.restarts[0].at - killed_at
            print(
                f"stub SIGKILL -> restart begun {detected_after:.2f} s, back {supervisor.restarts[0].ready_after_s} s"
            )
            assert detected_after <= 5.0, detected_after
            assert "stub" in supervisor.restarts[0].reason, supervisor.restarts[0]
            assert seen_503
            while await status_of(http, f"{working.url}/readyz") != 200:
                assert time.monotonic() - killed_at < 120
                await asyncio.sleep(0.2)
            status, answer = await predict({**long_body, "num_inference_steps": 4})
            assert status == 200, answer

            # 3. A frozen stub (alive, no progress) with a canary waiting: restarted after its stall time.
            frozen = model_stub(triton)
            frozen.send_signal(signal.SIGSTOP)
            frozen_at = time.monotonic()
            await asyncio.to_thread(
                lambda: wait_until(lambda: len(supervisor.restarts) == 2, STALL_S + 60, "frozen stub restarted")
            )
            assert "no progress" in supervisor.restarts[1].reason, supervisor.restarts[1]
            print(f"stub SIGSTOP -> restart begun {supervisor.restarts[1].at - frozen_at:.1f} s (stall {STALL_S} s)")
            assert supervisor.restarts[1].ready_after_s is not None or wait_until(
                lambda: supervisor.restarts[1].ready_after_s is not None, 120, "back after the frozen stub"
            )
    finally:
        working.stop()
        idle.stop()
