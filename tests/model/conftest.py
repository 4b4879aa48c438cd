"""Fixtures of the ``model.py`` tests: the module under a fake ``triton_python_backend_utils``, one model."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from . import fake_pb_utils as pb
from .support import MODEL_DIR, model_config


@pytest.fixture(scope="module")
def model_module() -> Iterator[Any]:
    sys.modules["triton_python_backend_utils"] = pb.as_module()
    spec = importlib.util.spec_from_file_location("sd_img2img_model", MODEL_DIR / "1" / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("triton_python_backend_utils", None)


@pytest.fixture(scope="module")
def model(model_module: Any, tiny_model_path: Path, monkeypatch_module: pytest.MonkeyPatch) -> Any:
    monkeypatch_module.setenv("SD_MODEL_PATH", str(tiny_model_path))
    instance = model_module.TritonPythonModel()
    instance.initialize(
        {"model_config": json.dumps(model_config()), "model_name": "sd_img2img", "model_instance_kind": "CPU"}
    )
    return instance


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch
