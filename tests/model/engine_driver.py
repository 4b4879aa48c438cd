"""Drives ``engine.StepEngine`` on ``denoiser.StepDenoiser`` tick by tick (no Triton, no thread), so a request can
join a running batch at an exact step: shared by the step-batching and the family tests."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from denoiser import StepDenoiser
from engine import Callbacks, StepEngine

from img2img_pipeline import Img2ImgRunner
from img2img_requests import Img2ImgRequest

IMAGE = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)


def req(index: int, *, seed: int, size: int = 32, **settings: Any) -> Img2ImgRequest:
    values: dict[str, Any] = {
        "prompt": f"prompt {index}",
        "negative_prompt": "",
        "strength": 0.8,
        "num_inference_steps": 10,
        "guidance_scale": 7.5,
        "num_images_per_prompt": 1,
        "scheduler": "",
    } | settings
    image = IMAGE if size == 32 else np.resize(IMAGE, (size, size, 3))
    return Img2ImgRequest(index=index, image=image, seed=seed, **values)


# The request indices of each forward of the last ``run`` (which requests shared it).
MEMBERS: list[set[int]] = []


def run(
    runner: Img2ImgRunner,
    arrivals: list[tuple[int, Img2ImgRequest]],
    schedulers: dict[str, Any] | None = None,
    failed: dict[int, str] | None = None,
) -> tuple[dict[int, np.ndarray], list[int]]:
    """Submit each request before tick ``at``; returns each request's images and the rows of every forward.
    A failed request fails the test, unless ``failed`` is given: then its message is put there."""
    images: dict[int, np.ndarray] = {}
    rows: list[int] = []
    MEMBERS.clear()

    def fail(index: int, message: str) -> None:
        if failed is None:
            pytest.fail(message)
        failed[index] = message

    engine = StepEngine(
        StepDenoiser(runner.pipe, schedulers or runner.schedulers),
        max_rows=64,
        callbacks=Callbacks(
            answer=lambda job, out: images.__setitem__(job.request.index, out),
            fail=lambda job, message: fail(job.request.index, message),
            cancelled=lambda job: None,
            on_tick=lambda jobs, n: (rows.append(n), MEMBERS.append({job.request.index for job in jobs})),
        ),
    )
    pending = sorted(arrivals, key=lambda pair: pair[0])
    tick = 0
    while pending or engine.planner.jobs:
        while pending and pending[0][0] <= tick:
            engine.submit(pending.pop(0)[1], None)
        engine.tick()
        tick += 1
    return images, rows
