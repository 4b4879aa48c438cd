"""Shared fixtures: the tiny model folder and the model repository's helpers on ``sys.path``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_VERSION_DIR = REPO_ROOT / "model_repository" / "sd_img2img" / "1"
sys.path.insert(0, str(MODEL_VERSION_DIR))  # img2img_requests / img2img_pipeline, as the stub sees them


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    """The tiny random-weight pipeline (built once; ``make model`` builds the same folder)."""
    from embedded.tiny_model import build
    from embedded.triton_server import DEFAULT_MODEL_PATH

    build(DEFAULT_MODEL_PATH)
    return DEFAULT_MODEL_PATH
