"""Does Triton's Python stub carry tensors correctly here, and can it import the model? Seconds, not minutes.

Triton 2.51's stub is built with pybind11 2.10, which under numpy 2 reads a dtype's element size at
numpy 1's offset: numeric inputs arrive with every element equal to the first, outputs come back empty,
and a BYTES input crashes the stub (the H200's ``774778414 = 0x2E2E2E2E``, docs/gpu.md). The fix is an
environment the stub can live with: the carried numpy 1.26 first on its path. Whether the rest of the
machine's packages then import (the H200's ``Could not import module 'CLIPImageProcessor'``) is the
second question, answered here with the real traceback rather than diffusers' lazy-import summary.

So before anything expensive, a tiny echo model runs in a real tritonserver under each candidate
path, and this records per candidate: the numpy the stub imported, whether FP32 and BYTES tensors made
the round trip, and what importing the model's modules raised. ``choose`` picks the first that works.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from embedded.triton_server import REPO_ROOT, EmbeddedTriton, TritonStartError

MODEL = "stub_echo"
CONFIG = """name: "stub_echo"
backend: "python"
max_batch_size: 0
input [ { name: "NUMBERS" data_type: TYPE_FP32 dims: [ -1 ] }, { name: "TEXT" data_type: TYPE_STRING dims: [ -1 ] } ]
output [
  { name: "NUMBERS_OUT" data_type: TYPE_FP32 dims: [ -1 ] },
  { name: "TEXT_OUT" data_type: TYPE_STRING dims: [ -1 ] },
  { name: "REPORT" data_type: TYPE_STRING dims: [ 1 ] }
]
instance_group [ { kind: KIND_CPU } ]
"""
# The model's own imports, in the stub, with the stub's path: what the H200 failed on, unmasked.
MODEL_PY = """
import json, sys, traceback
sys.path.insert(0, __file__.rsplit("/", 1)[0])
from stub_path import honour_pythonpath
honour_pythonpath()
import numpy as np
import triton_python_backend_utils as pb_utils

IMPORTS = ("torch", "transformers.models.clip.image_processing_clip", "transformers.CLIPImageProcessor",
           "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img")


def _import(name):
    try:
        module, _, attribute = name.partition(".CLIPImageProcessor")
        imported = __import__(module, fromlist=["_"])
        if attribute or name.endswith("CLIPImageProcessor"):
            getattr(imported, "CLIPImageProcessor")
        return "ok"
    except BaseException:
        return traceback.format_exc()[-1500:]


class TritonPythonModel:
    def initialize(self, args):
        self.report = {"numpy": np.__version__, "numpy_file": np.__file__, "python": sys.version.split()[0],
                       "imports": {name: _import(name) for name in IMPORTS}}

    def execute(self, requests):
        answers = []
        for request in requests:
            numbers = pb_utils.get_input_tensor_by_name(request, "NUMBERS").as_numpy()
            text = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
            report = np.array([json.dumps(self.report).encode()], dtype=np.object_)
            answers.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("NUMBERS_OUT", numbers.astype(np.float32)),
                pb_utils.Tensor("TEXT_OUT", text),
                pb_utils.Tensor("REPORT", report),
            ]))
        return answers
"""
NUMBERS = np.array([1.5, -2.25, 3.0, 1024.0], dtype=np.float32)
TEXT = np.array([b"a cat in a hat", b"two"], dtype=np.object_)


def repository(folder: Path) -> Path:
    model = folder / "model_repository" / MODEL
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(CONFIG)
    (model / "1" / "model.py").write_text(MODEL_PY)
    shutil.copy(REPO_ROOT / "model_repository" / "sd_img2img" / "1" / "stub_path.py", model / "1" / "stub_path.py")
    return folder / "model_repository"


def round_trip(grpc_url: str) -> dict[str, Any]:
    # gRPC, as the frontend speaks: tritonclient's HTTP client needs gevent, which the GPU machine lacks.
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    numbers = grpcclient.InferInput("NUMBERS", list(NUMBERS.shape), "FP32")
    numbers.set_data_from_numpy(NUMBERS)
    text = grpcclient.InferInput("TEXT", list(TEXT.shape), "BYTES")
    text.set_data_from_numpy(TEXT)
    answer = client.infer(MODEL, [numbers, text], client_timeout=60)
    got_numbers, got_text = answer.as_numpy("NUMBERS_OUT"), answer.as_numpy("TEXT_OUT")
    report: dict[str, Any] = json.loads(answer.as_numpy("REPORT")[0])
    return report | {
        "numbers_ok": got_numbers is not None and np.array_equal(got_numbers, NUMBERS),
        "numbers_back": None if got_numbers is None else got_numbers.tolist(),
        "text_ok": got_text is not None and [bytes(t) for t in got_text] == list(TEXT),
    }


def check(python_path: tuple[str, ...], work: Path) -> dict[str, Any]:
    """One candidate path: the stub's numpy, the round trip, the imports (or why the server failed)."""
    folder = Path(tempfile.mkdtemp(dir=work))
    triton = EmbeddedTriton.on_free_ports(repository(folder), None, ready_timeout_s=120)  # type: ignore[arg-type]
    triton.python_path = python_path
    result: dict[str, Any] = {"python_path": list(python_path)}
    try:
        triton.start()
    except TritonStartError as exc:
        return result | {"started": False, "error": str(exc)[-1500:], "log": triton.log_tail()[-1500:]}
    try:
        result |= {"started": True} | round_trip(triton.grpc_url)
    except Exception:  # noqa: BLE001 (a crashed stub is the finding: recorded with the server's log)
        result |= {"started": True, "error": traceback.format_exc()[-800:], "log": triton.log_tail()[-1500:]}
    finally:
        triton.stop()
    result["tensors_ok"] = bool(result.get("numbers_ok") and result.get("text_ok"))
    result["imports_ok"] = all(v == "ok" for v in result.get("imports", {"-": "missing"}).values())
    return result


def choose(results: dict[str, dict[str, Any]]) -> str | None:
    """The first candidate (in the order tried) whose stub carried tensors and imported the model."""
    for name, result in results.items():
        if result.get("tensors_ok") and result.get("imports_ok"):
            return name
    return None
