"""Session fixtures: the tiny model, one real tritonserver, the repository's helpers on ``sys.path``."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_VERSION_DIR = REPO_ROOT / "model_repository" / "sd_img2img" / "1"
sys.path.insert(0, str(MODEL_VERSION_DIR))  # img2img_requests / img2img_pipeline, as the stub sees them

from embedded.triton_server import DEFAULT_MODEL_REPOSITORY, EmbeddedTriton  # noqa: E402

from .support import start_triton  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    """The tiny random-weight pipeline (built once; ``make model`` builds the same folder)."""
    from embedded.tiny_model import build
    from embedded.triton_server import DEFAULT_MODEL_PATH

    build(DEFAULT_MODEL_PATH)
    return DEFAULT_MODEL_PATH


@pytest.fixture(scope="session")
def triton(tiny_model_path: Path) -> Iterator[EmbeddedTriton]:
    """One real tritonserver on free ports, shared by the integration and end-to-end tests."""
    server = start_triton(DEFAULT_MODEL_REPOSITORY, tiny_model_path)
    yield server
    server.stop()
