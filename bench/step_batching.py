"""Step-level against request-level batching, side by side on one tritonserver (part of ``make bench``).

One server holds the shipped model (``batching: step``) and the same model with ``batching: request``
under another name; every round runs each, alternating, so this machine's drift hits both alike.

* Throughput at concurrency 8: a uniform workload (every request the same settings) against a mixed
  one (steps, strength, guidance and scheduler drawn per request) with the same denoising work: every
  request runs 6 denoising steps under guidance.
* Head-of-line blocking: a short request's time alone, and sent while a long run of its size, or of a
  larger size, is in the model.

``--family`` picks the tiny model (``embedded/tiny_model.py``; built when missing) at the same sizes, so the
families' reports compare. Writes docs/step-batching.md and .json (SD 1.5), docs/step-batching-<family>.md
for another family; ``--seconds`` and ``--rounds`` size it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import numpy as np
import tritonclient.http as triton_http

from bench.stats import spread, table
from embedded.lifecycle import stop_on_signals
from embedded.tiny_model import FAMILIES, build, default_folder
from embedded.triton_calls import http_inputs, img2img
from embedded.triton_server import EmbeddedTriton, copy_model_repository
from frontend.generation import GenerationInput

STEP, REQUEST = "sd_img2img", "sd_img2img_request"
REPO_ROOT = Path(__file__).resolve().parent.parent
# (num_inference_steps, strength) pairs that all run int(steps * strength) = 6 denoising steps.
SIX_STEPS = [(12, 0.5), (6, 1.0), (8, 0.75), (24, 0.25), (10, 0.6), (20, 0.3)]
SCHEDULERS = ["", "euler", "ddim", "dpm++", "euler_a", "lms"]
GUIDANCE = [3.0, 5.0, 7.5, 9.0]
# The acceptance (set for SDXL, read for every family): step batching keeps mixed settings at this
# share of uniform throughput, and a short request behind a long run of its size within this many times alone.
MIXED_OVER_UNIFORM_MIN = 0.9
SAME_SIZE_BEHIND_LONG_MAX = 5.0


def bench_repository(tmp: Path) -> Path:
    repository = copy_model_repository(tmp, {})
    variant = repository / REQUEST
    variant.mkdir()
    (variant / "1").symlink_to(repository / STEP / "1", target_is_directory=True)
    config = (repository / STEP / "config.pbtxt").read_text()
    config = config.replace(f'name: "{STEP}"', f'name: "{REQUEST}"')
    old = '{ key: "batching" value: { string_value: "step" } }'
    assert old in config
    (variant / "config.pbtxt").write_text(config.replace(old, '{ key: "batching" value: { string_value: "request" } }'))
    return repository


@dataclass(frozen=True)
class Traffic:
    size: int = 64

    def image(self, i: int, size: int | None = None) -> np.ndarray:
        side = size or self.size
        return np.random.default_rng(i % 8).integers(0, 256, (side, side, 3), dtype=np.uint8)

    def uniform(self, i: int) -> GenerationInput:
        return img2img(self.image(i), prompt=f"prompt {i % 3}", num_inference_steps=12, strength=0.5, seed=i)

    def mixed(self, i: int) -> GenerationInput:
        rng = np.random.default_rng(10_000 + i)
        steps, strength = SIX_STEPS[int(rng.integers(len(SIX_STEPS)))]
        return replace(
            self.uniform(i),
            num_inference_steps=steps,
            strength=strength,
            guidance_scale=GUIDANCE[int(rng.integers(len(GUIDANCE)))],
            scheduler=SCHEDULERS[int(rng.integers(len(SCHEDULERS)))],
        )


def send(url: str, model: str, request: GenerationInput) -> float:
    client = triton_http.InferenceServerClient(url, network_timeout=600, connection_timeout=600)
    try:
        start = time.perf_counter()
        client.infer(model, http_inputs(request))
        return time.perf_counter() - start
    finally:
        client.close()


def closed_loop(url: str, model: str, make: Any, concurrency: int, seconds: float) -> dict[str, float]:
    """``concurrency`` clients, each sending its next request when its last one is answered."""
    done: list[float] = []
    lock = threading.Lock()
    failures: list[Exception] = []
    stop_at = time.perf_counter() + seconds
    counter = iter(range(10**9))

    def client() -> None:
        while time.perf_counter() < stop_at and not failures:
            with lock:
                i = next(counter)
            try:
                elapsed = send(url, model, make(i))
            except Exception as exc:  # a refused request must fail the bench, not just thin the count
                failures.append(exc)
                return
            with lock:
                done.append(elapsed)

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if failures:
        raise failures[0]
    return {"req_per_s": len(done) / wall, "requests": len(done), "p50_s": statistics.median(done)}


def head_of_line(url: str, model: str, traffic: Traffic, long_size: int, repeats: int) -> dict[str, float]:
    """A short request's time alone, and sent 0.5 s after a long run (150 steps) of ``long_size`` px."""
    short = traffic.uniform(1)
    alone = statistics.median(send(url, model, short) for _ in range(repeats))
    long_run = img2img(traffic.image(2, long_size), num_inference_steps=150, strength=1.0, seed=7)
    behind: list[float] = []
    long_s: list[float] = []
    for _ in range(repeats):
        holder = threading.Thread(target=lambda: long_s.append(send(url, model, long_run)))
        holder.start()
        time.sleep(0.5)
        behind.append(send(url, model, short))
        holder.join()
    during = statistics.median(behind)
    return {
        "alone_s": alone,
        "behind_long_s": during,
        "ratio": during / alone,
        "long_run_s": statistics.median(long_s),
        "long_size": long_size,
    }


def measure(url: str, args: argparse.Namespace) -> dict[str, Any]:
    traffic = Traffic(args.size)
    for model in (STEP, REQUEST):  # warm both: first calls build caches
        # Every scheduler the mixed traffic draws, once: a family's model that lacks one answers INVALID_ARG
        # listing those it takes, here rather than minutes in.
        for scheduler in SCHEDULERS:
            send(url, model, replace(traffic.uniform(0), scheduler=scheduler))
        closed_loop(url, model, traffic.mixed, 8, 2)
    rounds: list[dict[str, float]] = []
    for r in range(args.rounds):
        # The two variants back to back on each workload, their order alternating: the machine drifts by
        # tens of percent over minutes, so ratios are taken within a round.
        row: dict[str, float] = {}
        for name, make in (("uniform", traffic.uniform), ("mixed", traffic.mixed)):
            for model in (STEP, REQUEST) if r % 2 == 0 else (REQUEST, STEP):
                result = closed_loop(url, model, make, args.concurrency, args.seconds)
                row[f"{model}:{name}"] = result["req_per_s"]
                print(f"round {r + 1} {model} {name}: {result['req_per_s']:.1f} req/s", flush=True)
        rounds.append(row)
    hol = {
        model: {
            "same size": head_of_line(url, model, traffic, args.size, args.repeats),
            "larger size": head_of_line(url, model, traffic, 2 * args.size, args.repeats),
        }
        for model in (STEP, REQUEST)
    }
    for model, cases in hol.items():
        for case, figures in cases.items():
            print(f"head of line {model} {case}: {figures['ratio']:.1f}x", flush=True)
    mixed = paired(rounds, f"{STEP}:mixed", f"{STEP}:uniform")
    behind = hol[STEP]["same size"]["ratio"]
    acceptance = {
        "mixed_over_uniform": {
            **mixed,
            "target_min": MIXED_OVER_UNIFORM_MIN,
            "met": mixed["median"] >= MIXED_OVER_UNIFORM_MIN,
        },
        "same_size_behind_long": {
            "ratio": behind,
            "target_max": SAME_SIZE_BEHIND_LONG_MAX,
            "met": behind <= SAME_SIZE_BEHIND_LONG_MAX,
        },
    }
    return {
        "family": args.family,
        "rounds": rounds,
        "head_of_line": hol,
        "acceptance": acceptance,
        "traffic": {"size": args.size, "concurrency": args.concurrency},
    }


def median_of(rounds: list[dict[str, float]], key: str) -> float:
    return statistics.median(row[key] for row in rounds)


def paired(rounds: list[dict[str, float]], numerator: str, denominator: str) -> dict[str, float]:
    """The ratio within each round (both measured minutes apart at most), as median and range."""
    return spread([row[numerator] / row[denominator] for row in rounds])


def ratio_cell(ratios: dict[str, float]) -> str:
    return f"{ratios['median']:.2f} ({ratios['min']:.2f}-{ratios['max']:.2f})"


def render(result: dict[str, Any]) -> str:
    rounds = result["rounds"]
    t = result["traffic"]
    family = result.get("family", "sd1")  # runs before --family were SD 1.5's
    command = "python -m bench.step_batching" + ("" if family == "sd1" else f" --family {family}")
    lines = [
        "# Step-level against request-level batching" + ("" if family == "sd1" else f": {family}"),
        "",
        f"`make bench` (`{command}`): tiny model of family `{family}`, {t['size']}x{t['size']} px, one tritonserver"
        f" holding both variants, concurrency {t['concurrency']}, {len(rounds)} alternating rounds, medians.",
        "Every request runs 6 denoising steps under guidance; *mixed* draws steps x strength, guidance and scheduler"
        " per request (`bench/step_batching.py`).",
        "",
    ]
    throughput = []
    for model, label in ((STEP, "step (shipped)"), (REQUEST, "request")):
        uniform, mixed = median_of(rounds, f"{model}:uniform"), median_of(rounds, f"{model}:mixed")
        ratios = paired(rounds, f"{model}:mixed", f"{model}:uniform")
        throughput.append([label, f"{uniform:.1f}", f"{mixed:.1f}", ratio_cell(ratios)])
    lines += table(["batching", "uniform req/s", "mixed req/s", "mixed / uniform by round"], throughput)
    side = paired(rounds, f"{STEP}:uniform", f"{REQUEST}:uniform")
    lines += [
        "",
        f"Uniform traffic, step / request batching, by round: **{side['median']:.2f}** (median;"
        f" {side['min']:.2f}-{side['max']:.2f} over {len(rounds)} rounds). Each round runs both variants"
        " back to back on each workload; the req/s columns are medians over rounds, which the machine's drift"
        " moves more than the variants differ.",
        "",
        "Head-of-line blocking: a short request (6 steps) alone, and sent 0.5 s after a long run (150 steps):",
        "",
    ]
    lines += table(
        ["batching", "long run", "short alone s", "short behind the long run s", "ratio"],
        [
            [
                label,
                f"{case} ({f['long_size']} px)",
                f"{f['alone_s']:.3f}",
                f"{f['behind_long_s']:.3f}",
                f"{f['ratio']:.1f}x",
            ]
            for model, label in ((STEP, "step"), (REQUEST, "request"))
            for case, f in result["head_of_line"][model].items()
        ],
    )
    if "acceptance" in result:
        mixed, behind = result["acceptance"]["mixed_over_uniform"], result["acceptance"]["same_size_behind_long"]
        lines += [
            "",
            "Acceptance (step batching):",
            "",
            f"- mixed / uniform throughput by round **{mixed['median']:.2f}** (median; {mixed['min']:.2f}-"
            f"{mixed['max']:.2f}), target >= {mixed['target_min']}: {'met' if mixed['met'] else '**not met**'};",
            f"- a short request behind a long run of its size **{behind['ratio']:.1f}x** its time alone, target <="
            f" {behind['target_max']:.0f}x: {'met' if behind['met'] else '**not met**'}.",
        ]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=FAMILIES, default="sd1", help="which tiny model (default: sd1)")
    parser.add_argument("--model-path", help="a diffusers folder (default: the family's tiny model, built if missing)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="path without suffix (default: docs/step-batching[-<family>])")
    args = parser.parse_args(argv)
    stop_on_signals()
    if args.model_path is None:
        args.model_path = default_folder(args.family)
        build(args.model_path, family=args.family)
    if args.out is None:
        args.out = REPO_ROOT / "docs" / ("step-batching" + ("" if args.family == "sd1" else f"-{args.family}"))
    with (
        TemporaryDirectory() as tmp,
        EmbeddedTriton.on_free_ports(bench_repository(Path(tmp)), args.model_path) as server,
    ):
        result = measure(server.http_url, args)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(render(result))
    print(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
