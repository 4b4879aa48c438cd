"""The in-process measurements of the GPU report: one loaded pipeline, plans applied and removed in turn.

A ``Session`` is one model: SD 1.5 for the main phases, SDXL for the ``sdxl`` phase (the same checks and
timings at 1024 px, its figures under ``sdxl.`` in the report through ``Scoped``).
"""

from __future__ import annotations

import gc
import importlib
import json
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from bench.direct import Direct, model_code_on_path
from bench.gpu import designs
from bench.workload import Workload


class Recorder(Protocol):
    @property
    def data(self) -> dict[str, Any]: ...

    def record(self, key: str, value: Any) -> None: ...

    def left_s(self) -> float: ...


class Scoped:
    """A recorder whose keys live under ``scope`` of another's (``sdxl.load_s``): a second model's figures
    beside the first's, in the same JSON, written as they are measured."""

    def __init__(self, report: Recorder, scope: str) -> None:
        self.report = report
        self.scope = scope

    @property
    def data(self) -> dict[str, Any]:
        found = self.report.data.get(self.scope)
        return found if isinstance(found, dict) else {}

    def record(self, key: str, value: Any) -> None:
        self.report.record(f"{self.scope}.{key}", value)

    def left_s(self) -> float:
        return self.report.left_s()


# The full-size random-weight builders, by family (``embedded.sd15_model``, ``embedded.sdxl_model``).
BUILDERS = {"sd15": "embedded.sd15_model", "sdxl": "embedded.sdxl_model"}


def ensure_model(model_path: Path, device: str, family: str = "sd15") -> dict[str, Any]:
    """Build the family's full-size random-weight model on the device itself unless ``model_path`` holds a model."""
    builder = importlib.import_module(BUILDERS[family])
    if builder.FOLDER.is_someone_elses(model_path):  # yours (or a tiny one, in the rehearsal): used as it is
        return {"built": False, "folder": str(model_path)}
    started = time.monotonic()
    dtype_name = "float16" if device.startswith("cuda") else "float32"
    record: dict[str, Any] = builder.build(model_path, device=device, dtype_name=dtype_name)
    return record | {"seconds": round(time.monotonic() - started, 1)}


class Session:
    def __init__(
        self,
        model_path: Path,
        workload_args: dict[str, Any],
        report: Recorder,
        *,
        seconds: float,
        family: str = "sd15",
    ) -> None:
        self.model_path = model_path
        self.family = family
        self.workload_args = workload_args
        self.workload = Workload(**workload_args)
        self.report = report
        self.seconds = seconds
        self.direct_runner: Direct | None = None
        self.maps: dict[str, Any] = {}

    # -- set-up -------------------------------------------------------------------------------------
    def ensure_model(self) -> None:
        """The model folder, built on the device if missing (once)."""
        import torch

        if "build" not in self.report.data:
            device = "cuda" if torch.cuda.is_available() else "cpu"
            self.report.record("build", ensure_model(self.model_path, device, self.family))

    def load(self) -> None:
        if self.direct_runner is not None:
            return
        self.ensure_model()
        started = time.monotonic()
        # Loaded as "batched" (nothing wrapped): every design below applies its own plan.
        self.direct_runner = Direct(str(self.model_path), self.workload_args, "batched")
        self.report.record("load_s", round(time.monotonic() - started, 1))

    def close(self) -> None:
        """Drop the loaded pipeline (and its device memory) once its phases are done."""
        import torch

        self.direct_runner = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @property
    def runner(self) -> Any:
        assert self.direct_runner is not None, "load() first"
        return self.direct_runner.runner

    def default_spec(self) -> str:
        """The shipped plan of this machine's device kind (no pipeline needed)."""
        import torch

        model_code_on_path()
        from batch_invariance import DEFAULT_PLANS

        device = "cuda" if torch.cuda.is_available() else "cpu"
        return DEFAULT_PLANS.get(device, DEFAULT_PLANS["cpu"]).spec()

    def use(self, spec: str | None, pinned: bool) -> int:
        """Apply one design: ``None`` = plain batched. Returns the modules wrapped."""
        from batch_invariance import InvariancePlan, apply_plan, parse_plan, pin_cuda_kernels, remove_plan

        remove_plan(self.runner.pipe)
        if self.runner.device.type == "cuda":
            self.report.record(f"kernels.{'pinned' if pinned else 'default'}", pin_cuda_kernels(pinned))
        if spec is None:
            return 0
        plan = parse_plan(spec, self.runner.device.type) if spec else InvariancePlan({})
        return apply_plan(self.runner.pipe, plan)

    # -- phases -------------------------------------------------------------------------------------
    def throughput(self, key: str, batches: tuple[int, ...]) -> None:
        assert self.direct_runner is not None
        for batch in batches:
            self.report.record(f"{key}.b{batch}", self.direct_runner.measure(batch, self.seconds, min_calls=2))

    def direct(self) -> None:
        """Phase 1: the two shipped modes at batch 1 and 8, and the batching gain of each."""
        for name, spec, pinned in (("batched", None, False), ("batch_invariant", self.default_spec(), True)):
            self.report.record(f"direct.{name}.spec", spec)
            self.use(spec, pinned)
            self.throughput(f"direct.{name}", (1, 8))
            figures = self.report_value(f"direct.{name}")
            self.report.record(
                f"direct.{name}.batching_gain", figures["b8"]["images_per_s"] / figures["b1"]["images_per_s"]
            )
        self.use(None, False)

    def report_value(self, key: str) -> Any:
        node: Any = self.report.data
        for part in key.split("."):
            node = node[part]
        return node

    def variance_map(self) -> None:
        """Phase 2: the map with the libraries' own choices, then with kernels pinned."""
        import torch

        from bench.gpu import variance

        for label, pinned in (("default", False), ("pinned", True)):
            self.use(None, pinned)
            deadline = time.monotonic() + max(10.0, self.report.left_s() / 4)
            layers = variance.layer_map(self.runner.pipe, size=self.workload.size, deadline=deadline)
            self.report.record(f"map.{label}.layers", layers)
            self.report.record(
                f"map.{label}.components", variance.component_map(self.runner.pipe, size=self.workload.size)
            )
            self.maps[label] = {"layers": layers, "components": self.report_value(f"map.{label}.components")}
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        self.use(None, False)

    def identical(self, steps: int, requests: int = 8) -> dict[str, Any]:
        """Each of ``requests`` alone vs. in a batch of them all (position i) and of 3 (reversed): same bytes?"""
        assert self.direct_runner is not None
        check = Workload(**(self.workload_args | {"num_inference_steps": steps}))
        run = self.runner.run
        alone = [run(self.direct_runner.call([i], check)) for i in range(requests)]
        mismatches = []
        for order in (list(range(requests)), [requests - 1, requests // 2 - 1, 0]):
            together = run(self.direct_runner.call(order, check))
            for position, i in enumerate(order):
                if not np.array_equal(together[position], alone[i][0]):
                    diff = np.abs(together[position].astype(int) - alone[i][0].astype(int))
                    mismatches.append(
                        {
                            "batch": len(order),
                            "position": position,
                            "max_diff": int(diff.max()),
                            "pixels": int((diff > 0).sum()),
                        }
                    )
        steps_run = int(steps * self.workload.strength)
        return {"identical": not mismatches, "steps": steps_run, "requests": requests, "mismatches": mismatches}

    def check(self, key: str, spec: str | None, pinned: bool, steps: int, requests: int = 8) -> dict[str, Any]:
        """One plan applied (``None``: plain batched) and its bytes compared alone vs. batched, under ``key``."""
        self.report.record(f"{key}.spec", spec)
        self.report.record(f"{key}.wrapped", self.use(spec, pinned))
        outcome = self.identical(steps, requests)
        self.report.record(f"{key}.check", outcome)
        return outcome

    def recorded_map(self) -> dict[str, Any]:
        """The H200's pinned map (docs/gpu-run-1.json) on a GPU when this run measured none; else empty."""
        empty: dict[str, Any] = {"layers": {"kinds": {}}, "components": {}}
        recorded = Path(__file__).resolve().parents[2] / "docs" / "gpu-run-1.json"
        if self.runner.device.type != "cuda" or not recorded.exists():
            return empty
        return dict(json.loads(recorded.read_text()).get("map", {}).get("pinned") or empty)

    def designs(self, check_steps: int) -> dict[str, Any] | None:
        """Phase 3: every candidate checked by bytes, then timed; the chosen one recorded."""
        from batch_invariance import parse_plan

        base = self.maps.get("pinned") or self.recorded_map()
        shipped = parse_plan(self.default_spec(), self.runner.device.type).rows
        results = []
        for design in designs.candidates(base, dict(shipped)):
            key = f"designs.{design.name}"
            outcome = self.check(key, design.spec(), design.pinned, check_steps)
            result: dict[str, Any] = {"name": design.name, "spec": design.spec(), "identical": outcome["identical"]}
            shipped = self.report.data.get("direct", {}).get("batch_invariant", {})
            if design.pinned and design.rows == parse_plan(shipped.get("spec") or "", "cuda").rows and "b8" in shipped:
                # The same plan was timed in phase 1: its figures stand (and save a minute on the device).
                for batch in ("b1", "b8"):
                    self.report.record(f"{key}.{batch}", shipped[batch])
            elif self.report.left_s() > 150:
                self.throughput(key, (1, 8))
            if "b8" in self.report_value(key):
                result |= {"b1": self.report_value(f"{key}.b1"), "b8": self.report_value(f"{key}.b8")}
            results.append(result)
        chosen = designs.choose(results)
        self.report.record("chosen", chosen or {"spec": None, "why": "no candidate was byte-identical"})
        if chosen is not None:
            self.use(chosen["spec"], True)
            self.report.record("chosen_full_check", self.identical(self.workload.num_inference_steps))
        self.use(None, False)
        return chosen

    def speed(self, spec: str, check_steps: int) -> bool:
        """Phase 4: CUDA graphs, then channels_last, on the chosen design; more batch sizes.

        Returns whether CUDA graphs were byte-identical (to eager, and alone vs. batched) and faster.
        """
        import torch
        from cuda_graphs import GraphedUNet

        assert self.direct_runner is not None
        self.use(spec, True)
        self.throughput("speed.chosen", (1, 8))
        unet = self.runner.pipe.unet
        use_graphs = False
        if self.runner.device.type == "cuda":
            eager = self.runner.run(self.direct_runner.call([0]))
            unet.forward = GraphedUNet(unet.forward)
            graphed = self.runner.run(self.direct_runner.call([0]))
            self.report.record("speed.cuda_graphs.same_as_eager", bool(np.array_equal(graphed, eager)))
            self.report.record("speed.cuda_graphs.check", self.identical(check_steps))
            self.throughput("speed.cuda_graphs", (1, 8))
            use_graphs = bool(
                self.report_value("speed.cuda_graphs.same_as_eager")
                and self.report_value("speed.cuda_graphs.check")["identical"]
                and self.report_value("speed.cuda_graphs.b8")["images_per_s"]
                > self.report_value("speed.chosen.b8")["images_per_s"]
            )
            self.report.record("speed.cuda_graphs.use", use_graphs)
            self.use(spec, True)  # eager again for the next option
        unet.to(memory_format=torch.channels_last)
        try:
            self.report.record("speed.channels_last.check", self.identical(check_steps))
            self.throughput("speed.channels_last", (8,))
        finally:
            unet.to(memory_format=torch.contiguous_format)
        if self.report.left_s() > 120:
            if use_graphs:
                unet.forward = GraphedUNet(unet.forward)
            self.throughput("speed.cuda_graphs" if use_graphs else "speed.chosen", (2, 4, 16))
        self.use(None, False)
        return use_graphs

    def plans(
        self, rows: dict[str, tuple[str | None, bool]], check_steps: int, batches: tuple[int, ...], requests: int
    ) -> None:
        """The ``sdxl`` phase's body (any model): each plan row's bytes alone vs. batched, then images/s at
        ``batches`` while the budget lasts; then the whole components alone vs. batched, kernels pinned."""
        import torch

        from bench.gpu import variance

        for name, (spec, pinned) in rows.items():
            self.check(f"plans.{name}", spec, pinned, check_steps, requests)
            for batch in batches:
                # A throughput figure is a few calls of the whole workload: one at the largest batch must fit.
                if self.report.left_s() < 30 + 10 * batch:
                    self.report.record(f"plans.{name}.skipped_b{batch}", f"{self.report.left_s():.0f} s left")
                    break
                self.throughput(f"plans.{name}", (batch,))
        if self.report.left_s() > 30:
            self.use(None, True)
            components = variance.component_map(self.runner.pipe, requests=requests, size=self.workload.size)
            self.report.record("map.pinned.components", components)
        self.use(None, False)
        if torch.cuda.is_available():
            self.report.record("gpu_peak_gib", round(torch.cuda.max_memory_allocated() / 2**30, 1))
