"""``python -m bench.fleet``: many Triton pods behind one frontend, written to docs/bench-fleet.md (+ .json).

The fleet as ``make serve-fleet`` runs it: ``--pods`` tritonservers on 127.0.0.2 and up, each with its own
model repository (and so its own progress folder), the tiny model paced at ``--pace-ms`` a denoising step,
as a GPU with a fixed step time, so this 2-core CPU is not what limits the fleet. One frontend (SQLite).
Every figure comes from one run of this script, placements and pod counts side by side:

1. Progress: background runs followed by SSE clients (``GET /runs/{id}/events``); the distinct steps each
   sees, on all the pods against one pod.
2. A short request while long runs of another size hold all pods but one: its latency against alone,
   for our placement and for round robin (``SD_POD_PLACEMENT``), alternating.
3. Uniform traffic: requests per second with all the pods against one, at the same clients per pod.
4. One pod's model stub killed: every synchronous request and every ``/readyz`` poll meanwhile.
5. One pod SIGKILLed with background and synchronous runs in flight on every pod: how each ends.
6. The autoscaling signals under overload: Triton's pending count and the model's waiting rows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench import load
from bench.stats import percentile, table
from bench.workload import Workload
from embedded.frontend_process import API_KEYS, Frontend
from embedded.lifecycle import stop_on_signals
from embedded.pods import fleet_url, kill_pod, make_pods, model_stub, start_pods, stop_pods
from embedded.tiny_model import build
from embedded.triton_server import DEFAULT_MODEL_PATH, REPO_ROOT, EmbeddedTriton

HEADERS = {"Authorization": API_KEYS[0], "Content-Type": "application/json"}
ASYNC = {"Prefer": "respond-async"}
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # pods side by side on two cores


def body(size: int, steps: int, seed: int) -> dict[str, Any]:
    image = Workload(size=size, variants=1).png_b64()[0]
    return {"prompt": "fleet", "image": image, "num_inference_steps": steps, "strength": 1.0, "seed": seed}


async def predict(http: aiohttp.ClientSession, url: str, payload: dict[str, Any], **kwargs: Any) -> tuple[int, Any]:
    async with http.post(f"{url}/predict", json=payload, **kwargs) as response:
        return response.status, await response.json()


async def wait_final(http: aiohttp.ClientSession, url: str, run_id: str, timeout_s: float = 300) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        async with http.get(f"{url}/runs/{run_id}") as response:
            status = (await response.json()).get("status")
        if status in ("succeeded", "failed", "canceled", "aborted"):
            return str(status)
        await asyncio.sleep(0.2)
    return "still running"


class Bench:
    def __init__(self, pods: list[EmbeddedTriton], root: Path) -> None:
        self.pods, self.root = pods, root

    def frontend(self, pods: list[EmbeddedTriton], **settings: str) -> Frontend:
        env = {"SD_POD_CHECK_S": "0.5", "SD_READYZ_CACHE_S": "0.25", **settings}
        name = f"fe-{len(pods)}-{time.monotonic_ns()}"
        return Frontend(self.root / name, fleet_url(pods), env).start(120)

    # 1. Progress -------------------------------------------------------------------------------------

    async def progress(self, runs: int, steps: int) -> dict[str, Any]:
        seen = {}
        for label, pods in (("one pod", self.pods[:1]), ("all pods", self.pods)):
            frontend = self.frontend(pods)
            try:
                async with aiohttp.ClientSession(headers=HEADERS) as http:
                    counts = await asyncio.gather(*(self._follow(http, frontend.url, steps, i) for i in range(runs)))
            finally:
                frontend.stop()
            seen[label] = sum(counts) / len(counts)
        return {"distinct_steps": seen, "ratio": seen["all pods"] / seen["one pod"], "runs": runs, "steps": steps}

    async def _follow(self, http: aiohttp.ClientSession, url: str, steps: int, seed: int) -> int:
        status, accepted = await predict(http, url, body(64, steps, seed), headers=ASYNC)
        assert status == 202, accepted
        distinct: set[int] = set()
        async with http.get(f"{url}/runs/{accepted['run_id']}/events", timeout=aiohttp.ClientTimeout(600)) as events:
            event = ""
            async for raw in events.content:
                line = raw.decode().strip()
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event == "progress":
                    distinct.add(int(json.loads(line[5:])["step"]))
        return len(distinct)  # the stream ends after the run's final event

    # 2. A short request among long ones ---------------------------------------------------------------

    async def short_among_long(self, samples: int, short_steps: int, long_steps: int) -> dict[str, Any]:
        """Long runs hold all pods but one for the whole series (background runs, cancelled after); short
        requests are sent one after another. In rounds, the placements' order flipped each round."""
        out: dict[str, Any] = {}
        frontends = {placement: self.frontend(self.pods, SD_POD_PLACEMENT=placement) for placement in PLACEMENTS}
        times: dict[str, list[float]] = {placement: [] for placement in PLACEMENTS}
        try:
            async with aiohttp.ClientSession(headers=HEADERS) as http:
                alone = [await self._timed(http, frontends[PLACEMENTS[0]].url, short_steps, i) for i in range(3)]
                out["alone_s"] = sorted(alone)[1]
                rounds = 2
                for round_ in range(rounds):
                    for placement in PLACEMENTS if round_ % 2 == 0 else PLACEMENTS[::-1]:
                        url = frontends[placement].url
                        holders = [
                            (await predict(http, url, body(128, long_steps, 100 + j), headers=ASYNC))[1]["run_id"]
                            for j in range(len(self.pods) - 1)
                        ]
                        await asyncio.sleep(1.0)  # the long runs are in their pods
                        for i in range(samples // rounds):
                            times[placement].append(await self._timed(http, url, short_steps, i))
                        for run_id in holders:
                            async with http.post(f"{url}/runs/{run_id}/cancel"):
                                pass
                        await asyncio.gather(*(wait_final(http, url, run_id) for run_id in holders))
        finally:
            for frontend in frontends.values():
                frontend.stop()
        for placement, values in times.items():
            out[placement] = {"p50_s": percentile(values, 0.5), "p90_s": percentile(values, 0.9), "samples": values}
            out[placement]["p90_x_alone"] = out[placement]["p90_s"] / out["alone_s"]
        return out

    async def _timed(self, http: aiohttp.ClientSession, url: str, steps: int, seed: int) -> float:
        started = time.perf_counter()
        status, answer = await predict(http, url, body(64, steps, seed))
        assert status == 200, answer
        return time.perf_counter() - started

    # 3. Uniform traffic -------------------------------------------------------------------------------

    async def uniform(
        self, clients_per_pod: int, requests_per_pod: int, steps: int, guidance_scale: float
    ) -> dict[str, Any]:
        """1 to N pods at the same clients per pod: images/s, and each pod's mean rows per UNet forward."""
        out: dict[str, Any] = {"guidance_scale": guidance_scale, "pods": {}}
        workload = Workload(size=64, num_inference_steps=steps, strength=1.0, guidance_scale=guidance_scale)
        async with aiohttp.ClientSession() as http:
            for n in range(1, len(self.pods) + 1):
                pods = self.pods[:n]
                frontend = self.frontend(pods)
                try:
                    before = [await scrape(http, pod) for pod in pods]
                    figures = await load.run(
                        frontend.url, API_KEYS[0], workload, clients_per_pod * n, requests_per_pod * n
                    )
                    after = [await scrape(http, pod) for pod in pods]
                finally:
                    frontend.stop()
                figures["rows_per_forward"] = [
                    (a.get(ROWS_SUM, 0) - b.get(ROWS_SUM, 0)) / max(1.0, a.get(ROWS_COUNT, 0) - b.get(ROWS_COUNT, 0))
                    for b, a in zip(before, after, strict=True)
                ]
                out["pods"][str(n)] = figures
        out["one pod"], out["all pods"] = out["pods"]["1"], out["pods"][str(len(self.pods))]
        out["ratio"] = out["all pods"]["images_s"] / out["one pod"]["images_s"]
        return out

    # 4. A dead stub -----------------------------------------------------------------------------------

    async def dead_stub(self, requests: int, steps: int) -> dict[str, Any]:
        frontend = self.frontend(self.pods)
        broken = self.pods[0]
        try:
            model_stub(broken).kill()
            polls: list[int] = []
            stop = asyncio.Event()
            async with aiohttp.ClientSession(headers=HEADERS) as http:

                async def poll() -> None:
                    while not stop.is_set():
                        async with http.get(f"{frontend.url}/readyz") as response:
                            polls.append(response.status)
                        await asyncio.sleep(0.25)

                poller = asyncio.create_task(poll())
                clients = len(self.pods)
                answers = []
                for start in range(0, requests, clients):
                    batch = range(start, min(requests, start + clients))
                    answers += await asyncio.gather(*(predict(http, frontend.url, body(64, steps, i)) for i in batch))
                stop.set()
                await poller
                async with http.get(f"{frontend.url}/readyz") as response:
                    out_after = (await response.json()).get("pods_out", {})
        finally:
            frontend.stop()
            kill_pod(broken)
            broken.start()
        return {
            "requests": requests,
            "answered_200": sum(status == 200 for status, _ in answers),
            "readyz_polls": len(polls),
            "readyz_200": polls.count(200),
            "pods_out_after": out_after,
        }

    # 5. A pod lost mid-run ----------------------------------------------------------------------------

    async def pod_killed(self, steps: int) -> dict[str, Any]:
        frontend = self.frontend(self.pods)
        victim = self.pods[-1]
        try:
            async with aiohttp.ClientSession(headers=HEADERS) as http:
                n = len(self.pods)
                sync = [asyncio.create_task(predict(http, frontend.url, body(64, steps, i))) for i in range(n)]
                accepted = [
                    (await predict(http, frontend.url, body(64, steps, 50 + i), headers=ASYNC))[1] for i in range(n)
                ]
                await asyncio.sleep(2.0)
                kill_pod(victim)
                sync_statuses = [status for status, _ in await asyncio.gather(*sync)]
                background = [await wait_final(http, frontend.url, a["run_id"]) for a in accepted]
        finally:
            frontend.stop()
            victim.start()
        return {
            "sync": {"runs": len(sync_statuses), "answered_200": sync_statuses.count(200)},
            "background": {"runs": len(background), "succeeded": background.count("succeeded")},
        }

    # 6. Autoscaling signals ---------------------------------------------------------------------------

    async def signals(self, levels: list[int], steps: int, per_client: int) -> dict[str, Any]:
        """One pod under closed loops of more and more clients (2 rows each: under guidance): the median of
        each candidate signal while the loop runs, and the pod's images/s."""
        pod = self.pods[0]
        frontend = self.frontend([pod])
        out: dict[str, Any] = {}
        workload = Workload(size=64, num_inference_steps=steps, strength=1.0)
        try:
            async with aiohttp.ClientSession() as http:
                for clients in levels:
                    samples: list[dict[str, float]] = []
                    loop = asyncio.create_task(
                        load.run(frontend.url, API_KEYS[0], workload, clients, clients * per_client)
                    )
                    while not loop.done():
                        samples.append(await scrape(http, pod))
                        await asyncio.sleep(0.25)
                    figures = await loop
                    middle = samples[len(samples) // 4 : max(len(samples) // 4 + 1, 3 * len(samples) // 4)]
                    out[str(clients)] = {
                        name: percentile([sample.get(name, 0.0) for sample in middle], 0.5) for name in SIGNALS
                    } | {"images_s": figures["images_s"], "p50_ms": figures["p50_ms"]}
        finally:
            frontend.stop()
        return out


# The autoscaling signal's candidates, as each pod's metrics endpoint serves them (model sd_img2img), and
# the model's histogram of rows per UNet forward.
SIGNALS = ("nv_inference_pending_request_count", "sd_img2img_rows_waiting", "sd_img2img_rows_in_flight")
ROWS_SUM, ROWS_COUNT = "sd_img2img_unet_rows_sum", "sd_img2img_unet_rows_count"


async def scrape(http: aiohttp.ClientSession, pod: EmbeddedTriton) -> dict[str, float]:
    async with http.get(f"http://{pod.host}:{pod.metrics_port}/metrics") as response:
        text = await response.text()
    values = {}
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        if name in (*SIGNALS, ROWS_SUM, ROWS_COUNT) and 'model="sd_img2img"' in rest:
            values[name] = float(rest.rsplit(" ", 1)[1])
    return values


PLACEMENTS = ("fewest_forwards", "round_robin")


def report(figures: dict[str, Any], args: argparse.Namespace) -> str:
    p, s, u, d, k = (figures[key] for key in ("progress", "short", "uniform", "dead_stub", "pod_killed"))
    rows = [
        ("Progress: distinct steps an SSE client sees, all pods / one pod", f"{p['ratio']:.2f}", ">= 0.9"),
        (
            "Short request during long runs: p90 / alone, our placement",
            f"{s['fewest_forwards']['p90_x_alone']:.2f}",
            "<= 1.3",
        ),
        ("... the same with round robin", f"{s['round_robin']['p90_x_alone']:.2f}", "(for comparison)"),
        ("Uniform traffic: images/s, all pods / one pod", f"{u['ratio']:.2f}", ">= 2.7"),
        (
            "One stub killed: synchronous requests answered 200",
            f"{d['answered_200']}/{d['requests']}",
            "all",
        ),
        ("... /readyz polls answered 200", f"{d['readyz_200']}/{d['readyz_polls']}", "all"),
        (
            "One pod SIGKILLed mid-run: synchronous runs answered 200",
            f"{k['sync']['answered_200']}/{k['sync']['runs']}",
            "all",
        ),
        ("... background runs succeeded", f"{k['background']['succeeded']}/{k['background']['runs']}", "all"),
    ]
    levels = figures["signals"]
    signal_rows = [
        (clients, *(f"{levels[clients][name]:g}" for name in SIGNALS), f"{levels[clients]['images_s']:.2f}",
         f"{levels[clients]['p50_ms'] / 1000:.1f}")
        for clients in levels
    ]  # fmt: skip
    lines = [
        "# Many Triton pods behind one frontend (`python -m bench.fleet`)",
        "",
        f"{args.pods} pods on 127.0.0.2 and up, the tiny model paced at {args.pace_ms} ms a denoising step, one",
        f"frontend; measured {time.strftime('%Y-%m-%d')} on this 2-core CPU in {figures['wall_s']:.0f} s. What each",
        "figure is: the module docstring of `bench/fleet.py`; every sample: `bench-fleet.json`.",
        "",
        *table(("figure", "measured", "target (issue 30)"), rows),
        "",
        f"Short request ({args.short_steps} steps, 64 px) alone: {s['alone_s']:.2f} s; among "
        f"{args.pods - 1} long runs (128 px, {args.holder_steps} steps): p50/p90 "
        f"{s['fewest_forwards']['p50_s']:.2f}/{s['fewest_forwards']['p90_s']:.2f} s with our placement, "
        f"{s['round_robin']['p50_s']:.2f}/{s['round_robin']['p90_s']:.2f} s with round robin "
        f"({args.samples} samples each, in two rounds, the order flipped).",
        f"Uniform: {u['one pod']['images_s']:.2f} images/s on one pod ({u['one pod']['concurrency']} clients), "
        f"{u['all pods']['images_s']:.2f} on {args.pods} ({u['all pods']['concurrency']} clients), "
        f"guidance_scale {u['guidance_scale']:g} (see `--uniform-guidance`).",
        f"Progress: {p['distinct_steps']['one pod']:.1f} distinct steps per run on one pod, "
        f"{p['distinct_steps']['all pods']:.1f} on {args.pods} ({p['runs']} runs of {p['steps']} steps at once).",
        "",
        "## Uniform traffic, 1 to N pods (the same clients per pod)",
        "",
        *table(
            ("pods", "clients", "images/s", "x one pod", "rows per UNet forward, per pod"),
            [
                (
                    n,
                    str(f["concurrency"]),
                    f"{f['images_s']:.2f}",
                    f"{f['images_s'] / u['one pod']['images_s']:.2f}",
                    ", ".join(f"{rows:.1f}" for rows in f["rows_per_forward"]),
                )
                for n, f in u["pods"].items()
            ],
        ),  # fmt: skip
        "",
        "## Which signal rises with overload (one pod, medians while each closed loop runs)",
        "",
        f"The pod holds {args.pod_rows} rows (max_rows_in_flight); each client's request is 2 rows (guidance).",
        "",
        *table(("clients", *SIGNALS, "images/s", "p50 latency (s)"), signal_rows),
        "",
    ]
    return "\n".join(lines)


async def measure(args: argparse.Namespace, pods: list[EmbeddedTriton]) -> dict[str, Any]:
    bench = Bench(pods, args.work)
    started = time.monotonic()
    scenarios = {
        "progress": lambda: bench.progress(runs=len(pods), steps=args.long_steps),
        "short": lambda: bench.short_among_long(args.samples, args.short_steps, args.holder_steps),
        "uniform": lambda: bench.uniform(
            args.clients_per_pod, args.requests_per_pod, args.short_steps, args.uniform_guidance
        ),
        "dead_stub": lambda: bench.dead_stub(args.stub_requests, args.short_steps),
        "pod_killed": lambda: bench.pod_killed(args.long_steps),
        "signals": lambda: bench.signals(args.levels, args.short_steps, args.requests_per_client),
    }
    wanted = args.only.split(",") if args.only else list(scenarios)
    figures: dict[str, Any] = {name: await scenarios[name]() for name in wanted}
    figures["wall_s"] = time.monotonic() - started
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pods", type=int, default=3)
    parser.add_argument("--pace-ms", type=int, default=250)
    parser.add_argument("--short-steps", type=int, default=8)
    parser.add_argument("--long-steps", type=int, default=24)
    parser.add_argument("--samples", type=int, default=12, help="short requests per placement")
    parser.add_argument("--holder-steps", type=int, default=120, help="the long runs that hold pods meanwhile")
    parser.add_argument("--clients-per-pod", type=int, default=8)
    # 1: one UNet row per request. Under guidance (2 rows) three pods of 8 clients each need more than this
    # CPU's two cores per 250 ms step (one pod alone runs about 310 ms a step at 16 rows), and the CPU, not
    # the fleet, is measured.
    parser.add_argument("--uniform-guidance", type=float, default=1.0)
    parser.add_argument("--requests-per-pod", type=int, default=48)
    parser.add_argument("--stub-requests", type=int, default=30)
    parser.add_argument("--levels", type=lambda v: [int(x) for x in v.split(",")], default=[4, 16, 32, 64])
    parser.add_argument("--requests-per-client", type=int, default=6, help="at each level of the signals run")
    parser.add_argument("--pod-rows", type=int, default=32, help="the model's max_rows_in_flight (as shipped)")
    parser.add_argument("--work", type=Path, default=REPO_ROOT / ".build" / "bench-fleet")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "bench-fleet.md")
    parser.add_argument("--only", default="", help="some of: progress,short,uniform,dead_stub,pod_killed,signals")
    args = parser.parse_args(argv)
    stop_on_signals()
    build(DEFAULT_MODEL_PATH)
    pods = make_pods(
        args.pods, args.work, DEFAULT_MODEL_PATH, pace_ms=args.pace_ms, env=ONE_THREAD, log_dir=args.work / "logs"
    )
    start_pods(pods)
    try:
        figures = asyncio.run(measure(args, pods))
    finally:
        stop_pods(pods)
    if args.only:  # a partial run: figures only, no report
        print(json.dumps(figures, indent=1))
        return 0
    args.out.write_text(report(figures, args))
    args.out.with_suffix(".json").write_text(json.dumps(figures, indent=1))
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
