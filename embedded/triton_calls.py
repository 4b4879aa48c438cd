"""Requests to the ``sd_img2img`` model over Triton's HTTP API, for tests and benchmarks.

Every input is always sent: Triton batches only requests that carry the same set of inputs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from frontend.generation import GenerationInput
from frontend.wire import input_arrays

MODEL = "sd_img2img"


# Tests and benchmarks send short runs (4 steps at strength 0.5) with a fixed seed unless they say otherwise.
TEST_PROMPT = "a photo of an astronaut riding a horse on mars"


def img2img(
    image: np.ndarray,
    prompt: str = TEST_PROMPT,
    *,
    strength: float = 0.5,
    num_inference_steps: int = 4,
    seed: int = 120,
    **fields: Any,
) -> GenerationInput:
    """A request as tests and benchmarks send it: the frontend's own ``GenerationInput``, test defaults."""
    return GenerationInput(
        prompt=prompt, image=image, strength=strength, num_inference_steps=num_inference_steps, seed=seed, **fields
    )


def http_inputs(job: GenerationInput) -> list[triton_http.InferInput]:
    """The frontend's wire contract (``frontend/wire.py``) as HTTP tensors, binary."""
    inputs = []
    for spec, array in input_arrays(job):
        tensor = triton_http.InferInput(spec.name, list(array.shape), spec.datatype)
        tensor.set_data_from_numpy(array, binary_data=True)
        inputs.append(tensor)
    return inputs


@dataclass
class Answer:
    images: np.ndarray | None = None
    seeds: np.ndarray | None = None
    status: str | None = None  # tritonclient's status ("400", "503", ...) when it failed
    message: str = ""
    seconds: float = 0.0


class Caller:
    """A fresh sync client per call: they are gevent-based, not thread-safe, and must close on their thread."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _client(self) -> triton_http.InferenceServerClient:
        return triton_http.InferenceServerClient(self.url, network_timeout=300, connection_timeout=300)

    def send(self, job: GenerationInput) -> Answer:
        client = self._client()
        start = time.perf_counter()
        try:
            result = client.infer(MODEL, http_inputs(job))
        except InferenceServerException as exc:
            return Answer(status=str(exc.status()), message=exc.message() or "", seconds=time.perf_counter() - start)
        finally:
            client.close()
        return Answer(result.as_numpy("images"), result.as_numpy("seeds"), seconds=time.perf_counter() - start)

    def stats(self) -> dict[str, int]:
        client = self._client()
        try:
            model_stats = client.get_inference_statistics(MODEL)["model_stats"][0]
        finally:
            client.close()
        counts = {key: int(model_stats[key]) for key in ("inference_count", "execution_count")}
        # Cumulative server-side time per phase (ns), for queue/compute splits between two snapshots.
        for phase in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
            counts[f"{phase}_ns"] = int(model_stats["inference_stats"][phase]["ns"])
        counts["success_count"] = int(model_stats["inference_stats"]["success"]["count"])
        return counts
