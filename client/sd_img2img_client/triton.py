"""Direct-to-Triton mode for callers that bypass the frontend (no auth, no webhooks, no run store).

Needs the ``triton`` extra: ``pip install "sd-img2img-client[triton]"``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from .models import Img2ImgError

MODEL = "sd_img2img"


@dataclass(frozen=True)
class TritonResult:
    images: np.ndarray  # [n, H, W, 3] uint8 RGB
    seeds: list[int]

    def png_images(self) -> list[bytes]:
        out = []
        for array in self.images:
            buffer = io.BytesIO()
            Image.fromarray(array).save(buffer, format="PNG")
            out.append(buffer.getvalue())
        return out


def to_rgb_array(image: bytes | np.ndarray) -> np.ndarray:
    """Encoded bytes or an array to RGB uint8 HWC with sides cut down to multiples of 8 (the model's rule)."""
    if isinstance(image, bytes):
        with Image.open(io.BytesIO(image)) as opened:
            array = np.asarray(opened.convert("RGB"), dtype=np.uint8)
    else:
        array = np.asarray(image, dtype=np.uint8)
    height, width = array.shape[0] // 8 * 8, array.shape[1] // 8 * 8
    return np.ascontiguousarray(array[:height, :width, :3])


class TritonImg2ImgClient:
    """Sends the ``sd_img2img`` model's inputs over gRPC; every input, always (so requests batch)."""

    def __init__(self, url: str = "127.0.0.1:8001", model: str = MODEL, timeout_s: float = 600.0) -> None:
        self._client = grpcclient.InferenceServerClient(url)
        self.model, self.timeout_s = model, timeout_s

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> TritonImg2ImgClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def generate(
        self,
        prompt: str,
        image: bytes | np.ndarray,
        *,
        negative_prompt: str = "",
        strength: float = 0.8,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        num_images_per_prompt: int = 1,
        seed: int | None = None,
        scheduler: str = "",
    ) -> TritonResult:
        tensors: list[tuple[str, Any, str]] = [
            ("prompt", np.array([[prompt.encode()]], dtype=object), "BYTES"),
            ("image", to_rgb_array(image)[np.newaxis], "UINT8"),
            ("negative_prompt", np.array([[negative_prompt.encode()]], dtype=object), "BYTES"),
            ("strength", np.array([[strength]], np.float32), "FP32"),
            ("num_inference_steps", np.array([[num_inference_steps]], np.int32), "INT32"),
            ("guidance_scale", np.array([[guidance_scale]], np.float32), "FP32"),
            ("num_images_per_prompt", np.array([[num_images_per_prompt]], np.int32), "INT32"),
            ("seed", np.array([[-1 if seed is None else seed]], np.int64), "INT64"),
            ("scheduler", np.array([[scheduler.encode()]], dtype=object), "BYTES"),
        ]
        inputs = []
        for name, array, datatype in tensors:
            tensor = grpcclient.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        try:
            result = self._client.infer(self.model, inputs, client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            raise Img2ImgError(exc.message() or str(exc), code=str(exc.status())) from None
        images, seeds = result.as_numpy("images"), result.as_numpy("seeds")
        return TritonResult(images[0], [int(s) for s in seeds[0]])
