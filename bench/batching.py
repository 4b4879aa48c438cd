"""What dynamic batching and each determinism mode cost or buy, measured on a real tritonserver.

For each model setting it starts tritonserver on free ports, sends the same closed-loop load at
several concurrencies and prints throughput, latency percentiles and the average batch Triton formed
(inference_count / execution_count from its statistics). Figures, not assertions: run it with
``make bench-batching``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from embedded.lifecycle import stop_on_signals
from embedded.tiny_model import build
from embedded.triton_calls import Caller, Img2Img
from embedded.triton_server import DEFAULT_MODEL_PATH, EmbeddedTriton, copy_model_repository

SETTINGS: dict[str, dict[str, str]] = {
    "batch_invariant (shipped)": {},
    "batched": {'string_value: "batch_invariant"': 'string_value: "batched"'},
    "per_image": {'string_value: "batch_invariant"': 'string_value: "per_image"'},
    "max_batch_size 1": {"max_batch_size: 8": "max_batch_size: 1"},
}


def load(caller: Caller, requests: list[Img2Img], concurrency: int) -> dict[str, float]:
    before = caller.stats()
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        answers = list(pool.map(caller.send, requests))
    elapsed = time.perf_counter() - start
    after = caller.stats()
    errors = [a for a in answers if a.status is not None]
    latencies = sorted(a.seconds * 1000 for a in answers if a.status is None)
    executions = after["execution_count"] - before["execution_count"]
    inferences = after["inference_count"] - before["inference_count"]
    return {
        "req_s": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies),
        "p95_ms": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
        "avg_batch": inferences / max(executions, 1),
        "errors": len(errors),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--requests-per-client", type=int, default=6)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = parser.parse_args(argv)
    stop_on_signals()  # SIGTERM, SIGHUP and Ctrl-C still run the cleanup that stops the servers

    build(DEFAULT_MODEL_PATH)
    rng = np.random.default_rng(0)
    print(
        f"workload: {args.size}x{args.size} px, num_inference_steps={args.steps}, strength={args.strength}"
        f" ({int(args.steps * args.strength)} effective), guidance 7.5, 1 image per request, tiny model, CPU\n"
    )
    print("| setting | concurrency | req/s | p50 ms | p95 ms | avg batch | errors |")
    print("|---|---|---|---|---|---|---|")
    for name in args.settings:
        with tempfile.TemporaryDirectory() as tmp:
            repository = copy_model_repository(Path(tmp), SETTINGS[name])
            server = EmbeddedTriton.on_free_ports(repository, DEFAULT_MODEL_PATH)
            with server:
                caller = Caller(server.http_url)
                image = rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
                warm = [
                    Img2Img(image, seed=i, num_inference_steps=args.steps, strength=args.strength) for i in range(4)
                ]
                load(caller, warm, 4)
                for concurrency in args.concurrency:
                    requests = [
                        Img2Img(image, seed=i, num_inference_steps=args.steps, strength=args.strength)
                        for i in range(max(concurrency * args.requests_per_client, 12))
                    ]
                    row = load(caller, requests, concurrency)
                    print(
                        f"| {name} | {concurrency} | {row['req_s']:.1f} | {row['p50_ms']:.0f} | {row['p95_ms']:.0f}"
                        f" | {row['avg_batch']:.2f} | {row['errors']:.0f} |",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
