"""Step-level batching on the real tiny pipeline: a request's bytes do not depend on who shares its steps.

Drives ``engine.StepEngine`` on ``denoiser.StepDenoiser`` tick by tick (no Triton, no thread), so a
request can join a running batch at an exact step.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import EulerDiscreteScheduler

from img2img_pipeline import Img2ImgRunner
from img2img_requests import GroupKey, PipelineCall

from .engine_driver import MEMBERS, req, run


@pytest.fixture(scope="module")
def runner(tiny_model_path: Path) -> Iterator[Img2ImgRunner]:
    yield Img2ImgRunner(str(tiny_model_path), device="cpu", dtype=torch.float32)


NEIGHBOURS = [
    req(0, seed=7, num_inference_steps=30, guidance_scale=3.0, scheduler="euler"),
    req(1, seed=8, num_images_per_prompt=3, num_inference_steps=6, guidance_scale=1.0, scheduler="ddim"),
    req(2, seed=9, num_inference_steps=24, strength=0.5, scheduler="dpm++"),
    req(3, seed=10, size=48),  # another size: another group, its own forwards
]


@pytest.mark.parametrize("scheduler", ["", "euler_a"])
def test_bytes_alone_equal_bytes_joined_at_the_first_a_middle_and_the_last_but_one_step(
    runner: Img2ImgRunner, scheduler: str
) -> None:
    probe = req(9, seed=42, num_images_per_prompt=2, scheduler=scheduler)  # PNDM: 8 steps + 1 = 9 forwards
    alone, alone_rows = run(runner, [(0, probe)])
    assert set(alone_rows) == {4}  # 2 images x (negative, prompt)
    ticks = len(alone_rows)
    # The running batch's last two forwards: the longest neighbour's (request 0) last-but-one and last.
    run(runner, [(0, n) for n in NEIGHBOURS])
    last = max(tick for tick, members in enumerate(MEMBERS) if 0 in members)
    # The neighbours start first; the probe joins their running batch at its first forward, halfway,
    # one forward before the second-longest neighbour leaves, and at the batch's last-but-one forward.
    for join in (0, ticks // 2, 22, last - 1):
        joined, rows = run(runner, [(0, n) for n in NEIGHBOURS] + [(join, probe)])
        assert joined[9].tobytes() == alone[9].tobytes(), f"joined at tick {join}"
        assert any(9 in members and len(members) > 1 for members in MEMBERS), f"joined at {join}: no shared forward"
    assert {0, 9} <= MEMBERS[last - 1] and {0, 9} <= MEMBERS[last]  # it met the last-but-one and last
    other, _ = run(runner, [(0, req(9, seed=43, num_images_per_prompt=2, scheduler=scheduler))])
    assert other[9][0].tobytes() != alone[9][0].tobytes()


def test_neighbours_of_other_settings_share_one_forward_per_step(runner: Img2ImgRunner) -> None:
    mixed = [
        req(0, seed=1, num_inference_steps=8, strength=0.5, guidance_scale=7.5, scheduler="euler"),
        req(1, seed=2, num_inference_steps=4, strength=1.0, guidance_scale=4.0, scheduler="ddim"),
        req(2, seed=3, num_inference_steps=16, strength=0.25, guidance_scale=1.0, scheduler="dpm++"),
    ]
    images, rows = run(runner, [(0, r) for r in mixed])
    assert rows == [5, 5, 5, 5]  # every request runs 4 steps: 2 + 2 + 1 rows in each forward
    for r in mixed:  # each as it comes out alone
        alone, _ = run(runner, [(0, r)])
        assert images[r.index].tobytes() == alone[r.index].tobytes()


def test_step_batching_gives_the_bytes_of_a_whole_pipeline_call(runner: Img2ImgRunner) -> None:
    """The denoiser is diffusers' img2img loop cut at the step: same bytes as one ``pipe(...)`` call."""
    probe = req(0, seed=5, num_images_per_prompt=2, scheduler="euler_a")
    stepped, _ = run(runner, [(0, probe)])
    key = GroupKey(32, 32, probe.num_inference_steps, probe.strength, probe.guidance_scale, probe.scheduler)
    whole = runner.run(PipelineCall(key, (probe,)))
    assert stepped[0].tobytes() == whole.tobytes()


class RaisingScheduler(EulerDiscreteScheduler):
    """Raises at its third step, as a scheduler can at an edge timestep."""

    def step(self, *args: Any, **kwargs: Any) -> Any:
        self.steps_taken = getattr(self, "steps_taken", 0) + 1  # per request: each has its own copy
        if self.steps_taken == 3:
            raise IndexError("index 11 is out of bounds for dimension 0 with size 11")
        return super().step(*args, **kwargs)


def test_a_scheduler_raising_for_one_request_fails_only_it_and_its_neighbours_bytes_do_not_move(
    runner: Img2ImgRunner,
) -> None:
    schedulers = runner.schedulers | {"raising": RaisingScheduler.from_config(runner.schedulers[""].config)}
    neighbours = [
        req(0, seed=1, num_inference_steps=6, scheduler="euler"),
        req(1, seed=2, num_inference_steps=6, scheduler="ddim", guidance_scale=1.0),
    ]
    failed: dict[int, str] = {}
    images, _ = run(runner, [(0, neighbours[0]), (0, req(2, seed=3, scheduler="raising")), (0, neighbours[1])],
                    schedulers, failed)  # fmt: skip
    assert failed == {2: "generation failed: IndexError: index 11 is out of bounds for dimension 0 with size 11"}
    assert MEMBERS[2] == {0, 1, 2} and MEMBERS[3] == {0, 1}  # it shared the forward it failed after
    for neighbour in neighbours:
        alone, _ = run(runner, [(0, neighbour)])
        assert images[neighbour.index].tobytes() == alone[neighbour.index].tobytes()


def test_every_accepted_scheduler_gives_its_alone_bytes_joined_mid_batch(runner: Img2ImgRunner) -> None:
    """Second-order schedulers (Heun, KDPM2: two forwards a step, ``t_start * order`` where strength cuts the
    schedule) included; alone, each gives the bytes of one whole pipeline call."""
    classes = {type(scheduler).__name__: name for name, scheduler in sorted(runner.schedulers.items()) if name}
    # Every scheduler the API accepts is here: one a diffusers upgrade adds fails this test until it is checked.
    assert sorted(classes) == [
        "DDIMScheduler", "DDPMScheduler", "DEISMultistepScheduler", "DPMSolverMultistepScheduler",
        "DPMSolverSinglestepScheduler", "EulerAncestralDiscreteScheduler", "EulerDiscreteScheduler",
        "HeunDiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "KDPM2DiscreteScheduler",
        "LMSDiscreteScheduler", "PNDMScheduler", "UniPCMultistepScheduler",
    ]  # fmt: skip
    probes = [
        req(10 + i, seed=40 + i, size=16, num_inference_steps=7, strength=0.6, scheduler=name)
        for i, name in enumerate(classes.values())
    ]
    neighbour = req(0, seed=1, size=16, num_inference_steps=12, strength=1.0, guidance_scale=3.0)
    # The neighbour runs first; each probe joins its running batch a tick after the one before.
    joined, _ = run(runner, [(0, neighbour)] + [(1 + i, probe) for i, probe in enumerate(probes)])
    for i, probe in enumerate(probes):  # its first forward was a running batch's
        assert probe.index in MEMBERS[1 + i] and len(MEMBERS[1 + i]) > 1, probe.scheduler
    for probe in probes:
        alone, _ = run(runner, [(0, probe)])
        assert joined[probe.index].tobytes() == alone[probe.index].tobytes(), probe.scheduler
        key = GroupKey(16, 16, probe.num_inference_steps, probe.strength, probe.guidance_scale, probe.scheduler)
        whole = runner.run(PipelineCall(key, (probe,)))
        assert alone[probe.index].tobytes() == whole.tobytes(), probe.scheduler
