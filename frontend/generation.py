"""The domain objects between the HTTP layer and the backend."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GenerationInput:
    prompt: str
    image: np.ndarray  # RGB uint8 HWC, sides multiples of 8
    negative_prompt: str = ""
    strength: float = 0.8
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    num_images_per_prompt: int = 1
    seed: int = -1  # -1: the model draws one and reports it
    scheduler: str = ""


@dataclass(frozen=True)
class Generated:
    images: np.ndarray  # [n, H, W, 3] uint8
    seeds: list[int]
