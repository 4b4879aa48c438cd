"""Triton-side trouble seen through the frontend: a full queue. (A dead Python stub: /readyz in
tests/integration/test_busy_is_not_dead.py, recovery under load in tests/reliability/test_backend_faults.py.)"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from embedded.triton_server import EmbeddedTriton, copy_model_repository

from ..helpers.http import seed_body
from ..helpers.support import API_KEYS, Frontend, paced, start_triton

pytestmark = pytest.mark.integration


@pytest.fixture
def small_queue_triton(tmp_path: Path, tiny_model_path: Path) -> Iterator[EmbeddedTriton]:
    # Paced, so the first batch holds the model while the other requests arrive, on any machine.
    config = {"max_queue_size: 32": "max_queue_size: 1", **paced()}
    server = start_triton(copy_model_repository(tmp_path, config), tiny_model_path)
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
