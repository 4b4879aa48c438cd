"""One wire contract: ``config.pbtxt`` (parsed with the protobuf Triton ships) against every table that
speaks to the model: the frontend's (``frontend/wire.py``, also used by ``embedded/``), the client's,
the container canary's request, and ``model.py``'s input list. Every field: name, datatype, dims, optional."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from embedded.triton_calls import http_inputs
from frontend import wire
from frontend.generation import GenerationInput
from frontend.triton_backend import build_inputs
from sd_img2img_client import triton as client_triton
from tests.model import fake_pb_utils

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "model_repository" / "sd_img2img" / "config.pbtxt"
# Triton's config type -> its wire datatype.
WIRE_TYPES = {
    "TYPE_STRING": "BYTES",
    "TYPE_UINT8": "UINT8",
    "TYPE_FP32": "FP32",
    "TYPE_INT32": "INT32",
    "TYPE_INT64": "INT64",
}


def config_tensors(kind: str) -> list[tuple[str, str, tuple[int, ...], bool]]:
    config = text_format.Parse(CONFIG.read_text(), model_config_pb2.ModelConfig())
    return [
        (t.name, WIRE_TYPES[model_config_pb2.DataType.Name(t.data_type)], tuple(t.dims), getattr(t, "optional", False))
        for t in getattr(config, kind)
    ]


def test_the_frontend_table_is_config_pbtxt_field_by_field() -> None:
    assert [(s.name, s.datatype, s.dims, s.optional) for s in wire.INPUTS] == config_tensors("input")
    assert [(s.name, s.datatype, s.dims) for s in wire.OUTPUTS] == [t[:3] for t in config_tensors("output")]


def test_the_clients_table_is_config_pbtxt_field_by_field() -> None:
    assert list(client_triton.INPUTS) == config_tensors("input")


def test_model_py_reads_every_input_of_config_pbtxt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake_pb_utils.as_module())
    spec = importlib.util.spec_from_file_location("contract_model", CONFIG.parent / "1" / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert list(module.INPUT_NAMES) == [name for name, *_ in config_tensors("input")]


def test_the_container_canary_sends_every_input_with_its_datatype_and_shape() -> None:
    spec = importlib.util.spec_from_file_location("canary_contract", ROOT / "docker" / "triton_canary.py")
    assert spec is not None and spec.loader is not None
    canary = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = canary
    spec.loader.exec_module(canary)
    sent = [(t["name"], t["datatype"], tuple(t["shape"][1:])) for t in canary.request_body(64)["inputs"]]
    expected = config_tensors("input")
    assert [(n, d) for n, d, _ in sent] == [(n, d) for n, d, *_ in expected]
    for (_, _, shape), (name, _, dims, _) in zip(sent, expected, strict=True):
        assert len(shape) == len(dims) and all(d in (-1, s) for s, d in zip(shape, dims, strict=True)), name


JOB = GenerationInput("a cat", np.zeros((16, 24, 3), np.uint8), "blurry", 0.5, 8, 7.5, 2, 120, "euler")


@pytest.mark.parametrize("transport", ["grpc (frontend)", "http (embedded)"])
def test_requests_carry_every_input_as_the_contract_says(transport: str) -> None:
    tensors = build_inputs(JOB) if transport.startswith("grpc") else http_inputs(JOB)
    sent = [(t.name(), t.datatype(), tuple(t.shape()[1:])) for t in tensors]
    assert [(n, d) for n, d, _ in sent] == [(n, d) for n, d, *_ in config_tensors("input")]
    assert all(t.shape()[0] == 1 for t in tensors)  # a batch of one
    arrays = dict((spec.name, array) for spec, array in wire.input_arrays(JOB))
    assert arrays["image"].shape == (1, 16, 24, 3) and arrays["seed"].dtype == np.int64
    assert arrays["prompt"].tolist() == [[b"a cat"]] and arrays["strength"].dtype == np.float32


def test_the_apis_scheduler_examples_are_the_models_short_names() -> None:
    from frontend.schemas import SCHEDULER_EXAMPLES
    from img2img_pipeline import SCHEDULER_ALIASES

    assert list(SCHEDULER_ALIASES) == SCHEDULER_EXAMPLES
