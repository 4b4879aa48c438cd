"""The end-to-end tests' helpers against a real frontend: the seed's request body, a POST, a poll."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Collection
from typing import Any

import aiohttp

from .support import Frontend, request_body


def seed_body(image_b64: str, **overrides: Any) -> dict[str, Any]:
    """The seed's example with the commas fixed; fast settings for the tiny model unless overridden."""
    body: dict[str, Any] = {
        "prompt": "a photo of an astronaut riding a horse on mars.",
        "image": image_b64,
        "num_inference_steps": 50,
        "guidance_scale": 7.5,
        "num_images_per_prompt": 1,
        "negative_prompt": "",
        "seed": 120,
    }
    body.update(overrides)
    return body


async def post(http: aiohttp.ClientSession, frontend: Frontend, body: Any, **kwargs: Any) -> tuple[int, Any, Any]:
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    async with http.post(f"{frontend.url}/predict", data=request_body(data), **kwargs) as response:
        return response.status, await response.json(), response.headers


async def wait_for_run(
    http: aiohttp.ClientSession, frontend: Frontend, run_id: str, status: str | Collection[str], timeout_s: float = 30
) -> dict:
    """Poll ``GET /runs/{run_id}`` until its status is ``status`` (or one of them); its view."""
    wanted = {status} if isinstance(status, str) else set(status)
    deadline = time.monotonic() + timeout_s
    view: dict = {}
    while time.monotonic() < deadline:
        async with http.get(f"{frontend.url}/runs/{run_id}") as response:
            view = await response.json()
        if view.get("status") in wanted:
            return view
        await asyncio.sleep(0.1)
    raise AssertionError(f"run {run_id} never reached {sorted(wanted)}: {view}")
