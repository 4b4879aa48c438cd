"""docs/benchmarks.md and its plots from one ``make bench`` run's results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


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
        "| determinism | batch | images/s | call latency ms |",
        "|---|---|---|---|",
    ]
    for mode, rows in results["direct"].items():
        for batch, row in rows.items():
            lines.append(f"| {mode} | {batch} | {row['images_per_s']:.1f} | {row['latency_ms']:.0f} |")
    lines += [
        "",
        f"Best: {inv_best:.1f} images/s at batch {inv_batch} with the shipped `batch_invariant` mode (the same work the"
        f" server does); {plain_best:.1f} images/s at batch {plain_batch} without the exactness guarantee.",
        "",
        "## End-to-end through the frontend vs the limit",
        "",
        "`bench/load.py`: closed loop of N clients posting /predict (base64 PNG in, PNG out).",
        "",
        "| concurrency | images/s | p50 ms | p95 ms | p99 ms | errors | e2e / direct | e2e / direct, no exactness |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in results["e2e"]:
        lines.append(
            f"| {row['concurrency']} | {row['images_s']:.1f} | {row['p50_ms']:.0f} | {row['p95_ms']:.0f} |"
            f" {row['p99_ms']:.0f} | {row['errors'] or 0} | {row['images_s'] / inv_best:.2f} |"
            f" {row['images_s'] / plain_best:.2f} |"
        )
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
        "| part | ms |",
        "|---|---|",
        f"| decode (base64 + image, frontend) | {timings['decode']:.1f} |",
        f"| Triton queue (incl. max_queue_delay) | {server['queue']:.1f} |",
        f"| Triton compute (model execute; direct call: {direct1:.1f}) | {server['compute']:.1f} |",
        f"| transfer (frontend <-> Triton, gRPC) | {transfer:.1f} |",
        f"| encode (PNG, frontend) | {timings['encode']:.1f} |",
        f"| rest (HTTP, JSON, run store, client) | {rest:.1f} |",
        "",
        "## Triton alone: perf_analyzer",
        "",
        "`bench/perf_analyzer.py`: the tritonclient 2.51.0 wheel's perf_analyzer over gRPC, `--input-data` with real"
        " images and varied prompts/negative prompts/seeds, count windows.",
        "",
        "| config | concurrency | req/s | p50 ms | p95 ms | p99 ms | server queue ms | server compute ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, key in (("shipped (batching)", "perf_shipped"), ("max_batch_size 1", "perf_no_batching")):
        for row in results[key]:
            lines.append(
                f"| {name} | {row['concurrency']} | {row['req_s']:.1f} | {row['p50_ms']:.0f} | {row['p95_ms']:.0f} |"
                f" {row['p99_ms']:.0f} | {row['queue_ms']:.1f} | {row['compute_ms']:.1f} |"
            )
    lines += [
        "",
        "## max_queue_delay_microseconds",
        "",
        "| delay us | c=1 req/s | c=1 p50 ms | c=2 req/s | c=2 p50 ms | c=8 req/s | c=8 p50 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for delay, rows in results["delay_sweep"].items():
        cells = " | ".join(f"{r['req_s']:.1f} | {r['p50_ms']:.0f}" for r in rows)
        lines.append(f"| {delay} | {cells} |")
    lines += ["", "Raw figures: `docs/benchmarks.json`.", ""]
    output.write_text("\n".join(lines))
