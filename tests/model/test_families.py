"""Every family the model serves (SD 1.x, SD 2.x-v, SDXL base and refiner), on its tiny random pipeline:
the step engine's bytes alone, twice, and joined at a middle step beside neighbours of other settings; and
against diffusers' own img2img ``__call__`` for the same inputs and seed (the oracle).

The engine is driven tick by tick as in ``test_step_batching`` (no Triton, no thread).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from families import Family

from embedded import tiny_model
from img2img_pipeline import Img2ImgRunner, load_pipeline
from img2img_requests import Img2ImgRequest, PipelineCall

from .engine_driver import MEMBERS, req, run

FAMILIES = {
    "sd1": ("SD 1.x", "epsilon", False),
    "sd2-v": ("SD 2.x (v-prediction)", "v_prediction", False),
    "sdxl": ("SDXL base", "epsilon", True),
    "sdxl-refiner": ("SDXL refiner", "epsilon", True),
}
# diffusers' __call__ under no invariance plan batches its rows in other shapes, so float sums round
# otherwise: the bound (max absolute pixel difference) for that comparison.
PLAIN_PIPELINE_TOLERANCE = 2


def family_folder(family: str, root: Path) -> Path:
    folder = tiny_model.default_folder() if family == "sd1" else root / family
    tiny_model.build(folder, family=family)
    return folder


EVERY = pytest.mark.parametrize("runner", list(FAMILIES), indirect=True)


@pytest.fixture(scope="module")
def runner(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Img2ImgRunner]:
    folder = family_folder(request.param, tmp_path_factory.getbasetemp() / "families")
    yield Img2ImgRunner(str(folder), device="cpu", dtype=torch.float32)


_PLAIN: dict[str, Any] = {}


def plain_pipeline(runner: Img2ImgRunner) -> Any:
    """The family's diffusers pipeline loaded plain from the same folder (no invariance plan), once per family."""
    if runner.family.name not in _PLAIN:
        pipe = load_pipeline(runner.family, runner.pipe.name_or_path, dtype=torch.float32, local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        _PLAIN[runner.family.name] = pipe
    return _PLAIN[runner.family.name]


def scored(request: Img2ImgRequest, family: Family) -> Img2ImgRequest:
    """As ``check_inputs`` gives it: a refiner's request carries its aesthetic scores (diffusers' defaults)."""
    if not family.refiner:
        return request
    values = {**request.__dict__, "aesthetic_score": 6.0, "negative_aesthetic_score": 2.5}
    return Img2ImgRequest(**values)


@EVERY
def test_the_folder_says_the_family(runner: Img2ImgRunner) -> None:
    title, prediction, xl = FAMILIES[runner.family.name]
    assert (runner.family.title, runner.family.prediction_type, runner.family.xl) == (title, prediction, xl)
    assert type(runner.pipe).__name__ == runner.family.pipeline


@pytest.mark.parametrize("runner", [name for name in FAMILIES if name != "sd1"], indirect=True)
def test_bytes_alone_twice_and_joined_at_a_middle_step_beside_other_settings(runner: Img2ImgRunner) -> None:
    """SD 1.x's own, at every join point and scheduler, is ``test_step_batching``'s."""
    family = runner.family
    probe = scored(req(9, seed=42, num_images_per_prompt=2), family)
    neighbours = [
        scored(req(0, seed=7, num_inference_steps=14, guidance_scale=3.0, scheduler="euler_a"), family),
        scored(req(1, seed=8, num_inference_steps=6, guidance_scale=1.0, scheduler="ddim"), family),
        scored(req(2, seed=9, strength=0.5, negative_prompt="blurry", scheduler="dpm++"), family),
    ]
    alone, alone_rows = run(runner, [(0, probe)])
    again, _ = run(runner, [(0, probe)])
    assert again[9].tobytes() == alone[9].tobytes()
    middle = len(alone_rows) // 2
    joined, _ = run(runner, [(0, n) for n in neighbours] + [(middle, probe)])
    assert any(9 in members and len(members) > 1 for members in MEMBERS), "the probe shared no forward"
    assert joined[9].tobytes() == alone[9].tobytes()
    other, _ = run(runner, [(0, scored(req(9, seed=43, num_images_per_prompt=2), family))])
    assert other[9].tobytes() != alone[9].tobytes()  # the seed matters: the comparison can fail


@EVERY
@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"scheduler": "euler", "guidance_scale": 1.0, "strength": 0.6, "negative_prompt": "blurry"},
    ],
    ids=["defaults", "euler-unguided"],
)
def test_the_step_engine_gives_diffusers_own_img2img_call_s_image(
    runner: Img2ImgRunner, settings: dict[str, Any]
) -> None:
    """The oracle: ``pipe.__call__`` for the same inputs and seed. Under the same invariance plan the bytes are
    equal; against a pipeline loaded plain (no plan), within ``PLAIN_PIPELINE_TOLERANCE``."""
    request = scored(req(0, seed=5, num_images_per_prompt=2, **settings), runner.family)
    engine, _ = run(runner, [(0, request)])
    call = PipelineCall(request.group_key, (request,))
    assert runner.run(call).tobytes() == engine[0].tobytes()

    plain = plain_pipeline(runner)
    plain.scheduler = runner.schedulers[request.scheduler]
    extra = (
        {"aesthetic_score": request.aesthetic_score, "negative_aesthetic_score": request.negative_aesthetic_score}
        if runner.family.refiner
        else {}
    )
    pixels = torch.from_numpy(request.image).permute(2, 0, 1)[None].float() / 255.0
    output = plain(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt or None,
        image=pixels,
        strength=request.strength,
        num_inference_steps=request.num_inference_steps,
        guidance_scale=request.guidance_scale,
        num_images_per_prompt=2,
        generator=[torch.Generator("cpu").manual_seed(seed) for seed in request.seeds],
        output_type="np",
        **extra,
    ).images
    oracle = (np.clip(output, 0, 1) * 255).round().astype(np.uint8)
    difference = np.abs(oracle.astype(int) - engine[0].astype(int)).max()
    assert difference <= PLAIN_PIPELINE_TOLERANCE, f"max absolute pixel difference {difference}"


@EVERY
def test_previews_estimate_the_image_for_the_family_s_prediction_type(runner: Img2ImgRunner) -> None:
    """Each step leaves an estimate of the clean latents; near the end it is close to them, whatever the model
    predicts (epsilon or v) and whether or not the scheduler gives its own (PNDM and DPM++ do not)."""
    from denoiser import StepDenoiser

    denoiser = StepDenoiser(runner.pipe, runner.schedulers)
    for scheduler in ("", "dpm++"):
        flight = denoiser.admit([scored(req(0, seed=3, scheduler=scheduler), runner.family)])[0]
        while not denoiser.done(flight):
            denoiser.step([flight])
            assert flight.estimate is not None and torch.isfinite(flight.estimate).all()
        # The last step's estimate is the image the last latents decode to (the noise left is tiny there).
        final = flight.latents[0]
        assert flight.estimate.shape == final.shape
        assert (flight.estimate - final).abs().mean() < 0.25 * final.abs().mean(), scheduler


def test_sdxl_s_vae_runs_in_float32_under_fp16_where_its_config_says_force_upcast_and_goes_back(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """As its pipeline does (fp16 overflows in SDXL's VAE); the UNet stays in fp16. torch runs fp16 on a CPU too."""
    from denoiser import StepDenoiser

    folder = family_folder("sdxl", tmp_path_factory.getbasetemp() / "families")
    half = Img2ImgRunner(str(folder), device="cpu", dtype=torch.float16, determinism="batched")
    assert half.pipe.vae.config.force_upcast
    vae, seen = half.pipe.vae, []
    encode, decode = vae.encode, vae.decode
    vae.encode = lambda x, *a, **k: (seen.append(("encode", x.dtype, vae.dtype)), encode(x, *a, **k))[1]
    vae.decode = lambda z, *a, **k: (seen.append(("decode", z.dtype, vae.dtype)), decode(z, *a, **k))[1]
    denoiser = StepDenoiser(half.pipe, half.schedulers)
    flights = denoiser.admit([req(0, seed=1, num_inference_steps=4, strength=0.5)])
    while not denoiser.done(flights[0]):
        denoiser.step(flights)
    (images,) = denoiser.decode(flights)
    assert seen == [("encode", torch.float32, torch.float32), ("decode", torch.float32, torch.float32)]
    assert vae.dtype == torch.float16 and half.pipe.unet.dtype == torch.float16
    assert flights[0].latents.dtype == torch.float16 and images.dtype == np.uint8


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_the_preview_estimate_recovers_the_clean_latents_from_each_kind_of_prediction(prediction_type: str) -> None:
    """Where the scheduler gives no estimate of its own (PNDM, DPM++): x_t = sqrt(a) x0 + sqrt(1 - a) eps at a
    middle timestep, and the model's output is eps, v = sqrt(a) eps - sqrt(1 - a) x0, or x0 itself."""
    from types import SimpleNamespace

    from denoiser import StepDenoiser

    generator = torch.Generator("cpu").manual_seed(0)
    clean, noise = torch.randn((2, 4, 8, 8), generator=generator), torch.randn((2, 4, 8, 8), generator=generator)
    alphas = torch.linspace(0.999, 0.01, 1000)
    t, a = torch.tensor(500), alphas[500]
    noisy = a.sqrt() * clean + (1 - a).sqrt() * noise
    output = {"epsilon": noise, "v_prediction": a.sqrt() * noise - (1 - a).sqrt() * clean, "sample": clean}
    flight = SimpleNamespace(latents=noisy, scheduler=SimpleNamespace(alphas_cumprod=alphas))
    estimate = StepDenoiser._estimate(flight, output[prediction_type], t, None, prediction_type)  # type: ignore[arg-type]
    assert torch.allclose(estimate, clean[0], atol=1e-4)
