"""Shared test helpers: free ports, images, starting tritonserver and the frontend as real processes."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from embedded import pods
from embedded.frontend_process import API_KEYS, WEBHOOK_SECRET, Frontend, start_all, stop_all
from embedded.triton_server import EmbeddedTriton, free_port

__all__ = [
    "request_body",
    "API_KEYS",
    "SEED_CURL_BODY",
    "WEBHOOK_SECRET",
    "Frontend",
    "PACE_MS",
    "PACE_S",
    "paced",
    "free_port",
    "random_image",
    "start_all",
    "start_triton",
    "stop_all",
    "TEST_LOG_DIR",
]

# The paced model (tests/conftest.py ``paced_triton``): every denoising step lasts at least this long
# (config.pbtxt min_step_ms), so a run of N steps is in the model for at least N * PACE_S on any machine.
PACE_MS = 40
PACE_S = PACE_MS / 1000


def paced(min_step_ms: int = PACE_MS) -> dict[str, str]:
    """The config.pbtxt change (for ``copy_model_repository``) that makes each step last ``min_step_ms``."""
    return pods.paced(min_step_ms)


# The hosted API's example body exactly as its doc prints it: two commas are missing.
SEED_CURL_BODY = """{
"prompt": "a photo of an astronaut riding a horse on mars.",
"image": "<BASE_64_STRING>"
"num_inference_steps": 50,
"guidance_scale": 7.5,
"num_images_per_prompt": 1,
"negative_prompt": "",
"seed": 120,
"file_url": "https://your-url.com/image.png"
"webhook_endpoint": "https://your-url.com"
}"""


def request_body(data: str | bytes) -> str | bytes | io.BytesIO:
    """A body for aiohttp: over 1 MiB as a stream (aiohttp warns that raw bytes that large block its loop)."""
    raw = data.encode() if isinstance(data, str) else data
    return io.BytesIO(raw) if len(raw) > 2**20 else data


def random_image(size: tuple[int, int] = (64, 64), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


# Every tritonserver a test session starts logs here; a failing session prints their tails (tests/conftest.py),
# so a CI run that lost the model shows why.
TEST_LOG_DIR = Path(__file__).resolve().parents[2] / ".build" / "test-logs"


def start_triton(
    model_repository: Path, model_path: Path, env: dict[str, str] | None = None, log_name: str = "triton"
) -> EmbeddedTriton:
    server = EmbeddedTriton.on_free_ports(model_repository, model_path, ready_timeout_s=240)
    server.env = env or {}
    TEST_LOG_DIR.mkdir(parents=True, exist_ok=True)
    server.log_file = TEST_LOG_DIR / f"{os.getpid()}-{log_name}-{server.grpc_port}.log"
    return server.start()
