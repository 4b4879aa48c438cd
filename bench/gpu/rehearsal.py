"""The GPU command rehearsed on this CPU (``make gpu-rehearsal``): the device call, less the device.

A lent GPU has 15 minutes and starts bare, so its command has to work the first time. This builds an
interpreter shaped like the GPU machine's (``bench/gpu/device-image.txt``: what that machine has
preinstalled, numpy 2 and transformers 5 included; Python 3.12 as there), adds to it only what
``make gpu-carry`` packs, and runs ``bash bench/gpu/run.sh`` in it exactly as the device call does, on
the CPU with the tiny model: every phase, the end-to-end one through tritonserver and the frontend
included, and the ``sdxl`` phase on the tiny SDXL (``python -m embedded.tiny_model --family sdxl``,
built here first) where the device builds the full-size one. Then it reads the report and fails unless
every phase ran clean, both concurrencies answered every request and the service gave the same bytes
alone and amid neighbours.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.gpu.__main__ import PHASES
from embedded.lifecycle import ignore_stop_signals, spawn_server, stop_on_signals
from embedded.triton_server import REPO_ROOT

IMAGE = REPO_ROOT / "bench" / "gpu" / "device-image.txt"
HOME = REPO_ROOT / ".build" / "gpu-rehearsal"
TINY_MODEL = REPO_ROOT / ".models" / "tiny-sd-img2img"
TINY_SDXL = REPO_ROOT / ".models" / "tiny-sdxl"
# The tiny model at the size it is built for; fewer steps than the full workload, the same code paths.
WORKLOAD = {"size": 64, "num_inference_steps": 8, "strength": 0.5, "guidance_scale": 7.5, "variants": 8}
# The sdxl phase's paths on the tiny SDXL: 64 px instead of 1024, as few steps.
SDXL_WORKLOAD = WORKLOAD | {"variants": 4}


def python312() -> Path:
    """The GPU machine's Python minor: pyenv's, else one on PATH that runs (a pyenv shim may not)."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = sorted(root.glob("versions/3.12*/bin/python3.12"), reverse=True)
    candidates += [Path(found)] if (found := shutil.which("python3.12")) else []
    for candidate in candidates:
        probe = subprocess.run([str(candidate), "-c", "import venv"], capture_output=True, check=False)
        if probe.returncode == 0:
            return candidate
    raise SystemExit("gpu-rehearsal: no working python3.12 here (the GPU machine's Python); pyenv install 3.12")


def image_environment(home: Path) -> Path:
    """A venv with the device image's packages (and nothing of ours), rebuilt when the list changes."""
    venv = home / "venv"
    python = venv / "bin" / "python"
    wanted = hashlib.sha256(IMAGE.read_bytes()).hexdigest()
    stamp = venv / ".image-stamp"
    if stamp.is_file() and stamp.read_text() == wanted and python.exists():
        return python
    shutil.rmtree(venv, ignore_errors=True)
    print(f"gpu-rehearsal: building the device image's Python in {venv} (torch with CUDA 13 wheels: a few GB) ...")
    subprocess.run([str(python312()), "-m", "venv", str(venv)], check=True)
    # The image's torch is the CUDA build, as on the device (on a CPU it runs on the CPU).
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", str(IMAGE)],
        check=True,
    )
    stamp.write_text(wanted)
    return python


def tiny_sdxl(folder: Path) -> Path:
    """The tiny SDXL for the sdxl phase, built by this checkout's Python (as ``make model`` builds the tiny
    SD): the device image has none of our packages, and the device builds the full-size one instead."""
    command = [sys.executable, "-m", "embedded.tiny_model", "--family", "sdxl", str(folder)]
    subprocess.run(command, check=True, cwd=REPO_ROOT)
    return folder.resolve()


def problems(report: dict[str, Any], phases: tuple[str, ...] = PHASES) -> list[str]:
    """What keeps this report from being a GPU call's that served end to end (empty: none)."""
    found = [f"phase {name} failed: {text.strip().splitlines()[-1]}" for name, text in report.get("errors", {}).items()]
    found += [f"phase {name} skipped: {why}" for name, why in report.get("skipped", {}).items()]
    found += [f"phase {name} did not run" for name in phases if name not in report.get("phase_s", {})]
    if "environment" not in report or "packages" not in report.get("environment", {}):
        found.append("the machine was not recorded (environment.packages)")
    e2e = report.get("e2e", {})
    for key in ("c1", "c8", "mixed", "determinism"):
        if key not in e2e:
            found.append(f"e2e.{key} missing")
    for key, figures in [("c1", e2e.get("c1")), ("c8", e2e.get("c8")), *e2e.get("mixed", {}).items()]:
        if isinstance(figures, dict) and (figures.get("errors") or figures.get("answered") != figures.get("requests")):
            found.append(
                f"e2e {key}: {figures.get('answered')} of {figures.get('requests')} answered, {figures.get('errors')}"
            )
    if "determinism" in e2e and not e2e["determinism"].get("identical"):
        found.append("e2e.determinism: the service's bytes changed amid neighbours")
    if report.get("done") is not True:
        found.append("the run did not finish")
    return found


def run_to_end(command: list[str], env: dict[str, str]) -> int:
    """``run.sh`` in its own session; a stop signal here is passed to its whole group (bench.gpu then stops
    its tritonserver and frontend), so nothing outlives the rehearsal."""
    process = spawn_server(command, env=env, cwd=REPO_ROOT)
    try:
        return process.wait()
    except KeyboardInterrupt:  # SIGINT, SIGTERM or SIGHUP (stop_on_signals)
        ignore_stop_signals()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        # bash dies at once; bench.gpu, in the same group, is still stopping its servers: wait for the group.
        deadline = time.monotonic() + 60
        while group_alive(process.pid) and time.monotonic() < deadline:
            process.poll()  # reap bash, so only the others count
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--home", type=Path, default=HOME, help="the image's venv, the installed carry, the report")
    parser.add_argument("--model-path", type=Path, default=TINY_MODEL)
    parser.add_argument("--sdxl-model-path", type=Path, default=TINY_SDXL, help="built (tiny) if missing")
    parser.add_argument("--budget-s", type=float, default=1500.0, help="bench.gpu's budget (the CPU is slower)")
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args(argv)
    stop_on_signals()
    python = image_environment(args.home)
    sdxl = tiny_sdxl(args.sdxl_model_path)
    out = args.home / "out"
    shutil.rmtree(out, ignore_errors=True)
    # Installed afresh each time, as on a bare device machine.
    shutil.rmtree(args.home / "sd-gpu", ignore_errors=True)
    env = {
        **os.environ,
        "PYTHON": str(python),
        "OUT": str(out),
        "GPU_SITE": str(args.home / "sd-gpu" / "site"),
        "GPU_STUB_SITE": str(args.home / "sd-gpu" / "stub-site"),
        "GPU_MODEL_DIR": str(args.model_path.resolve()),
        "GPU_SDXL_MODEL_DIR": str(sdxl),
        "CUDA_VISIBLE_DEVICES": "",  # the rehearsal is the CPU, even on a machine with a GPU
    }
    for name in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):  # nothing of this checkout's venv leaks in
        env.pop(name, None)
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not p.startswith(str(REPO_ROOT)))
    command = ["bash", str(REPO_ROOT / "bench" / "gpu" / "run.sh"), "--workload", json.dumps(WORKLOAD)]
    command += ["--sdxl-workload", json.dumps(SDXL_WORKLOAD)]
    command += ["--budget-s", str(args.budget_s), "--seconds", str(args.seconds)]
    print("gpu-rehearsal:", " ".join(command), flush=True)
    status = run_to_end(command, env)
    report_path = out / "gpu-report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    found = problems(report)
    if status:
        found.append(f"bench/gpu/run.sh exited {status}")
    print(f"gpu-rehearsal: report {report_path}, log {out / 'run.log'}")
    if found:
        print("gpu-rehearsal: FAILED, as the device call would:\n  " + "\n  ".join(found), file=sys.stderr)
        return 1
    e2e = report["e2e"]
    print(
        f"gpu-rehearsal: passed: every phase, e2e c1 {e2e['c1']['images_s']:.2f} and c8"
        f" {e2e['c8']['images_s']:.2f} requests/s through tritonserver and the frontend, same bytes amid"
        f" {e2e['determinism']['neighbours']} neighbours"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
