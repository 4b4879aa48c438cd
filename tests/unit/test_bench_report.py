"""The benchmark report writer, on synthetic results (the measurements themselves run in ``make bench``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.report import write_report


def _spread(value: float) -> dict[str, float]:
    return {"median": value, "min": value, "max": value}


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
        "delay_sweep": {
            delay: {
                level: {"req_s": _spread(rate), "p50_ms": _spread(p50)}
                for level, rate, p50 in (("1", 10.0, 60.0 + delay / 1000), ("8", eight, 220.0))
            }
            for delay, eight in ((0, 30.0), (20000, 33.0), (60000, 34.0))
        },
        "delay_chosen": 20000,
        "delay_shipped": 20000,
        "paired": {
            "pairs": [{}, {}, {}],
            "ratio": {"median": 0.95, "min": 0.9, "max": 1.01},
            "direct_images_s": _spread(30.0),
            "e2e_images_s": _spread(28.5),
            "direct_cpu_ms_per_image": 54.0,
            "e2e_cpu_ms_per_image": {"model (Triton's Python stub)": 56.0, "frontend": 3.0, "load generator": 1.0},
        },
        "transport": [{"protocol": "grpc", "concurrency": 1, "req_s": 12.0, "p50_ms": 80.0, "p95_ms": 90.0}],
        "codecs": [
            {
                "size": 512,
                "image": "smooth",
                "format": "png level1",
                "png_level": 1,
                "encode_ms": 40.0,
                "kib": 500.0,
                "send_ms": 54.6,
            },
        ],
        "png_level_best": 1,
        "profile": {
            "samples": 100,
            "requests": 64,
            "threads": {"event loop (MainThread)": 0.6},
            "top_self": [("encode (images.py)", 0.25)],
        },
    }
    output = tmp_path / "docs" / "benchmarks.md"
    write_report(results, output)
    text = output.read_text()
    assert "| 8 | 36.0 | 230 | 260 | 270 | {503: 1} | 0.90 | 0.90 |" in text  # e2e / direct best batch
    assert "= **50.0 ms**" in text  # 100 ms end-to-end p50 minus 50 ms direct latency
    assert "| transfer (frontend <-> Triton, gRPC) | 5.0 |" in text  # 75 seen by the frontend - 70 in Triton
    assert "**ratio 0.95 (0.90-1.01)**" in text  # the paired rounds' median and range
    assert "= 54.0 / 60.0 = **0.90**" in text  # the CPU-budget bound on the ratio
    assert "| end-to-end: frontend | 3.0 |" in text
    assert "| 60000 | 10.0 (10.0-10.0) | 120 (120-120) | 34.0 (34.0-34.0) | 220 (220-220) |" in text
    assert "This run picks **20000 us** (the shipped value)" in text
    assert "| grpc | 1 | 12.0 | 80.0 | 90.0 |" in text
    assert "| 512 | smooth | png level1 | 40.00 | 500.0 | 54.6 |" in text
    assert "| `encode (images.py)` | 25.0% |" in text
    assert (tmp_path / "docs" / "img" / "bench_throughput.png").stat().st_size > 1000
    assert (tmp_path / "docs" / "img" / "bench_p95.png").stat().st_size > 1000


def test_delay_rule_takes_the_lowest_latency_among_the_robust_throughputs() -> None:
    from bench.run_all import choose_delay

    def row(c1_p50: float, c8_worst: float, c8_median: float | None = None) -> dict[str, Any]:
        c8 = {"median": c8_median or c8_worst, "min": c8_worst, "max": c8_median or c8_worst}
        return {"1": {"p50_ms": _spread(c1_p50)}, "8": {"req_s": c8}}

    # 0 us is fastest alone but loses 20% at concurrency 8; 60000 batches best but 20000 is within 5%.
    assert choose_delay({"0": row(50, 27), "20000": row(75, 33), "60000": row(120, 34)}) == 20000
    assert choose_delay({"0": row(50, 33), "20000": row(75, 33), "60000": row(120, 34)}) == 0
    # A delay with the best median but one bad round (partial batches) is not robust enough.
    assert choose_delay({"5000": row(60, 26, 35), "20000": row(75, 33.5, 34)}) == 20000


def test_profile_summary_splits_threads_and_ranks_self_time() -> None:
    from bench.profile import summarise

    raw = (
        "thread (1): MainThread;run (base_events.py:607);_handle (handlers.py:12) 30\n"
        "thread (2): asyncio_0;run (thread.py:58);encode_images (/x/frontend/images.py:93) 60\n"
        "thread (3): grpc_poll;poll (/venv/lib/python3.11/site-packages/grpc/aio/_call.py:10) 10\n"
    )
    summary = summarise(raw)
    assert summary["samples"] == 100
    assert summary["threads"] == {
        "worker threads (asyncio.to_thread)": 0.6,
        "event loop (MainThread)": 0.3,
        "other threads": 0.1,
    }
    assert summary["top_self"][0] == ("encode_images (/x/frontend/images.py)", 0.6)
    assert summary["top_self"][2] == ("poll (grpc/aio/_call.py)", 0.1)
