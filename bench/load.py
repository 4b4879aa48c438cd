"""End-to-end load through the frontend: a closed loop of ``concurrency`` clients posting /predict."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Any

import aiohttp

from bench.stats import percentile
from bench.workload import Workload


async def run(
    url: str,
    api_key: str,
    workload: Workload,
    concurrency: int,
    requests: int,
    mixed: bool = False,
    keep_samples: bool = False,
) -> dict[str, Any]:
    """``mixed``: steps x strength, guidance and scheduler drawn per request (``Workload.settings``);
    ``keep_samples``: the latencies themselves too (``samples_ms``), for percentiles over several runs."""
    images = workload.png_b64()
    bodies = [
        json.dumps(
            {
                "prompt": workload.prompt(i),
                "image": images[i % len(images)],
                **workload.settings(i, mixed),
                "negative_prompt": "blurry" if i % 2 else "",
                "seed": workload.seed(i),
            }
        )
        for i in range(max(len(images), 24 if mixed else 0))
    ]
    latencies: list[float] = []
    timings: list[dict[str, float]] = []
    errors: dict[int, int] = {}
    counter = iter(range(requests))

    async def client(http: aiohttp.ClientSession) -> None:
        for i in counter:
            start = time.perf_counter()
            async with http.post(f"{url}/predict", data=bodies[i % len(bodies)]) as response:
                answer = await response.json()
            if response.status == 200:
                latencies.append(time.perf_counter() - start)
                timings.append(answer.get("timings_ms", {}))
            else:
                errors[response.status] = errors.get(response.status, 0) + 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    headers = {"Authorization": api_key, "Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    ms = [s * 1000 for s in latencies]
    figures: dict[str, Any] = {
        "concurrency": concurrency,
        "requests": requests,
        "answered": len(latencies),
        "images_s": len(latencies) / elapsed,
        # None when every request failed: the run still reports, and its errors say why.
        "p50_ms": percentile(ms, 0.50) if ms else None,
        "p95_ms": percentile(ms, 0.95) if ms else None,
        "p99_ms": percentile(ms, 0.99) if ms else None,
        "errors": errors,
        "timings_ms": {
            key: statistics.median(values)
            for key in ("decode", "triton", "encode")
            if (values := [t[key] for t in timings if key in t])
        },
    }
    if keep_samples:
        figures["samples_ms"] = ms
    return figures
