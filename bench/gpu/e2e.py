"""End to end on the device: the real tritonserver (instance kind from the device) and the frontend.

The model repository is the shipped one with ``invariant_modules`` set to the design under test; the
load is ``bench.load`` (closed loop of clients posting ``/predict``), then the determinism check: one
request alone, then the same request amid concurrent different ones, base64 answers compared.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from bench import load
from bench.workload import Workload
from embedded.frontend_process import API_KEYS, Frontend
from embedded.triton_server import EmbeddedTriton, TritonStartError, copy_model_repository

PARAMETER = '{ key: "invariant_modules" value: { string_value: "auto" } }'
DYNAMIC_BATCHING = "dynamic_batching {"
GRAPHS = '{ key: "cuda_graphs" value: { string_value: "auto" } }'
KIND_MODEL = "instance_group [ { kind: KIND_MODEL } ]\n"


def model_statistics(http_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{http_url}/v2/models/sd_img2img/stats", timeout=10) as answer:  # noqa: S310
        stats = json.load(answer)["model_stats"][0]
    return {
        "inference_count": int(stats["inference_count"]),
        "execution_count": int(stats["execution_count"]),
        "batch_sizes": {str(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats["batch_stats"]},
    }


async def determinism(url: str, workload: Workload, neighbours: int) -> dict[str, Any]:
    """Request 0 alone, then amid ``neighbours`` different concurrent requests: same bytes?"""
    images = workload.png_b64()

    def body(i: int) -> str:
        return json.dumps(
            {
                "prompt": workload.prompt(i),
                "image": images[i % len(images)],
                "num_inference_steps": workload.num_inference_steps,
                "strength": workload.strength,
                "guidance_scale": workload.guidance_scale,
                "seed": workload.seed(i),
            }
        )

    async with aiohttp.ClientSession(headers={"Authorization": API_KEYS[0]}) as http:

        async def post(i: int) -> str:
            async with http.post(f"{url}/predict", data=body(i)) as response:
                answer = await response.json()
                if response.status != 200:
                    raise RuntimeError(f"/predict answered {response.status}: {answer}")
                return str(answer["result"][0])

        alone = await post(0)
        amid = await asyncio.gather(*(post(i) for i in [1, 2, 3, 0, *range(4, neighbours + 1)]))
    return {"identical": amid[3] == alone, "neighbours": neighbours, "result_chars": len(alone)}


def error_lines(log: str, limit: int = 3000) -> str:
    """The lines of a Triton log that say what failed (its tail is mostly the settings table)."""
    marks = ("E1", "E0", "rror", "Traceback", "No module", "cannot", "not found", "failed")
    lines = [line for line in log.splitlines() if any(mark in line for mark in marks) and "|" not in line[:3]]
    return "\n".join(lines)[-limit:]


def start_triton(
    model_path: Path, spec: str, python_path: tuple[str, ...], work: Path, instance_group: str, cuda_graphs: bool
) -> EmbeddedTriton:
    replacements = {PARAMETER: PARAMETER.replace('"auto"', json.dumps(spec))}
    replacements[GRAPHS] = GRAPHS.replace('"auto"', '"true"' if cuda_graphs else '"false"')
    if instance_group:
        replacements[DYNAMIC_BATCHING] = instance_group + DYNAMIC_BATCHING
    repository = copy_model_repository(Path(tempfile.mkdtemp(dir=work)), replacements)
    triton = EmbeddedTriton.on_free_ports(repository, model_path, ready_timeout_s=600)
    triton.python_path = python_path
    triton.log_file = work / "triton.log"
    triton.log_file.unlink(missing_ok=True)
    return triton.start()


def run(
    *,
    model_path: Path,
    spec: str,
    workload: Workload,
    python_path: tuple[str, ...],
    work: Path,
    record: Callable[[str, Any], None],
    cuda_graphs: bool = False,
    concurrencies: tuple[int, ...] = (1, 8, 32),
    requests_per_client: int = 3,
) -> None:
    """Start Triton and the frontend, then record ``e2e.*`` figures one by one."""
    started = time.monotonic()
    # Triton places the instance itself (KIND_GPU per visible GPU); if that fails, the model places
    # itself (KIND_MODEL: model.py takes the first GPU). The stub's path is the one stub_check chose.
    attempts = [("kind_gpu", "", python_path), ("kind_model", KIND_MODEL, python_path)]
    triton = None
    for name, group, path in attempts:
        try:
            triton = start_triton(model_path, spec, path, work, group, cuda_graphs)
            record("e2e.started_as", name)
            break
        except TritonStartError as exc:
            log = (work / "triton.log").read_text(errors="replace") if (work / "triton.log").exists() else ""
            record(f"e2e.failed.{name}", error_lines(log or str(exc)))
    if triton is None:
        raise RuntimeError("tritonserver did not start in any of the ways tried (e2e.failed)")
    frontend = Frontend(data_dir=work / "frontend", triton_grpc_url="")
    try:
        record("e2e.triton_ready_s", round(time.monotonic() - started, 1))
        frontend.triton_grpc_url = triton.grpc_url
        frontend.settings = {"SD_TRITON_TIMEOUT_S": "600", "SD_MAX_INFERENCE_STEPS": "500"}
        frontend.start(timeout_s=120)
        record("e2e.invariant_modules", spec)
        record("e2e.cuda_graphs", cuda_graphs)
        before = model_statistics(triton.http_url)
        for concurrency in concurrencies:
            # One warm-up round at this concurrency first, so no figure pays first-call costs.
            asyncio.run(load.run(frontend.url, API_KEYS[0], workload, concurrency, concurrency))
            figures = asyncio.run(
                load.run(frontend.url, API_KEYS[0], workload, concurrency, concurrency * requests_per_client)
            )
            record(f"e2e.c{concurrency}", figures)
            # Mixed settings, the same denoising work: step batching shares every forward across them.
            mixed = asyncio.run(
                load.run(
                    frontend.url, API_KEYS[0], workload, concurrency, concurrency * requests_per_client, mixed=True
                )
            )
            record(f"e2e.mixed.c{concurrency}", mixed)
        after = model_statistics(triton.http_url)
        record(
            "e2e.batches",
            {
                size: count - before["batch_sizes"].get(size, 0)
                for size, count in after["batch_sizes"].items()
                if count - before["batch_sizes"].get(size, 0)
            },
        )
        record("e2e.determinism", asyncio.run(determinism(frontend.url, workload, neighbours=7)))
    finally:
        frontend.stop()
        triton.stop()
        log = triton.log_tail()
        record("e2e.triton_log_tail", log[-4000:])
