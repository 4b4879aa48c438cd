"""What the tests of ``model.py`` share: its config, requests through the fake ``pb_utils``, their answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from . import fake_pb_utils as pb

MODEL_DIR = Path(__file__).resolve().parents[2] / "model_repository" / "sd_img2img"


def model_config(*, dynamic_batching: dict[str, Any] | None = None, **parameters: str) -> dict[str, Any]:
    values = {"determinism": "batch_invariant", "max_images_per_call": "16"} | parameters
    config: dict[str, Any] = {"name": "sd_img2img", "parameters": {k: {"string_value": v} for k, v in values.items()}}
    if dynamic_batching is not None:
        config["dynamic_batching"] = dynamic_batching
    return config


IMAGE = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)


def request(
    *, seed: int = 1, size: int = 16, n: int = 1, strength: float = 0.5, cancelled: bool = False, **extra: np.ndarray
) -> pb.InferenceRequest:
    image = IMAGE if size == 16 else np.resize(IMAGE, (size, size, 3))
    inputs = {
        "prompt": np.array([[b"a cat"]], dtype=object),
        "image": image[np.newaxis],
        "strength": np.array([[strength]], np.float32),
        "num_inference_steps": np.array([[4]], np.int32),
        "num_images_per_prompt": np.array([[n]], np.int32),
        "seed": np.array([[seed]], np.int64),
    } | extra
    return pb.InferenceRequest(inputs, cancelled)


def answer(model: Any, requests: list[pb.InferenceRequest], timeout_s: float = 120) -> list[pb.InferenceResponse]:
    """What the model answered each request: returned by ``execute`` (request batching), or sent through
    each request's response sender (step batching, where ``execute`` returns None)."""
    returned = model.execute(requests)
    if returned is not None:
        return list(returned)
    for r in requests:
        assert r.sender.final.wait(timeout_s), "the model never sent a final response"
    assert all(len(r.sender.responses) == 1 for r in requests)
    return [r.sender.responses[0] for r in requests]


def make_model(module: Any, *, dynamic_batching: dict[str, Any] | None = None, **parameters: str) -> Any:
    instance = module.TritonPythonModel()
    config = model_config(dynamic_batching=dynamic_batching, **parameters)
    instance.initialize({"model_config": json.dumps(config), "model_name": "m", "model_instance_kind": "CPU"})
    return instance
