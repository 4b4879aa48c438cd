"""The step engine's failure paths on a real tritonserver, through the frontend's own gRPC backend and the
container's liveness canary: a request that waits for rows past its Triton timeout is answered as Triton's
queue answers it (the frontend's QueueDeadlineExpired: ``aborted``), and once the engine dies every request
is answered at once, in words that make ``/readyz`` unready and the canary call the model dead.

The engine is killed through a few lines appended to the test's copy of ``model.py``, never through a knob
of the shipped config.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from embedded.supervisor import canary
from embedded.triton_server import EmbeddedTriton, copy_model_repository
from frontend.backend import QueueDeadlineExpired
from frontend.errors import BackendUnavailable
from frontend.generation import GenerationInput
from frontend.triton_backend import TritonPod

from ..helpers.support import paced, start_triton

pytestmark = pytest.mark.integration
STEP_MS = 100
# Appended to the copy's model.py: a waiting request with this prompt makes the engine's next tick raise, as a
# bug in engine.py itself would (every request's own failure is caught inside the tick).
STOP_PROMPT = "stop the engine"
KILL_SWITCH = f"""

import engine as _engine  # noqa: E402 - appended by tests/integration/test_engine_failures.py

_tick = _engine.StepEngine.tick


def _tick_or_stop(self):
    if any(job.request.prompt == {STOP_PROMPT!r} for job in self.planner.waiting):
        raise RuntimeError("injected: the step engine cannot go on")
    return _tick(self)


_engine.StepEngine.tick = _tick_or_stop
"""


@pytest.fixture
def narrow_triton(tiny_model_path: Path, tmp_path: Path) -> Iterator[EmbeddedTriton]:
    """Room for one guided image at a time, at least STEP_MS a step."""
    narrow = {
        '"max_rows_in_flight" value: { string_value: "32" }': '"max_rows_in_flight" value: { string_value: "2" }',
        '"max_images_per_prompt" value: { string_value: "8" }': '"max_images_per_prompt" value: { string_value: "1" }',
    }
    repository = copy_model_repository(tmp_path, paced(STEP_MS) | narrow)
    with (repository / "sd_img2img" / "1" / "model.py").open("a") as model:
        model.write(KILL_SWITCH)
    triton = start_triton(repository, tiny_model_path, log_name="engine-failures")
    yield triton
    triton.stop()


def job(seed: int, prompt: str = "a cat", steps: int = 4) -> GenerationInput:
    return GenerationInput(prompt, np.zeros((16, 16, 3), np.uint8), "", 1.0, steps, 7.5, 1, seed, "")


async def test_waiting_requests_obey_their_timeout_and_a_dead_engine_fails_fast_and_is_called_dead(
    narrow_triton: EmbeddedTriton,
) -> None:
    triton = narrow_triton
    backend = TritonPod(triton.grpc_url, "sd_img2img", timeout_s=120)
    try:
        long = asyncio.create_task(backend.generate(job(1, steps=40)))  # holds every row for 4 s or more
        await asyncio.sleep(0.5)

        # 1. Past its Triton timeout while it waits for rows in the model: Triton's own answer, so the
        #    frontend records the run aborted, long before the running request would have made room.
        started = time.monotonic()
        with pytest.raises(QueueDeadlineExpired, match="Request timeout expired"):
            await backend.generate(job(2), queue_timeout_s=0.5)
        assert time.monotonic() - started >= 0.5 and not long.done()

        # 2. The engine dies: the request that killed it and the one it ran are answered, and so is every
        #    later one, at once.
        with pytest.raises(BackendUnavailable):
            await backend.generate(job(3, prompt=STOP_PROMPT))
        with pytest.raises(BackendUnavailable):
            await long
        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            await backend.generate(job(4))
        assert time.monotonic() - started < 5
        unready = backend.health.unready(time.monotonic(), 5.0)
        assert unready is not None and unready.startswith("the model cannot serve"), unready  # /readyz: 503

        # 3. The container's liveness rules: dead, fatal (restart now), from the canary's answer.
        assert triton.process is not None
        liveness = canary.Liveness(triton.http_url, f"127.0.0.1:{triton.metrics_port}", server_pid=triton.process.pid)
        verdict = await asyncio.to_thread(liveness.judge)
        assert (verdict.alive, verdict.fatal) == (False, True), verdict
        assert verdict.reason.startswith("HTTP 503: ") and "is not healthy" in verdict.reason, verdict
    finally:
        await backend.close()
