"""Real size on this CPU: the full-size SD 1.5 through the whole stack, or SDXL's load, memory and one step.

``--family sd15`` (the default) starts ``python -m embedded.stack`` (tritonserver, its supervisor, the
frontend: what ``make serve-sd15`` runs) on free ports, sends one 512x512 request through the frontend,
and meanwhile polls ``/readyz``, runs the container's liveness probe (``docker/triton_canary.py``) and
samples every process's memory. Writes ``docs/real-size.json`` and ``docs/real-size.md``. Exit 1 when
the request failed, a probe called the busy server dead, ``/readyz`` answered anything but 200 during
the request, or the supervisor restarted Triton.

``--family sdxl`` (``make real-size-sdxl``) measures the full-size random SDXL base (``make model-sdxl``) in
this process, no stack: a 1024 px request is minutes of CPU per denoising step, so its load through the
serving code's loader (``Img2ImgRunner``), its memory, both text encoders, one UNet forward of 2 rows (a
request under guidance) and the VAE encode and decode at 1024 px say what a request costs. Writes
``docs/real-size-sdxl.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import io
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import psutil
from PIL import Image

from bench.direct import model_code_on_path
from bench.stats import table
from embedded import sd15_model, sdxl_model
from embedded.frontend_process import API_KEYS, WEBHOOK_SECRET
from embedded.lifecycle import stop_on_signals
from embedded.triton_server import REPO_ROOT, free_port, stub_model

DOCS = REPO_ROOT / "docs"
CANARY = REPO_ROOT / "docker" / "triton_canary.py"
REQUEST: dict[str, Any] = {
    "prompt": "a photo of an astronaut riding a horse on mars",
    "num_inference_steps": 4,
    "strength": 0.5,
}
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
    figures["build"] = json.loads((args.model_path / sd15_model.BUILD_STAMP).read_text())
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


class Stages:
    """Each stage's wall time, and the process's RSS after it (of which file-backed: weights that safetensors
    mapped rather than copied) and its peak RSS so far."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.rows: list[dict[str, Any]] = []

    def run(self, name: str, body: Callable[[], Any]) -> Any:
        started, cpu_started = time.perf_counter(), time.process_time()
        value = body()
        memory = self.process.memory_info()
        row = {
            "stage": name,
            "seconds": round(time.perf_counter() - started, 2),
            # CPU seconds of all this process's threads: on a machine others share, wall time stretches.
            "cpu_s": round(time.process_time() - cpu_started, 2),
            "load_avg_1m": round(os.getloadavg()[0], 1),
            "rss_mib": round(memory.rss / 2**20),
            "file_backed_mib": round(getattr(memory, "shared", 0) / 2**20),  # Linux: RssFile + RssShmem
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),  # KiB on Linux
        }
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        return value


def page_in(pipe: Any) -> int:
    """Read every weight once; returns the bytes. The loader maps the safetensors files: their pages are read
    at their first use, which would otherwise land in the first forward's time."""
    import torch

    total = 0
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            for tensor in (*component.parameters(), *component.buffers()):
                tensor.detach().sum()
                total += tensor.numel() * tensor.element_size()
    return total


def load_sdxl(model_path: Path, determinism: str) -> tuple[Any, str]:
    """The pipeline as the model's stub loads it (``Img2ImgRunner``); diffusers' own loader only where the
    runner does not load an SDXL pipeline (a checkout whose runner predates SDXL), and the reason said."""
    import torch

    model_code_on_path()
    try:
        from img2img_pipeline import Img2ImgRunner

        runner = Img2ImgRunner(str(model_path), device="cpu", dtype=torch.float32, determinism=determinism)
    except Exception as exc:  # noqa: BLE001 (said in the report, then the fallback)
        why = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
    else:
        if getattr(runner.pipe, "text_encoder_2", None) is not None:
            plan = runner.plan.spec() if runner.plan is not None else "none"
            return (
                runner.pipe,
                f"Img2ImgRunner, {type(runner.pipe).__name__}, determinism {determinism} (plan `{plan}`)",
            )
        why = f"it loaded a {type(runner.pipe).__name__}"
        del runner
        gc.collect()
    from diffusers import StableDiffusionXLImg2ImgPipeline

    pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(str(model_path), dtype=torch.float32, add_watermarker=False)
    return pipe, f"diffusers StableDiffusionXLImg2ImgPipeline.from_pretrained, not Img2ImgRunner ({why})"


def measure_sdxl(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from bench.gpu.variance import size_ids

    torch.manual_seed(0)
    side, stages = args.size, Stages()
    figures: dict[str, Any] = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU", "size": side}
    figures["torch_threads"] = torch.get_num_threads()
    stamp = args.model_path / sdxl_model.BUILD_STAMP
    figures["build"] = json.loads(stamp.read_text()) if stamp.exists() else {}
    stages.run("start (imports)", lambda: None)
    pipe, figures["loader"] = stages.run("load", lambda: load_sdxl(args.model_path, args.determinism))
    figures["dtype"] = str(pipe.unet.dtype).removeprefix("torch.")
    with torch.inference_mode():
        figures["weights_gib"] = round(stages.run("read every weight once (page in)", lambda: page_in(pipe)) / 2**30, 2)
        # Both text encoders, prompt and (empty, zeroed as force_zeros_for_empty_prompt says) negative.
        context, negative, pooled, negative_pooled = stages.run(
            "text encoders (prompt and negative)",
            lambda: pipe.encode_prompt(REQUEST["prompt"], device=pipe.device, do_classifier_free_guidance=True),
        )
        latent = side // pipe.vae_scale_factor
        rows: dict[str, Any] = {
            "sample": torch.randn(2, pipe.unet.config.in_channels, latent, latent),
            "encoder_hidden_states": torch.cat([negative, context]),
            "added_cond_kwargs": {
                "text_embeds": torch.cat([negative_pooled, pooled]),
                "time_ids": torch.tensor([size_ids(pipe.unet.config, side, pooled.shape[-1])] * 2),
            },
        }
        figures["unet_inputs"] = {
            "sample": list(rows["sample"].shape),
            "encoder_hidden_states": list(rows["encoder_hidden_states"].shape),
            **{k: list(v.shape) for k, v in rows["added_cond_kwargs"].items()},
        }
        stages.run(f"UNet forward, 2 rows at {side} px", lambda: pipe.unet(timestep=torch.tensor(500), **rows)[0])
        if not args.skip_vae:
            pixels = torch.rand(1, 3, side, side) * 2 - 1
            stages.run(f"VAE encode at {side} px", lambda: pipe.vae.encode(pixels).latent_dist.mean)
            latents = rows["sample"][:1] / pipe.vae.config.scaling_factor
            stages.run(f"VAE decode at {side} px", lambda: pipe.vae.decode(latents, return_dict=False)[0])
    figures["stages"] = stages.rows
    figures["peak_rss_mib"] = max(row["peak_rss_mib"] for row in stages.rows)
    return figures


def write_sdxl_report(figures: dict[str, Any], path: Path) -> None:
    build = figures["build"]
    params, published = build.get("parameters", {}), build.get("published_parameters", {})
    stages = {row["stage"]: row for row in figures["stages"]}
    unet = next((row for name, row in stages.items() if name.startswith("UNet forward")), None)
    lines = [
        "# Real size: full-size SDXL base on this CPU",
        "",
        "Written by `make real-size-sdxl` (`python -m bench.real_size --family sdxl`) on the random-weight",
        "full-size SDXL base 1.0 built by `make model-sdxl` (`embedded/sdxl_model.py`: the published",
        "architecture and configs, seeded random weights). Not through the stack: at 1024 px one denoising",
        "step is minutes of this CPU, so the load through the serving code's loader, the memory and one step",
        "say what a request costs. One process: RSS is the model's, peak RSS the process's highest so far;",
        "file-backed is the part of RSS that maps the safetensors files (the loader maps the weights rather",
        "than copying them: the kernel reads them at first use, and may drop and reread them under pressure).",
        "",
        f"Machine: {figures['machine']}, torch on {figures['torch_threads']} threads. Loaded by:"
        f" {figures['loader']}; {figures['dtype']}.",
        "",
        *table(
            ["component", "parameters", "published SDXL base 1.0"],
            [[name, f"{count:,}", f"{published.get(name, 0):,}"] for name, count in params.items()],
        ),
        "",
        f"Built in {build.get('build_s', '-')} s, saved in {build.get('save_s', '-')} s"
        f" ({build.get('dtype', '-')}, on {build.get('device', '-')}).",
        "",
        "## Load, memory and one step",
        "",
        *table(
            ["stage", "seconds", "CPU s", "load avg", "RSS after (MiB)", "of which file-backed", "peak RSS (MiB)"],
            [
                [
                    row["stage"],
                    f"{row['seconds']:.2f}",
                    f"{row.get('cpu_s', 0):.1f}",
                    str(row.get("load_avg_1m", "-")),
                    str(row["rss_mib"]),
                    str(row.get("file_backed_mib", "-")),
                    str(row["peak_rss_mib"]),
                ]
                for row in figures["stages"]
            ],
        ),
        "",
        f"Weights: {figures.get('weights_gib', '-')} GiB. The load stage is the loader's own time (what the",
        "model's `initialize` takes, after which Triton calls it ready); reading the weights in is the next",
        "stage, which without it would fall to the first request.",
        "",
        "UNet inputs (a request under guidance: its negative and prompt rows): "
        + ", ".join(f"{name} {shape}" for name, shape in figures["unet_inputs"].items())
        + ".",
    ]
    if unet:
        steps = int(REQUEST["num_inference_steps"] * REQUEST["strength"])
        vae = sum(row["seconds"] for name, row in stages.items() if name.startswith("VAE"))
        threads = figures["torch_threads"]
        vae_cpu = sum(row.get("cpu_s", 0) for name, row in stages.items() if name.startswith("VAE")) / threads
        unet_cpu = unet.get("cpu_s", 0) / threads
        lines += [
            "",
            "CPU s is this process's CPU time on all its threads; the load average shows how much else ran on",
            f"the machine (where CPU s / {threads} threads falls well short of the wall time, the process waited for"
            " a core).",
            "",
            f"A {figures['size']} px request of {steps} denoising steps (the SD 1.5 real-size request's"
            f" {REQUEST['num_inference_steps']} x strength {REQUEST['strength']}) would take about"
            f" {steps * unet['seconds'] + vae:.0f} s of this machine in the model at the wall times above (steps x"
            f" the forward, plus the VAE), {steps * unet_cpu + vae_cpu:.0f} s with the cores to itself (CPU s /"
            f" {threads}); a default 40-step one about {(40 * unet['seconds'] + vae) / 60:.0f} min at these wall"
            f" times, {(40 * unet_cpu + vae_cpu) / 60:.0f} min with the cores to itself.",
        ]
    lines += ["", f"Peak RSS: {figures['peak_rss_mib']} MiB ({figures['peak_rss_mib'] / 1024:.1f} GiB).", ""]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--family", choices=["sd15", "sdxl"], default="sd15")
    parser.add_argument("--model-path", type=Path, help="default: the family's built folder under .models/")
    parser.add_argument("--size", type=int, help="image side in px (default: 512 for sd15, 1024 for sdxl)")
    parser.add_argument("--out", type=Path, help="default: docs/real-size.md or docs/real-size-sdxl.md")
    parser.add_argument("--determinism", default="batch_invariant", help="sdxl: the runner's mode (as served)")
    parser.add_argument("--skip-vae", action="store_true", help="sdxl: the UNet forward only")
    args = parser.parse_args(argv)
    stop_on_signals()  # SIGTERM, SIGHUP and Ctrl-C still run the cleanup that stops the servers
    xl = args.family == "sdxl"
    args.model_path = (args.model_path or (sdxl_model if xl else sd15_model).DEFAULT_FOLDER).resolve()
    args.size = args.size or (1024 if xl else 512)
    args.out = args.out or DOCS / ("real-size-sdxl.md" if xl else "real-size.md")
    if xl:
        figures = measure_sdxl(args)
        args.out.with_suffix(".json").write_text(json.dumps(figures, indent=1) + "\n")
        write_sdxl_report(figures, args.out)
        print(args.out.read_text())
        return 0
    with tempfile.TemporaryDirectory(prefix="real-size-") as workdir:
        figures = asyncio.run(measure(args, Path(workdir)))
    args.out.with_suffix(".json").write_text(json.dumps(figures, indent=1) + "\n")
    write_report(figures, args.out)
    print(args.out.read_text())
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
