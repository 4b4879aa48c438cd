"""``python -m bench.replicas``: what the shared run store and frontend replicas cost, written to
docs/bench-replicas.md (+ .json with every round's figures).

1. The store's added latency per run, PostgreSQL vs SQLite: the store calls one run makes, timed per run
   in this process on each engine as a frontend opens it (PostgreSQL: an asyncpg pool of 10, the default
   ``SD_DATABASE_POOL_SIZE``; SQLite: its one connection). A synchronous run: ``create_run`` (status
   processing) -> ``finish_run`` with a realistic body (one ~200 KB base64 image) -> ``get_run``. A webhook
   run: ``create_run`` with a ~50 KB PNG input and a webhook URL -> ``mark_processing`` -> ``finish_run``
   (which writes the delivery, the outbox row, in the same transaction). At concurrency 1 and 16 (a closed
   loop of that many runs at once in one event loop). PostgreSQL is measured twice: as shipped, and on a
   database with ``synchronous_commit = off``, which shows what waiting for the disk at commit costs. Between
   rounds, untimed, the deliveries are marked delivered and retention deletes every run, so the stores stay
   small, as retention keeps them.
2. Throughput with 1 vs 3 frontends on one tritonserver (tiny model) and one PostgreSQL database: the same
   total client concurrency and requests, spread over the frontends (each gets its share of the clients
   and requests; images/s = all images / the wall time of the whole batch). Fresh frontend processes
   every round, warmed before they are timed.

A 2-core VM drifts by tens of percent from minute to minute, so engines and configurations are measured
in alternating rounds (the order flips every round) and reported as medians with their range; each
ratio is taken within a round, then summarised the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench import load, transport
from bench.stats import percentile, spread, table
from bench.workload import Workload
from embedded.frontend_process import API_KEYS, Frontend, start_all, stop_all
from embedded.lifecycle import stop_on_signals
from embedded.postgres import EmbeddedPostgres
from embedded.tiny_model import build
from embedded.triton_server import DEFAULT_MODEL_PATH, DEFAULT_MODEL_REPOSITORY, EmbeddedTriton
from frontend.store import RunStore, open_store
from frontend.store.records import RETENTION_BATCH, DeliveryStatus, RunStatus

ROOT = Path(__file__).resolve().parent.parent
# The two engines, and PostgreSQL again with commits that do not wait for the disk (for comparison only: it
# shows where PostgreSQL's time goes; a crash loses the last commits, so it is no setting to run with).
ENGINES = ("sqlite", "postgresql", "postgresql_async_commit")
ASYNC_COMMIT_DATABASE = "store_async_commit"
KINDS = ("sync", "webhook")
STORE_CONCURRENCY = (1, 16)
OWNER = "bench-replica"
KEY_HASH = "0" * 64
LEASE_S = 30.0
WEBHOOK_URL = "http://127.0.0.1:9/hook"
RESULT_B64_BYTES = 150_000  # base64: 200,000 characters, one generated image as the answer carries it
INPUT_PNG_SIDE = 128  # noise this size encodes to a ~50 KB PNG


def fmt(s: dict[str, float], digits: int = 1) -> str:
    """``median (min-max)``."""
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def latency_stats(seconds: list[float], wall_s: float) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "runs": len(ms),
        "p50_ms": percentile(ms, 0.50),
        "p95_ms": percentile(ms, 0.95),
        "p99_ms": percentile(ms, 0.99),
        "mean_ms": statistics.fmean(ms),
        "runs_s": len(ms) / wall_s,
    }


def split(total: int, parts: int) -> list[int]:
    """``total`` in ``parts`` shares that differ by at most one, the larger first (8 in 3: 3, 3, 2)."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


# 1. The store ------------------------------------------------------------------------------------------


def params(i: int) -> dict[str, Any]:
    """What the frontend stores as a run's parameters."""
    return {
        "prompt": "a photo of an astronaut riding a horse on mars",
        "negative_prompt": "blurry" if i % 2 else "",
        "num_inference_steps": 50,
        "strength": 0.8,
        "guidance_scale": 7.5,
        "num_images": 1,
        "seed": 1000 + i,
        "output_format": "png",
        "image_source": "image",
        "warnings": [],
        "width": 512,
        "height": 512,
        "timings_ms": {"decode": 4.2},
    }


class Payloads:
    """One answer body (~200 KB: one base64 PNG) and one ~50 KB PNG input, made once."""

    def __init__(self) -> None:
        self.image_b64 = base64.b64encode(np.random.default_rng(0).bytes(RESULT_B64_BYTES)).decode()
        noise = np.random.default_rng(1).integers(0, 256, (INPUT_PNG_SIDE, INPUT_PNG_SIDE, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noise).save(buffer, format="PNG")
        self.input_png = buffer.getvalue()

    def body(self, run_id: str, i: int) -> dict[str, Any]:
        return {
            "run_id": run_id,
            "message": "Image generated successfully.",
            "result": [self.image_b64],
            "seeds": [1000 + i],
            "run_time_ms": 2400,
            "output_format": "png",
            "image_source": "image",
            "width": 512,
            "height": 512,
            "timings_ms": {"decode": 4.2, "triton": 2380.5, "encode": 15.1},
        }


async def sync_run(store: RunStore, payloads: Payloads, i: int) -> None:
    """The store calls of one synchronous /predict, and the GET /runs that may follow it."""
    run_id = str(uuid.uuid4())
    lease = await store.create_run(
        run_id, KEY_HASH, params(i), None, None, owner=OWNER, lease_s=LEASE_S, status=RunStatus.PROCESSING
    )
    await store.finish_run(run_id, lease, RunStatus.SUCCEEDED, payloads.body(run_id, i), None)
    run = await store.get_run(run_id, KEY_HASH)
    assert run is not None and run.status == RunStatus.SUCCEEDED


async def webhook_run(store: RunStore, payloads: Payloads, i: int) -> None:
    """The store calls of one webhook /predict: accepted with its input kept, started, finished + outbox row."""
    run_id = str(uuid.uuid4())
    lease = await store.create_run(
        run_id, KEY_HASH, params(i), payloads.input_png, WEBHOOK_URL, owner=OWNER, lease_s=LEASE_S
    )
    await store.mark_processing(run_id, lease)
    await store.finish_run(run_id, lease, RunStatus.SUCCEEDED, payloads.body(run_id, i), WEBHOOK_URL)


RUNS: dict[str, Callable[[RunStore, Payloads, int], Awaitable[None]]] = {"sync": sync_run, "webhook": webhook_run}


async def timed_runs(store: RunStore, payloads: Payloads, kind: str, concurrency: int, runs: int) -> dict[str, float]:
    """A closed loop of ``concurrency`` runs at a time; each run's time from its first call to its last."""
    one = RUNS[kind]
    counter = iter(range(runs))
    latencies: list[float] = []

    async def worker() -> None:
        for i in counter:
            start = time.perf_counter()
            await one(store, payloads, i)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latency_stats(latencies, time.perf_counter() - start)


async def clean(store: RunStore) -> None:
    """Untimed, between rounds: every delivery delivered, then retention deletes every finished run."""
    while deliveries := await store.claim_due_deliveries(OWNER, time.time() + 60, LEASE_S, limit=RETENTION_BATCH):
        for delivery in deliveries:
            await store.record_attempt(
                delivery.id, delivery.lease, status=DeliveryStatus.DELIVERED, attempts=1,
                next_attempt_at=time.time(), http_status=200, error=None,
            )  # fmt: skip
    while True:
        expired = await store.expire(time.time() + 1, 0.0, 0.0)
        if expired.runs < RETENTION_BATCH and expired.results < RETENTION_BATCH:
            return


async def measure_store(urls: dict[str, str], rounds: int, runs: int) -> list[dict[str, Any]]:
    """Every round: each kind at each concurrency on both engines back to back, the engine order flipping."""
    payloads = Payloads()
    stores = {engine: open_store(url) for engine, url in urls.items()}
    for store in stores.values():
        await store.open()
    try:
        for store in stores.values():  # warm: connections, statement caches, the tables' first pages
            for kind in KINDS:
                await timed_runs(store, payloads, kind, max(STORE_CONCURRENCY), 2 * max(STORE_CONCURRENCY))
            await clean(store)
        results = []
        for round_index in range(rounds):
            order = ENGINES[round_index % len(ENGINES) :] + ENGINES[: round_index % len(ENGINES)]
            cells: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in KINDS}
            for kind in KINDS:
                for concurrency in STORE_CONCURRENCY:
                    cell = cells[kind][str(concurrency)] = {}
                    for engine in order:
                        cell[engine] = await timed_runs(stores[engine], payloads, kind, concurrency, runs)
                        await clean(stores[engine])
                    print(
                        f"  store round {round_index + 1} {kind} c={concurrency}: "
                        + ", ".join(f"{e} p50 {cell[e]['p50_ms']:.2f} ms" for e in ENGINES),
                        flush=True,
                    )
            results.append(cells)
        return results
    finally:
        for store in stores.values():
            await store.close()


def summarise_store(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per kind and concurrency: each engine's figures over the rounds, and PostgreSQL/SQLite within a round;
    ``wal_flush_ms``: what PostgreSQL's wait for the disk at commit adds to the p50, within a round."""
    summary: dict[str, Any] = {}
    for kind in rounds[0]:
        summary[kind] = {}
        for concurrency in rounds[0][kind]:
            cells = [r[kind][concurrency] for r in rounds]
            row: dict[str, Any] = {
                engine: {key: spread([c[engine][key] for c in cells]) for key in ("p50_ms", "p95_ms", "runs_s")}
                for engine in ENGINES
            }
            for key in ("p50_ms", "p95_ms"):
                row[f"ratio_{key.removesuffix('_ms')}"] = spread(
                    [c["postgresql"][key] / c["sqlite"][key] for c in cells]
                )
            row["wal_flush_ms"] = spread(
                [c["postgresql"]["p50_ms"] - c["postgresql_async_commit"]["p50_ms"] for c in cells]
            )
            summary[kind][concurrency] = row
    return summary


# 2. Replicas -------------------------------------------------------------------------------------------


async def spread_load(urls: list[str], workload: Workload, concurrency: int, requests: int) -> dict[str, Any]:
    """``load.run`` on every frontend at once, each with its share of the clients and the requests."""
    shares = split(concurrency, len(urls))
    counts = [requests * share // concurrency for share in shares]
    counts[0] += requests - sum(counts)
    start = time.perf_counter()
    rows = await asyncio.gather(
        *(
            load.run(url, API_KEYS[0], workload, share, count, keep_samples=True)
            for url, share, count in zip(urls, shares, counts, strict=True)
        )
    )
    elapsed = time.perf_counter() - start
    return combine(list(rows), counts, elapsed)


def combine(rows: list[dict[str, Any]], counts: list[int], elapsed: float) -> dict[str, Any]:
    """One figure for the frontends together: images over the whole wall time; p50/p95 of every request's
    latency, whichever frontend served it (the samples pooled: a mean of percentiles is not one)."""
    errors: dict[str, int] = {}
    for row in rows:
        for status, n in row["errors"].items():
            errors[str(status)] = errors.get(str(status), 0) + n
    served = [count - sum(row["errors"].values()) for row, count in zip(rows, counts, strict=True)]
    samples = [ms for row in rows for ms in row.get("samples_ms", [])]
    return {
        "images_s": sum(served) / elapsed,
        "p50_ms": percentile(samples, 0.50) if samples else None,
        "p95_ms": percentile(samples, 0.95) if samples else None,
        "served_per_frontend": served,
        "errors": errors,
    }


def run_config(
    tmp: Path, grpc_url: str, database_url: str, replicas: int, workload: Workload, concurrency: int, requests: int
) -> dict[str, Any]:
    settings = {"SD_DATABASE_URL": database_url, "SD_ALLOW_PRIVATE_NETWORKS": ""}
    frontends = start_all(
        [Frontend(tmp / f"frontend-{uuid.uuid4().hex[:8]}", grpc_url, settings) for _ in range(replicas)], 120
    )
    try:
        urls = [f.url for f in frontends]
        asyncio.run(spread_load(urls, workload, concurrency, 2 * concurrency))  # warm
        return asyncio.run(spread_load(urls, workload, concurrency, requests))
    finally:
        stop_all(frontends)


def measure_replicas(
    tmp: Path, grpc_url: str, database_url: str, workload: Workload, rounds: int, concurrency: int, requests: int
) -> list[dict[str, Any]]:
    results = []
    for round_index in range(rounds):
        order = (1, 3) if round_index % 2 == 0 else (3, 1)
        cell = {}
        for replicas in order:
            cell[str(replicas)] = run_config(tmp, grpc_url, database_url, replicas, workload, concurrency, requests)
        print(
            f"  replicas round {round_index + 1}: "
            + ", ".join(f"{n} frontend(s) {cell[str(n)]['images_s']:.1f} img/s" for n in (1, 3)),
            flush=True,
        )
        results.append(cell)
    return results


def summarise_replicas(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {
        n: {key: spread([r[n][key] for r in rounds]) for key in ("images_s", "p50_ms", "p95_ms")} for n in ("1", "3")
    }
    summary["ratio_images_s"] = spread([r["3"]["images_s"] / r["1"]["images_s"] for r in rounds])
    summary["errors"] = sum(sum(r[n]["errors"].values()) for r in rounds for n in ("1", "3"))
    return summary


# The report --------------------------------------------------------------------------------------------


def render(results: dict[str, Any]) -> str:
    store, replicas, s = results["store"]["summary"], results["replicas"]["summary"], results["settings"]
    machine, server = results["machine"], results["postgres"]
    sync1, sync16 = store["sync"]["1"], store["sync"]["16"]
    lines = [
        "# Replicas and the run store",
        "",
        f"Written by `{results['command']}` on {results['date']} ({results['elapsed_s'] / 60:.1f} min);"
        f" machine: {machine['cpus']} CPUs, {machine['platform']}, Python {machine['python']};"
        f" PostgreSQL {server['server_version']} (defaults: fsync {server['fsync']}, synchronous_commit"
        f" {server['synchronous_commit']}), SQLite in WAL mode with synchronous=NORMAL (the store's settings),"
        " both on the same disk. Figures are medians over alternating rounds with their range (min-max); a ratio"
        " is taken within each round, then summarised the same way. 1-minute load average before the run:"
        f" {machine['load_average_before']:.1f} (other work on the machine; well above 0, it slows both sides of"
        " every comparison, unevenly: the rounds alternate so that it hits both alike).",
        "",
        "## 1. The store's added latency per run: PostgreSQL vs SQLite",
        "",
        f"{s['rounds']} rounds x {s['runs']} runs per engine and cell, in this process, on each engine as a"
        " frontend opens it (PostgreSQL: an asyncpg pool of 10 connections over TCP on 127.0.0.1; SQLite: its"
        " one connection, its calls on one worker thread). Timed per run, from its first store call to its last:",
        "",
        "- **sync**: `create_run` (processing) -> `finish_run` with a ~200 KB body (one base64 image) -> `get_run`;",
        "- **webhook**: `create_run` with a ~50 KB PNG input and a webhook URL -> `mark_processing` -> `finish_run`"
        " (with its delivery row in the same transaction).",
        "",
        "Concurrency 16 is a closed loop of 16 runs at once. The column *PG, async commit* is PostgreSQL again"
        " on a database with `synchronous_commit = off` (commits do not wait for the disk): for comparison only,"
        " to show what the wait costs; a crash loses the last commits, so it is no setting to run with.",
        "",
    ]
    store_rows = []
    for kind, by_level in store.items():
        for level, row in by_level.items():
            lite, pg, nowait = row["sqlite"], row["postgresql"], row["postgresql_async_commit"]
            store_rows.append(
                [
                    kind,
                    level,
                    fmt(lite["p50_ms"], 2),
                    fmt(pg["p50_ms"], 2),
                    f"**{fmt(row['ratio_p50'], 2)}**",
                    fmt(nowait["p50_ms"], 2),
                    fmt(lite["p95_ms"], 2),
                    fmt(pg["p95_ms"], 2),
                    fmt(row["ratio_p95"], 2),
                    fmt(lite["runs_s"], 0),
                    fmt(pg["runs_s"], 0),
                ]
            )
    lines += table(
        [
            "run",
            "concurrency",
            "SQLite p50 ms",
            "PostgreSQL p50 ms",
            "**PG / SQLite p50**",
            "PG, async commit p50 ms",
            "SQLite p95 ms",
            "PostgreSQL p95 ms",
            "PG / SQLite p95",
            "SQLite runs/s",
            "PostgreSQL runs/s",
        ],
        store_rows,
    )

    def p50(row: dict[str, Any], engine: str) -> float:
        return float(row[engine]["p50_ms"]["median"])

    def runs_s(row: dict[str, Any], engine: str) -> float:
        return float(row[engine]["runs_s"]["median"])

    lines += [
        "",
        f"**Headline:** a synchronous run's store calls take {p50(sync1, 'postgresql'):.2f} ms (p50) on PostgreSQL"
        f" vs {p50(sync1, 'sqlite'):.2f} ms on SQLite at concurrency 1 (**ratio {fmt(sync1['ratio_p50'], 2)}**),"
        f" and {p50(sync16, 'postgresql'):.1f} ms vs {p50(sync16, 'sqlite'):.1f} ms at concurrency 16"
        f" (ratio {fmt(sync16['ratio_p50'], 2)}).",
        "",
        f"- Where PostgreSQL's time goes (sync, concurrency 1): waiting at each commit for the WAL to reach the disk"
        f" is {fmt(sync1['wal_flush_ms'], 2)} ms of the"
        f" {p50(sync1, 'postgresql') - p50(sync1, 'sqlite'):.2f} ms difference (PostgreSQL minus its async-commit"
        " twin, within each round). The rest is round trips over TCP and both processes' CPU on the shared"
        " cores: a synchronous run makes 5 statements in 3 pool calls (INSERT; BEGIN, UPDATE, COMMIT; SELECT)"
        " and asyncpg's pool sends its reset query each time a connection goes back, 8 round trips in all;"
        " SQLite's calls stay in this process.",
        f"- SQLite's p95 at concurrency 1 ({sync1['sqlite']['p95_ms']['median']:.1f} ms, against a p50 of"
        f" {p50(sync1, 'sqlite'):.1f}) is its WAL checkpoints: every ~4 MB of WAL (about 20 runs of 200 KB) the"
        " commit that crosses it copies the pages back into the database file and syncs it (a one-off check on"
        " this machine with `wal_autocheckpoint=0` took that p95 from 34 to 5 ms, the p50 unchanged). PostgreSQL"
        " checkpoints in a background process.",
        f"- At concurrency 16 a run's latency is mostly its wait behind the other 15 (about 16 / runs/s), so"
        f" runs/s is the figure to compare there: SQLite {runs_s(sync16, 'sqlite'):.0f} runs/s (at concurrency 1:"
        f" {runs_s(sync1, 'sqlite'):.0f}; its one connection serialises every call) vs PostgreSQL"
        f" {runs_s(sync16, 'postgresql'):.0f} (at concurrency 1: {runs_s(sync1, 'postgresql'):.0f}; its pool"
        " overlaps the calls), on 2 cores shared by this process and PostgreSQL's backends.",
        f"- For scale: a whole request through a frontend with the tiny model takes"
        f" {replicas['1']['p50_ms']['median']:.0f} ms (p50 at concurrency {s['concurrency']}, part 2); the"
        " full-size SD 1.5 takes minutes on this CPU (docs/real-size.md) and on the order of seconds on a GPU.",
        "",
        "## 2. Throughput: 1 vs 3 frontends on one tritonserver",
        "",
        f"One tritonserver (tiny model; {results['workload']}), one PostgreSQL database. Config A: 1 frontend;"
        f" config B: 3 frontends on the same database. Both: {s['concurrency']} clients in all and"
        f" {s['requests']} requests per round (B: the clients and requests shared out between the frontends,"
        f" {'/'.join(map(str, split(s['concurrency'], 3)))} clients), fresh frontends every round, warmed first;"
        f" {s['rounds']} rounds, A and B alternating. p50/p95 for B: the frontends' own, weighted by images.",
        "",
    ]
    lines += table(
        ["config", "images/s", "p50 ms", "p95 ms"],
        [
            [name, fmt(replicas[n]["images_s"]), fmt(replicas[n]["p50_ms"], 0), fmt(replicas[n]["p95_ms"], 0)]
            for n, name in (("1", "A: 1 frontend"), ("3", "B: 3 frontends"))
        ],
    )
    ratio = replicas["ratio_images_s"]
    if ratio["min"] <= 1 <= ratio["max"]:
        measured = "its range includes 1: no difference beyond this VM's drift from round to round"
    else:
        side = "below" if ratio["max"] < 1 else "above"
        measured = (
            f"its whole range is {side} 1: a difference of about {abs(ratio['median'] - 1) * 100:.0f}% beyond this"
            " VM's drift (on these cores, two more frontend processes also take CPU from the model)"
        )
    lines += [
        "",
        f"**Ratio B / A: {fmt(ratio, 2)}** (images/s, within each round); {measured}."
        + (f" Errors: {replicas['errors']} requests failed." if replicas["errors"] else " No request failed."),
        "",
        f"On this {machine['cpus']}-core CPU VM the model is the bottleneck: one tritonserver computing the tiny"
        " model takes the cores, and a single frontend already keeps it busy. So the ratio is expected to be"
        " about 1: what this figure can show is that the replicas and the shared PostgreSQL store add no"
        " overhead and lose no throughput, not that they scale. Scaling needs more Triton capacity (more model"
        " instances, GPUs or tritonservers) for the frontends to feed; the frontends share nothing but the"
        " store, so they can be added as that capacity grows.",
        "",
    ]
    return "\n".join(lines)


async def postgres_settings(url: str) -> dict[str, str]:
    """The server's settings that matter here; on ASYNC_COMMIT_DATABASE, commits stop waiting for the disk."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"ALTER DATABASE {ASYNC_COMMIT_DATABASE} SET synchronous_commit = off")
        return {
            name: str(await conn.fetchval(f"SHOW {name}")) for name in ("server_version", "fsync", "synchronous_commit")
        }
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds, for both measurements")
    parser.add_argument("--runs", type=int, default=200, help="store runs per engine, kind and concurrency a round")
    parser.add_argument("--concurrency", type=int, default=8, help="clients in all, for 1 and for 3 frontends")
    parser.add_argument("--requests", type=int, default=160, help="requests per configuration a round")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench-replicas.md")
    args = parser.parse_args(argv)

    stop_on_signals()  # SIGTERM, SIGHUP and Ctrl-C still run the finally blocks that stop the servers
    started = time.monotonic()
    build(DEFAULT_MODEL_PATH)
    workload = Workload()
    results: dict[str, Any] = {
        "command": " ".join(["python -m bench.replicas", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_before": os.getloadavg()[0],
        },
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "workload": workload.describe(),
    }
    root = Path(tempfile.mkdtemp(prefix="sd-bench-replicas-"))
    root.chmod(0o755)  # as root, the server runs as the postgres user, who must reach its folder
    postgres = EmbeddedPostgres(root / "cluster").start()
    try:
        print("1/2 the store: PostgreSQL vs SQLite", flush=True)
        urls = {
            "sqlite": f"sqlite:///{root / 'store' / 'runs.sqlite3'}",
            "postgresql": postgres.create_database("store"),
            "postgresql_async_commit": postgres.create_database(ASYNC_COMMIT_DATABASE),
        }
        results["postgres"] = asyncio.run(postgres_settings(postgres.url))
        rounds = asyncio.run(measure_store(urls, args.rounds, args.runs))
        results["store"] = {"rounds": rounds, "summary": summarise_store(rounds)}

        print("2/2 1 vs 3 frontends on one tritonserver", flush=True)
        database_url = postgres.create_database("replicas")
        triton = EmbeddedTriton.on_free_ports(DEFAULT_MODEL_REPOSITORY, DEFAULT_MODEL_PATH, ready_timeout_s=240).start()
        try:
            # The model's first calls are slow (seconds): warm it before any configuration is timed.
            asyncio.run(transport.closed_loop_grpc(triton.grpc_url, workload, args.concurrency, 4 * args.concurrency))
            rows = measure_replicas(
                root, triton.grpc_url, database_url, workload, args.rounds, args.concurrency, args.requests
            )
        finally:
            triton.stop()
        results["replicas"] = {"rounds": rows, "summary": summarise_replicas(rows)}
    finally:
        postgres.destroy()
        shutil.rmtree(root, ignore_errors=True)

    results["elapsed_s"] = time.monotonic() - started
    results["machine"]["load_average_after"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    args.out.write_text(render(results))
    print(f"wrote {args.out} in {results['elapsed_s'] / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
