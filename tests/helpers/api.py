"""The in-process API tests' helpers: a scripted backend (the ``Backend`` Protocol, images from the seed
alone), the request body, the auth header and a POST."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from typing import Any

import numpy as np
from aiohttp import web
from aiohttp.test_utils import TestClient
from tritonclient.utils import InferenceServerException

from frontend.backend import CanceledByServer
from frontend.errors import BackendTimeout, BackendUnavailable, GenerationFailed
from frontend.generation import Generated, GenerationInput, Progress
from frontend.health import BackendHealth
from frontend.model_card import ModelCard
from frontend.triton_backend import map_error

from .servers import png_bytes
from .support import API_KEYS

IMAGE_B64 = base64.b64encode(png_bytes((64, 64))).decode()

FAILURES: dict[str, Exception] = {
    "fail:unavailable": BackendUnavailable("the model is not available; retry later"),
    "fail:timeout": BackendTimeout("the model did not answer in time"),
    "fail:generation": GenerationFailed("the model failed to generate the images"),
    "fail:crash": RuntimeError("a bug"),
    "fail:server-cancel": CanceledByServer("[StatusCode.CANCELLED] Locally cancelled by application!"),
    # A model that does not take a field it was sent, in its own words, through the real error mapping.
    "fail:unsupported": map_error(
        InferenceServerException(
            "unsupported input 'aesthetic_score': SD 1.x does not take it; only an SDXL refiner does",
            status="StatusCode.INVALID_ARGUMENT",
        )
    ),
}
# A model card as the model posts it (tests give it to ``ScriptedBackend.card``).
SDXL_BASE = ModelCard(
    family="sdxl",
    title="SDXL base",
    schedulers=("EulerDiscreteScheduler", "ddim", "euler", "euler_a"),
    fields=frozenset(),
    native_side=1024,
    max_image_side=2048,
)
SDXL_REFINER = ModelCard(
    family="sdxl-refiner",
    title="SDXL refiner",
    schedulers=("ddim", "euler"),
    fields=frozenset({"aesthetic_score", "negative_aesthetic_score"}),
    native_side=1024,
    max_image_side=2048,
)


class ScriptedBackend:
    """Images from the seed alone (so bytes can be compared); prompts starting with ``fail:`` fail."""

    address = "scripted:0"

    def __init__(self) -> None:
        self.health = BackendHealth()
        self.jobs: list[GenerationInput] = []
        self.progress_of: dict[str, Progress] = {}  # what progress() answers, by request id
        self.release = asyncio.Event()  # prompts "hold" wait for it
        self.card: ModelCard | None = None  # what model_card() answers: the served model, as if read from it

    async def generate(
        self,
        job: GenerationInput,
        *,
        timeout_s: float | None = None,
        request_id: str = "",
        queue_timeout_s: float | None = None,
    ) -> Generated:
        self.jobs.append(job)
        if job.prompt == "hold":
            await self.release.wait()
        if job.prompt in FAILURES:
            raise FAILURES[job.prompt]
        seed = 42 if job.seed == -1 else job.seed
        seeds = [seed + i for i in range(job.num_images_per_prompt)]
        height, width = job.image.shape[:2]
        images = np.stack([np.random.default_rng(s).integers(0, 256, (height, width, 3), np.uint8) for s in seeds])
        self.health.ok_at = time.monotonic()
        return Generated(images=images, seeds=seeds)

    async def progress(self, request_id: str) -> Progress | None:
        return self.progress_of.get(request_id)

    async def is_model_ready(self) -> bool:
        return True

    def pods(self) -> list[ScriptedBackend]:
        return [self]  # one pod that is its own backend

    async def load(self) -> None:
        return None

    async def refresh(self) -> None:
        return None

    def model_card(self) -> ModelCard | None:
        return self.card

    async def close(self) -> None:
        return None


def auth(key: str = API_KEYS[0]) -> dict[str, str]:
    return {"Authorization": key}


def body(**overrides: Any) -> dict[str, Any]:
    return {"prompt": "a cat", "image": IMAGE_B64, "num_inference_steps": 8, "seed": 120, **overrides}


async def predict(api: TestClient[web.Request, web.Application], data: Any, **kwargs: Any) -> tuple[int, Any, Any]:
    raw = data if isinstance(data, str | bytes) else json.dumps(data)
    kwargs.setdefault("headers", auth())
    payload = io.BytesIO(raw.encode() if isinstance(raw, str) else raw)  # a stream: large bodies too
    async with api.post("/predict", data=payload, **kwargs) as response:
        return response.status, await response.json(), response.headers
