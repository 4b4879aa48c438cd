"""docs/benchmarks.md and its plots from one ``make bench`` run's results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bench.stats import table  # noqa: E402


def _best(direct: dict[str, dict[str, float]]) -> tuple[str, float]:
    batch, row = max(direct.items(), key=lambda item: item[1]["images_per_s"])
    return batch, row["images_per_s"]


def _plot(results: dict[str, Any], key: str, ylabel: str, path: Path, direct_line: float | None) -> None:
    figure, axes = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    series = [
        ("end-to-end (frontend)", results["e2e"], "images_s" if key == "throughput" else "p95_ms"),
        ("Triton, perf_analyzer", results["perf_shipped"], "req_s" if key == "throughput" else "p95_ms"),
        ("Triton, max_batch_size 1", results["perf_no_batching"], "req_s" if key == "throughput" else "p95_ms"),
    ]
    for label, rows, field in series:
        axes.plot([r["concurrency"] for r in rows], [r[field] for r in rows], marker="o", label=label)
    if direct_line is not None:
        axes.axhline(direct_line, linestyle="--", color="grey", label="direct pipeline, best batch")
    axes.set_xscale("log", base=2)
    axes.set_xlabel("concurrency")
    axes.set_ylabel(ylabel)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    axes.set_title(f"{ylabel} vs concurrency")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write_report(results: dict[str, Any], output: Path) -> None:
    images = output.parent / "img"
    images.mkdir(parents=True, exist_ok=True)
    inv_batch, inv_best = _best(results["direct"]["batch_invariant"])
    plain_batch, plain_best = _best(results["direct"]["batched"])
    _plot(results, "throughput", "images/s", images / "bench_throughput.png", inv_best)
    _plot(results, "p95", "p95 latency (ms)", images / "bench_p95.png", None)

    lines = [
        "# Benchmarks",
        "",
        f"Written by `make bench` ({results['elapsed_s'] / 60:.1f} min). Workload: {results['workload']};"
        " tiny random-weight model unless stated; CPU (2 cores) unless stated. All series in one run.",
        "",
        "![throughput](img/bench_throughput.png) ![p95](img/bench_p95.png)",
        "",
        "## The limit: the pipeline called directly",
        "",
        "`bench/direct.py`: the model's own pipeline code (`Img2ImgRunner`) in one process, no serving.",
        "",
    ]
    lines += table(
        ["determinism", "batch", "images/s", "call latency ms"],
        [
            [mode, batch, f"{row['images_per_s']:.1f}", f"{row['latency_ms']:.0f}"]
            for mode, rows in results["direct"].items()
            for batch, row in rows.items()
        ],
    )
    lines += [
        "",
        f"Best: {inv_best:.1f} images/s at batch {inv_batch} with the shipped `batch_invariant` mode (the same work the"
        f" server does); {plain_best:.1f} images/s at batch {plain_batch} without the exactness guarantee.",
        "",
        "## End-to-end through the frontend vs the limit",
        "",
        "`bench/load.py`: closed loop of N clients posting /predict (base64 PNG in, PNG out).",
        "",
    ]
    lines += table(
        [
            "concurrency",
            "images/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "errors",
            "e2e / direct",
            "e2e / direct, no exactness",
        ],
        [
            [
                str(row["concurrency"]),
                f"{row['images_s']:.1f}",
                f"{row['p50_ms']:.0f}",
                f"{row['p95_ms']:.0f}",
                f"{row['p99_ms']:.0f}",
                str(row["errors"] or 0),
                f"{row['images_s'] / inv_best:.2f}",
                f"{row['images_s'] / plain_best:.2f}",
            ]
            for row in results["e2e"]
        ],
    )
    lines += _paired_section(results)
    first = results["e2e"][0]
    server = first["triton_server_ms"]
    direct1 = results["direct"]["batch_invariant"]["1"]["latency_ms"]
    timings = first["timings_ms"]
    transfer = max(0.0, timings["triton"] - server["total"])
    overhead = first["p50_ms"] - direct1
    rest = max(0.0, first["p50_ms"] - timings["decode"] - timings["triton"] - timings["encode"])
    lines += [
        "",
        f"**Concurrency-1 service overhead**: end-to-end p50 {first['p50_ms']:.1f} ms minus direct latency"
        f" {direct1:.1f} ms = **{overhead:.1f} ms**. Where the end-to-end time goes (frontend medians from each"
        " answer's `timings_ms`; queue and compute are Triton's own statistics over the same requests):",
        "",
    ]
    lines += table(
        ["part", "ms"],
        [
            ["decode (base64 + image, frontend)", f"{timings['decode']:.1f}"],
            ["Triton queue (incl. max_queue_delay)", f"{server['queue']:.1f}"],
            [f"Triton compute (model execute; direct call: {direct1:.1f})", f"{server['compute']:.1f}"],
            ["transfer (frontend <-> Triton, gRPC)", f"{transfer:.1f}"],
            ["encode (PNG, frontend)", f"{timings['encode']:.1f}"],
            ["rest (HTTP, JSON, run store, client)", f"{rest:.1f}"],
        ],
    )
    lines += [
        "",
        "## Triton alone: perf_analyzer",
        "",
        "`bench/perf_analyzer.py`: the tritonclient 2.51.0 wheel's perf_analyzer over gRPC, `--input-data` with real"
        " images and varied prompts/negative prompts/seeds, count windows.",
        "",
    ]
    lines += table(
        ["config", "concurrency", "req/s", "p50 ms", "p95 ms", "p99 ms", "server queue ms", "server compute ms"],
        [
            [
                name,
                str(row["concurrency"]),
                f"{row['req_s']:.1f}",
                f"{row['p50_ms']:.0f}",
                f"{row['p95_ms']:.0f}",
                f"{row['p99_ms']:.0f}",
                f"{row['queue_ms']:.1f}",
                f"{row['compute_ms']:.1f}",
            ]
            for name, key in (("shipped (batching)", "perf_shipped"), ("max_batch_size 1", "perf_no_batching"))
            for row in results[key]
        ],
    )
    lines += _delay_section(results)
    lines += _transport_section(results)
    lines += _codec_section(results)
    lines += _profile_section(results)
    lines += ["", "Raw figures: `docs/benchmarks.json`.", ""]
    output.write_text("\n".join(lines))


def _range(cell: dict[str, float], fmt: str = ".1f") -> str:
    return f"{cell['median']:{fmt}} ({cell['min']:{fmt}}-{cell['max']:{fmt}})"


def _paired_section(results: dict[str, Any]) -> list[str]:
    paired = results.get("paired")
    if not paired:
        return []
    ratio = paired["ratio"]
    return [
        "",
        f"**Headline, concurrency 8 vs the limit, {len(paired['pairs'])} alternating rounds** (direct batch 8 for 5 s,"
        " then about 5 s of end-to-end requests at concurrency 8; the VM's drift hits both alike): end-to-end"
        f" {_range(paired['e2e_images_s'])} img/s vs direct {_range(paired['direct_images_s'])} img/s:"
        f" **ratio {_range(ratio, '.2f')}** (median, min-max).",
    ] + _cpu_budget(paired)


def _cpu_budget(paired: dict[str, Any]) -> list[str]:
    """Where a CPU-only machine's cores go per image, and the ratio that leaves at best."""
    if "e2e_cpu_ms_per_image" not in paired:
        return []
    direct = paired["direct_cpu_ms_per_image"]
    parts = paired["e2e_cpu_ms_per_image"]
    total = sum(parts.values())
    return [
        "",
        "CPU time per image over the same rounds (median; user + system, all threads). Here the serving processes"
        " and the load generator share the cores with the model, so when the cores are saturated end-to-end can"
        f" reach at most direct CPU / end-to-end CPU = {direct:.1f} / {total:.1f} = **{direct / total:.2f}** of the"
        " direct throughput; on a GPU machine the model's work leaves the CPU and this bound goes away.",
        "",
        *table(
            ["process", "CPU ms per image"],
            [
                ["direct pipeline (the limit)", f"{direct:.1f}"],
                *([f"end-to-end: {name}", f"{ms:.1f}"] for name, ms in parts.items()),
                ["end-to-end: total", f"{total:.1f}"],
            ],
        ),
    ]


def _delay_section(results: dict[str, Any]) -> list[str]:
    sweep = results["delay_sweep"]
    levels = list(next(iter(sweep.values())).keys())
    header = ["delay us"] + [cell for c in levels for cell in (f"c={c} req/s", f"c={c} p50 ms")]
    rows = [
        [str(delay)] + [cell for r in by_level.values() for cell in (_range(r["req_s"]), _range(r["p50_ms"], ".0f"))]
        for delay, by_level in sweep.items()
    ]
    lines = [
        "",
        "## max_queue_delay_microseconds",
        "",
        "One model per delay in the same server, our own gRPC closed loop, rounds interleaved across delays;"
        " median (min-max) over the rounds.",
        "",
        *table(header, rows),
    ]
    if "delay_chosen" in results:
        chosen, shipped = results["delay_chosen"], results["delay_shipped"]
        verdict = "the shipped value" if chosen == shipped else f"the shipped value is {shipped}"
        lines += [
            "",
            "Rule: among the delays whose worst concurrency-8 round is within 5% of the best worst round, the one"
            f" with the lowest concurrency-1 p50. This run picks **{chosen} us** ({verdict}).",
        ]
    return lines


def _transport_section(results: dict[str, Any]) -> list[str]:
    rows = results.get("transport")
    if not rows:
        return []
    lines = [
        "",
        "## gRPC vs HTTP to Triton (asyncio clients, binary tensors)",
        "",
        "`bench/transport.py`: `tritonclient.grpc.aio` (the frontend's client) and `tritonclient.http.aio`, same"
        " requests, alternating.",
        "",
    ]
    lines += table(
        ["protocol", "concurrency", "req/s", "p50 ms", "p95 ms"],
        [
            [
                str(row["protocol"]),
                str(row["concurrency"]),
                f"{row['req_s']:.1f}",
                f"{row['p50_ms']:.1f}",
                f"{row['p95_ms']:.1f}",
            ]
            for row in rows
        ],
    )
    return lines


def _codec_section(results: dict[str, Any]) -> list[str]:
    rows = results.get("codecs")
    if not rows:
        return []
    lines = [
        "",
        "## Output encoding cost per image",
        "",
        "`bench/codecs.py`: the frontend's own `encode_images`, median of repeats; send = base64 size at 100 Mbit/s.",
        "",
    ]
    lines += table(
        ["size", "image", "format", "encode ms", "KiB", "send ms"],
        [
            [
                str(row["size"]),
                str(row["image"]),
                str(row["format"]),
                f"{row['encode_ms']:.2f}",
                f"{row['kib']:.1f}",
                f"{row['send_ms']:.1f}",
            ]
            for row in rows
        ],
    )
    if "png_level_best" in results:
        lines += [
            "",
            f"Least encode + send for a smooth 512x512 output: PNG level **{results['png_level_best']}**"
            " (the shipped `SD_PNG_COMPRESS_LEVEL` default is 1).",
        ]
    return lines


def _profile_section(results: dict[str, Any]) -> list[str]:
    prof = results.get("profile")
    if not prof:
        return []
    lines = ["", "## Where the frontend's CPU goes (py-spy, concurrency 8)", ""]
    if "error" in prof:
        return [*lines, prof["error"]]
    lines += [
        f"{prof['samples']} samples over {prof['requests']} requests; share of the frontend's busy samples.",
        "",
        *table(["thread", "share"], [[kind, f"{share:.0%}"] for kind, share in prof["threads"].items()]),
        "",
        *table(
            ["hottest function (self time)", "share"],
            [[f"`{name}`", f"{share:.1%}"] for name, share in prof["top_self"]],
        ),
    ]
    return lines
