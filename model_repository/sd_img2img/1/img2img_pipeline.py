"""The diffusers side of the ``sd_img2img`` model: load the pipeline, pick schedulers, run one call.

No Triton imports: ``model.py`` owns the Triton glue, this module owns torch and diffusers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import diffusers
import numpy as np
import torch
from batch_invariance import InvariancePlan, apply_plan, parse_plan, pin_cuda_kernels
from cuda_graphs import DEFAULT_ROW_BUCKETS, GraphedUNet
from families import Family, detect
from model_parameters import DETERMINISM_MODES

from img2img_requests import PipelineCall, to_uint8

# Short names accepted besides the diffusers class names (``scheduler`` input).
SCHEDULER_ALIASES = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "dpm_single": "DPMSolverSinglestepScheduler",
    "kdpm2": "KDPM2DiscreteScheduler",
    "kdpm2_a": "KDPM2AncestralDiscreteScheduler",
    "deis": "DEISMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
}
# How a call's images relate to the same images computed alone (config parameter "determinism").
# DPMSolverSDE needs torchsde, which we do not ship; EDMEuler expects EDM-parametrised models.
_UNSUPPORTED_SCHEDULERS = {"DPMSolverSDEScheduler", "EDMEulerScheduler"}


def load_pipeline(family: Family, model_name_or_path: str, *, dtype: torch.dtype, local_files_only: bool) -> Any:
    """The family's img2img pipeline from the folder (a text-to-image folder loads into it, as diffusers allows)."""
    # No safety checker (SD) and no invisible watermark (SDXL): the service returns the model's own pixels.
    extra: dict[str, Any] = (
        {"add_watermarker": False} if family.xl else {"safety_checker": None, "requires_safety_checker": False}
    )
    pipeline_class = getattr(diffusers, family.pipeline)
    return pipeline_class.from_pretrained(model_name_or_path, dtype=dtype, local_files_only=local_files_only, **extra)


class Img2ImgRunner:
    """One loaded pipeline on one device; ``run`` executes one ``PipelineCall``."""

    def __init__(
        self,
        model_name_or_path: str,
        *,
        device: str,
        dtype: torch.dtype,
        determinism: str = "batch_invariant",
        invariant_modules: str = "auto",
        cuda_graphs: bool = False,
        graph_sizes: tuple[int, ...] = (),
        graph_rows: tuple[int, ...] = DEFAULT_ROW_BUCKETS,
        per_row_timesteps: bool = True,
        local_files_only: bool = False,
        log: Callable[[str], None] = print,
    ) -> None:
        if determinism not in DETERMINISM_MODES:
            raise ValueError(f"determinism must be one of {DETERMINISM_MODES} but is {determinism!r}")
        self.determinism = determinism
        self.device = torch.device(device)
        self.dtype = dtype
        # Parsed before the weights load, so a bad parameter fails at once.
        self.plan: InvariancePlan | None = (
            parse_plan(invariant_modules, self.device.type) if determinism == "batch_invariant" else None
        )
        # The family from the configs first: a folder of another kind fails in one line, before any weight loads.
        self.family = detect(model_name_or_path, local_files_only=local_files_only)
        pipe = load_pipeline(self.family, model_name_or_path, dtype=dtype, local_files_only=local_files_only)
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(self.device)
        if self.plan is not None:
            if self.plan.pin_kernels:
                pin_cuda_kernels()
            apply_plan(self.pipe, self.plan)
        self.graphs: GraphedUNet | None = None
        # SDXL's UNet also takes added_cond_kwargs, which GraphedUNet does not carry: it would replay every forward
        # eagerly after failing to capture, so it is not even tried.
        if cuda_graphs and self.device.type == "cuda" and self.family.xl:
            log(f"CUDA graphs: off for {self.family.title} (its added conditioning runs eagerly)")
        elif cuda_graphs and self.device.type == "cuda":
            self.graphs = GraphedUNet(self.pipe.unet.forward, row_buckets=graph_rows, log=log)
            self.pipe.unet.forward = self.graphs
            self.capture_graphs(graph_sizes, per_row_timesteps)
        # Every scheduler is built once from the checkpoint's config, so a request can only name one that works.
        base = self.pipe.scheduler
        self._schedulers: dict[str, Any] = {"": base}
        self.missing_schedulers: dict[str, str] = {}
        for cls in (type(base), *base.compatibles):
            if cls.__name__ not in _UNSUPPORTED_SCHEDULERS:
                try:
                    self._schedulers[cls.__name__] = cls.from_config(base.config)
                except ImportError as exc:  # diffusers' placeholder for a missing backend (LMS needs scipy)
                    self.missing_schedulers[cls.__name__] = str(exc).strip().splitlines()[0]
        for alias, name in SCHEDULER_ALIASES.items():
            if name in self._schedulers:
                self._schedulers[alias] = self._schedulers[name]

    @torch.inference_mode()
    def capture_graphs(self, sizes: tuple[int, ...], per_row_timesteps: bool) -> int:
        """Capture the UNet's graphs at load for square images of ``sizes`` px, every row bucket: the
        step scheduler passes a timestep per row, a whole pipeline call one scalar."""
        if self.graphs is None:
            return 0
        unet, scale = self.pipe.unet, 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)
        width = self.pipe.text_encoder.config.hidden_size
        length = self.pipe.tokenizer.model_max_length
        examples = []
        for side in sizes:
            sample = torch.zeros((1, unet.config.in_channels, side // scale, side // scale), device=self.device)
            # As the step denoiser passes them (float32, one per row), or the pipeline (PNDM's int64 scalar).
            shape, kind = ((1,), torch.float32) if per_row_timesteps else ((), torch.long)
            timestep = torch.full(shape, 999, device=self.device, dtype=kind)
            context = torch.zeros((1, length, width), device=self.device)
            examples.append((sample.to(self.dtype), timestep, context.to(self.dtype)))
        return self.graphs.capture(examples)

    @property
    def min_image_side(self) -> int:
        """The UNet halves the latent once per down block; below this its GroupNorms see a 1x1 map."""
        scale = 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)
        return int(scale * 2 ** (len(self.pipe.unet.config.block_out_channels) - 1))

    @property
    def scheduler_names(self) -> set[str]:
        return {name for name in self._schedulers if name}

    @property
    def schedulers(self) -> dict[str, Any]:
        """Name or alias ("" = the checkpoint's) -> the scheduler built once at load; step batching copies one
        per request, since PNDM and the multistep schedulers keep per-call history."""
        return dict(self._schedulers)

    @torch.inference_mode()
    def run(
        self,
        call: PipelineCall,
        should_stop: Callable[[], bool] = lambda: False,
        on_step: Callable[[], None] = lambda: None,
    ) -> np.ndarray:
        """Run ``call``; returns ``[n, H, W, 3]`` uint8 in request order.

        One CPU ``torch.Generator`` per image (seed + i) makes each image depend only on its own seed,
        on any device (diffusers draws CPU noise and moves it). ``per_image`` runs each image as its own
        pipeline call, the same computation as a one-image request alone, so it is exact by construction.
        ``on_step`` runs after every denoising step (progress that liveness probes can see inside a long call).
        """
        prompts, negatives, images, generators = [], [], [], []
        for request in call.requests:
            for seed in request.seeds:
                prompts.append(request.prompt)
                negatives.append(request.negative_prompt)
                images.append(request.image)
                generators.append(torch.Generator("cpu").manual_seed(seed))
        # NCHW contiguous: a permuted (channels-last) tensor takes other conv kernels whose rounding
        # differs with the batch, which broke batch invariance in measurement.
        pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
        pixels = pixels.to(self.device, self.dtype) / 255.0

        self.pipe.scheduler = self._schedulers[call.key.scheduler]
        if self.determinism != "per_image":
            return self._generate(call, prompts, negatives, pixels, generators, should_stop, on_step)
        return np.concatenate(
            [
                self._generate(
                    call,
                    prompts[i : i + 1],
                    negatives[i : i + 1],
                    pixels[i : i + 1],
                    generators[i : i + 1],
                    should_stop,
                    on_step,
                )
                for i in range(len(prompts))
            ]
        )

    def _generate(
        self,
        call: PipelineCall,
        prompts: list[str],
        negatives: list[str],
        pixels: torch.Tensor,
        generators: list[torch.Generator],
        should_stop: Callable[[], bool],
        on_step: Callable[[], None],
    ) -> np.ndarray:
        def stop_if_asked(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            on_step()
            if should_stop():
                pipe._interrupt = True
            return tensors

        extra: dict[str, Any] = {}
        if self.family.refiner:
            extra = {
                "aesthetic_score": call.key.aesthetic_score,
                "negative_aesthetic_score": call.key.negative_aesthetic_score,
            }
        output = self.pipe(
            prompt=prompts,
            # An empty negative prompt is diffusers' None (SDXL base: zero embeddings), as in step batching.
            negative_prompt=None if call.key.no_negative_prompt else negatives,
            image=pixels,
            strength=call.key.strength,
            num_inference_steps=call.key.num_inference_steps,
            guidance_scale=call.key.guidance_scale,
            generator=generators,
            output_type="np",
            callback_on_step_end=stop_if_asked,
            **extra,
        )
        return to_uint8(np.asarray(output.images, dtype=np.float32))
