"""The limit: the same work through the model's own pipeline code, in one process, no serving.

Runs ``Img2ImgRunner`` (what ``model.py`` runs, with the same determinism mode) sequentially and at
each batch size, and reports images/s. Run alone (no servers) so it has the CPU to itself.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

MODEL_DIR = Path(__file__).resolve().parent.parent / "model_repository" / "sd_img2img" / "1"


def measure(model_path: str, workload_args: dict, determinism: str, batch_sizes: list[int], seconds: float) -> dict:
    sys.path.insert(0, str(MODEL_DIR))
    import numpy as np
    import torch

    from bench.workload import Workload
    from img2img_pipeline import Img2ImgRunner
    from img2img_requests import Defaults, Limits, PipelineCall, check_inputs

    workload = Workload(**workload_args)
    on_gpu = torch.cuda.is_available()
    runner = Img2ImgRunner(
        model_path,
        device="cuda" if on_gpu else "cpu",
        dtype=torch.float16 if on_gpu else torch.float32,
        determinism=determinism,
    )
    images = workload.images()

    def request(i: int):  # type: ignore[no-untyped-def]
        arrays = {
            "prompt": np.array([[workload.prompt(i).encode()]], dtype=object),
            "image": images[i % len(images)][np.newaxis],
            "strength": np.array([[workload.strength]], np.float32),
            "num_inference_steps": np.array([[workload.num_inference_steps]], np.int32),
            "guidance_scale": np.array([[workload.guidance_scale]], np.float32),
            "seed": np.array([[workload.seed(i)]], np.int64),
        }
        return check_inputs(i, arrays, defaults=Defaults(), limits=Limits(), schedulers=runner.scheduler_names)

    results = {}
    for batch in batch_sizes:
        call = PipelineCall(request(0).group_key, tuple(request(i) for i in range(batch)))
        runner.run(call)  # warm
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or done < 3 * batch:
            runner.run(call)
            done += batch
        elapsed = time.perf_counter() - start
        results[str(batch)] = {"images_per_s": done / elapsed, "latency_ms": 1000 * elapsed / (done / batch)}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--workload", default="{}", help="Workload fields as JSON")
    parser.add_argument("--determinism", default="batch_invariant")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args(argv)
    print(
        json.dumps(
            measure(args.model_path, json.loads(args.workload), args.determinism, args.batch_sizes, args.seconds)
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
