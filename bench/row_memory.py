"""Memory per UNet row in flight: peak RSS of one forward at two row counts, each in a fresh process.

``python -m bench.row_memory [--model-path .models/sd15-random] [--size 512]`` (``make model-sd15`` first).
What ``max_rows_in_flight`` costs beyond the weights: (peak at ``--rows-high`` - peak at ``--rows-low``)
per added row, for plain batching and for the CPU's invariance plan. CPU only (fp32); a GPU is not measured.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from bench.direct import MODEL_DIR
from embedded.lifecycle import stop_on_signals

PROBE = """
import json, resource, sys, types, torch
from diffusers import UNet2DConditionModel
path, rows, size, plan = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
sys.path.insert(0, sys.argv[5])
unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet").eval()
if plan:
    from batch_invariance import apply_plan, parse_plan
    pipe = types.SimpleNamespace(unet=unet, text_encoder=torch.nn.Sequential(), vae=torch.nn.Sequential())
    apply_plan(pipe, parse_plan(plan, "cpu"))
side = size // 8
with torch.inference_mode():
    unet(torch.randn(rows, unet.config.in_channels, side, side), torch.full((rows,), 500.0),
         torch.randn(rows, 77, unet.config.cross_attention_dim), return_dict=False)
print(json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def peak_mib(model_path: Path, rows: int, size: int, plan: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(model_path), str(rows), str(size), plan, str(MODEL_DIR)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(json.loads(done.stdout.strip().splitlines()[-1])["peak_mib"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model-path", type=Path, default=Path(".models/sd15-random"))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rows-low", type=int, default=2)
    parser.add_argument("--rows-high", type=int, default=6)
    args = parser.parse_args(argv)
    stop_on_signals()  # any stop signal ends the probe in flight too (subprocess.run kills it)
    for label, plan in (("batched", ""), ("CPU invariance plan", "conv2d:1,linear:1,attention:1")):
        low = peak_mib(args.model_path, args.rows_low, args.size, plan)
        high = peak_mib(args.model_path, args.rows_high, args.size, plan)
        per_row = (high - low) / (args.rows_high - args.rows_low)
        print(
            f"{label}: {per_row:.0f} MiB per row at {args.size} px (peak {low:.0f} MiB at {args.rows_low} rows,"
            f" {high:.0f} MiB at {args.rows_high})",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
