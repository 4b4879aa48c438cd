"""The step scheduler's cost against a plain pipeline call, in one process (no Triton, no IPC).

The same requests (uniform settings, so one pipeline call can take them all) run either as one
``Img2ImgRunner.run`` call or through ``StepEngine`` + ``StepDenoiser`` admitted together, at 1 and at
8 requests; rounds alternate the two. The figure is engine time / pipeline time (1.00: no cost) and ms
per denoising step of the batch. Both use the shipped determinism plan of this device.

    python -m bench.step_cost [--model-path .models/tiny-sd-img2img] [--rounds 7]   # writes docs/step-cost.md
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.direct import model_code_on_path
from bench.stats import spread, table
from embedded.lifecycle import stop_on_signals
from embedded.triton_server import DEFAULT_MODEL_PATH

STEPS, STRENGTH = 12, 0.5  # 6 denoising steps, as bench/step_batching's uniform traffic


def timed(work: Callable[[], Any]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def compare(runner: Any, denoiser: Any, requests: list[Any], rounds: int) -> dict[str, Any]:
    """One pipeline call over ``requests`` against the step engine running them admitted together."""
    from engine import Callbacks, StepEngine

    from img2img_requests import PipelineCall

    call = PipelineCall(requests[0].group_key, tuple(requests))
    forwards: list[int] = []

    def pipeline() -> None:
        runner.run(call)

    def engine() -> None:
        callbacks = Callbacks(
            answer=lambda job, images: None,
            fail=lambda job, message: print(message),
            cancelled=lambda job: None,
            on_tick=lambda jobs, rows: forwards.append(rows),
        )
        ticks = StepEngine(denoiser, max_rows=64, callbacks=callbacks)
        for request in requests:
            ticks.submit(request, None)
        while ticks.planner.jobs:
            ticks.tick()

    pipeline()  # warm: first calls build caches
    engine()
    ratios, pipe_ms, engine_ms = [], [], []
    for r in range(rounds):
        spent = {work: timed(work) for work in ((pipeline, engine) if r % 2 == 0 else (engine, pipeline))}
        pipe_ms.append(1000 * spent[pipeline])
        engine_ms.append(1000 * spent[engine])
        ratios.append(spent[engine] / spent[pipeline])
    return {
        "ratio": spread(ratios),
        "pipeline_ms": spread(pipe_ms),
        "engine_ms": spread(engine_ms),
        "forwards": len(forwards) // (rounds + 1),
    }


def measure(model_path: str, counts: list[int], rounds: int, size: int) -> dict[str, Any]:
    model_code_on_path()
    import torch
    from denoiser import StepDenoiser

    from img2img_pipeline import Img2ImgRunner
    from img2img_requests import Img2ImgRequest

    runner = Img2ImgRunner(model_path, device="cpu", dtype=torch.float32)
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    denoiser = StepDenoiser(runner.pipe, runner.schedulers)
    results: dict[str, Any] = {
        "plan": runner.plan.spec() if runner.plan else "none",
        "steps": int(STEPS * STRENGTH),
        "size": size,
    }
    for count in counts:
        requests = [
            Img2ImgRequest(i, f"prompt {i % 3}", "", image, STRENGTH, STEPS, 7.5, 1, i, "") for i in range(count)
        ]
        results[str(count)] = compare(runner, denoiser, requests, rounds)
        print(f"{count} request(s): engine / pipeline {results[str(count)]['ratio']['median']:.2f}", flush=True)
    return results


def render(results: dict[str, Any]) -> str:
    def cell(s: dict[str, float], fmt: str = ".0f") -> str:
        return f"{s['median']:{fmt}} ({s['min']:{fmt}}-{s['max']:{fmt}})"

    counts = [key for key in results if key.isdigit()]
    rows = [
        [
            count,
            cell(results[count]["pipeline_ms"]),
            cell(results[count]["engine_ms"]),
            f"{results[count]['engine_ms']['median'] / results[count]['forwards']:.1f}",
            cell(results[count]["ratio"], ".2f"),
        ]
        for count in counts
    ]
    return "\n".join(
        [
            f"Step scheduler against one pipeline call, {results['size']} px, {results['steps']} denoising steps"
            f" under guidance, plan {results['plan']}; median (min-max) over alternating rounds:",
            "",
            *table(
                ["requests", "pipeline call ms", "step engine ms", "engine ms per UNet forward", "engine / pipeline"],
                rows,
            ),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model-path", default=str(DEFAULT_MODEL_PATH))
    parser.add_argument("--counts", default="1,8")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("docs/step-cost.md"), help="the markdown (and .json beside)")
    args = parser.parse_args(argv)
    stop_on_signals()
    results = measure(args.model_path, [int(c) for c in args.counts.split(",")], args.rounds, args.size)
    text = render(results)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        "# The step scheduler's cost\n\nWritten by `python -m bench.step_cost` (part of `make bench`).\n\n" + text
    )
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
