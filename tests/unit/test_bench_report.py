"""The benchmark report writer, on synthetic results (the measurements themselves run in ``make bench``)."""

from __future__ import annotations

from pathlib import Path

from bench.report import write_report


def test_report_has_every_section_ratio_and_plot(tmp_path: Path) -> None:
    perf = [
        {
            "concurrency": c,
            "req_s": 10.0 * c,
            "p50_ms": 80.0,
            "p95_ms": 90.0,
            "p99_ms": 99.0,
            "queue_ms": 20.0,
            "compute_ms": 50.0,
        }
        for c in (1, 8)
    ]
    e2e = [
        {
            "concurrency": 1,
            "images_s": 10.0,
            "p50_ms": 100.0,
            "p95_ms": 110.0,
            "p99_ms": 120.0,
            "errors": {},
            "timings_ms": {"decode": 1.0, "triton": 75.0, "encode": 2.0},
            "triton_server_ms": {"queue": 20.0, "compute": 50.0, "total": 70.0},
        },
        {
            "concurrency": 8,
            "images_s": 36.0,
            "p50_ms": 230.0,
            "p95_ms": 260.0,
            "p99_ms": 270.0,
            "errors": {503: 1},
            "timings_ms": {"decode": 1.0, "triton": 220.0, "encode": 2.0},
            "triton_server_ms": {"queue": 20.0, "compute": 190.0, "total": 212.0},
        },
    ]
    direct = {"1": {"images_per_s": 20.0, "latency_ms": 50.0}, "8": {"images_per_s": 40.0, "latency_ms": 200.0}}
    results = {
        "workload": "64 px",
        "elapsed_s": 60.0,
        "direct": {"batch_invariant": direct, "batched": direct},
        "e2e": e2e,
        "perf_shipped": perf,
        "perf_no_batching": perf,
        "delay_sweep": {"0": perf + perf[:1]},
    }
    output = tmp_path / "docs" / "benchmarks.md"
    write_report(results, output)
    text = output.read_text()
    assert "| 8 | 36.0 | 230 | 260 | 270 | {503: 1} | 0.90 | 0.90 |" in text  # e2e / direct best batch
    assert "= **50.0 ms**" in text  # 100 ms end-to-end p50 minus 50 ms direct latency
    assert "| transfer (frontend <-> Triton, gRPC) | 5.0 |" in text  # 75 seen by the frontend - 70 in Triton
    assert (tmp_path / "docs" / "img" / "bench_throughput.png").stat().st_size > 1000
    assert (tmp_path / "docs" / "img" / "bench_p95.png").stat().st_size > 1000
