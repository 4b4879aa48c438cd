"""gRPC vs HTTP from an asyncio client to Triton: the choice the frontend makes (it uses ``grpc.aio``).

The same requests at the same concurrency through ``tritonclient.grpc.aio`` and ``tritonclient.http.aio``
(binary tensors), as the frontend would send them: every input, one request per image.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio

from bench.stats import percentile
from bench.workload import Workload
from embedded.triton_calls import http_inputs
from frontend.generation import GenerationInput
from frontend.triton_backend import CHANNEL_ARGS, build_inputs

MODEL = "sd_img2img"


def _request(workload: Workload, i: int, image: np.ndarray) -> GenerationInput:
    return GenerationInput(
        image=image,
        prompt=workload.prompt(i),
        negative_prompt="blurry" if i % 2 else "",
        strength=workload.strength,
        num_inference_steps=workload.num_inference_steps,
        guidance_scale=workload.guidance_scale,
        seed=workload.seed(i),
    )


async def closed_loop_grpc(
    url: str, workload: Workload, concurrency: int, requests: int, model: str = MODEL
) -> list[float]:
    client = grpcaio.InferenceServerClient(url, channel_args=CHANNEL_ARGS)
    images = workload.images()

    def inputs(i: int) -> list[grpcclient.InferInput]:
        # The frontend's own request builder, so this side measures what the frontend sends.
        return build_inputs(_request(workload, i, images[i % len(images)]))

    try:
        return await _closed_loop(lambda i: client.infer(model, inputs(i)), concurrency, requests)
    finally:
        await client.close()


async def closed_loop_http(
    url: str, workload: Workload, concurrency: int, requests: int, model: str = MODEL
) -> list[float]:
    client = httpaio.InferenceServerClient(url, conn_limit=concurrency)
    images = workload.images()
    outputs = [httpclient.InferRequestedOutput(name, binary_data=True) for name in ("images", "seeds")]

    def inputs(i: int) -> list[httpclient.InferInput]:
        return http_inputs(_request(workload, i, images[i % len(images)]))  # binary tensors

    try:
        return await _closed_loop(lambda i: client.infer(model, inputs(i), outputs=outputs), concurrency, requests)
    finally:
        await client.close()


async def _closed_loop(call: Any, concurrency: int, requests: int) -> list[float]:
    latencies: list[float] = []
    counter = iter(range(requests))

    async def worker() -> None:
        for i in counter:
            start = time.perf_counter()
            result = await call(i)
            if result.as_numpy("images") is None:
                raise RuntimeError("no images in the answer")
            latencies.append(time.perf_counter() - start)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def compare(
    grpc_url: str, http_url: str, workload: Workload, levels: list[int], requests: int
) -> list[dict[str, Any]]:
    """Rows of protocol x concurrency; protocols alternate per level so drift hits both alike."""
    rows = []
    for level in levels:
        for protocol, run, url in (("grpc", closed_loop_grpc, grpc_url), ("http", closed_loop_http, http_url)):
            await run(url, workload, level, level)  # warm the connection
            start = time.perf_counter()
            latencies = await run(url, workload, level, max(requests, 4 * level))
            elapsed = time.perf_counter() - start
            ms = [s * 1000 for s in latencies]
            rows.append(
                {
                    "protocol": protocol,
                    "concurrency": level,
                    "req_s": len(ms) / elapsed,
                    "p50_ms": percentile(ms, 0.5),
                    "p95_ms": percentile(ms, 0.95),
                }
            )
    return rows
