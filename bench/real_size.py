"""Real size through the whole stack on this CPU: ``make serve``'s stack on the full-size SD 1.5 folder.

Starts ``python -m embedded.stack`` (tritonserver, its supervisor, the frontend: what ``make serve-sd15``
runs) on free ports, sends one 512x512 request through the frontend, and meanwhile polls ``/readyz``,
runs the container's liveness probe (``docker/triton_canary.py``) and samples every process's memory.
Writes ``docs/real-size.json`` and ``docs/real-size.md``. Exit 1 when the request failed, a probe
called the busy server dead, ``/readyz`` answered anything but 200 during the request, or the
supervisor restarted Triton.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import psutil
from PIL import Image

from bench.stats import table
from embedded.frontend_process import API_KEYS, WEBHOOK_SECRET
from embedded.lifecycle import stop_on_signals
from embedded.sd15_model import BUILD_STAMP, DEFAULT_FOLDER
from embedded.triton_server import REPO_ROOT, free_port, stub_model

DOCS = REPO_ROOT / "docs"
CANARY = REPO_ROOT / "docker" / "triton_canary.py"
REQUEST = {"prompt": "a photo of an astronaut riding a horse on mars", "num_inference_steps": 4, "strength": 0.5}
REQUEST |= {"guidance_scale": 7.5, "seed": 120, "negative_prompt": ""}


def init_image_b64(side: int) -> str:
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


class Memory:
    """Peak RSS of the stack (frontend + supervisor), tritonserver and the Python stub, sampled."""

    def __init__(self, stack_pid: int) -> None:
        self.stack = psutil.Process(stack_pid)
        self.peak_mib: dict[str, float] = {}
        self.shm_peak_mib = 0.0

    def sample(self) -> None:
        try:
            processes = {"frontend + supervisor": self.stack}
            for child in self.stack.children(recursive=True):
                model = stub_model(child.cmdline())
                name = "tritonserver" if child.name() == "tritonserver" else {"sd_img2img": "stub"}.get(model or "", "")
                processes.setdefault(name, child)
            for name, process in processes.items():
                if name:
                    rss = process.memory_info().rss / 2**20
                    self.peak_mib[name] = max(self.peak_mib.get(name, 0.0), rss)
        except psutil.Error:
            pass
        shm = sum(p.stat().st_size for p in Path("/dev/shm").glob("triton_sd_*") if p.is_file())  # noqa: S108
        self.shm_peak_mib = max(self.shm_peak_mib, shm / 2**20)


def triton_stats(http_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{http_url}/v2/models/sd_img2img/stats", timeout=10) as answer:  # noqa: S310
        return dict(json.load(answer)["model_stats"][0])


def steps_metric(metrics_url: str) -> float:
    with urllib.request.urlopen(f"http://{metrics_url}/metrics", timeout=10) as answer:  # noqa: S310
        for line in answer.read().decode().splitlines():
            if line.startswith("sd_img2img_denoising_steps_total{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


async def poll(http: aiohttp.ClientSession, url: str) -> int:
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=30)) as response:
            await response.read()
            return response.status
    except (TimeoutError, aiohttp.ClientError):
        return -1


async def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port(), "frontend": free_port()}
    http_url, metrics_url = f"127.0.0.1:{ports['http']}", f"127.0.0.1:{ports['metrics']}"
    frontend = f"http://127.0.0.1:{ports['frontend']}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SD_")}
    env |= {"SD_PORT": str(ports["frontend"]), "SD_DATA_DIR": str(workdir / "data"), "SD_API_KEYS": API_KEYS[0]}
    env |= {"SD_WEBHOOK_SECRET": WEBHOOK_SECRET, "PYTHONPATH": str(REPO_ROOT)}
    log_path = workdir / "stack.log"
    command = [sys.executable, "-m", "embedded.stack", "--model-path", str(args.model_path)]
    command += [f"--triton-{name}-port={ports[name]}" for name in ("http", "grpc", "metrics")]
    started = time.monotonic()
    with log_path.open("wb") as log:
        stack = subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    memory = Memory(stack.pid)
    figures: dict[str, Any] = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU", "request": {}}
    figures["build"] = json.loads((args.model_path / BUILD_STAMP).read_text())
    probe_results: list[tuple[float, int, str]] = []
    readyz: list[tuple[float, int]] = []
    try:
        async with aiohttp.ClientSession(headers={"Authorization": API_KEYS[0]}) as http:
            while "tritonserver ready" not in log_path.read_text(errors="replace"):
                if stack.poll() is not None or time.monotonic() - started > 900:
                    raise RuntimeError(f"the stack did not start:\n{log_path.read_text(errors='replace')[-3000:]}")
                memory.sample()
                await asyncio.sleep(0.5)
            figures["triton_ready_s"] = round(time.monotonic() - started, 1)
            while await poll(http, f"{frontend}/readyz") != 200:
                memory.sample()
                await asyncio.sleep(0.5)
            figures["frontend_ready_s"] = round(time.monotonic() - started, 1)
            memory.sample()
            figures["memory_after_load_mib"] = {k: round(v) for k, v in memory.peak_mib.items()}

            stats_before, steps_before = triton_stats(http_url), steps_metric(metrics_url)
            body = json.dumps({**REQUEST, "image": init_image_b64(args.size)})
            sent = time.monotonic()

            async def predict() -> tuple[int, dict[str, Any]]:
                timeout = aiohttp.ClientTimeout(total=3600)
                async with http.post(f"{frontend}/predict", data=body, timeout=timeout) as response:
                    return response.status, await response.json()

            request = asyncio.create_task(predict())
            next_probe = sent
            while not request.done():
                memory.sample()
                readyz.append((time.monotonic() - sent, await poll(http, f"{frontend}/readyz")))
                if time.monotonic() >= next_probe:  # the Kubernetes liveness probe, every 10 s as in triton.yaml
                    next_probe += 10
                    probe = await asyncio.to_thread(
                        subprocess.run,
                        [sys.executable, str(CANARY), "--url", http_url, "--metrics-url", metrics_url]
                        + ["--timeout", "20", "--stall", "600", "--state-file", str(workdir / "probe.json")],
                        capture_output=True,
                        text=True,
                        check=False,
                    )
                    said = (probe.stdout + probe.stderr).strip()
                    probe_results.append((round(time.monotonic() - sent, 1), probe.returncode, said))
                await asyncio.sleep(1)
            status, answer = await request
            latency = time.monotonic() - sent
            stats_after, steps_after = triton_stats(http_url), steps_metric(metrics_url)
    finally:
        memory.sample()
        stack.terminate()
        try:
            stack.wait(timeout=120)
        except subprocess.TimeoutExpired:
            stack.kill()
    logs = log_path.read_text(errors="replace")
    inference = {
        key: (stats_after["inference_stats"][key]["ns"] - stats_before["inference_stats"][key]["ns"]) / 1e9
        for key in ("queue", "compute_input", "compute_infer", "compute_output")
    }
    figures["request"] = {
        "status": status,
        "size": args.size,
        **{k: v for k, v in REQUEST.items() if k != "prompt"},
        "end_to_end_s": round(latency, 1),
        "frontend_timings_ms": answer.get("timings_ms"),
        "triton_s": {k: round(v, 2) for k, v in inference.items()},
        "denoising_steps": steps_after - steps_before,
        "error": answer.get("error"),
    }
    figures["memory_peak_mib"] = {k: round(v) for k, v in memory.peak_mib.items()}
    figures["shm_peak_mib"] = round(memory.shm_peak_mib, 1)
    figures["readyz_during_request"] = {
        "polls": len(readyz),
        "non_200": [(round(t, 1), s) for t, s in readyz if s != 200],
    }
    figures["liveness_probe_during_request"] = [{"at_s": t, "exit": rc, "said": said} for t, rc, said in probe_results]
    figures["supervisor_restarts"] = logs.count("restarting tritonserver")
    figures["supervisor_lines"] = [line for line in logs.splitlines() if line.startswith("supervisor:")]
    figures["ok"] = (
        status == 200
        and not figures["readyz_during_request"]["non_200"]
        and all(rc == 0 for _, rc, _ in probe_results)
        and figures["supervisor_restarts"] == 0
    )
    return figures


def write_report(figures: dict[str, Any], path: Path) -> None:
    request, build = figures["request"], figures["build"]
    timings = request.get("frontend_timings_ms") or {}
    triton = request["triton_s"]
    params = build.get("parameters", {})
    probes = figures["liveness_probe_during_request"]
    lines = [
        "# Real size: full-size SD 1.5 through the whole stack on this CPU",
        "",
        "Written by `make real-size` (also run by `make reliability`): `bench/real_size.py` starts",
        "`python -m embedded.stack` (what `make serve-sd15` runs: tritonserver, its supervisor, the frontend)",
        "on the random-weight full-size SD 1.5 folder built by `make model-sd15`, and sends one request",
        "through the frontend while polling `/readyz` every second and running the Kubernetes liveness probe",
        "(`docker/triton_canary.py`) every 10 s. Random weights: the images are noise, the work is the",
        "real model's.",
        "",
        f"Machine: {figures['machine']}. Model: UNet {params.get('unet', 0) / 1e6:.2f} M, VAE"
        f" {params.get('vae', 0) / 1e6:.2f} M, text encoder {params.get('text_encoder', 0) / 1e6:.2f} M"
        f" parameters, {build.get('dtype')}; built in {build.get('build_s')} s, saved in {build.get('save_s')} s.",
        "",
        "## Load",
        "",
        *table(
            ["step", "seconds from start"],
            [
                ["tritonserver ready (model loaded)", str(figures["triton_ready_s"])],
                ["frontend `/readyz` 200", str(figures["frontend_ready_s"])],
            ],
        ),
        "",
        f"## The request: {request['size']}x{request['size']}, {request['num_inference_steps']} steps x strength"
        f" {request['strength']}, guidance {request['guidance_scale']}",
        "",
        f"Answer: HTTP {request['status']}"
        + (f" {request['error']}" if request.get("error") else "")
        + f", {request['denoising_steps']:.0f} denoising steps counted by the model's step metric.",
        "",
        *table(
            ["part", "seconds"],
            [
                ["end to end (client)", str(request["end_to_end_s"])],
                ["frontend: decode", f"{timings.get('decode', 0) / 1000:.3f}"],
                ["frontend: Triton call", f"{timings.get('triton', 0) / 1000:.1f}"],
                ["frontend: encode", f"{timings.get('encode', 0) / 1000:.3f}"],
                ["Triton: queue", str(triton["queue"])],
                ["Triton: compute input", str(triton["compute_input"])],
                ["Triton: compute (the pipeline)", str(triton["compute_infer"])],
                ["Triton: compute output", str(triton["compute_output"])],
            ],
        ),
        "",
        "## Peak memory (RSS, MiB)",
        "",
        *table(
            ["process", "after load", "peak"],
            [
                *(
                    [name, str(figures["memory_after_load_mib"].get(name, "")), str(peak)]
                    for name, peak in figures["memory_peak_mib"].items()
                ),
                ["Python backend shared memory (`/dev/shm`)", "", str(figures["shm_peak_mib"])],
            ],
        ),
        "",
        "## Busy is not dead",
        "",
        f"- `/readyz` during the request: {figures['readyz_during_request']['polls']} polls, non-200:"
        f" {figures['readyz_during_request']['non_200'] or 'none'}.",
        f"- Supervisor restarts: {figures['supervisor_restarts']}.",
        f"- Liveness probe (`triton_canary.py --timeout 20 --stall 600`): {len(probes)} runs, exit codes"
        f" {sorted({p['exit'] for p in probes})}.",
        "",
        *table(["at (s)", "exit", "what it said"], [[str(p["at_s"]), str(p["exit"]), p["said"][:160]] for p in probes]),
        "",
        "Supervisor lines: " + ("; ".join(figures["supervisor_lines"]) or "none") + ".",
        "",
        f"Verdict: {'all checks passed' if figures['ok'] else 'FAILED'}.",
        "",
    ]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model-path", type=Path, default=DEFAULT_FOLDER)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--out", type=Path, default=DOCS / "real-size.md")
    args = parser.parse_args(argv)
    stop_on_signals()  # SIGTERM, SIGHUP and Ctrl-C still run the cleanup that stops the servers
    args.model_path = args.model_path.resolve()
    with tempfile.TemporaryDirectory(prefix="real-size-") as workdir:
        figures = asyncio.run(measure(args, Path(workdir)))
    args.out.with_suffix(".json").write_text(json.dumps(figures, indent=1) + "\n")
    write_report(figures, args.out)
    print(args.out.read_text())
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
