"""The embedded launcher's failure path: a model that cannot load stops it with the model's one line saying why."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from embedded.triton_server import DEFAULT_MODEL_REPOSITORY, EmbeddedTriton, TritonStartError, free_port

pytestmark = pytest.mark.integration


def test_a_model_that_cannot_load_stops_the_launcher_with_one_line_saying_why(tmp_path: Path) -> None:
    """What ``make serve MODEL_DIR=<a Flux folder>`` prints as its error: the model's own line, not tritonserver's
    log (a missing folder's line, and the other kinds', are tests/unit/test_families.py's)."""
    model = tmp_path / "model"
    model.mkdir()
    index = {"_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"]}
    (model / "model_index.json").write_text(json.dumps(index))
    found = "found FluxPipeline (a pipeline)"
    server = EmbeddedTriton.on_free_ports(DEFAULT_MODEL_REPOSITORY, model, ready_timeout_s=120)
    server.log_file = tmp_path / "triton.log"
    with pytest.raises(TritonStartError) as caught:
        server.start()
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"sd_img2img cannot serve '{model}': {found}"), message
    assert "sd_img2img serves SD 1.x, SD 2.x (epsilon or v) and SDXL (base or refiner)" in message
    assert message.endswith(f"(tritonserver's log: {server.log_file})")
    assert server.process is not None and server.process.returncode == 1


def test_container_liveness_probe_passes_on_a_live_model_and_fails_without_one(
    triton: EmbeddedTriton, tmp_path: Path
) -> None:
    canary = [sys.executable, str(Path(__file__).resolve().parents[2] / "docker" / "triton_canary.py")]
    canary += ["--state-file", str(tmp_path / "state.json")]
    metrics = ["--metrics-url", f"127.0.0.1:{triton.metrics_port}"]
    alive = subprocess.run([*canary, "--url", triton.http_url, *metrics], capture_output=True, text=True, timeout=60)
    assert alive.returncode == 0 and alive.stdout.startswith("alive: answered"), alive
    down = subprocess.run(
        [*canary, "--url", f"127.0.0.1:{free_port()}"], capture_output=True, text=True, check=False, timeout=60
    )
    assert down.returncode == 1 and "tritonserver does not answer" in down.stderr
