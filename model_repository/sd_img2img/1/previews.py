"""Live previews: the current latent estimate as a small JPEG, through a linear latent-to-RGB map.

A VAE decode per preview would cost as much as several steps; a 4x3 linear map (plus bias) from a
latent pixel to the colour of the 8x8 block it decodes to costs nothing next to a step (ComfyUI's and
AUTOMATIC1111's "latent2rgb"/"approx cheap"). Published factors fit SD 1.5 only; these are fit at load
by least squares against the served checkpoint's own VAE decoder, so they fit any checkpoint (on the
tiny random-weight model too, where the images are noise anyway).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
from PIL import Image


class LatentPreviewer:
    def __init__(self, factors: torch.Tensor, bias: torch.Tensor) -> None:
        self.factors = factors.float().cpu()  # [latent channels, 3]
        self.bias = bias.float().cpu()  # [3]

    @classmethod
    @torch.inference_mode()
    def fit(cls, vae: Any, samples: int = 8, side: int = 8, seed: int = 0) -> LatentPreviewer:
        """Decode ``samples`` random (scaled) latents of ``side``x``side`` and fit RGB = latent @ factors + bias,
        the RGB of each latent pixel being the mean of the block it decodes to."""
        config = vae.config
        channels, scale = int(config.latent_channels), 2 ** (len(config.block_out_channels) - 1)
        parameter = next(vae.parameters())
        generator = torch.Generator("cpu").manual_seed(seed)
        latents = torch.randn((samples, channels, side, side), generator=generator)
        # A VAE that overflows in fp16 (SDXL's: force_upcast) is fit in float32, as its pipeline decodes.
        upcast = parameter.dtype == torch.float16 and bool(getattr(config, "force_upcast", False))
        if upcast:
            torch.nn.Module.to(vae, dtype=torch.float32)
        try:
            decoded = vae.decode(
                (latents / config.scaling_factor).to(parameter.device, next(vae.parameters()).dtype), return_dict=False
            )[0]
        finally:
            if upcast:
                torch.nn.Module.to(vae, dtype=torch.float16)
        rgb = torch.nn.functional.avg_pool2d(decoded.float().cpu(), scale)  # [samples, 3, side, side]
        x = torch.cat([latents.permute(0, 2, 3, 1).reshape(-1, channels), torch.ones(samples * side * side, 1)], 1)
        y = rgb.permute(0, 2, 3, 1).reshape(-1, 3)
        solution = torch.linalg.lstsq(x.double(), y.double()).solution.float()
        return cls(solution[:channels], solution[channels])

    def rgb(self, latent: torch.Tensor) -> np.ndarray:
        """[channels, h, w] scaled latent -> [h, w, 3] uint8."""
        pixels = torch.einsum("chw,cr->hwr", latent.detach().float().cpu(), self.factors) + self.bias
        return ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()

    def jpeg(self, latent: torch.Tensor, quality: int = 75) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(self.rgb(latent)).save(buffer, format="JPEG", quality=quality)
        return buffer.getvalue()
