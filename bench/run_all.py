"""``make bench``: every measurement side by side in one run, written to docs/benchmarks.md with plots.

1. the limit: the model's pipeline code called directly, sequentially and batched (no serving);
2. perf_analyzer against Triton (real inputs, mixed parameters), concurrency sweep;
3. end-to-end load through the frontend, same sweep, with the per-request time split;
4. batching off (max_batch_size 1) and a max_queue_delay sweep.

On a CUDA machine with real weights (one command, see docs/benchmarks.md):
    make bench BENCH_ARGS="--model-path /path/to/stable-diffusion-v1-5 --size 512 --steps 50 --strength 0.8"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import load, perf_analyzer
from bench.report import write_report
from bench.workload import Workload
from embedded.frontend_process import API_KEYS, Frontend
from embedded.tiny_model import build
from embedded.triton_calls import Caller
from embedded.triton_server import DEFAULT_MODEL_PATH, EmbeddedTriton, copy_model_repository

ROOT = Path(__file__).resolve().parent.parent


def start_triton(tmp: Path, model_path: str, replacements: dict[str, str]) -> EmbeddedTriton:
    repository = copy_model_repository(tmp / f"repo-{len(list(tmp.iterdir()))}", replacements)
    return EmbeddedTriton.on_free_ports(repository, model_path, ready_timeout_s=900).start()


def direct(model_path: str, workload: Workload, determinism: str, seconds: float) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "bench.direct", "--model-path", model_path, "--workload", json.dumps(asdict(workload)),
        "--determinism", determinism, "--seconds", str(seconds), "--batch-sizes", "1", "2", "4", "8",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=True, timeout=900)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def sweep(grpc_url: str, data: Path, tmp: Path, levels: list[int], window: int) -> list[dict[str, Any]]:
    rows = []
    for level in levels:
        row = perf_analyzer.run(grpc_url, data, level, max(window, 4 * level), tmp / f"pa-{level}.csv")
        print(f"  perf_analyzer c={level}: {row['req_s']:.1f} req/s, p50 {row['p50_ms']:.0f} ms", flush=True)
        rows.append(row)
    return rows


def server_split(before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
    """Triton's own per-request averages (ms) between two statistics snapshots."""
    count = max(1, after["success_count"] - before["success_count"])
    phases = {"queue": ("queue",), "compute": ("compute_input", "compute_infer", "compute_output")}
    split = {
        name: sum(after[f"{p}_ns"] - before[f"{p}_ns"] for p in parts) / count / 1e6 for name, parts in phases.items()
    }
    split["total"] = (after["success_ns"] - before["success_ns"]) / count / 1e6
    return split


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model-path", default=str(DEFAULT_MODEL_PATH))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--window", type=int, default=40, help="requests per perf_analyzer measurement window")
    parser.add_argument("--delays-us", type=int, nargs="+", default=[0, 5000, 20000, 60000])
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)

    started = time.monotonic()
    if Path(args.model_path) == DEFAULT_MODEL_PATH:
        build(DEFAULT_MODEL_PATH)
    workload = Workload(size=args.size, num_inference_steps=args.steps, strength=args.strength)
    perf_analyzer.ensure_installed()
    results: dict[str, Any] = {"workload": workload.describe(), "machine": f"{platform.node()} {platform.processor()}"}

    print("1/4 the limit: direct pipeline calls", flush=True)
    results["direct"] = {mode: direct(args.model_path, workload, mode, 6.0) for mode in ("batch_invariant", "batched")}

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = perf_analyzer.write_input_data(tmp / "input.json", workload)

        print("2/4 perf_analyzer and 3/4 end-to-end, shipped config", flush=True)
        triton = start_triton(tmp, args.model_path, {})
        try:
            results["perf_shipped"] = sweep(triton.grpc_url, data, tmp, args.concurrency, args.window)
            frontend = Frontend(tmp / "frontend", triton.grpc_url, {"SD_ALLOW_PRIVATE_NETWORKS": ""}).start()
            stats = Caller(triton.http_url)
            try:
                asyncio.run(load.run(frontend.url, API_KEYS[0], workload, 2, 8))  # warm
                e2e = []
                for level in args.concurrency:
                    before = stats.stats()
                    row = asyncio.run(load.run(frontend.url, API_KEYS[0], workload, level, max(24, 6 * level)))
                    row["triton_server_ms"] = server_split(before, stats.stats())
                    print(
                        f"  end-to-end c={level}: {row['images_s']:.1f} img/s, p50 {row['p50_ms']:.0f} ms", flush=True
                    )
                    e2e.append(row)
                results["e2e"] = e2e
            finally:
                frontend.stop()
        finally:
            triton.stop()

        print("4/4 batching off, and the queue-delay sweep", flush=True)
        triton = start_triton(tmp, args.model_path, {"max_batch_size: 8": "max_batch_size: 1"})
        try:
            results["perf_no_batching"] = sweep(triton.grpc_url, data, tmp, args.concurrency, args.window)
        finally:
            triton.stop()
        results["delay_sweep"] = {}
        for delay in args.delays_us:
            triton = start_triton(
                tmp, args.model_path, {"max_queue_delay_microseconds: 20000": f"max_queue_delay_microseconds: {delay}"}
            )
            try:
                results["delay_sweep"][str(delay)] = sweep(triton.grpc_url, data, tmp, [1, 2, 8], args.window)
            finally:
                triton.stop()

    results["elapsed_s"] = time.monotonic() - started
    args.output.parent.mkdir(parents=True, exist_ok=True)
    (args.output.parent / "benchmarks.json").write_text(json.dumps(results, indent=1))
    write_report(results, args.output)
    print(f"wrote {args.output} in {results['elapsed_s'] / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
