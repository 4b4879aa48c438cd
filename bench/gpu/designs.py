"""GPU determinism designs: candidates derived from the variance map, checked by bytes, ranked by speed.

A candidate is an ``InvariancePlan`` (kinds on fixed rows, CUDA kernels pinned or not). ``candidates``
is pure (tested on CPU from a recorded map); ``identical`` and ``choose`` take measured results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The shipped CPU design, tried on the GPU as it is (with kernels pinned).
CPU_DESIGN = {"conv2d": 1, "linear": 1, "vae_decode": 1}
# UNet rows of a full Triton batch (8 requests with guidance): the fixed shape a padded plan uses.
PADDED_ROWS = 16


@dataclass(frozen=True)
class Design:
    name: str
    rows: dict[str, int]
    pinned: bool

    def spec(self) -> str:
        return ",".join(f"{kind}:{rows}" if rows else kind for kind, rows in self.rows.items())


def candidates(pinned_map: dict[str, Any], shipped: dict[str, int] | None = None) -> list[Design]:
    """From the map measured with kernels pinned: cheapest first, duplicates dropped.

    * ``pinned``: nothing split, only library choices pinned (enough if no layer kind varies);
    * ``pinned+padded``: the varying layer kinds always see 16 rows (when padding made them exact);
    * ``gemm_1x1``: 1x1 convolutions as one GEMM over pixels, the other varying kinds per sample;
    * ``gemm_conv``: every convolution as one GEMM over pixels (3x3 from shifted views), the other
      varying kinds per sample: no convolution runs per sample;
    * ``pinned+per_sample``: the varying layer kinds run one row at a time;
    * ``cpu_design``: the CPU's plan (every Conv2d and Linear per sample, VAE decode per sample).
    Components that varied alone (VAE decode, text encoder) run per sample in every candidate. Without
    a map, ``shipped`` (the device kind's default plan) says which kinds vary.
    """
    kinds = pinned_map.get("layers", {}).get("kinds", {})
    varying = [kind for kind, entry in kinds.items() if entry["varies_alone"]]
    components = pinned_map.get("components", {})
    whole = {kind: 1 for kind in ("text_encoder", "vae_decode") if components.get(kind, 0.0)}
    if not kinds and shipped:
        varying = [kind for kind in shipped if kind not in ("text_encoder", "vae_decode")]
        whole = {kind: rows for kind, rows in shipped.items() if kind in ("text_encoder", "vae_decode")}
    padded_ok = all(not kinds.get(kind, {}).get("varies_padded", True) for kind in varying)
    others = {k: 1 for k in varying if k != "conv2d"}
    designs = [
        Design("pinned", dict(whole), True),
        Design("pinned+padded", {**{k: PADDED_ROWS if padded_ok else 1 for k in varying}, **whole}, True),
        Design("gemm_1x1", {"conv1x1_gemm": 0, "conv2d": 1, **others, **whole}, True),
        Design("gemm_conv", {"conv2d_gemm": 0, **others, **whole}, True),
        Design("pinned+per_sample", {**{k: 1 for k in varying}, **whole}, True),
        Design("cpu_design", dict(CPU_DESIGN), True),
    ]
    unique: list[Design] = []
    for design in designs:
        if all((d.rows, d.pinned) != (design.rows, design.pinned) for d in unique):
            unique.append(design)
    return unique


def choose(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The byte-identical design with the most images/s at batch 8 (ties: the lower batch-1 latency)."""
    exact = [r for r in results if r.get("identical") and "b8" in r]
    if not exact:
        return None
    return max(exact, key=lambda r: (round(r["b8"]["images_per_s"], 2), -r.get("b1", {}).get("p50_ms", 0.0)))
