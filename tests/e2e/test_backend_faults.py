"""Triton-side trouble seen through the frontend: a full queue and a dead Python stub."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from embedded.triton_server import EmbeddedTriton, copy_model_repository

from ..support import API_KEYS, Frontend, start_triton
from .test_predict import seed_body

pytestmark = pytest.mark.integration


@pytest.fixture
def small_queue_triton(tmp_path: Path, tiny_model_path: Path) -> Iterator[EmbeddedTriton]:
    server = start_triton(copy_model_repository(tmp_path, {"max_queue_size: 32": "max_queue_size: 1"}), tiny_model_path)
    yield server
    server.stop()


async def test_full_triton_queue_is_503_with_retry_after(
    small_queue_triton: EmbeddedTriton, make_frontend: Callable[..., Frontend], image_b64: str
) -> None:
    frontend = make_frontend(triton_url=small_queue_triton.grpc_url)
    body = json.dumps(seed_body(image_b64, num_inference_steps=60, strength=1.0))

    async def one(http: aiohttp.ClientSession) -> tuple[int, dict, str | None]:
        async with http.post(f"{frontend.url}/predict", data=body) as response:
            return response.status, await response.json(), response.headers.get("Retry-After")

    async with aiohttp.ClientSession(headers={"Authorization": API_KEYS[0]}) as http:
        answers = await asyncio.gather(*(one(http) for _ in range(14)))
    statuses = sorted(status for status, _, _ in answers)
    assert 200 in statuses and 503 in statuses, statuses
    for status, answer, retry_after in answers:
        if status == 503:
            assert answer["error"]["code"] == "backend_unavailable" and "queue" in answer["error"]["message"]
            assert retry_after is not None and int(retry_after) > 0


async def test_readyz_turns_unready_when_the_python_stub_dies(
    tmp_path: Path, tiny_model_path: Path, make_frontend: Callable[..., Frontend]
) -> None:
    from embedded.triton_server import DEFAULT_MODEL_REPOSITORY

    triton = start_triton(DEFAULT_MODEL_REPOSITORY, tiny_model_path)
    try:
        frontend = make_frontend(triton_url=triton.grpc_url, SD_READYZ_CACHE_S="0")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{frontend.url}/readyz") as response:
                assert response.status == 200
            assert triton.process is not None
            stubs = subprocess.run(
                ["pgrep", "-f", "-P", str(triton.process.pid), "triton_python_backend_stub"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            assert stubs
            for pid in stubs:
                os.kill(int(pid), signal.SIGKILL)
            await asyncio.sleep(1)
            # Triton's own readiness may still say 200 here; the canary inference does not.
            async with http.get(f"{frontend.url}/readyz") as response:
                assert response.status == 503
                assert (await response.json())["error"]["code"] == "backend_unavailable"
    finally:
        triton.stop(timeout_s=0)  # a server whose stub died never finishes a graceful stop
