"""The GPU report: full-size SD 1.5 on the device, measured in one command (``make gpu-report``).

Phases, in order of value (the default order), each skipped when the time budget would not let it finish:

1. ``stub``: a tiny echo model in a real tritonserver under each candidate stub path (``stub_check``):
   which one carries tensors and imports the model; e2e uses it. Seconds.
2. ``e2e``: tritonserver + frontend with the shipped design (``--design``/``--cuda-graphs`` override),
   uniform and mixed-settings traffic at concurrency 1, 8 and 32, and the determinism check through
   the service;
3. ``tests``: the ``gpu``-marked tests (``tests/gpu``: byte equality in the model, GEMM convolutions,
   a tritonserver round trip) on the device, their summary recorded;
4. ``designs``: determinism candidates (from this run's map, else the H200's recorded one, plus the
   GEMM convolutions of ``conv_gemm.py``), bytes compared alone vs. every position of a batch, then
   images/s at batch 1 and 8; the fastest exact one is chosen;
5. ``speed``: CUDA graphs and channels_last on the chosen design (each kept only where exact and
   faster); batch sizes 2, 4, 16;
6. ``direct``: the model's own runner at batch 1 and 8, ``batched`` and ``batch_invariant``;
7. ``sdxl``: the full-size random SDXL base built on the device (fp16, ``--sdxl-model-path``; never
   carried) and measured at 1024 px as SD 1.5 was: bytes alone vs. batched for plain batching, the
   shipped plan and the plan ``designs`` chose, images/s at batch 1, 2 and 4, whole components alone
   vs. batched (kernels pinned); figures under ``sdxl.``. Before ``map``: that map exists already;
8. ``map``: the batch-variance map (``bench/gpu/variance.py``), default and pinned kernels (it exists:
   ``docs/gpu-run-1.json``; rerun it with ``--phases map``).

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

PHASES = ("stub", "e2e", "tests", "designs", "speed", "direct", "sdxl", "map")
# The default hosted-API request: 512x512, 50 steps at strength 0.8 (40 denoising steps), guidance 7.5.
FULL = {"size": 512, "num_inference_steps": 50, "strength": 0.8, "guidance_scale": 7.5, "variants": 8}
# SDXL at its native 1024 px: a step there is about 4x SD 1.5's at 512, so 10 denoising steps per timed
# request, and 4 requests per bytes check (alone vs. a batch of 4 and of 3), for the phase to fit the budget.
SDXL = {"size": 1024, "num_inference_steps": 20, "strength": 0.5, "guidance_scale": 7.5, "variants": 4}
SDXL_BATCHES = (1, 2, 4)
SDXL_REQUESTS = 4
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


def packages() -> dict[str, str]:
    """``pip list`` of the interpreter, as name -> version (what the next rehearsal must match)."""
    from importlib import metadata

    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(name.lower(), dist.version)
    return dict(sorted(found.items()))


def environment() -> dict[str, Any]:
    """The machine, before anything that could fail: Python, every package, then what torch sees.

    Imports that fail are recorded as errors here (the carried site is on the path by now), so a run
    that breaks later still says exactly what the machine had.
    """
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "pythonpath": os.environ.get("PYTHONPATH", ""),
        "packages": packages(),
    }
    try:
        import torch

        info |= {
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "cuda_available": torch.cuda.is_available(),
        }
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1)}
            info["multiprocessors"] = props.multi_processor_count
    except Exception as exc:  # noqa: BLE001 (recorded: the machine is what it is)
        info["torch_error"] = repr(exc)
    for module in ("numpy", "diffusers", "transformers"):
        try:
            info[module] = __import__(module).__version__
        except Exception as exc:  # noqa: BLE001
            info[f"{module}_error"] = repr(exc)
    try:
        smi = subprocess.run(
            [shutil.which("nvidia-smi") or "nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        info["nvidia_smi"] = repr(exc)
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
    parser.add_argument("--sdxl-model-path", type=Path, help="the sdxl phase's diffusers folder (built if missing)")
    parser.add_argument("--sdxl-workload", default=json.dumps(SDXL), help="the sdxl phase's Workload as JSON")
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
    carried = tuple(p for p in args.stub_python_path.split(os.pathsep) if p)
    stub_path = carried

    def run_stub() -> None:
        nonlocal stub_path
        from bench.gpu import stub_check

        work = Path(tempfile.mkdtemp(prefix="sd-gpu-stub-"))
        results = {}
        for name, path in (("carried_numpy", carried), ("machine_numpy", ())):
            if name == "carried_numpy" and not carried:
                continue
            results[name] = stub_check.check(path, work)
            report.record(f"stub.{name}", results[name])
        picked = stub_check.choose(results)
        report.record("stub.chosen", picked)
        if picked is None:
            raise RuntimeError("no stub path carried tensors and imported the model (stub.*)")
        stub_path = tuple(results[picked]["python_path"])

    def run_designs() -> None:
        nonlocal chosen
        chosen = session.designs(CHECK_STEPS)

    def run_e2e() -> None:
        from bench.gpu import e2e

        session.ensure_model()
        spec = (chosen or {}).get("spec") or session.default_spec()
        e2e.run(
            model_path=args.model_path,
            spec=spec,
            workload=Workload(**workload_args),
            python_path=stub_path,
            work=Path(tempfile.mkdtemp(prefix="sd-gpu-e2e-")),  # not --out: only a few files may come back
            record=report.record,
            cuda_graphs=graphs,
        )

    def run_speed() -> None:
        nonlocal graphs
        graphs = session.speed((chosen or {}).get("spec") or session.default_spec(), CHECK_STEPS)

    def run_tests() -> None:
        env = {**os.environ, "GPU_STUB_SITE": os.pathsep.join(stub_path)}
        command = [sys.executable, "-m", "pytest", "-c", "tests/gpu/pytest.ini", "--rootdir", ".", "-q", "tests/gpu"]
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
        lines = done.stdout.strip().splitlines()
        report.record(
            "tests", {"exit_code": done.returncode, "summary": lines[-1] if lines else "", "tail": lines[-25:]}
        )
        if done.returncode not in (0, 5):  # 5: none collected
            raise RuntimeError(f"gpu tests failed: {lines[-1] if lines else done.stderr[-500:]}")

    def run_sdxl() -> None:
        import torch

        if args.sdxl_model_path is None:
            raise RuntimeError("no --sdxl-model-path: nowhere to build SDXL")
        sdxl_args = json.loads(args.sdxl_workload)
        report.record("sdxl.workload", Workload(**sdxl_args).describe())
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()  # sdxl.gpu_peak_gib: this phase's, SD 1.5 still loaded
        scoped = measure.Scoped(report, "sdxl")
        xl = measure.Session(args.sdxl_model_path, sdxl_args, scoped, seconds=args.seconds, family="sdxl")
        # Plain batching, the device kind's shipped plan, and the plan SD 1.5's designs chose (when another).
        rows: dict[str, tuple[str | None, bool]] = {"batched": (None, False), "shipped": (xl.default_spec(), True)}
        picked = (chosen or {}).get("spec")
        if picked is not None and picked != rows["shipped"][0]:
            rows["chosen"] = (picked, True)
        try:
            xl.load()  # built on the device first (sdxl.build), then loaded by the model's runner
            xl.plans(rows, CHECK_STEPS, SDXL_BATCHES, SDXL_REQUESTS)
        finally:
            xl.close()

    def loaded(body: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            session.load()  # once: the in-process pipeline the phases after e2e share
            body()

        return run

    steps: dict[str, tuple[float, Callable[[], None]]] = {
        "stub": (20, run_stub),
        "e2e": (90, run_e2e),
        "tests": (60, run_tests),
        "designs": (60, loaded(run_designs)),
        "speed": (60, loaded(run_speed)),
        "direct": (60, loaded(session.direct)),
        "sdxl": (150, run_sdxl),
        "map": (30, loaded(session.variance_map)),
    }
    for name in phases:
        needs, body = steps[name]
        report.phase(name, needs, body)
    report.record("done", True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
