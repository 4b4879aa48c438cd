"""How long the API-key check takes for keys that match the right one in none, all but the last, or all
of their characters: ``match_key`` alone, then a 401 over HTTP from a real frontend.

Figures only. Shared cores cannot show constant time by timing; ``tests/unit/test_auth.py`` checks it by
construction (the presented key is hashed, then compared with ``hmac.compare_digest`` against every
configured hash). Part of ``make bench``; writes docs/auth-timing.md.

    python -m bench.auth_timing [--batches 2000] [--rounds 500]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.stats import spread, table
from embedded.frontend_process import API_KEYS, Frontend
from embedded.lifecycle import stop_on_signals
from frontend.auth import key_hash, match_key

RIGHT = API_KEYS[0]
PRESENTED = {
    "0 leading chars match": "X" * len(RIGHT),
    "all but the last char match": RIGHT[:-1] + ("0" if RIGHT[-1] != "0" else "1"),
    "the right key": RIGHT,
}
PER_BATCH = 200
DEFAULT_OUT = Path("docs/auth-timing.md")


def time_checks(batches: int) -> dict[str, list[float]]:
    """ns per ``match_key`` call: one sample per batch of ``PER_BATCH`` calls, batches interleaved across keys."""
    hashes = tuple(key_hash(key) for key in API_KEYS)
    assert [match_key(key, hashes) is not None for key in PRESENTED.values()] == [False, False, True]
    samples: dict[str, list[float]] = {name: [] for name in PRESENTED}
    clock = time.perf_counter_ns
    for _ in range(batches):
        for name, key in PRESENTED.items():
            started = clock()
            for _ in range(PER_BATCH):
                match_key(key, hashes)
            samples[name].append((clock() - started) / PER_BATCH)
    return samples


async def time_401s(url: str, rounds: int) -> dict[str, list[float]]:
    """µs per GET of a run with a wrong key (each must be a 401), interleaved across the wrong keys."""
    wrong = {name: key for name, key in PRESENTED.items() if key != RIGHT}
    samples: dict[str, list[float]] = {name: [] for name in wrong}
    async with aiohttp.ClientSession() as session:
        for _ in range(rounds):
            for name, key in wrong.items():
                started = time.perf_counter_ns()
                async with session.get(url, headers={"Authorization": key}) as response:
                    await response.read()
                    if response.status != 401:
                        raise SystemExit(f"{name}: expected 401, got {response.status}")
                samples[name].append((time.perf_counter_ns() - started) / 1000)
    return samples


def render(checks: dict[str, list[float]], http: dict[str, list[float]], batches: int, rounds: int) -> str:
    def rows(samples: dict[str, list[float]]) -> list[list[str]]:
        return [
            [name, f"{s['median']:,.0f}", f"{s['min']:,.0f}-{s['max']:,.0f}"]
            for name, s in ((name, spread(values)) for name, values in samples.items())
        ]

    def ratio(samples: dict[str, list[float]]) -> float:
        medians = [statistics.median(values) for values in samples.values()]
        return max(medians) / min(medians)

    return "\n".join(
        [
            "# API-key check timing",
            "",
            "Written by `python -m bench.auth_timing` (part of `make bench`). Figures only: constant time is checked"
            " by construction in `tests/unit/test_auth.py`.",
            "",
            f"## `match_key`, ns per check ({batches} batches of {PER_BATCH}, interleaved)",
            "",
            *table(["presented key", "median", "range"], rows(checks)),
            "",
            f"Slowest / fastest median: **{ratio(checks):.2f}**.",
            "",
            f"## A 401 over HTTP from a real frontend, µs ({rounds} rounds, loopback)",
            "",
            *table(["presented key", "median", "range"], rows(http)),
            "",
            f"Slowest / fastest median: **{ratio(http):.2f}** (the network and aiohttp dominate).",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--batches", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    stop_on_signals()
    time_checks(10)  # warm up
    checks = time_checks(args.batches)
    with tempfile.TemporaryDirectory(prefix="auth-timing-") as tmp:
        # A 401 never reaches the model: the frontend needs no Triton for it.
        frontend = Frontend(Path(tmp), "127.0.0.1:1").start()
        try:
            http = asyncio.run(time_401s(f"{frontend.url}/runs/00000000-0000-0000-0000-000000000000", args.rounds))
        finally:
            frontend.stop()
    text = render(checks, http, args.batches, args.rounds)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
