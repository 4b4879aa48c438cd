"""Direct-to-Triton mode for callers that bypass the frontend (no auth, no webhooks, no run store).

Needs the ``triton`` extra: ``pip install "sd-img2img-client[triton]"``.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from .models import Img2ImgError

MODEL = "sd_img2img"

# The model's inputs: (name, datatype, dims without the batch dimension, optional). This package cannot
# import the server's table (frontend/wire.py); tests/unit/test_wire_contract.py pins it to config.pbtxt.
INPUTS: tuple[tuple[str, str, tuple[int, ...], bool], ...] = (
    ("prompt", "BYTES", (1,), False),
    ("image", "UINT8", (-1, -1, 3), False),
    ("negative_prompt", "BYTES", (1,), True),
    ("strength", "FP32", (1,), True),
    ("num_inference_steps", "INT32", (1,), True),
    ("guidance_scale", "FP32", (1,), True),
    ("num_images_per_prompt", "INT32", (1,), True),
    ("seed", "INT64", (1,), True),
    ("scheduler", "BYTES", (1,), True),
    ("aesthetic_score", "FP32", (1,), True),
    ("negative_aesthetic_score", "FP32", (1,), True),
)
NUMPY_TYPES: dict[str, Any] = {
    "BYTES": object,
    "UINT8": np.uint8,
    "FP32": np.float32,
    "INT32": np.int32,
    "INT64": np.int64,
}


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
        aesthetic_score: float | None = None,
        negative_aesthetic_score: float | None = None,
    ) -> TritonResult:
        """``aesthetic_score``, ``negative_aesthetic_score``: SDXL refiner only; None = the model's default."""
        values = {
            "prompt": prompt,
            "image": to_rgb_array(image),
            "negative_prompt": negative_prompt,
            "strength": strength,
            "num_inference_steps": num_inference_steps,
            "guidance_scale": guidance_scale,
            "num_images_per_prompt": num_images_per_prompt,
            "seed": -1 if seed is None else seed,
            "scheduler": scheduler,
            # every input is sent (so requests batch): a float not given travels as NaN, the model's "not given"
            "aesthetic_score": math.nan if aesthetic_score is None else aesthetic_score,
            "negative_aesthetic_score": math.nan if negative_aesthetic_score is None else negative_aesthetic_score,
        }
        inputs = []
        for name, datatype, _dims, _optional in INPUTS:  # every input, always: Triton batches equal sets only
            value = values[name]
            if name == "image":
                array = np.ascontiguousarray(value, dtype=np.uint8)[np.newaxis]
            else:
                array = np.array([[value.encode() if isinstance(value, str) else value]], dtype=NUMPY_TYPES[datatype])
            tensor = grpcclient.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        try:
            result = self._client.infer(self.model, inputs, client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            raise Img2ImgError(exc.message() or str(exc), code=str(exc.status())) from None
        images, seeds = result.as_numpy("images"), result.as_numpy("seeds")
        return TritonResult(images[0], [int(s) for s in seeds[0]])
