"""The model's wire contract, declared once: every input and output of ``sd_img2img`` (name, datatype,
dims without the batch dimension, optional), and the arrays a request sends, built from that table.

Transport-agnostic (no tritonclient): ``triton_backend`` wraps the arrays for gRPC, ``embedded`` for HTTP.
``tests/unit/test_wire_contract.py`` pins this table, and every other copy (the client's, the container
canary's, ``model.py``'s), to ``config.pbtxt`` field by field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .generation import GenerationInput


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # Triton's wire name: BYTES, UINT8, FP32, INT32, INT64
    dims: tuple[int, ...]  # without the batch dimension; -1 = any
    optional: bool = False


INPUTS = (
    TensorSpec("prompt", "BYTES", (1,)),
    TensorSpec("image", "UINT8", (-1, -1, 3)),
    TensorSpec("negative_prompt", "BYTES", (1,), optional=True),
    TensorSpec("strength", "FP32", (1,), optional=True),
    TensorSpec("num_inference_steps", "INT32", (1,), optional=True),
    TensorSpec("guidance_scale", "FP32", (1,), optional=True),
    TensorSpec("num_images_per_prompt", "INT32", (1,), optional=True),
    TensorSpec("seed", "INT64", (1,), optional=True),
    TensorSpec("scheduler", "BYTES", (1,), optional=True),
    TensorSpec("aesthetic_score", "FP32", (1,), optional=True),
    TensorSpec("negative_aesthetic_score", "FP32", (1,), optional=True),
)
OUTPUTS = (TensorSpec("images", "UINT8", (-1, -1, -1, 3)), TensorSpec("seeds", "INT64", (-1,)))
NUMPY_TYPES: dict[str, type] = {
    "BYTES": object,
    "UINT8": np.uint8,
    "FP32": np.float32,
    "INT32": np.int32,
    "INT64": np.int64,
}


def input_arrays(job: GenerationInput) -> list[tuple[TensorSpec, np.ndarray]]:
    """Every input, always (Triton batches only requests that carry the same set of inputs), batch of one;
    an optional float not given travels as NaN, which the model reads as "not given"."""
    values = {
        "prompt": job.prompt,
        "negative_prompt": job.negative_prompt,
        "strength": job.strength,
        "num_inference_steps": job.num_inference_steps,
        "guidance_scale": job.guidance_scale,
        "num_images_per_prompt": job.num_images_per_prompt,
        "seed": job.seed,
        "scheduler": job.scheduler,
        "aesthetic_score": _or_nan(job.aesthetic_score),
        "negative_aesthetic_score": _or_nan(job.negative_aesthetic_score),
    }
    arrays = []
    for spec in INPUTS:
        array: np.ndarray
        if spec.name == "image":
            array = np.ascontiguousarray(job.image, dtype=NUMPY_TYPES[spec.datatype])[np.newaxis]
        else:
            value = values[spec.name]
            value = value.encode() if isinstance(value, str) else value
            array = np.array([[value]], dtype=NUMPY_TYPES[spec.datatype])
        arrays.append((spec, array))
    return arrays


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value
