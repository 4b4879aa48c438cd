"""The domain objects between the HTTP layer and the backend."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import defaults
from .model_card import ModelCard


@dataclass(frozen=True)
class GenerationInput:
    prompt: str
    image: np.ndarray  # RGB uint8 HWC, sides multiples of 8
    negative_prompt: str = defaults.NEGATIVE_PROMPT
    strength: float = defaults.STRENGTH
    num_inference_steps: int = defaults.NUM_INFERENCE_STEPS
    guidance_scale: float = defaults.GUIDANCE_SCALE
    num_images_per_prompt: int = defaults.NUM_IMAGES_PER_PROMPT
    seed: int = -1  # -1: the model draws one and reports it
    scheduler: str = defaults.SCHEDULER
    # SDXL refiner only; None: not given (sent as NaN, the model then applies diffusers' 6.0 and 2.5)
    aesthetic_score: float | None = None
    negative_aesthetic_score: float | None = None


@dataclass(frozen=True)
class Generated:
    images: np.ndarray  # [n, H, W, 3] uint8
    seeds: list[int]


@dataclass(frozen=True)
class Progress:
    """Where a running generation is: denoising steps done of ``total``, and a small JPEG of its current
    estimate (empty until the model made one)."""

    step: int
    total: int
    preview: bytes = b""

    def as_dict(self) -> dict[str, Any]:
        """The JSON of a ``progress`` event (and of the run store's copy)."""
        preview = f"data:image/jpeg;base64,{base64.b64encode(self.preview).decode()}" if self.preview else None
        return {"step": self.step, "total": self.total, "preview": preview}


@dataclass(frozen=True)
class PodLoad:
    """What a pod's model holds now, as it reports it (``sd_img2img_progress``'s ``load``): every frontend's
    runs there, not only ours."""

    rows: int  # UNet rows active and waiting
    sizes: frozenset[tuple[int, int]]  # the latent sizes held (each its own forward per step)
    model: ModelCard | None = None  # what the model says it is; None: it did not say (an older model)
