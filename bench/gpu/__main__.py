"""The GPU report: full-size SD 1.5 on the device, measured in one command (``make gpu-report``).

Phases, in order of value, each skipped when the time budget would not let it finish:

1. ``direct``: the model's own runner at batch 1 and 8, ``batched`` and ``batch_invariant``;
2. ``map``: the batch-variance map (``bench/gpu/variance.py``), default and pinned kernels;
3. ``designs``: determinism candidates from the map, bytes compared alone vs. every position of a
   batch, then images/s at batch 1 and 8; the fastest exact one is chosen;
4. ``speed``: CUDA graphs and channels_last on the chosen design (each kept only where exact and
   faster); batch sizes 2, 4, 16;
5. ``e2e``: tritonserver + frontend with the chosen design (and graphs, if kept), concurrency 1 and 8,
   and the determinism check through the service.

Every figure is written to ``--out/gpu-report.json`` as soon as it is measured, so a run cut off
still brings back what it measured. ``python -m bench.gpu.report`` turns JSONs into ``docs/gpu.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.workload import Workload
from embedded.lifecycle import stop_on_signals

PHASES = ("direct", "map", "designs", "speed", "e2e")
# The default hosted-API request: 512x512, 50 steps at strength 0.8 (40 denoising steps), guidance 7.5.
FULL = {"size": 512, "num_inference_steps": 50, "strength": 0.8, "guidance_scale": 7.5, "variants": 8}
# The bytes check runs fewer steps: invariance is a property of each step's kernels.
CHECK_STEPS = 10


class Report:
    """A JSON of figures, rewritten (atomically) after every measurement."""

    def __init__(self, path: Path, budget_s: float) -> None:
        self.path = path
        self.started = time.monotonic()
        self.budget_s = budget_s
        self.data: dict[str, Any] = {"schema": 1, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.data["argv"] = sys.argv[1:]
        self.write()

    def record(self, key: str, value: Any) -> None:
        """``a.b.c`` sets a nested value; printed too, so the console shows progress."""
        node = self.data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
        self.data["elapsed_s"] = round(time.monotonic() - self.started, 1)
        self.write()
        text = json.dumps(value) if not isinstance(value, str) else value
        print(f"[{self.data['elapsed_s']:7.1f}s] {key} = {text[:300]}", flush=True)

    def write(self) -> None:
        staging = self.path.with_suffix(".tmp")
        staging.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(staging, self.path)

    def left_s(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)

    def phase(self, name: str, needs_s: float, body: Callable[[], None]) -> None:
        if self.left_s() < needs_s:
            self.record(f"skipped.{name}", f"{self.left_s():.0f} s left, needs about {needs_s:.0f} s")
            return
        began = time.monotonic()
        try:
            body()
        except Exception:  # a phase that breaks leaves its traceback, the next one still runs
            self.record(f"errors.{name}", traceback.format_exc()[-3000:])
        self.record(f"phase_s.{name}", round(time.monotonic() - began, 1))


def environment() -> dict[str, Any]:
    import diffusers
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "diffusers": diffusers.__version__,
        "cpu_count": os.cpu_count(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1)}
        info["multiprocessors"] = props.multi_processor_count
        try:
            smi = subprocess.run(
                [shutil.which("nvidia-smi") or "nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            info["driver"] = smi.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            info["driver"] = None
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model-path", type=Path, required=True, help="diffusers folder (built if missing)")
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu-report.json and logs")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma list of {', '.join(PHASES)}")
    parser.add_argument("--budget-s", type=float, default=330.0, help="stop starting phases after this")
    parser.add_argument("--workload", default=json.dumps(FULL), help="Workload fields as JSON")
    parser.add_argument("--seconds", type=float, default=4.0, help="least time per throughput figure")
    parser.add_argument("--stub-python-path", default="", help="folders put first on the Python stub's path")
    parser.add_argument("--design", default="", help="invariant_modules for e2e/speed when designs did not run")
    parser.add_argument("--cuda-graphs", action="store_true", help="e2e with cuda_graphs when speed did not run")
    args = parser.parse_args(argv)
    stop_on_signals()  # SIGTERM, SIGHUP and Ctrl-C still run the cleanup that stops the servers
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(phases) - set(PHASES)
    if unknown:
        parser.error(f"--phases: unknown {sorted(unknown)} (known: {', '.join(PHASES)})")
    args.out.mkdir(parents=True, exist_ok=True)
    report = Report(args.out / "gpu-report.json", args.budget_s)
    report.record("environment", environment())
    workload_args = json.loads(args.workload)
    report.record("workload", Workload(**workload_args).describe())

    from bench.gpu import measure

    session = measure.Session(args.model_path, workload_args, report, seconds=args.seconds)
    chosen = {"spec": args.design} if args.design else None
    graphs = args.cuda_graphs

    def run_designs() -> None:
        nonlocal chosen
        chosen = session.designs(CHECK_STEPS)

    def run_e2e() -> None:
        from bench.gpu import e2e

        spec = (chosen or {}).get("spec") or session.default_spec()
        e2e.run(
            model_path=args.model_path,
            spec=spec,
            workload=Workload(**workload_args),
            python_path=tuple(p for p in args.stub_python_path.split(os.pathsep) if p),
            work=Path(tempfile.mkdtemp(prefix="sd-gpu-e2e-")),  # not --out: only a few files may come back
            record=report.record,
            cuda_graphs=graphs,
        )

    def run_speed() -> None:
        nonlocal graphs
        graphs = session.speed((chosen or {}).get("spec") or session.default_spec(), CHECK_STEPS)

    steps: dict[str, tuple[float, Callable[[], None]]] = {
        "direct": (60, session.direct),
        "map": (30, session.variance_map),
        "designs": (60, run_designs),
        "speed": (60, run_speed),
        "e2e": (90, run_e2e),
    }
    session.load()
    for name in phases:
        needs, body = steps[name]
        report.phase(name, needs, body)
    report.record("done", True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
