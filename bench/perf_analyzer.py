"""perf_analyzer against the Triton model: installs what the bundled binary needs, writes real inputs.

The ``tritonclient==2.51.0`` manylinux wheel ships ``bin/perf_analyzer``; it needs Debian's
``libb64-0d`` and ``libcudart.so.12`` (pip ``nvidia-cuda-runtime-cu12``) even on a CPU machine.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from bench.workload import Workload
from embedded import prereqs

CUDA_RUNTIME = "nvidia-cuda-runtime-cu12==12.9.79"


def binary() -> Path:
    found = Path(sys.executable).parent / "perf_analyzer"
    if not found.exists():
        raise RuntimeError(f"perf_analyzer not found at {found}: install tritonclient==2.51.0 in this venv")
    return found


def cuda_runtime_dir() -> Path:
    return Path(sysconfig.get_paths()["purelib"]) / "nvidia" / "cuda_runtime" / "lib"


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(cuda_runtime_dir()), env.get("LD_LIBRARY_PATH")) if p)
    return env


def missing_libraries() -> list[str]:
    ldd = shutil.which("ldd") or "/usr/bin/ldd"
    out = subprocess.run([ldd, str(binary())], capture_output=True, text=True, env=environment(), check=False)
    return [line.split()[0] for line in out.stdout.splitlines() if "not found" in line]


def ensure_installed() -> None:
    """Install libb64-0d (``embedded.prereqs``) and the CUDA runtime wheel if the binary cannot load them."""
    missing = missing_libraries()
    if any(lib.startswith("libcudart") for lib in missing):
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", CUDA_RUNTIME], check=True)
    if any(lib.startswith("libb64") for lib in missing_libraries()):
        prereqs.ensure("perf-analyzer")  # Debian's libb64-0d, as `make perf-analyzer` installs it
    still = missing_libraries()
    if still:
        raise RuntimeError(f"perf_analyzer still misses {still}")


def write_input_data(path: Path, workload: Workload, mixed: bool = False) -> Path:
    """Every input, real images, parameters varied over the entries (perf_analyzer sends them round-robin)."""
    entries = []
    for i, image in enumerate(workload.images()):
        settings = workload.settings(i, mixed)
        entries.append(
            {
                "prompt": {"content": [workload.prompt(i)], "shape": [1]},
                "image": {"content": image.reshape(-1).tolist(), "shape": list(image.shape)},
                "negative_prompt": {"content": ["blurry" if i % 2 else ""], "shape": [1]},
                "strength": {"content": [settings["strength"]], "shape": [1]},
                "num_inference_steps": {"content": [settings["num_inference_steps"]], "shape": [1]},
                "guidance_scale": {"content": [settings["guidance_scale"]], "shape": [1]},
                "num_images_per_prompt": {"content": [1], "shape": [1]},
                "seed": {"content": [workload.seed(i)], "shape": [1]},
                "scheduler": {"content": [settings["scheduler"]], "shape": [1]},
            }
        )
    path.write_text(json.dumps({"data": entries}))
    return path


def run(
    grpc_url: str,
    input_data: Path,
    concurrency: int,
    requests_per_window: int,
    out_csv: Path,
    model: str = "sd_img2img",
) -> dict:
    """One concurrency level; returns throughput, client percentiles and Triton's server-side split (ms).

    A 2-core machine is noisy: when three windows do not agree within 50%, measure again with windows
    twice as long and a 100% band rather than report nothing."""
    try:
        return _run(grpc_url, input_data, concurrency, requests_per_window, out_csv, model, stability=50)
    except RuntimeError:
        return _run(grpc_url, input_data, concurrency, 2 * requests_per_window, out_csv, model, stability=100)


def _run(
    grpc_url: str,
    input_data: Path,
    concurrency: int,
    requests_per_window: int,
    out_csv: Path,
    model: str,
    stability: int,
) -> dict:
    command = [
        str(binary()), "-m", model, "-u", grpc_url, "-i", "grpc", "--input-data", str(input_data),
        "--concurrency-range", f"{concurrency}:{concurrency}", "--measurement-mode", "count_windows",
        "--measurement-request-count", str(requests_per_window), "--max-trials", "10",
        "--stability-percentage", str(stability),
        "-f", str(out_csv),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=environment(), timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"perf_analyzer failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    with out_csv.open() as handle:
        row = next(csv.DictReader(handle))
    us = {key: float(value) for key, value in row.items() if value not in ("", None)}
    return {
        "concurrency": concurrency,
        "req_s": us["Inferences/Second"],
        "p50_ms": us["p50 latency"] / 1000,
        "p95_ms": us["p95 latency"] / 1000,
        "p99_ms": us["p99 latency"] / 1000,
        "queue_ms": us["Server Queue"] / 1000,
        "compute_ms": (us["Server Compute Input"] + us["Server Compute Infer"] + us["Server Compute Output"]) / 1000,
        "client_send_recv_ms": (us["Client Send"] + us["Client Recv"]) / 1000,
    }


def main(argv: list[str] | None = None) -> int:
    """perf_analyzer against a running tritonserver (``make triton``), e.g.
    ``python -m bench.perf_analyzer --url 127.0.0.1:8001 --concurrency 1,8 --mixed``."""
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--url", default="127.0.0.1:8001", help="Triton's gRPC address")
    parser.add_argument("--model", default="sd_img2img")
    parser.add_argument("--concurrency", default="1,8", help="comma-separated levels")
    parser.add_argument("--mixed", action="store_true", help="steps x strength, guidance and scheduler per request")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--requests", type=int, default=48, help="requests per measurement window")
    args = parser.parse_args(argv)
    ensure_installed()
    with tempfile.TemporaryDirectory() as tmp:
        data = write_input_data(Path(tmp) / "input.json", Workload(size=args.size), mixed=args.mixed)
        for level in (int(c) for c in args.concurrency.split(",")):
            result = run(args.url, data, level, args.requests, Path(tmp) / f"c{level}.csv", args.model)
            print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
