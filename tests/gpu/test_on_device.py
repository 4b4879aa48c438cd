"""On a GPU only (``gpu`` marker, skipped without CUDA): the model's byte promises and a tritonserver
round trip, on the device. The GPU command runs them before it measures anything:
``python -m pytest -c tests/gpu/pytest.ini --rootdir . tests/gpu`` (run.sh). Needs only what the GPU
machine has plus what ``make gpu-carry`` brings, so nothing here imports the root conftest's helpers.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_CODE = REPO_ROOT / "model_repository" / "sd_img2img" / "1"
if str(MODEL_CODE) not in sys.path:
    sys.path.insert(0, str(MODEL_CODE))
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
WORKLOAD = {"size": 64, "num_inference_steps": 8, "strength": 0.5, "guidance_scale": 7.5, "variants": 8}


@pytest.fixture(scope="module")
def tiny_model() -> Path:
    from embedded.tiny_model import build
    from embedded.triton_server import DEFAULT_MODEL_PATH

    build(DEFAULT_MODEL_PATH)
    return DEFAULT_MODEL_PATH


@pytest.mark.parametrize(("kernel", "stride", "padding"), [(1, 1, 0), (3, 1, 1), (3, 2, 1)])
def test_gemm_convolution_is_conv2d_and_ignores_its_batch_on_the_device(kernel: int, stride: int, padding: int) -> None:
    from batch_invariance import pin_cuda_kernels
    from conv_gemm import conv2d_gemm

    pin_cuda_kernels(True)
    generator = torch.Generator("cuda").manual_seed(0)
    x = torch.randn(16, 320, 32, 32, device="cuda", generator=generator, dtype=torch.float16)
    weight = torch.randn(320, 320, kernel, kernel, device="cuda", generator=generator, dtype=torch.float16) / 40
    bias = torch.randn(320, device="cuda", generator=generator, dtype=torch.float16)
    batched = conv2d_gemm(x, weight, bias, (stride, stride), (padding, padding))
    expected = F.conv2d(x.float(), weight.float(), bias.float(), stride, padding)
    torch.testing.assert_close(batched.float(), expected, atol=0.05, rtol=0.01)
    for i in (0, 7, 15):
        alone = conv2d_gemm(x[i : i + 1], weight, bias, (stride, stride), (padding, padding))
        assert torch.equal(alone[0], batched[i]), f"row {i} of 16 differs from the same sample alone"


@pytest.mark.parametrize("invariant_modules", ["auto", "conv2d_gemm,vae_decode"])
def test_requests_give_the_same_bytes_alone_and_batched_on_the_device(tiny_model: Path, invariant_modules: str) -> None:
    from bench.direct import Direct

    direct = Direct(str(tiny_model), WORKLOAD, "batch_invariant", invariant_modules)
    alone = [direct.runner.run(direct.call([i]))[0] for i in range(4)]
    for order in ([0, 1, 2, 3], [3, 1]):
        together = direct.runner.run(direct.call(order))
        for position, i in enumerate(order):
            assert np.array_equal(together[position], alone[i]), f"request {i} at position {position} of {order}"


def send(grpc_url: str, request: Any) -> np.ndarray:
    """One request over gRPC, as the frontend sends it (tritonclient's HTTP client needs gevent, which
    the GPU machine lacks)."""
    import tritonclient.grpc as grpcclient

    from frontend.triton_backend import build_inputs

    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        return client.infer("sd_img2img", build_inputs(request), client_timeout=300).as_numpy("images")
    finally:
        client.close()


@pytest.fixture(scope="module")
def triton_on_device(tiny_model: Path) -> Iterator[str]:
    from embedded.triton_server import EmbeddedTriton, copy_model_repository

    with tempfile.TemporaryDirectory() as folder:
        repository = copy_model_repository(Path(folder), {})
        server = EmbeddedTriton.on_free_ports(repository, tiny_model, ready_timeout_s=600)
        # The stub's path that bench.gpu's stub phase chose (the carried numpy first), if any.
        server.python_path = tuple(p for p in os.environ.get("GPU_STUB_SITE", "").split(os.pathsep) if p)
        with server:
            yield server.grpc_url


@pytest.mark.integration
def test_tritonserver_answers_on_the_device_with_the_same_bytes_amid_neighbours(triton_on_device: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from bench.workload import Workload
    from frontend.generation import GenerationInput

    images = Workload(**WORKLOAD).images()
    requests = [GenerationInput("a red fox", images[i], "", 0.5, 8, 3.0 + i, 1, 100 + i, "") for i in range(6)]
    alone = send(triton_on_device, requests[0])
    assert alone.shape == (1, 64, 64, 3)
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda r: send(triton_on_device, r), requests))
    assert np.array_equal(answers[0], alone)


def _tiny_unet(tiny_model: Path, device: str) -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(tiny_model, subfolder="unet").to(device).eval()


@torch.inference_mode()
def test_cuda_graphs_give_eager_bytes_bucket_rows_and_stay_bounded(tiny_model: Path) -> None:
    from cuda_graphs import GraphedUNet

    unet = _tiny_unet(tiny_model, "cuda")
    logs: list[str] = []
    graphed = GraphedUNet(unet.forward, row_buckets=(2, 4), max_graphs=2, log=logs.append)
    generator = torch.Generator("cuda").manual_seed(0)
    width = unet.config.cross_attention_dim
    for rows in (2, 3, 4):  # 3 rows pad to the 4-row graph
        sample = torch.randn(rows, unet.config.in_channels, 8, 8, device="cuda", generator=generator)
        timestep = torch.full((rows,), 500.0, device="cuda")
        context = torch.randn(rows, 77, width, device="cuda", generator=generator)
        eager = unet(sample, timestep, context, return_dict=False)[0]
        assert torch.equal(graphed(sample, timestep, context, return_dict=False)[0], eager), rows
    assert len(graphed.graphs) == 2 and not graphed.failed and not logs
    sample = torch.randn(4, unet.config.in_channels, 16, 16, device="cuda", generator=generator)  # a third shape
    graphed(sample, torch.full((4,), 500.0, device="cuda"), torch.zeros(4, 77, width, device="cuda"))
    assert len(graphed.graphs) == 2  # bounded: the least recently used went


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs a second CUDA device")
@torch.inference_mode()
def test_cuda_graphs_capture_and_replay_on_the_instances_own_device(tiny_model: Path) -> None:
    from cuda_graphs import GraphedUNet

    unet = _tiny_unet(tiny_model, "cuda:1")
    graphed = GraphedUNet(unet.forward, row_buckets=(2,))
    sample = torch.randn(2, unet.config.in_channels, 8, 8, device="cuda:1")
    timestep = torch.full((2,), 500.0, device="cuda:1")
    context = torch.randn(2, 77, unet.config.cross_attention_dim, device="cuda:1")
    out = graphed(sample, timestep, context, return_dict=False)[0]
    assert out.device == torch.device("cuda:1") and torch.equal(
        out, unet(sample, timestep, context, return_dict=False)[0]
    )


@torch.inference_mode()
def test_a_failed_capture_runs_eagerly_and_says_so(tiny_model: Path) -> None:
    from cuda_graphs import GraphedUNet

    unet = _tiny_unet(tiny_model, "cuda")
    calls = {"n": 0}

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError("not capturable")
        return unet.forward(*args, **kwargs)

    logs: list[str] = []
    graphed = GraphedUNet(flaky, row_buckets=(2,), log=logs.append)
    sample = torch.randn(2, unet.config.in_channels, 8, 8, device="cuda")
    timestep, context = (
        torch.full((2,), 500.0, device="cuda"),
        torch.randn(2, 77, unet.config.cross_attention_dim, device="cuda"),
    )
    out = graphed(sample, timestep, context, return_dict=False)[0]
    assert torch.equal(out, unet(sample, timestep, context, return_dict=False)[0])
    assert graphed.failed and not graphed.graphs and any("failed, eager" in line for line in logs)
