"""Several Triton "pods" on one machine, as ``make serve-fleet``, the fleet tests and the fleet bench run them.

Each pod is a tritonserver on its own loopback address (127.0.0.2, 127.0.0.3, ...), with its own copy of
the model repository and so its own progress folder, as separate Kubernetes pods have. ``pace_ms`` makes
each denoising step last that long (the model's ``min_step_ms``), so a pod behaves like a GPU with a fixed
step time and this CPU is not what limits the fleet.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import signal
from collections.abc import Sequence
from pathlib import Path

import psutil

from embedded.triton_server import EmbeddedTriton, copy_model_repository, stub_model

# The model's one pace knob, as config.pbtxt ships it.
UNPACED = '"min_step_ms" value: { string_value: "0" }'


def paced(min_step_ms: int) -> dict[str, str]:
    """The config.pbtxt change (for ``copy_model_repository``) that makes each step last ``min_step_ms``."""
    return {UNPACED: UNPACED.replace('"0"', f'"{min_step_ms}"')}


def pod_host(index: int) -> str:
    """Pod ``index``'s loopback address: 127.0.0.2 and up (127.0.0.1 stays the frontends')."""
    return f"127.0.0.{index + 2}"


def make_pods(
    count: int,
    root: Path,
    model_path: Path | str,
    *,
    pace_ms: int = 0,
    ports: tuple[int, int, int] | None = None,
    env: dict[str, str] | None = None,
    log_dir: Path | None = None,
    replacements: dict[str, str] | None = None,
) -> list[EmbeddedTriton]:
    """``count`` pods, not started: on ``ports`` (HTTP, gRPC, metrics) at every address, as pods behind one
    Service, or on free ports (tests). Their repositories are copied afresh under ``root``."""
    pods = []
    for index in range(count):
        changes = {**(paced(pace_ms) if pace_ms else {}), **(replacements or {})}
        shutil.rmtree(root / f"pod{index}", ignore_errors=True)
        repository = copy_model_repository(root / f"pod{index}", changes)
        pod = EmbeddedTriton.on_free_ports(repository, model_path)
        if ports is not None:
            pod.http_port, pod.grpc_port, pod.metrics_port = ports
        pod.host = pod_host(index)
        pod.env = dict(env or {})
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            pod.log_file = log_dir / f"pod{index}-{pod.host}-{pod.grpc_port}.log"
        pods.append(pod)
    return pods


def start_pods(pods: Sequence[EmbeddedTriton]) -> list[EmbeddedTriton]:
    """Start every pod side by side and wait for all; on any failure none is left running."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(pods))) as pool:
        starts = [pool.submit(pod.start) for pod in pods]
        concurrent.futures.wait(starts)
    failures = [start.exception() for start in starts if start.exception() is not None]
    if failures:
        stop_pods(pods)
        raise failures[0]  # type: ignore[misc]
    return list(pods)


def stop_pods(pods: Sequence[EmbeddedTriton]) -> None:
    for pod in pods:
        pod.stop()


def fleet_url(pods: Sequence[EmbeddedTriton]) -> str:
    """``SD_TRITON_URL`` for these pods: what a headless Service's DNS answer gives gRPC."""
    return "ipv4:" + ",".join(pod.grpc_url for pod in pods)


def model_stub(pod: EmbeddedTriton, model: str = "sd_img2img") -> psutil.Process:
    """The Python stub process serving ``model`` in the pod (each model has its own); killing it leaves
    Triton 2.51 up and healthy by its own endpoints, failing every inference of that model."""
    assert pod.process is not None
    children = psutil.Process(pod.process.pid).children(recursive=True)
    (stub,) = [process for process in children if stub_model(process.cmdline()) == model]
    return stub


def kill_pod(pod: EmbeddedTriton) -> None:
    """SIGKILL the pod's tritonserver and its stubs (a node lost); ``pod.start()`` brings it back."""
    assert pod.process is not None
    os.killpg(pod.process.pid, signal.SIGKILL)
    pod.stop()  # reaps it and frees its ports and shared memory
