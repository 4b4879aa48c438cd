"""``docs/gpu.md`` from the GPU report's JSON(s): ``python -m bench.gpu.report A.json [B.json] --markdown F``.

Several JSONs (a run cut in two calls) merge in order; later figures win. Missing phases show as such.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.stats import table


def merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}

    def into(target: dict[str, Any], source: dict[str, Any]) -> None:
        for key, value in source.items():
            if isinstance(value, dict) and isinstance(target.get(key), dict):
                into(target[key], value)
            else:
                target[key] = value

    for report in reports:
        into(merged, report)
    return merged


def _get(data: dict[str, Any], key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _num(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(a: Any, b: Any) -> str:
    return "-" if a is None or b is None or not b else f"{100 * a / b:.0f}%"


def _last_error(text: str) -> str:
    """The most telling line of a failure: the last one naming an error."""
    lines = [line.strip() for line in text.replace("\\n", "\n").splitlines()]
    for mark in ("Could not import", "what():", "ERROR:", "Error", "error"):
        named = [line for line in lines if mark in line]
        if named:
            return named[-1][:300]
    return (lines or ["?"])[-1][:300]


def render(data: dict[str, Any]) -> str:
    env = data.get("environment", {})
    out = [
        "# The service on a GPU",
        "",
        "Written by `python -m bench.gpu.report` from the JSON of `bash bench/gpu/run.sh` (docs/gpu-command.md);",
        "full-size SD 1.5 with random weights built on the GPU, fp16. Do not edit by hand.",
        "",
        f"- GPU: {env.get('gpu', 'none')} ({env.get('gpu_memory_gib', '-')} GiB,"
        f" {env.get('multiprocessors', '-')} SMs), driver {env.get('driver') or env.get('nvidia_smi', '-')}",
        f"- torch {env.get('torch', '-')}, CUDA {env.get('cuda', '-')}, cuDNN {env.get('cudnn', '-')},"
        f" diffusers {env.get('diffusers', '-')}, numpy {env.get('numpy', '-')}, Python {env.get('python', '-')}",
        f"- Workload: {data.get('workload', '-')}",
        f"- Run: {data.get('started', '-')}, {data.get('elapsed_s', '-')} s in the command;"
        f" model built in {_get(data, 'build.seconds') or '-'} s, loaded in {data.get('load_s', '-')} s",
        "",
        "## 1. The direct runner (the model's own code, no serving)",
        "",
    ]
    rows = []
    for mode in ("batched", "batch_invariant"):
        for batch in ("b1", "b2", "b4", "b8", "b16"):
            figures = _get(data, f"direct.{mode}.{batch}")
            if figures:
                rows.append([f"`{mode}`", batch[1:], _num(figures["images_per_s"]), _num(figures["p50_ms"], 0)])
        gain = _get(data, f"direct.{mode}.batching_gain")
        if gain is not None:
            rows.append([f"`{mode}`", "gain 8 over 1", f"{gain:.2f}x", ""])
    out += table(["determinism", "batch", "images/s", "p50 ms per call"], rows) if rows else ["(not measured)"]
    out += ["", "`batch_invariant` here is the device kind's default plan at the time of the run:", ""]
    out += [f"`{_get(data, 'direct.batch_invariant.spec') or '-'}`.", ""]

    out += ["## 2. The batch-variance map", ""]
    out += [
        "Each layer replays the inputs it saw in one batched UNet forward (8 requests = 16 rows with guidance):",
        "*alone* = a row by itself vs. its row of the batch, every position; *padded* = the row at position 0",
        "of a zero-padded batch of the same size. A layer counts once if any row differs.",
        "",
    ]
    for label in ("default", "pinned"):
        kinds = _get(data, f"map.{label}.layers.kinds")
        if not kinds:
            continue
        out += [
            f"Kernels **{label}**"
            + (
                " (split-K and reduced-precision reductions off, TF32 off, cuDNN deterministic without autotuning)"
                if label == "pinned"
                else " (the libraries' own choices)"
            )
            + ":",
            "",
        ]
        out += table(
            ["kind", "layers", "vary alone", "vary padded", "max abs diff", "first varying"],
            [
                [
                    k,
                    str(e["layers"]),
                    str(e["varies_alone"]),
                    str(e["varies_padded"]),
                    f"{e['max_abs_diff']:.3g}",
                    f"`{e['first_varying']}`" if e["first_varying"] else "",
                ]
                for k, e in kinds.items()
            ],
        )
        components = _get(data, f"map.{label}.components") or {}
        out += [
            "",
            "Whole components, alone vs. batch of 8 (max abs diff; 0 = bitwise equal): "
            + ", ".join(f"{k} {v:.3g}" for k, v in components.items()),
            "",
        ]

    out += ["## 3. Determinism designs", ""]
    out += [
        "Bytes compared: each of 8 requests alone vs. at its position in a batch of 8, and 3 of them in a",
        "batch of 3 in reverse order, at fewer steps (invariance is per step); then timed at the full workload.",
        "",
    ]
    batched_b8 = _get(data, "direct.batched.b8.images_per_s")
    rows = []
    for name, design in (data.get("designs") or {}).items():
        check = design.get("check", {})
        rows.append(
            [
                f"`{name}`",
                f"`{design.get('spec') or '(none)'}`",
                "yes"
                if check.get("identical")
                else f"no ({len(check.get('mismatches', []))} differ)"
                if check
                else "-",
                _num(_get(design, "b1.images_per_s")),
                _num(_get(design, "b1.p50_ms"), 0),
                _num(_get(design, "b8.images_per_s")),
                _ratio(_get(design, "b8.images_per_s"), batched_b8),
            ]
        )
    out += (
        table(
            [
                "design",
                "invariant_modules",
                "byte-identical",
                "b1 images/s",
                "b1 p50 ms",
                "b8 images/s",
                "of plain batched b8",
            ],
            rows,
        )
        if rows
        else ["(not measured)"]
    )
    chosen = data.get("chosen") or {}
    full = data.get("chosen_full_check") or {}
    out += [
        "",
        f"Chosen: `{chosen.get('name', '-')}` (`{chosen.get('spec', '-')}`); at the full workload "
        f"({full.get('steps', '-')} steps) alone vs. batched: "
        + ("byte-identical" if full.get("identical") else f"{full.get('mismatches', 'not checked')}"),
        "",
    ]

    out += ["## 4. End to end: tritonserver + frontend", ""]
    stub = _get(data, "stub") or {}
    for name in ("carried_numpy", "machine_numpy"):
        check = stub.get(name)
        if isinstance(check, dict):
            verdict = (
                "tensors and imports OK"
                if check.get("tensors_ok") and check.get("imports_ok")
                else (_last_error(f"{check.get('error', '')}\n{check.get('log', '')}") or "imports failed")
            )
            out.append(f"- Python stub with {name.replace('_', ' ')} ({check.get('numpy') or '-'}): {verdict}")
    if stub:
        out += [f"- Stub path used: {stub.get('chosen') or 'none'}", ""]
    rows = []
    for c in ("c1", "c8", "c32"):
        for traffic, key in (("uniform", f"e2e.{c}"), ("mixed", f"e2e.mixed.{c}")):
            figures = _get(data, key)
            if not figures:
                continue
            direct_key = {"c1": "b1", "c8": "b8"}.get(c)
            direct = _get(data, f"designs.{chosen.get('name')}.{direct_key}") if chosen and direct_key else None
            rows.append(
                [
                    c[1:],
                    traffic,
                    _num(figures["images_s"]),
                    _num(figures["p50_ms"], 0),
                    _num(figures.get("p99_ms"), 0),
                    json.dumps(figures.get("errors", {})),
                    _num(direct["images_per_s"]) if direct and traffic == "uniform" else "-",
                ]
            )
    out += (
        table(
            ["concurrency", "traffic", "images/s", "p50 ms", "p99 ms", "errors", "direct images/s (same design)"],
            rows,
        )
        if rows
        else ["(not measured)"]
    )
    plain = _get(data, "direct.batched.b8.images_per_s")
    if chosen and chosen.get("b8") and plain:
        out += [
            "",
            f"Chosen determinism design `{chosen.get('spec')}`: {_num(chosen['b8']['images_per_s'])} images/s at"
            f" batch 8, **{chosen['b8']['images_per_s'] / plain:.2f}** of plain batched ({_num(plain)}).",
        ]
    if _get(data, "e2e.batches"):
        out += [
            "",
            f"Triton batch sizes executed (size: count): {json.dumps(data['e2e']['batches'])};"
            f" server ready in {_get(data, 'e2e.triton_ready_s')} s"
            f" with `invariant_modules: {_get(data, 'e2e.invariant_modules')}`.",
        ]
    determinism = _get(data, "e2e.determinism")
    if determinism:
        out += [
            "",
            f"Determinism through the service: a request alone vs. amid {determinism['neighbours']} concurrent "
            "others: " + ("**byte-identical**" if determinism["identical"] else "**differs**") + ".",
        ]
    out += ["", "## 5. Speed options", ""]
    rows = []
    graphs_exact = bool(_get(data, "speed.cuda_graphs.same_as_eager")) and bool(
        _get(data, "speed.cuda_graphs.check.identical")
    )
    options = (
        ("chosen design, eager", "speed.chosen", True),
        ("+ CUDA graphs", "speed.cuda_graphs", graphs_exact),
        ("+ channels_last (eager)", "speed.channels_last", bool(_get(data, "speed.channels_last.check.identical"))),
    )
    for option, key, exact in options:
        for batch in ("b1", "b2", "b4", "b8", "b16"):
            figures = _get(data, f"{key}.{batch}")
            if figures:
                speed = [_num(figures["images_per_s"]), _num(figures["p50_ms"], 0)]
                rows.append([option, batch[1:], *speed, "yes" if exact else "no"])
    header = ["option", "batch", "images/s", "p50 ms per call", "byte-identical"]
    out += table(header, rows) if rows else ["(not measured)"]
    same = _get(data, "speed.cuda_graphs.same_as_eager")
    if same is not None:
        out += ["", "CUDA graphs vs. eager, same request: " + ("the same bytes." if same else "**different bytes**.")]
    out += sdxl_section(data)
    failed = _get(data, "e2e.failed") or {}
    if failed:
        out += ["", "## Why tritonserver did not serve", ""]
        out += [f"- {name}: `{_last_error(text)}`" for name, text in failed.items()]
        if _get(data, "e2e.started_as"):
            crash = _last_error(_get(data, "e2e.triton_log_tail") or "")
            out += [f"- {_get(data, 'e2e.started_as')}: started, then every inference failed: `{crash}`"]
    problems = {
        **(data.get("skipped") or {}),
        **{k: _last_error(v) for k, v in (data.get("errors") or {}).items()},
    }
    if problems:
        out += ["", "## Not measured", ""] + [f"- {k}: {v}" for k, v in problems.items()]
    return "\n".join(out) + "\n"


def sdxl_section(data: dict[str, Any]) -> list[str]:
    """The ``sdxl`` phase: full-size SDXL base built on the device, its plans' bytes and images/s."""
    xl = data.get("sdxl")
    if not isinstance(xl, dict):
        return []
    build = xl.get("build") or {}
    out = ["", "## 6. SDXL base at 1024 px", ""]
    out += [
        f"Full-size SDXL base 1.0 with random weights, built on the device ({build.get('dtype', '-')}) in"
        f" {_num(build.get('seconds'), 1)} s, loaded by the model's runner in {_num(xl.get('load_s'), 1)} s;"
        f" workload {xl.get('workload', '-')}; GPU memory peak in this phase {_num(xl.get('gpu_peak_gib'), 1)} GiB.",
        "Bytes compared: each of the requests alone vs. at its position in a batch of all of them, and 3 in",
        "reverse order, at fewer steps; then timed.",
        "",
    ]
    plans = xl.get("plans") or {}
    batches = sorted({int(k[1:]) for plan in plans.values() for k in plan if k[:1] == "b" and k[1:].isdigit()})
    rows = []
    for name, plan in plans.items():
        check = plan.get("check") or {}
        identical = "yes" if check.get("identical") else f"no ({len(check.get('mismatches', []))} differ)"
        figures = [_num(_get(plan, f"b{b}.images_per_s")) for b in batches]
        rows.append([f"`{name}`", f"`{plan.get('spec') or '(none)'}`", identical if check else "-", *figures])
    header = ["plan", "invariant_modules", "byte-identical", *(f"b{b} images/s" for b in batches)]
    out += table(header, rows) if rows else ["(not measured)"]
    components = _get(xl, "map.pinned.components")
    if components:
        out += [
            "",
            "Whole components alone vs. batched, kernels pinned (max abs diff; 0 = bitwise equal): "
            + ", ".join(f"{k} {v:.3g}" for k, v in components.items()),
        ]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("reports", type=Path, nargs="+")
    parser.add_argument("--markdown", type=Path, required=True)
    parser.add_argument("--json", type=Path, help="also write the merged JSON here")
    args = parser.parse_args(argv)
    data = merge([json.loads(path.read_text()) for path in args.reports])
    args.markdown.write_text(render(data))
    if args.json:
        args.json.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
