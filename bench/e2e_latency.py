"""One tiny-model request through the frontend next to the same request sent to Triton directly.

Starts tritonserver and the frontend on free ports, sends the same request sequentially N times each
way, and prints p50/mean latency. ``make bench-latency``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
from PIL import Image

from embedded.frontend_process import API_KEYS, Frontend
from embedded.lifecycle import stop_on_signals
from embedded.tiny_model import build
from embedded.triton_calls import Caller, Img2Img
from embedded.triton_server import DEFAULT_MODEL_PATH, DEFAULT_MODEL_REPOSITORY, EmbeddedTriton
from frontend.generation import GenerationInput
from frontend.triton_backend import TritonBackend


def summary(name: str, seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    return f"| {name} | {statistics.median(ms):.1f} | {statistics.fmean(ms):.1f} | {ms[0]:.1f} | {ms[-1]:.1f} |"


async def frontend_latencies(url: str, body: dict, n: int) -> tuple[list[float], list[int]]:
    times, run_times = [], []
    data = json.dumps(body)
    async with aiohttp.ClientSession(headers={"Authorization": API_KEYS[0]}) as http:
        for _ in range(n):
            start = time.perf_counter()
            async with http.post(f"{url}/predict", data=data) as response:
                answer = await response.json()
            times.append(time.perf_counter() - start)
            run_times.append(answer["run_time_ms"])
    return times, run_times


async def grpc_latencies(url: str, job: GenerationInput, n: int) -> list[float]:
    backend = TritonBackend(url, "sd_img2img", 60)
    times = []
    try:
        for _ in range(n):
            start = time.perf_counter()
            await backend.generate(job)
            times.append(time.perf_counter() - start)
    finally:
        await backend.close()
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("-n", type=int, default=30)
    args = parser.parse_args(argv)
    stop_on_signals()  # SIGTERM, SIGHUP and Ctrl-C still run the cleanup that stops the servers

    build(DEFAULT_MODEL_PATH)
    image = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    body = {
        "prompt": "a photo of an astronaut riding a horse on mars.",
        "image": base64.b64encode(buffer.getvalue()).decode(),
        "num_inference_steps": args.steps,
        "strength": args.strength,
        "seed": 120,
    }
    job = GenerationInput(
        prompt=body["prompt"], image=image, strength=args.strength, num_inference_steps=args.steps, seed=120
    )
    triton = EmbeddedTriton.on_free_ports(DEFAULT_MODEL_REPOSITORY, DEFAULT_MODEL_PATH)
    with triton, tempfile.TemporaryDirectory() as tmp:
        frontend = Frontend(Path(tmp), triton.grpc_url).start()
        try:
            asyncio.run(frontend_latencies(frontend.url, body, 3))  # warm both paths
            caller = Caller(triton.http_url)
            http_times = []
            for _ in range(args.n):
                answer = caller.send(
                    Img2Img(
                        image,
                        prompt=body["prompt"],
                        strength=args.strength,
                        num_inference_steps=args.steps,
                        guidance_scale=7.5,
                        seed=120,
                    )
                )
                http_times.append(answer.seconds)
            grpc_times = asyncio.run(grpc_latencies(triton.grpc_url, job, args.n))
            e2e_times, run_times = asyncio.run(frontend_latencies(frontend.url, body, args.n))
        finally:
            frontend.stop()
    print(
        f"workload: {args.size}x{args.size} px, {args.steps} steps x strength {args.strength}, 1 image, "
        f"tiny model, CPU, {args.n} sequential requests each\n"
    )
    print("| path | p50 ms | mean ms | min ms | max ms |")
    print("|---|---|---|---|---|")
    print(summary("Triton direct, tritonclient HTTP (sync)", http_times))
    print(summary("Triton direct, tritonclient gRPC aio (the frontend's client)", grpc_times))
    print(summary("frontend POST /predict (base64 PNG in, PNG out)", e2e_times))
    print(f"\nfrontend-reported run_time_ms (Triton call + PNG encode) p50: {statistics.median(run_times):.0f} ms")
    overhead = statistics.median(e2e_times) - statistics.median(grpc_times)
    print(f"frontend overhead over direct gRPC, p50: {overhead * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
