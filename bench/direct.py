"""The limit: the same work through the model's own pipeline code, in one process, no serving.

Runs ``Img2ImgRunner`` (what ``model.py`` runs, with the same determinism mode) sequentially and at
each batch size, and reports images/s. Run alone (no servers busy) so it has the CPU to itself.
``--serve`` keeps the pipeline loaded and measures once per stdin line, so ``make bench`` can
interleave direct and end-to-end measurements (drift on a shared VM then hits both alike).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

MODEL_DIR = Path(__file__).resolve().parent.parent / "model_repository" / "sd_img2img" / "1"


def model_code_on_path() -> None:
    """The model's own modules (``img2img_pipeline``, ``batch_invariance``) importable, as in the stub."""
    if str(MODEL_DIR) not in sys.path:
        sys.path.insert(0, str(MODEL_DIR))


class Direct:
    def __init__(
        self, model_path: str, workload_args: dict[str, Any], determinism: str, invariant_modules: str = "auto"
    ) -> None:
        model_code_on_path()
        import torch

        from bench.workload import Workload
        from img2img_pipeline import Img2ImgRunner

        self.workload = Workload(**workload_args)
        on_gpu = torch.cuda.is_available()
        self.runner = Img2ImgRunner(
            model_path,
            device="cuda" if on_gpu else "cpu",
            dtype=torch.float16 if on_gpu else torch.float32,
            determinism=determinism,
            invariant_modules=invariant_modules,
        )
        self.images = self.workload.images()

    def request(self, i: int, workload: Any = None) -> Any:
        import numpy as np

        from img2img_requests import Defaults, Limits, check_inputs

        w = workload or self.workload
        family = self.runner.family
        # Every other request with a negative prompt. SDXL base encodes an empty one as zeros, a call of its
        # own: there the others get another non-empty one, so that one call still holds them all.
        negative = b"blurry" if i % 2 else b"lowres" if family.xl else b""
        arrays = {
            "prompt": np.array([[w.prompt(i).encode()]], dtype=object),
            "image": self.images[i % len(self.images)][np.newaxis],
            "negative_prompt": np.array([[negative]], dtype=object),
            "strength": np.array([[w.strength]], np.float32),
            "num_inference_steps": np.array([[w.num_inference_steps]], np.int32),
            "guidance_scale": np.array([[w.guidance_scale]], np.float32),
            "seed": np.array([[w.seed(i)]], np.int64),
        }
        return check_inputs(
            i, arrays, defaults=Defaults(), limits=Limits(), schedulers=self.runner.scheduler_names, family=family
        )

    def call(self, indices: list[int], workload: Any = None) -> Any:
        """One pipeline call of the workload's requests ``indices`` (in that order)."""
        from img2img_requests import PipelineCall

        requests = tuple(self.request(i, workload) for i in indices)
        return PipelineCall(requests[0].group_key, requests)

    def measure(self, batch: int, seconds: float, min_calls: int = 3) -> dict[str, float]:
        call = self.call(list(range(batch)))
        self.runner.run(call)  # warm
        calls: list[float] = []
        start, cpu_start = time.perf_counter(), time.process_time()
        while time.perf_counter() - start < seconds or len(calls) < min_calls:
            began = time.perf_counter()
            self.runner.run(call)
            calls.append(time.perf_counter() - began)
        elapsed = time.perf_counter() - start
        done = batch * len(calls)
        return {
            "images_per_s": done / elapsed,
            "latency_ms": 1000 * elapsed / len(calls),
            "p50_ms": 1000 * sorted(calls)[len(calls) // 2],
            "calls": len(calls),
            "cpu_ms_per_image": 1000 * (time.process_time() - cpu_start) / done,  # all threads of this process
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--workload", default="{}", help="Workload fields as JSON")
    parser.add_argument("--determinism", default="batch_invariant")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--serve", action="store_true", help='read {"batch": N, "seconds": S} lines from stdin')
    args = parser.parse_args(argv)
    direct = Direct(args.model_path, json.loads(args.workload), args.determinism)
    if args.serve:
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            ask = json.loads(line)
            print(json.dumps(direct.measure(int(ask["batch"]), float(ask["seconds"]))), flush=True)
        return 0
    print(json.dumps({str(batch): direct.measure(batch, args.seconds) for batch in args.batch_sizes}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
