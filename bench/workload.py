"""The one workload every benchmark runs, so their figures compare: same images, prompts, parameters."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

PROMPTS = ("a photo of an astronaut riding a horse on mars", "a watercolor of a lighthouse", "a red barn at dusk")
# Mixed settings: strengths (num_inference_steps follows, so every request runs the same denoising steps),
# guidance scales above 1 (every request under guidance: the same rows) and schedulers, varied per request.
MIXED_STRENGTHS = (1.0, 0.5, 0.25, 0.8)
MIXED_GUIDANCE = (3.0, 5.0, 7.5, 9.0)
MIXED_SCHEDULERS = ("", "euler", "ddim", "dpm++", "euler_a", "lms", "", "unipc")


@dataclass(frozen=True)
class Workload:
    size: int = 64
    num_inference_steps: int = 8
    strength: float = 0.5
    guidance_scale: float = 7.5
    variants: int = 8  # distinct images/prompts/seeds cycled through

    def images(self) -> list[np.ndarray]:
        """Smooth "photo-like" images (gradients + noise), not pure noise: PNG sizes stay realistic."""
        out = []
        for i in range(self.variants):
            rng = np.random.default_rng(i)
            y, x = np.mgrid[0 : self.size, 0 : self.size] / self.size
            base = np.stack([x, y, 1 - (x + y) / 2], axis=-1) * 200 + rng.normal(0, 6, (self.size, self.size, 3))
            out.append(np.clip(base + 25 * i % 50, 0, 255).astype(np.uint8))
        return out

    def png_b64(self) -> list[str]:
        encoded = []
        for array in self.images():
            buffer = io.BytesIO()
            Image.fromarray(array).save(buffer, format="PNG")
            encoded.append(base64.b64encode(buffer.getvalue()).decode())
        return encoded

    def prompt(self, i: int) -> str:
        return PROMPTS[i % len(PROMPTS)]

    def seed(self, i: int) -> int:
        return 1000 + i

    def settings(self, i: int, mixed: bool = False) -> dict[str, Any]:
        """Request ``i``'s num_inference_steps, strength, guidance_scale and scheduler: the workload's, or with
        ``mixed`` drawn per request with the same denoising work (int(steps * strength) = effective_steps)."""
        if not mixed:
            return {
                "num_inference_steps": self.num_inference_steps,
                "strength": self.strength,
                "guidance_scale": self.guidance_scale,
                "scheduler": "",
            }
        strength = MIXED_STRENGTHS[i % len(MIXED_STRENGTHS)]
        return {
            "num_inference_steps": round(self.effective_steps / strength),
            "strength": strength,
            "guidance_scale": MIXED_GUIDANCE[(i // 2) % len(MIXED_GUIDANCE)],
            "scheduler": MIXED_SCHEDULERS[(i // 3) % len(MIXED_SCHEDULERS)],
        }

    @property
    def effective_steps(self) -> int:
        return int(self.num_inference_steps * self.strength)

    def describe(self) -> str:
        return (
            f"{self.size}x{self.size} px, num_inference_steps={self.num_inference_steps} x strength={self.strength}"
            f" ({self.effective_steps} denoising steps), guidance_scale={self.guidance_scale}, 1 image per request"
        )
