"""The embedded launcher's failure path: a model that cannot load gives an error with the log tail."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from embedded.triton_server import DEFAULT_MODEL_REPOSITORY, EmbeddedTriton, TritonStartError, free_port

pytestmark = pytest.mark.integration


def test_model_that_fails_to_load_stops_the_launcher_with_the_log_tail(tmp_path: Path) -> None:
    server = EmbeddedTriton.on_free_ports(DEFAULT_MODEL_REPOSITORY, tmp_path / "no-such-model", ready_timeout_s=120)
    with pytest.raises(TritonStartError) as caught:
        server.start()
    message = str(caught.value)
    assert "exited with code 1" in message
    assert "failed to load 'sd_img2img'" in message and "no-such-model" in message
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
