"""``bench.replicas``' pure helpers on synthetic figures (the measurement runs as ``python -m bench.replicas``)."""

from __future__ import annotations

from typing import Any

import pytest

from bench.replicas import combine, latency_stats, render, split, summarise_replicas, summarise_store


def _cell(sqlite_p50: float, pg_p50: float) -> dict[str, Any]:
    return {
        "sqlite": {"p50_ms": sqlite_p50, "p95_ms": 2 * sqlite_p50, "runs_s": 1000 / sqlite_p50},
        "postgresql": {"p50_ms": pg_p50, "p95_ms": 3 * pg_p50, "runs_s": 1000 / pg_p50},
        "postgresql_async_commit": {"p50_ms": pg_p50 - 1.0, "p95_ms": 3 * pg_p50, "runs_s": 1000 / pg_p50},
    }


def _store_rounds() -> list[dict[str, Any]]:
    # Round 2 is twice as slow on both engines (VM drift): the per-round ratio must not move.
    return [
        {kind: {"1": _cell(2.0 * k, 6.0 * k), "16": _cell(40.0 * k, 60.0 * k)} for kind in ("sync", "webhook")}
        for k in (1.0, 2.0, 1.5)
    ]


def _replica(images_s: float, p50: float) -> dict[str, Any]:
    return {"images_s": images_s, "p50_ms": p50, "p95_ms": 2 * p50, "served_per_frontend": [8], "errors": {}}


def _results() -> dict[str, Any]:
    replica_rounds = [
        {"1": _replica(10.0, 800.0), "3": _replica(9.0, 850.0)},
        {"1": _replica(5.0, 900), "3": _replica(5.5, 950)},
    ]
    return {
        "command": "python -m bench.replicas --rounds 3 --runs 10",
        "date": "2026-01-01 00:00 UTC",
        "elapsed_s": 120.0,
        "machine": {
            "cpus": 2,
            "platform": "Linux-test",
            "python": "3.11.7",
            "load_average_before": 0.5,
            "load_average_after": 1.5,
        },
        "postgres": {"server_version": "15.18", "fsync": "on", "synchronous_commit": "on"},
        "settings": {"rounds": 3, "runs": 10, "concurrency": 8, "requests": 64},
        "workload": "64x64 px",
        "store": {"summary": summarise_store(_store_rounds())},
        "replicas": {"summary": summarise_replicas(replica_rounds)},
    }


def test_split_shares_differ_by_at_most_one_and_add_up() -> None:
    assert split(8, 3) == [3, 3, 2]
    assert split(8, 1) == [8]
    assert split(2, 3) == [1, 1, 0]
    assert sum(split(17, 5)) == 17


def test_latency_stats_in_ms_and_runs_per_second() -> None:
    stats = latency_stats([0.001 * i for i in range(1, 101)], wall_s=2.0)
    assert stats["runs"] == 100
    assert stats["p50_ms"] == pytest.approx(51.0)  # stats.percentile: the nearest rank, rounded
    assert stats["p95_ms"] == pytest.approx(95.0)
    assert stats["runs_s"] == pytest.approx(50.0)


def test_store_ratio_is_taken_within_each_round() -> None:
    summary = summarise_store(_store_rounds())
    sync1 = summary["sync"]["1"]
    assert sync1["sqlite"]["p50_ms"] == {"median": 3.0, "min": 2.0, "max": 4.0}
    # 6/2 in every round, despite the drift between rounds
    assert sync1["ratio_p50"] == {"median": pytest.approx(3.0), "min": pytest.approx(3.0), "max": pytest.approx(3.0)}
    assert sync1["ratio_p95"]["median"] == pytest.approx(4.5)  # (3 * 6) / (2 * 2)
    assert summary["webhook"]["16"]["ratio_p50"]["median"] == pytest.approx(1.5)
    assert sync1["wal_flush_ms"] == {"median": pytest.approx(1.0), "min": pytest.approx(1.0), "max": pytest.approx(1.0)}


def test_combine_counts_images_over_the_whole_wall_time_and_pools_the_latencies() -> None:
    """The p95 of the union, not a weighted mean of each frontend's p95 (which is not a p95): changed
    from the weighted mean the review found, so this figure now means what its name says."""
    fast, slow = [100.0] * 30, [400.0] * 20
    rows = [
        {"samples_ms": fast, "errors": {}},
        {"samples_ms": fast[:28], "errors": {503: 2}},
        {"samples_ms": slow, "errors": {}},
    ]
    combined = combine(rows, [30, 30, 20], elapsed=4.0)
    assert combined["served_per_frontend"] == [30, 28, 20]
    assert combined["images_s"] == pytest.approx(78 / 4.0)
    assert combined["p50_ms"] == 100.0
    assert combined["p95_ms"] == 400.0  # the weighted mean of the p95s would say (100*58 + 400*20)/78 = 177
    assert combined["errors"] == {"503": 2}


def test_replica_ratio_per_round() -> None:
    summary = _results()["replicas"]["summary"]
    assert summary["ratio_images_s"]["min"] == pytest.approx(0.9)
    assert summary["ratio_images_s"]["max"] == pytest.approx(1.1)
    assert summary["1"]["images_s"]["median"] == pytest.approx(7.5)
    assert summary["errors"] == 0


def test_report_says_how_it_was_made_and_carries_the_headlines() -> None:
    text = render(_results())
    assert text.startswith("# Replicas and the run store\n")
    assert "`python -m bench.replicas --rounds 3 --runs 10`" in text
    assert "2 CPUs" in text and "Linux-test" in text and "2026-01-01" in text
    assert "| sync | 1 | 3.00 (2.00-4.00) | 9.00 (6.00-12.00) | **3.00 (3.00-3.00)** | 8.00 (5.00-11.00) |" in text
    assert "is 1.00 (1.00-1.00) ms of the 6.00 ms difference" in text
    assert "| webhook | 16 |" in text
    assert "**Ratio B / A: 1.00 (0.90-1.10)**" in text and "its range includes 1" in text
    assert "the model is the bottleneck" in text and "more Triton capacity" in text
    assert "No request failed." in text


def test_report_says_when_the_replica_ratio_is_off_one() -> None:
    results = _results()
    results["replicas"]["summary"] = summarise_replicas(
        [{"1": _replica(10.0, 800.0), "3": _replica(8.0, 900.0)}, {"1": _replica(10.0, 800), "3": _replica(9.0, 900)}]
    )
    text = render(results)
    assert "**Ratio B / A: 0.85 (0.80-0.90)**" in text
    assert "its whole range is below 1: a difference of about 15%" in text
